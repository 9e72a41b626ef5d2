//! pyhsm's `keys.json`, the soft HSM's key store (pyhsm `soft_hsm.py`
//! `SoftYHSM.from_json`):
//!
//! ```json
//! { "1": "000102030405060708090a0b0c0d0e0f", "8192": "2000…2000" }
//! ```
//!
//! Key handles are decimal strings (Python `int()`; `"0x2000"` is refused),
//! keys are hex AES keys of 16, 24 or 32 bytes. The file must be owned by
//! root with no group or other permission bit. Every error names the file
//! and, where there is one, the key handle; none ever contains key material
//! (serde's own messages can quote values, so they are not passed on).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::aead::KeyHandleKey;
use crate::keyhandle::KeyHandle;
use crate::secure_file::{self, FilePolicy, SecureFileError};

/// The largest keys.json accepted (a file of thousands of key handles fits).
pub const MAX_KEYS_FILE_LEN: u64 = 1 << 20;

/// Why keys.json was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeysFileError {
    /// Owner, mode, size, or I/O.
    #[error(transparent)]
    File(#[from] SecureFileError),
    /// Not JSON, or not an object of strings.
    #[error("{}: {what} at line {line}, column {column}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What kind of problem (never the offending text).
        what: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The object has no key handles.
    #[error("{}: no key handles (the JSON object is empty)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A member name that is not a decimal uint32.
    #[error("{}: key handle {name:?} is not a decimal number from 0 to 4294967295 (write 0x2000 as \"8192\")", path.display())]
    BadKeyHandle {
        /// The file.
        path: PathBuf,
        /// The name, truncated to 40 characters.
        name: String,
    },
    /// Two members name the same key handle.
    #[error("{}: key handle {key_handle} appears more than once", path.display())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The key handle.
        key_handle: u32,
    },
    /// The value is not hex.
    #[error("{}: key handle {key_handle}: the key is not hex (bad character at position {position})", path.display())]
    NotHex {
        /// The file.
        path: PathBuf,
        /// The key handle.
        key_handle: u32,
        /// Zero-based character position.
        position: usize,
    },
    /// The value has a length no AES key has.
    #[error("{}: key handle {key_handle}: the key has {hex_digits} hex digits; an AES key has 32, 48 or 64", path.display())]
    BadKeyLength {
        /// The file.
        path: PathBuf,
        /// The key handle.
        key_handle: u32,
        /// Hex digits found.
        hex_digits: usize,
    },
}

/// The keys of a keys.json, by key handle. Keys are wiped on drop and never
/// printed.
pub struct KeysFile {
    path: PathBuf,
    keys: BTreeMap<u32, KeyHandleKey>,
}

impl fmt::Debug for KeysFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeysFile")
            .field("path", &self.path)
            .field("key_handles", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// (member name, value) pairs in file order; values wiped on drop.
struct RawEntries(Vec<(String, Zeroizing<String>)>);

struct SecretString(Zeroizing<String>);

impl<'de> de::Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SecretString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex key string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SecretString, E> {
                Ok(SecretString(Zeroizing::new(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> de::Deserialize<'de> for RawEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of key handle -> hex key")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, SecretString>()? {
                    out.push((k, v.0));
                }
                Ok(RawEntries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_decimal_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl KeysFile {
    /// Reads and checks keys.json: owned by root, no group/other bits.
    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        Self::load_owned_by(path, 0)
    }

    /// As [`KeysFile::load`], with another required owner (tests that do not
    /// run as root).
    pub fn load_owned_by(path: &Path, owner: u32) -> Result<Self, KeysFileError> {
        let bytes = secure_file::read_checked(path, FilePolicy::secret(owner, MAX_KEYS_FILE_LEN))?;
        Self::parse(path, &bytes)
    }

    /// Parses the bytes of a keys.json; `path` is only used in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, KeysFileError> {
        let path_buf = || path.to_path_buf();
        let raw: RawEntries = serde_json::from_slice(bytes).map_err(|e| KeysFileError::Json {
            path: path_buf(),
            what: match e.classify() {
                serde_json::error::Category::Io => "read error",
                serde_json::error::Category::Syntax => "not valid JSON",
                serde_json::error::Category::Data => {
                    "not an object whose members are key handle strings with hex key strings"
                }
                serde_json::error::Category::Eof => "the JSON ends early",
            },
            line: e.line(),
            column: e.column(),
        })?;
        if raw.0.is_empty() {
            return Err(KeysFileError::Empty { path: path_buf() });
        }
        let mut keys = BTreeMap::new();
        for (name, hex_key) in &raw.0 {
            let Some(kh) = parse_decimal_u32(name) else {
                return Err(KeysFileError::BadKeyHandle {
                    path: path_buf(),
                    name: name.chars().take(40).collect(),
                });
            };
            if keys.contains_key(&kh) {
                return Err(KeysFileError::Duplicate {
                    path: path_buf(),
                    key_handle: kh,
                });
            }
            let digits = hex_key.len();
            if !matches!(digits, 32 | 48 | 64) {
                if let Some(position) = hex_key.chars().position(|c| !c.is_ascii_hexdigit()) {
                    return Err(KeysFileError::NotHex {
                        path: path_buf(),
                        key_handle: kh,
                        position,
                    });
                }
                return Err(KeysFileError::BadKeyLength {
                    path: path_buf(),
                    key_handle: kh,
                    hex_digits: hex_key.chars().count(),
                });
            }
            let mut bytes = Zeroizing::new(vec![0u8; digits / 2]);
            if hex::decode_to_slice(hex_key.as_bytes(), &mut bytes).is_err() {
                let position = hex_key
                    .chars()
                    .position(|c| !c.is_ascii_hexdigit())
                    .unwrap_or(0);
                return Err(KeysFileError::NotHex {
                    path: path_buf(),
                    key_handle: kh,
                    position,
                });
            }
            // Length is 16, 24 or 32 here.
            if let Some(key) = KeyHandleKey::new(std::mem::take(&mut *bytes)) {
                keys.insert(kh, key);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key of a key handle.
    pub fn get(&self, key_handle: KeyHandle) -> Option<&KeyHandleKey> {
        self.keys.get(&key_handle.0)
    }

    /// The key handles present, in numeric order.
    pub fn key_handles(&self) -> impl Iterator<Item = KeyHandle> + '_ {
        self.keys.keys().map(|&k| KeyHandle(k))
    }
}
