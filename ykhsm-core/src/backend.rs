//! The one interface the daemon uses to turn AEADs and OTPs into counters,
//! whatever holds the key-handle keys.
//!
//! It is shaped after the YubiHSM 1's `YSM_AEAD_YUBIKEY_OTP_DECODE` (see
//! docs/architecture.md, "Why the Backend trait looks the way it does"): OTP
//! decode takes the AEAD, its key handle and nonce and the 16 ciphertext
//! bytes, and answers with the counters only — the YubiKey's AES key never
//! leaves the backend.
//! [`SoftBackend`] does the same with pyhsm's keys.json, the way pyhsm's
//! `SoftYHSM` does.

use std::error::Error as StdError;
use std::path::PathBuf;

use thiserror::Error;

use crate::aead::{AeadError, Nonce, YubiKeyAead};
use crate::keyhandle::KeyHandle;
use crate::keys_file::KeysFile;
use crate::otp::{Otp, OtpCounters, Token, YubiKeySecrets};

/// What a key handle is to be used for (a YubiHSM key handle carries a
/// permission flag per command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Decoding OTPs with AEADs (`YSM_AEAD_YUBIKEY_OTP_DECODE`).
    OtpDecode,
    /// Making AEADs from YubiKey secrets (`YSM_(BUFFER_)AEAD_GENERATE`).
    AeadGenerate,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OtpDecode => "OTP decode (YSM_AEAD_YUBIKEY_OTP_DECODE)",
            Self::AeadGenerate => "AEAD generate (YSM_BUFFER_AEAD_GENERATE)",
        })
    }
}

/// Why a backend refused or failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// CRC or uid wrong (`YSM_OTP_INVALID`, 0x83).
    #[error("the OTP is not valid for this key (CRC or private id mismatch)")]
    OtpInvalid,
    /// The AEAD does not authenticate (`YSM_AEAD_INVALID`, 0x82).
    #[error("the AEAD does not authenticate under key handle {key_handle}")]
    AeadInvalid {
        /// The key handle tried.
        key_handle: KeyHandle,
    },
    /// No such key handle (`YSM_KEY_HANDLE_INVALID`, 0x81; or not in keys.json).
    #[error("key handle {key_handle} is not known to the backend")]
    UnknownKeyHandle {
        /// The key handle.
        key_handle: KeyHandle,
    },
    /// The key handle lacks the permission for this command (0x89).
    #[error("key handle {key_handle} lacks the permission for {purpose} (YSM_FUNCTION_DISABLED)")]
    NotPermitted {
        /// The key handle.
        key_handle: KeyHandle,
        /// What it was to be used for.
        purpose: Purpose,
    },
    /// The backend cannot make AEADs from these inputs.
    #[error("cannot make the AEAD: {0}")]
    Aead(AeadError),
    /// The key store of the YubiHSM at this path is locked
    /// (`YSM_KEY_STORAGE_LOCKED`, 0x8a): nothing that uses a key handle
    /// works until it is unlocked.
    #[error(
        "YubiHSM {}: the key store is locked (YSM_KEY_STORAGE_LOCKED); unlock it with `ykadmin hsm unlock`",
        .0.display()
    )]
    Locked(PathBuf),
    /// An unlock secret was refused (wrong key, replayed or wrong OTP): why,
    /// and the device's answer.
    #[error("unlock refused: {0}")]
    UnlockRefused(UnlockRefusal),
    /// Anything else: the backend cannot answer (device gone, busy, timed
    /// out, a bad answer, nothing to unlock).
    #[error("backend failure: {0}")]
    Failure(FailureCause),
}

/// What [`BackendError::Failure`] carries: the cause, kept whole so that a
/// caller can tell one failure from another (and its `Display`, the
/// operator's message, names the device and the problem).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FailureCause {
    /// `unlock` on a backend with no key store (the soft backend).
    #[error("this backend has no key store to unlock (only backend = \"yubihsm\" has)")]
    NoKeyStore,
    /// The device's driver failed; its own error, whose `Display` names the
    /// device, the command and what went wrong. For a YubiHSM it is an
    /// `ykhsm_yubihsm::HsmError` (`downcast_ref` gets it back): that crate
    /// depends on this one, not the other way round.
    #[error(transparent)]
    Device(Box<dyn StdError + Send + Sync + 'static>),
}

/// What [`BackendError::UnlockRefused`] carries: why the device refused the
/// secret, and its answer (for a YubiHSM an `ykhsm_yubihsm::HsmError` naming
/// the device, the command and the status). Shown as `answer (reason)`.
#[derive(Debug, Error)]
#[error("{cause} ({reason})")]
pub struct UnlockRefusal {
    /// Why, in the unlock secret's terms.
    pub reason: RefusalReason,
    /// The device's answer.
    pub cause: Box<dyn StdError + Send + Sync + 'static>,
}

/// Why an unlock secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Not the key store's master key (`YSM_MISMATCH`).
    #[error("wrong master key")]
    WrongMasterKey,
    /// The admin OTP's counters are not above the last one the device
    /// accepted (`YSM_OTP_REPLAY`).
    #[error("the admin OTP was used before")]
    AdminOtpReplayed,
    /// The admin OTP does not decode under the admin YubiKey's key
    /// (`YSM_OTP_INVALID`).
    #[error("the OTP does not decode under the admin key")]
    AdminOtpInvalid,
    /// The OTP's public id is not an admin YubiKey of the device
    /// (`YSM_ID_NOT_FOUND`).
    #[error("that public id is not an admin YubiKey of this HSM")]
    NotAnAdminKey,
    /// The secret cannot be put in the device's command (a master key over
    /// 32 bytes, an admin public id that is not 6 bytes).
    #[error("the secret does not fit the device's unlock command")]
    SecretDoesNotFit,
}

impl BackendError {
    /// Whether this means "the OTP is bad" (`BAD_OTP`) rather than "the
    /// backend is broken" (`BACKEND_ERROR`): a failing AEAD and a failing
    /// OTP are alike (docs/protocol.md, "The order of the checks", check 5):
    /// either way the OTP does not decrypt for this key.
    pub fn is_bad_otp(&self) -> bool {
        match self {
            Self::OtpInvalid | Self::AeadInvalid { .. } => true,
            Self::UnknownKeyHandle { .. }
            | Self::NotPermitted { .. }
            | Self::Aead(_)
            | Self::Locked(_)
            | Self::UnlockRefused(_)
            | Self::Failure(_) => false,
        }
    }
}

/// A secret that unlocks a locked YubiHSM: the key
/// store's master key (`YSM_KEY_STORE_DECRYPT` on firmware 1.0+, the
/// password of `YSM_KEY_STORAGE_UNLOCK` on 0.9.x), or an OTP of the admin
/// YubiKey stored in the device (`YSM_HSM_UNLOCK`). Never stored; wiped on
/// drop.
pub enum Unlock {
    /// The master key (1.0+: up to 32 bytes) or password (0.9.x: up to 16).
    MasterKey(zeroize::Zeroizing<Vec<u8>>),
    /// An OTP of the admin YubiKey.
    AdminOtp(Otp),
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MasterKey(_) => f.write_str("MasterKey(<redacted>)"),
            Self::AdminOtp(_) => f.write_str("AdminOtp(<redacted>)"),
        }
    }
}

/// What the daemon asks of whatever holds the key-handle keys.
pub trait Backend: Send + Sync {
    /// Opens the AEAD under `key_handle` and `nonce`, decrypts the token with
    /// the YubiKey key inside, checks CRC and uid, and returns the counters.
    fn decode_otp(
        &self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        aead: &YubiKeyAead,
        token: &Token,
    ) -> Result<OtpCounters, BackendError>;

    /// Seals a YubiKey's secrets into an AEAD under `key_handle` and `nonce`.
    fn wrap_secrets(
        &self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        secrets: &YubiKeySecrets,
    ) -> Result<YubiKeyAead, BackendError>;

    /// Whether `key_handle` exists and may be used for `purpose`.
    fn check_key_handle(&self, key_handle: KeyHandle, purpose: Purpose)
    -> Result<(), BackendError>;

    /// Whether each request waits on a device (a YubiHSM answers one
    /// request at a time, in milliseconds): the daemon then queues the
    /// device's work on a thread of its own, so that nothing which needs no
    /// device waits behind it.
    fn is_device(&self) -> bool {
        false
    }

    /// The device's state for `status` and `--check` (`None`: not a
    /// device). Opens the device if needed.
    fn health(&self) -> Option<Result<String, BackendError>> {
        None
    }

    /// Unlocks the key store with `secret`. A backend with nothing to
    /// unlock says so.
    fn unlock(&self, secret: &Unlock) -> Result<(), BackendError> {
        let _ = secret;
        Err(BackendError::Failure(FailureCause::NoKeyStore))
    }
}

/// The soft HSM: key-handle keys from pyhsm's keys.json, in memory.
#[derive(Debug)]
pub struct SoftBackend {
    keys: KeysFile,
}

impl SoftBackend {
    /// A backend over a loaded keys.json.
    pub fn new(keys: KeysFile) -> Self {
        Self { keys }
    }

    /// The keys it holds.
    pub fn keys(&self) -> &KeysFile {
        &self.keys
    }

    fn key(&self, key_handle: KeyHandle) -> Result<&crate::aead::KeyHandleKey, BackendError> {
        self.keys
            .get(key_handle)
            .ok_or(BackendError::UnknownKeyHandle { key_handle })
    }
}

impl Backend for SoftBackend {
    fn decode_otp(
        &self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        aead: &YubiKeyAead,
        token: &Token,
    ) -> Result<OtpCounters, BackendError> {
        let key = self.key(key_handle)?;
        let secrets = aead.open(key, key_handle, nonce).map_err(|e| match e {
            AeadError::Integrity => BackendError::AeadInvalid { key_handle },
            other => BackendError::Aead(other),
        })?;
        secrets.decode(token).map_err(|_| BackendError::OtpInvalid)
    }

    fn wrap_secrets(
        &self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        secrets: &YubiKeySecrets,
    ) -> Result<YubiKeyAead, BackendError> {
        let key = self.key(key_handle)?;
        YubiKeyAead::seal(key, key_handle, nonce, secrets).map_err(BackendError::Aead)
    }

    fn check_key_handle(
        &self,
        key_handle: KeyHandle,
        _purpose: Purpose,
    ) -> Result<(), BackendError> {
        self.key(key_handle).map(|_| ())
    }
}
