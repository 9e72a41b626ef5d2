//! A bounded model of the fleet protocol, checked exhaustively with
//! [stateright](https://docs.rs/stateright).
//!
//! Several `ykhsmd` daemons share one key's counter through one store (in
//! production PostgreSQL). The model explores every interleaving of the
//! protocol's steps, with round trips lost or slow, daemons crashing at any
//! point, and an attacker replaying any OTP to any daemon at any time, and
//! checks the properties below in every state it reaches.
//!
//! # What is modeled
//!
//! - **One key** emitting `otps` OTPs (1 to 4) with strictly increasing
//!   positions ([`Position`], generation 0). An OTP is named by its index in
//!   emission order; rows hold an index or "never seen" (index order is the
//!   fleet's order, checked when the model is built). Any OTP can be
//!   presented to any daemon at any time, any number of times: a key emits
//!   each OTP before anyone can type or replay it, and emission itself
//!   changes nothing a daemon sees, so letting every presentation order
//!   happen covers every emission order.
//! - **The store**: one row. Every conditional write (a login's, a push's, a
//!   late one) is decided by [`Rule::raises`], which for [`Rule::Fleet`] is
//!   `ykhsm_core::counters::raises`, the function the real store's
//!   statement is tested against. A write that wins sets the row to its
//!   position; one that loses is answered with the row's position.
//! - **Each daemon** (`daemons`, 1 to 3):
//!   - durable state, kept across a crash: the local row, its unsynced mark
//!     and the offline-acceptance count (the reported window);
//!   - a login: the local check (`ykhsm_core::counters::is_fresh` against
//!     the local row); a presentation that is not fresh is `REPLAYED` and
//!     changes nothing; a fresh one sends the conditional write and waits.
//!     Store won: the local commit, the daemon's check-and-set against the
//!     local row as it is then (fresh: the row raised to the OTP and the
//!     mark cleared, since the store holds at least the row; `OK`; else
//!     `REPLAYED`). Store lost: the local row settles to the store's
//!     (below), `REPLAYED`. No answer (the write or its answer lost, or too
//!     slow: [`Action::LoginTimesOut`]): with `offline = "local"` the login
//!     is decided on the local row (fresh: the row raised, marked unsynced
//!     and the count raised in one local commit, `OK`); with
//!     `offline = "deny"` refused. A daemon has one login of the key in
//!     flight at a time, as ykhsmd's commit path settles one login of a key
//!     before it checks the next ([`Config::logins_per_daemon`] lifts that);
//!   - the reconciler: push (the unsynced row, a conditional write with the
//!     same rule), pull (read the store's row), settle (raise the local row
//!     to the store's answer, never lowering it, and clear the mark iff the
//!     local row is now at or below the answer). Any round trip can fail.
//!     Its settle may come while a login is in flight (ykhsmd serializes the
//!     two; the model explores more interleavings than happen).
//! - **Crashes** of a daemon at any point, with an immediate restart from
//!   the durable state: the login and the reconciler round trip in flight
//!   are forgotten; notably a crash between the store's "won" and the local
//!   commit leaves the store above the local row and the client with no
//!   `OK`.
//! - **Late writes**: a conditional write whose sender stopped waiting (a
//!   timed-out login, a failed push, a crashed daemon) may still reach the
//!   store at any later time, or never (two late writes of one OTP act as
//!   one: the second always loses).
//!
//! # What is abstracted away
//!
//! - The network is folded into the daemons' state: a round trip in flight
//!   is a phase of the login or of the reconciler (write sent; answer on its
//!   way back), and a loss is a timeout from either phase, the write itself
//!   possibly landing late. A partition (the store unreachable from a
//!   daemon for a while) is one schedule of these: every round trip of that
//!   daemon failing in that interval. Since each loss or timeout is an
//!   independent choice, every partition schedule is among the behaviours
//!   explored, and the model carries no "partitioned" flag (it would only
//!   add states). Messages are not duplicated (one connection per round
//!   trip); a duplicated write would lose anyway.
//! - Batches: a batch is one round trip for several keys; with one key it
//!   is one login per round trip.
//! - The local commit and the `OK` answer are one step, and an acceptance
//!   is counted when committed: a crash between the two (the client gets no
//!   `OK` but the OTP is spent) counts as an acceptance, which only makes
//!   the properties harder to satisfy.
//! - Resets (generations), AEAD bindings, time stamps, several keys, the
//!   store's own failures (it is durable and never lowers a row), marking
//!   every row unsynced when a daemon starts (extra pushes, which the
//!   properties do not need).
//! - Daemons are interchangeable: states are kept with the daemons sorted
//!   (symmetry reduction); a counterexample is printed with the daemons
//!   followed through it under stable numbers ([`FleetModel::follow`]).
//!
//! # Properties (checked in every state)
//!
//! Ghost variables (the checker's bookkeeping, not daemon state) count the
//! `OK` answers per OTP, after a "won" and offline, and keep per daemon the
//! last OTP it answered `OK` for.
//!
//! - [`ACCEPTED_TWICE_ONLY_OFFLINE`]: for each OTP, acceptances ≤ 1 +
//!   offline acceptances of it: an OTP is accepted at most once while the
//!   store is reachable.
//! - [`EXTRAS_IN_WINDOW`]: the sum over OTPs of (acceptances − 1, when more
//!   than one) ≤ the sum of the daemons' offline counts: every extra
//!   acceptance is in the reported window.
//! - [`NEVER_TWICE`] (with `offline = "deny"` only): no OTP is accepted
//!   twice, ever.
//! - [`SYNCED_IN_STORE`]: a local row without the unsynced mark is at or
//!   below the store's row (what the reconciler no longer pushes, the store
//!   has).
//! - [`DAEMON_IN_ORDER`]: each daemon answers `OK` for strictly increasing
//!   OTPs, as a single ykhsmd does, so no daemon accepts one OTP twice.
//!
//! Non-vacuity (examples that must exist): [`SOME_ACCEPTED`] (an OTP is
//! accepted), [`SOME_ACCEPTED_TWICE`] (with `offline = "local"`: the window
//! is real), [`STORE_AHEAD`] (the store holds an OTP no daemon accepted:
//! the crash point, or a late write), [`CONVERGED`] (with
//! `offline = "local"`: after an offline acceptance, every row synced and
//! equal to the store's).
//!
//! # Mutations
//!
//! The checker is shown to catch broken protocols, each with a test
//! asserting the violation it must produce: [`Rule::EqualRaises`] (the
//! store's rule with `>=`: equal raises), [`WindowCount::InMemory`] (the
//! offline count kept in memory and written later: a crash loses it), and
//! two logins of one key in flight at one daemon with
//! [`WonCommit::Unchecked`] (the row raised to a won OTP without checking it
//! again).
//!
//! # Running
//!
//! `cargo run --release -p ykhsm-fleet-model -- check [--daemons N]
//! [--otps K] [--deny] [--rule equal-raises] [--window-count in-memory]
//! [--won-commit unchecked] [--logins-per-daemon 2] [--no-crashes]
//! [--no-symmetry] [--threads T] [--steps S]` prints the states explored,
//! the time, and `PASS` or each violation with its path; the exit code is 1
//! on a violation or a missing example. The bounds, sizes and times are in
//! `docs/fleet-model.md`: 2 daemons × 3 OTPs and 3 daemons × 2 OTPs are
//! checked exhaustively in seconds, 3 daemons × 3 OTPs within a step bound.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Property};
use ykhsm_core::counters::{self, Counters, Position};

/// The most daemons the state has room for.
pub const MAX_DAEMONS: usize = 3;
/// The most OTPs the state has room for.
pub const MAX_OTPS: usize = 4;
/// The most logins of the key one daemon can have in flight.
pub const MAX_LOGINS: usize = 2;

/// A row: `None` never seen, `Some(i)` the position of OTP `i`. Indices
/// are ordered as the positions are (checked when the model is built), so
/// `Option<u8>`'s order is the fleet's order.
pub type Row = Option<u8>;

/// The store's conditional write: the rule under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `ykhsm_core::counters::raises`: strictly higher raises.
    Fleet,
    /// The broken rule: equal raises too (`>=` instead of `>`).
    EqualRaises,
}

impl Rule {
    /// Whether `presented` raises `stored` under this rule.
    pub fn raises(self, stored: Option<Position>, presented: Position) -> bool {
        match self {
            Rule::Fleet => counters::raises(stored, presented),
            Rule::EqualRaises => counters::raises(stored, presented) || stored == Some(presented),
        }
    }
}

/// What a login does when the store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// `offline = "local"`: decide on the local row, count the acceptance.
    Local,
    /// `offline = "deny"`: refuse.
    Deny,
}

/// When an offline acceptance is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowCount {
    /// In the local commit that accepts (the protocol).
    SameCommit,
    /// The mutation: kept in memory (reported while the daemon runs) and
    /// written to disk in a later step; a crash before that loses it.
    InMemory,
}

/// How a daemon commits a login the store let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WonCommit {
    /// ykhsmd's: the local check-and-set (fresh against the local row as it
    /// is now, else `REPLAYED`).
    Checked,
    /// The row raised to the OTP and `OK`, whatever the local row.
    Unchecked,
}

/// The model's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Daemons, 1..=[`MAX_DAEMONS`].
    pub daemons: usize,
    /// OTPs the key emits, 1..=[`MAX_OTPS`].
    pub otps: usize,
    /// The offline policy.
    pub offline: Offline,
    /// The store's rule.
    pub rule: Rule,
    /// Whether daemons crash.
    pub crashes: bool,
    /// Logins of the key one daemon may have in flight (1: the protocol).
    pub logins_per_daemon: usize,
    /// When an offline acceptance is counted.
    pub window_count: WindowCount,
    /// How a login the store let through is committed.
    pub won_commit: WonCommit,
    /// Whether states are kept with the daemons sorted.
    pub symmetry: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            daemons: 2,
            otps: 3,
            offline: Offline::Local,
            rule: Rule::Fleet,
            crashes: true,
            logins_per_daemon: 1,
            window_count: WindowCount::SameCommit,
            won_commit: WonCommit::Checked,
            symmetry: true,
        }
    }
}

/// A login in flight at a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Login {
    /// Fresh locally; the conditional write of this OTP is on its way.
    Sent(u8),
    /// The store raised its row to this OTP; the answer is on its way back.
    Won(u8),
    /// The store refused this OTP, holding `Row`; the answer is on its way.
    Lost(u8, Row),
}

impl Login {
    fn otp(self) -> u8 {
        match self {
            Login::Sent(o) | Login::Won(o) | Login::Lost(o, _) => o,
        }
    }
}

/// A daemon's reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Reconciler {
    /// Between two round trips.
    #[default]
    Idle,
    /// The unsynced row (this OTP) pushed, the write on its way.
    Push(u8),
    /// The store's answer (its row, after a push or for a pull) on its way.
    Reply(Row),
}

/// One daemon: durable state, volatile state, and the checker's ghosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Daemon {
    /// Durable: the local row.
    pub local: Row,
    /// Durable: the local row holds an acceptance the store may not have.
    pub unsynced: bool,
    /// Durable: OTPs accepted offline, ever (the reported window).
    pub window: u8,
    /// Volatile: logins in flight, sorted (`None` first).
    pub logins: [Option<Login>; MAX_LOGINS],
    /// Volatile: the reconciler's round trip.
    pub reconciler: Reconciler,
    /// Volatile, [`WindowCount::InMemory`] only: offline acceptances counted
    /// in memory, not yet on disk.
    pub uncounted: u8,
    /// Ghost: the last OTP this daemon answered `OK` for.
    pub ok_last: Row,
}

/// A row in 4 bits: 0 never seen, `i + 1` OTP `i`.
fn row_code(r: Row) -> u64 {
    r.map_or(0, |o| u64::from(o) + 1)
}

impl Daemon {
    /// The daemon in one word, losslessly (every field fits its bits):
    /// hashing one word is much cheaper than hashing the fields one by
    /// one, and the checker hashes every state it generates.
    fn packed(&self) -> u64 {
        let login = |l: Option<Login>| -> u64 {
            match l {
                None => 0,
                Some(Login::Sent(o)) => 1 | u64::from(o) << 2,
                Some(Login::Won(o)) => 2 | u64::from(o) << 2,
                Some(Login::Lost(o, h)) => 3 | u64::from(o) << 2 | row_code(h) << 5,
            }
        };
        let reconciler = match self.reconciler {
            Reconciler::Idle => 0,
            Reconciler::Push(o) => 1 | u64::from(o) << 2,
            Reconciler::Reply(h) => 2 | row_code(h) << 2,
        };
        row_code(self.local)
            | u64::from(self.unsynced) << 4
            | u64::from(self.window) << 8
            | u64::from(self.uncounted) << 16
            | login(self.logins[0]) << 24
            | login(self.logins[1]) << 33
            | reconciler << 42
            | row_code(self.ok_last) << 56
    }

    fn raise_local(&mut self, to: Row) {
        if to > self.local {
            self.local = to;
        }
    }

    /// The local row raised to what the store holds (never lowered), the
    /// mark cleared if the store holds at least the local row.
    fn settle(&mut self, held: Row) {
        self.raise_local(held);
        if self.local <= held {
            self.unsynced = false;
        }
    }

    fn is_quiet(&self) -> bool {
        self.logins.iter().all(Option::is_none)
            && self.reconciler == Reconciler::Idle
            && self.uncounted == 0
    }

    fn logins_in_flight(&self) -> usize {
        self.logins.iter().filter(|l| l.is_some()).count()
    }
}

/// The whole system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// The store's row.
    pub store: Row,
    /// Writes still on their way to the store whose sender stopped
    /// waiting: bit `i` for OTP `i` (two late writes of one OTP act as one).
    pub late: u8,
    /// The daemons; those past `Config::daemons` stay at their default.
    pub daemons: [Daemon; MAX_DAEMONS],
    /// Ghost: `OK` answers given after the store's "won", per OTP.
    pub ok_online: [u8; MAX_OTPS],
    /// Ghost: `OK` answers given offline, per OTP.
    pub ok_offline: [u8; MAX_OTPS],
    /// Ghost: a daemon answered `OK` for an OTP not above the last one it
    /// answered `OK` for (so possibly the same one twice).
    pub ok_out_of_order: bool,
}

impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(
            row_code(self.store)
                | u64::from(self.late) << 8
                | u64::from(self.ok_out_of_order) << 16,
        );
        h.write_u64(
            u64::from(u32::from_le_bytes(self.ok_online))
                | u64::from(u32::from_le_bytes(self.ok_offline)) << 32,
        );
        for d in &self.daemons {
            h.write_u64(d.packed());
        }
    }
}

/// One step of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// OTP `otp` presented at `daemon`, fresh against the local row: the
    /// conditional write goes out. (A presentation that is not fresh
    /// locally is refused and changes nothing: not a step.)
    Login {
        /// The daemon.
        daemon: u8,
        /// The OTP.
        otp: u8,
    },
    /// The store decides the login's write.
    StoreDecidesLogin {
        /// The daemon.
        daemon: u8,
        /// The login's slot.
        slot: u8,
    },
    /// The daemon reads the store's answer: commit and `OK`, or `REPLAYED`.
    LoginAnswered {
        /// The daemon.
        daemon: u8,
        /// The login's slot.
        slot: u8,
    },
    /// No answer in time (write or answer lost, store slow or away): the
    /// offline decision. A write still on its way becomes a late write.
    LoginTimesOut {
        /// The daemon.
        daemon: u8,
        /// The login's slot.
        slot: u8,
    },
    /// The reconciler pushes the unsynced local row.
    Push {
        /// The daemon.
        daemon: u8,
    },
    /// The reconciler reads the store's row.
    Pull {
        /// The daemon.
        daemon: u8,
    },
    /// The store decides the push's write.
    StoreDecidesPush {
        /// The daemon.
        daemon: u8,
    },
    /// The reconciler raises the local row to the store's answer.
    Settle {
        /// The daemon.
        daemon: u8,
    },
    /// The reconciler's round trip fails; a pushed write still on its way
    /// becomes a late write.
    ReconcilerFails {
        /// The daemon.
        daemon: u8,
    },
    /// A late write reaches the store.
    LateWriteLands {
        /// The OTP.
        otp: u8,
    },
    /// The daemon crashes and restarts from its durable state.
    Crash {
        /// The daemon.
        daemon: u8,
    },
    /// [`WindowCount::InMemory`] only: an offline acceptance counted in
    /// memory is written to disk.
    CountWindow {
        /// The daemon.
        daemon: u8,
    },
}

/// The model: parameters and the OTPs' positions.
#[derive(Debug, Clone)]
pub struct FleetModel {
    /// The parameters.
    pub config: Config,
    positions: Vec<Position>,
}

/// The positions of the OTPs, in emission order: generation 0, counters
/// stepping through both the session use and the counter.
pub fn positions(otps: usize) -> Vec<Position> {
    const PAIRS: [(u16, u8); MAX_OTPS] = [(1, 0), (1, 1), (2, 0), (2, 1)];
    PAIRS[..otps]
        .iter()
        .map(|&(c, u)| Position {
            generation: 0,
            last: Counters::new(c, u),
        })
        .collect()
}

impl FleetModel {
    /// The model for `config`.
    ///
    /// # Panics
    ///
    /// If the configuration is outside the model's room, or the positions
    /// are not strictly increasing under the fleet rule.
    pub fn new(config: Config) -> Self {
        assert!((1..=MAX_DAEMONS).contains(&config.daemons), "1..=3 daemons");
        assert!((1..=MAX_OTPS).contains(&config.otps), "1..=4 OTPs");
        assert!(
            (1..=MAX_LOGINS).contains(&config.logins_per_daemon),
            "1..=2 logins per daemon"
        );
        let positions = positions(config.otps);
        // Index order is the fleet's order: what lets rows be indices.
        for (i, a) in positions.iter().enumerate() {
            assert!(counters::raises(None, *a));
            for (j, b) in positions.iter().enumerate() {
                assert_eq!(counters::raises(Some(*a), *b), i < j);
            }
        }
        Self { config, positions }
    }

    fn position(&self, otp: u8) -> Position {
        self.positions[usize::from(otp)]
    }

    fn row_position(&self, row: Row) -> Option<Position> {
        row.map(|o| self.position(o))
    }

    /// The local check: the daemon's own rule on its own row.
    fn locally_fresh(&self, local: Row, otp: u8) -> bool {
        let counters_of = |o: u8| self.position(o).last.expect("every OTP has counters");
        counters::is_fresh(local.map(counters_of), counters_of(otp))
    }

    /// The store's conditional write; whether it won.
    fn store_write(&self, s: &mut State, otp: u8) -> bool {
        let won = self
            .config
            .rule
            .raises(self.row_position(s.store), self.position(otp));
        if won {
            s.store = Some(otp);
        }
        won
    }

    /// A login decided without the store (a timeout).
    fn decide_offline(&self, s: &mut State, daemon: usize, otp: u8) {
        let d = &mut s.daemons[daemon];
        if self.config.offline == Offline::Deny || !self.locally_fresh(d.local, otp) {
            return; // BACKEND_ERROR, or REPLAYED
        }
        d.local = Some(otp);
        d.unsynced = true;
        match self.config.window_count {
            WindowCount::SameCommit => d.window += 1,
            WindowCount::InMemory => d.uncounted += 1,
        }
        record_ok(s, daemon, otp, true);
    }

    fn daemons<'s>(&self, s: &'s State) -> &'s [Daemon] {
        &s.daemons[..self.config.daemons]
    }

    /// `state` with the daemons sorted, if symmetry reduction is on.
    pub fn canonical(&self, mut s: State) -> State {
        if self.config.symmetry {
            s.daemons[..self.config.daemons].sort_unstable();
        }
        s
    }

    /// One step, the daemons kept in place (`None`: not enabled).
    pub fn step(&self, s: &State, action: Action) -> Option<State> {
        let mut n = *s;
        match action {
            Action::Login { daemon, otp } => {
                let d = &mut n.daemons[usize::from(daemon)];
                if d.logins_in_flight() >= self.config.logins_per_daemon
                    || !self.locally_fresh(d.local, otp)
                {
                    return None;
                }
                d.logins[0] = Some(Login::Sent(otp)); // slot 0 is free: sorted, None first
                d.logins.sort_unstable();
            }
            Action::StoreDecidesLogin { daemon, slot } => {
                let Some(Login::Sent(otp)) =
                    n.daemons[usize::from(daemon)].logins[usize::from(slot)]
                else {
                    return None;
                };
                let answer = if self.store_write(&mut n, otp) {
                    Login::Won(otp)
                } else {
                    Login::Lost(otp, n.store)
                };
                let d = &mut n.daemons[usize::from(daemon)];
                d.logins[usize::from(slot)] = Some(answer);
                d.logins.sort_unstable();
            }
            Action::LoginAnswered { daemon, slot } => {
                let d = &mut n.daemons[usize::from(daemon)];
                let login = d.logins[usize::from(slot)].take()?;
                d.logins.sort_unstable();
                match login {
                    Login::Sent(_) => return None,
                    Login::Won(otp) => {
                        // The local commit, then OK. The store holds this
                        // OTP, at or above the local row: nothing is left to
                        // push. With `WonCommit::Checked` the commit is the
                        // local check-and-set: a row that moved to or past
                        // the OTP meanwhile makes it REPLAYED.
                        if self.config.won_commit == WonCommit::Unchecked
                            || self.locally_fresh(d.local, otp)
                        {
                            d.raise_local(Some(otp));
                            d.unsynced = false;
                            record_ok(&mut n, usize::from(daemon), otp, false);
                        }
                    }
                    // REPLAYED; the local row settles to the store's.
                    Login::Lost(_, held) => d.settle(held),
                }
            }
            Action::LoginTimesOut { daemon, slot } => {
                let login = n.daemons[usize::from(daemon)].logins[usize::from(slot)].take()?;
                if let Login::Sent(otp) = login {
                    n.late |= 1 << otp;
                }
                n.daemons[usize::from(daemon)].logins.sort_unstable();
                self.decide_offline(&mut n, usize::from(daemon), login.otp());
            }
            Action::Push { daemon } => {
                let d = &mut n.daemons[usize::from(daemon)];
                match (d.reconciler, d.unsynced, d.local) {
                    (Reconciler::Idle, true, Some(row)) => d.reconciler = Reconciler::Push(row),
                    _ => return None,
                }
            }
            Action::Pull { daemon } => {
                // The read happens when the store answers; sending the pull
                // later is the same as the store reading later.
                let store = n.store;
                let d = &mut n.daemons[usize::from(daemon)];
                if d.reconciler != Reconciler::Idle {
                    return None;
                }
                d.reconciler = Reconciler::Reply(store);
            }
            Action::StoreDecidesPush { daemon } => {
                let Reconciler::Push(otp) = n.daemons[usize::from(daemon)].reconciler else {
                    return None;
                };
                // Won: the store holds the pushed row; lost: it holds what it
                // answers. Either way the answer is the store's row.
                self.store_write(&mut n, otp);
                n.daemons[usize::from(daemon)].reconciler = Reconciler::Reply(n.store);
            }
            Action::Settle { daemon } => {
                let d = &mut n.daemons[usize::from(daemon)];
                let Reconciler::Reply(held) = d.reconciler else {
                    return None;
                };
                d.settle(held);
                d.reconciler = Reconciler::Idle;
            }
            Action::ReconcilerFails { daemon } => {
                let d = &mut n.daemons[usize::from(daemon)];
                match d.reconciler {
                    Reconciler::Idle => return None,
                    Reconciler::Push(otp) => n.late |= 1 << otp,
                    Reconciler::Reply(_) => {}
                }
                n.daemons[usize::from(daemon)].reconciler = Reconciler::Idle;
            }
            Action::LateWriteLands { otp } => {
                if n.late & (1 << otp) == 0 {
                    return None;
                }
                n.late &= !(1 << otp);
                self.store_write(&mut n, otp);
            }
            Action::Crash { daemon } => {
                let d = &mut n.daemons[usize::from(daemon)];
                if !self.config.crashes || d.is_quiet() {
                    return None;
                }
                let mut late = 0u8;
                for login in d.logins.iter_mut() {
                    if let Some(Login::Sent(otp)) = login {
                        late |= 1 << *otp;
                    }
                    *login = None;
                }
                if let Reconciler::Push(otp) = d.reconciler {
                    late |= 1 << otp;
                }
                d.reconciler = Reconciler::Idle;
                d.uncounted = 0;
                n.late |= late;
            }
            Action::CountWindow { daemon } => {
                let d = &mut n.daemons[usize::from(daemon)];
                if d.uncounted == 0 {
                    return None;
                }
                d.uncounted -= 1;
                d.window += 1;
            }
        }
        Some(n)
    }

    /// `OK` answers for `otp`, all daemons.
    pub fn accepted(&self, s: &State, otp: usize) -> u32 {
        u32::from(s.ok_online[otp]) + u32::from(s.ok_offline[otp])
    }

    /// Offline `OK` answers for `otp`, all daemons.
    pub fn accepted_offline(&self, s: &State, otp: usize) -> u32 {
        u32::from(s.ok_offline[otp])
    }

    /// Acceptances beyond the first, all OTPs.
    pub fn extra_acceptances(&self, s: &State) -> u32 {
        (0..self.config.otps)
            .map(|o| self.accepted(s, o).saturating_sub(1))
            .sum()
    }

    /// The reported window: the daemons' offline counts (durable; with
    /// [`WindowCount::InMemory`], plus what they hold in memory).
    pub fn reported_window(&self, s: &State) -> u32 {
        self.daemons(s)
            .iter()
            .map(|d| u32::from(d.window) + u32::from(d.uncounted))
            .sum()
    }

    /// The path `canonical` (states and the actions between them, as the
    /// checker found it with the daemons sorted after each step) replayed
    /// with the daemons kept in place, so a daemon keeps its number.
    pub fn follow(&self, canonical: &[(State, Option<Action>)]) -> Path {
        let Some((first, _)) = canonical.first() else {
            return Vec::new();
        };
        let mut out = vec![(*first, None)];
        let mut actions = Vec::new();
        for (next, _) in &canonical[1..] {
            let here = out.last().expect("not empty").0;
            actions.clear();
            self.all_actions(&here, &mut actions);
            let found = actions.iter().find_map(|&a| {
                let t = self.step(&here, a)?;
                (self.canonical(t) == *next).then_some((a, t))
            });
            // Every canonical step is the image of a step in place.
            let (a, t) = found.expect("a step in place matches each canonical step");
            out.last_mut().expect("not empty").1 = Some(a);
            out.push((t, None));
        }
        out
    }

    /// Every enabled-looking action (the step decides), identical daemons
    /// and slots included.
    fn all_actions(&self, s: &State, actions: &mut Vec<Action>) {
        self.push_actions(s, actions, false);
    }

    fn push_actions(&self, s: &State, actions: &mut Vec<Action>, skip_twins: bool) {
        let u8_of = |i: usize| u8::try_from(i).expect("small index");
        let daemons = self.daemons(s);
        for (i, d) in daemons.iter().enumerate() {
            // A daemon identical to the one before it has the same steps,
            // to a state with the same sorted form.
            if skip_twins && i > 0 && daemons[i - 1] == *d {
                continue;
            }
            let daemon = u8_of(i);
            if d.logins_in_flight() < self.config.logins_per_daemon {
                for otp in 0..self.config.otps {
                    if self.locally_fresh(d.local, u8_of(otp)) {
                        actions.push(Action::Login {
                            daemon,
                            otp: u8_of(otp),
                        });
                    }
                }
            }
            for (slot, login) in d.logins.iter().enumerate() {
                let Some(login) = login else { continue };
                if skip_twins && slot > 0 && d.logins[slot - 1] == Some(*login) {
                    continue;
                }
                let slot = u8_of(slot);
                match login {
                    Login::Sent(_) => actions.push(Action::StoreDecidesLogin { daemon, slot }),
                    Login::Won(_) | Login::Lost(..) => {
                        actions.push(Action::LoginAnswered { daemon, slot })
                    }
                }
                actions.push(Action::LoginTimesOut { daemon, slot });
            }
            match d.reconciler {
                Reconciler::Idle => {
                    if d.unsynced {
                        actions.push(Action::Push { daemon });
                    }
                    actions.push(Action::Pull { daemon });
                }
                Reconciler::Push(_) => {
                    actions.push(Action::StoreDecidesPush { daemon });
                    actions.push(Action::ReconcilerFails { daemon });
                }
                Reconciler::Reply(_) => {
                    actions.push(Action::Settle { daemon });
                    actions.push(Action::ReconcilerFails { daemon });
                }
            }
            if self.config.crashes && !d.is_quiet() {
                actions.push(Action::Crash { daemon });
            }
            if d.uncounted > 0 {
                actions.push(Action::CountWindow { daemon });
            }
        }
        for otp in 0..self.config.otps {
            if s.late & (1 << otp) != 0 {
                actions.push(Action::LateWriteLands { otp: u8_of(otp) });
            }
        }
    }

    fn properties_for(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always(ACCEPTED_TWICE_ONLY_OFFLINE, |m: &Self, s: &State| {
                (0..m.config.otps).all(|o| m.accepted(s, o) <= 1 + m.accepted_offline(s, o))
            }),
            Property::always(EXTRAS_IN_WINDOW, |m: &Self, s: &State| {
                m.extra_acceptances(s) <= m.reported_window(s)
            }),
            Property::always(SYNCED_IN_STORE, |m: &Self, s: &State| {
                m.daemons(s)
                    .iter()
                    .all(|d| d.unsynced || d.local <= s.store)
            }),
            Property::always(DAEMON_IN_ORDER, |_: &Self, s: &State| !s.ok_out_of_order),
            Property::sometimes(SOME_ACCEPTED, |m: &Self, s: &State| {
                (0..m.config.otps).any(|o| m.accepted(s, o) > 0)
            }),
            Property::sometimes(STORE_AHEAD, |m: &Self, s: &State| {
                s.store.is_some_and(|o| {
                    m.accepted(s, usize::from(o)) == 0
                        && m.daemons(s)
                            .iter()
                            .all(|d| d.logins.iter().flatten().all(|l| l.otp() != o))
                })
            }),
        ];
        match self.config.offline {
            Offline::Deny => p.push(Property::always(NEVER_TWICE, |m: &Self, s: &State| {
                (0..m.config.otps).all(|o| m.accepted(s, o) <= 1)
            })),
            Offline::Local => {
                p.push(Property::sometimes(
                    SOME_ACCEPTED_TWICE,
                    |m: &Self, s: &State| (0..m.config.otps).any(|o| m.accepted(s, o) > 1),
                ));
                p.push(Property::sometimes(CONVERGED, |m: &Self, s: &State| {
                    m.reported_window(s) > 0
                        && m.daemons(s)
                            .iter()
                            .all(|d| !d.unsynced && d.local == s.store)
                }));
            }
        }
        p
    }
}

/// Always: an OTP accepted more than once was accepted offline (for each
/// OTP, acceptances ≤ 1 + offline acceptances).
pub const ACCEPTED_TWICE_ONLY_OFFLINE: &str = "an OTP accepted more than once was accepted offline";
/// Always: extra acceptances ≤ the daemons' durable offline counts.
pub const EXTRAS_IN_WINDOW: &str = "every extra acceptance is counted in the reported window";
/// Always, `offline = "deny"`: no OTP accepted twice.
pub const NEVER_TWICE: &str = "deny: no OTP is accepted twice";
/// Always: a row without the unsynced mark is at or below the store's.
pub const SYNCED_IN_STORE: &str = "a row not marked unsynced is in the store";
/// Always: each daemon's `OK` answers are for strictly increasing OTPs (so
/// none twice).
pub const DAEMON_IN_ORDER: &str = "each daemon accepts OTPs in increasing order (none twice)";
/// Sometimes: an OTP is accepted.
pub const SOME_ACCEPTED: &str = "an OTP is accepted";
/// Sometimes, `offline = "local"`: an OTP is accepted twice.
pub const SOME_ACCEPTED_TWICE: &str = "local: an OTP is accepted twice (the window is real)";
/// Sometimes: the store holds an OTP that no daemon accepted and no login
/// is waiting for (a crash after "won", or a late write).
pub const STORE_AHEAD: &str = "the store holds an OTP no daemon accepted";
/// Sometimes, `offline = "local"`: after an offline acceptance, every row
/// synced and equal to the store's.
pub const CONVERGED: &str = "local: after an offline acceptance, all rows synced to the store";

impl Model for FleetModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            store: None,
            late: 0,
            daemons: [Daemon::default(); MAX_DAEMONS],
            ok_online: [0; MAX_OTPS],
            ok_offline: [0; MAX_OTPS],
            ok_out_of_order: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        self.push_actions(s, actions, self.config.symmetry);
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        self.step(s, action).map(|n| self.canonical(n))
    }

    fn properties(&self) -> Vec<Property<Self>> {
        self.properties_for()
    }
}

/// A path: each state with the step taken from it (`None` for the last).
pub type Path = Vec<(State, Option<Action>)>;

/// How to run the checker.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Checker threads (1: breadth-first order is exact, so the
    /// counterexamples are the shortest; a step bound needs 1).
    pub threads: usize,
    /// Check only the states reachable within this many steps (`None`: all
    /// of them).
    pub steps: Option<usize>,
    /// Print progress to stderr every ten seconds.
    pub progress: bool,
}

/// How far a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// Every reachable state was checked.
    Complete,
    /// Every state reachable within this many steps was checked; there are
    /// more beyond.
    Bounded(usize),
    /// The check stopped at its first violation.
    Stopped,
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Distinct states reached.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub generated: usize,
    /// The longest path explored, in steps (for a complete check: the
    /// farthest any state is from the initial one).
    pub steps: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// How far the check went.
    pub extent: Extent,
    /// Violated properties, each with its path (daemons kept in place).
    pub violations: Vec<(&'static str, Path)>,
    /// Non-vacuity examples that were not found.
    pub missing_examples: Vec<&'static str>,
}

impl Report {
    /// No violation, every example found.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.missing_examples.is_empty()
    }

    /// The path of a violated property.
    pub fn violation(&self, name: &str) -> Option<&[(State, Option<Action>)]> {
        self.violations
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.as_slice())
    }
}

/// Checks `model` breadth-first, stopping at the first violation; each
/// violation's path is then the shortest one.
///
/// # Panics
///
/// If a step bound is asked for with more than one thread (several threads
/// do not keep breadth-first order, so a bound would cut states reachable
/// within it).
pub fn check(model: FleetModel, options: &CheckOptions) -> Report {
    let threads = options.threads.max(1);
    assert!(
        options.steps.is_none() || threads == 1,
        "a step bound needs one thread"
    );
    let started = Instant::now();
    let properties = model.properties();
    let run = explore(
        &model,
        threads,
        options.steps,
        HasDiscoveries::AnyFailures,
        options.progress.then_some(started),
    );
    let mut violations = Vec::new();
    let mut missing_examples = Vec::new();
    for p in &properties {
        match (p.expectation.discovery_is_failure(), run.found.get(p.name)) {
            (true, Some(path)) => {
                let path = shortest(&model, p.name, path.clone());
                violations.push((p.name, model.follow(&path)));
            }
            // Examples are only owed by a check that ran to its end.
            (false, None) if run.found.keys().all(|n| !is_failure(&properties, n)) => {
                missing_examples.push(p.name)
            }
            _ => {}
        }
    }
    let extent = match options.steps {
        _ if !violations.is_empty() => Extent::Stopped,
        Some(steps) if run.steps > steps => Extent::Bounded(steps),
        _ => Extent::Complete,
    };
    Report {
        unique_states: run.unique_states,
        generated: run.generated,
        steps: run.steps.min(options.steps.unwrap_or(usize::MAX)),
        elapsed: started.elapsed(),
        extent,
        violations,
        missing_examples,
    }
}

/// One run of stateright's breadth-first checker.
struct Run {
    unique_states: usize,
    generated: usize,
    /// The deepest level explored, in steps.
    steps: usize,
    /// Discoveries: property name, path (states kept with daemons sorted).
    found: std::collections::HashMap<&'static str, Path>,
}

fn explore(
    model: &FleetModel,
    threads: usize,
    steps: Option<usize>,
    finish_when: HasDiscoveries,
    progress: Option<Instant>,
) -> Run {
    let mut builder = model
        .clone()
        .checker()
        .threads(threads)
        .finish_when(finish_when);
    // stateright's depth counts the initial state as 1 and skips, unchecked,
    // the states at the target depth: states within `steps` steps are those
    // below `steps + 2`.
    if let Some(steps) = steps {
        builder = builder.target_max_depth(steps + 2);
    }
    let checker = builder.spawn_bfs();
    let mut last = Instant::now();
    while !checker.is_done() {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(started) = progress
            && last.elapsed() >= Duration::from_secs(10)
        {
            last = Instant::now();
            eprintln!(
                "… {} states, {} steps deep, {:.0?}",
                checker.unique_state_count(),
                checker.max_depth().saturating_sub(1),
                started.elapsed()
            );
        }
    }
    let checker = checker.join();
    Run {
        unique_states: checker.unique_state_count(),
        generated: checker.state_count(),
        steps: checker.max_depth().saturating_sub(1),
        found: checker
            .discoveries()
            .into_iter()
            .map(|(name, path)| (name, path.into_vec()))
            .collect(),
    }
}

/// The shortest path to a violation of `property`, given one (`path`).
/// stateright keeps the last violating state it met in its final block of
/// work, which may lie a level or two deeper than the first: a binary
/// search over step bounds finds the least number of steps, and the path
/// found within it.
fn shortest(model: &FleetModel, property: &'static str, path: Path) -> Path {
    let only = HasDiscoveries::AnyOf([property].into_iter().collect());
    // Violated within `hi` steps (with `best`), not within `lo`.
    let (mut lo, mut hi, mut best) = (0, path.len() - 1, path);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        match explore(model, 1, Some(mid), only.clone(), None)
            .found
            .remove(property)
        {
            Some(p) => {
                hi = p.len() - 1;
                best = p;
            }
            None => lo = mid,
        }
    }
    best
}

/// The checker's bookkeeping of an `OK` answer.
fn record_ok(s: &mut State, daemon: usize, otp: u8, offline: bool) {
    let d = &mut s.daemons[daemon];
    s.ok_out_of_order |= Some(otp) <= d.ok_last;
    d.ok_last = d.ok_last.max(Some(otp));
    let count = if offline {
        &mut s.ok_offline[usize::from(otp)]
    } else {
        &mut s.ok_online[usize::from(otp)]
    };
    *count = count.saturating_add(1);
}

fn is_failure(properties: &[Property<FleetModel>], name: &str) -> bool {
    properties
        .iter()
        .any(|p| p.name == name && p.expectation.discovery_is_failure())
}

fn row(r: Row) -> String {
    r.map_or_else(|| "-".to_owned(), |o| format!("otp{o}"))
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Login::Sent(o) => write!(f, "otp{o}:write sent"),
            Login::Won(o) => write!(f, "otp{o}:won, answer on its way"),
            Login::Lost(o, h) => write!(f, "otp{o}:lost to {}, answer on its way", row(*h)),
        }
    }
}

/// A state, for the printed paths: `daemons` of them.
#[derive(Debug)]
pub struct ShowState<'a>(pub &'a FleetModel, pub &'a State);

impl fmt::Display for ShowState<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, s) = (self.0, self.1);
        write!(f, "store={}", row(s.store))?;
        if s.late != 0 {
            let late: Vec<String> = (0..m.config.otps)
                .filter(|o| s.late & (1 << o) != 0)
                .map(|o| format!("otp{o}"))
                .collect();
            write!(f, " late-writes=[{}]", late.join(","))?;
        }
        for (i, d) in m.daemons(s).iter().enumerate() {
            write!(f, "\n      d{i}: local={}", row(d.local))?;
            if d.unsynced {
                write!(f, " UNSYNCED")?;
            }
            write!(f, " window={}", d.window)?;
            if d.uncounted > 0 {
                write!(f, " uncounted={}", d.uncounted)?;
            }
            for l in d.logins.iter().flatten() {
                write!(f, " login[{l}]")?;
            }
            match d.reconciler {
                Reconciler::Idle => {}
                Reconciler::Push(o) => write!(f, " push[otp{o} sent]")?,
                Reconciler::Reply(h) => write!(f, " reply[{} on its way]", row(h))?,
            }
            if d.ok_last.is_some() {
                write!(f, " last-OK={}", row(d.ok_last))?;
            }
        }
        let oks: Vec<String> = (0..m.config.otps)
            .filter(|&o| m.accepted(s, o) > 0)
            .map(|o| match (s.ok_online[o], s.ok_offline[o]) {
                (n, 0) => format!("otp{o}×{n}"),
                (0, k) => format!("otp{o}×{k} offline"),
                (n, k) => format!("otp{o}×{n}+{k} offline"),
            })
            .collect();
        if !oks.is_empty() {
            write!(f, "\n      OK answers: {}", oks.join(", "))?;
        }
        if s.ok_out_of_order {
            write!(f, " (a daemon answered OK out of order)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::Login { daemon, otp } => {
                write!(
                    f,
                    "d{daemon}: otp{otp} presented, fresh locally: write sent"
                )
            }
            Action::StoreDecidesLogin { daemon, .. } => {
                write!(f, "store: decides d{daemon}'s login write")
            }
            Action::LoginAnswered { daemon, .. } => {
                write!(
                    f,
                    "d{daemon}: reads the store's answer (won: commit, OK; lost: REPLAYED)"
                )
            }
            Action::LoginTimesOut { daemon, .. } => {
                write!(f, "d{daemon}: login times out: decided offline")
            }
            Action::Push { daemon } => write!(f, "d{daemon}: reconciler pushes the unsynced row"),
            Action::Pull { daemon } => write!(f, "d{daemon}: reconciler pulls the store's row"),
            Action::StoreDecidesPush { daemon } => write!(f, "store: decides d{daemon}'s push"),
            Action::Settle { daemon } => {
                write!(
                    f,
                    "d{daemon}: reconciler settles (raise local, clear mark if covered)"
                )
            }
            Action::ReconcilerFails { daemon } => {
                write!(f, "d{daemon}: reconciler round trip fails")
            }
            Action::LateWriteLands { otp } => write!(f, "store: late write of otp{otp} lands"),
            Action::Crash { daemon } => write!(f, "d{daemon}: crashes, restarts from disk"),
            Action::CountWindow { daemon } => {
                write!(f, "d{daemon}: writes an in-memory offline count to disk")
            }
        }
    }
}

/// A path, one state and one step a line.
pub fn show_path(model: &FleetModel, path: &[(State, Option<Action>)]) -> String {
    let mut out = String::new();
    for (i, (s, a)) in path.iter().enumerate() {
        out.push_str(&format!("  [{i}] {}\n", ShowState(model, s)));
        if let (Some(a), Some((after, _))) = (a, path.get(i + 1)) {
            out.push_str(&format!("   -> {}\n", describe(s, *a, after)));
        }
    }
    out
}

/// What a step did, told from the states before and after it.
fn describe(before: &State, action: Action, after: &State) -> String {
    let d = |i: u8| {
        (
            &before.daemons[usize::from(i)],
            &after.daemons[usize::from(i)],
        )
    };
    let slot = |i: u8, slot: u8| before.daemons[usize::from(i)].logins[usize::from(slot)];
    let answered_ok = |i: u8| {
        before.daemons[usize::from(i)].ok_last != after.daemons[usize::from(i)].ok_last
            || before.ok_online != after.ok_online
            || before.ok_offline != after.ok_offline
    };
    let wins = |otp: u8| {
        if after.store == Some(otp) && before.store != Some(otp) {
            "wins"
        } else {
            "loses"
        }
    };
    match action {
        Action::Login { daemon, otp } => {
            format!(
                "d{daemon}: otp{otp} presented, fresh against the local row: conditional write sent"
            )
        }
        Action::StoreDecidesLogin { daemon, slot: s } => match slot(daemon, s) {
            Some(Login::Sent(otp)) => match after.store {
                Some(o)
                    if o == otp
                        && after.daemons[usize::from(daemon)]
                            .logins
                            .contains(&Some(Login::Won(otp))) =>
                {
                    format!("store: d{daemon}'s write of otp{otp} wins (row raised to otp{otp})")
                }
                held => format!(
                    "store: d{daemon}'s write of otp{otp} loses (the row holds {})",
                    row(held)
                ),
            },
            _ => format!("{action}"),
        },
        Action::LoginAnswered { daemon, slot: s } => match slot(daemon, s) {
            Some(Login::Won(otp)) if answered_ok(daemon) => {
                format!("d{daemon}: reads \"won\": local commit of otp{otp}, OK")
            }
            Some(Login::Won(otp)) => {
                format!(
                    "d{daemon}: reads \"won\", but the local row is at or past otp{otp}: REPLAYED"
                )
            }
            Some(Login::Lost(otp, held)) => format!(
                "d{daemon}: reads \"lost\": otp{otp} REPLAYED, local row settles to {}",
                row(held)
            ),
            _ => format!("{action}"),
        },
        Action::LoginTimesOut { daemon, slot: s } => {
            let login = slot(daemon, s).expect("a login in flight");
            let late = if matches!(login, Login::Sent(_)) {
                " (its write still on its way)"
            } else {
                ""
            };
            let otp = login.otp();
            let (b, a) = d(daemon);
            let verdict = if answered_ok(daemon) && a.uncounted > b.uncounted {
                "accepted offline: OK, row marked unsynced, counted in memory only"
            } else if answered_ok(daemon) {
                "accepted offline: OK, row marked unsynced and counted in one commit"
            } else if a.local == b.local && b.local >= Some(otp) {
                "REPLAYED by the local row"
            } else {
                "refused (deny: BACKEND_ERROR)"
            };
            format!("d{daemon}: login of otp{otp} gets no answer{late}: {verdict}")
        }
        Action::Push { daemon } => {
            format!(
                "d{daemon}: reconciler pushes the unsynced row {}",
                row(d(daemon).0.local)
            )
        }
        Action::Pull { daemon } => {
            format!(
                "d{daemon}: reconciler pulls the store's row ({})",
                row(before.store)
            )
        }
        Action::StoreDecidesPush { daemon } => match d(daemon).0.reconciler {
            Reconciler::Push(otp) => format!("store: d{daemon}'s push of otp{otp} {}", wins(otp)),
            _ => format!("{action}"),
        },
        Action::Settle { daemon } => {
            let (b, a) = d(daemon);
            let mark = match (b.unsynced, a.unsynced) {
                (true, false) => ", mark cleared",
                (true, true) => ", mark kept (the store is below the row)",
                _ => "",
            };
            format!(
                "d{daemon}: reconciler settles: local row {}{mark}",
                row(a.local)
            )
        }
        Action::ReconcilerFails { daemon } => match d(daemon).0.reconciler {
            Reconciler::Push(otp) => format!(
                "d{daemon}: reconciler's push of otp{otp} fails (the write still on its way)"
            ),
            _ => format!("d{daemon}: reconciler's answer is lost"),
        },
        Action::LateWriteLands { otp } => {
            format!("store: a late write of otp{otp} lands and {}", wins(otp))
        }
        Action::Crash { daemon } => {
            format!("d{daemon}: crashes and restarts from disk (what was in flight is forgotten)")
        }
        Action::CountWindow { daemon } => {
            format!("d{daemon}: writes an in-memory offline count to disk")
        }
    }
}
