//! [`YubiHsmBackend`]: the [`Backend`] the daemon calls with
//! `backend = "yubihsm"`, on a [`YubiHsm`] it opens (and reopens) itself.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ykhsm_core::aead::{Nonce, YubiKeyAead};
use ykhsm_core::backend::{
    Backend, BackendError, FailureCause, Purpose, RefusalReason, Unlock, UnlockRefusal,
};
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::otp::{OtpCounters, Token, YubiKeySecrets};

use crate::device::YubiHsm;
use crate::error::HsmError;
use crate::wire::{self, PUBLIC_ID_SIZE, Status, SystemInfo};

/// A [`Backend`] on a YubiHSM 1. Requests are serialised through a mutex. When
/// the device disappears, the port is dropped and the next request reopens
/// it, so an unplugged-and-replugged device recovers by itself.
#[derive(Debug)]
pub struct YubiHsmBackend {
    path: PathBuf,
    timeout: Duration,
    hsm: Mutex<Option<YubiHsm>>,
}

impl YubiHsmBackend {
    /// A backend on the device at `path`, opened now (errors if it cannot be).
    pub fn open(path: &Path, timeout: Duration) -> Result<Self, HsmError> {
        let hsm = YubiHsm::open(path, timeout)?;
        Ok(Self {
            path: path.to_owned(),
            timeout,
            hsm: Mutex::new(Some(hsm)),
        })
    }

    /// A backend on the device at `path`, opened on the first request.
    pub fn new_lazy(path: &Path, timeout: Duration) -> Self {
        Self {
            path: path.to_owned(),
            timeout,
            hsm: Mutex::new(None),
        }
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the device is open now.
    pub fn is_connected(&self) -> bool {
        self.lock().is_some()
    }

    /// The device's system info (opening it if needed), for `status`/`--check`.
    pub fn system_info(&self) -> Result<SystemInfo, HsmError> {
        self.with_hsm(YubiHsm::system_info)
    }

    /// Runs `f` on the open device (opening it first if needed). A
    /// [`HsmError::Gone`] drops the port so the next call reopens it.
    pub fn with_hsm<T>(
        &self,
        f: impl FnOnce(&mut YubiHsm) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut guard = self.lock();
        let hsm = match guard.as_mut() {
            Some(hsm) => hsm,
            None => guard.insert(YubiHsm::open(&self.path, self.timeout)?),
        };
        let result = f(hsm);
        if let Err(e) = &result
            && e.is_gone()
        {
            *guard = None;
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<YubiHsm>> {
        // A panic mid-exchange leaves the link out of step; drop the port.
        self.hsm.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        })
    }
}

/// A device error as the backend's failure, kept whole.
fn failure(e: HsmError) -> BackendError {
    BackendError::Failure(FailureCause::Device(Box::new(e)))
}

/// Maps a device error to what the daemon answers: 0x82/0x83 are a bad OTP
/// (0x83: CRC or uid wrong; 0x82: the AEAD does not authenticate — no
/// recording shows which status a device gives for a failed tag, so both
/// count, as a soft HSM's failed CCM tag does); 0x81 and 0x89 are named;
/// 0x8a is the locked key store of this device; everything else is a
/// failure carrying the error, which names the device, the command and the
/// status.
fn to_backend_error(e: HsmError, key_handle: KeyHandle, purpose: Purpose) -> BackendError {
    match e.status() {
        Some(Status::KeyStorageLocked) => match e {
            HsmError::Status { path, .. } => BackendError::Locked(path),
            other => failure(other),
        },
        Some(Status::OtpInvalid) => BackendError::OtpInvalid,
        Some(Status::AeadInvalid) => BackendError::AeadInvalid { key_handle },
        Some(Status::KeyHandleInvalid) => BackendError::UnknownKeyHandle { key_handle },
        Some(Status::FunctionDisabled) => BackendError::NotPermitted {
            key_handle,
            purpose,
        },
        _ => failure(e),
    }
}

/// Maps an unlock's device error: a status that refuses the secret, or a
/// secret the command cannot carry, is [`BackendError::UnlockRefused`] with
/// its reason; anything else (device gone, timeout) is a failure.
fn to_unlock_error(e: HsmError) -> BackendError {
    let reason = match (&e, e.status()) {
        (_, Some(Status::Mismatch)) => RefusalReason::WrongMasterKey,
        (_, Some(Status::OtpReplay)) => RefusalReason::AdminOtpReplayed,
        (_, Some(Status::OtpInvalid)) => RefusalReason::AdminOtpInvalid,
        (_, Some(Status::IdNotFound)) => RefusalReason::NotAnAdminKey,
        (HsmError::AdminPublicIdLength { .. } | HsmError::Encode { .. }, _) => {
            RefusalReason::SecretDoesNotFit
        }
        _ => return failure(e),
    };
    BackendError::UnlockRefused(UnlockRefusal {
        reason,
        cause: Box::new(e),
    })
}

/// A nonce used only to probe a key handle's AEAD-generate permission.
const PROBE_NONCE: Nonce = Nonce([0xff; 6]);

impl Backend for YubiHsmBackend {
    fn decode_otp(
        &self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        aead: &YubiKeyAead,
        token: &Token,
    ) -> Result<OtpCounters, BackendError> {
        self.with_hsm(|hsm| hsm.otp_decode(key_handle, nonce, aead, token))
            .map_err(|e| to_backend_error(e, key_handle, Purpose::OtpDecode))
    }

    fn wrap_secrets(
        &self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        secrets: &YubiKeySecrets,
    ) -> Result<YubiKeyAead, BackendError> {
        let plaintext = secrets.to_plaintext();
        let answer = self
            .with_hsm(|hsm| hsm.buffer_aead_generate(key_handle, nonce, &plaintext[..]))
            .map_err(|e| to_backend_error(e, key_handle, Purpose::AeadGenerate))?;
        YubiKeyAead::from_slice(&answer.aead).ok_or_else(|| {
            failure(HsmError::AeadLength {
                path: self.path.clone(),
                len: answer.aead.len(),
            })
        })
    }

    fn is_device(&self) -> bool {
        true
    }

    fn health(&self) -> Option<Result<String, BackendError>> {
        Some(
            self.system_info()
                .map(|info| format!("{}: {info}", self.path.display()))
                .map_err(failure),
        )
    }

    /// The master key goes to `YSM_KEY_STORE_DECRYPT` on firmware 1.0 and
    /// later, to `YSM_KEY_STORAGE_UNLOCK` on 0.9.x (as pyhsm's
    /// `yhsm-keystore-unlock` does); an admin OTP to `YSM_HSM_UNLOCK`.
    fn unlock(&self, secret: &Unlock) -> Result<(), BackendError> {
        self.with_hsm(|hsm| match secret {
            Unlock::MasterKey(key) if hsm.info().major == 0 => hsm.key_storage_unlock(key),
            Unlock::MasterKey(key) => hsm.key_store_decrypt(key),
            Unlock::AdminOtp(otp) => {
                let bytes = otp.public_id().to_bytes();
                let public_id =
                    <[u8; PUBLIC_ID_SIZE]>::try_from(bytes.as_slice()).map_err(|_| {
                        HsmError::AdminPublicIdLength {
                            path: hsm.path().to_owned(),
                            len: bytes.len(),
                        }
                    })?;
                hsm.hsm_unlock(public_id, otp.token())
            }
        })
        .map_err(to_unlock_error)
    }

    /// The YubiHSM 1 has no query for a key handle's flags, so this probes:
    /// an OTP decode with an all-zero AEAD (a bad AEAD or OTP answer means
    /// the key handle exists and may decode), or a buffer AEAD generate of
    /// zeros with a user nonce.
    fn check_key_handle(
        &self,
        key_handle: KeyHandle,
        purpose: Purpose,
    ) -> Result<(), BackendError> {
        let result = match purpose {
            Purpose::OtpDecode => self
                .with_hsm(|hsm| {
                    hsm.otp_decode(
                        key_handle,
                        &Nonce([0; 6]),
                        &YubiKeyAead([0; wire::YUBIKEY_AEAD_SIZE]),
                        &Token::from_bytes([0; 16]),
                    )
                })
                .map(|_| ()),
            Purpose::AeadGenerate => self
                .with_hsm(|hsm| {
                    hsm.buffer_aead_generate(
                        key_handle,
                        &PROBE_NONCE,
                        &[0; YubiKeySecrets::PLAINTEXT_LEN],
                    )
                })
                .map(|_| ()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e)
                if purpose == Purpose::OtpDecode
                    && matches!(e.status(), Some(Status::OtpInvalid | Status::AeadInvalid)) =>
            {
                Ok(())
            }
            Err(e) => Err(to_backend_error(e, key_handle, purpose)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Command;
    use crate::wire::cmd;

    fn status(command: u8, status: Status) -> HsmError {
        HsmError::Status {
            path: PathBuf::from("/dev/ttyACM0"),
            command: Command(command),
            status,
        }
    }

    #[test]
    fn device_errors_become_backend_errors_that_keep_their_cause() {
        let kh = KeyHandle(1);
        let locked = to_backend_error(
            status(cmd::AEAD_YUBIKEY_OTP_DECODE, Status::KeyStorageLocked),
            kh,
            Purpose::OtpDecode,
        );
        let BackendError::Locked(path) = &locked else {
            panic!("{locked:?}");
        };
        assert_eq!(path, Path::new("/dev/ttyACM0"));
        assert_eq!(
            locked.to_string(),
            "YubiHSM /dev/ttyACM0: the key store is locked (YSM_KEY_STORAGE_LOCKED); unlock it with `ykadmin hsm unlock`"
        );

        let failed = to_backend_error(
            status(cmd::AEAD_YUBIKEY_OTP_DECODE, Status::MemoryError),
            kh,
            Purpose::OtpDecode,
        );
        let BackendError::Failure(FailureCause::Device(cause)) = &failed else {
            panic!("{failed:?}");
        };
        assert_eq!(
            cause.downcast_ref::<HsmError>().and_then(HsmError::status),
            Some(Status::MemoryError)
        );
        assert_eq!(
            failed.to_string(),
            "backend failure: YubiHSM /dev/ttyACM0: 0x06 YSM_AEAD_YUBIKEY_OTP_DECODE failed: YSM_MEMORY_ERROR (0x88: memory read/write error)"
        );
    }

    #[test]
    fn refused_unlocks_say_why_and_keep_the_device_answer() {
        let refused = to_unlock_error(status(cmd::KEY_STORE_DECRYPT, Status::Mismatch));
        let BackendError::UnlockRefused(refusal) = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(refusal.reason, RefusalReason::WrongMasterKey);
        assert_eq!(
            refusal
                .cause
                .downcast_ref::<HsmError>()
                .and_then(HsmError::status),
            Some(Status::Mismatch)
        );
        let shown = refused.to_string();
        assert!(shown.starts_with("unlock refused: YubiHSM /dev/ttyACM0: 0x29 YSM_KEY_STORE_DECRYPT failed: YSM_MISMATCH"), "{shown}");
        assert!(shown.ends_with("(wrong master key)"), "{shown}");

        for (answer, reason) in [
            (Status::OtpReplay, RefusalReason::AdminOtpReplayed),
            (Status::OtpInvalid, RefusalReason::AdminOtpInvalid),
            (Status::IdNotFound, RefusalReason::NotAnAdminKey),
        ] {
            let e = to_unlock_error(status(cmd::HSM_UNLOCK, answer));
            assert!(
                matches!(&e, BackendError::UnlockRefused(r) if r.reason == reason),
                "{e:?}"
            );
        }
        let e = to_unlock_error(HsmError::AdminPublicIdLength {
            path: PathBuf::from("/dev/ttyACM0"),
            len: 4,
        });
        assert!(
            matches!(&e, BackendError::UnlockRefused(r) if r.reason == RefusalReason::SecretDoesNotFit),
            "{e:?}"
        );
        // A device that does not answer has not refused anything.
        let e = to_unlock_error(HsmError::Timeout {
            path: PathBuf::from("/dev/ttyACM0"),
            command: Command(cmd::HSM_UNLOCK),
            timeout: Duration::from_secs(1),
        });
        assert!(
            matches!(&e, BackendError::Failure(FailureCause::Device(_))),
            "{e:?}"
        );
    }
}
