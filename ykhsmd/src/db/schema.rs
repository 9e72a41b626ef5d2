//! Opening the counter database: its files' modes, its schema version, and
//! the migration of an older schema (after a copy of the file is kept).
//!
//! | version | what a row is keyed by |
//! |---|---|
//! | 1 | (public id, fingerprint of the AEAD) — one secret imported under two key handles had two rows, so an OTP accepted through one AEAD could be accepted again through the other |
//! | 2 | public id, with a generation that only an explicit reset raises, and the AEADs a reset bound it to |
//!
//! A newer daemon migrates an older database forward; an older daemon
//! refuses a newer one with a message that says what to do.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use rusqlite::{Connection, params};

use super::{
    BUSY_TIMEOUT, DbError, DbErrorKind, PAGE_SIZE, SCHEMA_VERSION, WAL_CHECKPOINT_PAGES, now,
};

/// What opening the database did besides opening it, for the log.
#[derive(Debug, Default, Clone)]
pub struct Opened {
    /// The schema was migrated.
    pub migration: Option<Migration>,
    /// Files of the database whose mode let group or others in; now 0600.
    pub modes_fixed: Vec<(PathBuf, u32)>,
}

/// A migration from an older schema.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The version the file had.
    pub from: i64,
    /// The copy of the file as it was.
    pub backup: PathBuf,
    /// Rows before.
    pub rows: usize,
    /// Keys (public ids) after.
    pub keys: usize,
    /// Public ids that had rows for several AEADs (several key handles, or
    /// a secret replaced with `--force` under schema 1): their counters are
    /// now the highest of those rows, so nothing accepted before is
    /// accepted again; a key reprogrammed under schema 1 may need
    /// `ykadmin counters reset`.
    pub merged: Vec<String>,
}

fn err(path: &Path, kind: DbErrorKind) -> DbError {
    DbError::new(path, kind)
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |e| err(path, e.into())
}

/// An I/O error of `kind`'s shape, kept.
fn io(kind: fn(Arc<io::Error>) -> DbErrorKind) -> impl Fn(io::Error) -> DbErrorKind {
    move |e| kind(Arc::new(e))
}

/// The database file and SQLite's companions next to it.
fn files(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// Creates the file 0600 if missing (SQLite gives its `-wal` and `-shm`
/// files the database file's mode), and takes group and other bits off an
/// existing one and its companions. Refuses a symbolic link or anything
/// that is not a regular file.
fn secure_files(path: &Path) -> Result<Vec<(PathBuf, u32)>, DbError> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(Errno::ELOOP as i32) => {
            return Err(err(path, DbErrorKind::SymbolicLink));
        }
        Err(e) => return Err(err(path, io(DbErrorKind::Open)(e))),
    }
    let mut fixed = Vec::new();
    for file in files(path) {
        let meta = match fs::symlink_metadata(&file) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(&file, io(DbErrorKind::Stat)(e))),
        };
        if !meta.file_type().is_file() {
            return Err(err(&file, DbErrorKind::NotRegularFile));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| err(&file, io(DbErrorKind::Chmod)(e)))?;
            fixed.push((file, mode));
        }
    }
    Ok(fixed)
}

/// Opens the database for the daemon: files 0600, WAL, `synchronous=FULL`,
/// exclusive lock, the current schema (created, or migrated from an older
/// one after a copy is kept).
pub(super) fn open(path: &Path) -> Result<(Connection, Opened), DbError> {
    let modes_fixed = secure_files(path)?;
    let e = sql(path);
    let conn = Connection::open(path).map_err(&e)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&e)?;
    // The daemon is the only owner of the counters: nothing may read or
    // write them behind its back (ykadmin asks the daemon), and holding the
    // lock saves a dozen lock calls per commit.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(&e)?;
    // A new file gets 1 KiB pages (an existing one keeps its own): a row
    // is about 70 bytes, and each page a commit touches is written whole to
    // the WAL before the fsync — a batch of logins on a dozen pages writes
    // 12 KiB instead of 48. Measured: a batch commit's p50 from about
    // 400 µs down to about 170 µs (docs/performance.md).
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(&e)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(&e)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(path, DbErrorKind::NotWal(mode)));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&e)?;
    // Checkpoint at the same WAL size as with SQLite's default pages (4 MiB).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
        .map_err(&e)?;
    let version = user_version(&conn).map_err(&e)?;
    let migration = match version {
        0 if !has_table(&conn, "counters").map_err(&e)? => {
            create_schema(&conn).map_err(&e)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(&e)?;
            None
        }
        1 => Some(migrate_from_1(&conn, path)?),
        SCHEMA_VERSION => None,
        v if v > SCHEMA_VERSION => return Err(err(path, DbErrorKind::NewerSchema(v))),
        v => return Err(err(path, DbErrorKind::UnknownSchema(v))),
    };
    // The fleet's tables (additive: no version change).
    conn.execute_batch(super::fleet::SCHEMA).map_err(&e)?;
    Ok((
        conn,
        Opened {
            migration,
            modes_fixed,
        },
    ))
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Schema 2. `counter` and `session_use` are -1 while nothing was accepted
/// in the key's generation, so that "never seen" is below every pair in the
/// row-value comparison of the check-and-set.
pub(super) fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE counters (
            public_id   TEXT    NOT NULL PRIMARY KEY,
            generation  INTEGER NOT NULL,
            counter     INTEGER NOT NULL,
            session_use INTEGER NOT NULL,
            ts_high     INTEGER NOT NULL,
            ts_low      INTEGER NOT NULL,
            modified    INTEGER NOT NULL,
            reset_at    INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE bound_aeads (
            public_id   TEXT    NOT NULL,
            generation  INTEGER NOT NULL,
            fingerprint BLOB    NOT NULL,
            PRIMARY KEY (public_id, generation, fingerprint)
        ) WITHOUT ROWID;",
    )
}

/// Where the copy of a database about to be migrated goes.
fn backup_path(path: &Path, from: i64) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".schema-{from}.{}.bak", now()));
    PathBuf::from(name)
}

/// Schema 1 → 2: a copy of the file first (`VACUUM INTO`, then 0600), then
/// in one transaction every public id gets the highest of its rows — the
/// same order `counters merge` used, (counter, session use, modified,
/// ts_high, ts_low) — in generation 0, bound to nothing.
fn migrate_from_1(conn: &Connection, path: &Path) -> Result<Migration, DbError> {
    let e = sql(path);
    let backup = backup_path(path, 1);
    let target = backup
        .to_str()
        .ok_or_else(|| err(&backup, DbErrorKind::NotUtf8))?;
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(|x| err(&backup, DbErrorKind::Backup(Arc::new(x))))?;
    fs::set_permissions(&backup, fs::Permissions::from_mode(0o600))
        .map_err(|x| err(&backup, io(DbErrorKind::Chmod)(x)))?;
    let tx = conn.unchecked_transaction().map_err(&e)?;
    type Rank = (u16, u8, i64, u8, u16);
    let mut best: BTreeMap<String, (Rank, usize)> = BTreeMap::new();
    let mut rows = 0;
    {
        let mut st = tx
            .prepare(
                "SELECT public_id, counter, session_use, modified, ts_high, ts_low FROM counters",
            )
            .map_err(&e)?;
        let mut q = st.query([]).map_err(&e)?;
        while let Some(r) = q.next().map_err(&e)? {
            rows += 1;
            let id: String = r.get(0).map_err(&e)?;
            let rank: Rank = (
                r.get(1).map_err(&e)?,
                r.get(2).map_err(&e)?,
                r.get(3).map_err(&e)?,
                r.get(4).map_err(&e)?,
                r.get(5).map_err(&e)?,
            );
            let entry = best.entry(id).or_insert((rank, 0));
            entry.0 = entry.0.max(rank);
            entry.1 += 1;
        }
    }
    tx.execute_batch("ALTER TABLE counters RENAME TO counters_schema1;")
        .map_err(&e)?;
    create_schema(&tx).map_err(&e)?;
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO counters (public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at)
                 VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, 0)",
            )
            .map_err(&e)?;
        for (id, ((counter, session_use, modified, ts_high, ts_low), _)) in &best {
            ins.execute(params![id, counter, session_use, ts_high, ts_low, modified])
                .map_err(&e)?;
        }
    }
    tx.execute_batch("DROP TABLE counters_schema1;")
        .map_err(&e)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(&e)?;
    tx.commit().map_err(&e)?;
    Ok(Migration {
        from: 1,
        backup,
        rows,
        keys: best.len(),
        merged: best
            .into_iter()
            .filter(|(_, (_, n))| *n > 1)
            .map(|(id, _)| id)
            .collect(),
    })
}

/// For `ykhsmd --check` while no daemon runs: the schema version, without
/// changing the file (no migration, no mode change).
pub fn inspect(path: &Path) -> Result<String, DbError> {
    let e = sql(path);
    let meta = fs::symlink_metadata(path).map_err(|x| err(path, io(DbErrorKind::Stat)(x)))?;
    if !meta.file_type().is_file() {
        return Err(err(path, DbErrorKind::NotRegularFile));
    }
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&e)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&e)?;
    let version = user_version(&conn).map_err(&e)?;
    let mode = meta.mode() & 0o7777;
    let modes = if mode & 0o077 != 0 {
        format!("; mode {mode:04o} (ykhsmd makes it 0600 when it starts)")
    } else {
        String::new()
    };
    match version {
        SCHEMA_VERSION => Ok(format!("{} (schema {version}{modes})", path.display())),
        1 => Ok(format!(
            "{} (schema 1: ykhsmd migrates it to schema {SCHEMA_VERSION} when it starts, keeping a copy{modes})",
            path.display()
        )),
        v if v > SCHEMA_VERSION => Err(err(path, DbErrorKind::NewerSchema(v))),
        v => Err(err(path, DbErrorKind::UnknownSchema(v))),
    }
}
