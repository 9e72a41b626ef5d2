//! The fleet store against a real PostgreSQL server (Debian's
//! postgresql-15, started by `ykhsm_testkit::postgres` in a temporary
//! directory on a free port; scripts/install-deps.sh installs it). Runs
//! as root: password files must be root's.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ykhsm_config::{Config, FleetSettings};
use ykhsm_core::counters::{Counters, Position, raises};
use ykhsm_fleet::{
    ErrorClass, Fleet, FleetError, InitOutcome, Raised, SCHEMA_VERSION, SchemaProblem, position,
};
use ykhsm_proto::CounterRecord;
use ykhsm_testkit::postgres::Postgres;

/// `[fleet]` settings for `url`, with more keys.
fn settings(url: &str, extra: &str) -> FleetSettings {
    Config::parse(
        Path::new("/etc/ykhsm/ykhsmd.toml"),
        &format!("[fleet]\nurl = {url:?}\n{extra}\n"),
    )
    .unwrap()
    .fleet
    .unwrap()
}

/// A store reached over TCP with the role's password (from a 0600 file
/// in `dir`), and a generous deadline (the machine may be busy).
fn tcp_fleet(pg: &Postgres, dir: &Path) -> Fleet {
    let pw = dir.join("fleet.password");
    pg.write_password_file(&pw);
    Fleet::new(&settings(
        &pg.url_tcp(),
        &format!(
            "password_file = {:?}\ntimeout_ms = 10000",
            pw.display().to_string()
        ),
    ))
    .unwrap()
}

/// A store reached over the Unix socket (trusted: no password).
fn socket_fleet(pg: &Postgres) -> Fleet {
    Fleet::new(&settings(&pg.url_socket(), "timeout_ms = 10000")).unwrap()
}

fn rec(id: &str, generation: u32, last: Option<(u16, u8)>) -> CounterRecord {
    CounterRecord {
        public_id: id.to_owned(),
        generation,
        last,
        ts_high: last.map_or(0, |(c, _)| c.to_le_bytes()[0]),
        ts_low: last.map_or(0, |(_, u)| u16::from(u) * 3),
        modified: 1_767_225_600 + u64::from(generation),
        reset_at: if generation == 0 { 0 } else { 1_767_000_000 },
        aeads: Vec::new(),
    }
}

fn fp(b: u8) -> [u8; 20] {
    [b; 20]
}

#[test]
fn init_creates_the_schema_and_is_idempotent() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = tcp_fleet(&pg, dir.path());
    assert!(!fleet.is_connected(), "new() connects to nothing");

    let s = fleet.status().unwrap();
    assert_eq!(s.schema_version, None);
    assert_eq!(s.rows, None);
    assert!(s.server_version.starts_with("15"), "{}", s.server_version);
    assert!(fleet.is_connected());

    // Before init: raising says what to do.
    let e = fleet
        .raise(&[rec("ccccccdbjrgf", 0, Some((1, 0)))])
        .unwrap_err();
    assert!(
        matches!(
            e,
            FleetError::Schema {
                problem: SchemaProblem::Missing,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.class(), ErrorClass::Schema);
    assert!(e.to_string().contains("ykadmin fleet init"), "{e}");
    assert!(!fleet.is_connected(), "an error drops the connection");

    assert_eq!(
        fleet.init().unwrap(),
        InitOutcome::Created {
            version: SCHEMA_VERSION
        }
    );
    assert_eq!(
        fleet.init().unwrap(),
        InitOutcome::Current {
            version: SCHEMA_VERSION
        }
    );
    // Another client, another connection: the same.
    let mut other = socket_fleet(&pg);
    assert_eq!(
        other.init().unwrap(),
        InitOutcome::Current {
            version: SCHEMA_VERSION
        }
    );
    let s = fleet.status().unwrap();
    assert_eq!(s.schema_version, Some(SCHEMA_VERSION));
    assert_eq!(s.known_version, SCHEMA_VERSION);
    assert_eq!(s.rows, Some(0));
    assert_eq!(
        fleet
            .raise(&[rec("ccccccdbjrgf", 0, Some((1, 0)))])
            .unwrap(),
        [Raised::Won]
    );
    assert_eq!(fleet.status().unwrap().rows, Some(1));
    // The tables are the role's (it owns the database).
    assert_eq!(
        pg.sql(
            "ykhsm",
            "SELECT tableowner FROM pg_tables WHERE tablename LIKE 'ykhsm_%' ORDER BY 1"
        )
        .trim(),
        "ykhsm\nykhsm"
    );
}

#[test]
fn two_inits_at_once_create_the_schema_once() {
    let pg = Postgres::start();
    let barrier = Arc::new(Barrier::new(2));
    let inits: Vec<_> = (0..2)
        .map(|_| {
            let mut fleet = socket_fleet(&pg);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                fleet.init().unwrap()
            })
        })
        .collect();
    let mut got: Vec<InitOutcome> = inits.into_iter().map(|t| t.join().unwrap()).collect();
    got.sort_by_key(|o| matches!(o, InitOutcome::Current { .. }));
    assert_eq!(
        got,
        [
            InitOutcome::Created {
                version: SCHEMA_VERSION
            },
            InitOutcome::Current {
                version: SCHEMA_VERSION
            }
        ]
    );
}

#[test]
fn a_fleet_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<Fleet>();
}

#[test]
fn a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let mut fleet = socket_fleet(&pg);
    fleet.init().unwrap();
    fleet
        .raise(&[rec("ccccccdbjrgf", 0, Some((1, 0)))])
        .unwrap();
    pg.sql("ykhsm", "UPDATE ykhsm_schema SET version = 99");

    // A new connection checks the version before anything is written.
    let mut fresh = socket_fleet(&pg);
    let e = fresh
        .raise(&[rec("ccccccdbjrgf", 0, Some((2, 0)))])
        .unwrap_err();
    assert!(
        matches!(
            e,
            FleetError::Schema {
                problem: SchemaProblem::Newer {
                    found: 99,
                    known: SCHEMA_VERSION
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("newer ykhsm"), "{e}");
    let e = fresh.pull(&["ccccccdbjrgf".into()]).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Schema, "{e}");
    // init never downgrades.
    let e = fresh.init().unwrap_err();
    assert!(
        matches!(
            e,
            FleetError::Schema {
                problem: SchemaProblem::Newer { found: 99, .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        pg.sql("ykhsm", "SELECT version FROM ykhsm_schema").trim(),
        "99"
    );
    // status reports it.
    assert_eq!(fresh.status().unwrap().schema_version, Some(99));
    // Nothing was written by the refused raise.
    assert_eq!(
        pg.sql("ykhsm", "SELECT counter FROM ykhsm_counters").trim(),
        "1"
    );
}

#[test]
fn init_refuses_a_counters_table_it_did_not_make() {
    let pg = Postgres::start();
    pg.sql(
        "ykhsm",
        "CREATE TABLE ykhsm_counters (x int); ALTER TABLE ykhsm_counters OWNER TO ykhsm",
    );
    let e = socket_fleet(&pg).init().unwrap_err();
    assert!(
        matches!(
            e,
            FleetError::Schema {
                problem: SchemaProblem::Malformed(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("ykhsm_schema"), "{e}");
}

#[test]
fn first_raise_wins_equal_and_lower_lose_with_the_stores_record_higher_wins() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = tcp_fleet(&pg, dir.path());
    fleet.init().unwrap();
    let id = "ccccccdbjrgf";

    let first = rec(id, 0, Some((5, 3)));
    assert_eq!(
        fleet.raise(std::slice::from_ref(&first)).unwrap(),
        [Raised::Won]
    );
    // Equal: a replay; the store's record comes back.
    let mut replay = first.clone();
    replay.modified += 60;
    assert_eq!(
        fleet.raise(&[replay]).unwrap(),
        [Raised::Lost(first.clone())]
    );
    // Lower (session use, then counter): lost, with the higher record.
    for lower in [Some((5, 2)), Some((4, 200)), None] {
        assert_eq!(
            fleet.raise(&[rec(id, 0, lower)]).unwrap(),
            [Raised::Lost(first.clone())],
            "{lower:?}"
        );
    }
    // Higher: won, and it is the row now.
    let higher = rec(id, 0, Some((5, 4)));
    assert_eq!(
        fleet.raise(std::slice::from_ref(&higher)).unwrap(),
        [Raised::Won]
    );
    assert_eq!(
        fleet.pull(&[id.into()]).unwrap(),
        std::slice::from_ref(&higher)
    );
    let higher = rec(id, 0, Some((6, 0)));
    assert_eq!(
        fleet.raise(std::slice::from_ref(&higher)).unwrap(),
        [Raised::Won]
    );

    // A reset (next generation, nothing seen) is above every pair of the
    // one before; an old generation's pair is below it.
    let mut reset = rec(id, 1, None);
    reset.aeads = vec![fp(9), fp(3)];
    assert_eq!(
        fleet.raise(std::slice::from_ref(&reset)).unwrap(),
        [Raised::Won]
    );
    reset.aeads.sort_unstable(); // stored sorted
    assert_eq!(fleet.pull(&[id.into()]).unwrap(), [reset.clone()]);
    assert_eq!(
        fleet.raise(&[rec(id, 0, Some((0x7fff, 0xff)))]).unwrap(),
        [Raised::Lost(reset.clone())]
    );

    // Within a generation the bound AEADs are the union; a higher
    // generation brings its own.
    let mut same_gen = rec(id, 1, Some((0, 0)));
    same_gen.aeads = vec![fp(1), fp(3)];
    same_gen.reset_at = 1_766_000_000; // older than the stored one: kept the later
    assert_eq!(fleet.raise(&[same_gen]).unwrap(), [Raised::Won]);
    let row = &fleet.pull(&[id.into()]).unwrap()[0];
    assert_eq!(row.aeads, [fp(1), fp(3), fp(9)]);
    assert_eq!(row.reset_at, 1_767_000_000);
    assert_eq!(row.last, Some((0, 0)));
    let mut next_gen = rec(id, 2, Some((0, 0)));
    next_gen.aeads = vec![fp(7)];
    assert_eq!(
        fleet.raise(std::slice::from_ref(&next_gen)).unwrap(),
        [Raised::Won]
    );
    assert_eq!(fleet.pull(&[id.into()]).unwrap(), [next_gen]);

    // Who raised it last.
    let host = nix::unistd::gethostname().unwrap();
    assert_eq!(
        pg.sql("ykhsm", "SELECT updated_by FROM ykhsm_counters")
            .trim(),
        host.to_string_lossy()
    );
    // Keys without a row are absent from a pull.
    assert_eq!(fleet.pull(&["vvvvvvvvvvvv".into()]).unwrap(), []);
}

#[test]
fn the_union_of_bound_aeads_keeps_the_64_smallest() {
    let pg = Postgres::start();
    let mut fleet = socket_fleet(&pg);
    fleet.init().unwrap();
    let id = "ccccccdbjrgf";
    let mut a = rec(id, 1, None);
    a.aeads = (0..64).map(|i| fp(2 * i + 1)).collect();
    fleet.raise(&[a]).unwrap();
    let mut b = rec(id, 1, Some((0, 0)));
    b.aeads = (0..64).map(|i| fp(2 * i)).collect();
    assert_eq!(fleet.raise(&[b]).unwrap(), [Raised::Won]);
    let row = &fleet.pull(&[id.into()]).unwrap()[0];
    assert_eq!(row.aeads, (0..64).map(fp).collect::<Vec<_>>());
}

#[test]
fn a_batch_of_distinct_keys_is_answered_in_order() {
    let pg = Postgres::start();
    let mut fleet = socket_fleet(&pg);
    fleet.init().unwrap();
    // Keys 0..40 stored at (0, (10, 0)).
    let ids: Vec<String> = (0..40).map(|i| format!("cccccccc{i:04}")).collect();
    let stored: Vec<CounterRecord> = ids.iter().map(|id| rec(id, 0, Some((10, 0)))).collect();
    assert!(
        fleet
            .raise(&stored)
            .unwrap()
            .iter()
            .all(|r| *r == Raised::Won)
    );
    // A batch in another order: higher, equal, lower and new keys.
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for (i, id) in ids.iter().enumerate().rev() {
        let (last, won) = match i % 3 {
            0 => (Some((10, 1)), true),
            1 => (Some((10, 0)), false),
            _ => (Some((9, 255)), false),
        };
        batch.push(rec(id, 0, last));
        want.push(if won {
            Raised::Won
        } else {
            Raised::Lost(rec(id, 0, Some((10, 0))))
        });
    }
    batch.push(rec("vvvvvvvvvvvv", 0, None));
    want.push(Raised::Won);
    assert_eq!(fleet.raise(&batch).unwrap(), want);
    assert_eq!(fleet.status().unwrap().rows, Some(41));
    assert_eq!(fleet.raise(&[]).unwrap(), []);
}

#[test]
fn a_bad_batch_is_refused_before_any_io() {
    // Nothing listens here: an attempt to send would be Unreachable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut fleet = Fleet::new(&settings(
        &format!("postgresql://ykhsm@127.0.0.1:{port}/ykhsm"),
        "",
    ))
    .unwrap();
    let mut aeads_at_gen0 = rec("cccccccccccb", 0, None);
    aeads_at_gen0.aeads = vec![fp(1)];
    let mut too_many = rec("cccccccccccb", 1, None);
    too_many.aeads = (0..65).map(fp).collect();
    for (batch, needle) in [
        (
            vec![
                rec("ccccccdbjrgf", 0, None),
                rec("ccccccdbjrgf", 0, Some((1, 0))),
            ],
            "twice",
        ),
        (vec![rec("", 0, None)], "empty"),
        (vec![rec("ccccccdbjrgf", 0, Some((0x8000, 0)))], "15 bits"),
        (vec![aeads_at_gen0], "generation 0"),
        (vec![too_many], "64"),
    ] {
        let e = fleet.raise(&batch).unwrap_err();
        assert!(matches!(e, FleetError::Batch(_)), "{needle}: {e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert!(!fleet.is_connected());
    // And the same store, asked for real, is unreachable.
    let e = fleet.raise(&[rec("ccccccdbjrgf", 0, None)]).unwrap_err();
    assert!(e.is_offline(), "{e}");
}

/// Two bastions present the same OTP at the same moment: exactly one wins,
/// round after round.
#[test]
fn two_clients_raising_the_same_record_at_once_exactly_one_wins() {
    const ROUNDS: u16 = 200;
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    tcp_fleet(&pg, dir.path()).init().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = (0..2)
        .map(|n| {
            let barrier = Arc::clone(&barrier);
            // One over TCP with a password, one over the socket.
            let mut fleet = if n == 0 {
                tcp_fleet(&pg, dir.path())
            } else {
                socket_fleet(&pg)
            };
            thread::spawn(move || {
                let mut wins = Vec::new();
                for round in 0..ROUNDS {
                    // Round 0 inserts (a key never seen), then raises.
                    let r = rec("ccccccdbjrgf", 0, Some((round, 0)));
                    barrier.wait();
                    let got = fleet.raise(std::slice::from_ref(&r)).unwrap();
                    match &got[..] {
                        [Raised::Won] => wins.push(true),
                        [Raised::Lost(stored)] => {
                            assert_eq!(stored.last, Some((round, 0)));
                            wins.push(false);
                        }
                        other => panic!("{other:?}"),
                    }
                }
                wins
            })
        })
        .collect();
    let wins: Vec<Vec<bool>> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(wins[0].len(), usize::from(ROUNDS));
    for (round, (a, b)) in wins[0].iter().zip(&wins[1]).enumerate() {
        assert!(a ^ b, "round {round}: won by {:?}", (a, b));
    }
}

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u16_below(&mut self, n: u16) -> u16 {
        u16::try_from(self.below(u64::from(n))).unwrap()
    }
    fn u8_below(&mut self, n: u16) -> u8 {
        u8::try_from(self.below(u64::from(n))).unwrap()
    }
}

/// A position near the interesting edges: generations 0, 1, 2 and the
/// last two; pairs never seen, (0, 0), the top, and random ones.
fn arb_position(rng: &mut Rng) -> Position {
    let generation = [0, 1, 2, u32::MAX - 1, u32::MAX][usize::from(rng.u8_below(5))];
    let last = match rng.below(6) {
        0 => None,
        1 => Some((0, 0)),
        2 => Some((0x7fff, 0xff)),
        3 => Some((0x7fff, 0xfe)),
        4 => Some((rng.u16_below(3), rng.u8_below(3))),
        _ => Some((rng.u16_below(0x8000), rng.u8_below(256))),
    };
    Position {
        generation,
        last: last.map(|(c, u)| Counters::new(c, u).unwrap()),
    }
}

/// Near `p`: equal, or one field one step away (carrying into the next),
/// or anything.
fn near(rng: &mut Rng, p: Position) -> Position {
    let pair = p.last.map(|c| (c.counter(), c.session_use()));
    let step = |pair: Option<(u16, u8)>, up: bool| match (pair, up) {
        (None, true) => Some((0, 0)),
        (None, false) => None,
        (Some((c, 255)), true) if c < 0x7fff => Some((c + 1, 0)),
        (Some((c, u)), true) if u < 255 => Some((c, u + 1)),
        (Some((c, 0)), false) if c > 0 => Some((c - 1, 255)),
        (Some((c, u)), false) if u > 0 => Some((c, u - 1)),
        (Some((0, 0)), false) => None,
        (same, _) => same,
    };
    let (generation, last) = match rng.below(6) {
        0 | 1 => (p.generation, pair),
        2 => (p.generation, step(pair, true)),
        3 => (p.generation, step(pair, false)),
        4 => (
            if rng.below(2) == 0 {
                p.generation.saturating_add(1)
            } else {
                p.generation.saturating_sub(1)
            },
            pair,
        ),
        _ => return arb_position(rng),
    };
    Position {
        generation,
        last: last.map(|(c, u)| Counters::new(c, u).unwrap()),
    }
}

fn record_at(id: &str, p: Position) -> CounterRecord {
    rec(
        id,
        p.generation,
        p.last.map(|c| (c.counter(), c.session_use())),
    )
}

/// The SQL rule (`sql::RAISES`, inside the raise statement) is
/// `ykhsm_core::counters::raises`, on 600 random (stored, presented)
/// pairs, never seen and generation boundaries included, on the server.
#[test]
fn the_sql_rule_is_raises_on_random_pairs() {
    const PAIRS: usize = 600;
    let pg = Postgres::start();
    let mut fleet = socket_fleet(&pg);
    fleet.init().unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let stored = (rng.below(8) != 0).then(|| arb_position(&mut rng));
        let presented = match stored {
            Some(s) => near(&mut rng, s),
            None => arb_position(&mut rng),
        };
        pairs.push((format!("key{i:05}"), stored, presented));
    }
    // Every stored position goes in first (fresh keys: all win).
    let first: Vec<CounterRecord> = pairs
        .iter()
        .filter_map(|(id, s, _)| s.map(|s| record_at(id, s)))
        .collect();
    assert!(
        fleet
            .raise(&first)
            .unwrap()
            .iter()
            .all(|r| *r == Raised::Won)
    );
    // Then every presented one, in one batch.
    let second: Vec<CounterRecord> = pairs.iter().map(|(id, _, p)| record_at(id, *p)).collect();
    let got = fleet.raise(&second).unwrap();
    let (mut won, mut lost) = (0, 0);
    for ((id, stored, presented), got) in pairs.iter().zip(got) {
        let want = raises(*stored, *presented);
        match got {
            Raised::Won => {
                assert!(
                    want,
                    "{id}: {stored:?} -> {presented:?} won in SQL, not by raises"
                );
                won += 1;
            }
            Raised::Lost(rec) => {
                assert!(
                    !want,
                    "{id}: {stored:?} -> {presented:?} lost in SQL, raises says win"
                );
                assert_eq!(position(&rec), *stored, "{id}: the store's record");
                lost += 1;
            }
        }
    }
    // Both outcomes were exercised, with equal pairs among the losers.
    assert!(
        won > PAIRS / 5 && lost > PAIRS / 5,
        "won {won}, lost {lost}"
    );
    let equal = pairs.iter().filter(|(_, s, p)| *s == Some(*p)).count();
    assert!(equal > PAIRS / 10, "{equal} equal pairs");
}

/// The server goes away: the next raise fails as offline within about the
/// deadline, the connection is dropped, and once the server is back the
/// next call connects again.
#[test]
fn a_stopped_server_is_offline_within_the_deadline_and_reconnected_after() {
    const TIMEOUT_MS: u64 = 200;
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("fleet.password");
    pg.write_password_file(&pw);
    let pw_line = format!("password_file = {:?}", pw.display().to_string());
    let mut over_tcp = Fleet::new(&settings(
        &pg.url_tcp(),
        &format!("{pw_line}\ntimeout_ms = {TIMEOUT_MS}"),
    ))
    .unwrap();
    let mut over_socket = Fleet::new(&settings(
        &pg.url_socket(),
        &format!("timeout_ms = {TIMEOUT_MS}"),
    ))
    .unwrap();
    socket_fleet(&pg).init().unwrap();
    let mut counter = 0;
    let mut next = || {
        counter += 1;
        rec("ccccccdbjrgf", 0, Some((counter, 0)))
    };
    for fleet in [&mut over_tcp, &mut over_socket] {
        assert_eq!(fleet.raise(&[next()]).unwrap(), [Raised::Won]);
        assert!(fleet.is_connected());
    }

    pg.stop();
    let bound = Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(2);
    for fleet in [&mut over_tcp, &mut over_socket] {
        for _ in 0..2 {
            let t = Instant::now();
            let e = fleet.raise(&[next()]).unwrap_err();
            assert!(t.elapsed() < bound, "{:?}: {e}", t.elapsed());
            assert!(e.is_offline(), "{e}");
            assert!(
                matches!(
                    e,
                    FleetError::Unreachable { .. } | FleetError::Timeout { .. }
                ),
                "{e}"
            );
            assert!(!fleet.is_connected());
        }
    }

    pg.start_again();
    for fleet in [&mut over_tcp, &mut over_socket] {
        assert_eq!(fleet.raise(&[next()]).unwrap(), [Raised::Won]);
        assert!(fleet.is_connected());
    }
    // A restart while connected: the first call after it finds the old
    // connection closed and makes a new one.
    pg.stop();
    pg.start_again();
    for fleet in [&mut over_tcp, &mut over_socket] {
        assert_eq!(fleet.raise(&[next()]).unwrap(), [Raised::Won]);
    }
}

/// A server that accepts the connection and never answers: Timeout, at
/// about the deadline.
#[test]
fn a_silent_server_times_out_at_the_deadline() {
    const TIMEOUT_MS: u64 = 300;
    // Listening, never accepting: the kernel completes the handshake, and
    // nobody ever answers the startup message.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut fleet = Fleet::new(&settings(
        &format!("postgresql://ykhsm@127.0.0.1:{port}/ykhsm"),
        &format!("timeout_ms = {TIMEOUT_MS}"),
    ))
    .unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let e = fleet.raise(&[rec("ccccccdbjrgf", 0, None)]).unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, FleetError::Timeout { .. }), "{e}");
        assert!(e.is_offline());
        assert!(e.to_string().contains("300 ms"), "{e}");
        assert!(took >= Duration::from_millis(TIMEOUT_MS), "{took:?}");
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(!fleet.is_connected());
    }
    drop(silent);
}

/// No error message (nor the Debug output) carries the password: a wrong
/// one, a stopped server, a timeout.
#[test]
fn the_password_is_never_in_an_error() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let right = dir.path().join("right.password");
    pg.write_password_file(&right);
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "Wr0ngButSecretPassw0rd\n").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let secrets = [
        pg.password().to_owned(),
        "Wr0ngButSecretPassw0rd".to_owned(),
    ];
    let mut messages = Vec::new();

    let file = |p: &Path| format!("password_file = {:?}", p.display().to_string());
    let mut bad = Fleet::new(&settings(&pg.url_tcp(), &file(&wrong))).unwrap();
    let e = bad.status().unwrap_err();
    assert_eq!(e.class(), ErrorClass::Other, "{e}");
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    messages.push(e.to_string());
    messages.push(format!("{e:?}"));
    messages.push(format!("{bad:?}"));

    let mut good = Fleet::new(&settings(&pg.url_tcp(), &file(&right))).unwrap();
    good.init().unwrap();
    messages.push(format!("{good:?}"));
    pg.stop();
    let e = good.raise(&[rec("ccccccdbjrgf", 0, None)]).unwrap_err();
    messages.push(e.to_string());
    messages.push(format!("{e:?}"));

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut slow = Fleet::new(&settings(
        &format!("postgresql://ykhsm@127.0.0.1:{port}/ykhsm"),
        &format!("{}\ntimeout_ms = 100", file(&right)),
    ))
    .unwrap();
    let e = slow.status().unwrap_err();
    messages.push(e.to_string());
    messages.push(format!("{slow:?}"));

    for m in &messages {
        for s in &secrets {
            assert!(!m.contains(s.as_str()), "the password in: {m}");
        }
    }
}
