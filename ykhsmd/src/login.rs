//! The login pipeline: the checks of a login, in the order of the table
//! below, for every caller — a root login on an acceptor thread, another
//! uid's on the event loop, `HasUser` (steps 0 and 1), `ConsumeOtp`
//! (ykadmin enroll with an OTP: no user, steps 2 and 4–7) and `ykadmin
//! verify`. [`Service::check`] runs them; the first that fails gives the
//! answer ([`crate::error::status_of`]).
//!
//! | # | check | word on failure |
//! |---|---|---|
//! | 0 | the asking process may ask for this user | `DENIED` |
//! | 1 | the authfile is readable and has a line for the user | `NO_KEYS_FOR_USER`, `UNKNOWN_USER`; `BACKEND_ERROR` |
//! | 2 | the OTP is well formed | `BAD_OTP` |
//! | 3 | its public id is on the user's line | `NOT_AUTHORIZED` |
//! | 4 | an AEAD exists for it under a configured key handle | `NO_SUCH_KEY`; `BACKEND_ERROR` |
//! | 5 | the backend decodes it (AEAD, CRC, uid) | `BAD_OTP`; `BACKEND_ERROR` |
//! | 6 | its (counter, session use) is above the last accepted pair | `REPLAYED_OTP`; `BACKEND_ERROR` |
//! | 7 | the new pair is durably committed | `BACKEND_ERROR` |
//!
//! Steps 0–4 run on the caller's thread. Step 5 runs there too, or on the
//! YubiHSM's own thread when the backend is one ([`crate::device`]), so
//! nothing that needs no device waits behind it. Steps 6 and 7 are one
//! check-and-set in the counter database, committed by the thread the
//! caller's [`Committer`] names, or with the next batch ([`crate::db`]).
//! Whoever commits hands the outcome on; nothing is answered before the
//! commit it depends on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ykhsm_core::counters::Counters;
use ykhsm_core::otp::{Otp, OtpCounters, PublicId};
use ykhsm_core::store::StoredAead;
use ykhsm_proto::Status;
use zeroize::Zeroizing;

use crate::authfile::{Account, Lookup, Parsed};
use crate::db::{Accept, Busy, Committer, CounterKey, DbError, Presented};
use crate::error::{Error, status_of};
use crate::log::{self, escape};
use crate::service::{Peer, Service};

/// What a caller asks of the pipeline, which says which steps run.
pub enum Ask {
    /// `HasUser`: steps 0 and 1 (may the peer ask, and has the user a line).
    HasUser {
        /// The user name.
        user: String,
    },
    /// `Verify`, a login (PAM, `ykadmin verify`): steps 0–7.
    Verify {
        /// The user name.
        user: String,
        /// The OTP as typed.
        otp: Zeroizing<String>,
    },
    /// `ConsumeOtp` (`ykadmin enroll` with an OTP): an OTP with no user,
    /// before it is on any line: steps 2 and 4–7.
    Consume {
        /// The OTP as typed.
        otp: Zeroizing<String>,
    },
}

impl std::fmt::Debug for Ask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HasUser { user } => write!(f, "HasUser {{ user: {user:?} }}"),
            Self::Verify { user, .. } => write!(f, "Verify {{ user: {user:?}, otp: <redacted> }}"),
            Self::Consume { .. } => f.write_str("Consume { otp: <redacted> }"),
        }
    }
}

impl Ask {
    /// The user steps 0 and 1 are about (none for `ConsumeOtp`).
    fn user(&self) -> Option<&str> {
        match self {
            Self::HasUser { user } | Self::Verify { user, .. } => Some(user),
            Self::Consume { .. } => None,
        }
    }

    /// The OTP steps 2–7 are about (none for `HasUser`).
    fn otp(&self) -> Option<&str> {
        match self {
            Self::Verify { otp, .. } | Self::Consume { otp } => Some(otp),
            Self::HasUser { .. } => None,
        }
    }

    /// How long the OTP may wait for the YubiHSM's thread. A login whose
    /// wait passed `client_timeout` (the device hung, and logins piled up
    /// behind it) is refused without asking the device: its client has
    /// given up or is about to, so the device's time goes to the logins
    /// still waiting, and the OTP stays unused. `ykadmin enroll` waits as
    /// long as its own deadline lets it.
    fn device_wait(&self, client_timeout: Duration) -> Option<Duration> {
        match self {
            Self::Verify { .. } => Some(client_timeout),
            Self::HasUser { .. } | Self::Consume { .. } => None,
        }
    }
}

/// How a check ended, for the answer and the audit line.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The word.
    pub status: Status,
    /// The key, once the OTP was read (step 2).
    pub public_id: Option<PublicId>,
    /// Its counters, once the backend decoded it (step 5).
    pub counters: Option<Counters>,
    /// With a fleet, what the fleet's store said (step 6).
    pub fleet: Option<FleetWord>,
}

/// What the fleet's counter store said about a login, for its audit line
/// (`fleet=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetWord {
    /// The store raised the key's row: accepted fleet-wide.
    Ok,
    /// The store could not be reached; decided on this host's counters
    /// (`offline = "local"`; counted in the replay window).
    Offline,
    /// The store held the OTP's counters or higher ones.
    Replayed,
    /// The store could not be reached; refused (`offline = "deny"`).
    Down,
}

impl FleetWord {
    /// The audit line's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Offline => "offline",
            Self::Replayed => "replayed",
            Self::Down => "down",
        }
    }

    /// The word for a check-and-set's outcome, if the fleet had a say.
    fn of(r: &Result<Accept, DbError>, with_fleet: bool) -> Option<Self> {
        match r {
            Ok(Accept::Fresh) if with_fleet => Some(Self::Ok),
            Ok(Accept::Offline) => Some(Self::Offline),
            Ok(Accept::Lost) => Some(Self::Replayed),
            Ok(Accept::FleetDown) => Some(Self::Down),
            Ok(Accept::Fresh | Accept::Replayed | Accept::Unbound { .. }) | Err(_) => None,
        }
    }
}

impl Outcome {
    /// Steps 0 and 1 passed, and nothing more was asked (`HasUser`).
    fn user_known() -> Self {
        Self {
            status: Status::Ok,
            public_id: None,
            counters: None,
            fleet: None,
        }
    }

    /// A refusal before the OTP was read, or (`public_id`) after.
    fn refused(e: &Error, public_id: Option<&PublicId>) -> Self {
        Self {
            status: status_of(e),
            public_id: public_id.cloned(),
            counters: None,
            fleet: None,
        }
    }
}

/// What passed step 5: the counter row and the pair to check-and-set.
struct Decoded {
    public_id: PublicId,
    key: CounterKey,
    counters: OtpCounters,
    /// The AEAD file that decoded it, for the log.
    path: PathBuf,
}

/// An OTP queued for the YubiHSM's thread: when, and how long it may wait.
#[derive(Clone, Copy)]
struct Queued {
    at: Instant,
    limit: Option<Duration>,
}

impl Service {
    /// Steps 0–4, which need no device: what step 5 decodes with (`None`
    /// when `ask` stops at step 1), or the refusal of the first that
    /// fails.
    fn check_until_device(
        &self,
        peer: &Peer,
        ask: &Ask,
    ) -> Result<Option<(Otp, StoredAead)>, Outcome> {
        let refused = |e: Error| Outcome::refused(&e, None);
        // `ConsumeOtp` has no user: it skips steps 0, 1 and 3.
        let keys = match ask.user() {
            None => None,
            Some(user) => {
                // 0. The peer may ask for this user.
                let asked = self.may_ask(peer, user).map_err(refused)?;
                // 1. The authfile is readable and has a line for the user.
                Some(self.user_keys(user, asked).map_err(refused)?)
            }
        };
        // `HasUser` stops here.
        let Some(typed) = ask.otp() else {
            return Ok(None);
        };
        // 2. The OTP is well formed.
        let otp = Otp::parse(typed).map_err(|e| refused(Error::MalformedOtp(e)))?;
        let id = otp.public_id();
        // 3. Its public id is on the user's line.
        if keys.is_some_and(|keys| !keys.contains(id)) {
            return Err(Outcome::refused(&Error::NotAuthorized, Some(id)));
        }
        // 4. An AEAD exists for it under a configured key handle.
        let aead = self
            .find_aead(id)
            .map_err(|e| Outcome::refused(&e, Some(id)))?;
        Ok(Some((otp, aead)))
    }

    /// Runs the checks `ask` asks for, in the table's order, and hands
    /// `done` the outcome: on this thread if a check before step 5 fails or
    /// nothing more was asked, else on the thread that committed (or that
    /// refused the OTP after the device).
    ///
    /// Steps 0–4 run on this thread, and may block on NSS for a name not
    /// in the authfile: callers for uids other than root run this on the
    /// blocking pool, never on the event loop.
    pub fn check(
        self: &Arc<Self>,
        peer: &Peer,
        ask: &Ask,
        committer: Committer,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) {
        let (otp, aead) = match self.check_until_device(peer, ask) {
            Ok(Some(found)) => found,
            Ok(None) => return done(Outcome::user_known()),
            Err(refused) => return done(refused),
        };
        let this = Arc::clone(self);
        let rest = move |queued: Option<Queued>, committer: Committer| {
            // 5. The backend decodes it: AEAD, CRC, uid.
            match this.decode(&otp, &aead, queued) {
                // 6. Its counters are above the last accepted pair, and 7.
                // the new pair is committed (fsync) before `done` is called.
                Ok(decoded) => this.commit(decoded, committer, done),
                Err(e) => done(Outcome::refused(&e, Some(otp.public_id()))),
            }
        };
        match &self.device {
            None => rest(None, committer),
            // The device's thread decodes, and hands the commit to the
            // commit thread so as to go on with the next OTP. If its queue
            // is gone (the daemon is stopping), the job is dropped, and
            // with it `done`: the client sees its connection close.
            Some(device) => {
                let queued = Queued {
                    at: Instant::now(),
                    limit: ask.device_wait(self.config.client_timeout),
                };
                device.run(move || rest(Some(queued), Committer::CommitThread(Busy::Device)));
            }
        }
    }

    /// Step 0: may `peer` ask about `user`? Root may ask for anyone. Any
    /// other uid only for a name the system (NSS) resolves to that uid —
    /// its own name or an alias of it (`ALICE`, `alice@corp` with sssd); a
    /// name NSS does not know, or cannot resolve now, is nobody's own.
    /// `Ok` carries NSS's answer when it was asked, for step 1.
    fn may_ask(&self, peer: &Peer, user: &str) -> Result<Option<Account>, Error> {
        if peer.uid == 0 {
            return Ok(None);
        }
        match Account::lookup(user) {
            account @ Account::Known { uid, .. } if uid == peer.uid => Ok(Some(account)),
            Account::Known { .. } | Account::Unknown | Account::Failed(_) => Err(Error::Denied),
        }
    }

    /// Step 1: the user's keys in the authfile, found under every name
    /// the system gives the user (see [`crate::authfile`]). Who `user` is:
    /// `asked` when step 0 asked NSS; else what NSS said when the file was
    /// parsed, if a line names `user` as written (no NSS call on the login
    /// path for the names in the file); else NSS now, also on root's
    /// acceptor thread: sshd has just looked the same name up, so sssd's
    /// caches answer (measured with the files backend: about 6 µs for a
    /// known name, 65 µs for an unknown one where nss-systemd is asked
    /// too; see docs/architecture.md).
    fn user_keys(&self, user: &str, asked: Option<Account>) -> Result<Vec<PublicId>, Error> {
        let current = match self.authfile.current() {
            Ok(c) => c,
            Err(e) => {
                self.log.error(&format!("authfile: {e}"));
                return Err(Error::Authfile(e));
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
            Lookup::NoLine => Err(Error::NoKeysForUser),
            Lookup::UnknownUser => Err(Error::UnknownUser),
            Lookup::Broken => {
                self.log.debug(&format!(
                    "authfile {}: a line for user {} cannot be read; failing closed",
                    self.authfile.path().display(),
                    log::user(user)
                ));
                Err(Error::UnreadableLine)
            }
            Lookup::Unresolved => {
                let why = match &account {
                    Account::Failed(why) => {
                        format!("the system's user database (NSS) failed: {why}")
                    }
                    Account::Known { .. } | Account::Unknown => {
                        "NSS could not resolve a user name of the authfile when it was read"
                            .to_owned()
                    }
                };
                self.log.warn(&format!(
                    "user {}: cannot tell whether a line of {} is theirs ({why}); failing closed",
                    log::user(user),
                    self.authfile.path().display()
                ));
                Err(Error::Unresolved)
            }
        }
    }

    /// The problems of an authfile just (re)read, once.
    fn report_authfile(&self, parsed: &Parsed) {
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

    /// Step 4: the key's AEAD file. One that is refused (unreadable,
    /// malformed, filed under another public id, or on a path that is not
    /// root's alone) is logged with its path and the reason.
    pub(crate) fn find_aead(&self, public_id: &PublicId) -> Result<StoredAead, Error> {
        match self.store.lookup(public_id) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(Error::NoSuchKey),
            Err(e) => {
                self.log
                    .error(&format!("AEAD store, pubid={public_id}: {e}"));
                Err(Error::Store(e))
            }
        }
    }

    /// Step 5: the backend decodes the OTP with its AEAD — unless it
    /// waited for the device longer than it may ([`Ask::device_wait`]).
    fn decode(
        &self,
        otp: &Otp,
        found: &StoredAead,
        queued: Option<Queued>,
    ) -> Result<Decoded, Error> {
        let public_id = otp.public_id();
        if let Some(Queued {
            at,
            limit: Some(limit),
        }) = queued
        {
            let waited = at.elapsed();
            if waited > limit {
                self.log.warn(&format!(
                    "pubid={public_id}: waited {} ms for the YubiHSM (client_timeout_ms {}); answered BACKEND_ERROR without asking it",
                    waited.as_millis(),
                    limit.as_millis()
                ));
                return Err(Error::DeviceBacklog { waited });
            }
        }
        let counters = self
            .backend()
            .decode_otp(found.key_handle, &found.nonce, &found.aead, otp.token())
            .map_err(|e| {
                if e.is_bad_otp() {
                    self.log.debug(&format!("pubid={public_id}: {e}"));
                } else {
                    self.log.error(&format!(
                        "backend, pubid={public_id} (AEAD {}): {e}",
                        found.path.display()
                    ));
                }
                Error::Decode(e)
            })?;
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

    /// Steps 6 and 7: the check-and-set, on this thread or the commit
    /// thread as `committer` says; `done` gets the outcome on the thread
    /// that committed, after the commit.
    fn commit(
        self: &Arc<Self>,
        d: Decoded,
        committer: Committer,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) {
        let pair = d.counters.counters();
        let presented = Presented {
            counters: pair,
            ts_high: d.counters.ts_high,
            ts_low: d.counters.ts_low,
        };
        let this = Arc::clone(self);
        let (public_id, path) = (d.public_id, d.path);
        self.db.accept(
            d.key,
            presented,
            committer,
            Box::new(move |r| {
                let fleet = FleetWord::of(&r, this.db.fleet().is_some());
                let status = match this.settled(&public_id, pair, &path, r) {
                    Ok(()) => Status::Ok,
                    Err(e) => status_of(&e),
                };
                done(Outcome {
                    status,
                    public_id: Some(public_id),
                    counters: Some(pair),
                    fleet,
                });
            }),
        );
    }

    /// What a check-and-set of `pair` for `public_id` (decoded with the
    /// AEAD at `path`) came to, logged as the operator needs it.
    fn settled(
        &self,
        public_id: &PublicId,
        pair: Counters,
        path: &std::path::Path,
        r: Result<Accept, DbError>,
    ) -> Result<(), Error> {
        match r {
            Ok(Accept::Fresh | Accept::Offline) => {
                if pair.is_exhausted() {
                    self.log.warn(&format!(
                        "key {public_id} has reached counter 0x7fff and session use 255: no later OTP can be accepted; reprogram it"
                    ));
                }
                Ok(())
            }
            Ok(Accept::Replayed) => Err(Error::Replayed),
            Ok(Accept::Lost) => Err(Error::ReplayedInFleet),
            Ok(Accept::FleetDown) => Err(Error::FleetDown),
            Ok(Accept::Unbound { generation }) => {
                self.log.error(&format!(
                    "pubid={public_id}: AEAD {} is not one the key's counter generation {generation} was started for (by a reset); it may hold the retired secret. Bring the AEAD store up to date, or, if this file holds the key's current secret, run `ykadmin counters reset {public_id}` here",
                    path.display()
                ));
                Err(Error::Unbound { generation })
            }
            Err(e) => {
                self.log.error(&e.to_string());
                Err(Error::Db(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which steps each request runs: `HasUser` no OTP, `ConsumeOtp` no
    /// user, and only a login is refused for waiting on the device.
    #[test]
    fn each_request_asks_for_its_steps() {
        let otp = || Zeroizing::new("x".to_owned());
        let t = Duration::from_secs(5);
        let has = Ask::HasUser { user: "a".into() };
        assert_eq!(
            (has.user(), has.otp(), has.device_wait(t)),
            (Some("a"), None, None)
        );
        let verify = Ask::Verify {
            user: "a".into(),
            otp: otp(),
        };
        assert_eq!(
            (verify.user(), verify.otp(), verify.device_wait(t)),
            (Some("a"), Some("x"), Some(t))
        );
        let consume = Ask::Consume { otp: otp() };
        assert_eq!(
            (consume.user(), consume.otp(), consume.device_wait(t)),
            (None, Some("x"), None)
        );
    }
}
