//! Exactly once, under races and crashes: the real `ykhsmd` binary accepts
//! an OTP at most once however many clients present it at the same moment,
//! and an OTP it answered `OK` stays consumed across SIGKILL at any moment
//! (docs/protocol.md, "The order of the checks", 6 and 7: no `OK` leaves
//! before the commit).

use ykhsm_testkit as common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Daemon, Env};
use nix::sys::signal::Signal;
use rusqlite::{Connection, OpenFlags};
use ykhsm_core::counters::Counters;
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_proto::frame::FrameError;
use ykhsm_proto::{ClientError, Request, Response, ServerUid, Status, call};
use zeroize::Zeroizing;

const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";

fn verify_request(otp: &str) -> Request {
    Request::Verify {
        user: "alice".into(),
        otp: Zeroizing::new(otp.to_owned()),
    }
}

#[test]
fn same_fresh_otp_from_32_threads_is_accepted_exactly_once() {
    const THREADS: usize = 32;
    const ROUNDS: usize = 50;
    let (env, mut key, d) = common::alice();
    for round in 0..ROUNDS {
        let otp = env.otp(&mut key);
        let barrier = Barrier::new(THREADS);
        let statuses: Vec<Status> = thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        // Every thread is spawned and waiting: they all
                        // connect and send at once.
                        barrier.wait();
                        d.verify("alice", &otp)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = statuses.iter().filter(|s| **s == Status::Ok).count();
        let replayed = statuses
            .iter()
            .filter(|s| **s == Status::ReplayedOtp)
            .count();
        assert_eq!(
            (ok, replayed),
            (1, THREADS - 1),
            "round {round}: {statuses:?}"
        );
    }
    // The daemon still works normally afterwards.
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

/// Cycles of start → stream → SIGKILL.
const CYCLES: usize = 200;
/// Client threads streaming OTPs in each cycle.
const CLIENTS: usize = 4;
/// Keys per client (each key is used by one client only, so its OTPs reach
/// the daemon in order and each fresh one must be accepted).
const KEYS_PER_CLIENT: usize = 2;
/// The longest a cycle streams before the kill, in ms.
const MAX_RUN_MS: u8 = 30;
/// A streaming call's deadline: around the kill calls fail fast (reset,
/// refused); this only bounds a call that hangs.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Threads re-verifying the accepted OTPs after a restart.
const VERIFIERS: usize = 4;
/// OTPs accepted before the last kill re-verified at random after a restart.
const SAMPLE: usize = 128;

/// One OTP sent by a client.
#[derive(Clone)]
struct Issued {
    otp: String,
    key: usize,
    pair: Counters,
    cycle: usize,
}

impl std::fmt::Debug for Issued {
    // Never the OTP itself: the messages may end up in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {} counter={} session_use={} (cycle {})",
            self.key,
            self.pair.counter(),
            self.pair.session_use(),
            self.cycle
        )
    }
}

/// What one client saw in one cycle.
#[derive(Default)]
struct ClientRun {
    accepted: Vec<Issued>,
    /// No answer: refused connection, or connected and lost in the kill.
    unanswered: Vec<Issued>,
    /// Connected, then the connection died or timed out (in flight at the kill).
    in_flight: usize,
    /// Anything but OK for a fresh OTP, or an answer that is no verdict or
    /// does not decode.
    unexpected: Vec<String>,
}

fn public_id(index: usize) -> String {
    let n = index + 1;
    format!(
        "cccccccccc{}{}",
        char::from(MODHEX[n / 16]),
        char::from(MODHEX[n % 16])
    )
}

fn pair_of(key: &SoftYubiKey, otp: &ykhsm_core::otp::Otp) -> Counters {
    key.secrets().decode(otp.token()).unwrap().counters()
}

/// Streams fresh OTPs of its keys (in turn) until `stop`.
fn client(
    socket: &Path,
    keys: &mut [SoftYubiKey],
    first: usize,
    cycle: usize,
    go: &Barrier,
    stop: &AtomicBool,
) -> ClientRun {
    let mut run = ClientRun::default();
    go.wait();
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let j = i % keys.len();
        i += 1;
        let otp = keys[j].next_otp();
        let issued = Issued {
            otp: otp.to_typed_string().to_string(),
            key: first + j,
            pair: pair_of(&keys[j], &otp),
            cycle,
        };
        match call(
            socket,
            ServerUid::ROOT,
            &verify_request(&issued.otp),
            CLIENT_TIMEOUT,
        ) {
            Ok(Response::Verdict { status: Status::Ok }) => run.accepted.push(issued),
            Ok(other) => run.unexpected.push(format!("{issued:?}: {other:?}")),
            // The daemon is dead (or dying): no answer, as a kill allows.
            Err(ClientError::Connect { .. }) => run.unanswered.push(issued),
            Err(
                ClientError::Frame(FrameError::Closed | FrameError::Io(_))
                | ClientError::Timeout(_),
            ) => {
                run.in_flight += 1;
                run.unanswered.push(issued);
            }
            // A frame or an answer that is wrong is no kill's doing.
            Err(e) => run.unexpected.push(format!("{issued:?}: {e}")),
        }
    }
    run
}

/// With the daemon dead: the database file passes `PRAGMA integrity_check`;
/// returns the stored pair of each public id. Read-only on even cycles (the
/// next daemon recovers the WAL itself), read-write on odd ones (closing
/// checkpoints the WAL into the main file).
fn check_database(path: &Path, read_write: bool) -> HashMap<String, Counters> {
    let flags = if read_write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(path, flags).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "integrity_check of {}", path.display());
    let mut stored = HashMap::new();
    {
        let mut st = conn
            .prepare("SELECT public_id, counter, session_use FROM counters")
            .unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u16>(1)?,
                    r.get::<_, u8>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (id, counter, session_use) = row.unwrap();
            let pair = Counters::new(counter, session_use).unwrap();
            assert!(
                stored.insert(id.clone(), pair).is_none(),
                "two rows for {id}"
            );
        }
    }
    conn.close().map_err(|(_, e)| e).unwrap();
    stored
}

/// Verifies each OTP (in parallel, one connection per call) and returns the
/// statuses in order. The daemon is up: a transport error is a failure.
fn verify_all(socket: &Path, otps: &[Issued]) -> Vec<Status> {
    let chunk = otps.len().div_ceil(VERIFIERS).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = otps
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|o| {
                            match call(
                                socket,
                                ServerUid::ROOT,
                                &verify_request(&o.otp),
                                Duration::from_secs(10),
                            ) {
                                Ok(Response::Verdict { status }) => status,
                                other => panic!("{o:?}: {other:?}"),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Every OTP answered OK, in order, and each key's highest.
struct Ledger {
    accepted: Vec<Issued>,
    seen: HashSet<String>,
    /// Per key: the highest pair answered OK.
    last_ok: Vec<Option<Counters>>,
    /// Per key: where its highest OK OTP is in `accepted`.
    last_ok_at: Vec<Option<usize>>,
}

impl Ledger {
    fn ok(&mut self, issued: Issued, when: &str) {
        assert!(
            self.seen.insert(issued.otp.clone()),
            "{when}: {issued:?} was answered OK a second time"
        );
        let last = &mut self.last_ok[issued.key];
        assert!(
            last.is_none_or(|l| l < issued.pair),
            "{when}: {issued:?} answered OK at or below an accepted pair {last:?}"
        );
        *last = Some(issued.pair);
        self.last_ok_at[issued.key] = Some(self.accepted.len());
        self.accepted.push(issued);
    }
}

/// Which OTPs answered OK to re-verify after a restart.
#[derive(Debug, Clone, Copy)]
enum Reverify {
    /// Every one ever answered.
    Everything,
    /// Every one answered from this index of the ledger on (by the daemon
    /// just killed: the OTPs this crash could lose), each key's highest, and
    /// [`SAMPLE`] drawn at random from all earlier ones. (Every one after
    /// every restart would be quadratic: a run has thousands of OTPs
    /// accepted and hundreds of restarts.)
    Since(usize),
}

/// A uniformly random index below `n` (> 0).
fn random_below(n: usize) -> usize {
    let r = u64::from_ne_bytes(common::random());
    usize::try_from(r % u64::try_from(n).unwrap()).unwrap()
}

/// After a restart: the OTPs answered OK that `which` picks are now
/// replays. Returns how many were checked.
fn reverify(d: &Daemon, ledger: &Ledger, which: Reverify, when: &str) -> usize {
    let mut picked: Vec<usize> = match which {
        Reverify::Everything => (0..ledger.accepted.len()).collect(),
        Reverify::Since(since) => {
            let mut p: Vec<usize> = (since..ledger.accepted.len()).collect();
            p.extend(ledger.last_ok_at.iter().flatten());
            if since > 0 {
                p.extend((0..SAMPLE).map(|_| random_below(since)));
            }
            p
        }
    };
    picked.sort_unstable();
    picked.dedup();
    let otps: Vec<Issued> = picked.iter().map(|&i| ledger.accepted[i].clone()).collect();
    let statuses = verify_all(&d.socket, &otps);
    for (o, s) in otps.iter().zip(&statuses) {
        assert_eq!(*s, Status::ReplayedOtp, "{when}: {o:?}, once answered OK");
    }
    otps.len()
}

/// After a restart: each OTP left unanswered by the kill is answered
/// exactly as the database on disk says: OK iff above the stored pair
/// (oldest first per key, so an OK raises the pair for the next).
fn retry_unanswered(
    d: &Daemon,
    ids: &[String],
    ledger: &mut Ledger,
    on_disk: &HashMap<String, Counters>,
    unanswered: Vec<Issued>,
    when: &str,
) {
    let mut stored: Vec<Option<Counters>> = ids.iter().map(|id| on_disk.get(id).copied()).collect();
    for o in unanswered {
        let want = if stored[o.key].is_none_or(|s| s < o.pair) {
            Status::Ok
        } else {
            Status::ReplayedOtp
        };
        let got = match call(
            &d.socket,
            ServerUid::ROOT,
            &verify_request(&o.otp),
            Duration::from_secs(10),
        ) {
            Ok(Response::Verdict { status }) => status,
            other => panic!("{when}: {o:?}: {other:?}"),
        };
        assert_eq!(
            got, want,
            "{when}: {o:?}, unanswered at the kill; stored on disk {:?}",
            stored[o.key]
        );
        if got == Status::Ok {
            stored[o.key] = Some(o.pair);
            ledger.ok(o, when);
        }
    }
}

/// Whether a log line holds any of the OTPs (whole or token): only runs of
/// 32 or more modhex characters can.
fn leaks(line: &str, tokens: &HashSet<&str>) -> bool {
    line.split(|c: char| !u8::try_from(c).is_ok_and(|b| MODHEX.contains(&b)))
        .filter(|run| run.len() >= 32)
        .any(|run| (0..=run.len() - 32).any(|i| tokens.contains(&run[i..i + 32])))
}

#[test]
fn sigkill_at_random_moments_never_loses_an_accepted_otp() {
    let started = Instant::now();
    let env = Env::new();
    let ids: Vec<String> = (0..CLIENTS * KEYS_PER_CLIENT).map(public_id).collect();
    let mut keys: Vec<SoftYubiKey> = ids.iter().map(|id| env.key(id)).collect();
    env.set_authfile(&format!("alice:{}\n", ids.join(":")));
    let mut ledger = Ledger {
        accepted: Vec::new(),
        seen: HashSet::new(),
        last_ok: vec![None; ids.len()],
        last_ok_at: vec![None; ids.len()],
    };
    // Per key: the highest pair sent so far.
    let mut last_sent: Vec<Option<Counters>> = vec![None; ids.len()];
    let mut every_otp: Vec<String> = Vec::new();
    let mut unanswered: Vec<Issued> = Vec::new();
    let mut on_disk = HashMap::new();
    let (mut sent, mut in_flight, mut cycles_in_flight) = (0usize, 0usize, 0usize);
    let mut reverified = 0;
    // Where the OTPs the running daemon accepted begin in the ledger.
    let mut since = 0;
    for cycle in 0..CYCLES {
        let mut d = env.start();
        let when = format!("restart before cycle {cycle}");
        if cycle > 0 {
            reverified += reverify(&d, &ledger, Reverify::Since(since), &when);
        }
        since = ledger.accepted.len();
        retry_unanswered(
            &d,
            &ids,
            &mut ledger,
            &on_disk,
            std::mem::take(&mut unanswered),
            &when,
        );
        let run_ms = common::random::<1>()[0] % (MAX_RUN_MS + 1);
        let go = Barrier::new(CLIENTS + 1);
        let stop = AtomicBool::new(false);
        let socket = d.socket.clone();
        let runs: Vec<ClientRun> = thread::scope(|s| {
            let handles: Vec<_> = keys
                .chunks_mut(KEYS_PER_CLIENT)
                .enumerate()
                .map(|(c, mine)| {
                    let (socket, go, stop) = (&socket, &go, &stop);
                    s.spawn(move || client(socket, mine, c * KEYS_PER_CLIENT, cycle, go, stop))
                })
                .collect();
            go.wait();
            thread::sleep(Duration::from_millis(u64::from(run_ms)));
            d.signal(Signal::SIGKILL);
            stop.store(true, Ordering::Release);
            d.kill_hard(); // reaps it
            // The scope joins every client before the next daemon starts.
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut cycle_in_flight = 0;
        for run in runs {
            assert!(
                run.unexpected.is_empty(),
                "cycle {cycle} ({run_ms} ms): fresh OTPs not accepted: {:?}",
                run.unexpected
            );
            for o in run.accepted.iter().chain(&run.unanswered) {
                last_sent[o.key] = last_sent[o.key].max(Some(o.pair));
                every_otp.push(o.otp.clone());
                sent += 1;
            }
            for o in run.accepted {
                ledger.ok(o, &format!("cycle {cycle}"));
            }
            unanswered.extend(run.unanswered);
            cycle_in_flight += run.in_flight;
        }
        in_flight += cycle_in_flight;
        cycles_in_flight += usize::from(cycle_in_flight > 0);
        // The daemon is dead: the file is consistent, holds every pair
        // answered OK, and nothing above what was sent.
        on_disk = check_database(&env.database(), cycle % 2 == 1);
        for (k, id) in ids.iter().enumerate() {
            let stored = on_disk.get(id).copied();
            assert!(
                stored >= ledger.last_ok[k],
                "cycle {cycle} ({run_ms} ms): key {k} answered OK up to {:?} but the database holds {stored:?}",
                ledger.last_ok[k]
            );
            assert!(
                stored <= last_sent[k],
                "cycle {cycle}: key {k}: the database holds {stored:?}, above anything sent ({:?})",
                last_sent[k]
            );
        }
    }
    // A last restart: the same checks, then a clean stop.
    let mut d = env.start();
    retry_unanswered(&d, &ids, &mut ledger, &on_disk, unanswered, "final restart");
    reverified += reverify(&d, &ledger, Reverify::Everything, "final restart");
    assert_eq!(d.terminate(), Some(0));
    check_database(&env.database(), false);

    // Not vacuous: OTPs were accepted, and kills caught requests in flight.
    assert!(
        ledger.accepted.len() >= CYCLES,
        "only {} OTPs accepted in {CYCLES} cycles",
        ledger.accepted.len()
    );
    assert!(
        cycles_in_flight >= CYCLES / 4,
        "only {cycles_in_flight} of {CYCLES} kills caught a request in flight"
    );

    // No OTP reached a log line. (Checked here rather than with
    // `Env::otp`: thousands of remembered OTPs would make the harness's
    // line × secret check quadratic.)
    let tokens: HashSet<&str> = every_otp.iter().map(|o| &o[o.len() - 32..]).collect();
    assert!(leaks(&format!("x={}.", every_otp[0]), &tokens));
    let logs = env.logs();
    for line in &logs {
        assert!(!leaks(line, &tokens), "a log line holds an OTP: {line}");
    }
    eprintln!(
        "{CYCLES} cycles in {:.1?}: {sent} OTPs sent, {} answered OK, {reverified} re-verified, {in_flight} requests in flight at a kill ({cycles_in_flight} cycles), {} log lines",
        started.elapsed(),
        ledger.accepted.len(),
        logs.len()
    );
}
