//! The YubiHSM 1 AEAD (pyhsm `soft_hsm.py` `aesCCM`; python-pyhsm's
//! `doc/YubiHSM_if.h` `YSM_CCM_NONCE`): AES-CCM with an 8-byte tag, a 2-byte
//! length field and the 13-byte nonce `key handle (u32 LE) || nonce (6) ||
//! 00 00 00`, under a key handle's AES-128, -192 or -256 key. Because the key
//! handle is inside the nonce, an AEAD opens only under the key handle number
//! it was made for.

use std::fmt;

use aes::{Aes128, Aes192, Aes256};
use ccm::Ccm;
use ccm::aead::array::Array;
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U8, U13};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::keyhandle::KeyHandle;
use crate::otp::{PublicId, YubiKeySecrets};

/// Length of the CCM tag (MAC) at the end of every AEAD.
pub const MAC_LEN: usize = 8;
/// Length of the nonce stored with an AEAD (the public id, usually).
pub const NONCE_LEN: usize = 6;
/// The most plaintext the device's buffer holds.
pub const MAX_PLAINTEXT_LEN: usize = 64;
/// Length of a YubiKey AEAD: 22 bytes of secrets + 8 bytes of MAC.
pub const YUBIKEY_AEAD_LEN: usize = YubiKeySecrets::PLAINTEXT_LEN + MAC_LEN;

/// Why sealing or opening an AEAD failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AeadError {
    /// The tag does not verify: wrong key, key handle, nonce, or altered bytes
    /// (the YubiHSM's `YSM_AEAD_INVALID`).
    #[error("the AEAD does not authenticate (wrong key, key handle or nonce, or altered bytes)")]
    Integrity,
    /// The AEAD is shorter than its MAC or longer than the device allows.
    #[error("the AEAD is {len} bytes; it must be {MAC_LEN} to {} bytes", MAX_PLAINTEXT_LEN + MAC_LEN)]
    BadLength {
        /// Length given.
        len: usize,
    },
    /// More plaintext than the device's 64-byte buffer.
    #[error("plaintext of {len} bytes is more than the {MAX_PLAINTEXT_LEN} bytes an AEAD may hold")]
    PlaintextTooLong {
        /// Length given.
        len: usize,
    },
    /// A public id longer than 12 characters does not fit a 6-byte nonce.
    #[error("public id {public_id} is longer than 6 bytes and cannot be used as an AEAD nonce")]
    PublicIdTooLongForNonce {
        /// The public id.
        public_id: PublicId,
    },
}

/// The 6-byte nonce stored with an AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// The nonce pyhsm derives from a public id: its raw bytes, right-padded
    /// with zeros (`ftftftcccc` → `4d4d4d000000`).
    pub fn from_public_id(public_id: &PublicId) -> Result<Self, AeadError> {
        let bytes = public_id.to_bytes();
        if bytes.len() > NONCE_LEN {
            return Err(AeadError::PublicIdTooLongForNonce {
                public_id: public_id.clone(),
            });
        }
        let mut n = [0u8; NONCE_LEN];
        n[..bytes.len()].copy_from_slice(&bytes);
        Ok(Self(n))
    }

    /// The 13-byte CCM nonce for a key handle.
    pub fn ccm_nonce(&self, key_handle: KeyHandle) -> [u8; 13] {
        let mut n = [0u8; 13];
        n[..4].copy_from_slice(&key_handle.to_le_bytes());
        n[4..10].copy_from_slice(&self.0);
        n
    }
}

/// The AES key behind a key handle: 16, 24 or 32 bytes. Wiped on drop, never
/// printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyHandleKey(Vec<u8>);

impl KeyHandleKey {
    /// Takes a key of 16, 24 or 32 bytes; `None` for any other length (the
    /// input is wiped either way).
    pub fn new(mut bytes: Vec<u8>) -> Option<Self> {
        if matches!(bytes.len(), 16 | 24 | 32) {
            Some(Self(bytes))
        } else {
            bytes.zeroize();
            None
        }
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: keys are 16, 24 or 32 bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for KeyHandleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHandleKey(AES-{}, <redacted>)", self.0.len() * 8)
    }
}

type Ccm128 = Ccm<Aes128, U8, U13>;
type Ccm192 = Ccm<Aes192, U8, U13>;
type Ccm256 = Ccm<Aes256, U8, U13>;

/// Runs `$body` with `$cipher` bound to the CCM instance for the key's size.
macro_rules! with_ccm {
    ($key:expr, $cipher:ident => $body:expr) => {
        match $key.0.len() {
            16 => {
                let $cipher = Ccm128::new_from_slice(&$key.0).map_err(|_| AeadError::Integrity)?;
                $body
            }
            24 => {
                let $cipher = Ccm192::new_from_slice(&$key.0).map_err(|_| AeadError::Integrity)?;
                $body
            }
            _ => {
                let $cipher = Ccm256::new_from_slice(&$key.0).map_err(|_| AeadError::Integrity)?;
                $body
            }
        }
    };
}

/// Makes an AEAD: CTR-encrypted plaintext followed by the 8-byte tag.
pub fn seal(
    key: &KeyHandleKey,
    key_handle: KeyHandle,
    nonce: &Nonce,
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(AeadError::PlaintextTooLong {
            len: plaintext.len(),
        });
    }
    let n13 = Array::from(nonce.ccm_nonce(key_handle));
    // Encrypted in place, with room for the tag so it never reallocates; a
    // wiped buffer while it may still hold plaintext (an error return).
    let mut out = Zeroizing::new(Vec::with_capacity(plaintext.len() + MAC_LEN));
    out.extend_from_slice(plaintext);
    let tag = with_ccm!(key, c => c
        .encrypt_inout_detached(&n13, &[], out.as_mut_slice().into())
        .map_err(|_| AeadError::PlaintextTooLong { len: plaintext.len() })?);
    out.extend_from_slice(&tag);
    // Ciphertext and tag only by now.
    Ok(std::mem::take(&mut *out))
}

/// Opens an AEAD; the plaintext comes back in a buffer wiped on drop.
pub fn open(
    key: &KeyHandleKey,
    key_handle: KeyHandle,
    nonce: &Nonce,
    aead: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    let len = aead.len();
    if !(MAC_LEN..=MAX_PLAINTEXT_LEN + MAC_LEN).contains(&len) {
        return Err(AeadError::BadLength { len });
    }
    let (ct, tag) = aead.split_at(len - MAC_LEN);
    let tag = Array::try_from(tag).map_err(|_| AeadError::BadLength { len })?;
    let n13 = Array::from(nonce.ccm_nonce(key_handle));
    let mut buf = Zeroizing::new(ct.to_vec());
    with_ccm!(key, c => c
        .decrypt_inout_detached(&n13, &[], buf.as_mut_slice().into(), &tag)
        .map_err(|_| AeadError::Integrity)?);
    Ok(buf)
}

/// A YubiKey AEAD: the 22 bytes of [`YubiKeySecrets`] sealed, 30 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct YubiKeyAead(pub [u8; YUBIKEY_AEAD_LEN]);

impl fmt::Debug for YubiKeyAead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("YubiKeyAead(<30 bytes>)")
    }
}

impl YubiKeyAead {
    /// Takes exactly 30 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; YUBIKEY_AEAD_LEN]>::try_from(bytes).ok().map(Self)
    }

    /// Seals a YubiKey's secrets (soft path of `yhsm-import-keys`).
    pub fn seal(
        key: &KeyHandleKey,
        key_handle: KeyHandle,
        nonce: &Nonce,
        secrets: &YubiKeySecrets,
    ) -> Result<Self, AeadError> {
        let sealed = seal(key, key_handle, nonce, &*secrets.to_plaintext())?;
        Self::from_slice(&sealed).ok_or(AeadError::BadLength { len: sealed.len() })
    }

    /// SHA-1 over key handle (u32 LE) ‖ nonce ‖ AEAD: names this AEAD —
    /// and so, under one key handle and nonce, the secret it holds —
    /// without revealing anything of the secret. The counter database binds
    /// a key's generation to the fingerprints of the AEADs it was started
    /// for. The same for a v0 and a v1 file of the same AEAD.
    pub fn fingerprint(&self, key_handle: KeyHandle, nonce: &Nonce) -> [u8; 20] {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(key_handle.to_le_bytes());
        h.update(nonce.0);
        h.update(self.0);
        h.finalize().into()
    }

    /// Opens it back into the secrets.
    pub fn open(
        &self,
        key: &KeyHandleKey,
        key_handle: KeyHandle,
        nonce: &Nonce,
    ) -> Result<YubiKeySecrets, AeadError> {
        let plain = open(key, key_handle, nonce, &self.0)?;
        let plain: &[u8; YubiKeySecrets::PLAINTEXT_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| AeadError::BadLength { len: self.0.len() })?;
        Ok(YubiKeySecrets::from_plaintext(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if `T` wipes itself when dropped.
    fn wiped_on_drop<T: ZeroizeOnDrop>() {}

    /// Issue 12, item 9: the AES key schedule inside every CCM instance (its
    /// first round key is the key itself) and the CTR mode CCM runs are
    /// wiped on drop. This does not compile unless the `zeroize` features
    /// of `aes` and `ctr` (which turns on `cipher`'s) are on.
    #[test]
    fn key_schedules_and_ctr_state_are_wiped_on_drop() {
        wiped_on_drop::<Aes128>();
        wiped_on_drop::<Aes192>();
        wiped_on_drop::<Aes256>();
        wiped_on_drop::<ctr::Ctr64BE<Aes128>>();
        wiped_on_drop::<KeyHandleKey>();
    }
}
