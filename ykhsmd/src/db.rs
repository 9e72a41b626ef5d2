//! The counter database: per key (public id and AEAD fingerprint) the last
//! accepted (counter, session use), in SQLite with WAL and
//! `synchronous=FULL`, so a commit is on disk before it returns.
//!
//! One thread owns the connection. Verifies send their check-and-set to it;
//! it takes everything waiting at that moment, runs all of it in one
//! transaction — each check sees the writes before it, so the same OTP
//! twice in one batch is accepted once — commits with one fsync (group
//! commit), and only then answers each request. No answer leaves before the
//! commit it depends on; if the commit fails, every request in the batch gets
//! an error and no `OK`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;
use tokio::sync::oneshot;
use ykhsm_core::counters::{Counters, is_fresh};
use ykhsm_proto::CounterRecord;

/// The most requests one transaction takes.
const MAX_BATCH: usize = 512;
/// How long a write waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1000);
/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// A database failure. The message names the file.
#[derive(Debug, Error)]
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
    Fresh {
        /// The pair stored before (None: never seen).
        previous: Option<Counters>,
    },
    /// Not above the stored pair: nothing written.
    Replayed {
        /// The stored pair.
        stored: Counters,
    },
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

/// A handle to the writer thread. Dropping every handle stops the thread
/// after it has answered what it holds.
#[derive(Debug, Clone)]
pub struct Db {
    tx: mpsc::Sender<Op>,
    path: PathBuf,
}

/// Waits for the writer thread to finish (after every [`Db`] is dropped):
/// the last batch committed, the WAL checkpointed, the file closed.
#[derive(Debug)]
pub struct DbCloser(thread::JoinHandle<()>);

impl DbCloser {
    /// Blocks until the database is closed.
    pub fn wait(self) {
        let _ = self.0.join();
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
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
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
    )?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    } else if version != SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidQuery);
    }
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) the database and starts its writer thread.
    pub fn open(path: &Path) -> Result<(Self, DbCloser), DbError> {
        let conn = open(path).map_err(|e| DbError {
            path: path.to_path_buf(),
            message: match e {
                rusqlite::Error::InvalidQuery => {
                    "not a ykhsm counter database of this version, or WAL mode refused".into()
                }
                other => other.to_string(),
            },
        })?;
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        let handle = thread::Builder::new()
            .name("ykhsmd-db".into())
            .spawn(move || writer(conn, &p, &rx))
            .map_err(|e| DbError {
                path: path.to_path_buf(),
                message: format!("cannot start the database thread: {e}"),
            })?;
        Ok((
            Self {
                tx,
                path: path.to_path_buf(),
            },
            DbCloser(handle),
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn gone(&self) -> DbError {
        DbError {
            path: self.path.clone(),
            message: "the database thread has stopped".into(),
        }
    }

    /// Accepts `presented` for `key` iff it is above the stored pair, and
    /// returns only after the new pair is committed (fsynced).
    pub async fn accept(&self, key: CounterKey, presented: Presented) -> Result<Accept, DbError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Accept {
                key,
                presented,
                reply,
            })
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Merges records: per key the higher record wins, nothing is lowered.
    pub async fn merge(&self, records: Vec<CounterRecord>) -> Result<MergeOutcome, DbError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Merge { records, reply })
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Every record, sorted by public id then fingerprint.
    pub async fn export(&self) -> Result<Vec<CounterRecord>, DbError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Export { reply })
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }
}

/// The order that decides merges: (counter, session use) first, ties broken
/// by the other fields, so the maximum is the same in any order.
fn merge_rank(r: &CounterRecord) -> (u16, u8, u64, u8, u16) {
    (r.counter, r.session_use, r.modified, r.ts_high, r.ts_low)
}

type Row = CounterRecord;

fn read_row(
    tx: &rusqlite::Transaction<'_>,
    public_id: &str,
    fp: &[u8; 20],
) -> rusqlite::Result<Option<Row>> {
    tx.query_row(
        "SELECT counter, session_use, ts_high, ts_low, modified FROM counters
         WHERE public_id = ?1 AND fingerprint = ?2",
        params![public_id, &fp[..]],
        |r| {
            Ok(Row {
                public_id: public_id.to_owned(),
                fingerprint: *fp,
                counter: r.get(0)?,
                session_use: r.get(1)?,
                ts_high: r.get(2)?,
                ts_low: r.get(3)?,
                modified: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
            })
        },
    )
    .optional()
}

fn write_row(tx: &rusqlite::Transaction<'_>, r: &Row) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO counters (public_id, fingerprint, counter, session_use, ts_high, ts_low, modified)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (public_id, fingerprint) DO UPDATE SET
           counter = excluded.counter, session_use = excluded.session_use,
           ts_high = excluded.ts_high, ts_low = excluded.ts_low, modified = excluded.modified",
        params![
            r.public_id,
            &r.fingerprint[..],
            r.counter,
            r.session_use,
            r.ts_high,
            r.ts_low,
            i64::try_from(r.modified).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(())
}

fn accept_in(
    tx: &rusqlite::Transaction<'_>,
    key: &CounterKey,
    p: &Presented,
) -> rusqlite::Result<Accept> {
    let row = read_row(tx, &key.public_id, &key.fingerprint)?;
    let stored = row
        .as_ref()
        .and_then(|r| Counters::new(r.counter, r.session_use));
    if !is_fresh(stored, p.counters) {
        // A stored pair exists here (None is below everything).
        return Ok(Accept::Replayed {
            stored: stored.unwrap_or(p.counters),
        });
    }
    write_row(
        tx,
        &Row {
            public_id: key.public_id.clone(),
            fingerprint: key.fingerprint,
            counter: p.counters.counter(),
            session_use: p.counters.session_use(),
            ts_high: p.ts_high,
            ts_low: p.ts_low,
            modified: now(),
        },
    )?;
    Ok(Accept::Fresh { previous: stored })
}

fn merge_in(
    tx: &rusqlite::Transaction<'_>,
    records: &[CounterRecord],
) -> rusqlite::Result<MergeOutcome> {
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

/// The writer loop: block for one op, take whatever else is waiting, run
/// the batch in one transaction, commit, answer.
fn writer(mut conn: Connection, path: &Path, rx: &mpsc::Receiver<Op>) {
    let err = |e: &dyn std::fmt::Display| DbError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut pending = Vec::with_capacity(batch.len());
        let mut failed: Vec<Op> = Vec::new();
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                fail_all(batch, &err(&e));
                continue;
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
                } => match accept_in(&tx, &key, &presented) {
                    Ok(a) => pending.push(Pending::Accept(reply, a)),
                    Err(e) => {
                        tx_error = Some(err(&e));
                        let _ = reply.send(Err(err(&e)));
                    }
                },
                Op::Merge { records, reply } => match merge_in(&tx, &records) {
                    Ok(m) => pending.push(Pending::Merge(reply, m)),
                    Err(e) => {
                        tx_error = Some(err(&e));
                        let _ = reply.send(Err(err(&e)));
                    }
                },
                Op::Export { reply } => {
                    let _ = reply.send(export_all(&tx).map_err(|e| err(&e)));
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
                            let _ = reply.send(Err(e.clone_msg()));
                        }
                        Pending::Merge(reply, _) => {
                            let _ = reply.send(Err(e.clone_msg()));
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
    // Every handle is gone: close cleanly (checkpoint the WAL).
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    let _ = conn.close();
}

impl DbError {
    fn clone_msg(&self) -> Self {
        Self {
            path: self.path.clone(),
            message: self.message.clone(),
        }
    }
}

fn fail_all(ops: Vec<Op>, e: &DbError) {
    for op in ops {
        match op {
            Op::Accept { reply, .. } => {
                let _ = reply.send(Err(e.clone_msg()));
            }
            Op::Merge { reply, .. } => {
                let _ = reply.send(Err(e.clone_msg()));
            }
            Op::Export { reply } => {
                let _ = reply.send(Err(e.clone_msg()));
            }
        }
    }
}
