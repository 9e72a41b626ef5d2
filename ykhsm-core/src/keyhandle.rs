//! Key handles: the 32-bit numbers a YubiHSM (or pyhsm's keys.json) names its
//! AES keys by, and the way operators spell them (pyhsm `util.py`
//! `key_handle_to_int`).
//!
//! The spelling matters: pyhsm builds AEAD directory names from the string the
//! operator typed, so `1`, `0x2000`, `8192` and `KSM1` are different
//! directories even where two of them are the same number.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A key handle number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyHandle(pub u32);

impl KeyHandle {
    /// Little-endian bytes, as in frames and in the CCM nonce.
    pub fn to_le_bytes(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:x})", self.0, self.0)
    }
}

/// Why a key-handle spelling is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyHandleError {
    /// Not decimal, not `0x` + hex, not four characters.
    #[error(
        "key handle {spelled:?} is not a decimal number, 0x followed by hex digits, or 4 ASCII characters"
    )]
    Unparsable {
        /// The spelling, truncated to 40 characters.
        spelled: String,
    },
    /// Cannot be a directory name (empty, `.`, `..`, contains `/` or NUL).
    #[error("key handle {spelled:?} cannot name a directory of the AEAD store")]
    NotADirectoryName {
        /// The spelling, truncated to 40 characters.
        spelled: String,
    },
}

fn truncated(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a key handle as pyhsm's `key_handle_to_int` does: decimal; else
/// `0x` (lower-case x) + hex; else exactly four ASCII characters read as a
/// little-endian uint32 (`KSM1` = 0x314d534b). Anything else is an error.
pub fn parse_key_handle(s: &str) -> Result<KeyHandle, KeyHandleError> {
    let digits = |s: &str, radix: u32| {
        if !s.is_empty() && s.chars().all(|c| c.is_digit(radix)) {
            u32::from_str_radix(s, radix).ok()
        } else {
            None
        }
    };
    if let Some(v) = digits(s, 10) {
        return Ok(KeyHandle(v));
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Some(v) = digits(hex, 16)
    {
        return Ok(KeyHandle(v));
    }
    if let Ok(four) = <[u8; 4]>::try_from(s.as_bytes()) {
        return Ok(KeyHandle(u32::from_le_bytes(four)));
    }
    Err(KeyHandleError::Unparsable {
        spelled: truncated(s),
    })
}

/// A key handle as the operator spelled it in the configuration: the name of
/// its AEAD directory, and the number it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyHandleName {
    spelled: String,
    value: KeyHandle,
}

impl KeyHandleName {
    /// The spelling, exactly as typed (the directory name).
    pub fn spelled(&self) -> &str {
        &self.spelled
    }

    /// The number.
    pub fn value(&self) -> KeyHandle {
        self.value
    }
}

impl FromStr for KeyHandleName {
    type Err = KeyHandleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
            return Err(KeyHandleError::NotADirectoryName {
                spelled: truncated(s),
            });
        }
        let value = parse_key_handle(s)?;
        Ok(Self {
            spelled: s.to_owned(),
            value,
        })
    }
}

impl fmt::Display for KeyHandleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_case_hex_prefix_is_refused() {
        assert!(parse_key_handle("0X2000").is_err());
    }

    #[test]
    fn directory_names_are_safe() {
        for bad in ["", ".", "..", "a/b"] {
            assert!(bad.parse::<KeyHandleName>().is_err(), "{bad:?}");
        }
        let kh: KeyHandleName = "0x2000".parse().unwrap();
        assert_eq!(kh.spelled(), "0x2000");
        assert_eq!(kh.value(), KeyHandle(8192));
    }
}
