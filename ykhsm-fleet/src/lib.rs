//! The counter store several bastions share, on PostgreSQL.
//!
//! Each bastion keeps its own counter database; with a `[fleet]` table in
//! ykhsmd.toml it also raises each key's counters in one PostgreSQL table
//! that all bastions share, so that an OTP accepted on one bastion is a
//! replay on every other one at once. This crate is that store: the
//! schema ([`sql`]), one conditional write per batch of logins
//! ([`Fleet::raise`]), reads ([`Fleet::pull`]), and the operator's
//! [`Fleet::init`] and [`Fleet::status`] (`ykadmin fleet init|status`).
//!
//! **The rule** is `ykhsm_core::counters::raises`: a presented position
//! (generation, then the last (counter, session use), never seen below
//! every pair) raises the stored one iff it is strictly higher; equal is a
//! replay. The SQL implements exactly this ([`sql::RAISES`]), once, and
//! the tests check it against `raises` on a real server.
//!
//! **Blocking.** The API is blocking: the async client (tokio-postgres)
//! runs on a private current-thread tokio runtime, driven only while a
//! call runs. Call it from a plain thread (the daemon's commit path), never
//! from inside another tokio runtime (tokio panics on a runtime started
//! inside a runtime).
//!
//! **Deadline.** Every call, connecting included, has `timeout_ms` from
//! the configuration; past it, or on any error, the connection is dropped
//! and the next call connects again. A raise is sent at most once per call:
//! it is never retried on a new connection (a raise whose answer was lost
//! may have won; sent again it would lose to itself).
//!
//! **Secrets.** The password is read from `password_file` (root's, 0600)
//! and sent only to the server; no error message or `Debug` output of
//! this crate contains it (nor the URL, which holds none).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod sql;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use ykhsm_config::{ConfigError, FleetSettings};
use ykhsm_core::counters::{Counters, Position, raises};
use ykhsm_proto::CounterRecord;
use ykhsm_proto::message::{FINGERPRINT_LEN, MAX_BOUND_AEADS};

pub use sql::SCHEMA_VERSION;

/// What happened to one presented record in [`Fleet::raise`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raised {
    /// The store had no row for the key, or a lower position: the
    /// presented record is now the key's row (its AEADs merged, within the
    /// same generation).
    Won,
    /// The store's row is at the presented position or above: nothing was
    /// written. The row, as it stood when the raise was refused; its
    /// position is at least the presented one.
    Lost(CounterRecord),
}

/// What [`Fleet::init`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// The schema was created (there was none).
    Created {
        /// Its version.
        version: i32,
    },
    /// An older schema was migrated.
    Migrated {
        /// The version found.
        from: i32,
        /// The version now.
        to: i32,
    },
    /// The schema was already this version: nothing done.
    Current {
        /// Its version.
        version: i32,
    },
}

impl fmt::Display for InitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created { version } => write!(f, "created the schema (version {version})"),
            Self::Migrated { from, to } => {
                write!(f, "migrated the schema from version {from} to {to}")
            }
            Self::Current { version } => {
                write!(
                    f,
                    "the schema is current (version {version}); nothing to do"
                )
            }
        }
    }
}

/// What [`Fleet::status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The server's `server_version`, e.g. `15.20 (Debian 15.20-0+deb12u1)`.
    pub server_version: String,
    /// The schema's version; None: no schema (`ykadmin fleet init`).
    pub schema_version: Option<i32>,
    /// The version this code knows ([`SCHEMA_VERSION`]).
    pub known_version: i32,
    /// How many keys have a row; None without the counters table.
    pub rows: Option<i64>,
}

/// What is wrong with the store's schema.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SchemaProblem {
    /// No ykhsm schema in the database.
    #[error("has no ykhsm schema (table ykhsm_schema); run `ykadmin fleet init`")]
    Missing,
    /// A schema older than this code's.
    #[error(
        "has schema version {found}, older than this ykhsm's {known}; run `ykadmin fleet init` \
         to migrate it"
    )]
    Older {
        /// The version found.
        found: i32,
        /// The version this code knows.
        known: i32,
    },
    /// A schema newer than this code's.
    #[error(
        "has schema version {found}, written by a newer ykhsm (this one knows up to {known}); \
         install the newer ykhsm here (`ykadmin fleet init` never downgrades a schema)"
    )]
    Newer {
        /// The version found.
        found: i32,
        /// The version this code knows.
        known: i32,
    },
    /// Tables that `ykadmin fleet init` did not make, or that were edited.
    #[error("{0}")]
    Malformed(String),
}

/// A failure of the fleet store. No variant's message contains the
/// password.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FleetError {
    /// `password_file` or `ca_file` could not be used ([`Fleet::new`]).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be reached: no route, connection refused, the
    /// server shutting down or starting, the connection lost. Offline.
    #[error("fleet store {store}: cannot be reached: {reason}")]
    Unreachable {
        /// `user@host:port/dbname`.
        store: String,
        /// Why.
        reason: String,
    },
    /// No answer within the deadline (connecting included). Offline.
    #[error("fleet store {store}: no answer within {} ms", timeout.as_millis())]
    Timeout {
        /// `user@host:port/dbname`.
        store: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The schema is missing, older or newer than this code's: the
    /// operator runs `ykadmin fleet init` (or upgrades this host).
    #[error("fleet store {store}: {problem}")]
    Schema {
        /// `user@host:port/dbname`.
        store: String,
        /// What is wrong.
        problem: SchemaProblem,
    },
    /// Anything else: authentication refused, TLS (certificate, name),
    /// permissions, a row that breaks the schema's rules.
    #[error("fleet store {store}: {reason}")]
    Other {
        /// `user@host:port/dbname`.
        store: String,
        /// What went wrong.
        reason: String,
    },
    /// A batch refused before anything was sent.
    #[error("fleet: batch refused, nothing sent: {0}")]
    Batch(String),
}

/// The classes of [`FleetError`] the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Unreachable or no answer in time: `offline` in the configuration
    /// says what logins do.
    Offline,
    /// The schema needs `ykadmin fleet init`, or a newer ykhsm.
    Schema,
    /// Anything else (configuration, authentication, TLS, a refused batch).
    Other,
}

impl FleetError {
    /// Which class the error is of.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => ErrorClass::Offline,
            Self::Schema { .. } => ErrorClass::Schema,
            Self::Config(_) | Self::Other { .. } | Self::Batch(_) => ErrorClass::Other,
        }
    }

    /// Whether the store is out of reach (unreachable or too slow).
    pub fn is_offline(&self) -> bool {
        self.class() == ErrorClass::Offline
    }
}

/// A connection and what was prepared on it.
struct Conn {
    client: Client,
    /// Drives the connection (owned by the runtime); aborted on drop.
    task: JoinHandle<()>,
    /// Prepared once the schema was checked (raise and pull need it).
    ready: Option<Ready>,
}

struct Ready {
    raise: Statement,
    pull: Statement,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a call needs of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A connection (init, status).
    Connection,
    /// The schema checked and the statements prepared (raise, pull).
    Schema,
}

/// An operation on a connection it owns for the call, handing it back.
type OpFuture<'b, T> = Pin<Box<dyn Future<Output = (Conn, Result<T, FleetError>)> + 'b>>;

/// The TLS side of a connection.
#[derive(Clone)]
enum Tls {
    /// Local hosts only (the configuration made sure).
    None,
    /// Certificate chain checked against `ca_file`, name against the host.
    Rustls(MakeRustlsConnect),
}

/// The shared counter store: a configuration, a private runtime, and at
/// most one connection, made when a call needs it.
///
/// `Send`: made anywhere, used and dropped on one plain thread at a time
/// (not inside a tokio runtime: its calls block, and dropping it drops its
/// runtime).
pub struct Fleet {
    runtime: Runtime,
    /// Where and how to connect; holds the password (never printed:
    /// tokio-postgres's `Debug` redacts it, and this type's `Debug` does
    /// not show it at all).
    config: tokio_postgres::Config,
    tls: Tls,
    timeout: Duration,
    /// `user@host:port/dbname`, for messages.
    store: String,
    /// This host's name, written with each raise.
    updated_by: String,
    conn: Option<Conn>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("store", &self.store)
            .field("tls", &matches!(self.tls, Tls::Rustls(_)))
            .field("timeout", &self.timeout)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Reads `password_file` and `ca_file` (each checked as the
    /// configuration requires) and makes the runtime; connects to nothing
    /// yet.
    pub fn new(settings: &FleetSettings) -> Result<Self, FleetError> {
        let store = settings.describe();
        let other = |reason: String| FleetError::Other {
            store: store.clone(),
            reason,
        };
        let mut config = settings.connect_config();
        if let Some(password) = settings.read_password()? {
            config.password(password.as_bytes());
        }
        if config.get_application_name().is_none() {
            config.application_name("ykhsm");
        }
        let tls = match settings.read_ca()? {
            None => Tls::None,
            Some(pem) => Tls::Rustls(MakeRustlsConnect::new(client_config(settings, &pem)?)),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| other(format!("cannot start its runtime: {e}")))?;
        let updated_by = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            runtime,
            config,
            tls,
            timeout: settings.timeout,
            store,
            updated_by,
            conn: None,
        })
    }

    /// `user@host:port/dbname`: where the store is (no password).
    pub fn store(&self) -> &str {
        &self.store
    }

    /// Whether a connection is open (as far as is known without asking the
    /// server: a connection the server closed while idle is found out at
    /// the next call, which then connects again).
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.client.is_closed())
    }

    /// Closes the connection, if any; the next call connects again.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Raises the store's rows for these records, in **one** statement and
    /// one round trip (connecting first if needed), all within the
    /// deadline: each record's row is inserted or raised iff the presented
    /// position is strictly higher than the stored one
    /// (`ykhsm_core::counters::raises`). The answers are in the order of
    /// `recs`: [`Raised::Won`], or [`Raised::Lost`] with the store's row
    /// (at or above the presented position).
    ///
    /// Refused before any I/O ([`FleetError::Batch`]): two records of one
    /// public id, an empty public id, a counter above 15 bits, more than
    /// [`MAX_BOUND_AEADS`] AEADs, AEADs bound to generation 0. The AEADs
    /// are sent sorted and without duplicates.
    ///
    /// Only when another bastion raised a losing key between this
    /// statement's snapshot and its write (see [`sql::RAISE`]) are the
    /// losers' rows read again, in a second round trip.
    ///
    /// An error says nothing was decided for this bastion, not that
    /// nothing was written: a raise whose answer did not arrive in time
    /// ([`FleetError::Timeout`], a lost connection) may have been applied
    /// by the server, and then a later raise of the same position loses
    /// to it. It is never sent again by this call.
    pub fn raise(&mut self, recs: &[CounterRecord]) -> Result<Vec<Raised>, FleetError> {
        let batch = Batch::new(recs, &self.updated_by)?;
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        self.run(Need::Schema, |mut conn| {
            Box::pin(async move {
                let r = raise_on(&mut conn, &batch, &store).await;
                (conn, r)
            })
        })
    }

    /// The store's rows for these public ids (ids without a row are
    /// absent), sorted by public id; one round trip, within the deadline.
    pub fn pull(&mut self, public_ids: &[String]) -> Result<Vec<CounterRecord>, FleetError> {
        if public_ids.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        self.run(Need::Schema, |conn| {
            Box::pin(async move {
                let r = pull_on(&conn, public_ids, &store).await;
                (conn, r)
            })
        })
    }

    /// Creates the schema, or migrates an older one, in one transaction
    /// (under an advisory lock, so two at once do one after the other);
    /// refuses a newer one. Within the deadline.
    pub fn init(&mut self) -> Result<InitOutcome, FleetError> {
        let store = self.store.clone();
        self.run(Need::Connection, |mut conn| {
            Box::pin(async move {
                let r = init_on(&mut conn, &store).await;
                (conn, r)
            })
        })
    }

    /// The server's version, the schema's version and the number of rows;
    /// within the deadline. No schema is not an error here
    /// (`schema_version` is None).
    pub fn status(&mut self) -> Result<StoreStatus, FleetError> {
        let store = self.store.clone();
        self.run(Need::Connection, |conn| {
            Box::pin(async move {
                let r = status_on(&conn, &store).await;
                (conn, r)
            })
        })
    }

    /// Runs `op` on a connection (made, and for [`Need::Schema`] checked
    /// and prepared, if needed), all within the deadline. Any error, or the
    /// deadline passing, drops the connection.
    fn run<'b, T>(
        &mut self,
        need: Need,
        op: impl FnOnce(Conn) -> OpFuture<'b, T>,
    ) -> Result<T, FleetError> {
        let conn = self.conn.take();
        let Self {
            runtime,
            config,
            tls,
            timeout,
            store,
            ..
        } = &*self;
        // The connection is moved into the work: dropped with it when the
        // deadline passes, dropped on an error, handed back on success.
        let work = async move {
            let mut conn = conn;
            if conn.is_some() {
                // Let the connection's task read what the server sent
                // while we were idle (a shutdown notice, the end of the
                // stream): a connection the server closed is then known
                // closed, and replaced before anything is sent on it.
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                conn = conn.filter(|c| !c.client.is_closed());
            }
            let mut c = match conn {
                Some(c) => c,
                None => connect(config, tls, store).await?,
            };
            if need == Need::Schema && c.ready.is_none() {
                c.ready = Some(prepare(&c.client, store).await?);
            }
            let (c, result) = op(c).await;
            result.map(|v| (c, v))
        };
        // (The timer is made inside the runtime, which it needs.)
        let outcome = runtime.block_on(async { tokio::time::timeout(*timeout, work).await });
        match outcome {
            Ok(Ok((c, v))) => {
                self.conn = Some(c);
                Ok(v)
            }
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => Err(FleetError::Timeout {
                store: self.store.clone(),
                timeout: self.timeout,
            }),
        }
    }
}

/// rustls with `pem`'s certificates as the only roots; rustls checks the
/// chain and the server's name against the host (verify-full).
fn client_config(settings: &FleetSettings, pem: &[u8]) -> Result<rustls::ClientConfig, FleetError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = settings
        .ca_file
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    let invalid = |message: String| {
        FleetError::Config(ConfigError::Invalid {
            path: settings.config.clone(),
            key: "fleet.ca_file",
            message: format!("{}: {message}", path.display()),
        })
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("a certificate rustls cannot use: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(
            "holds no certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

async fn connect(
    config: &tokio_postgres::Config,
    tls: &Tls,
    store: &str,
) -> Result<Conn, FleetError> {
    let unreachable = |e: tokio_postgres::Error| connect_error(store, &e);
    let (client, task) = match tls {
        Tls::None => {
            let (client, connection) = config.connect(NoTls).await.map_err(unreachable)?;
            (client, tokio::spawn(async move { drop(connection.await) }))
        }
        Tls::Rustls(make) => {
            let (client, connection) = config.connect(make.clone()).await.map_err(unreachable)?;
            (client, tokio::spawn(async move { drop(connection.await) }))
        }
    };
    Ok(Conn {
        client,
        task,
        ready: None,
    })
}

/// Checks the schema's version and prepares the statements: pipelined,
/// one round trip.
async fn prepare(client: &Client, store: &str) -> Result<Ready, FleetError> {
    let (version, raise, pull) = tokio::join!(
        client.query(sql::VERSION, &[]),
        client.prepare(sql::RAISE),
        client.prepare(sql::PULL)
    );
    let version = version.map_err(|e| classify(store, &e))?;
    check_version(store, &version)?;
    Ok(Ready {
        raise: raise.map_err(|e| classify(store, &e))?,
        pull: pull.map_err(|e| classify(store, &e))?,
    })
}

fn check_version(store: &str, rows: &[Row]) -> Result<(), FleetError> {
    let schema = |problem| FleetError::Schema {
        store: store.to_owned(),
        problem,
    };
    let [row] = rows else {
        return Err(schema(SchemaProblem::Malformed(format!(
            "ykhsm_schema has {} rows, not one; was it edited by hand?",
            rows.len()
        ))));
    };
    let found: i32 = row.try_get(0).map_err(|e| classify(store, &e))?;
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(schema(SchemaProblem::Older {
            found,
            known: SCHEMA_VERSION,
        })),
        std::cmp::Ordering::Greater => Err(schema(SchemaProblem::Newer {
            found,
            known: SCHEMA_VERSION,
        })),
    }
}

/// A batch, checked and in the statement's parameters' shape.
struct Batch {
    /// Index into the caller's records, by public id.
    index: HashMap<String, usize>,
    /// Each record's public id and position, in the caller's order.
    caller_ids: Vec<String>,
    positions: Vec<Position>,
    public_ids: Vec<String>,
    generations: Vec<i64>,
    counters: Vec<i32>,
    session_uses: Vec<i32>,
    ts_highs: Vec<i32>,
    ts_lows: Vec<i32>,
    modifieds: Vec<i64>,
    reset_ats: Vec<i64>,
    aeads: Vec<Vec<u8>>,
    updated_by: String,
}

impl Batch {
    fn new(recs: &[CounterRecord], updated_by: &str) -> Result<Self, FleetError> {
        let refuse = |id: &str, why: &str| Err(FleetError::Batch(format!("{id:?}: {why}")));
        let mut seen = HashSet::new();
        for r in recs {
            if r.public_id.is_empty() {
                return refuse("", "an empty public id");
            }
            if !seen.insert(r.public_id.as_str()) {
                return refuse(&r.public_id, "twice in one batch");
            }
            if position(r).is_none() {
                return refuse(&r.public_id, "a counter above 15 bits");
            }
            if r.generation == 0 && !r.aeads.is_empty() {
                return refuse(&r.public_id, "AEADs bound to generation 0");
            }
        }
        // Sorted by public id: the order the statement locks rows in.
        let mut order: Vec<usize> = (0..recs.len()).collect();
        order.sort_by(|&a, &b| recs[a].public_id.cmp(&recs[b].public_id));
        let mut b = Self {
            index: HashMap::with_capacity(recs.len()),
            caller_ids: recs.iter().map(|r| r.public_id.clone()).collect(),
            positions: recs.iter().filter_map(position).collect(),
            public_ids: Vec::with_capacity(recs.len()),
            generations: Vec::with_capacity(recs.len()),
            counters: Vec::with_capacity(recs.len()),
            session_uses: Vec::with_capacity(recs.len()),
            ts_highs: Vec::with_capacity(recs.len()),
            ts_lows: Vec::with_capacity(recs.len()),
            modifieds: Vec::with_capacity(recs.len()),
            reset_ats: Vec::with_capacity(recs.len()),
            aeads: Vec::with_capacity(recs.len()),
            updated_by: updated_by.to_owned(),
        };
        for i in order {
            let r = &recs[i];
            let mut fps = r.aeads.clone();
            fps.sort_unstable();
            fps.dedup();
            if fps.len() > MAX_BOUND_AEADS {
                return refuse(&r.public_id, "more than 64 bound AEADs");
            }
            let (counter, session_use) = r
                .last
                .map_or((-1, -1), |(c, u)| (i32::from(c), i32::from(u)));
            b.index.insert(r.public_id.clone(), i);
            b.public_ids.push(r.public_id.clone());
            b.generations.push(i64::from(r.generation));
            b.counters.push(counter);
            b.session_uses.push(session_use);
            b.ts_highs.push(i32::from(r.ts_high));
            b.ts_lows.push(i32::from(r.ts_low));
            b.modifieds
                .push(i64::try_from(r.modified).unwrap_or(i64::MAX));
            b.reset_ats
                .push(i64::try_from(r.reset_at).unwrap_or(i64::MAX));
            b.aeads.push(fps.concat());
        }
        Ok(b)
    }
}

/// A record's position in the fleet's order; None if its counter is above
/// 15 bits (no YubiKey makes one).
pub fn position(rec: &CounterRecord) -> Option<Position> {
    let last = match rec.last {
        None => None,
        Some((c, u)) => Some(Counters::new(c, u)?),
    };
    Some(Position {
        generation: rec.generation,
        last,
    })
}

async fn raise_on(conn: &mut Conn, b: &Batch, store: &str) -> Result<Vec<Raised>, FleetError> {
    let ready = conn.ready.as_ref().expect("prepared by run");
    let rows = conn
        .client
        .query(
            &ready.raise,
            &[
                &b.public_ids,
                &b.generations,
                &b.counters,
                &b.session_uses,
                &b.ts_highs,
                &b.ts_lows,
                &b.modifieds,
                &b.reset_ats,
                &b.aeads,
                &b.updated_by,
            ],
        )
        .await
        .map_err(|e| classify(store, &e))?;
    let mut out: Vec<Option<Raised>> = vec![None; b.positions.len()];
    let mut reread = Vec::new();
    for row in &rows {
        let id: String = row.try_get(0).map_err(|e| classify(store, &e))?;
        let won: bool = row.try_get(1).map_err(|e| classify(store, &e))?;
        let Some(&i) = b.index.get(&id) else {
            return Err(other(
                store,
                format!("answered for a key not asked: {id:?}"),
            ));
        };
        if won {
            out[i] = Some(Raised::Won);
            continue;
        }
        // A loser's row as the snapshot saw it: if it does not beat the
        // presented position, the row was raised after the snapshot.
        let seen: Option<i64> = row.try_get(2).map_err(|e| classify(store, &e))?;
        let rec = match seen {
            Some(_) => Some(record_of(row, 0, 2).map_err(|m| other(store, m))?),
            None => None,
        };
        match rec {
            Some(rec) if beats(&rec, b.positions[i]) => out[i] = Some(Raised::Lost(rec)),
            _ => reread.push(id),
        }
    }
    if !reread.is_empty() {
        let rows = conn
            .client
            .query(&ready.pull, &[&reread])
            .await
            .map_err(|e| classify(store, &e))?;
        for row in &rows {
            let rec = record_of(row, 0, 1).map_err(|m| other(store, m))?;
            let i = b.index[&rec.public_id];
            if !beats(&rec, b.positions[i]) {
                return Err(other(
                    store,
                    format!(
                        "the row of {:?} is below a raise it refused: was it edited by hand?",
                        rec.public_id
                    ),
                ));
            }
            out[i] = Some(Raised::Lost(rec));
        }
    }
    out.into_iter()
        .zip(&b.caller_ids)
        .map(|(r, id)| {
            r.ok_or_else(|| other(store, format!("no answer for {id:?} (its row vanished?)")))
        })
        .collect()
}

/// Whether the stored `rec` is at or above `presented` (so refusing the
/// raise was right).
fn beats(rec: &CounterRecord, presented: Position) -> bool {
    position(rec).is_some_and(|stored| !raises(Some(stored), presented))
}

/// A record from `row`: the public id at `id`, the other fields from
/// `first` on (generation, counter, session use, ts high, ts low,
/// modified, reset at, AEADs).
fn record_of(row: &Row, id: usize, first: usize) -> Result<CounterRecord, String> {
    let get_err = |e: tokio_postgres::Error| format!("a row it cannot read: {e}");
    let public_id: String = row.try_get(id).map_err(get_err)?;
    let bad = |what: &str| format!("the row of {public_id:?} breaks the schema: {what}");
    let i64_at = |k: usize| row.try_get::<_, i64>(first + k).map_err(get_err);
    let i32_at = |k: usize| row.try_get::<_, i32>(first + k).map_err(get_err);
    let generation = u32::try_from(i64_at(0)?).map_err(|_| bad("generation"))?;
    let last = match (i32_at(1)?, i32_at(2)?) {
        (-1, -1) => None,
        (c, u) => Some((
            u16::try_from(c).map_err(|_| bad("counter"))?,
            u8::try_from(u).map_err(|_| bad("session_use"))?,
        )),
    };
    let fps: Vec<Vec<u8>> = row.try_get(first + 7).map_err(get_err)?;
    Ok(CounterRecord {
        generation,
        last,
        ts_high: u8::try_from(i32_at(3)?).map_err(|_| bad("ts_high"))?,
        ts_low: u16::try_from(i32_at(4)?).map_err(|_| bad("ts_low"))?,
        modified: u64::try_from(i64_at(5)?).map_err(|_| bad("modified"))?,
        reset_at: u64::try_from(i64_at(6)?).map_err(|_| bad("reset_at"))?,
        // A malformed fingerprint binds nothing (fails closed), as in the
        // local database.
        aeads: fps
            .iter()
            .filter_map(|f| <[u8; FINGERPRINT_LEN]>::try_from(f.as_slice()).ok())
            .collect(),
        public_id,
    })
}

async fn pull_on(
    conn: &Conn,
    public_ids: &[String],
    store: &str,
) -> Result<Vec<CounterRecord>, FleetError> {
    let ready = conn.ready.as_ref().expect("prepared by run");
    let rows = conn
        .client
        .query(&ready.pull, &[&public_ids])
        .await
        .map_err(|e| classify(store, &e))?;
    rows.iter()
        .map(|r| record_of(r, 0, 1).map_err(|m| other(store, m)))
        .collect()
}

async fn init_on(conn: &mut Conn, store: &str) -> Result<InitOutcome, FleetError> {
    let err = |e: tokio_postgres::Error| classify(store, &e);
    let tx = conn.client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&sql::INIT_LOCK])
        .await
        .map_err(err)?;
    let row = tx
        .query_one(
            "SELECT to_regclass('ykhsm_schema') IS NOT NULL, \
                    to_regclass('ykhsm_counters') IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?;
    let (has_schema, has_counters): (bool, bool) = (row.get(0), row.get(1));
    let outcome = match (has_schema, has_counters) {
        (false, false) => {
            tx.batch_execute(sql::CREATE).await.map_err(err)?;
            tx.execute(
                "INSERT INTO ykhsm_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(err)?;
            InitOutcome::Created {
                version: SCHEMA_VERSION,
            }
        }
        (false, true) => {
            return Err(FleetError::Schema {
                store: store.to_owned(),
                problem: SchemaProblem::Malformed(
                    "a table ykhsm_counters exists, but no ykhsm_schema: it was not made by \
                     `ykadmin fleet init`; rename or drop it first"
                        .into(),
                ),
            });
        }
        (true, _) => {
            let rows = tx.query(sql::VERSION, &[]).await.map_err(err)?;
            let found: i32 = match check_version(store, &rows) {
                Ok(()) => SCHEMA_VERSION,
                Err(FleetError::Schema {
                    problem: SchemaProblem::Older { found, .. },
                    ..
                }) => found,
                Err(e) => return Err(e),
            };
            if found == SCHEMA_VERSION {
                InitOutcome::Current { version: found }
            } else {
                let from = usize::try_from(found - 1).map_err(|_| {
                    other(
                        store,
                        format!("schema version {found} is not one ykhsm wrote"),
                    )
                })?;
                for step in &sql::MIGRATIONS[from..] {
                    tx.batch_execute(step).await.map_err(err)?;
                }
                tx.execute("UPDATE ykhsm_schema SET version = $1", &[&SCHEMA_VERSION])
                    .await
                    .map_err(err)?;
                InitOutcome::Migrated {
                    from: found,
                    to: SCHEMA_VERSION,
                }
            }
        }
    };
    tx.commit().await.map_err(err)?;
    // Statements prepared before a migration may no longer fit.
    conn.ready = None;
    Ok(outcome)
}

async fn status_on(conn: &Conn, store: &str) -> Result<StoreStatus, FleetError> {
    let err = |e: tokio_postgres::Error| classify(store, &e);
    let row = conn
        .client
        .query_one(
            "SELECT current_setting('server_version'), \
                    to_regclass('ykhsm_schema') IS NOT NULL, \
                    to_regclass('ykhsm_counters') IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?;
    let (server_version, has_schema, has_counters): (String, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    let schema_version = if has_schema {
        let rows = conn.client.query(sql::VERSION, &[]).await.map_err(err)?;
        match rows.as_slice() {
            [row] => Some(row.try_get(0).map_err(err)?),
            _ => {
                return Err(FleetError::Schema {
                    store: store.to_owned(),
                    problem: SchemaProblem::Malformed(format!(
                        "ykhsm_schema has {} rows, not one; was it edited by hand?",
                        rows.len()
                    )),
                });
            }
        }
    } else {
        None
    };
    let rows = if has_counters {
        let row = conn
            .client
            .query_one("SELECT count(*) FROM ykhsm_counters", &[])
            .await
            .map_err(err)?;
        Some(row.try_get(0).map_err(err)?)
    } else {
        None
    };
    Ok(StoreStatus {
        server_version,
        schema_version,
        known_version: SCHEMA_VERSION,
        rows,
    })
}

fn other(store: &str, reason: String) -> FleetError {
    FleetError::Other {
        store: store.to_owned(),
        reason,
    }
}

/// The error and its causes, `: `-joined (tokio-postgres's own message is
/// only its kind: "db error", "error connecting to server").
fn chain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!("; hint: {hint}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// Whether a TLS failure (handshake, certificate, name, no TLS on the
/// server) is in `e`.
fn is_tls(e: &tokio_postgres::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|i| i.is::<rustls::Error>())
        {
            return true;
        }
        cause = c.source();
    }
    e.to_string().contains("TLS")
}

/// Server states that mean "not now" rather than "no".
fn is_unavailable(code: &SqlState) -> bool {
    code.code().starts_with("08") // connection exception
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
}

/// An error while connecting: the server refused (authentication,
/// no such database), TLS, or it could not be reached.
fn connect_error(store: &str, e: &tokio_postgres::Error) -> FleetError {
    match e.as_db_error() {
        Some(db) if !is_unavailable(db.code()) => other(store, chain(e)),
        Some(_) => FleetError::Unreachable {
            store: store.to_owned(),
            reason: chain(e),
        },
        None if is_tls(e) => other(store, format!("TLS: {}", chain(e))),
        None => FleetError::Unreachable {
            store: store.to_owned(),
            reason: chain(e),
        },
    }
}

/// An error on an open connection.
fn classify(store: &str, e: &tokio_postgres::Error) -> FleetError {
    match e.code() {
        Some(code) if *code == SqlState::UNDEFINED_TABLE => FleetError::Schema {
            store: store.to_owned(),
            problem: SchemaProblem::Missing,
        },
        Some(code) if is_unavailable(code) => FleetError::Unreachable {
            store: store.to_owned(),
            reason: chain(e),
        },
        Some(_) => other(store, chain(e)),
        None if e.is_closed()
            || std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>()) =>
        {
            FleetError::Unreachable {
                store: store.to_owned(),
                reason: chain(e),
            }
        }
        None => other(store, chain(e)),
    }
}
