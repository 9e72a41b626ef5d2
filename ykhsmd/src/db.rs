//! The counter database: per key — its public id, whatever key handle, file
//! format or host its AEAD is read from — the generation and the last
//! accepted (counter, session use), in SQLite with WAL and
//! `synchronous=FULL`, so a commit is on disk before it returns.
//!
//! A key's generation is 0 until an operator starts the key afresh
//! (`ykadmin counters reset`, or `import-ykksm --force` of another secret):
//! the generation goes up by one, the counters start again from "never
//! seen", and the new generation is bound to the fingerprints of the AEADs
//! that hold the new secret, so an AEAD still holding the retired secret
//! (left on this host, or on another that merged the reset) raises nothing.
//!
//! Verifies queue their check-and-set here. Whoever commits takes
//! everything queued at that moment and runs it in one transaction — each
//! check sees the writes before it, so the same OTP twice in one batch is
//! accepted once — with one fsync (group commit), and only then hands each
//! request its result. No answer leaves before the commit it depends on; if
//! the commit fails, every request in the batch gets an error and no `OK`.
//!
//! Who commits ([`Committer`]): a root login read by an acceptor with
//! nothing else waiting, arriving when nothing is being committed, commits
//! its own check-and-set on its own thread ([`Db::accept`] with
//! [`Committer::Acceptor`]): no hand-off between threads on its way to the
//! disk and back, which is most of a login's latency beyond the fsync
//! itself. Whatever queues while a commit is running is committed next, as
//! one batch, by the commit thread, so the threads that read requests keep
//! reading during the fsync; so is everything from a thread that has other
//! work (more connections to accept, the event loop, the YubiHSM's
//! thread). Only one commit runs at a time, so batches commit in order.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;
use tokio::sync::oneshot;
use ykhsm_core::counters::Counters;
use ykhsm_proto::CounterRecord;
use ykhsm_proto::message::{FINGERPRINT_LEN, MAX_BOUND_AEADS};

use crate::fleet::Fleet;

/// How long a write waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1000);
/// The page size of a new database file.
const PAGE_SIZE: i64 = 1024;
/// WAL pages between automatic checkpoints.
const WAL_CHECKPOINT_PAGES: i64 = 4096;
/// The schema this code writes (`PRAGMA user_version`). 1: counters per
/// (public id, AEAD fingerprint); 2: per public id, with a generation.
pub const SCHEMA_VERSION: i64 = 2;

/// A database failure: the file, and what failed.
///
/// The cause (SQLite's error, the I/O error) is kept typed in [`DbErrorKind`]
/// and shown in the message, as sudo-rs's `Io(path, io::Error)` does; it is
/// not also returned by `source()`, so that the `{:#}` chains of start-up
/// errors do not print it twice. Clone: one failed commit answers every
/// request of its batch.
#[derive(Debug, Clone, Error)]
#[error("counter database {}: {kind}", path.display())]
pub struct DbError {
    /// The file (the database, or one of its companions or its copy).
    pub path: PathBuf,
    /// What failed.
    pub kind: DbErrorKind,
}

/// What failed in the counter database.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum DbErrorKind {
    /// SQLite refused or failed.
    #[error("{0}")]
    Sql(Arc<rusqlite::Error>),
    /// The file could not be created or opened.
    #[error("cannot open: {0}")]
    Open(Arc<io::Error>),
    /// The file's metadata could not be read.
    #[error("{0}")]
    Stat(Arc<io::Error>),
    /// Group and other bits could not be taken off the file.
    #[error("cannot chmod 0600: {0}")]
    Chmod(Arc<io::Error>),
    /// The path is a symbolic link: never followed.
    #[error("is a symbolic link; refused")]
    SymbolicLink,
    /// The path is not a regular file.
    #[error("is not a regular file; refused")]
    NotRegularFile,
    /// SQLite would not put the file in WAL mode.
    #[error("WAL mode refused (journal mode {0})")]
    NotWal(String),
    /// A newer ykhsmd wrote the file: what to do, and what not.
    #[error(
        "schema version {0} was written by a newer ykhsmd than this one (which knows \
         versions up to {SCHEMA_VERSION}); install the newer ykhsmd again. The copy the newer \
         one kept next to it when it migrated (*.schema-{SCHEMA_VERSION}.*.bak) holds the \
         counters as they were before: restoring it would accept once more every OTP \
         accepted since, so restore it only if the newer ykhsmd accepted none"
    )]
    NewerSchema(i64),
    /// A schema version no ykhsm wrote.
    #[error("schema version {0} is not one ykhsm ever wrote; is this a ykhsm counter database?")]
    UnknownSchema(i64),
    /// The copy kept before a migration cannot be named to SQLite.
    #[error("the path is not UTF-8")]
    NotUtf8,
    /// The copy kept before a migration could not be written.
    #[error("cannot keep a copy before migrating: {0}")]
    Backup(Arc<rusqlite::Error>),
    /// The commit thread could not be started.
    #[error("cannot start the commit thread: {0}")]
    CommitThread(Arc<io::Error>),
    /// The database is closed (the daemon is stopping).
    #[error("the database is closed")]
    Closed,
    /// The commit thread stopped without answering.
    #[error("the committer has stopped")]
    CommitterStopped,
    /// An earlier statement of the same transaction failed: nothing of it
    /// was committed.
    #[error("an earlier statement in the same transaction failed")]
    EarlierStatementFailed,
}

impl DbError {
    /// `kind` for the file at `path`.
    pub fn new(path: &Path, kind: DbErrorKind) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
        }
    }
}

impl From<rusqlite::Error> for DbErrorKind {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(Arc::new(e))
    }
}

/// Who commits a login's check-and-set when it finds no commit running,
/// and why. (If a commit is running, the login joins the next batch
/// whoever was named: the commit thread takes it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committer {
    /// The acceptor thread that read the login: nothing else waits for it
    /// (no other connection to accept, or only ones behind another uid's
    /// connection — a flood, which is no reason to hand root's commit to a
    /// thread that would compete with it for the CPU). No hand-off between
    /// threads on the way to the disk and back: most of a login's latency
    /// beyond the fsync itself.
    Acceptor,
    /// The commit thread, because the thread that ran the checks has other
    /// work meanwhile.
    CommitThread(Busy),
}

/// What the thread that ran a login's checks goes back to while the commit
/// thread commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Accepting: other connections wait behind a root login, most likely
    /// more logins.
    Accepting,
    /// The event loop's other connections (it never waits on the disk),
    /// and the admin requests, which the event loop serves.
    EventLoop,
    /// The YubiHSM's next OTP.
    Device,
}

impl Committer {
    /// Whether the calling thread commits (unless a commit is running).
    fn commits_here(self) -> bool {
        match self {
            Self::Acceptor => true,
            Self::CommitThread(Busy::Accepting | Busy::EventLoop | Busy::Device) => false,
        }
    }
}

/// Which key a counter pair belongs to, and the AEAD that decoded the OTP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// The public id: what the counters belong to.
    pub public_id: String,
    /// [`ykhsm_core::YubiKeyAead::fingerprint`] of the AEAD the OTP was
    /// decoded with: from generation 1 on, it must be one the generation
    /// is bound to.
    pub aead: [u8; FINGERPRINT_LEN],
}

/// What a verify presents.
#[derive(Debug, Clone, Copy)]
pub struct Presented {
    /// (counter, session use), caps-lock bit dropped.
    pub counters: Counters,
    /// Timestamp high byte.
    pub ts_high: u8,
    /// Timestamp low 16 bits.
    pub ts_low: u16,
}

/// The outcome of a check-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Fresh: stored and committed (with a fleet: raised in the store
    /// first).
    Fresh,
    /// Fresh against this host's row, decided without the fleet's store
    /// (it could not be reached; `offline = "local"`): stored, committed,
    /// marked unsynced and counted as an offline acceptance.
    Offline,
    /// Not above the stored pair: nothing written.
    Replayed,
    /// Fresh here, but the fleet's store held this position or a higher
    /// one (another bastion accepted it): a replay; the local row was
    /// raised to the store's.
    Lost,
    /// The fleet's store could not be reached and `offline = "deny"`:
    /// nothing written.
    FleetDown,
    /// The key was reset to `generation`, and the AEAD that decoded the OTP
    /// is not one that generation was started for (it may hold the retired
    /// secret): nothing written.
    Unbound {
        /// The key's generation.
        generation: u32,
    },
}

/// The outcome of a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeOutcome {
    /// Records that changed what a login reads: a new row, a higher
    /// generation, higher counters, more bound AEADs.
    pub raised: u32,
    /// Records that changed nothing a login reads.
    pub unchanged: u32,
}

/// A key's generation after a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetOutcome {
    /// The generation now in force.
    pub generation: u32,
    /// How many AEADs it is bound to.
    pub aeads: u32,
}

/// Where a result goes: called once, after the commit it depends on, on
/// the thread that committed. Dropped uncalled only if that thread panicked.
pub type Reply<T> = Box<dyn FnOnce(Result<T, DbError>) + Send>;

enum Op {
    Accept {
        key: CounterKey,
        presented: Presented,
        reply: Reply<Accept>,
    },
    Merge {
        records: Vec<CounterRecord>,
        reply: Reply<MergeOutcome>,
    },
    Export {
        reply: Reply<Vec<CounterRecord>>,
    },
    Reset {
        public_id: String,
        aeads: Vec<[u8; FINGERPRINT_LEN]>,
        reply: Reply<ResetOutcome>,
    },
    /// The rows the fleet's store may not have (at most `limit`).
    FleetUnsynced {
        limit: usize,
        reply: Reply<Vec<CounterRecord>>,
    },
    /// Raises rows to the store's records; clears what is synced.
    FleetSettle {
        records: Vec<CounterRecord>,
        reply: Reply<MergeOutcome>,
    },
    /// The fleet's numbers.
    FleetCounts {
        reply: Reply<FleetCounts>,
    },
    /// Marks every row for the reconciler to push.
    FleetMarkAll {
        reply: Reply<()>,
    },
    /// Every key's public id (no row read whole).
    PublicIds {
        reply: Reply<Vec<String>>,
    },
}

/// The counter database: a queue of check-and-sets and the connection
/// that commits them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What opening did (a migration, modes fixed), for the log.
    opened: Opened,
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    queue: Mutex<Queue>,
    /// Work for the commit thread, or the database is closing.
    work: Condvar,
    /// The commit thread, joined on close.
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// Unix seconds of the last commit that changed counters (0: none
    /// since the daemon started), for `ykadmin status` and `metrics`.
    last_commit: AtomicU64,
    /// The fleet, if `[fleet]` is configured ([`Db::attach_fleet`]).
    fleet: OnceLock<Arc<Fleet>>,
}

#[derive(Debug, Default)]
struct Queue {
    ops: Vec<Op>,
    /// A commit is running (on the commit thread or a caller's).
    committing: bool,
    /// [`Db::close`] has begun: nothing more is taken.
    closed: bool,
}

impl Inner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The right to commit, held while a batch runs; released on drop (also
/// when unwinding), handing whatever queued meanwhile to the commit thread.
struct Committing<'a>(&'a Inner);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue();
        q.committing = false;
        if !q.ops.is_empty() || q.closed {
            self.0.work.notify_one();
        }
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Accept { .. } => "Accept",
            Op::Merge { .. } => "Merge",
            Op::Export { .. } => "Export",
            Op::Reset { .. } => "Reset",
            Op::FleetUnsynced { .. } => "FleetUnsynced",
            Op::FleetSettle { .. } => "FleetSettle",
            Op::FleetCounts { .. } => "FleetCounts",
            Op::FleetMarkAll { .. } => "FleetMarkAll",
            Op::PublicIds { .. } => "PublicIds",
        })
    }
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

mod fleet;
mod schema;

pub use fleet::FleetCounts;

pub use schema::{Migration, Opened, inspect};

impl Db {
    /// Opens (creating if needed) the database and starts its commit
    /// thread (`ykhsmd-commit`), which commits whatever no login commits on
    /// its own thread.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let (conn, opened) = schema::open(path)?;
        let inner = Arc::new(Inner {
            opened,
            path: path.to_path_buf(),
            conn: Mutex::new(Some(conn)),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            thread: Mutex::new(None),
            last_commit: AtomicU64::new(0),
            fleet: OnceLock::new(),
        });
        let for_thread = Arc::clone(&inner);
        let handle = thread::Builder::new()
            .name("ykhsmd-commit".into())
            .spawn(move || commit_thread(&for_thread))
            .map_err(|e| DbError::new(path, DbErrorKind::CommitThread(Arc::new(e))))?;
        *inner.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What opening the file did besides opening it.
    pub fn opened(&self) -> &Opened {
        &self.inner.opened
    }

    /// When a transaction that changed counters (a login's new pair, a
    /// merge that raised something, a reset) last committed, Unix seconds;
    /// `None` if none has since the database was opened.
    pub fn last_commit(&self) -> Option<u64> {
        Some(self.inner.last_commit.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    fn error(&self, kind: DbErrorKind) -> DbError {
        DbError::new(&self.inner.path, kind)
    }

    /// The fleet, if attached.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.inner.fleet.get()
    }

    /// From now on every login of a batch is raised in the fleet's store
    /// before its local commit ([`crate::fleet`]). Once, before serving.
    /// Every key's row is marked for the reconciler to push once: the
    /// store learns what this host accepted before it joined the fleet
    /// (or while the daemon was stopped), whatever it held.
    pub fn attach_fleet(&self, fleet: Arc<Fleet>) -> Result<(), DbError> {
        let _ = self.inner.fleet.set(fleet);
        self.blocking(|reply| Op::FleetMarkAll { reply })
    }

    /// Runs `op` (made with the reply) on the commit thread and waits for
    /// its result: for threads that are not the event loop's.
    fn blocking<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(op(to_oneshot(tx)), Committer::CommitThread(Busy::EventLoop));
        rx.blocking_recv()
            .map_err(|_| self.error(DbErrorKind::CommitterStopped))?
    }

    /// The rows the fleet's store may not have, oldest first, at most
    /// `limit` (the reconciler's thread).
    pub fn fleet_unsynced(&self, limit: usize) -> Result<Vec<CounterRecord>, DbError> {
        self.blocking(|reply| Op::FleetUnsynced { limit, reply })
    }

    /// Raises rows to `records` (the store's, or what the store now holds)
    /// and clears the unsynced mark of every key the store is level with
    /// (the reconciler's thread).
    pub fn fleet_settle(&self, records: Vec<CounterRecord>) -> Result<MergeOutcome, DbError> {
        self.blocking(|reply| Op::FleetSettle { records, reply })
    }

    /// Every key's public id (the reconciler's thread).
    pub fn public_ids(&self) -> Result<Vec<String>, DbError> {
        self.blocking(|reply| Op::PublicIds { reply })
    }

    /// The fleet's numbers.
    pub async fn fleet_counts(&self) -> Result<FleetCounts, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Op::FleetCounts {
                reply: to_oneshot(tx),
            },
            Committer::CommitThread(Busy::EventLoop),
        );
        rx.await
            .map_err(|_| self.error(DbErrorKind::CommitterStopped))?
    }

    /// Queues `op`. If no commit is running and `committer` is the calling
    /// thread, commits the queue here before returning; otherwise the
    /// commit thread will.
    fn submit(&self, op: Op, committer: Committer) {
        let mut q = self.inner.queue();
        if q.closed {
            drop(q);
            return fail_all(vec![op], &self.error(DbErrorKind::Closed));
        }
        q.ops.push(op);
        if q.committing {
            return; // taken by the running commit's successor
        }
        if !committer.commits_here() {
            self.inner.work.notify_one();
            return;
        }
        q.committing = true;
        let batch = std::mem::take(&mut q.ops);
        drop(q);
        let done = {
            let _committing = Committing(&self.inner);
            commit_batch(&self.inner, batch)
        };
        answer(done);
    }

    /// Commits what is still queued, checkpoints the WAL and closes the
    /// file. Later requests get an error.
    pub fn close(&self) {
        self.inner.queue().closed = true;
        self.inner.work.notify_all();
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = thread {
            let _ = handle.join();
        }
        let rest = std::mem::take(&mut self.inner.queue().ops);
        answer(commit_batch(&self.inner, rest));
        let conn = self
            .inner
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(conn) = conn {
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            let _ = conn.close();
        }
    }

    /// Steps 6 and 7 of a login: accepts `presented` for `key` iff it is
    /// above the stored pair; `reply` gets the result only after the new
    /// pair is committed (fsynced), on the thread that committed. If
    /// nothing is being committed and `committer` is the calling thread,
    /// the commit runs here before this returns; otherwise it joins the
    /// next batch and this returns at once.
    pub fn accept(
        &self,
        key: CounterKey,
        presented: Presented,
        committer: Committer,
        reply: Reply<Accept>,
    ) {
        self.submit(
            Op::Accept {
                key,
                presented,
                reply,
            },
            committer,
        );
    }

    /// Merges records: per key the higher record wins, nothing is lowered.
    pub async fn merge(&self, records: Vec<CounterRecord>) -> Result<MergeOutcome, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Op::Merge {
                records,
                reply: to_oneshot(tx),
            },
            Committer::CommitThread(Busy::EventLoop),
        );
        rx.await
            .map_err(|_| self.error(DbErrorKind::CommitterStopped))?
    }

    /// Starts `public_id` afresh: the next generation, no counters, bound to
    /// `aeads` (at least one). Committed before the reply.
    pub async fn reset(
        &self,
        public_id: String,
        aeads: Vec<[u8; FINGERPRINT_LEN]>,
    ) -> Result<ResetOutcome, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Op::Reset {
                public_id,
                aeads,
                reply: to_oneshot(tx),
            },
            Committer::CommitThread(Busy::EventLoop),
        );
        rx.await
            .map_err(|_| self.error(DbErrorKind::CommitterStopped))?
    }

    /// Every record, sorted by public id.
    pub async fn export(&self) -> Result<Vec<CounterRecord>, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Op::Export {
                reply: to_oneshot(tx),
            },
            Committer::CommitThread(Busy::EventLoop),
        );
        rx.await
            .map_err(|_| self.error(DbErrorKind::CommitterStopped))?
    }
}

fn to_oneshot<T: Send + 'static>(tx: oneshot::Sender<Result<T, DbError>>) -> Reply<T> {
    Box::new(move |r| {
        let _ = tx.send(r);
    })
}

/// The commit thread: commits whatever queues while no one else is
/// committing, until the database is closed and the queue is empty.
fn commit_thread(inner: &Inner) {
    loop {
        let batch = {
            let mut q = inner.queue();
            loop {
                if !q.committing && !q.ops.is_empty() {
                    q.committing = true;
                    break std::mem::take(&mut q.ops);
                }
                if q.closed && !q.committing && q.ops.is_empty() {
                    return;
                }
                q = inner.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A panic loses this batch (its replies are dropped: the async
        // callers see an error, direct clients a closed connection), not
        // the thread every later batch needs.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let done = {
                let _committing = Committing(inner);
                commit_batch(inner, batch)
            };
            answer(done);
        }));
    }
}

/// Runs one batch on the connection, or fails it if the database is
/// closed. The results, for [`answer`] once the right to commit is
/// released: the next batch can commit while this one's answers go out.
fn commit_batch(inner: &Inner, batch: Vec<Op>) -> Vec<Done> {
    if batch.is_empty() {
        return Vec::new();
    }
    let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
    match conn.as_mut() {
        Some(c) => {
            let (done, later) = run_batch(c, &inner.path, batch, inner.fleet.get());
            if !later.is_empty() {
                // The next batch checks them, after this one is settled;
                // the commit thread is woken when this commit ends.
                inner.queue().ops.splice(0..0, later);
            }
            if done.iter().any(Done::changed_counters) {
                inner.last_commit.store(now(), Ordering::Relaxed);
            }
            done
        }
        None => failed(batch, &DbError::new(&inner.path, DbErrorKind::Closed)),
    }
}

/// Hands out the results of a commit.
fn answer(done: Vec<Done>) {
    for d in done {
        d.call();
    }
}

/// A key's row, as merges and exports see it.
type Row = CounterRecord;

/// The order that decides merges within one generation: (counter, session
/// use) first — "never seen" below every pair — then the other fields, so
/// the maximum is the same in any order.
fn merge_rank(r: &CounterRecord) -> (i32, i32, u64, u8, u16) {
    let (c, u) = r
        .last
        .map_or((-1, -1), |(c, u)| (i32::from(c), i32::from(u)));
    (c, u, r.modified, r.ts_high, r.ts_low)
}

fn opt_pair(counter: i64, session_use: i64) -> Option<(u16, u8)> {
    Some((
        u16::try_from(counter).ok()?,
        u8::try_from(session_use).ok()?,
    ))
}

fn sql_pair(last: Option<(u16, u8)>) -> (i64, i64) {
    last.map_or((-1, -1), |(c, u)| (i64::from(c), i64::from(u)))
}

/// The columns [`row`] reads, in its order.
const ROW_COLUMNS: &str =
    "public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at";

/// A row of `counters` selected as [`ROW_COLUMNS`], without its bound
/// AEADs.
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        public_id: r.get(0)?,
        generation: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
        last: opt_pair(r.get(2)?, r.get(3)?),
        ts_high: r.get(4)?,
        ts_low: r.get(5)?,
        modified: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
        reset_at: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
        aeads: Vec::new(),
    })
}

fn read_row(tx: &Connection, public_id: &str) -> rusqlite::Result<Option<Row>> {
    // Cached: the statement is parsed once per connection, not per verify.
    let row = tx
        .prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM counters WHERE public_id = ?1"
        ))?
        .query_row(params![public_id], row)
        .optional()?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    row.aeads = bound_aeads(tx, public_id, row.generation)?;
    Ok(Some(row))
}

fn bound_aeads(
    tx: &Connection,
    public_id: &str,
    generation: u32,
) -> rusqlite::Result<Vec<[u8; FINGERPRINT_LEN]>> {
    let mut st = tx.prepare_cached(
        "SELECT fingerprint FROM bound_aeads WHERE public_id = ?1 AND generation = ?2
         ORDER BY fingerprint",
    )?;
    let fps = st.query_map(params![public_id, generation], |r| {
        let fp: Vec<u8> = r.get(0)?;
        Ok(<[u8; FINGERPRINT_LEN]>::try_from(fp.as_slice()).ok())
    })?;
    // A malformed fingerprint binds nothing (fails closed).
    Ok(fps.filter_map(|f| f.ok().flatten()).collect())
}

/// Writes a whole row and its bound AEADs (replacing older generations').
fn write_row(tx: &Connection, r: &Row) -> rusqlite::Result<()> {
    let (counter, session_use) = sql_pair(r.last);
    tx.prepare_cached(
        "INSERT INTO counters (public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (public_id) DO UPDATE SET
           generation = excluded.generation, counter = excluded.counter,
           session_use = excluded.session_use, ts_high = excluded.ts_high,
           ts_low = excluded.ts_low, modified = excluded.modified, reset_at = excluded.reset_at",
    )?
    .execute(params![
        r.public_id,
        r.generation,
        counter,
        session_use,
        r.ts_high,
        r.ts_low,
        i64::try_from(r.modified).unwrap_or(i64::MAX),
        i64::try_from(r.reset_at).unwrap_or(i64::MAX),
    ])?;
    bind(tx, &r.public_id, r.generation, &r.aeads)
}

/// Binds `generation` of `public_id` to exactly `aeads`; bindings of other
/// generations go (the row's generation only ever rises).
fn bind(
    tx: &Connection,
    public_id: &str,
    generation: u32,
    aeads: &[[u8; FINGERPRINT_LEN]],
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM bound_aeads WHERE public_id = ?1")?
        .execute(params![public_id])?;
    let mut ins = tx.prepare_cached(
        "INSERT OR IGNORE INTO bound_aeads (public_id, generation, fingerprint) VALUES (?1, ?2, ?3)",
    )?;
    for fp in aeads {
        ins.execute(params![public_id, generation, &fp[..]])?;
    }
    Ok(())
}

/// The check-and-set of one verify, as one statement: insert the pair (a
/// key never seen is generation 0), or raise the stored one — only if the
/// new pair is strictly above it, (counter, session use) compared as a row
/// value, which is exactly `ykhsm_core::counters::is_fresh`
/// (`sql_rule_is_is_fresh` checks this on random pairs; "never seen" is
/// stored as (-1, -1)), and, from generation 1 on, only if the AEAD that
/// decoded the OTP is one the generation is bound to. One row changed:
/// fresh; none: a replay or an unbound AEAD ([`classify_refusal`]).
const ACCEPT_SQL: &str =
    "INSERT INTO counters (public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at)
     VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, 0)
     ON CONFLICT (public_id) DO UPDATE SET
       counter = excluded.counter, session_use = excluded.session_use,
       ts_high = excluded.ts_high, ts_low = excluded.ts_low, modified = excluded.modified
     WHERE (excluded.counter, excluded.session_use) > (counters.counter, counters.session_use)
       AND (counters.generation = 0 OR EXISTS (
             SELECT 1 FROM bound_aeads b
             WHERE b.public_id = ?1 AND b.generation = counters.generation AND b.fingerprint = ?7))";

fn accept_in(conn: &Connection, key: &CounterKey, p: &Presented) -> rusqlite::Result<Accept> {
    let changed = conn.prepare_cached(ACCEPT_SQL)?.execute(params![
        key.public_id,
        p.counters.counter(),
        p.counters.session_use(),
        p.ts_high,
        p.ts_low,
        i64::try_from(now()).unwrap_or(i64::MAX),
        &key.aead[..],
    ])?;
    if changed == 1 {
        Ok(Accept::Fresh)
    } else {
        classify_refusal(conn, key)
    }
}

/// Why the check-and-set changed nothing: the AEAD is not bound to the
/// key's generation, or the pair is not above the stored one. Read on the
/// same connection right after, with no other writer in between.
fn classify_refusal(conn: &Connection, key: &CounterKey) -> rusqlite::Result<Accept> {
    let Some(row) = read_row(conn, &key.public_id)? else {
        // The insert changed nothing and there is no row: cannot happen;
        // refuse all the same.
        return Ok(Accept::Replayed);
    };
    if row.generation > 0 && !row.aeads.contains(&key.aead) {
        Ok(Accept::Unbound {
            generation: row.generation,
        })
    } else {
        Ok(Accept::Replayed)
    }
}

/// Starts a key afresh: the next generation (1 for a key never seen), no
/// counters, bound to `aeads`.
fn reset_in(
    conn: &Connection,
    public_id: &str,
    aeads: &[[u8; FINGERPRINT_LEN]],
) -> rusqlite::Result<ResetOutcome> {
    let at = i64::try_from(now()).unwrap_or(i64::MAX);
    let generation: i64 = conn
        .prepare_cached(
            "INSERT INTO counters (public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at)
             VALUES (?1, 1, -1, -1, 0, 0, ?2, ?2)
             ON CONFLICT (public_id) DO UPDATE SET
               generation = counters.generation + 1, counter = -1, session_use = -1,
               ts_high = 0, ts_low = 0, modified = ?2, reset_at = ?2
             WHERE counters.generation < 4294967295
             RETURNING generation",
        )?
        .query_row(params![public_id, at], |r| r.get(0))?;
    let generation = u32::try_from(generation).map_err(|_| rusqlite::Error::InvalidQuery)?;
    bind(conn, public_id, generation, aeads)?;
    Ok(ResetOutcome {
        generation,
        aeads: u32::try_from(bound_aeads(conn, public_id, generation)?.len()).unwrap_or(u32::MAX),
    })
}

/// Whether a record can stand for a key's state: counters within 15 bits,
/// a bounded, bound-to-something-only-after-a-reset AEAD list.
fn record_is_sane(rec: &CounterRecord) -> bool {
    let counters_ok = rec.last.is_none_or(|(c, u)| Counters::new(c, u).is_some());
    let aeads_ok =
        rec.aeads.len() <= MAX_BOUND_AEADS && (rec.generation > 0 || rec.aeads.is_empty());
    counters_ok && aeads_ok
}

/// `a ∪ b`, sorted, at most [`MAX_BOUND_AEADS`] (the smallest kept: the
/// same whatever the order of merges).
fn union(a: &[[u8; FINGERPRINT_LEN]], b: &[[u8; FINGERPRINT_LEN]]) -> Vec<[u8; FINGERPRINT_LEN]> {
    let mut all: Vec<_> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all.truncate(MAX_BOUND_AEADS);
    all
}

/// Merges records into the rows: per public id, a higher generation
/// replaces the row (with its bound AEADs); within the same generation the
/// higher record by [`merge_rank`] wins and the bound AEADs are the union.
/// Nothing is ever lowered, and merging is order-free and idempotent (a
/// join of a semilattice). `raised` counts records that changed what a
/// login reads; a record that only wins a tie-break updates the row and
/// counts as unchanged.
fn merge_in(tx: &Connection, records: &[CounterRecord]) -> rusqlite::Result<MergeOutcome> {
    let mut out = MergeOutcome::default();
    for rec in records {
        // Counters above 15 bits cannot come from a YubiKey: such a record
        // is counted as unchanged and never stored.
        if !record_is_sane(rec) {
            out.unchanged += 1;
            continue;
        }
        let mut rec = rec.clone();
        rec.aeads = union(&rec.aeads, &[]);
        let Some(cur) = read_row(tx, &rec.public_id)? else {
            write_row(tx, &rec)?;
            out.raised += 1;
            continue;
        };
        if rec.generation > cur.generation {
            write_row(tx, &rec)?;
            out.raised += 1;
            continue;
        }
        if rec.generation < cur.generation {
            out.unchanged += 1;
            continue;
        }
        let winner = if merge_rank(&rec) > merge_rank(&cur) {
            &rec
        } else {
            &cur
        };
        let merged = Row {
            aeads: union(&cur.aeads, &rec.aeads),
            reset_at: cur.reset_at.max(rec.reset_at),
            ..winner.clone()
        };
        let login_reads = |r: &Row| (sql_pair(r.last), r.aeads.clone());
        if login_reads(&merged) != login_reads(&cur) {
            out.raised += 1;
        } else {
            out.unchanged += 1;
        }
        if merged != cur {
            write_row(tx, &merged)?;
        }
    }
    Ok(out)
}

fn public_ids(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT public_id FROM counters ORDER BY public_id")?
        .query_map([], |r| r.get(0))?
        .collect()
}

fn export_all(conn: &Connection) -> rusqlite::Result<Vec<CounterRecord>> {
    let mut st = conn.prepare(&format!(
        "SELECT {ROW_COLUMNS} FROM counters ORDER BY public_id"
    ))?;
    let mut records = st
        .query_map([], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for rec in &mut records {
        if rec.generation > 0 {
            rec.aeads = bound_aeads(conn, &rec.public_id, rec.generation)?;
        }
    }
    Ok(records)
}

/// A result with the reply it goes to.
enum Done {
    Accept(Reply<Accept>, Result<Accept, DbError>),
    Merge(Reply<MergeOutcome>, Result<MergeOutcome, DbError>),
    Export(
        Reply<Vec<CounterRecord>>,
        Result<Vec<CounterRecord>, DbError>,
    ),
    Reset(Reply<ResetOutcome>, Result<ResetOutcome, DbError>),
    FleetCounts(Reply<FleetCounts>, Result<FleetCounts, DbError>),
    Unit(Reply<()>, Result<(), DbError>),
    Ids(Reply<Vec<String>>, Result<Vec<String>, DbError>),
}

impl Done {
    fn call(self) {
        match self {
            Done::Accept(reply, r) => reply(r),
            Done::Merge(reply, r) => reply(r),
            Done::Export(reply, r) => reply(r),
            Done::Reset(reply, r) => reply(r),
            Done::FleetCounts(reply, r) => reply(r),
            Done::Unit(reply, r) => reply(r),
            Done::Ids(reply, r) => reply(r),
        }
    }

    /// Whether this is a committed change of the counter table.
    fn changed_counters(&self) -> bool {
        match self {
            Done::Accept(_, r) => matches!(r, Ok(Accept::Fresh | Accept::Offline | Accept::Lost)),
            Done::Merge(_, r) => r.as_ref().is_ok_and(|m| m.raised > 0),
            Done::Reset(_, r) => r.is_ok(),
            Done::Export(..) | Done::FleetCounts(..) | Done::Unit(..) | Done::Ids(..) => false,
        }
    }

    /// The same reply, with `e` instead of a result that was not committed.
    fn fail(self, e: &DbError) -> Self {
        match self {
            Done::Accept(reply, _) => Done::Accept(reply, Err(e.clone())),
            Done::Merge(reply, _) => Done::Merge(reply, Err(e.clone())),
            Done::Export(reply, r) => Done::Export(reply, r),
            Done::Ids(reply, r) => Done::Ids(reply, r),
            Done::FleetCounts(reply, r) => Done::FleetCounts(reply, r),
            Done::Unit(reply, _) => Done::Unit(reply, Err(e.clone())),
            Done::Reset(reply, _) => Done::Reset(reply, Err(e.clone())),
        }
    }
}

/// A transaction on cached `BEGIN`/`COMMIT` statements (rusqlite's own
/// parses its SQL each time); rolled back on drop unless committed.
struct Txn<'a> {
    conn: &'a Connection,
    open: bool,
}

impl<'a> Txn<'a> {
    fn begin(conn: &'a Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut st| st.execute([]));
        }
    }
}

/// One batch: one transaction, one commit; the results to hand out, and
/// the logins put back for the next batch (with a fleet: a second login
/// of a key in the same round).
fn run_batch(
    conn: &mut Connection,
    path: &Path,
    mut batch: Vec<Op>,
    fleet: Option<&Arc<Fleet>>,
) -> (Vec<Done>, Vec<Op>) {
    let err = |e: rusqlite::Error| DbError::new(path, e.into());
    // Without a fleet, a lone verify is one statement in its own
    // (implicit) transaction: committed, fsync included, when `execute`
    // returns.
    if fleet.is_none()
        && let [Op::Accept { .. }] = batch.as_slice()
        && let Some(Op::Accept {
            key,
            presented,
            reply,
        }) = batch.pop()
    {
        let r = accept_in(conn, &key, &presented).map_err(err);
        return (vec![Done::Accept(reply, r)], Vec::new());
    }
    // With a fleet, the store is asked first (one round trip for the
    // batch), then everything commits locally in one transaction.
    let (batch, later): (Vec<(Op, Option<fleet::Call>)>, Vec<Op>) = match fleet {
        Some(f) => fleet::round(conn, batch, f),
        None => (batch.into_iter().map(|op| (op, None)).collect(), Vec::new()),
    };
    let tx = match Txn::begin(conn) {
        Ok(tx) => tx,
        Err(e) => {
            return (
                failed(batch.into_iter().map(|(op, _)| op).collect(), &err(e)),
                later,
            );
        }
    };
    let mut done = Vec::with_capacity(batch.len());
    let mut ops = batch.into_iter();
    let mut tx_error = None;
    for (op, call) in ops.by_ref() {
        let d = match op {
            Op::Accept {
                key,
                presented,
                reply,
            } => Done::Accept(
                reply,
                accept_with(tx.conn, &key, &presented, call).map_err(err),
            ),
            // What a merge or a reset changed goes to the fleet's store too
            // (the reconciler pushes it; without a fleet the mark waits for
            // one).
            Op::Merge { records, reply } => Done::Merge(
                reply,
                merge_in(tx.conn, &records)
                    .and_then(|m| {
                        for r in &records {
                            fleet::changed(tx.conn, &r.public_id)?;
                        }
                        Ok(m)
                    })
                    .map_err(err),
            ),
            Op::Export { reply } => Done::Export(reply, export_all(tx.conn).map_err(err)),
            Op::Reset {
                public_id,
                aeads,
                reply,
            } => Done::Reset(
                reply,
                reset_in(tx.conn, &public_id, &aeads)
                    .and_then(|r| fleet::changed(tx.conn, &public_id).map(|()| r))
                    .map_err(err),
            ),
            Op::FleetUnsynced { limit, reply } => {
                Done::Export(reply, fleet::unsynced(tx.conn, limit).map_err(err))
            }
            Op::FleetSettle { records, reply } => {
                Done::Merge(reply, fleet::settle(tx.conn, &records).map_err(err))
            }
            Op::FleetCounts { reply } => {
                Done::FleetCounts(reply, fleet::counts(tx.conn).map_err(err))
            }
            Op::FleetMarkAll { reply } => Done::Unit(reply, fleet::mark_all(tx.conn).map_err(err)),
            Op::PublicIds { reply } => Done::Ids(reply, public_ids(tx.conn).map_err(err)),
        };
        let broke = match &d {
            Done::Accept(_, Err(e))
            | Done::Merge(_, Err(e))
            | Done::Reset(_, Err(e))
            | Done::Unit(_, Err(e)) => Some(e.clone()),
            _ => None,
        };
        done.push(d);
        if broke.is_some() {
            tx_error = broke;
            break;
        }
    }
    let committed = match tx_error {
        Some(e) => {
            drop(tx); // rolls back
            Err(e)
        }
        None => tx.commit().map_err(err),
    };
    let mut out: Vec<Done> = match committed {
        Ok(()) => done,
        Err(e) => done.into_iter().map(|d| d.fail(&e)).collect(),
    };
    out.extend(failed(
        ops.map(|(op, _)| op).collect(),
        &DbError::new(path, DbErrorKind::EarlierStatementFailed),
    ));
    (out, later)
}

/// A login's check-and-set after the fleet's store said `call` (`None`:
/// no fleet, or the store was not asked because the local row refuses it).
fn accept_with(
    conn: &Connection,
    key: &CounterKey,
    presented: &Presented,
    call: Option<fleet::Call>,
) -> rusqlite::Result<Accept> {
    match call {
        None => accept_in(conn, key, presented),
        Some(fleet::Call::Won) => {
            let r = accept_in(conn, key, presented)?;
            if r == Accept::Fresh {
                fleet::synced(conn, &key.public_id)?;
            }
            Ok(r)
        }
        Some(fleet::Call::Lost(held)) => {
            fleet::settle(conn, std::slice::from_ref(&held))?;
            Ok(Accept::Lost)
        }
        Some(fleet::Call::Offline) => match accept_in(conn, key, presented)? {
            Accept::Fresh => {
                fleet::accepted_offline(conn, &key.public_id)?;
                Ok(Accept::Offline)
            }
            other => Ok(other),
        },
        Some(fleet::Call::Down) => Ok(Accept::FleetDown),
    }
}

/// Every op answered with `e`.
fn failed(ops: Vec<Op>, e: &DbError) -> Vec<Done> {
    ops.into_iter()
        .map(|op| match op {
            Op::Accept { reply, .. } => Done::Accept(reply, Err(e.clone())),
            Op::Merge { reply, .. } => Done::Merge(reply, Err(e.clone())),
            Op::Export { reply } => Done::Export(reply, Err(e.clone())),
            Op::Reset { reply, .. } => Done::Reset(reply, Err(e.clone())),
            Op::FleetUnsynced { reply, .. } => Done::Export(reply, Err(e.clone())),
            Op::FleetSettle { reply, .. } => Done::Merge(reply, Err(e.clone())),
            Op::FleetCounts { reply } => Done::FleetCounts(reply, Err(e.clone())),
            Op::FleetMarkAll { reply } => Done::Unit(reply, Err(e.clone())),
            Op::PublicIds { reply } => Done::Ids(reply, Err(e.clone())),
        })
        .collect()
}

fn fail_all(ops: Vec<Op>, e: &DbError) {
    for d in failed(ops, e) {
        d.call();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ykhsm_core::counters::is_fresh;

    /// Only an acceptor with nothing else to do commits on its own thread.
    #[test]
    fn only_an_idle_acceptor_commits_on_its_own_thread() {
        assert!(Committer::Acceptor.commits_here());
        for busy in [Busy::Accepting, Busy::EventLoop, Busy::Device] {
            assert!(!Committer::CommitThread(busy).commits_here(), "{busy:?}");
        }
    }

    fn key() -> CounterKey {
        CounterKey {
            public_id: "ccccccdbjrgf".into(),
            aead: [7; 20],
        }
    }

    fn presented(c: Counters) -> Presented {
        Presented {
            counters: c,
            ts_high: 0,
            ts_low: 0,
        }
    }

    /// After a reset, only an OTP decoded with a bound AEAD raises the
    /// counters; any other AEAD is refused and nothing is written.
    #[test]
    fn after_a_reset_only_a_bound_aead_is_accepted() {
        let conn = Connection::open_in_memory().unwrap();
        schema::create_schema(&conn).unwrap();
        let p = |c, u| presented(Counters::new(c, u).unwrap());
        let old = key();
        assert_eq!(accept_in(&conn, &old, &p(50, 0)).unwrap(), Accept::Fresh);
        let new = CounterKey {
            aead: [8; 20],
            ..key()
        };
        let r = reset_in(&conn, &old.public_id, &[new.aead]).unwrap();
        assert_eq!(
            r,
            ResetOutcome {
                generation: 1,
                aeads: 1
            }
        );
        assert_eq!(
            accept_in(&conn, &old, &p(60, 0)).unwrap(),
            Accept::Unbound { generation: 1 }
        );
        assert_eq!(accept_in(&conn, &new, &p(1, 0)).unwrap(), Accept::Fresh);
        assert_eq!(accept_in(&conn, &new, &p(1, 0)).unwrap(), Accept::Replayed);
        let row = read_row(&conn, &old.public_id).unwrap().unwrap();
        assert_eq!((row.generation, row.last), (1, Some((1, 0))));
    }

    /// `last_commit` is the time of the last commit that changed
    /// counters: not a replay's, nor an export's.
    #[test]
    fn last_commit_is_set_by_a_fresh_pair_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("counters.sqlite")).unwrap();
        let accept = |c: u16| {
            let (tx, rx) = std::sync::mpsc::channel();
            let p = presented(Counters::new(c, 0).unwrap());
            db.accept(
                key(),
                p,
                Committer::Acceptor,
                Box::new(move |r| tx.send(r).unwrap()),
            );
            rx.recv().unwrap().unwrap()
        };
        assert_eq!(db.last_commit(), None);
        assert_eq!(accept(5), Accept::Fresh);
        let at = db.last_commit().unwrap();
        assert!(at.abs_diff(now()) <= 1, "{at}");
        db.inner.last_commit.store(1, Ordering::Relaxed);
        assert_eq!(accept(5), Accept::Replayed);
        assert_eq!(db.last_commit(), Some(1), "a replay commits nothing");
        db.close();
    }

    fn arb_record() -> impl Strategy<Value = CounterRecord> {
        (
            0u32..3,
            proptest::option::of((0u16..4, 0u8..3)),
            (0u64..3, 0u8..2, 0u16..2),
            proptest::collection::vec(0u8..4, 0..3),
        )
            .prop_map(|(generation, last, (modified, ts_high, ts_low), fps)| {
                CounterRecord {
                    public_id: "ccccccdbjrgf".into(),
                    generation,
                    last,
                    ts_high,
                    ts_low,
                    modified,
                    reset_at: u64::from(generation) * 10,
                    aeads: if generation == 0 {
                        Vec::new()
                    } else {
                        fps.into_iter().map(|b| [b; 20]).collect()
                    },
                }
            })
    }

    fn merged(records: &[CounterRecord]) -> Vec<CounterRecord> {
        let conn = Connection::open_in_memory().unwrap();
        schema::create_schema(&conn).unwrap();
        for r in records {
            merge_in(&conn, std::slice::from_ref(r)).unwrap();
        }
        export_all(&conn).unwrap()
    }

    proptest! {
        /// Merging is a join: the same result in any order, merging twice
        /// changes nothing, and the result is at or above every record by
        /// (generation, counters) — a reset travels, nothing is lowered.
        #[test]
        fn merge_is_order_free_idempotent_and_never_lowers(
            records in proptest::collection::vec(arb_record(), 1..6),
            seed in any::<u64>(),
        ) {
            let forward = merged(&records);
            let mut shuffled = records.clone();
            // A deterministic shuffle from the seed.
            let n = shuffled.len();
            for i in 0..n {
                let j = usize::try_from((seed >> (i % 60)) % (n as u64)).unwrap();
                shuffled.swap(i, j);
            }
            prop_assert_eq!(&merged(&shuffled), &forward);
            let twice: Vec<_> = records.iter().chain(&records).cloned().collect();
            prop_assert_eq!(&merged(&twice), &forward);
            let top = &forward[0];
            for r in &records {
                let key = |x: &CounterRecord| (x.generation, sql_pair(x.last));
                prop_assert!(key(top) >= key(r), "{top:?} below {r:?}");
                if r.generation == top.generation {
                    for fp in &r.aeads {
                        prop_assert!(top.aeads.contains(fp));
                    }
                }
            }
        }

        /// The freshness rule lives in core (`is_fresh`); the SQL statement
        /// states it again as a row-value comparison. They must agree on
        /// every pair, including the first sight of a key.
        #[test]
        fn sql_rule_is_is_fresh(a in (0u16..=0x7fff, any::<u8>()), b in (0u16..=0x7fff, any::<u8>())) {
            let conn = Connection::open_in_memory().unwrap();
            schema::create_schema(&conn).unwrap();
            let a = Counters::new(a.0, a.1).unwrap();
            let b = Counters::new(b.0, b.1).unwrap();
            prop_assert_eq!(accept_in(&conn, &key(), &presented(a)).unwrap(), Accept::Fresh);
            let expected = if is_fresh(Some(a), b) { Accept::Fresh } else { Accept::Replayed };
            prop_assert_eq!(accept_in(&conn, &key(), &presented(b)).unwrap(), expected);
            // Whatever happened, the stored pair is the higher of the two.
            let stored: (u16, u8) = conn
                .query_row("SELECT counter, session_use FROM counters", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            let high = a.max(b);
            prop_assert_eq!(stored, (high.counter(), high.session_use()));
        }
    }
}
