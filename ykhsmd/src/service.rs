//! What the daemon answers, transport-free: the server hands in a decoded
//! request and the peer's credentials, and gets the answer and its audit
//! line. [`Service::handle`] dispatches every request; the checks of a
//! login are in [`crate::login`], the admin requests in [`crate::admin`],
//! the status report in [`crate::report`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ykhsm_core::backend::Backend;
use ykhsm_core::store::AeadStore;
use ykhsm_proto::{Request, Response};

use crate::admin;
use crate::audit::{self, Audit, Audited};
use crate::authfile::Authfile;
use crate::config::Config;

use crate::db::{Busy, Committer, Db};
use crate::device::DeviceQueue;
use crate::error::{Error, status_of};
use crate::log::{self, Log};
use crate::login::{Ask, Outcome};
use crate::report::{self, Answers};

/// Who is asking, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid of the peer process.
    pub uid: u32,
    /// Its pid, when the kernel gives one.
    pub pid: Option<i32>,
}

/// An answer, and the audit line to write once it is sent.
#[derive(Debug)]
pub struct Handled {
    /// The answer.
    pub response: Response,
    /// The audit line (verifications only).
    pub audit: Option<Audit>,
}

impl From<Response> for Handled {
    fn from(response: Response) -> Self {
        Self {
            response,
            audit: None,
        }
    }
}

/// The daemon's state: what every request reads, and the counters of what
/// it answered.
pub struct Service {
    pub(crate) config: Config,
    pub(crate) log: Arc<Log>,
    pub(crate) authfile: Authfile,
    pub(crate) store: AeadStore,
    /// Replaced whole on SIGHUP (keys.json re-read).
    backend: RwLock<Arc<dyn Backend>>,
    /// The device's own thread, when the backend is a device.
    pub(crate) device: Option<DeviceQueue>,
    pub(crate) db: Db,
    pub(crate) started: Instant,
    pub(crate) answered: Answers,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Builds the service from the parts start-up loaded; starts the
    /// device's thread if the backend is a device.
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
            answered: Answers::default(),
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

    /// Whether the backend is a device, with its own thread.
    pub fn has_device(&self) -> bool {
        self.device.is_some()
    }

    /// The backend in use now.
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `backend` in place of the one in use (SIGHUP re-read
    /// keys.json); requests already running finish with the old one.
    pub fn replace_backend(&self, backend: Arc<dyn Backend>) {
        *self.backend.write().unwrap_or_else(|p| p.into_inner()) = backend;
    }

    /// Answers one request from `peer` on the event loop. The audit line,
    /// if any, is for the caller to write once the answer is on its way.
    pub async fn handle(self: &Arc<Self>, peer: Peer, request: Request) -> Handled {
        if request.is_admin() && peer.uid != 0 {
            let denied = Error::AdminNeedsRoot;
            self.log.refusal(
                peer.uid,
                status_of(&denied).as_str(),
                log::Level::Warning,
                &format!(
                    "denied: {} request from peer_uid={} peer_pid={}",
                    request.name(),
                    peer.uid,
                    audit::pid(&peer)
                ),
            );
            return denied.to_response().into();
        }
        let response = match request {
            Request::Verify { user, otp } => {
                return self.answer_later(peer, Ask::Verify { user, otp }).await;
            }
            Request::HasUser { user } => {
                return self.answer_later(peer, Ask::HasUser { user }).await;
            }
            Request::ConsumeOtp { otp } => {
                return self.answer_later(peer, Ask::Consume { otp }).await;
            }
            Request::Status => report::status(self).await,
            Request::Decrypt { otp } => admin::decrypt(self, otp).await,
            Request::WrapSecrets {
                key_handle,
                nonce,
                secrets,
            } => admin::wrap_secrets(self, key_handle, nonce, secrets).await,
            Request::CheckAead {
                key_handle,
                nonce,
                aead,
            } => admin::check_aead(self, key_handle, nonce, aead).await,
            Request::HsmUnlock { master_key, otp } => {
                admin::hsm_unlock(self, master_key, otp, &peer).await
            }
            Request::CountersExport => admin::counters_export(self).await,
            Request::CountersMerge { records } => admin::counters_merge(self, records, &peer).await,
            Request::CountersReset {
                public_id,
                aeads,
                reason,
            } => admin::counters_reset(self, &public_id, aeads, &reason, &peer).await,
        };
        response.into()
    }

    /// Answers `ask`, read from `peer` at `start`, through the login
    /// pipeline ([`Service::check`]) on this thread, the commit as
    /// `committer` says; `reply` gets the answer and its audit line on the
    /// thread that finished (see [`Service::check`]). Root's logins on an
    /// acceptor thread come here directly, without the event loop.
    pub fn answer(
        self: &Arc<Self>,
        peer: Peer,
        ask: &Ask,
        start: Instant,
        committer: Committer,
        reply: impl FnOnce(Handled) + Send + 'static,
    ) {
        let to = Answer::to(ask);
        let this = Arc::clone(self);
        self.check(&peer, ask, committer, move |outcome| {
            reply(this.handled(to, &outcome, &peer, start.elapsed()));
        });
    }

    /// [`Service::answer`] for the event loop, which never waits on NSS,
    /// a file's lock or the disk: root's checks run in place (a few
    /// microseconds of CPU and local file reads, and an NSS lookup only for
    /// a name not in the authfile: two thread hand-offs saved), other
    /// peers' on the blocking pool (their name always needs NSS, which may
    /// block); the commit thread commits.
    async fn answer_later(self: &Arc<Self>, peer: Peer, ask: Ask) -> Handled {
        let start = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fail_closed = Answer::to(&ask).fail_closed();
        let this = Arc::clone(self);
        let run = move || {
            let committer = Committer::CommitThread(Busy::EventLoop);
            this.answer(peer, &ask, start, committer, move |handled| {
                let _ = tx.send(handled);
            });
        };
        if peer.uid == 0 {
            run();
        } else {
            let _ = tokio::task::spawn_blocking(run).await;
        }
        // No answer: a thread on the way panicked (or the daemon is
        // stopping and dropped the job).
        rx.await.unwrap_or_else(|_| {
            self.log.error(&format!(
                "peer_uid={}: a check stopped without an answer; answered BACKEND_ERROR",
                peer.uid
            ));
            fail_closed.into()
        })
    }

    /// The answer to an [`Ask`] that came to `outcome`, and its audit line;
    /// the answer counted for the status report.
    fn handled(&self, to: Answer, outcome: &Outcome, peer: &Peer, took: Duration) -> Handled {
        let audit = |what: Audited, user: &str| {
            self.answered.count(outcome.status);
            Some(Audit::new(what, user, outcome, peer, took))
        };
        let status = outcome.status;
        match to {
            Answer::HasUser => Response::Verdict { status }.into(),
            Answer::Verify { user } => Handled {
                response: Response::Verdict { status },
                audit: audit(Audited::Verify, &user),
            },
            Answer::Consume => Handled {
                response: Response::Consumed {
                    status,
                    public_id: outcome
                        .public_id
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    counter: outcome.counters.map_or(0, |c| c.counter()),
                    session_use: outcome.counters.map_or(0, |c| c.session_use()),
                },
                audit: audit(Audited::Consume, "-"),
            },
        }
    }

    /// Runs backend work off the event loop: on the device's thread when
    /// the backend is a device (one exchange at a time, in order), else on
    /// the blocking pool.
    pub(crate) async fn on_device<T: Send + 'static + FailClosed>(
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

    /// Runs file and NSS work off the event loop, on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static + FailClosed>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        blocking(f).await
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
}

/// Which answer an [`Ask`] gets, with what its audit line needs.
enum Answer {
    /// `Verdict`, no audit line.
    HasUser,
    /// `Verdict` and an audit line naming the user.
    Verify { user: String },
    /// `Consumed` and an audit line with no user.
    Consume,
}

impl Answer {
    fn to(ask: &Ask) -> Self {
        match ask {
            Ask::HasUser { .. } => Self::HasUser,
            Ask::Verify { user, .. } => Self::Verify { user: user.clone() },
            Ask::Consume { .. } => Self::Consume,
        }
    }

    /// The answer when no outcome came: `BACKEND_ERROR`, in the shape the
    /// client expects.
    fn fail_closed(&self) -> Response {
        let status = status_of(&Error::Internal);
        match self {
            Self::HasUser | Self::Verify { .. } => Response::Verdict { status },
            Self::Consume => Response::Consumed {
                status,
                public_id: String::new(),
                counter: 0,
                session_use: 0,
            },
        }
    }
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
pub(crate) trait FailClosed {
    fn fail_closed() -> Self;
}

impl FailClosed for Response {
    fn fail_closed() -> Self {
        Error::Internal.to_response()
    }
}

impl<T> FailClosed for Result<T, Error> {
    fn fail_closed() -> Self {
        Err(Error::Internal)
    }
}
