//! Several bastions, one counter store: real `ykhsmd` daemons, each with
//! its own installation and counter database, sharing a real PostgreSQL
//! (`ykhsm_testkit::postgres`) through `[fleet]`. The OTPs come from the
//! software YubiKey (checked against the vectors), shared between the
//! bastions' AEAD stores as rsync would.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_proto::{Request, Response, ServerUid, Status, call};
use ykhsm_testkit as common;
use zeroize::Zeroizing;

use common::netns::Netns;
use common::postgres::Postgres;
use common::{Daemon, Env, ykadmin};

/// Public ids of the shared keys, one user each.
const IDS: &[&str] = &[
    "ccccccdbjrgf",
    "cccccccccccd",
    "ccccccccccce",
    "cccccccccccf",
    "cccccccccccg",
    "ccccccccccch",
];

fn user(i: usize) -> String {
    format!("u{i}")
}

/// A fleet: one store and bastions sharing it.
struct Fleet {
    pg: Postgres,
    /// Holds the password file.
    _dir: tempfile::TempDir,
    password_file: PathBuf,
}

impl Fleet {
    fn new() -> Self {
        Self::on(Postgres::start())
    }

    fn on(pg: Postgres) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("fleet.password");
        pg.write_password_file(&password_file);
        Self {
            pg,
            _dir: dir,
            password_file,
        }
    }

    /// A bastion's installation on this store (`offline` mode), holding
    /// `keys` (the first bastion makes them: [`Bastion::make_keys`]).
    fn bastion(&self, offline: &str, keys: &[SoftYubiKey]) -> Bastion {
        self.bastion_with(
            &format!(
                "url = {:?}\ntimeout_ms = 500\noffline = {offline:?}",
                self.pg.url_tcp()
            ),
            keys,
        )
    }

    /// As [`Fleet::bastion`], with `table` in `[fleet]` (and the password
    /// file).
    fn bastion_with(&self, table: &str, keys: &[SoftYubiKey]) -> Bastion {
        let env = Env::new();
        env.config(&format!(
            "[fleet]\n{table}\npassword_file = {:?}",
            self.password_file.display().to_string()
        ));
        for k in keys {
            env.share_key(k);
        }
        let authfile: String = IDS
            .iter()
            .enumerate()
            .map(|(i, id)| format!("{}:{id}\n", user(i)))
            .collect();
        env.set_authfile(&authfile);
        Bastion { env, daemon: None }
    }

    /// The fleet's first bastion (`offline = "local"`), which makes the
    /// keys and the store's schema (`ykadmin fleet init`); not started.
    fn first_bastion(&self) -> (Bastion, Vec<SoftYubiKey>) {
        let a = self.bastion("local", &[]);
        let keys = a.make_keys();
        self.init(&a);
        (a, keys)
    }

    fn init(&self, b: &Bastion) {
        let o = ykadmin(&b.env, &["fleet", "init"]);
        assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    }

    /// The store's (counter, session use) of each key.
    fn store_rows(&self) -> HashMap<String, (i64, i64, i64)> {
        self.pg
            .sql(
                "ykhsm",
                "SELECT public_id, generation, counter, session_use FROM ykhsm_counters",
            )
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (
                    f[0].to_owned(),
                    (
                        f[1].parse().unwrap(),
                        f[2].parse().unwrap(),
                        f[3].parse().unwrap(),
                    ),
                )
            })
            .collect()
    }
}

struct Bastion {
    env: Env,
    daemon: Option<Daemon>,
}

impl Bastion {
    /// New keys ([`IDS`]) in this bastion's store.
    fn make_keys(&self) -> Vec<SoftYubiKey> {
        IDS.iter().map(|id| self.env.key(id)).collect()
    }

    fn start(mut self) -> Self {
        self.daemon = Some(self.env.start());
        self
    }

    fn socket(&self) -> PathBuf {
        self.env.socket.clone()
    }

    /// `ykadmin --json status`'s fleet object.
    fn fleet_status(&self) -> serde_json::Value {
        let o = ykadmin(&self.env, &["--json", "status"]);
        let v: serde_json::Value = serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {} {}", o.stdout, o.stderr));
        v["fleet"].clone()
    }

    /// Waits until the store answers this bastion and it has pushed
    /// everything it accepted: at most 10 s, the reconciler's promise for
    /// a store that came back (its backoff is capped at 2 s).
    fn wait_synced(&self) {
        wait_until(
            &format!("{} synced with the store", self.env.socket.display()),
            Duration::from_secs(10),
            || {
                let f = self.fleet_status();
                f["connected"] == true && f["unsynced_keys"] == 0
            },
        );
    }

    /// The local (generation, counter, session use) of each key, from
    /// `ykadmin counters export`.
    fn local_rows(&self) -> HashMap<String, (i64, i64, i64)> {
        let o = ykadmin(&self.env, &["counters", "export"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        o.stdout
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let n = |s: &str| if s == "-" { -1 } else { s.parse().unwrap() };
                (f[0].to_owned(), (n(f[1]), n(f[2]), n(f[3])))
            })
            .collect()
    }
}

fn verify(socket: &std::path::Path, user: &str, otp: &str) -> Status {
    match call(
        socket,
        ServerUid::ROOT,
        &Request::Verify {
            user: user.into(),
            otp: Zeroizing::new(otp.into()),
        },
        Duration::from_secs(10),
    ) {
        Ok(Response::Verdict { status }) => status,
        other => panic!("verify answered {other:?}"),
    }
}

/// Polls `cond` every 100 ms until it holds or `deadline` passes.
fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_same_otp_at_two_bastions_at_once_is_accepted_once() {
    if common::on_hsm() {
        // The emulator holds one installation's keys; the fleet is about
        // counters, not the backend.
        return;
    }
    let fleet = Fleet::new();
    let (a, mut keys) = fleet.first_bastion();
    let b = fleet.bastion("local", &keys).start();
    let a = a.start();
    let key = &mut keys[0];
    let sockets = [a.socket(), b.socket()];
    for round in 0..50 {
        let otp = a.env.otp(key);
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<Status> = thread::scope(|s| {
            let handles: Vec<_> = sockets
                .iter()
                .map(|sock| {
                    let (barrier, otp) = (Arc::clone(&barrier), otp.clone());
                    s.spawn(move || {
                        barrier.wait();
                        verify(sock, &user(0), &otp)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = answers.iter().filter(|s| **s == Status::Ok).count();
        assert_eq!(ok, 1, "round {round}: {answers:?}");
        assert!(
            answers.contains(&Status::ReplayedOtp),
            "round {round}: {answers:?}"
        );
    }
    // Both logged what the store said.
    a.env.wait_log("fleet=ok");
    b.env.wait_log("fleet=replayed");
}

#[test]
fn three_bastions_under_load_with_replays_accept_each_otp_at_most_once() {
    if common::on_hsm() {
        return;
    }
    let secs: u64 = std::env::var("YKHSM_FLEET_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let fleet = Fleet::new();
    let (a, keys) = fleet.first_bastion();
    let b = fleet.bastion("local", &keys).start();
    let c = fleet.bastion("local", &keys).start();
    let a = a.start();
    let sockets = [a.socket(), b.socket(), c.socket()];
    let keys: Vec<Mutex<SoftYubiKey>> = keys.into_iter().map(Mutex::new).collect();
    // Every OTP made, for replays; and every OK answer, per OTP.
    let made: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let accepted: Mutex<HashMap<String, u32>> = Mutex::new(HashMap::new());
    let answers: Mutex<HashMap<Status, u64>> = Mutex::new(HashMap::new());
    let end = Instant::now() + Duration::from_secs(secs);
    thread::scope(|s| {
        for (bi, sock) in sockets.iter().enumerate() {
            for client in 0..8 {
                let (keys, made, accepted, answers) = (&keys, &made, &accepted, &answers);
                s.spawn(move || {
                    let mut n = 0usize;
                    while Instant::now() < end {
                        n += 1;
                        let r: [u8; 2] = common::random();
                        // Half new OTPs, half replays of one made before
                        // (at any bastion).
                        let pick = if r[0].is_multiple_of(2) {
                            let made = made.lock().unwrap();
                            (!made.is_empty())
                                .then(|| made[usize::from(r[1]) * n % made.len()].clone())
                        } else {
                            None
                        };
                        let (k, otp) = pick.unwrap_or_else(|| {
                            let k = (bi * 8 + client + n) % keys.len();
                            // Not remembered one by one as secrets (every
                            // log line would be searched for each of some
                            // ten thousand OTPs when the Env is dropped);
                            // the keys' own secrets still are, and the
                            // other suites check OTPs never reach a log.
                            let otp = keys[k]
                                .lock()
                                .unwrap()
                                .next_otp()
                                .to_typed_string()
                                .to_string();
                            made.lock().unwrap().push((k, otp.clone()));
                            (k, otp)
                        });
                        let status = verify(sock, &user(k), &otp);
                        *answers.lock().unwrap().entry(status).or_default() += 1;
                        if status == Status::Ok {
                            *accepted.lock().unwrap().entry(otp).or_default() += 1;
                        }
                    }
                });
            }
        }
    });
    let accepted = accepted.into_inner().unwrap();
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "accepted more than once: {}", twice.len());
    let answers = answers.into_inner().unwrap();
    // Not vacuous: OTPs were accepted and replays refused, and nothing else
    // was answered.
    assert!(accepted.len() > 100, "{answers:?}");
    assert!(
        answers.get(&Status::ReplayedOtp).copied().unwrap_or(0) > 100,
        "{answers:?}"
    );
    assert_eq!(
        answers
            .keys()
            .filter(|s| !matches!(s, Status::Ok | Status::ReplayedOtp))
            .count(),
        0,
        "{answers:?}"
    );
    // One round trip per batch, never per login: under c=8 the logins
    // committed together shared their trips.
    for (name, x) in [("a", &a), ("b", &b), ("c", &c)] {
        let f = x.fleet_status();
        let trips = f["round_trips"].as_u64().unwrap();
        let sent = f["logins_sent"].as_u64().unwrap();
        assert!(
            trips > 0 && trips < sent,
            "bastion {name}: {trips} round trips for {sent} logins"
        );
        println!("bastion {name}: {trips} round trips carried {sent} logins");
    }
    println!(
        "{} OTPs accepted once each; answers {answers:?}",
        accepted.len()
    );
}

#[test]
fn with_the_store_down_local_bastions_go_on_and_count_and_converge_when_it_is_back() {
    if common::on_hsm() {
        return;
    }
    let mut fleet = Fleet::new();
    let (a, mut keys) = fleet.first_bastion();
    let b = fleet.bastion("local", &keys).start();
    let d = fleet.bastion("deny", &keys).start();
    let a = a.start();
    // Before: the store decides.
    for (i, k) in keys.iter_mut().enumerate().take(3) {
        let otp = a.env.otp(k);
        assert_eq!(verify(&a.socket(), &user(i), &otp), Status::Ok);
        assert_eq!(verify(&b.socket(), &user(i), &otp), Status::ReplayedOtp);
    }

    // `--check` (ExecStartPre) asks the store; down, it only warns.
    let (code, out) = a.env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok    fleet: ") && out.contains("reachable, schema version 1"),
        "{out}"
    );
    fleet.pg.stop();
    let (code, out) = a.env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warn  fleet: "), "{out}");
    // Offline, "local": fresh OTPs, and one OTP presented at both a and b
    // (accepted by each: the window), all counted; "deny" refuses.
    let mut on_a = 0;
    let mut on_b = 0;
    for round in 0..4 {
        let i = round % IDS.len();
        let otp = a.env.otp(&mut keys[i]);
        assert_eq!(verify(&a.socket(), &user(i), &otp), Status::Ok);
        on_a += 1;
        if round == 0 {
            assert_eq!(verify(&b.socket(), &user(i), &otp), Status::Ok);
            on_b += 1;
        }
        let next = a.env.otp(&mut keys[i]);
        assert_eq!(verify(&d.socket(), &user(i), &next), Status::BackendError);
        assert_eq!(verify(&b.socket(), &user(i), &next), Status::Ok);
        on_b += 1;
    }
    a.env.wait_log("fleet=offline");
    d.env.wait_log("fleet=down");
    let fa = a.fleet_status();
    assert_eq!(fa["connected"], false, "{fa}");
    assert_eq!(fa["offline_accepts"], on_a, "{fa}");
    assert!(fa["unsynced_keys"].as_u64().unwrap() > 0, "{fa}");

    fleet.pg.start_again();
    // Back: within seconds every bastion pushed what it accepted.
    let back = Instant::now();
    for x in [&a, &b, &d] {
        x.wait_synced();
    }
    println!("all synced {:?} after the store was back", back.elapsed());
    // The reported window is what happened.
    assert_eq!(a.fleet_status()["offline_accepts"], on_a);
    assert_eq!(b.fleet_status()["offline_accepts"], on_b);
    assert_eq!(d.fleet_status()["offline_accepts"], 0);
    // The store holds the maximum over all acceptances, and every bastion
    // converges to it (its pull every few seconds), nothing lowered.
    let store = fleet.store_rows();
    for (name, x) in [("a", &a), ("b", &b), ("d", &d)] {
        for (id, row) in x.local_rows() {
            assert!(
                store[&id] >= row,
                "{id}: the store's {:?} is below {name}'s {row:?}",
                store[&id]
            );
        }
    }
    for (name, x) in [("a", &a), ("b", &b), ("d", &d)] {
        wait_until(
            &format!("bastion {name} converged to the store"),
            Duration::from_secs(15),
            || {
                let local = x.local_rows();
                store.iter().all(|(id, s)| local.get(id) == Some(s))
            },
        );
    }
    // The last OTP of each key used offline is now a replay everywhere.
    let i = 3 % IDS.len();
    let next = a.env.otp(&mut keys[i]);
    assert_eq!(verify(&a.socket(), &user(i), &next), Status::Ok);
    assert_eq!(verify(&d.socket(), &user(i), &next), Status::ReplayedOtp);
}

/// How long the PAM module waits for the daemon by default (`timeout=`).
const PAM_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_cut_link_to_the_store_costs_a_login_at_most_the_timeout() {
    if common::on_hsm() {
        return;
    }
    // The store in a network namespace of the test's own, reached over a
    // veth pair with TLS (verify-full against the address); the link is
    // taken down mid-stream, so packets to the store are dropped, not
    // refused: only the daemon's own deadline ends the wait.
    let ns = Netns::create();
    let fleet = Fleet::on(Postgres::start_in(&ns));
    let timeout = Duration::from_millis(300);
    let a = fleet.bastion_with(
        &format!(
            "url = {:?}\nca_file = {:?}\ntimeout_ms = {}\noffline = \"local\"",
            fleet.pg.url_tls(),
            fleet.pg.ca_file().display().to_string(),
            timeout.as_millis()
        ),
        &[],
    );
    let mut keys = a.make_keys();
    fleet.init(&a);
    let a = a.start();
    let mut slowest_before = Duration::ZERO;
    for i in 0..20 {
        let otp = a.env.otp(&mut keys[i % IDS.len()]);
        let t = Instant::now();
        assert_eq!(verify(&a.socket(), &user(i % IDS.len()), &otp), Status::Ok);
        slowest_before = slowest_before.max(t.elapsed());
    }
    a.env.wait_log("fleet=ok");

    ns.cut();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let otp = a.env.otp(&mut keys[i % IDS.len()]);
        let t = Instant::now();
        assert_eq!(verify(&a.socket(), &user(i % IDS.len()), &otp), Status::Ok);
        slowest = slowest.max(t.elapsed());
    }
    // Each login waited at most the store's timeout (one round trip per
    // batch) plus the usual latency, far from the PAM module's deadline.
    let bound = timeout + slowest_before + Duration::from_millis(500);
    assert!(
        slowest <= bound,
        "a login took {slowest:?} with the link cut (bound {bound:?})"
    );
    assert!(slowest < PAM_TIMEOUT);
    a.env.wait_log("fleet=offline");
    let f = a.fleet_status();
    assert_eq!(f["connected"], false, "{f}");
    assert_eq!(f["offline_accepts"], 20, "{f}");

    ns.heal();
    a.wait_synced();
    println!("slowest login: {slowest_before:?} with the link up, {slowest:?} with it cut");
}

#[test]
fn the_store_stopped_mid_stream_the_window_reported_is_the_one_that_happened() {
    if common::on_hsm() {
        return;
    }
    let mut fleet = Fleet::new();
    let (a, keys) = fleet.first_bastion();
    let b = fleet.bastion("local", &keys).start();
    let a = a.start();
    let sockets = [a.socket(), b.socket()];
    let keys: Vec<Mutex<SoftYubiKey>> = keys.into_iter().map(Mutex::new).collect();
    // Every OK answer, per OTP; logins made so far.
    let accepted: Mutex<HashMap<String, u32>> = Mutex::new(HashMap::new());
    let done = std::sync::atomic::AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let logins_made = || done.load(std::sync::atomic::Ordering::SeqCst);
    thread::scope(|s| {
        for client in 0..2usize {
            let (keys, accepted, done, stop, sockets) = (&keys, &accepted, &done, &stop, &sockets);
            s.spawn(move || {
                let mut n = client;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 2;
                    let k = n % keys.len();
                    let otp = keys[k]
                        .lock()
                        .unwrap()
                        .next_otp()
                        .to_typed_string()
                        .to_string();
                    // Each OTP at one bastion, and every other one replayed
                    // at the other right after.
                    let first = n % 2;
                    let mut at = vec![first];
                    if n % 4 < 2 {
                        at.push(1 - first);
                    }
                    for i in at {
                        let status = verify(&sockets[i], &user(k), &otp);
                        assert!(
                            matches!(status, Status::Ok | Status::ReplayedOtp),
                            "{status:?}"
                        );
                        if status == Status::Ok {
                            *accepted.lock().unwrap().entry(otp.clone()).or_default() += 1;
                        }
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
        // Stop the store mid-stream, and start it again, while the logins
        // go on.
        let after = |n: u64| {
            let target = logins_made() + n;
            wait_until("logins", Duration::from_secs(30), || {
                logins_made() >= target
            });
        };
        after(200);
        fleet.pg.stop();
        after(200);
        fleet.pg.start_again();
        after(200);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    for x in [&a, &b] {
        x.wait_synced();
    }
    // What each bastion reports is what its audit trail says it accepted
    // without the store, and every extra acceptance of an OTP is in it.
    let mut window = 0;
    for (name, x) in [("a", &a), ("b", &b)] {
        let reported = x.fleet_status()["offline_accepts"].as_u64().unwrap();
        let audited = x
            .env
            .logs()
            .iter()
            // Each line is there twice (stderr and syslog): stderr's.
            .filter(|l| {
                l.starts_with("ykhsmd: verify ")
                    && l.contains("status=OK")
                    && l.ends_with("fleet=offline")
            })
            .count() as u64;
        assert_eq!(reported, audited, "bastion {name}");
        window += reported;
    }
    let accepted = accepted.into_inner().unwrap();
    let extra: u64 = accepted.values().map(|n| u64::from(n - 1)).sum();
    assert!(window > 0, "no login was decided offline");
    assert!(
        extra <= window,
        "{extra} extra acceptances, {window} reported"
    );
    println!(
        "{} OTPs accepted, {extra} of them twice; {window} acceptances reported offline",
        accepted.len()
    );
}
