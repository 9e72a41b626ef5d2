//! The counter database: per key (public id and AEAD fingerprint) the last
//! accepted (counter, session use), in SQLite with WAL and
//! `synchronous=FULL`, so a commit is on disk before it returns.
//!
//! The daemon serves every connection on one thread. Verifies queue their
//! check-and-set here; a committer task on the same thread takes everything
//! queued by the requests that were ready before it, and runs all
//! of it in one transaction — each check sees the writes before it, so the
//! same OTP twice in one batch is accepted once — with one fsync (group
//! commit), and only then answers each request. No answer leaves before the
//! commit it depends on; if the commit fails, every request in the batch
//! gets an error and no `OK`.
//!
//! A lone request is committed right there on the event-loop thread: no
//! hand-off between threads on its way to the disk and back, which is most
//! of a login's latency beyond the fsync itself. A batch of several goes to
//! the commit thread, so the event loop keeps reading and checking the next
//! requests during the fsync; they form the next batch. Only one batch is
//! ever in flight, so batches commit in order.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;
use tokio::sync::{Notify, oneshot};
use ykhsm_core::counters::Counters;
use ykhsm_proto::CounterRecord;

/// How long a write waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1000);
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

enum Op {
    Accept {
        key: CounterKey,
        presented: Presented,
        reply: oneshot::Sender<Result<Accept, DbError>>,
    },
    Merge {
        records: Vec<CounterRecord>,
        reply: oneshot::Sender<Result<MergeOutcome, DbError>>,
    },
    Export {
        reply: oneshot::Sender<Result<Vec<CounterRecord>, DbError>>,
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
    queue: Mutex<Vec<Op>>,
    /// Something was queued, or the commit thread finished a batch.
    wake: Notify,
    /// A batch is on the commit thread.
    busy: AtomicBool,
    /// To the commit thread; `None` once closed.
    thread: Mutex<Option<CommitThread>>,
}

/// The commit thread: where batches go, and its handle to join.
type CommitThread = (mpsc::Sender<Vec<Op>>, thread::JoinHandle<()>);

/// Batches of at most this many requests are committed on the event-loop
/// thread itself.
const INLINE_BATCH: usize = 1;

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
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
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
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            busy: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<Vec<Op>>();
        let for_thread = Arc::clone(&inner);
        let handle = thread::Builder::new()
            .name("ykhsmd-commit".into())
            .spawn(move || {
                while let Ok(batch) = rx.recv() {
                    commit_batch(&for_thread, batch);
                    for_thread.busy.store(false, Ordering::Release);
                    for_thread.wake.notify_one();
                }
            })
            .map_err(|e| DbError {
                path: path.to_path_buf(),
                message: format!("cannot start the commit thread: {e}"),
            })?;
        *inner.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some((tx, handle));
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

    fn enqueue(&self, op: Op) {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(op);
        self.inner.wake.notify_one();
    }

    /// The committer: waits for queued work, lets every other ready request
    /// queue its own, then commits the lot — here if it is a lone request,
    /// on the commit thread otherwise. Runs until the task is dropped.
    pub async fn run_committer(&self) {
        loop {
            // Tasks that were already ready run before this one is
            // polled, so whatever they queue joins this batch.
            self.inner.wake.notified().await;
            if self.inner.busy.load(Ordering::Acquire) {
                continue; // the commit thread wakes us when it is done
            }
            let batch = self.take_queue();
            if batch.is_empty() {
                continue;
            }
            if batch.len() <= INLINE_BATCH {
                commit_batch(&self.inner, batch);
                continue;
            }
            self.inner.busy.store(true, Ordering::Release);
            let sent = {
                let thread = self.inner.thread.lock().unwrap_or_else(|p| p.into_inner());
                match thread.as_ref() {
                    Some((tx, _)) => tx.send(batch).map_err(|e| e.0),
                    None => Err(batch),
                }
            };
            if let Err(batch) = sent {
                self.inner.busy.store(false, Ordering::Release);
                commit_batch(&self.inner, batch);
            }
        }
    }

    fn take_queue(&self) -> Vec<Op> {
        std::mem::take(&mut *self.inner.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Commits what is still queued, checkpoints the WAL and closes the
    /// file. Later requests get an error.
    pub fn close(&self) {
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((tx, handle)) = thread {
            drop(tx);
            let _ = handle.join();
        }
        commit_batch(&self.inner, self.take_queue());
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

    /// Accepts `presented` for `key` iff it is above the stored pair, and
    /// returns only after the new pair is committed (fsynced).
    pub async fn accept(&self, key: CounterKey, presented: Presented) -> Result<Accept, DbError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Op::Accept {
            key,
            presented,
            reply,
        });
        rx.await
            .map_err(|_| self.error("the committer has stopped"))?
    }

    /// Merges records: per key the higher record wins, nothing is lowered.
    pub async fn merge(&self, records: Vec<CounterRecord>) -> Result<MergeOutcome, DbError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Op::Merge { records, reply });
        rx.await
            .map_err(|_| self.error("the committer has stopped"))?
    }

    /// Every record, sorted by public id then fingerprint.
    pub async fn export(&self) -> Result<Vec<CounterRecord>, DbError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Op::Export { reply });
        rx.await
            .map_err(|_| self.error("the committer has stopped"))?
    }
}

/// Runs one batch on the connection, or fails it if the database is closed.
fn commit_batch(inner: &Inner, batch: Vec<Op>) {
    if batch.is_empty() {
        return;
    }
    let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
    match conn.as_mut() {
        Some(c) => run_batch(c, &inner.path, batch),
        None => fail_all(
            batch,
            &DbError {
                path: inner.path.clone(),
                message: "the database is closed".into(),
            },
        ),
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

enum Pending {
    Accept(oneshot::Sender<Result<Accept, DbError>>, Accept),
    Merge(oneshot::Sender<Result<MergeOutcome, DbError>>, MergeOutcome),
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

/// One batch: one transaction, one commit, then the answers.
fn run_batch(conn: &mut Connection, path: &Path, mut batch: Vec<Op>) {
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
        let _ = reply.send(accept_in(conn, &key, &presented).map_err(|e| err(&e)));
        return;
    }
    {
        let mut pending = Vec::with_capacity(batch.len());
        let mut failed: Vec<Op> = Vec::new();
        let tx = match Txn::begin(conn) {
            Ok(tx) => tx,
            Err(e) => {
                fail_all(batch, &err(&e));
                return;
            }
        };
        let mut tx_error = None;
        for op in batch {
            if tx_error.is_some() {
                failed.push(op);
                continue;
            }
            match op {
                Op::Accept {
                    key,
                    presented,
                    reply,
                } => match accept_in(tx.conn, &key, &presented) {
                    Ok(a) => pending.push(Pending::Accept(reply, a)),
                    Err(e) => {
                        tx_error = Some(err(&e));
                        let _ = reply.send(Err(err(&e)));
                    }
                },
                Op::Merge { records, reply } => match merge_in(tx.conn, &records) {
                    Ok(m) => pending.push(Pending::Merge(reply, m)),
                    Err(e) => {
                        tx_error = Some(err(&e));
                        let _ = reply.send(Err(err(&e)));
                    }
                },
                Op::Export { reply } => {
                    let _ = reply.send(export_all(tx.conn).map_err(|e| err(&e)));
                }
            }
        }
        let committed = match tx_error {
            Some(e) => {
                drop(tx); // rolls back
                Err(e)
            }
            None => tx.commit().map_err(|e| err(&e)),
        };
        match committed {
            Ok(()) => {
                for p in pending {
                    match p {
                        Pending::Accept(reply, a) => {
                            let _ = reply.send(Ok(a));
                        }
                        Pending::Merge(reply, m) => {
                            let _ = reply.send(Ok(m));
                        }
                    }
                }
            }
            Err(e) => {
                for p in pending {
                    match p {
                        Pending::Accept(reply, _) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Pending::Merge(reply, _) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
        fail_all(
            failed,
            &DbError {
                path: path.to_path_buf(),
                message: "an earlier statement in the same transaction failed".into(),
            },
        );
    }
}

fn fail_all(ops: Vec<Op>, e: &DbError) {
    for op in ops {
        match op {
            Op::Accept { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Op::Merge { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Op::Export { reply } => {
                let _ = reply.send(Err(e.clone()));
            }
        }
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
