//! The fleet: several bastions sharing their counters through one store
//! (PostgreSQL, `[fleet]` in the configuration), with the local database
//! still the source of truth when the store cannot be reached.
//!
//! A login with a fleet ([`crate::db`]'s batch): after the local checks pass
//! (the OTP decoded, fresh against the local row), the batch's fresh logins
//! are raised in the store with one conditional statement per batch — a
//! key's row rises only if the presented (generation, counter, session use)
//! is strictly above what the store holds (`ykhsm_core::counters::raises`).
//! Won: the local commit follows, then `OK`. Lost: `REPLAYED_OTP`, and the
//! local row is raised to the store's. The store unreachable, slower than
//! `timeout_ms` or failing: with `offline = "local"` the login is decided on
//! the local row, the row is marked unsynced and the acceptance counted
//! (the replay window that really happened: `ykadmin status`, `metrics`);
//! with `offline = "deny"` the login gets `BACKEND_ERROR`.
//!
//! The [`reconciler`] brings the two together again: it pushes unsynced
//! rows with the same rule (idempotent, in any order), raises local rows to
//! the store's, and retries through outages with a capped backoff.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use ykhsm_config::Offline;
pub use ykhsm_fleet::Raised;
use ykhsm_proto::CounterRecord;

use crate::db::Db;
use crate::log::Log;

/// The shared counter store, as the daemon uses it. Every call is one round
/// trip bounded by the configured timeout (connecting first if needed); an
/// error is why, for the log (never a password).
pub trait Store: Send {
    /// Raises each record's row iff its position is strictly above the
    /// stored one; the records have distinct public ids.
    fn raise(&mut self, records: &[CounterRecord]) -> Result<Vec<Raised>, String>;
    /// The store's rows of these keys (missing ones absent).
    fn pull(&mut self, public_ids: &[String]) -> Result<Vec<CounterRecord>, String>;
}

/// PostgreSQL, through `ykhsm_fleet` (its errors shown without the
/// password; any error counts as "no answer", and the mode decides).
impl Store for ykhsm_fleet::Fleet {
    fn raise(&mut self, records: &[CounterRecord]) -> Result<Vec<Raised>, String> {
        ykhsm_fleet::Fleet::raise(self, records).map_err(|e| e.to_string())
    }

    fn pull(&mut self, public_ids: &[String]) -> Result<Vec<CounterRecord>, String> {
        ykhsm_fleet::Fleet::pull(self, public_ids).map_err(|e| e.to_string())
    }
}

/// The fleet as the login path holds it: the store (used by whichever
/// thread commits a batch), the policy, and whether the store answered
/// last time.
pub struct Fleet {
    pub(crate) store: Mutex<Box<dyn Store>>,
    pub(crate) offline: Offline,
    /// [`UNKNOWN`], [`UP`] (the store answered the last call, a login's or
    /// the reconciler's) or [`DOWN`].
    state: AtomicU8,
    /// Unix seconds of the last call the store answered (0: never).
    last_contact: AtomicU64,
    /// While the store is down, the logins' next try (milliseconds since
    /// `born`): until then logins do not wait for it.
    retry_at: AtomicU64,
    born: Instant,
    /// Round trips the logins made to the store, and the logins they
    /// carried.
    round_trips: AtomicU64,
    logins_sent: AtomicU64,
    log: Arc<Log>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("offline", &self.offline)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// The fleet over `store`, not yet known to be reachable.
    pub fn new(store: Box<dyn Store>, offline: Offline, log: Arc<Log>) -> Self {
        Self {
            store: Mutex::new(store),
            offline,
            state: AtomicU8::new(UNKNOWN),
            last_contact: AtomicU64::new(0),
            retry_at: AtomicU64::new(0),
            born: Instant::now(),
            round_trips: AtomicU64::new(0),
            logins_sent: AtomicU64::new(0),
            log,
        }
    }

    /// Counts one round trip of the logins carrying `logins`.
    pub(crate) fn sent(&self, logins: usize) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.logins_sent
            .fetch_add(u64::try_from(logins).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// (round trips, logins sent) since the daemon started.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.round_trips.load(Ordering::Relaxed),
            self.logins_sent.load(Ordering::Relaxed),
        )
    }

    /// Whether a batch of logins should ask the store: always while it
    /// answers; while it is down, one batch per [`LOGIN_RETRY_MS`] (the
    /// others are decided at once by the mode, not after a timeout each;
    /// the reconciler notices the store's return within its backoff too).
    pub(crate) fn worth_asking(&self) -> bool {
        if self.state.load(Ordering::Relaxed) != DOWN {
            return true;
        }
        let now = self.millis();
        let at = self.retry_at.load(Ordering::Relaxed);
        now >= at
            && self
                .retry_at
                .compare_exchange(
                    at,
                    now + LOGIN_RETRY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the store answered the last call.
    pub fn is_connected(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// Unix seconds of the store's last answer, if any.
    pub fn last_contact(&self) -> Option<u64> {
        Some(self.last_contact.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Records how a call went, logging the changes only (an outage is two
    /// lines, not one per login).
    pub(crate) fn note<T>(&self, r: &Result<T, String>) {
        match r {
            Ok(_) => {
                self.last_contact.store(crate::db::now(), Ordering::Relaxed);
                if self.state.swap(UP, Ordering::Relaxed) != UP {
                    self.log.info("fleet: the counter store answers");
                }
            }
            Err(why) => {
                self.retry_at
                    .store(self.millis() + LOGIN_RETRY_MS, Ordering::Relaxed);
                if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
                    let what = match self.offline {
                        Offline::Local => {
                            "logins are decided on this host's counters, each acceptance counted as offline"
                        }
                        Offline::Deny => "logins get BACKEND_ERROR (offline = \"deny\")",
                    };
                    self.log.warn(&format!(
                        "fleet: the counter store cannot be reached ({why}); {what}"
                    ));
                }
            }
        }
    }
}

/// While the store is down, how often a batch of logins tries it.
pub const LOGIN_RETRY_MS: u64 = 1000;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The most records one reconciler call sends.
const PUSH_CHUNK: usize = 500;
/// The reconciler's first retry after a failure, doubling up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts while the store is away: with the
/// store's timeout added, unsynced rows reach it within a few seconds of it
/// coming back (the promise is 10 s).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the reconciler pulls the store's rows of this host's keys
/// while everything is synced.
pub const PULL_EVERY: Duration = Duration::from_secs(5);

/// Stops the reconciler.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    /// Asks the reconciler to stop; it returns at its next wait.
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits `d` or until stopped; whether stopped.
    fn wait(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *stopped
    }
}

/// The keys this host serves beyond those it has counters for (the
/// authfile's public ids): their rows are pulled too.
pub type Served = Box<dyn Fn() -> Vec<String> + Send>;

/// Starts the reconciler thread on its own connection to the store.
pub fn reconciler(
    db: Db,
    fleet: Arc<Fleet>,
    mut store: Box<dyn Store>,
    served: Served,
    stop: Arc<Stop>,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("ykhsmd-fleet".into())
        .spawn(move || {
            let mut backoff = FIRST_BACKOFF;
            let mut last_pull: Option<Instant> = None;
            loop {
                let pull_due = last_pull.is_none_or(|t| t.elapsed() >= PULL_EVERY);
                let r = reconcile_once(&db, store.as_mut(), pull_due.then_some(&served));
                fleet.note(&r);
                let wait = match r {
                    Ok(more) => {
                        backoff = FIRST_BACKOFF;
                        if pull_due {
                            last_pull = Some(Instant::now());
                        }
                        if more {
                            Duration::ZERO
                        } else {
                            Duration::from_millis(500)
                        }
                    }
                    Err(_) => {
                        let w = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        w
                    }
                };
                if stop.wait(wait) {
                    return;
                }
            }
        })
        .expect("spawn the fleet reconciler")
}

/// One pass: push up to [`PUSH_CHUNK`] unsynced rows, then, if due
/// (`pull`: the keys served besides those with counters), pull the store's
/// rows of every key this host has counters for or serves.
/// `Ok(true)`: more unsynced rows wait.
fn reconcile_once(db: &Db, store: &mut dyn Store, pull: Option<&Served>) -> Result<bool, String> {
    let pending = db.fleet_unsynced(PUSH_CHUNK).map_err(|e| e.to_string())?;
    let more = pending.len() == PUSH_CHUNK;
    if !pending.is_empty() {
        let raised = store.raise(&pending)?;
        let mut settled = Vec::with_capacity(pending.len());
        for (sent, r) in pending.into_iter().zip(raised) {
            match r {
                Raised::Won => settled.push(sent),
                // The store is at or above this host: raise the local row to
                // it; the row is synced once the store holds at least what
                // this host accepted.
                Raised::Lost(held) => settled.push(held),
            }
        }
        db.fleet_settle(settled).map_err(|e| e.to_string())?;
    }
    if let Some(served) = pull {
        let mut ids = db.public_ids().map_err(|e| e.to_string())?;
        ids.extend(served());
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(PUSH_CHUNK) {
            let rows = store.pull(chunk)?;
            if !rows.is_empty() {
                db.fleet_settle(rows).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(more)
}
