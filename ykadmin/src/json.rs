//! The documents `ykadmin --json` prints, one type per subcommand: serde
//! writes them, so strings are escaped and numbers stay numbers. Each
//! subcommand prints exactly one document on standard output and nothing
//! else there (warnings and progress go to standard error). `status` has
//! its own in [`crate::report`].

use serde::Serialize;

use crate::import::{ImportNote, ImportReport};

/// `pubid-from-serial`.
#[derive(Debug, Serialize)]
pub struct PublicIdOfSerial<'a> {
    /// The serial number.
    pub serial: u32,
    /// Its public id in the form asked for.
    pub public_id: &'a str,
}

/// `verify`.
#[derive(Debug, Serialize)]
pub struct Verified<'a> {
    /// The user.
    pub user: &'a str,
    /// The daemon's status word.
    pub status: &'a str,
}

/// `decrypt`.
#[derive(Debug, Serialize)]
pub struct Decrypted<'a> {
    /// The OTP's public id (empty if it had none).
    pub public_id: &'a str,
    /// YK-KSM's answer line.
    pub answer: &'a str,
}

/// `enroll`.
#[derive(Debug, Serialize)]
pub struct Enrolled<'a> {
    /// The user.
    pub user: &'a str,
    /// The key enrolled.
    pub public_id: &'a str,
    /// False when it was on the user's line already.
    pub changed: bool,
    /// The authfile written.
    pub authfile: String,
    /// Enrolled by OTP: the counters the daemon recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Counters>,
}

/// The counters of an OTP.
#[derive(Debug, Serialize)]
pub struct Counters {
    /// The 15-bit non-volatile counter.
    pub counter: u16,
    /// The session use.
    pub session_use: u8,
}

/// `revoke`.
#[derive(Debug, Serialize)]
pub struct Revoked<'a> {
    /// The user.
    pub user: &'a str,
    /// The keys taken off the user's line.
    pub removed: &'a [String],
    /// Whether the user's line went too (`--purge`).
    pub purged: bool,
    /// The authfile written.
    pub authfile: String,
}

/// One user of `list`.
#[derive(Debug, Serialize)]
pub struct ListedUser {
    /// The name as written in the authfile.
    pub user: String,
    /// A name with an invisible character: the user ykhsmd fails closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fails_closed_for: Option<String>,
    /// The keys on the line (none: the user is refused).
    pub keys: Vec<ListedKey>,
}

/// One key of `list`; only `public_id` when the daemon has no counters
/// for it (never used, or the daemon was not reachable).
#[derive(Debug, Serialize)]
pub struct ListedKey {
    /// The key.
    pub public_id: String,
    /// Its counter generation (0 until reset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// The last accepted counter in this generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter: Option<u16>,
    /// Its session use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_use: Option<u8>,
    /// When the key's record last changed, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<u64>,
    /// When the generation began (reset keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<u64>,
    /// How many AEADs the generation is bound to (reset keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_aeads: Option<usize>,
}

/// `import-ykksm`.
#[derive(Debug, Serialize)]
pub struct Imported<'a> {
    /// Key files written, replaced ones included.
    pub imported: usize,
    /// Of those, files that replaced another secret (`--force`).
    pub replaced: usize,
    /// Key files already holding the same secret.
    pub skipped: usize,
    /// Bad lines and key files not written.
    pub failed: usize,
    /// Each failure.
    pub failures: Vec<Note<'a>>,
    /// Each replacement.
    pub replacements: Vec<Note<'a>>,
    /// Each key whose counters were reset for its new secret.
    pub resets: Vec<Note<'a>>,
}

/// A line of the input and what happened to it.
#[derive(Debug, Serialize)]
pub struct Note<'a> {
    /// 1-based line.
    pub line: usize,
    /// The key's public id, when the line had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_id: Option<&'a str>,
    /// The key handle, when it concerns one key file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_handle: Option<&'a str>,
    /// What happened.
    pub reason: &'a str,
    /// The same as one line for people.
    pub message: String,
}

impl<'a> Imported<'a> {
    /// The document of an import's report.
    pub fn new(r: &'a ImportReport) -> Self {
        let notes = |v: &'a [ImportNote]| v.iter().map(Note::new).collect();
        Self {
            imported: r.imported,
            replaced: r.replaced,
            skipped: r.skipped,
            failed: r.failed,
            failures: notes(&r.failures),
            replacements: notes(&r.replacements),
            resets: notes(&r.resets),
        }
    }
}

impl<'a> Note<'a> {
    fn new(n: &'a ImportNote) -> Self {
        Self {
            line: n.line,
            public_id: n.public_id.as_deref(),
            key_handle: n.key_handle.as_deref(),
            reason: &n.reason,
            message: n.to_string(),
        }
    }
}

/// `counters merge`.
#[derive(Debug, Serialize)]
pub struct Merged {
    /// Records in the export.
    pub records: usize,
    /// Records that raised something.
    pub raised: u32,
    /// Records at or below what the daemon had.
    pub unchanged: u32,
}

/// `counters import-ykval`.
#[derive(Debug, Serialize)]
pub struct YkvalImported<'a> {
    /// Keys whose counters were merged.
    pub keys: usize,
    /// Of those, keys whose counters went up.
    pub raised: u32,
    /// Keys the daemon already had at or above.
    pub unchanged: u32,
    /// Rows never used (counter -1), skipped.
    pub skipped_never_used: usize,
    /// Public ids YK-VAL had marked inactive (revoke them to keep them
    /// disabled).
    pub inactive: Vec<&'a str>,
    /// Lines that could not be read.
    pub errors: Vec<LineError>,
}

/// A line that could not be read.
#[derive(Debug, Serialize)]
pub struct LineError {
    /// 1-based line.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// `counters reset`.
#[derive(Debug, Serialize)]
pub struct Reset<'a> {
    /// The key.
    pub public_id: &'a str,
    /// The generation now in force.
    pub generation: u32,
    /// How many AEADs it is bound to.
    pub aeads: u32,
}

/// One key handle of `aeads check`.
#[derive(Debug, Serialize)]
pub struct AeadsChecked {
    /// The key handle as configured.
    pub key_handle: String,
    /// Its directory in the store.
    pub path: String,
    /// `present`, or `missing` (then no AEADs).
    pub directory: &'static str,
    /// AEAD files found.
    pub aeads: usize,
    /// Of those, the ones that open.
    pub good: usize,
    /// The others.
    pub bad: Vec<BadAead>,
}

/// A file `aeads check` refused.
#[derive(Debug, Serialize)]
pub struct BadAead {
    /// The file.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// `aeads digest`.
#[derive(Debug, Serialize)]
pub struct Digest<'a> {
    /// SHA-1, hex.
    pub digest: &'a str,
    /// Files digested.
    pub files: usize,
}

/// `generate`.
#[derive(Debug, Serialize)]
pub struct Generated<'a> {
    /// The key handle the keys are sealed under.
    pub key_handle: &'a str,
    /// The new keys.
    pub public_ids: &'a [String],
    /// Where the programming lines are (0600).
    pub out: String,
}

/// `hsm unlock`.
#[derive(Debug, Serialize)]
pub struct Unlocked {
    /// Always true: a refusal is an error on standard error.
    pub unlocked: bool,
}

/// `fleet init`.
#[derive(Debug, Serialize)]
pub struct FleetInit<'a> {
    /// `user@host:port/dbname`.
    pub store: &'a str,
    /// `created`, `migrated` or `current`.
    pub outcome: &'static str,
    /// The schema version now.
    pub schema_version: i32,
    /// The version found, when migrated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrated_from: Option<i32>,
}

impl<'a> FleetInit<'a> {
    /// The document of what `init` did.
    pub fn new(store: &'a str, outcome: ykhsm_fleet::InitOutcome) -> Self {
        use ykhsm_fleet::InitOutcome;
        let (name, schema_version, migrated_from) = match outcome {
            InitOutcome::Created { version } => ("created", version, None),
            InitOutcome::Migrated { from, to } => ("migrated", to, Some(from)),
            InitOutcome::Current { version } => ("current", version, None),
        };
        Self {
            store,
            outcome: name,
            schema_version,
            migrated_from,
        }
    }
}

/// `fleet status`.
#[derive(Debug, Serialize)]
pub struct FleetStatus<'a> {
    /// `user@host:port/dbname`.
    pub store: &'a str,
    /// Whether the store answered.
    pub connected: bool,
    /// Its PostgreSQL version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Its schema version (null: no schema, or not connected).
    pub schema_version: Option<i32>,
    /// The version this ykhsm knows.
    pub known_schema_version: i32,
    /// Keys with a row (null without the table, or not connected).
    pub rows: Option<i64>,
    /// What is wrong (null: nothing); the exit code is then 1.
    pub problem: Option<String>,
}

impl<'a> FleetStatus<'a> {
    /// The document of `status`'s answer.
    pub fn new(
        store: &'a str,
        answer: &Result<ykhsm_fleet::StoreStatus, ykhsm_fleet::FleetError>,
    ) -> Self {
        use ykhsm_fleet::SchemaProblem;
        let known = ykhsm_fleet::SCHEMA_VERSION;
        match answer {
            Ok(s) => {
                let problem = match s.schema_version {
                    None => Some(SchemaProblem::Missing),
                    Some(found) if found < known => Some(SchemaProblem::Older { found, known }),
                    Some(found) if found > known => Some(SchemaProblem::Newer { found, known }),
                    Some(_) => None,
                };
                Self {
                    store,
                    connected: true,
                    server_version: Some(s.server_version.clone()),
                    schema_version: s.schema_version,
                    known_schema_version: known,
                    rows: s.rows,
                    problem: problem.map(|p| p.to_string()),
                }
            }
            Err(e) => Self {
                store,
                connected: false,
                server_version: None,
                schema_version: None,
                known_schema_version: known,
                rows: None,
                problem: Some(e.to_string()),
            },
        }
    }
}
