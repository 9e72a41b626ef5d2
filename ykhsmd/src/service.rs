//! What the daemon answers: the checks of a verification in the order of
//! interface.md, and the admin requests. Transport-free: the server hands
//! in a decoded request and the peer's credentials, and gets a response.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ykhsm_core::backend::{Backend, BackendError, Purpose, SoftBackend, Unlock};
use ykhsm_core::counters::Counters;
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::keys_file::{KeysFile, KeysFileError};
use ykhsm_core::ksm;
use ykhsm_core::otp::{Otp, OtpCounters, PublicId, Token, YubiKeySecrets};
use ykhsm_core::store::{AeadStore, StoreError, StoredAead};
use ykhsm_core::{Nonce, YubiKeyAead};
use ykhsm_proto::report::{
    AuthfileStats, BackendKind, Check, DatabaseStats, Health, Part, StatusReport,
};
use ykhsm_proto::status::ALL as ALL_STATUS;
use ykhsm_proto::{Request, Response, Status};
use ykhsm_yubihsm::YubiHsmBackend;

use crate::authfile::{Account, Authfile, Lookup};
use crate::config::{BackendConfig, Config};
use crate::db::{Accept, CounterKey, Db, DbError, Presented};
use crate::device::DeviceQueue;
use crate::log::{self, Log, escape};

/// Who is asking, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid of the peer process.
    pub uid: u32,
    /// Its pid, when the kernel gives one.
    pub pid: Option<i32>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// keys.json.
    #[error(transparent)]
    Keys(#[from] KeysFileError),
    /// The backend kind is not available in this build.
    #[error("{0}")]
    Backend(String),
}

/// How long one exchange with the YubiHSM may take (pyhsm's is 1 s).
const HSM_TIMEOUT: Duration = Duration::from_secs(1);

/// Loads the configured backend.
pub fn load_backend(config: &Config) -> Result<Arc<dyn Backend>, StartError> {
    match &config.backend {
        BackendConfig::Soft { keys_file } => {
            Ok(Arc::new(SoftBackend::new(KeysFile::load(keys_file)?)))
        }
        // Opened at the first request, and again after the device went
        // away: a daemon started before the HSM is plugged in, or one
        // whose HSM was reset, recovers by itself (answering
        // BACKEND_ERROR meanwhile).
        BackendConfig::Yubihsm { device } => {
            Ok(Arc::new(YubiHsmBackend::new_lazy(device, HSM_TIMEOUT)))
        }
    }
}

/// An answer, and the audit line to write once it is sent.
#[derive(Debug)]
pub struct Handled {
    /// The answer.
    pub response: Response,
    /// The audit line (verifications only).
    pub audit: Option<String>,
}

impl From<Response> for Handled {
    fn from(response: Response) -> Self {
        Self {
            response,
            audit: None,
        }
    }
}

/// The result of a verification, for the answer and the audit line.
#[derive(Debug, Clone)]
struct Outcome {
    status: Status,
    public_id: Option<PublicId>,
    counters: Option<Counters>,
}

impl Outcome {
    fn status(status: Status) -> Self {
        Self {
            status,
            public_id: None,
            counters: None,
        }
    }

    /// A refusal that names the key (no counters: nothing was decoded).
    fn for_key(status: Status, public_id: &PublicId) -> Self {
        Self {
            status,
            public_id: Some(public_id.clone()),
            counters: None,
        }
    }
}

/// What passed checks 0–4 (no device needed): the OTP and its AEAD, for
/// the backend to decode.
struct Pending {
    otp: Otp,
    found: StoredAead,
}

/// What passed checks 1–5: the key and the counters to check-and-set.
struct Decoded {
    public_id: PublicId,
    key: CounterKey,
    counters: OtpCounters,
    /// The AEAD file that decoded it, for the log.
    path: PathBuf,
}

/// What the outcome of a check-and-set reports.
struct Settling {
    public_id: PublicId,
    pair: Counters,
    path: PathBuf,
}

impl Decoded {
    /// What the database needs, and what the outcome reports.
    fn into_parts(self) -> (CounterKey, Presented, Settling) {
        let pair = self.counters.counters();
        let presented = Presented {
            counters: pair,
            ts_high: self.counters.ts_high,
            ts_low: self.counters.ts_low,
        };
        (
            self.key,
            presented,
            Settling {
                public_id: self.public_id,
                pair,
                path: self.path,
            },
        )
    }
}

/// The daemon's state and logic.
pub struct Service {
    config: Config,
    log: Arc<Log>,
    authfile: Authfile,
    store: AeadStore,
    backend: RwLock<Arc<dyn Backend>>,
    /// The device's own thread, when the backend is a device.
    device: Option<DeviceQueue>,
    db: Db,
    started: Instant,
    answered: [AtomicU64; ALL_STATUS.len()],
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Builds the service from loaded parts.
    pub fn new(
        config: Config,
        log: Arc<Log>,
        backend: Arc<dyn Backend>,
        db: Db,
        authfile: Authfile,
    ) -> Self {
        let store = config
            .aead_store(config.key_handles.clone())
            .with_read_cache();
        let device = backend.is_device().then(DeviceQueue::start);
        Self {
            config,
            log,
            authfile,
            store,
            backend: RwLock::new(backend),
            device,
            db,
            started: Instant::now(),
            answered: Default::default(),
        }
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The authfile.
    pub fn authfile(&self) -> &Authfile {
        &self.authfile
    }

    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// SIGHUP: re-reads keys.json (keeping the old keys if the new file is
    /// refused) and forgets the cached authfile.
    pub fn reload(&self) {
        self.authfile.invalidate();
        if self.device.is_some() {
            // Nothing of the device's to re-read; reopening it would only
            // cost the start-up checks.
            self.log
                .info("reload: authfile re-read (the YubiHSM stays open)");
            return;
        }
        match load_backend(&self.config) {
            Ok(b) => {
                *self.backend.write().unwrap_or_else(|p| p.into_inner()) = b;
                self.log.info("reload: keys and authfile re-read");
            }
            Err(e) => self
                .log
                .error(&format!("reload: keeping the keys already loaded: {e}")),
        }
    }

    /// Check 0: may `peer` ask about `user`? Root may ask for anyone. Any
    /// other uid only for a name the system (NSS) resolves to that uid —
    /// its own name or an alias of it (`ALICE`, `alice@corp` with sssd); a
    /// name NSS does not know, or cannot resolve now, is nobody's own.
    /// `Ok` carries NSS's answer when it was asked, for check 1.
    fn may_ask(&self, peer: &Peer, user: &str) -> Result<Option<Account>, Status> {
        if peer.uid == 0 {
            return Ok(None);
        }
        match Account::lookup(user) {
            account @ Account::Known { uid, .. } if uid == peer.uid => Ok(Some(account)),
            _ => Err(Status::Denied),
        }
    }

    /// Check 1: the user's keys in the authfile, found under every name
    /// the system gives the user (see [`crate::authfile`]). Who `user` is:
    /// `asked` when check 0 asked NSS; else what NSS said when the file was
    /// parsed, if a line names `user` as written (no NSS call on the login
    /// path for the names in the file); else NSS now, also on root's
    /// acceptor thread: sshd has just looked the same name up, so sssd's
    /// caches answer (measured with the files backend: about 6 µs for a
    /// known name, 65 µs for an unknown one where nss-systemd is asked
    /// too; see docs/architecture.md).
    fn user_keys(&self, user: &str, asked: Option<Account>) -> Result<Vec<PublicId>, Status> {
        let current = match self.authfile.current() {
            Ok(c) => c,
            Err(e) => {
                self.log.error(&format!("authfile: {e}"));
                return Err(Status::BackendError);
            }
        };
        if current.reread {
            self.report_authfile(&current.parsed);
        }
        let account = match asked {
            Some(a) => a,
            None => match current.parsed.account_of(user) {
                Some(a) => a.clone(),
                None => Account::lookup(user),
            },
        };
        match current.parsed.lookup(user, &account) {
            Lookup::Keys(keys) => Ok(keys),
            Lookup::NoLine => Err(Status::NoKeysForUser),
            Lookup::UnknownUser => Err(Status::UnknownUser),
            Lookup::Broken => {
                self.log.debug(&format!(
                    "authfile {}: a line for user {} cannot be read; failing closed",
                    self.authfile.path().display(),
                    log::user(user)
                ));
                Err(Status::BackendError)
            }
            Lookup::Unresolved => {
                let why = match &account {
                    Account::Failed(why) => {
                        format!("the system's user database (NSS) failed: {why}")
                    }
                    _ => "NSS could not resolve a user name of the authfile when it was read"
                        .to_owned(),
                };
                self.log.warn(&format!(
                    "user {}: cannot tell whether a line of {} is theirs ({why}); failing closed",
                    log::user(user),
                    self.authfile.path().display()
                ));
                Err(Status::BackendError)
            }
        }
    }

    /// Answers one request from `peer`. The audit line, if any, is for the
    /// caller to write once the answer is on its way.
    pub async fn handle(self: &Arc<Self>, peer: Peer, request: Request) -> Handled {
        let admin = request.is_admin();
        if admin && peer.uid != 0 {
            self.log.refusal(
                peer.uid,
                Status::Denied.as_str(),
                log::Level::Warning,
                &format!(
                    "denied: {} request from peer_uid={} peer_pid={}",
                    request.name(),
                    peer.uid,
                    pid(&peer)
                ),
            );
            return Response::Failed {
                status: Status::Denied,
                message: "admin requests need root".into(),
            }
            .into();
        }
        let response = match request {
            Request::Verify { user, otp } => {
                let start = Instant::now();
                let outcome = self.verify(&peer, &user, &otp).await;
                return self.verdict(&user, &outcome, &peer, start);
            }
            Request::HasUser { user } => {
                let status = if peer.uid == 0 {
                    self.has_user(&peer, &user)
                } else {
                    let this = Arc::clone(self);
                    blocking(move || this.has_user(&peer, &user)).await
                };
                Response::Verdict { status }
            }
            Request::Status => self.status_info().await,
            Request::Decrypt { otp } => {
                let this = Arc::clone(self);
                self.on_device(move || {
                    let backend = this.backend();
                    let public_id = Otp::parse(&otp)
                        .map(|o| o.public_id().to_string())
                        .unwrap_or_default();
                    let r = ksm::decrypt(&this.store, backend.as_ref(), &otp);
                    if let Err(e) = &r {
                        this.log.debug(&format!("decrypt pubid={public_id}: {e}"));
                    }
                    Response::Decrypted {
                        line: ksm::ksm_line(&r),
                        public_id,
                    }
                })
                .await
            }
            Request::ConsumeOtp { otp } => {
                let start = Instant::now();
                let this = Arc::clone(self);
                let checked = self.on_device(move || this.decode(&otp)).await;
                let outcome = match checked {
                    Ok(d) => self.commit(d).await,
                    Err(o) => o,
                };
                let audit = self.audit("consume", "-", &outcome, &peer, start.elapsed());
                return Handled {
                    response: Response::Consumed {
                        status: outcome.status,
                        public_id: outcome.public_id.map(|p| p.to_string()).unwrap_or_default(),
                        counter: outcome.counters.map_or(0, |c| c.counter()),
                        session_use: outcome.counters.map_or(0, |c| c.session_use()),
                    },
                    audit: Some(audit),
                };
            }
            Request::WrapSecrets {
                key_handle,
                nonce,
                secrets,
            } => {
                let this = Arc::clone(self);
                self.on_device(move || {
                    let sec = YubiKeySecrets::from_plaintext(&secrets);
                    match this
                        .backend()
                        .wrap_secrets(KeyHandle(key_handle), &Nonce(nonce), &sec)
                    {
                        Ok(YubiKeyAead(aead)) => Response::Wrapped { aead },
                        Err(e) => Response::Failed {
                            status: Status::BackendError,
                            message: e.to_string(),
                        },
                    }
                })
                .await
            }
            Request::CheckAead {
                key_handle,
                nonce,
                aead,
            } => {
                let this = Arc::clone(self);
                self.on_device(move || {
                    // Opening the AEAD is the check; a token of zeros then
                    // fails as an OTP (or, once in 2^128, decodes), either
                    // way after the AEAD authenticated.
                    let token = Token::from_bytes([0; 16]);
                    let status = match this.backend().decode_otp(
                        KeyHandle(key_handle),
                        &Nonce(nonce),
                        &YubiKeyAead(aead),
                        &token,
                    ) {
                        Ok(_) | Err(BackendError::OtpInvalid) => Status::Ok,
                        Err(BackendError::AeadInvalid { .. }) => Status::BadOtp,
                        Err(e) => {
                            return Response::Failed {
                                status: Status::BackendError,
                                message: e.to_string(),
                            };
                        }
                    };
                    Response::Verdict { status }
                })
                .await
            }
            Request::HsmUnlock { master_key, otp } => self.hsm_unlock(master_key, otp, &peer).await,
            Request::CountersExport => match self.db.export().await {
                Ok(records) => Response::Counters { records },
                Err(e) => self.failed(&e.to_string()),
            },
            Request::CountersReset {
                public_id,
                aeads,
                reason,
            } => self.counters_reset(&public_id, aeads, &reason, &peer).await,
            Request::CountersMerge { records } => {
                if let Some(bad) = records
                    .iter()
                    .find(|r| PublicId::parse(&r.public_id).is_err())
                {
                    return Response::Failed {
                        status: Status::BadOtp,
                        message: format!("{:?} is not a public id", escape(&bad.public_id)),
                    }
                    .into();
                }
                let n = records.len();
                match self.db.merge(records).await {
                    Ok(m) => {
                        self.log.info(&format!(
                            "counters merge: {n} records, {} raised, {} unchanged, peer_pid={}",
                            m.raised,
                            m.unchanged,
                            pid(&peer)
                        ));
                        Response::Merged {
                            raised: m.raised,
                            unchanged: m.unchanged,
                        }
                    }
                    Err(e) => self.failed(&e.to_string()),
                }
            }
        };
        response.into()
    }

    /// Runs backend work off the event loop: on the device's thread when
    /// the backend is a device (one exchange at a time, in order), else on
    /// the blocking pool.
    async fn on_device<T: Send + 'static + FailClosed>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let Some(device) = &self.device else {
            return blocking(f).await;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        device.run(move || {
            let _ = tx.send(f());
        });
        rx.await.unwrap_or_else(|_| T::fail_closed())
    }

    /// Waits for the device's queue to empty (shutdown), at most `limit`.
    pub fn drain_device(&self, limit: Duration) {
        if let Some(device) = &self.device
            && !device.drain(limit)
        {
            self.log.warn(&format!(
                "shutdown: the YubiHSM's queue did not empty within {limit:?}"
            ));
        }
    }

    /// `ykadmin hsm unlock`: hands the secrets to the backend, the master
    /// key first. Neither is kept or logged.
    async fn hsm_unlock(
        self: &Arc<Self>,
        master_key: zeroize::Zeroizing<Vec<u8>>,
        otp: zeroize::Zeroizing<String>,
        peer: &Peer,
    ) -> Response {
        if master_key.is_empty() && otp.is_empty() {
            return Response::Failed {
                status: Status::BackendError,
                message: "nothing to unlock with: give the master key, an admin OTP, or both"
                    .into(),
            };
        }
        let admin = if otp.is_empty() {
            None
        } else {
            match Otp::parse(&otp) {
                Ok(o) => Some(o),
                Err(e) => {
                    return Response::Failed {
                        status: Status::BadOtp,
                        message: format!("the admin OTP is not a Yubico OTP: {e}"),
                    };
                }
            }
        };
        let admin_id = admin.as_ref().map(|o| o.public_id().to_string());
        let mut secrets = Vec::new();
        if !master_key.is_empty() {
            secrets.push(Unlock::MasterKey(master_key));
        }
        if let Some(o) = admin {
            secrets.push(Unlock::AdminOtp(o));
        }
        let this = Arc::clone(self);
        let result = self
            .on_device(move || {
                let backend = this.backend();
                for secret in &secrets {
                    if let Err(e) = backend.unlock(secret) {
                        return Response::Failed {
                            status: Status::BackendError,
                            message: e.to_string(),
                        };
                    }
                }
                Response::Verdict { status: Status::Ok }
            })
            .await;
        let what = match &admin_id {
            Some(id) => format!("admin OTP pubid={id}"),
            None => "master key".to_owned(),
        };
        match &result {
            Response::Verdict { .. } => self.log.info(&format!(
                "hsm unlock: done ({what}), peer_pid={}",
                pid(peer)
            )),
            Response::Failed { message, .. } => self.log.warn(&format!(
                "hsm unlock ({what}), peer_pid={}: {message}",
                pid(peer)
            )),
            _ => {}
        }
        result
    }

    /// `ykadmin counters reset` (and `import-ykksm --force` of another
    /// secret): the key's next generation, bound to `aeads`, or with none
    /// given to every AEAD the store holds for it now. Written to the log
    /// like a verification.
    async fn counters_reset(
        self: &Arc<Self>,
        public_id: &str,
        aeads: Vec<[u8; ykhsm_proto::message::FINGERPRINT_LEN]>,
        reason: &str,
        peer: &Peer,
    ) -> Response {
        let id = match PublicId::parse(public_id) {
            Ok(id) if !id.is_empty() => id,
            _ => {
                return Response::Failed {
                    status: Status::BadOtp,
                    message: format!("{:?} is not a public id", escape(public_id)),
                };
            }
        };
        let aeads = if aeads.is_empty() {
            let this = Arc::clone(self);
            let id_c = id.clone();
            match blocking(move || this.current_aeads(&id_c)).await {
                Ok(found) => found,
                Err(response) => return response,
            }
        } else {
            aeads
        };
        match self.db.reset(id.to_string(), aeads).await {
            Ok(r) => {
                self.log.info(&format!(
                    "counters-reset pubid={id} generation={} aeads={} reason=\"{}\" peer_uid={} peer_pid={}",
                    r.generation,
                    r.aeads,
                    escape(reason),
                    peer.uid,
                    pid(peer)
                ));
                Response::Reset {
                    generation: r.generation,
                    aeads: r.aeads,
                }
            }
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// The fingerprints of every AEAD the store holds for `id`, one per
    /// configured key handle that has one. None, or one that cannot be
    /// read, refuses the reset.
    fn current_aeads(
        &self,
        id: &PublicId,
    ) -> Result<Vec<[u8; ykhsm_proto::message::FINGERPRINT_LEN]>, Response> {
        let mut found = Vec::new();
        for kh in &self.config.key_handles {
            let store = self.config.aead_store(vec![kh.clone()]);
            match store.lookup(id) {
                Ok(Some(a)) => found.push(a.fingerprint()),
                Ok(None) => {}
                Err(e) => {
                    return Err(Response::Failed {
                        status: Status::BackendError,
                        message: format!("{e}; nothing was reset"),
                    });
                }
            }
        }
        if found.is_empty() {
            return Err(Response::Failed {
                status: Status::NoSuchKey,
                message: format!(
                    "no AEAD for {id} under any configured key handle in {}: import the key's new secret first (a reset binds the key to the AEADs it finds); nothing was reset",
                    self.config.aead_dir.display()
                ),
            });
        }
        Ok(found)
    }

    /// Writes an audit line from [`Handled::audit`].
    pub fn write_audit(&self, line: &str) {
        self.log.info(line);
    }

    fn failed(&self, message: &str) -> Response {
        self.log.error(message);
        Response::Failed {
            status: Status::BackendError,
            message: message.to_owned(),
        }
    }

    /// Checks 0–7 of interface.md for a login, on this thread and without
    /// the event loop: the checks here, then the commit here too unless one
    /// is running (then this login joins the next batch and this returns at
    /// once). `done` gets the answer and its audit line on the thread that
    /// committed. For root's requests: a non-root peer's user name needs a
    /// passwd lookup, which may block (use [`Service::handle`]).
    pub fn verify_here(
        self: &Arc<Self>,
        peer: Peer,
        user: &str,
        otp: &str,
        here: bool,
        done: impl FnOnce(Handled) + Send + 'static,
    ) {
        let start = Instant::now();
        let pending = match self.precheck(&peer, user, otp) {
            Ok(p) => p,
            Err(outcome) => return done(self.verdict(user, &outcome, &peer, start)),
        };
        let this = Arc::clone(self);
        let user = user.to_owned();
        let queued = Instant::now();
        let finish = move |here: bool| match this.decode_in_time(&pending, queued) {
            Err(outcome) => done(this.verdict(&user, &outcome, &peer, start)),
            Ok(d) => {
                let (key, presented, settling) = d.into_parts();
                let svc = Arc::clone(&this);
                this.db.accept_here(
                    key,
                    presented,
                    here,
                    Box::new(move |r| {
                        let outcome = svc.settle(settling, r);
                        done(svc.verdict(&user, &outcome, &peer, start));
                    }),
                );
            }
        };
        match &self.device {
            // The device's thread decodes; the commit thread commits, so
            // the device goes on to the next OTP. If the queue is gone (the
            // daemon is stopping), the job is dropped, and with it the
            // connection: the client fails closed.
            Some(device) => device.run(move || finish(false)),
            None => finish(here),
        }
    }

    /// The answer to a verify and its audit line.
    fn verdict(&self, user: &str, outcome: &Outcome, peer: &Peer, start: Instant) -> Handled {
        Handled {
            response: Response::Verdict {
                status: outcome.status,
            },
            audit: Some(self.audit("verify", user, outcome, peer, start.elapsed())),
        }
    }

    /// Checks 0–7 of interface.md for a login.
    async fn verify(self: &Arc<Self>, peer: &Peer, user: &str, otp: &str) -> Outcome {
        // Root's checks are a few microseconds of CPU and local file reads
        // (and an NSS lookup for a name not in the authfile, see
        // `user_keys`): done in place, which saves two thread hand-offs per
        // login. Other peers always need a passwd lookup (NSS may block): on
        // the blocking pool.
        let prechecked = if peer.uid == 0 {
            self.precheck(peer, user, otp)
        } else {
            let this = Arc::clone(self);
            let (peer_c, user_c, otp_c) = (
                *peer,
                user.to_owned(),
                zeroize::Zeroizing::new(otp.to_owned()),
            );
            blocking(move || this.precheck(&peer_c, &user_c, &otp_c)).await
        };
        let decoded = match prechecked {
            Ok(pending) => self.decode_queued(pending).await,
            Err(outcome) => Err(outcome),
        };
        match decoded {
            Ok(decoded) => self.commit(decoded).await,
            Err(outcome) => outcome,
        }
    }

    /// Check 5 for the event loop: on the device's thread when there is
    /// one (the loop goes on meanwhile), else here (microseconds of AES).
    async fn decode_queued(self: &Arc<Self>, pending: Pending) -> Result<Decoded, Outcome> {
        if self.device.is_none() {
            return self.decode_pending(&pending);
        }
        let this = Arc::clone(self);
        let queued = Instant::now();
        self.on_device(move || this.decode_in_time(&pending, queued))
            .await
    }

    /// Check 5 for a login queued for the device at `queued`. One that
    /// waited longer than `client_timeout` (the device hung, and logins
    /// piled up behind it) is answered `BACKEND_ERROR` without asking the
    /// device: its client has given up or is about to, so the device's time
    /// goes to the logins still waiting, and the OTP stays unused.
    fn decode_in_time(&self, pending: &Pending, queued: Instant) -> Result<Decoded, Outcome> {
        let waited = queued.elapsed();
        if waited > self.config.client_timeout {
            self.log.warn(&format!(
                "pubid={}: waited {} ms for the YubiHSM (client_timeout_ms {}); answered BACKEND_ERROR without asking it",
                pending.otp.public_id(),
                waited.as_millis(),
                self.config.client_timeout.as_millis()
            ));
            return Err(Outcome::for_key(
                Status::BackendError,
                pending.otp.public_id(),
            ));
        }
        self.decode_pending(pending)
    }

    /// Checks 0–4, which need no device: may ask, authfile, OTP form, key
    /// on the user's line, AEAD file.
    fn precheck(&self, peer: &Peer, user: &str, otp: &str) -> Result<Pending, Outcome> {
        let asked = self.may_ask(peer, user).map_err(Outcome::status)?;
        let keys = self.user_keys(user, asked).map_err(Outcome::status)?;
        let parsed = Otp::parse(otp).map_err(|_| Outcome::status(Status::BadOtp))?;
        let public_id = parsed.public_id();
        if !keys.contains(public_id) {
            return Err(Outcome::for_key(Status::NotAuthorized, public_id));
        }
        let found = self
            .find_aead(public_id)
            .map_err(|status| Outcome::for_key(status, public_id))?;
        Ok(Pending { otp: parsed, found })
    }

    /// Check 5 on what passed checks 0–4.
    fn decode_pending(&self, p: &Pending) -> Result<Decoded, Outcome> {
        self.decode_found(&p.otp, &p.found)
            .map_err(|status| Outcome::for_key(status, p.otp.public_id()))
    }

    /// Checks 2, 4, 5 without the authfile (enrollment by OTP).
    fn decode(&self, otp: &str) -> Result<Decoded, Outcome> {
        let parsed = Otp::parse(otp).map_err(|_| Outcome::status(Status::BadOtp))?;
        let found = self
            .find_aead(parsed.public_id())
            .map_err(|status| Outcome::for_key(status, parsed.public_id()))?;
        self.decode_pending(&Pending { otp: parsed, found })
    }

    /// Check 4: the key's AEAD file.
    fn find_aead(&self, public_id: &PublicId) -> Result<StoredAead, Status> {
        match self.store.lookup(public_id) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(Status::NoSuchKey),
            Err(e) => {
                self.log_store_error(public_id, &e);
                Err(Status::BackendError)
            }
        }
    }

    /// Check 5: the backend decodes the OTP with its AEAD.
    fn decode_found(&self, otp: &Otp, found: &StoredAead) -> Result<Decoded, Status> {
        let public_id = otp.public_id();
        let counters = match self.backend().decode_otp(
            found.key_handle,
            &found.nonce,
            &found.aead,
            otp.token(),
        ) {
            Ok(c) => c,
            Err(e) if e.is_bad_otp() => {
                self.log.debug(&format!("pubid={public_id}: {e}"));
                return Err(Status::BadOtp);
            }
            Err(e) => {
                self.log_backend_error(public_id, &found.path, &e);
                return Err(Status::BackendError);
            }
        };
        Ok(Decoded {
            public_id: public_id.clone(),
            key: CounterKey {
                public_id: public_id.to_string(),
                aead: found.fingerprint(),
            },
            counters,
            path: found.path.clone(),
        })
    }

    /// Checks 6 and 7: fresh, and durably committed.
    async fn commit(&self, d: Decoded) -> Outcome {
        let (key, presented, settling) = d.into_parts();
        let r = self.db.accept(key, presented).await;
        self.settle(settling, r)
    }

    /// The outcome of a check-and-set.
    fn settle(&self, settling: Settling, r: Result<Accept, DbError>) -> Outcome {
        let Settling {
            public_id,
            pair,
            path,
        } = settling;
        let status = match r {
            Ok(Accept::Fresh) => {
                if pair.is_exhausted() {
                    self.log.warn(&format!(
                        "key {public_id} has reached counter 0x7fff and session use 255: no later OTP can be accepted; reprogram it"
                    ));
                }
                Status::Ok
            }
            Ok(Accept::Replayed) => Status::ReplayedOtp,
            Ok(Accept::Unbound { generation }) => {
                self.log.error(&format!(
                    "pubid={public_id}: AEAD {} is not one the key's counter generation {generation} was started for (by a reset); it may hold the retired secret. Bring the AEAD store up to date, or, if this file holds the key's current secret, run `ykadmin counters reset {public_id}` here",
                    path.display()
                ));
                Status::BackendError
            }
            Err(e) => {
                self.log.error(&e.to_string());
                Status::BackendError
            }
        };
        Outcome {
            status,
            public_id: Some(public_id),
            counters: Some(pair),
        }
    }

    /// Whether `user` has a line in the authfile under any of its names
    /// (and `peer` may ask): `OK`, or the word check 0 or 1 gives.
    pub fn has_user(&self, peer: &Peer, user: &str) -> Status {
        match self
            .may_ask(peer, user)
            .and_then(|asked| self.user_keys(user, asked))
        {
            Ok(_) => Status::Ok,
            Err(status) => status,
        }
    }

    fn report_authfile(&self, parsed: &crate::authfile::Parsed) {
        for p in &parsed.problems {
            let who = p.user.as_deref().map(escape).unwrap_or_else(|| "-".into());
            let msg = format!(
                "authfile {} line {}: {} (user {who}{})",
                self.authfile.path().display(),
                p.line,
                p.reason,
                if p.fails_closed { ": fails closed" } else { "" }
            );
            if p.fails_closed {
                self.log.error(&msg);
            } else {
                self.log.warn(&msg);
            }
        }
    }

    /// A refused AEAD (unreadable, malformed, filed under another public
    /// id, or on a path that is not root's alone): the path and the reason
    /// are in the error.
    fn log_store_error(&self, public_id: &PublicId, e: &StoreError) {
        self.log
            .error(&format!("AEAD store, pubid={public_id}: {e}"));
    }

    fn log_backend_error(&self, public_id: &PublicId, path: &std::path::Path, e: &BackendError) {
        self.log.error(&format!(
            "backend, pubid={public_id} (AEAD {}): {e}",
            path.display()
        ));
    }

    /// Counts the answer and formats its audit line.
    fn audit(&self, what: &str, user: &str, o: &Outcome, peer: &Peer, took: Duration) -> String {
        self.answered[usize::from(o.status.code())].fetch_add(1, Ordering::Relaxed);
        let pubid = o
            .public_id
            .as_ref()
            .map_or_else(|| "-".to_owned(), PublicId::to_string);
        let counters = o.counters.map_or_else(
            || "counter=- session_use=-".to_owned(),
            |c| format!("counter={} session_use={}", c.counter(), c.session_use()),
        );
        format!(
            "{what} user={} pubid={pubid} status={} {counters} peer_uid={} peer_pid={} duration_us={}",
            log::user(user),
            o.status,
            peer.uid,
            pid(peer),
            took.as_micros()
        )
    }

    /// `Status`: the parts' health and the numbers. Backend and file
    /// checks run off the event loop (on the device's thread for a YubiHSM,
    /// like every exchange with it); the database is asked through its
    /// queue, so a stuck database shows as an error, not a hang.
    async fn status_info(self: &Arc<Self>) -> Response {
        let this = Arc::clone(self);
        let mut report = self.on_device(move || this.status_items()).await;
        let (health, detail) = match self.db.export().await {
            Ok(r) => {
                report.database.keys = Some(u64::try_from(r.len()).unwrap_or(u64::MAX));
                (
                    Health::Ok,
                    format!("{} ({} keys seen)", self.db.path().display(), r.len()),
                )
            }
            Err(e) => (Health::Error, e.to_string()),
        };
        report.checks.push(Check {
            part: Part::Database,
            health,
            detail,
        });
        Response::StatusInfo {
            report: Box::new(report),
        }
    }

    /// Everything of the status report but the database's row count.
    fn status_items(&self) -> StatusReport {
        let mut checks = Vec::new();
        let mut check = |part: Part, r: Result<String, String>| {
            let (health, detail) = match r {
                Ok(d) => (Health::Ok, d),
                Err(d) => (Health::Error, d),
            };
            checks.push(Check {
                part,
                health,
                detail,
            });
        };
        let (backend, backend_path) = match &self.config.backend {
            BackendConfig::Soft { keys_file } => (BackendKind::Soft, keys_file),
            BackendConfig::Yubihsm { device } => (BackendKind::Yubihsm, device),
        };
        let b = self.backend();
        if let Some(health) = b.health() {
            check(Part::Device, health.map_err(|e| e.to_string()));
        }
        for kh in &self.config.key_handles {
            let state = b
                .check_key_handle(kh.value(), Purpose::OtpDecode)
                .map(|()| "usable".to_owned())
                .map_err(|e| e.to_string());
            check(Part::KeyHandle(kh.spelled().to_owned()), state);
        }
        let dir = self.config.aead_dir.display();
        check(
            Part::AeadDir,
            std::fs::read_dir(&self.config.aead_dir)
                .map(|_| format!("{dir} readable"))
                .map_err(|e| format!("{dir}: {e}")),
        );
        let mut authfile = AuthfileStats::default();
        match self.authfile.current() {
            Ok(c) => {
                let failing = c.parsed.problems.iter().filter(|p| p.fails_closed).count();
                authfile = AuthfileStats {
                    users: u64::try_from(c.parsed.users().len()).unwrap_or(u64::MAX),
                    lines_failing_closed: u64::try_from(failing).unwrap_or(u64::MAX),
                };
                checks.push(Check {
                    part: Part::Authfile,
                    // Those users are refused until it is fixed; everyone
                    // else logs in.
                    health: if failing > 0 {
                        Health::Warning
                    } else {
                        Health::Ok
                    },
                    detail: format!(
                        "{} ({} users, {failing} lines failing closed)",
                        self.authfile.path().display(),
                        authfile.users
                    ),
                });
            }
            Err(e) => checks.push(Check {
                part: Part::Authfile,
                health: Health::Error,
                detail: e.to_string(),
            }),
        }
        // The file and its write-ahead log: what the counters take on disk.
        let size = |suffix: &str| {
            let mut path = self.db.path().as_os_str().to_owned();
            path.push(suffix);
            std::fs::metadata(path).map_or(0, |m| m.len())
        };
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            config: self.config.path.display().to_string(),
            socket: self.config.socket.display().to_string(),
            backend,
            backend_path: backend_path.display().to_string(),
            checks,
            authfile,
            database: DatabaseStats {
                path: self.db.path().display().to_string(),
                keys: None,
                file_bytes: size(""),
                wal_bytes: size("-wal"),
                last_commit: self.db.last_commit(),
            },
            log: self.log.stats(),
            answers: ALL_STATUS
                .iter()
                .map(|&s| {
                    (
                        s,
                        self.answered[usize::from(s.code())].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}

fn pid(peer: &Peer) -> String {
    peer.pid.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

/// Runs file, NSS and backend work off the async workers. If the blocking
/// pool itself fails, the answer is the fail-closed one the closure's type
/// allows: `BACKEND_ERROR`.
async fn blocking<T: Send + 'static + FailClosed>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| T::fail_closed())
}

/// The value that means "could not decide" for a result type.
trait FailClosed {
    fn fail_closed() -> Self;
}

impl FailClosed for Status {
    fn fail_closed() -> Self {
        Status::BackendError
    }
}

impl FailClosed for Response {
    fn fail_closed() -> Self {
        Response::Failed {
            status: Status::BackendError,
            message: "internal error".into(),
        }
    }
}

impl FailClosed for StatusReport {
    fn fail_closed() -> Self {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            checks: vec![Check {
                part: Part::Daemon,
                health: Health::Error,
                detail: "internal error: the status task failed".into(),
            }],
            ..StatusReport::default()
        }
    }
}

impl<T> FailClosed for Result<T, Response> {
    fn fail_closed() -> Self {
        Err(Response::fail_closed())
    }
}

impl<T> FailClosed for Result<T, Outcome> {
    fn fail_closed() -> Self {
        Err(Outcome::status(Status::BackendError))
    }
}
