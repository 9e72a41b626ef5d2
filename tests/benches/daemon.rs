//! The real `ykhsmd` under load, next to the floor of what a verify must
//! cost: one Unix-socket round trip plus one durable SQLite commit (and, with
//! the YubiHSM backend, one OTP decode on the device).
//!
//! ```text
//! cargo bench -p ykhsm-tests --bench daemon                             # as root: the daemon wants root-owned files
//! YKHSM_BENCH_BACKEND=yubihsm cargo bench -p ykhsm-tests --bench daemon # the same on an emulated YubiHSM 1
//! ```
//!
//! A temporary installation (keys.json, 1,024 software YubiKeys with AEADs,
//! an authfile with one user per key, a syslog socket that discards) is set
//! up, the release `ykhsmd` is started on it, and 1, 8 and 64 client threads
//! send fresh OTPs, one connection per request as the PAM module does. Each
//! client owns a disjoint set of keys, so every OTP must be answered `OK`;
//! any other answer is counted and listed as an error.
//!
//! `YKHSM_BENCH_FLEET=1` runs the levels once more with `[fleet]` on a
//! PostgreSQL started by the bench, and prints the ratios to this run's
//! local-only figures and how many logins each round trip carried.
//!
//! `YKHSM_BENCH_SECS` sets the seconds per concurrency level (default 4),
//! `YKHSM_BENCH_LEVELS` the levels (default `1,8,64`; `1,8` with the YubiHSM
//! backend). The targets are only reported, never enforced.
//!
//! # `YKHSM_BENCH_BACKEND=yubihsm`
//!
//! `soft` (the default) has the daemon open the AEADs itself with keys.json.
//! `yubihsm` starts the YubiHSM 1 emulator (`ykhsm-hsm-emu`) on a
//! pseudo-terminal inside this process, with key handle 1 holding the same
//! key as keys.json (so the same AEAD files serve), and configures the
//! daemon with `backend = "yubihsm"` and `device = "/dev/pts/N"`: every
//! verify then crosses the serial line for `YSM_AEAD_YUBIKEY_OTP_DECODE`.
//!
//! To read those figures, the emulator's own cost is measured first, on a
//! second emulator of its own, in-process and with nothing else running:
//! a few thousand calls (`YKHSM_BENCH_HSM_CALLS`, default 4000) through the
//! daemon's driver (`ykhsm_yubihsm::YubiHsm`) of
//!
//! - `echo`: a 56-byte `YSM_ECHO`, the size of an OTP decode request: the
//!   pseudo-terminal round trip (two writes, two wake-ups, the emulator
//!   thread and the driver's framing) with no crypto;
//! - `otp_decode`: the same plus the emulator's AES-CCM open of the AEAD and
//!   the AES-ECB decrypt of the OTP; this is what one verify waits for;
//! - `soft decode`: `SoftBackend::decode_otp` on the same inputs, what the
//!   soft backend does instead (no device, no pty).
//!
//! The last table sets them next to the daemon's latency per verify at
//! c=1. The emulator answers in microseconds, and it runs in this process
//! (its CPU counts as the bench's, not the daemon's). A real YubiHSM 1 is a
//! USB CDC serial device with its own microcontroller doing the AES: each
//! exchange costs USB transfers plus the device's processing, which is far
//! slower than a pseudo-terminal, so on real hardware the device time
//! dominates a verify and, since the device does one request at a time,
//! bounds the throughput (`1 / otp_decode time`) whatever the concurrency.
//! These numbers are the daemon's overhead around the device, not a
//! prediction for it: measure `otp_decode` on the device itself for that.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, SysconfVar, sysconf};
use rusqlite::{Connection, params};
use ykhsm_core::backend::Backend;
use ykhsm_core::keyhandle::{KeyHandle, KeyHandleName};
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::serial::public_id_ykman;
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_core::store::WriteMode;
use ykhsm_core::{Nonce, Token, YubiKeyAead};
use ykhsm_proto::{Request, Response, ServerUid, Status, call, frame};
use ykhsm_testkit::{BASTION_FLAGS, EmuPty, Installation, emulated_hsm_holding, random};
use ykhsm_yubihsm::YubiHsm;
use zeroize::Zeroizing;

/// Software YubiKeys, one authfile user each.
const KEYS: usize = 1024;
/// Concurrent clients per level (`YKHSM_BENCH_LEVELS=1,8,64` overrides).
const LEVELS: [usize; 3] = [1, 8, 64];
/// The same with `YKHSM_BENCH_BACKEND=yubihsm`: one device serialises
/// every decode, so more clients only queue.
const HSM_LEVELS: [usize; 2] = [1, 8];
/// Direct driver calls per kind in the emulator probe
/// (`YKHSM_BENCH_HSM_CALLS` overrides).
const HSM_CALLS: usize = 4000;
/// The driver's deadline per exchange in the probe (the daemon's is 1 s).
const HSM_TIMEOUT: Duration = Duration::from_secs(1);
/// The probe's echo payload: the size of an OTP decode request's payload
/// (nonce 6 + key handle 4 + OTP 16 + AEAD 30).
const HSM_ECHO: usize = 56;
/// One request's deadline (connect + write + read).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of the echo floor's request and answer: about a verify frame
/// (header, user name, 44-character OTP) and a verdict frame.
const ECHO_REQUEST: usize = 80;
const ECHO_ANSWER: usize = 8;

// ---------------------------------------------------------------- helpers

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The value at `per_100k` / 100,000 of sorted `v` (nearest rank).
fn percentile(sorted: &[u64], per_100k: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * per_100k).div_ceil(100_000).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Clock ticks per second for /proc times (`getconf CLK_TCK`).
fn clk_tck() -> u64 {
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100)
}

/// utime + stime of a whole process (all its threads), in clock ticks.
fn process_ticks(pid: &str) -> u64 {
    stat_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// (busy, total, steal) ticks of the whole machine, from /proc/stat;
/// steal (time the hypervisor gave this machine's CPUs to someone else) is
/// part of busy.
fn machine_ticks() -> (u64, u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = g(0) + g(1) + g(2) + g(5) + g(6) + g(7);
    (busy, busy + g(3) + g(4), g(7))
}

/// CPU ticks of every thread on the machine but the daemon's and this
/// process's, by (pid, tid), with the thread's name: who the "others" are.
fn other_threads(daemon_pid: &str) -> BTreeMap<(String, String), (String, u64)> {
    let me = std::process::id().to_string();
    let mut out = BTreeMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me || pid == daemon_pid {
            continue;
        }
        let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(stat) = fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let name = stat
                .split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map_or("?", |(name, _)| name)
                .to_owned();
            let tid = t.file_name().to_string_lossy().into_owned();
            out.insert((pid.clone(), tid), (name, stat_ticks(&stat)));
        }
    }
    out
}

/// A level's machine ticks, at least 1 (a share's denominator).
fn m_of(l: &Level) -> f64 {
    l.machine_ticks.max(1) as f64
}

/// utime + stime of a `stat` line (a process's or a thread's).
fn stat_ticks(stat: &str) -> u64 {
    // The command name is in parentheses and may hold spaces: count fields
    // after the last ')'. Field 3 (state) is index 0, so utime (14) is 11.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// The threads (by name) that used the most CPU between two
/// [`other_threads`] snapshots, most first, at most `n`, and the ticks of
/// all of them (what `others` leaves beyond that was used by threads that
/// ended before the second snapshot: short-lived processes).
fn top_others(
    before: &BTreeMap<(String, String), (String, u64)>,
    after: &BTreeMap<(String, String), (String, u64)>,
    n: usize,
) -> (Vec<(String, u64)>, u64) {
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (key, (name, ticks)) in after {
        let was = before.get(key).map_or(0, |(_, t)| *t);
        if *ticks > was {
            *by_name.entry(name.clone()).or_default() += ticks - was;
        }
    }
    let seen = by_name.values().sum();
    let mut v: Vec<(String, u64)> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    (v, seen)
}

/// CPU counters at one instant.
#[derive(Clone, Copy)]
struct Cpu {
    daemon: u64,
    bench: u64,
    busy: u64,
    total: u64,
    steal: u64,
}

impl Cpu {
    fn now(daemon_pid: &str) -> Self {
        let (busy, total, steal) = machine_ticks();
        Self {
            daemon: process_ticks(daemon_pid),
            bench: process_ticks("self"),
            busy,
            total,
            steal,
        }
    }
}

// ----------------------------------------------------------- installation

struct Install {
    /// keys.json, the AEAD store, the authfile, the configuration.
    files: Installation,
    /// Key `i` belongs to user `user(i)`.
    keys: Arc<Vec<Mutex<SoftYubiKey>>>,
    /// Key `i`'s nonce and AEAD (as in its AEAD file).
    aeads: Vec<(Nonce, YubiKeyAead)>,
    /// Key handle 1's key (hex), as in keys.json: what the emulator holds.
    kh1_key: Zeroizing<String>,
}

fn user(i: usize) -> String {
    format!("u{i:04}")
}

/// A temporary installation with a random key handle 1 and [`KEYS`]
/// software YubiKeys, key `i` on user `user(i)`'s line.
fn install() -> Install {
    let kh1_key = Zeroizing::new(hex::encode(random::<32>()));
    let files = Installation::new("ykhsm-bench-", &kh1_key);
    let kh: KeyHandleName = "1".parse().expect("key handle name");
    let mut keys = Vec::with_capacity(KEYS);
    let mut aeads = Vec::with_capacity(KEYS);
    let mut authfile = String::new();
    for i in 0..KEYS {
        let serial = 7_000_000 + u32::try_from(i).expect("key index");
        let id = PublicId::parse(&public_id_ykman(serial)).expect("public id");
        let secrets = YubiKeySecrets::new(random(), random());
        let aead = files.enroll(&kh, &id, &secrets, WriteMode::CreateNew);
        let _ = writeln!(authfile, "{}:{id}", user(i));
        aeads.push((aead.nonce, aead.aead));
        keys.push(Mutex::new(SoftYubiKey::new(id, secrets)));
    }
    files.set_authfile(&authfile);
    Install {
        files,
        keys: Arc::new(keys),
        aeads,
        kh1_key,
    }
}

/// A YubiHSM 1 emulator on a pseudo-terminal whose key handle 1 holds
/// keys.json's key, with the permissions the daemon and ykadmin use.
fn emulator(inst: &Install) -> EmuPty {
    emulated_hsm_holding(&[(1, inst.kh1_key.to_string())], BASTION_FLAGS, None)
}

/// Binds the syslog socket and discards what arrives (as a syslogd would
/// take it off the daemon's hands).
fn syslog_sink(path: &Path) {
    let sock = UnixDatagram::bind(path).expect("bind syslog socket");
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while sock.recv(&mut buf).is_ok() {}
    });
}

struct Daemon {
    child: Child,
    /// stderr lines other than the audit trail (warnings, errors).
    notes: Arc<Mutex<Vec<String>>>,
    /// `duration_us` of each verify audit line (the daemon's own measure:
    /// from the decoded request to the committed verdict), in ns.
    durations: Arc<Mutex<Vec<u64>>>,
}

impl Daemon {
    fn start(inst: &Install) -> Self {
        let mut child = Command::new(ykhsm_testkit::ykhsmd_bin())
            .arg("--config")
            .arg(&inst.files.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ykhsmd");
        let stderr = child.stderr.take().expect("stderr");
        let notes = Arc::new(Mutex::new(Vec::new()));
        let durations = Arc::new(Mutex::new(Vec::new()));
        let n = Arc::clone(&notes);
        let d = Arc::clone(&durations);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("error") || line.contains("warning") {
                    n.lock().expect("notes").push(line);
                } else if line.starts_with("ykhsmd: verify ")
                    && let Some(us) = line
                        .rsplit_once("duration_us=")
                        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                {
                    d.lock().expect("durations").push(us * 1000);
                }
            }
        });
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Response::StatusInfo { .. }) = call(
                &inst.files.socket,
                ServerUid::ROOT,
                &Request::Status,
                Duration::from_secs(2),
            ) {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "ykhsmd exited at start-up ({st}): {:?}",
                    notes.lock().expect("notes")
                );
            }
            assert!(Instant::now() < end, "ykhsmd did not answer within 20 s");
            thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            notes,
            durations,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// SIGTERM, then wait up to 10 s.
    fn stop(&mut self) -> String {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.to_string();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return "did not stop within 10 s of SIGTERM; killed".into();
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- floors

/// Latencies (unsorted) over a wall-clock span.
#[derive(Default, Clone)]
struct Samples {
    lat: Vec<u64>,
    secs: f64,
    /// CPU ticks this process used meanwhile (both ends, for the echo).
    ticks: u64,
}

impl Samples {
    fn add(&mut self, other: &Samples) {
        self.lat.extend_from_slice(&other.lat);
        self.secs += other.secs;
        self.ticks += other.ticks;
    }

    fn summary(&self) -> Floor {
        let mut lat = self.lat.clone();
        lat.sort_unstable();
        Floor {
            n: lat.len(),
            p50: percentile(&lat, 50_000),
            p99: percentile(&lat, 99_000),
            per_sec: lat.len() as f64 / self.secs.max(1e-9),
            cpu_us: self.ticks as f64 / clk_tck() as f64 * 1e6 / lat.len().max(1) as f64,
        }
    }
}

struct Floor {
    n: usize,
    p50: u64,
    p99: u64,
    per_sec: f64,
    /// CPU time per operation.
    cpu_us: f64,
}

/// (a) One durable single-row commit: SQLite, WAL, synchronous=FULL, an
/// UPSERT of one row per transaction, rows spread over `KEYS` keys (the
/// daemon's schema). Measured in slices through the run, because the disk
/// is shared and its fsync time drifts with what else is writing.
struct SqliteFloor {
    conn: Connection,
    ids: Vec<String>,
    i: u64,
}

impl SqliteFloor {
    fn open(dir: &Path) -> Self {
        let conn = Connection::open(dir.join("floor.sqlite")).expect("open floor db");
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .expect("WAL");
        assert!(mode.eq_ignore_ascii_case("wal"), "journal_mode={mode}");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("synchronous");
        conn.execute_batch(
            "CREATE TABLE counters (
                public_id TEXT NOT NULL PRIMARY KEY, generation INTEGER NOT NULL,
                counter INTEGER NOT NULL, session_use INTEGER NOT NULL,
                ts_high INTEGER NOT NULL, ts_low INTEGER NOT NULL,
                modified INTEGER NOT NULL, reset_at INTEGER NOT NULL) WITHOUT ROWID;",
        )
        .expect("schema");
        let ids = (0..KEYS)
            .map(|i| public_id_ykman(7_000_000 + u32::try_from(i).expect("index")))
            .collect();
        Self { conn, ids, i: 0 }
    }

    fn commit_one(&mut self) {
        let i = self.i;
        self.i += 1;
        let id = &self.ids[usize::try_from(i).unwrap_or(0) % KEYS];
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("begin");
        tx.prepare_cached(
            "INSERT INTO counters (public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at)
             VALUES (?1, 0, ?2, ?3, 0, 0, ?4, 0)
             ON CONFLICT (public_id) DO UPDATE SET
               counter = excluded.counter, session_use = excluded.session_use,
               modified = excluded.modified",
        )
        .expect("prepare")
        .execute(params![
            id,
            i64::try_from(i / 256).unwrap_or(0),
            i64::try_from(i % 256).unwrap_or(0),
            i64::try_from(i).unwrap_or(0)
        ])
        .expect("upsert");
        tx.commit().expect("commit");
    }

    fn slice(&mut self, dur: Duration) -> Samples {
        let mut lat = Vec::new();
        let ticks = process_ticks("self");
        let start = Instant::now();
        while start.elapsed() < dur {
            let t = Instant::now();
            self.commit_one();
            lat.push(nanos(t.elapsed()));
        }
        Samples {
            lat,
            secs: start.elapsed().as_secs_f64(),
            ticks: process_ticks("self") - ticks,
        }
    }
}

/// (b) One Unix-socket round trip on a new connection: a blocking echo
/// server thread that reads a verify-sized request and answers a few bytes.
fn socket_floor(dir: &Path, dur: Duration) -> Samples {
    let path = dir.join("echo.sock");
    let listener = UnixListener::bind(&path).expect("bind echo socket");
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let mut req = [0u8; ECHO_REQUEST];
            if s.read_exact(&mut req).is_ok() {
                let _ = s.write_all(&req[..ECHO_ANSWER]);
            }
        }
    });
    let req = [0x5au8; ECHO_REQUEST];
    let mut lat = Vec::new();
    let ticks = process_ticks("self");
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        let mut s = UnixStream::connect(&path).expect("connect echo");
        s.write_all(&req).expect("write echo");
        let mut ans = [0u8; ECHO_ANSWER];
        s.read_exact(&mut ans).expect("read echo");
        drop(s);
        lat.push(nanos(t.elapsed()));
    }
    Samples {
        lat,
        secs: start.elapsed().as_secs_f64(),
        ticks: process_ticks("self") - ticks,
    }
}

// ------------------------------------------------------------------ load

#[derive(Default)]
struct ClientResult {
    lat: Vec<u64>,
    /// Answer (status word or client error) → count, for non-`OK` answers.
    errors: BTreeMap<String, u64>,
}

/// One PAM-like client: a new connection per verify, over its own keys.
fn client(
    socket: &Path,
    keys: &[Mutex<SoftYubiKey>],
    mine: &[usize],
    dur: Duration,
    barrier: &Barrier,
) -> ClientResult {
    let users: Vec<String> = mine.iter().map(|&i| user(i)).collect();
    let mut out = ClientResult {
        lat: Vec::with_capacity(1 << 14),
        ..ClientResult::default()
    };
    barrier.wait();
    let until = Instant::now() + dur;
    let mut j = 0;
    while Instant::now() < until {
        let otp = keys[mine[j]]
            .lock()
            .expect("key")
            .next_otp()
            .to_typed_string();
        let req = Request::Verify {
            user: users[j].clone(),
            otp: Zeroizing::new(otp.to_string()),
        };
        let t = Instant::now();
        let answer = call(socket, ServerUid::ROOT, &req, CALL_TIMEOUT);
        out.lat.push(nanos(t.elapsed()));
        match answer {
            Ok(Response::Verdict { status: Status::Ok }) => {}
            Ok(Response::Verdict { status }) => {
                *out.errors.entry(format!("status {status}")).or_default() += 1;
            }
            Ok(other) => {
                *out.errors.entry(format!("answer {other:?}")).or_default() += 1;
            }
            Err(e) => *out.errors.entry(format!("client error: {e}")).or_default() += 1,
        }
        j = (j + 1) % mine.len();
    }
    out
}

struct Level {
    clients: usize,
    verifies: usize,
    secs: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    /// The daemon's own `duration_us` (p50, p99).
    srv: (u64, u64),
    errors: BTreeMap<String, u64>,
    daemon_ticks: u64,
    bench_ticks: u64,
    other_ticks: u64,
    /// Of `other_ticks`: the hypervisor's (steal).
    steal_ticks: u64,
    /// The threads outside the daemon and this bench that used the most
    /// CPU during the level (name, ticks).
    top_others: Vec<(String, u64)>,
    /// Ticks of all threads outside the daemon and this bench that were
    /// alive at the level's end.
    seen_others: u64,
    machine_ticks: u64,
}

fn run_level(inst: &Install, daemon: &Daemon, clients: usize, dur: Duration) -> Level {
    let daemon_pid = daemon.pid();
    let daemon_pid = daemon_pid.as_str();
    daemon.durations.lock().expect("durations").clear();
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let mine: Vec<usize> = (c..KEYS).step_by(clients).collect();
            let keys = Arc::clone(&inst.keys);
            let socket = inst.files.socket.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || client(&socket, &keys, &mine, dur, &barrier))
        })
        .collect();
    let others_before = other_threads(daemon_pid);
    barrier.wait();
    let before = Cpu::now(daemon_pid);
    let start = Instant::now();
    let results: Vec<ClientResult> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let after = Cpu::now(daemon_pid);
    let (top_others, seen_others) = top_others(&others_before, &other_threads(daemon_pid), 4);
    // The audit lines were written before the answers; let the reader
    // thread catch up with the pipe.
    thread::sleep(Duration::from_millis(200));
    let mut srv = std::mem::take(&mut *daemon.durations.lock().expect("durations"));
    srv.sort_unstable();
    let mut lat: Vec<u64> = Vec::new();
    let mut errors = BTreeMap::new();
    for r in results {
        lat.extend(r.lat);
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    lat.sort_unstable();
    let daemon_ticks = after.daemon - before.daemon;
    let bench_ticks = after.bench - before.bench;
    let busy = after.busy - before.busy;
    Level {
        clients,
        verifies: lat.len(),
        secs,
        p50: percentile(&lat, 50_000),
        p99: percentile(&lat, 99_000),
        p999: percentile(&lat, 99_900),
        max: lat.last().copied().unwrap_or(0),
        srv: (percentile(&srv, 50_000), percentile(&srv, 99_000)),
        errors,
        daemon_ticks,
        bench_ticks,
        other_ticks: busy.saturating_sub(daemon_ticks + bench_ticks),
        steal_ticks: after.steal - before.steal,
        top_others,
        seen_others,
        machine_ticks: after.total - before.total,
    }
}

/// (b') As (b), but through the real client (`ykhsm_proto::call`: deadline,
/// socket options, framing, decoding) against a blocking server thread
/// that reads one frame and answers a pre-encoded `OK` verdict. Not part of
/// the floor; it shows what the client library adds to (b).
fn framed_socket_floor(dir: &Path, dur: Duration) -> Samples {
    let path = dir.join("framed.sock");
    let listener = UnixListener::bind(&path).expect("bind framed echo socket");
    let answer = frame::frame(&Response::Verdict { status: Status::Ok }.encode())
        .expect("frame")
        .to_vec();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            if frame::read_frame(&mut s, frame::MAX_FRAME).is_ok() {
                let _ = s.write_all(&answer);
            }
        }
    });
    let req = Request::Verify {
        user: user(0),
        otp: Zeroizing::new("vvccccdbjrgf".repeat(2) + &"c".repeat(20)),
    };
    let mut lat = Vec::new();
    let ticks = process_ticks("self");
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        let r = call(&path, ServerUid::ROOT, &req, CALL_TIMEOUT);
        lat.push(nanos(t.elapsed()));
        assert!(
            matches!(r, Ok(Response::Verdict { status: Status::Ok })),
            "framed echo: {r:?}"
        );
    }
    Samples {
        lat,
        secs: start.elapsed().as_secs_f64(),
        ticks: process_ticks("self") - ticks,
    }
}

/// Diagnostic: one client asking `HasUser` (socket, runtime, one
/// blocking-pool hop and an authfile stat; no AEAD, no database, no log
/// line), to separate the daemon's per-request overhead from the commit.
fn no_commit_probe(socket: &Path, dur: Duration) -> (Samples, u64) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let req = Request::HasUser { user: user(0) };
    let ticks = process_ticks("self");
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        let answer = call(socket, ServerUid::ROOT, &req, CALL_TIMEOUT);
        lat.push(nanos(t.elapsed()));
        if !matches!(answer, Ok(Response::Verdict { status: Status::Ok })) {
            errors += 1;
        }
    }
    (
        Samples {
            lat,
            secs: start.elapsed().as_secs_f64(),
            ticks: process_ticks("self") - ticks,
        },
        errors,
    )
}

// --------------------------------------------------------- emulator probe

/// CPU time of this whole process (all threads, the emulator's included),
/// in ns, from `getrusage` (finer than /proc's clock ticks).
fn self_cpu_ns() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let ns = |t: nix::sys::time::TimeVal| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_usec()).unwrap_or(0) * 1000
        };
        ns(u.user_time()) + ns(u.system_time())
    })
}

/// `calls` calls of `f` (after a tenth as many unmeasured), one at a
/// time; an `Err` is counted under its text in `errors`.
fn timed(
    calls: usize,
    mut f: impl FnMut(usize) -> Result<(), String>,
    errors: &mut BTreeMap<String, u64>,
) -> Floor {
    for i in 0..calls.div_ceil(10) {
        if let Err(e) = f(i) {
            *errors.entry(format!("{e} (warm-up)")).or_default() += 1;
        }
    }
    let mut lat = Vec::with_capacity(calls);
    let cpu = self_cpu_ns();
    let start = Instant::now();
    for i in 0..calls {
        let t = Instant::now();
        let r = f(i);
        lat.push(nanos(t.elapsed()));
        if let Err(e) = r {
            *errors.entry(e).or_default() += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = self_cpu_ns().saturating_sub(cpu);
    lat.sort_unstable();
    Floor {
        n: lat.len(),
        p50: percentile(&lat, 50_000),
        p99: percentile(&lat, 99_000),
        per_sec: lat.len() as f64 / secs.max(1e-9),
        cpu_us: cpu as f64 / 1000.0 / lat.len().max(1) as f64,
    }
}

/// What the emulator itself costs, measured through the daemon's driver
/// on an emulator of its own while nothing else runs.
struct HsmProbe {
    info: String,
    /// `YubiHsm::open`: resync (0.1 s of silence), system info, echo test.
    open: Duration,
    echo: Floor,
    decode: Floor,
    soft: Floor,
    errors: BTreeMap<String, u64>,
}

fn hsm_probe(inst: &Install, calls: usize) -> HsmProbe {
    let pty = emulator(inst);
    let t = Instant::now();
    let mut hsm = YubiHsm::open(pty.path(), HSM_TIMEOUT).expect("open the emulator (driver)");
    let open = t.elapsed();
    let info = hsm.info().to_string();
    // Each key's OTP with counters (1, 0): what the emulator decodes does
    // not need to be fresh (it keeps no counters).
    let inputs: Vec<(Nonce, YubiKeyAead, Token)> = inst
        .keys
        .iter()
        .zip(&inst.aeads)
        .map(|(k, (nonce, aead))| {
            let otp = k.lock().expect("key").otp_with(1, 0);
            (*nonce, aead.clone(), otp.token().clone())
        })
        .collect();
    let check = |what: &str, c: ykhsm_core::OtpCounters| {
        if c.use_counter == 1 && c.session_use == 0 {
            Ok(())
        } else {
            Err(format!("{what}: wrong counters {c:?}"))
        }
    };
    let mut errors = BTreeMap::new();
    let data = [0xa5u8; HSM_ECHO];
    let echo = timed(
        calls,
        |_| match hsm.echo(&data) {
            Ok(back) if back == data => Ok(()),
            Ok(_) => Err("echo: other data came back".into()),
            Err(e) => Err(format!("echo: {e}")),
        },
        &mut errors,
    );
    let decode = timed(
        calls,
        |i| {
            let (nonce, aead, token) = &inputs[i % inputs.len()];
            match hsm.otp_decode(KeyHandle(1), nonce, aead, token) {
                Ok(c) => check("otp_decode", c),
                Err(e) => Err(format!("otp_decode: {e}")),
            }
        },
        &mut errors,
    );
    let soft = timed(
        calls,
        |i| {
            let (nonce, aead, token) = &inputs[i % inputs.len()];
            match inst
                .files
                .backend()
                .decode_otp(KeyHandle(1), nonce, aead, token)
            {
                Ok(c) => check("soft decode", c),
                Err(e) => Err(format!("soft decode: {e}")),
            }
        },
        &mut errors,
    );
    drop(hsm);
    drop(pty);
    HsmProbe {
        info,
        open,
        echo,
        decode,
        soft,
        errors,
    }
}

// ------------------------------------------------------------------ main

fn main() {
    let hsm_mode = match std::env::var("YKHSM_BENCH_BACKEND").as_deref() {
        Err(_) | Ok("" | "soft") => false,
        Ok("yubihsm") => true,
        Ok(other) => panic!("YKHSM_BENCH_BACKEND={other:?}: expected \"soft\" or \"yubihsm\""),
    };
    let hsm_calls: usize = std::env::var("YKHSM_BENCH_HSM_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(HSM_CALLS);
    let secs: u64 = std::env::var("YKHSM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(4);
    let dur = Duration::from_secs(secs);
    let level_list: Vec<usize> = std::env::var("YKHSM_BENCH_LEVELS")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|c| c.trim().parse().ok())
                .filter(|&c| (1..=KEYS).contains(&c))
                .collect::<Vec<usize>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            if hsm_mode {
                HSM_LEVELS.to_vec()
            } else {
                LEVELS.to_vec()
            }
        });
    let tck = clk_tck();
    let cpus = thread::available_parallelism().map_or(1, usize::from);
    println!(
        "ykhsmd daemon benchmark, backend {}",
        if hsm_mode {
            "yubihsm (YubiHSM 1 emulator on a pty in this process)"
        } else {
            "soft (keys.json)"
        }
    );
    println!(
        "  {KEYS} keys, levels {level_list:?} clients, {secs} s per level, {cpus} CPUs, CLK_TCK={tck} (sysconf)"
    );
    println!("  load average at start: {}", loadavg());

    let t = Instant::now();
    let inst = install();
    // Nothing of the installation (1,024 AEAD files, the authfile) may be
    // left for the kernel to write back during the first level: on ext4
    // (data=ordered) the daemon's first fsyncs would carry it, and the c=1
    // level, which comes first, was slowed by whatever the last run or the
    // installation left dirty (others' CPU at 40 %, daemon CPU per verify
    // up 3-4x in those runs; docs/performance.md).
    nix::unistd::sync();
    syslog_sink(inst.files.syslog_socket.as_deref().expect("syslog socket"));
    println!(
        "  installation in {} ({:.1} s to write {KEYS} AEADs)",
        inst.files.dir.path().display(),
        t.elapsed().as_secs_f64()
    );

    // The emulator's own cost, on an emulator of its own before anything
    // else runs; then the daemon's.
    let probe_hsm = hsm_mode.then(|| hsm_probe(&inst, hsm_calls));
    let device = hsm_mode.then(|| emulator(&inst));
    inst.files
        .write_config(device.as_ref().map(EmuPty::path), "");
    if let Some(d) = &device {
        println!(
            "  daemon's device: {} (emulator, key handle 1 = keys.json's key)",
            d.path().display()
        );
    }

    // Floors: (b) once, (a) in slices before the daemon, before each level
    // (daemon idle) and after the daemon has stopped.
    let floor_dir = inst.files.dir.path().join("floor");
    fs::create_dir(&floor_dir).expect("floor dir");
    let sock = socket_floor(&floor_dir, Duration::from_secs(2)).summary();
    let framed = framed_socket_floor(&floor_dir, Duration::from_secs(1)).summary();
    let mut sq = SqliteFloor::open(&floor_dir);
    let _ = sq.slice(Duration::from_millis(500)); // fills the table and the WAL
    let mut slices: Vec<(String, Samples)> = Vec::new();
    slices.push(("before start".into(), sq.slice(Duration::from_secs(2))));

    let mut daemon = Daemon::start(&inst);
    let pid = daemon.pid();
    println!(
        "  ykhsmd pid {pid} ({})",
        ykhsm_testkit::ykhsmd_bin().display()
    );

    // Warm-up (not reported, but its errors count).
    let warm = run_level(&inst, &daemon, 8, Duration::from_secs(1));
    let (probe, probe_errors) = no_commit_probe(&inst.files.socket, Duration::from_secs(1));
    let probe = probe.summary();
    let mut levels: Vec<Level> = Vec::new();
    for &c in &level_list {
        slices.push((
            format!("before c={c}"),
            sq.slice(Duration::from_millis(1500)),
        ));
        levels.push(run_level(&inst, &daemon, c, dur));
    }
    let load_end = loadavg();
    let status = daemon.stop();
    slices.push(("after stop".into(), sq.slice(Duration::from_secs(2))));
    let mut pooled = Samples::default();
    for (_, s) in &slices {
        pooled.add(s);
    }
    let commit = pooled.summary();
    // With the YubiHSM backend a verify also waits for one OTP decode on
    // the device: (c) below, the emulator's, measured on its own.
    let hsm_decode = probe_hsm.as_ref().map_or(0, |p| p.decode.p50);
    let floor = sock.p50 + commit.p50 + hsm_decode;

    println!();
    println!("Floor (same file system as the daemon's state_dir; no daemon work while measured)");
    println!("  (a) SQLite WAL+FULL, 1-row UPSERT per transaction, per slice:");
    for (name, s) in &slices {
        let f = s.summary();
        println!(
            "      {name:<14} n={:6}  p50={:8.1} us  p99={:8.1} us  {:7.0} commits/s  CPU {:5.1} us/commit",
            f.n,
            us(f.p50),
            us(f.p99),
            f.per_sec,
            f.cpu_us
        );
    }
    println!(
        "      {:<14} n={:6}  p50={:8.1} us  p99={:8.1} us  {:7.0} commits/s  CPU {:5.1} us/commit",
        "pooled",
        commit.n,
        us(commit.p50),
        us(commit.p99),
        commit.per_sec,
        commit.cpu_us
    );
    println!(
        "  (b) Unix socket, new connection + round trip: n={:6}  p50={:8.1} us  p99={:8.1} us  {:7.0} trips/s  CPU {:5.1} us/trip (both ends)",
        sock.n,
        us(sock.p50),
        us(sock.p99),
        sock.per_sec,
        sock.cpu_us
    );
    println!(
        "  (b') as (b) via ykhsm_proto::call + framing: n={:6}  p50={:8.1} us  p99={:8.1} us  (not in the floor)  CPU {:5.1} us/trip",
        framed.n,
        us(framed.p50),
        us(framed.p99),
        framed.cpu_us
    );
    if let Some(p) = &probe_hsm {
        println!(
            "  (c) emulator otp_decode through ykhsm_yubihsm::YubiHsm (see the last table): p50={:8.1} us",
            us(p.decode.p50)
        );
        println!(
            "  floor = (b) p50 + (a) pooled p50 + (c) p50 = {:.1} us; single-commit rate = {:.0} /s",
            us(floor),
            commit.per_sec
        );
    } else {
        println!(
            "  floor = (b) p50 + (a) pooled p50 = {:.1} us; single-commit rate = {:.0} /s",
            us(floor),
            commit.per_sec
        );
    }
    println!(
        "  diagnostic: ykhsmd HasUser (no AEAD, no commit, no log), c=1: n={} p50={:.1} us p99={:.1} us",
        probe.n,
        us(probe.p50),
        us(probe.p99)
    );

    println!();
    println!("ykhsmd verify (new connection per request; latency is client side)");
    println!(
        "  {:>7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "clients",
        "verifies",
        "verifies/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "p50/floor",
        "thr/commit",
        "errors"
    );
    for l in &levels {
        let errors: u64 = l.errors.values().sum();
        println!(
            "  {:>7} {:>8} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>10.2} {:>6}",
            l.clients,
            l.verifies,
            l.verifies as f64 / l.secs,
            us(l.p50),
            us(l.p99),
            us(l.p999),
            us(l.max),
            l.p50 as f64 / floor as f64,
            l.verifies as f64 / l.secs / commit.per_sec,
            errors
        );
    }
    println!("  thr/commit: verifies/s divided by the single-commit rate of (a).");
    println!();
    println!("Where the time goes");
    println!(
        "  {:>7} {:>9} {:>9} {:>10} {:>7} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "clients",
        "srv p50",
        "srv p99",
        "dCPU us/v",
        "dCPU %",
        "bCPU us/v",
        "machine:",
        "others %",
        "steal %",
        "idle %"
    );
    let tck_f = tck as f64;
    for l in &levels {
        let n = l.verifies.max(1) as f64;
        let m = l.machine_ticks.max(1) as f64;
        let idle = l
            .machine_ticks
            .saturating_sub(l.daemon_ticks + l.bench_ticks + l.other_ticks);
        println!(
            "  {:>7} {:>9.1} {:>9.1} {:>10.1} {:>7.0} {:>10.1} {:>9} {:>9.1} {:>8.1} {:>7.1}",
            l.clients,
            us(l.srv.0),
            us(l.srv.1),
            l.daemon_ticks as f64 / tck_f / n * 1e6,
            l.daemon_ticks as f64 / tck_f / l.secs * 100.0,
            l.bench_ticks as f64 / tck_f / n * 1e6,
            "",
            l.other_ticks as f64 / m * 100.0,
            l.steal_ticks as f64 / m * 100.0,
            idle as f64 / m * 100.0
        );
    }
    for l in &levels {
        let share = |ticks: u64| ticks as f64 / m_of(l) * 100.0;
        let mut named: Vec<String> = l
            .top_others
            .iter()
            .map(|(name, ticks)| format!("{name} {:.1} %", share(*ticks)))
            .collect();
        // CPU no thread visible here was charged with: processes in another
        // PID namespace (other containers sharing this kernel: invisible in
        // /proc, counted in /proc/stat), processes that ended during the
        // level, interrupts.
        let unnamed = l.other_ticks.saturating_sub(l.seen_others + l.steal_ticks);
        if unnamed > 0 {
            named.push(format!(
                "not in this /proc (other PID namespaces, ended processes, interrupts) {:.1} %",
                share(unnamed)
            ));
        }
        println!(
            "  c={:<4} others by thread: {}",
            l.clients,
            if named.is_empty() {
                "none".to_owned()
            } else {
                named.join(", ")
            }
        );
    }
    println!("  srv: the daemon's own duration_us from its audit lines (request decoded → verdict");
    println!("       committed; excludes accept, read, log write and answer), in us;");
    println!("  dCPU / bCPU: CPU time of the daemon (all threads, /proc/<pid>/stat) and of this");
    println!("       bench process (clients, pipe readers) per verify; dCPU % is of one CPU;");
    println!(
        "  others % / idle %: the rest of the machine ({cpus} CPUs, /proc/stat) during the level;"
    );
    println!("       steal %: of others, CPU the hypervisor gave to other guests; by thread: the");
    println!("       threads outside the daemon and this bench that used the most (/proc/*/task).");
    if hsm_mode {
        println!("  (yubihsm: the emulator is a thread of this bench, so its CPU is in bCPU.)");
    }
    println!("  load average at end: {load_end}");

    let mut all_errors: BTreeMap<String, u64> = warm.errors.clone();
    for l in &levels {
        for (k, v) in &l.errors {
            *all_errors.entry(k.clone()).or_default() += v;
        }
    }
    if probe_errors > 0 {
        all_errors.insert("HasUser probe not OK".into(), probe_errors);
    }
    if let Some(p) = &probe_hsm {
        for (k, v) in &p.errors {
            *all_errors
                .entry(format!("emulator probe: {k}"))
                .or_default() += v;
        }
    }
    let total_errors: u64 = all_errors.values().sum();
    println!();
    println!(
        "Errors (warm-up of {} verifies and the probe included): {total_errors}",
        warm.verifies
    );
    for (k, v) in &all_errors {
        println!("  {v:6} x {k}");
    }
    let notes = daemon.notes.lock().expect("notes").clone();
    for n in notes.iter().take(10) {
        println!("  daemon said: {n}");
    }

    println!();
    println!("Targets (reported, not enforced)");
    if let Some(l) = levels.iter().find(|l| l.clients == 1) {
        let r = l.p50 as f64 / floor as f64;
        println!(
            "  c=1 p50 <= 1.5 x floor:             {:8.1} us / {:.1} us = {r:.2}  {}",
            us(l.p50),
            us(floor),
            if r <= 1.5 { "MET" } else { "NOT MET" }
        );
    }
    if let Some(l) = levels.iter().find(|l| l.clients == 64) {
        let thr = l.verifies as f64 / l.secs;
        let r = thr / commit.per_sec;
        println!(
            "  c=64 throughput >= 3 x commit rate: {thr:8.0} /s / {:.0} /s = {r:.2}  {}",
            commit.per_sec,
            if r >= 3.0 { "MET" } else { "NOT MET" }
        );
    }
    println!(
        "  zero errors:                        {total_errors:8}  {}",
        if total_errors == 0 { "MET" } else { "NOT MET" }
    );
    println!();
    println!("ykhsmd stopped with SIGTERM: {status}");
    drop(device);

    if let Some(p) = &probe_hsm {
        print_hsm_table(p, &levels, sock.p50, commit.p50);
    }
    if std::env::var_os("YKHSM_BENCH_FLEET").is_some_and(|v| v == "1") {
        fleet_comparison(&inst, &levels, dur);
    }
}

/// `YKHSM_BENCH_FLEET=1`: the same levels again with `[fleet]` on a
/// PostgreSQL of the bench's own (Debian's postgresql-15, started here in a
/// temporary directory, on 127.0.0.1 over TCP with a password, fsync off
/// in the store: the store's own disk is not what is measured), next to
/// the local-only figures of this run; and how many logins each round trip
/// to the store carried (the daemon's own count, `ykadmin status`).
fn fleet_comparison(inst: &Install, local: &[Level], dur: Duration) {
    use ykhsm_testkit::postgres::Postgres;
    let pg = Postgres::start();
    let pw = inst.files.dir.path().join("fleet.password");
    pg.write_password_file(&pw);
    let fleet_table = format!(
        "[fleet]\nurl = {:?}\npassword_file = {:?}\n",
        pg.url_tcp(),
        pw.display().to_string()
    );
    inst.files.write_config(None, &fleet_table);
    let init = Command::new(ykhsm_testkit::ykadmin_bin())
        .arg("--config")
        .arg(&inst.files.config_path)
        .args(["fleet", "init"])
        .output()
        .expect("ykadmin fleet init");
    assert!(
        init.status.success(),
        "ykadmin fleet init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut daemon = Daemon::start(inst);
    // At start the daemon pushes every row it has once: let that finish.
    let end = Instant::now() + Duration::from_secs(60);
    while fleet_stats(inst).is_none_or(|f| f.unsynced_rows > 0 || !f.connected) {
        assert!(Instant::now() < end, "the daemon did not sync within 60 s");
        thread::sleep(Duration::from_millis(50));
    }
    let warm = run_level(inst, &daemon, 8, Duration::from_secs(1));
    let mut rows = Vec::new();
    for l in local {
        let before = fleet_stats(inst).expect("status");
        let f = run_level(inst, &daemon, l.clients, dur);
        let after = fleet_stats(inst).expect("status");
        let trips = after.round_trips - before.round_trips;
        let sent = after.logins_sent - before.logins_sent;
        rows.push((l, f, trips, sent));
    }
    let status = daemon.stop();
    println!();
    println!(
        "With [fleet] (PostgreSQL 15 on 127.0.0.1, TCP, SCRAM), next to this run's local-only levels"
    );
    println!(
        "  {:>7} {:>11} {:>11} {:>6} {:>12} {:>12} {:>6} {:>11} {:>12} {:>7}",
        "clients",
        "local p50",
        "fleet p50",
        "ratio",
        "local /s",
        "fleet /s",
        "ratio",
        "round trips",
        "logins sent",
        "per trip"
    );
    let mut errors = warm.errors.values().sum::<u64>();
    for (l, f, trips, sent) in &rows {
        errors += f.errors.values().sum::<u64>();
        let (lt, ft) = (l.verifies as f64 / l.secs, f.verifies as f64 / f.secs);
        println!(
            "  {:>7} {:>11.1} {:>11.1} {:>6.2} {:>12.0} {:>12.0} {:>6.2} {:>11} {:>12} {:>7.2}",
            l.clients,
            us(l.p50),
            us(f.p50),
            f.p50 as f64 / l.p50.max(1) as f64,
            lt,
            ft,
            ft / lt.max(1.0),
            trips,
            sent,
            *sent as f64 / (*trips).max(1) as f64
        );
    }
    println!("  per trip: logins carried by one round trip to the store (the daemon's counters).");
    println!("  errors with the fleet: {errors}; ykhsmd stopped: {status}");
    for n in daemon.notes.lock().expect("notes").iter().take(5) {
        println!("  daemon said: {n}");
    }
}

/// The daemon's fleet numbers (`Status`).
fn fleet_stats(inst: &Install) -> Option<ykhsm_proto::report::FleetStats> {
    match call(
        &inst.files.socket,
        ServerUid::ROOT,
        &Request::Status,
        Duration::from_secs(5),
    ) {
        Ok(Response::StatusInfo { report }) => report.fleet,
        _ => None,
    }
}

/// The last table of `YKHSM_BENCH_BACKEND=yubihsm`: what the emulator
/// costs by itself, next to what a verify costs through the daemon.
fn print_hsm_table(p: &HsmProbe, levels: &[Level], sock_p50: u64, commit_p50: u64) {
    println!();
    println!("YubiHSM emulator: its own latency, next to the daemon's per verify");
    println!("  probe's own emulator: {}", p.info);
    println!(
        "  YubiHsm::open {:.1} ms (resync waits 100 ms of silence; the daemon pays it once)",
        p.open.as_secs_f64() * 1000.0
    );
    println!(
        "  {:<42} {:>6} {:>9} {:>9} {:>9} {:>10}",
        "", "n", "p50 us", "p99 us", "per s", "CPU us/op"
    );
    let row = |name: &str, f: &Floor| {
        println!(
            "  {name:<42} {:>6} {:>9.1} {:>9.1} {:>9.0} {:>10.1}",
            f.n,
            us(f.p50),
            us(f.p99),
            f.per_sec,
            f.cpu_us
        );
    };
    row(
        &format!("emulator echo, {HSM_ECHO} B (pty round trip)"),
        &p.echo,
    );
    row("emulator otp_decode (what a verify waits)", &p.decode);
    row("soft decode in-process (no device)", &p.soft);
    for l in levels {
        println!(
            "  {:<42} {:>6} {:>9.1} {:>9.1} {:>9.0} {:>10}",
            format!("ykhsmd verify, c={} (client side)", l.clients),
            l.verifies,
            us(l.p50),
            us(l.p99),
            l.verifies as f64 / l.secs,
            "-"
        );
        println!(
            "  {:<42} {:>6} {:>9.1} {:>9.1}",
            format!("  ykhsmd's own duration_us, c={}", l.clients),
            "",
            us(l.srv.0),
            us(l.srv.1)
        );
    }
    println!("  CPU us/op: this process (driver + emulator thread), getrusage.");
    let decode = p.decode.p50;
    println!(
        "  emulator crypto and decode work = otp_decode p50 - echo p50 = {:.1} us",
        us(decode.saturating_sub(p.echo.p50))
    );
    if let Some(l) = levels.iter().find(|l| l.clients == 1) {
        let rest = l.p50.saturating_sub(sock_p50 + commit_p50 + decode);
        println!(
            "  c=1 verify p50 {:.1} us = socket (b) {:.1} + commit (a) {:.1} + otp_decode {:.1} + rest {:.1};",
            us(l.p50),
            us(sock_p50),
            us(commit_p50),
            us(decode),
            us(rest)
        );
        println!(
            "      otp_decode is {:.0} % of it (p50s of separate runs; the rest is the daemon's own work)",
            decode as f64 / l.p50.max(1) as f64 * 100.0
        );
    }
    let ceiling = 1e9 / decode.max(1) as f64;
    for l in levels {
        let thr = l.verifies as f64 / l.secs;
        println!(
            "  c={:<3} {thr:7.0} verifies/s = {:5.1} % of one device's ceiling (1 / otp_decode p50 = {ceiling:.0} /s)",
            l.clients,
            thr / ceiling * 100.0
        );
    }
    println!("  A real YubiHSM 1 (USB) takes far longer per exchange than this pty: there the");
    println!("  device time dominates each verify and caps throughput at 1 / its otp_decode time.");
}
