//! Every way the daemon says no, and the one table from each to the status
//! word it answers: [`status_of`], one exhaustive `match`, so a new way to
//! fail cannot be added without deciding its word. The daemon-side twin of
//! the PAM module's status → PAM table (`pam_ykhsm/src/verdict.rs`).
//!
//! A login's refusals come from the steps of [`crate::login`], in the
//! order of its table; the admin requests ([`crate::admin`]) add their own.
//! `Display` is the operator's message: what an admin request's `Failed`
//! answer carries. A login's answer carries only the word; what went wrong
//! is in the daemon's log, written by the step that found it.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use ykhsm_core::backend::BackendError;
use ykhsm_core::otp::{OtpError, PublicId};
use ykhsm_core::store::StoreError;
use ykhsm_proto::{Response, Status};

use crate::db::DbError;
use crate::log::escape;
use ykhsm_core::secure_file::SecureFileError;

/// Why a request was not answered `OK`. Grouped by the step of the login
/// table that gives it (0–7), then the admin requests' own.
#[derive(Debug, Error)]
pub enum Error {
    /// Step 0: a peer other than root asked for a name that is not its own.
    #[error("the asking process may not ask for this user")]
    Denied,
    /// Step 1: the authfile is missing, unreadable, or not root's alone.
    #[error(transparent)]
    Authfile(SecureFileError),
    /// Step 1: the system knows the user; no line names it.
    #[error("the user has no line in the authfile")]
    NoKeysForUser,
    /// Step 1: the system does not know the name, and no line names it.
    #[error("the system does not know the user, and no line of the authfile names it")]
    UnknownUser,
    /// Step 1: a line for the user cannot be read (fails closed).
    #[error("a line of the authfile for the user cannot be read")]
    UnreadableLine,
    /// Step 1: NSS could not say whether a line is the user's (fails
    /// closed).
    #[error("cannot tell whether a line of the authfile is the user's (NSS)")]
    Unresolved,
    /// Step 2: not an OTP.
    #[error("not a Yubico OTP: {0}")]
    MalformedOtp(OtpError),
    /// Step 3: the OTP's public id is not on the user's line.
    #[error("the public id is not on the user's line of the authfile")]
    NotAuthorized,
    /// Step 4: no AEAD for the public id under any configured key handle.
    #[error("no AEAD for the public id under any configured key handle")]
    NoSuchKey,
    /// Step 4: an AEAD file is there but refused (unreadable, malformed,
    /// filed under another public id, not root's alone).
    #[error(transparent)]
    Store(StoreError),
    /// Step 5: the backend refused the OTP (AEAD or OTP invalid) or failed.
    #[error(transparent)]
    Decode(BackendError),
    /// Step 5: the OTP waited for the YubiHSM longer than
    /// `client_timeout_ms`, and was not sent to it.
    #[error("waited {} ms for the YubiHSM; not sent to it", waited.as_millis())]
    DeviceBacklog {
        /// How long it waited.
        waited: Duration,
    },
    /// Step 6: the counters are not above the last accepted pair.
    #[error("the OTP's counters are not above the last accepted pair")]
    Replayed,
    /// Step 6: the key was reset, and the AEAD that decoded the OTP is not
    /// one its generation was started for (it may hold the retired
    /// secret).
    #[error("the AEAD is not one the key's counter generation {generation} was started for")]
    Unbound {
        /// The key's generation.
        generation: u32,
    },
    /// Step 6 with a fleet: the fleet's counter store held this position
    /// or a higher one (another bastion accepted the OTP).
    #[error("the fleet's counter store holds the OTP's counters or higher ones")]
    ReplayedInFleet,
    /// Step 6 with a fleet and `offline = "deny"`: the store could not be
    /// reached.
    #[error("the fleet's counter store cannot be reached, and offline = \"deny\"")]
    FleetDown,
    /// Steps 6 and 7, and the admin requests on the counters: the database
    /// failed (nothing was committed).
    #[error(transparent)]
    Db(DbError),
    /// An admin request from a peer other than root.
    #[error("admin requests need root")]
    AdminNeedsRoot,
    /// A counter record or reset names something that is not a public id.
    #[error("{:?} is not a public id", escape(.0))]
    NotAPublicId(String),
    /// `hsm unlock` with neither secret.
    #[error("nothing to unlock with: give the master key, an admin OTP, or both")]
    NothingToUnlock,
    /// `hsm unlock` with an admin OTP that is not an OTP.
    #[error("the admin OTP is not a Yubico OTP: {0}")]
    AdminOtp(OtpError),
    /// An admin request's backend work failed (wrap, check, unlock): the
    /// backend's word does not judge an OTP here.
    #[error(transparent)]
    Backend(BackendError),
    /// `counters reset` without AEADs named: an AEAD of the key is
    /// refused, so what to bind the new generation to is not known.
    #[error("{0}; nothing was reset")]
    ResetStore(StoreError),
    /// `counters reset` without AEADs named: the store has none for the
    /// key.
    #[error(
        "no AEAD for {public_id} under any configured key handle in {}: import the key's new secret first (a reset binds the key to the AEADs it finds); nothing was reset",
        aead_dir.display()
    )]
    NoAeadToReset {
        /// The key.
        public_id: PublicId,
        /// The store.
        aead_dir: PathBuf,
    },
    /// The task that was to answer stopped without an answer (it
    /// panicked, or the daemon is stopping).
    #[error("internal error")]
    Internal,
}

/// The status word for `e`: the table of the login's checks for steps 0–7,
/// and for the admin requests the word their callers expect. Anything
/// that leaves the daemon unable to decide is `BACKEND_ERROR`, never `OK`.
pub fn status_of(e: &Error) -> Status {
    match e {
        Error::Denied | Error::AdminNeedsRoot => Status::Denied,
        Error::NoKeysForUser => Status::NoKeysForUser,
        Error::UnknownUser => Status::UnknownUser,
        Error::MalformedOtp(_) | Error::AdminOtp(_) | Error::NotAPublicId(_) => Status::BadOtp,
        Error::NotAuthorized => Status::NotAuthorized,
        Error::NoSuchKey | Error::NoAeadToReset { .. } => Status::NoSuchKey,
        // The backend decides, in its own exhaustive match
        // (`BackendError::is_bad_otp`): an AEAD that does not authenticate
        // and an OTP whose CRC or uid is wrong are the OTP's fault.
        Error::Decode(e) if e.is_bad_otp() => Status::BadOtp,
        Error::Replayed | Error::ReplayedInFleet => Status::ReplayedOtp,
        Error::Authfile(_)
        | Error::UnreadableLine
        | Error::Unresolved
        | Error::Store(_)
        | Error::Decode(_)
        | Error::DeviceBacklog { .. }
        | Error::Unbound { .. }
        | Error::FleetDown
        | Error::Db(_)
        | Error::NothingToUnlock
        | Error::Backend(_)
        | Error::ResetStore(_)
        | Error::Internal => Status::BackendError,
    }
}

impl From<&Error> for Status {
    fn from(e: &Error) -> Self {
        status_of(e)
    }
}

impl Error {
    /// The `Failed` answer of an admin request: the word and the message.
    pub fn to_response(&self) -> Response {
        Response::Failed {
            status: status_of(self),
            message: self.to_string(),
        }
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        Self::Db(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ykhsm_core::aead::AeadError;
    use ykhsm_core::backend::{Backend, Purpose, SoftBackend, Unlock};
    use ykhsm_core::keyhandle::KeyHandle;
    use ykhsm_core::keys_file::KeysFile;

    /// A missing authfile, as the daemon finds it (so this test does not
    /// depend on what the error carries).
    fn authfile_error() -> SecureFileError {
        let dir = tempfile::tempdir().unwrap();
        crate::authfile::Authfile::new(dir.path().join("yubikeys"), 0)
            .current()
            .unwrap_err()
    }

    fn otp_error() -> OtpError {
        ykhsm_core::otp::Otp::parse("").unwrap_err()
    }

    fn db_error() -> DbError {
        DbError {
            path: "/var/lib/ykhsm/counters.sqlite".into(),
            kind: crate::db::DbErrorKind::Closed,
        }
    }

    /// A failure the soft backend gives, built by the backend itself (so
    /// this test does not depend on what the variant carries).
    fn backend_failure() -> BackendError {
        let keys = KeysFile::parse(
            "keys.json".as_ref(),
            br#"{"1": "000102030405060708090a0b0c0d0e0f"}"#,
        )
        .unwrap();
        SoftBackend::new(keys)
            .unlock(&Unlock::MasterKey(zeroize::Zeroizing::new(vec![1])))
            .unwrap_err()
    }

    /// Every variant and its word: the error → status table of
    /// docs/architecture.md, row by row.
    #[test]
    fn every_error_has_the_word_of_the_table() {
        let kh = KeyHandle(1);
        let table: Vec<(Error, Status)> = vec![
            (Error::Denied, Status::Denied),
            (Error::Authfile(authfile_error()), Status::BackendError),
            (Error::NoKeysForUser, Status::NoKeysForUser),
            (Error::UnknownUser, Status::UnknownUser),
            (Error::UnreadableLine, Status::BackendError),
            (Error::Unresolved, Status::BackendError),
            (Error::MalformedOtp(otp_error()), Status::BadOtp),
            (Error::NotAuthorized, Status::NotAuthorized),
            (Error::NoSuchKey, Status::NoSuchKey),
            (
                Error::Store(StoreError::EmptyPublicId),
                Status::BackendError,
            ),
            (Error::Decode(BackendError::OtpInvalid), Status::BadOtp),
            (
                Error::Decode(BackendError::AeadInvalid { key_handle: kh }),
                Status::BadOtp,
            ),
            (
                Error::Decode(BackendError::UnknownKeyHandle { key_handle: kh }),
                Status::BackendError,
            ),
            (
                Error::Decode(BackendError::NotPermitted {
                    key_handle: kh,
                    purpose: Purpose::OtpDecode,
                }),
                Status::BackendError,
            ),
            (
                Error::Decode(BackendError::Aead(AeadError::Integrity)),
                Status::BackendError,
            ),
            (Error::Decode(backend_failure()), Status::BackendError),
            (
                Error::DeviceBacklog {
                    waited: Duration::from_secs(6),
                },
                Status::BackendError,
            ),
            (Error::Replayed, Status::ReplayedOtp),
            (Error::Unbound { generation: 1 }, Status::BackendError),
            (Error::Db(db_error()), Status::BackendError),
            (Error::AdminNeedsRoot, Status::Denied),
            (Error::NotAPublicId("x".into()), Status::BadOtp),
            (Error::NothingToUnlock, Status::BackendError),
            (Error::AdminOtp(otp_error()), Status::BadOtp),
            (
                Error::Backend(BackendError::OtpInvalid),
                Status::BackendError,
            ),
            (Error::Backend(backend_failure()), Status::BackendError),
            (
                Error::ResetStore(StoreError::EmptyPublicId),
                Status::BackendError,
            ),
            (
                Error::NoAeadToReset {
                    public_id: PublicId::parse("ccccccdbjrgf").unwrap(),
                    aead_dir: "/var/cache/yubikey-ksm/aeads".into(),
                },
                Status::NoSuchKey,
            ),
            (Error::Internal, Status::BackendError),
        ];
        for (e, word) in &table {
            assert_eq!(status_of(e), *word, "{e:?}");
            assert_eq!(Status::from(e), *word, "{e:?}");
        }
        // No way to fail is `OK`.
        assert!(table.iter().all(|(e, _)| status_of(e) != Status::Ok));
    }
}
