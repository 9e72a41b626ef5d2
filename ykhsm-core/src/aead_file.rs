//! pyhsm's AEAD file formats (pyhsm `aead_cmd.py` `YHSM_GeneratedAEAD`
//! `save`/`load`): v0 is the bare AEAD; v1 is
//! `"YubiHSM AEAD\n"`, a version byte `01`, the key handle (u32 LE), the
//! 6-byte nonce, then the AEAD. Files written by pyhsm ≤ 1.1.1 on Windows
//! have `"\r\n"` at the end of the marker; only the marker is repaired.

use thiserror::Error;

use crate::aead::{MAC_LEN, MAX_PLAINTEXT_LEN, NONCE_LEN, Nonce};
use crate::keyhandle::KeyHandle;

/// The marker that starts a v1 file.
pub const V1_MARKER: &[u8] = b"YubiHSM AEAD\n";
/// The marker as Windows text mode wrote it.
pub const V1_MARKER_CRLF: &[u8] = b"YubiHSM AEAD\r\n";
/// The only version byte pyhsm writes.
pub const V1_VERSION: u8 = 1;
/// pyhsm reads at most this many bytes of an AEAD file; a longer file is
/// refused rather than silently cut.
pub const MAX_FILE_LEN: usize = 1024;
/// The longest AEAD a v0 file can hold (`YSM_MAX_KEY_SIZE + YSM_BLOCK_SIZE`).
pub const MAX_V0_LEN: usize = 48;

/// Why the bytes of an AEAD file are not an AEAD file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AeadFileError {
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// The file is larger than any AEAD file.
    #[error("the file is larger than {MAX_FILE_LEN} bytes")]
    TooLarge,
    /// The v1 marker is followed by a version other than 1.
    #[error("unknown AEAD file format: version byte {version:#04x} after the YubiHSM AEAD marker")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The v1 header is cut short.
    #[error(
        "the v1 header is truncated ({len} bytes, the header alone needs {})",
        V1_HEADER_LEN
    )]
    TruncatedHeader {
        /// Length of the file.
        len: usize,
    },
    /// The AEAD part has a length no AEAD can have.
    #[error("the AEAD part is {len} bytes; an AEAD is {MAC_LEN} to {} bytes", MAX_PLAINTEXT_LEN + MAC_LEN)]
    BadAeadLength {
        /// Length of the AEAD part.
        len: usize,
    },
}

/// Marker, version, key handle, nonce.
const V1_HEADER_LEN: usize = V1_MARKER.len() + 1 + 4 + NONCE_LEN;

/// Which format a file was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadFileFormat {
    /// Bare AEAD (pyhsm < 1.0.4).
    V0,
    /// Header with key handle and nonce (pyhsm ≥ 1.0.4).
    V1,
}

/// The contents of an AEAD file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AeadFile {
    /// Bare AEAD: the key handle comes from the directory, the nonce from
    /// the public id.
    V0 {
        /// The AEAD bytes.
        aead: Vec<u8>,
    },
    /// AEAD with its own key handle and nonce, which win over the path.
    V1 {
        /// Key handle the AEAD was made under.
        key_handle: KeyHandle,
        /// Nonce the AEAD was made with.
        nonce: Nonce,
        /// The AEAD bytes.
        aead: Vec<u8>,
    },
}

impl AeadFile {
    /// Parses the bytes of an AEAD file.
    pub fn parse(bytes: &[u8]) -> Result<Self, AeadFileError> {
        if bytes.is_empty() {
            return Err(AeadFileError::Empty);
        }
        if bytes.len() > MAX_FILE_LEN {
            return Err(AeadFileError::TooLarge);
        }
        let rest = if let Some(rest) = bytes.strip_prefix(V1_MARKER) {
            rest
        } else if let Some(rest) = bytes.strip_prefix(V1_MARKER_CRLF) {
            rest
        } else {
            return if bytes.len() > MAX_V0_LEN || bytes.len() < MAC_LEN {
                Err(AeadFileError::BadAeadLength { len: bytes.len() })
            } else {
                Ok(Self::V0 {
                    aead: bytes.to_vec(),
                })
            };
        };
        let Some((&version, rest)) = rest.split_first() else {
            return Err(AeadFileError::TruncatedHeader { len: bytes.len() });
        };
        if version != V1_VERSION {
            return Err(AeadFileError::UnknownVersion { version });
        }
        if rest.len() < 4 + NONCE_LEN {
            return Err(AeadFileError::TruncatedHeader { len: bytes.len() });
        }
        let (kh, rest) = rest.split_at(4);
        let (nonce, aead) = rest.split_at(NONCE_LEN);
        if !(MAC_LEN..=MAX_PLAINTEXT_LEN + MAC_LEN).contains(&aead.len()) {
            return Err(AeadFileError::BadAeadLength { len: aead.len() });
        }
        let mut kh4 = [0u8; 4];
        kh4.copy_from_slice(kh);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        Ok(Self::V1 {
            key_handle: KeyHandle(u32::from_le_bytes(kh4)),
            nonce: Nonce(n),
            aead: aead.to_vec(),
        })
    }

    /// The file's format.
    pub fn format(&self) -> AeadFileFormat {
        match self {
            Self::V0 { .. } => AeadFileFormat::V0,
            Self::V1 { .. } => AeadFileFormat::V1,
        }
    }

    /// The AEAD bytes.
    pub fn aead(&self) -> &[u8] {
        match self {
            Self::V0 { aead } | Self::V1 { aead, .. } => aead,
        }
    }

    /// The bytes of a v1 file, as pyhsm ≥ 1.0.4 writes it.
    pub fn v1_bytes(key_handle: KeyHandle, nonce: &Nonce, aead: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(V1_HEADER_LEN + aead.len());
        out.extend_from_slice(V1_MARKER);
        out.push(V1_VERSION);
        out.extend_from_slice(&key_handle.to_le_bytes());
        out.extend_from_slice(&nonce.0);
        out.extend_from_slice(aead);
        out
    }
}
