//! The whole decrypt of an OTP, store lookup then backend, answered the way
//! Yubico's YK-KSM (`ykksm-decrypt.php`) answers, so an operator can diff
//! `ykadmin decrypt` against the old KSM during a migration
//! (docs/migrating.md). Decrypting does not consume the OTP.

use thiserror::Error;

use crate::backend::{Backend, BackendError};
use crate::otp::{Otp, OtpCounters, OtpError, PublicId};
use crate::store::{AeadStore, StoreError};

/// Why an OTP did not decrypt.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// Not an OTP.
    #[error("{0}")]
    Format(#[from] OtpError),
    /// No AEAD for the public id under any configured key handle.
    #[error("no AEAD for public id {0} under any configured key handle")]
    UnknownPublicId(PublicId),
    /// The AEAD file could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Looks up the OTP's AEAD and has the backend decode it.
pub fn decrypt(
    store: &AeadStore,
    backend: &dyn Backend,
    typed: &str,
) -> Result<(PublicId, OtpCounters), DecryptError> {
    let otp = Otp::parse(typed)?;
    let Some(found) = store.lookup(otp.public_id())? else {
        return Err(DecryptError::UnknownPublicId(otp.public_id().clone()));
    };
    let counters = backend.decode_otp(found.key_handle, &found.nonce, &found.aead, otp.token())?;
    Ok((otp.public_id().clone(), counters))
}

/// YK-KSM's one-line answer (without the newline) for a decrypt result:
/// `OK counter=… low=… high=… use=…`, or its `ERR` lines.
pub fn ksm_line(result: &Result<(PublicId, OtpCounters), DecryptError>) -> String {
    match result {
        Ok((_, c)) => c.ksm_answer(),
        Err(DecryptError::Format(OtpError::Empty)) => "ERR No OTP provided".into(),
        Err(DecryptError::Format(_)) => "ERR Invalid OTP format".into(),
        Err(DecryptError::UnknownPublicId(_)) => "ERR Unknown yubikey".into(),
        Err(DecryptError::Backend(e)) if e.is_bad_otp() => "ERR Corrupt OTP".into(),
        Err(DecryptError::Backend(_) | DecryptError::Store(_)) => "ERR Database error".into(),
    }
}
