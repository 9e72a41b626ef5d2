//! The counter database: per key (public id and AEAD fingerprint) the last
//! accepted (counter, session use), in SQLite with WAL and
//! `synchronous=FULL`, so a commit is on disk before it returns.
//!
//! Verifies queue their check-and-set here. Whoever commits takes
//! everything queued at that moment and runs it in one transaction — each
//! check sees the writes before it, so the same OTP twice in one batch is
//! accepted once — with one fsync (group commit), and only then hands each
//! request its result. No answer leaves before the commit it depends on; if
//! the commit fails, every request in the batch gets an error and no `OK`.
//!
//! Who commits: a login arriving when nothing is being committed commits
//! its own check-and-set on its own thread ([`Db::accept_here`]): no
//! hand-off between threads on its way to the disk and back, which is most
//! of a login's latency beyond the fsync itself. Whatever queues while a
//! commit is running is committed next, as one batch, by the commit thread,
//! so the threads that read requests keep reading during the fsync. Only one
//! commit runs at a time, so batches commit in order.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;
use tokio::sync::oneshot;
use ykhsm_core::counters::Counters;
use ykhsm_proto::CounterRecord;

/// How long a write waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1000);
/// The page size of a new database file.
const PAGE_SIZE: i64 = 1024;
/// WAL pages between automatic checkpoints.
const WAL_CHECKPOINT_PAGES: i64 = 4096;
/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// A database failure. The message names the file.
#[derive(Debug, Clone, Error)]
#[error("counter database {}: {message}", path.display())]
pub struct DbError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

/// Which key a counter pair belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// The public id.
    pub public_id: String,
    /// SHA-1 of the AEAD (key handle ‖ nonce ‖ AEAD).
    pub fingerprint: [u8; 20],
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
    /// Fresh: stored and committed.
    Fresh,
    /// Not above the stored pair: nothing written.
    Replayed,
}

/// The outcome of a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeOutcome {
    /// Records that raised or created a row.
    pub raised: u32,
    /// Records at or below the row.
    pub unchanged: u32,
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
}

/// The counter database: a queue of check-and-sets and the connection
/// that commits them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    queue: Mutex<Queue>,
    /// Work for the commit thread, or the database is closing.
    work: Condvar,
    /// The commit thread, joined on close.
    thread: Mutex<Option<thread::JoinHandle<()>>>,
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
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The daemon is the only owner of the counters: nothing may read or
    // write them behind its back (ykadmin asks the daemon), and holding the
    // lock saves a dozen lock calls per commit.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    // A new file gets 1 KiB pages (an existing one keeps its own): a row
    // is about 70 bytes, and each page a commit touches is written whole to
    // the WAL before the fsync — a batch of logins on a dozen pages writes
    // 12 KiB instead of 48. Measured: a batch commit's p50 from about
    // 400 µs down to about 170 µs (docs/performance.md).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoint at the same WAL size as with SQLite's default pages (4 MiB).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    create_schema(&conn)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    } else if version != SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidQuery);
    }
    Ok(conn)
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS counters (
            public_id   TEXT    NOT NULL,
            fingerprint BLOB    NOT NULL,
            counter     INTEGER NOT NULL,
            session_use INTEGER NOT NULL,
            ts_high     INTEGER NOT NULL,
            ts_low      INTEGER NOT NULL,
            modified    INTEGER NOT NULL,
            PRIMARY KEY (public_id, fingerprint)
        ) WITHOUT ROWID;",
    )
}

impl Db {
    /// Opens (creating if needed) the database. Nothing is committed until
    /// [`Db::run_committer`] runs on the daemon's runtime.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = open(path).map_err(|e| DbError {
            path: path.to_path_buf(),
            message: match e {
                rusqlite::Error::InvalidQuery => {
                    "not a ykhsm counter database of this version, or WAL mode refused".into()
                }
                other => other.to_string(),
            },
        })?;
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            conn: Mutex::new(Some(conn)),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            thread: Mutex::new(None),
        });
        let for_thread = Arc::clone(&inner);
        let handle = thread::Builder::new()
            .name("ykhsmd-commit".into())
            .spawn(move || commit_thread(&for_thread))
            .map_err(|e| DbError {
                path: path.to_path_buf(),
                message: format!("cannot start the commit thread: {e}"),
            })?;
        *inner.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn error(&self, message: impl Into<String>) -> DbError {
        DbError {
            path: self.inner.path.clone(),
            message: message.into(),
        }
    }

    /// Queues `op`. With `here`, and no commit running, commits the queue
    /// on this thread before returning; otherwise the commit thread will.
    fn submit(&self, op: Op, here: bool) {
        let mut q = self.inner.queue();
        if q.closed {
            drop(q);
            return fail_all(vec![op], &self.error("the database is closed"));
        }
        q.ops.push(op);
        if q.committing {
            return; // taken by the running commit's successor
        }
        if !here {
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

    /// Accepts `presented` for `key` iff it is above the stored pair;
    /// `reply` gets the result only after the new pair is committed
    /// (fsynced). If nothing is being committed, the commit runs on this
    /// thread before this returns; otherwise it joins the next batch and
    /// this returns at once.
    pub fn accept_here(
        &self,
        key: CounterKey,
        presented: Presented,
        here: bool,
        reply: Reply<Accept>,
    ) {
        self.submit(
            Op::Accept {
                key,
                presented,
                reply,
            },
            here,
        );
    }

    /// [`Db::accept_here`] for async callers: always committed by the commit
    /// thread, so the event loop never waits on the disk.
    pub async fn accept(&self, key: CounterKey, presented: Presented) -> Result<Accept, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Op::Accept {
                key,
                presented,
                reply: to_oneshot(tx),
            },
            false,
        );
        rx.await
            .map_err(|_| self.error("the committer has stopped"))?
    }

    /// Merges records: per key the higher record wins, nothing is lowered.
    pub async fn merge(&self, records: Vec<CounterRecord>) -> Result<MergeOutcome, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Op::Merge {
                records,
                reply: to_oneshot(tx),
            },
            false,
        );
        rx.await
            .map_err(|_| self.error("the committer has stopped"))?
    }

    /// Every record, sorted by public id then fingerprint.
    pub async fn export(&self) -> Result<Vec<CounterRecord>, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Op::Export {
                reply: to_oneshot(tx),
            },
            false,
        );
        rx.await
            .map_err(|_| self.error("the committer has stopped"))?
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
        Some(c) => run_batch(c, &inner.path, batch),
        None => failed(
            batch,
            &DbError {
                path: inner.path.clone(),
                message: "the database is closed".into(),
            },
        ),
    }
}

/// Hands out the results of a commit.
fn answer(done: Vec<Done>) {
    for d in done {
        d.call();
    }
}

/// The order that decides merges: (counter, session use) first, ties broken
/// by the other fields, so the maximum is the same in any order.
fn merge_rank(r: &CounterRecord) -> (u16, u8, u64, u8, u16) {
    (r.counter, r.session_use, r.modified, r.ts_high, r.ts_low)
}

type Row = CounterRecord;

fn read_row(tx: &Connection, public_id: &str, fp: &[u8; 20]) -> rusqlite::Result<Option<Row>> {
    // Cached: the statement is parsed once per connection, not per verify.
    tx.prepare_cached(
        "SELECT counter, session_use, ts_high, ts_low, modified FROM counters
         WHERE public_id = ?1 AND fingerprint = ?2",
    )?
    .query_row(params![public_id, &fp[..]], |r| {
        Ok(Row {
            public_id: public_id.to_owned(),
            fingerprint: *fp,
            counter: r.get(0)?,
            session_use: r.get(1)?,
            ts_high: r.get(2)?,
            ts_low: r.get(3)?,
            modified: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        })
    })
    .optional()
}

fn write_row(tx: &Connection, r: &Row) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO counters (public_id, fingerprint, counter, session_use, ts_high, ts_low, modified)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (public_id, fingerprint) DO UPDATE SET
           counter = excluded.counter, session_use = excluded.session_use,
           ts_high = excluded.ts_high, ts_low = excluded.ts_low, modified = excluded.modified",
    )?
    .execute(params![
            r.public_id,
            &r.fingerprint[..],
            r.counter,
            r.session_use,
            r.ts_high,
            r.ts_low,
            i64::try_from(r.modified).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

/// The check-and-set of one verify, as one statement: insert the pair, or
/// raise the stored one — only if the new pair is strictly above it,
/// (counter, session use) compared as a row value, which is exactly
/// `ykhsm_core::counters::is_fresh` (`sql_rule_is_is_fresh` checks this on
/// random pairs). One row changed: fresh; none: a replay.
const ACCEPT_SQL: &str =
    "INSERT INTO counters (public_id, fingerprint, counter, session_use, ts_high, ts_low, modified)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (public_id, fingerprint) DO UPDATE SET
       counter = excluded.counter, session_use = excluded.session_use,
       ts_high = excluded.ts_high, ts_low = excluded.ts_low, modified = excluded.modified
     WHERE (excluded.counter, excluded.session_use) > (counters.counter, counters.session_use)";

fn accept_in(conn: &Connection, key: &CounterKey, p: &Presented) -> rusqlite::Result<Accept> {
    let changed = conn.prepare_cached(ACCEPT_SQL)?.execute(params![
        key.public_id,
        &key.fingerprint[..],
        p.counters.counter(),
        p.counters.session_use(),
        p.ts_high,
        p.ts_low,
        i64::try_from(now()).unwrap_or(i64::MAX)
    ])?;
    Ok(if changed == 1 {
        Accept::Fresh
    } else {
        Accept::Replayed
    })
}

fn merge_in(tx: &Connection, records: &[CounterRecord]) -> rusqlite::Result<MergeOutcome> {
    let mut out = MergeOutcome::default();
    for rec in records {
        // A counter above 15 bits cannot come from a YubiKey: such a
        // record is counted as unchanged and never stored.
        if Counters::new(rec.counter, rec.session_use).is_none() {
            out.unchanged += 1;
            continue;
        }
        let current = read_row(tx, &rec.public_id, &rec.fingerprint)?;
        if current
            .as_ref()
            .is_none_or(|c| merge_rank(rec) > merge_rank(c))
        {
            write_row(tx, rec)?;
            out.raised += 1;
        } else {
            out.unchanged += 1;
        }
    }
    Ok(out)
}

fn export_all(conn: &Connection) -> rusqlite::Result<Vec<CounterRecord>> {
    let mut st = conn.prepare(
        "SELECT public_id, fingerprint, counter, session_use, ts_high, ts_low, modified
         FROM counters ORDER BY public_id, fingerprint",
    )?;
    let rows = st.query_map([], |r| {
        let fp: Vec<u8> = r.get(1)?;
        Ok(CounterRecord {
            public_id: r.get(0)?,
            fingerprint: fp.try_into().unwrap_or([0; 20]),
            counter: r.get(2)?,
            session_use: r.get(3)?,
            ts_high: r.get(4)?,
            ts_low: r.get(5)?,
            modified: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
        })
    })?;
    rows.collect()
}

/// A result with the reply it goes to.
enum Done {
    Accept(Reply<Accept>, Result<Accept, DbError>),
    Merge(Reply<MergeOutcome>, Result<MergeOutcome, DbError>),
    Export(
        Reply<Vec<CounterRecord>>,
        Result<Vec<CounterRecord>, DbError>,
    ),
}

impl Done {
    fn call(self) {
        match self {
            Done::Accept(reply, r) => reply(r),
            Done::Merge(reply, r) => reply(r),
            Done::Export(reply, r) => reply(r),
        }
    }

    /// The same reply, with `e` instead of a result that was not committed.
    fn fail(self, e: &DbError) -> Self {
        match self {
            Done::Accept(reply, _) => Done::Accept(reply, Err(e.clone())),
            Done::Merge(reply, _) => Done::Merge(reply, Err(e.clone())),
            Done::Export(reply, r) => Done::Export(reply, r),
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

/// One batch: one transaction, one commit; the results to hand out.
fn run_batch(conn: &mut Connection, path: &Path, mut batch: Vec<Op>) -> Vec<Done> {
    let err = |e: &dyn std::fmt::Display| DbError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    // A lone verify is one statement in its own (implicit) transaction:
    // committed, fsync included, when `execute` returns.
    if let [Op::Accept { .. }] = batch.as_slice()
        && let Some(Op::Accept {
            key,
            presented,
            reply,
        }) = batch.pop()
    {
        let r = accept_in(conn, &key, &presented).map_err(|e| err(&e));
        return vec![Done::Accept(reply, r)];
    }
    let tx = match Txn::begin(conn) {
        Ok(tx) => tx,
        Err(e) => return failed(batch, &err(&e)),
    };
    let mut done = Vec::with_capacity(batch.len());
    let mut ops = batch.into_iter();
    let mut tx_error = None;
    for op in ops.by_ref() {
        let d = match op {
            Op::Accept {
                key,
                presented,
                reply,
            } => Done::Accept(
                reply,
                accept_in(tx.conn, &key, &presented).map_err(|e| err(&e)),
            ),
            Op::Merge { records, reply } => {
                Done::Merge(reply, merge_in(tx.conn, &records).map_err(|e| err(&e)))
            }
            Op::Export { reply } => Done::Export(reply, export_all(tx.conn).map_err(|e| err(&e))),
        };
        let broke = match &d {
            Done::Accept(_, Err(e)) | Done::Merge(_, Err(e)) => Some(e.clone()),
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
        None => tx.commit().map_err(|e| err(&e)),
    };
    let mut out: Vec<Done> = match committed {
        Ok(()) => done,
        Err(e) => done.into_iter().map(|d| d.fail(&e)).collect(),
    };
    out.extend(failed(
        ops.collect(),
        &DbError {
            path: path.to_path_buf(),
            message: "an earlier statement in the same transaction failed".into(),
        },
    ));
    out
}

/// Every op answered with `e`.
fn failed(ops: Vec<Op>, e: &DbError) -> Vec<Done> {
    ops.into_iter()
        .map(|op| match op {
            Op::Accept { reply, .. } => Done::Accept(reply, Err(e.clone())),
            Op::Merge { reply, .. } => Done::Merge(reply, Err(e.clone())),
            Op::Export { reply } => Done::Export(reply, Err(e.clone())),
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

    fn key() -> CounterKey {
        CounterKey {
            public_id: "ccccccdbjrgf".into(),
            fingerprint: [7; 20],
        }
    }

    fn presented(c: Counters) -> Presented {
        Presented {
            counters: c,
            ts_high: 0,
            ts_low: 0,
        }
    }

    proptest! {
        /// The freshness rule lives in core (`is_fresh`); the SQL statement
        /// states it again as a row-value comparison. They must agree on
        /// every pair, including the first sight of a key.
        #[test]
        fn sql_rule_is_is_fresh(a in (0u16..=0x7fff, any::<u8>()), b in (0u16..=0x7fff, any::<u8>())) {
            let conn = Connection::open_in_memory().unwrap();
            create_schema(&conn).unwrap();
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
