//! The YK-KSM key line format (Yubico's yubikey-ksm
//! `doc/Key_Provisioning_Format.adoc`, `ykksm-export`): what `ykksm-export`
//! prints (no header) and what `ykksm-gen-keys` and `yhsm-import-keys` use
//! (with the `# ykksm 1` header).
//!
//! ```text
//! # ykksm 1
//! serialNr,publicName,internalName,aesKey,lockCode,created,accessed[,progflags]
//! ```
//!
//! LF or CRLF; `#` starts a comment anywhere on a line; blank lines are
//! skipped. Each bad line becomes an error with its line number and reason,
//! and the good lines are still returned, so an import can report every
//! problem at once. Reasons never quote a key, uid or lock code.

use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::otp::{KEY_LEN, PublicId, PublicIdError, UID_LEN, YubiKeySecrets};

/// The header `yhsm-import-keys` requires and `ykksm-export` never writes.
pub const HEADER: &str = "# ykksm 1";

/// What `ykksm-export` prints for an empty table.
pub const NO_DATA: &str = "No data?!";

/// One key of an export.
pub struct YkksmRecord {
    /// 1-based line number in the input.
    pub line: usize,
    /// The key's serial number.
    pub serial: u64,
    /// The public id (never empty).
    pub public_id: PublicId,
    /// AES key and private id.
    pub secrets: YubiKeySecrets,
    /// `created` as written (may be empty).
    pub created: String,
}

impl fmt::Debug for YkksmRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YkksmRecord")
            .field("line", &self.line)
            .field("serial", &self.serial)
            .field("public_id", &self.public_id)
            .field("secrets", &self.secrets)
            .field("created", &self.created)
            .finish()
    }
}

/// A line that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct YkksmLineError {
    /// 1-based line number.
    pub line: usize,
    /// The reason.
    pub kind: YkksmErrorKind,
}

/// Why a line is not a key line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum YkksmErrorKind {
    /// `ykksm-export` found no keys.
    #[error("the input says \"No data?!\": ykksm-export found no keys in its database")]
    NoData,
    /// Not UTF-8.
    #[error("the line is not valid UTF-8 text")]
    NotText,
    /// Too few or too many comma-separated fields.
    #[error(
        "{found} fields; expected serialNr,publicName,internalName,aesKey[,lockCode,created,accessed[,progflags]] (4 to 8 fields)"
    )]
    FieldCount {
        /// Fields found.
        found: usize,
    },
    /// serialNr is not a decimal number.
    #[error("serialNr (field 1) is not a decimal number")]
    BadSerial,
    /// publicName is empty.
    #[error("publicName (field 2) is empty; ykhsm needs a public id to find the key")]
    EmptyPublicId,
    /// publicName is not a valid public id.
    #[error("publicName (field 2): {0}")]
    BadPublicId(PublicIdError),
    /// internalName is not 12 hex digits.
    #[error("internalName (field 3) must be {} hex digits", UID_LEN * 2)]
    BadUid,
    /// aesKey is hex but not 16 bytes.
    #[error(
        "aesKey (field 4) has {hex_digits} hex digits; a YubiKey OTP key is AES-128, {} hex digits",
        KEY_LEN * 2
    )]
    BadKeyLength {
        /// Hex digits found.
        hex_digits: usize,
    },
    /// aesKey is not hex.
    #[error("aesKey (field 4) is not hex")]
    KeyNotHex,
    /// lockCode is neither empty nor 12 hex digits.
    #[error("lockCode (field 5) must be empty or 12 hex digits")]
    BadLockCode,
    /// created/accessed contain something other than `[T:0-9 -]`.
    #[error("{field} (field {number}) is not a timestamp like 2009-12-14T16:40:57")]
    BadTimestamp {
        /// The field's name.
        field: &'static str,
        /// The field's 1-based number.
        number: usize,
    },
    /// progflags is not an integer.
    #[error("progflags (field 8) is not a decimal number")]
    BadProgflags,
}

/// Everything read from an export.
#[derive(Debug, Default)]
pub struct YkksmParse {
    /// Whether the first line was `# ykksm 1`.
    pub header: bool,
    /// The good lines.
    pub records: Vec<YkksmRecord>,
    /// The bad lines, in order.
    pub errors: Vec<YkksmLineError>,
}

/// Parses an export. Never fails as a whole: bad lines are collected in
/// [`YkksmParse::errors`].
pub fn parse(input: &[u8]) -> YkksmParse {
    let mut out = YkksmParse::default();
    for (i, raw) in input.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            out.errors.push(YkksmLineError {
                line,
                kind: YkksmErrorKind::NotText,
            });
            continue;
        };
        if line == 1 && text.trim_end() == HEADER {
            out.header = true;
            continue;
        }
        let data = text.split('#').next().unwrap_or("").trim();
        if data.is_empty() {
            continue;
        }
        match parse_line(data, line) {
            Ok(r) => out.records.push(r),
            Err(kind) => out.errors.push(YkksmLineError { line, kind }),
        }
    }
    out
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_timestamp(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || b"T:- ".contains(&b))
}

/// Parses one data line (comment and line end already removed).
pub fn parse_line(data: &str, line: usize) -> Result<YkksmRecord, YkksmErrorKind> {
    if data == NO_DATA {
        return Err(YkksmErrorKind::NoData);
    }
    let fields: Vec<&str> = data.split(',').collect();
    if !(4..=8).contains(&fields.len()) {
        return Err(YkksmErrorKind::FieldCount {
            found: fields.len(),
        });
    }
    let field = |i: usize| fields.get(i).copied().unwrap_or("");

    let serial_s = field(0);
    if serial_s.is_empty() || !serial_s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(YkksmErrorKind::BadSerial);
    }
    let serial: u64 = serial_s.parse().map_err(|_| YkksmErrorKind::BadSerial)?;

    if field(1).is_empty() {
        return Err(YkksmErrorKind::EmptyPublicId);
    }
    let public_id = PublicId::parse(field(1)).map_err(YkksmErrorKind::BadPublicId)?;

    let uid_hex = field(2);
    let mut uid = Zeroizing::new([0u8; UID_LEN]);
    if uid_hex.len() != UID_LEN * 2 || hex::decode_to_slice(uid_hex, &mut *uid).is_err() {
        return Err(YkksmErrorKind::BadUid);
    }

    let key_hex = field(3);
    if !is_hex(key_hex) {
        return Err(YkksmErrorKind::KeyNotHex);
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if key_hex.len() != KEY_LEN * 2 || hex::decode_to_slice(key_hex, &mut *key).is_err() {
        return Err(YkksmErrorKind::BadKeyLength {
            hex_digits: key_hex.len(),
        });
    }

    let lock = field(4);
    if !lock.is_empty() && (lock.len() != 12 || !is_hex(lock)) {
        return Err(YkksmErrorKind::BadLockCode);
    }
    for (i, name) in [(5, "created"), (6, "accessed")] {
        if !is_timestamp(field(i)) {
            return Err(YkksmErrorKind::BadTimestamp {
                field: name,
                number: i + 1,
            });
        }
    }
    let progflags = field(7);
    if !progflags.is_empty() && progflags.parse::<u64>().is_err() {
        return Err(YkksmErrorKind::BadProgflags);
    }
    Ok(YkksmRecord {
        line,
        serial,
        public_id,
        secrets: YubiKeySecrets::new(*key, *uid),
        created: field(5).to_owned(),
    })
}
