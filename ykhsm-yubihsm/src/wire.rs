//! The YubiHSM 1 serial protocol as bytes: request and response frames,
//! status codes, permission flags, the resync and the configuration-mode
//! check. The sources are python-pyhsm's `doc/YubiHSM_if.h` (the device's C
//! header, "if.h" below), `pyhsm/defines.py`, and `pyhsm/cmd.py` /
//! `pyhsm/base.py` for what the host does.
//!
//! This module exists so that the two programs that speak the protocol — the
//! serial driver ([`YubiHsm`](crate::YubiHsm)) and the device emulator used in
//! tests (`ykhsm-hsm-emu`, which depends on this crate for it) — share one
//! definition of every frame, and so that the framing can be tested against
//! recorded frames and fuzzed without hardware. It is pure logic: no I/O, no
//! serial port, no clock, no threads.
//!
//! Only the commands ykhsm sends are encoded and decoded (each [`Request`]
//! variant says who sends it). The device's other commands (random numbers,
//! nonces, the other AEAD generators, AEAD compare, HMAC-SHA1, AES-ECB, the
//! internal database) are named in [`cmd`], so that logs and errors can say
//! what a device sent, and otherwise refused as
//! [`FrameError::UnknownCommand`].
//!
//! A frame is `bcnt, command, payload`, where `bcnt` = 1 + payload length
//! (it counts the command byte, not itself) and the payload is at most
//! [`MAX_PAYLOAD`] bytes of packed little-endian C struct. A device answers
//! with the same shape and `command | 0x80` in byte 1. The resync (command
//! `YSM_NULL`) is the one exception: 96 zero bytes with no length byte
//! ([`resync_bytes`]).
//!
//! Host side: [`Request::encode`], then [`check_response_header`] on the two
//! bytes read back, then [`Response::decode`] and [`Response::check_echo`].
//! Device side: [`check_frame`] on the input stream (after skipping
//! [`resync_prefix_len`] zero bytes), [`Request::decode`], then
//! [`Response::encode`].
//!
//! Decoding is total: any input, of any length, gives a value or a
//! [`FrameError`], never a panic. Decoding is also exact: a frame decodes only
//! if encoding the result gives the same bytes back.
//!
//! Secrets (key-store keys, passwords, buffer contents) are held in
//! [`Redacted`] [`Zeroizing`] buffers, OTPs in [`Token`]: wiped on drop, and
//! the `Debug` output of [`Request`] shows only their lengths.

use std::fmt;
use std::ops::Deref;

use thiserror::Error;
use zeroize::Zeroizing;

use ykhsm_core::aead::{
    MAC_LEN, MAX_PLAINTEXT_LEN, NONCE_LEN, Nonce, YUBIKEY_AEAD_LEN, YubiKeyAead,
};
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::otp::{OtpCounters, Token};

/// The bit a device sets in byte 1 of an answer: request command `| 0x80`
/// (if.h `YSM_RESPONSE`). It is not a status; statuses are in the payload.
pub const RESPONSE_FLAG: u8 = 0x80;
/// Most payload bytes a frame carries after its command byte (if.h
/// `YSM_MAX_PKT_SIZE`, 0x60).
pub const MAX_PAYLOAD: usize = 0x60;
/// Largest valid length byte: the command byte plus [`MAX_PAYLOAD`].
pub const MAX_BCNT: u8 = 0x61;
/// Longest whole frame: length byte, command byte and [`MAX_PAYLOAD`].
pub const MAX_FRAME_LEN: usize = 2 + MAX_PAYLOAD;
/// Size of the device's internal data buffer (if.h `YSM_DATA_BUF_SIZE`).
pub const DATA_BUF_SIZE: usize = 64;
/// Length of an AEAD's MAC (if.h `YSM_AEAD_MAC_SIZE`).
pub const AEAD_MAC_SIZE: usize = 8;
/// Longest AEAD: a full buffer plus its MAC (if.h `YSM_AEAD_MAX_SIZE`, 72).
pub const AEAD_MAX_SIZE: usize = DATA_BUF_SIZE + AEAD_MAC_SIZE;
/// Length of the nonce sent with an AEAD (if.h `YSM_AEAD_NONCE_SIZE`).
pub const AEAD_NONCE_SIZE: usize = 6;
/// Length of a public id in frames (if.h `YSM_PUBLIC_ID_SIZE`).
pub const PUBLIC_ID_SIZE: usize = 6;
/// AES block size (if.h `YSM_BLOCK_SIZE`); also the length of the 0.9.x
/// key-storage password.
pub const BLOCK_SIZE: usize = 16;
/// Longest key-handle key; also the length of the 1.0 key-store key (if.h
/// `YSM_MAX_KEY_SIZE`).
pub const MAX_KEY_SIZE: usize = 32;
/// Length of the device's unique id in the system-info answer.
pub const SYSTEM_UID_SIZE: usize = 12;
/// Length of a YubiKey AEAD: 16-byte key, 6-byte uid, 8-byte MAC (if.h
/// `YSM_YUBIKEY_AEAD_SIZE`).
pub const YUBIKEY_AEAD_SIZE: usize = 30;
/// The only protocol version this codec speaks (if.h `YSM_PROTOCOL_VERSION`);
/// a device reporting another in its system-info answer is refused, as
/// pyhsm's `YHSM.__init__` does.
pub const PROTOCOL_VERSION: u8 = 1;
/// Most bytes an echo carries (payload minus its count byte).
pub const ECHO_MAX_DATA: usize = MAX_PAYLOAD - 1;
/// Length of the resync: `YSM_NULL` and 95 zero bytes, no length byte.
pub const RESYNC_LEN: usize = MAX_PAYLOAD;
/// What the host writes to a silent device to see whether it is in
/// configuration mode (a YubiHSM started with its button held talks a text
/// console, not frames; pyhsm `cmd.py` `_handle_invalid_read_response`).
pub const CONFIG_MODE_PROBE: &[u8; 3] = b"\r\r\r";
/// How many bytes pyhsm reads after [`CONFIG_MODE_PROBE`].
pub const CONFIG_MODE_READ_LEN: usize = 50;

// The constants restate the AEAD module's; they must agree.
const _: () = assert!(AEAD_NONCE_SIZE == NONCE_LEN);
const _: () = assert!(AEAD_MAC_SIZE == MAC_LEN);
const _: () = assert!(DATA_BUF_SIZE == MAX_PLAINTEXT_LEN);
const _: () = assert!(YUBIKEY_AEAD_SIZE == YUBIKEY_AEAD_LEN);
const _: () = assert!(MAX_FRAME_LEN == MAX_BCNT as usize + 1);

/// Command codes (if.h, pyhsm `defines.py`).
///
/// [`Request`] and [`Response`] cover the codes for which
/// [`is_supported`](cmd::is_supported) is true: the ones ykhsm sends. The
/// others are named here so that logs and errors can say what a device sent.
pub mod cmd {
    /// `YSM_NULL`: the resync, sent without a length byte.
    pub const NULL: u8 = 0x00;
    /// `YSM_AEAD_GENERATE`: seal data given in the request (not encoded here).
    pub const AEAD_GENERATE: u8 = 0x01;
    /// `YSM_BUFFER_AEAD_GENERATE`: seal the device's data buffer.
    pub const BUFFER_AEAD_GENERATE: u8 = 0x02;
    /// `YSM_RANDOM_AEAD_GENERATE`: seal random bytes (not encoded here).
    pub const RANDOM_AEAD_GENERATE: u8 = 0x03;
    /// `YSM_AEAD_DECRYPT_CMP`: open an AEAD and compare with a cleartext
    /// (not encoded here).
    pub const AEAD_DECRYPT_CMP: u8 = 0x04;
    /// `YSM_DB_YUBIKEY_AEAD_STORE` (internal database; not encoded here).
    pub const DB_YUBIKEY_AEAD_STORE: u8 = 0x05;
    /// `YSM_AEAD_YUBIKEY_OTP_DECODE`: decode an OTP with a YubiKey AEAD.
    pub const AEAD_YUBIKEY_OTP_DECODE: u8 = 0x06;
    /// `YSM_DB_OTP_VALIDATE` (internal database; not encoded here).
    pub const DB_OTP_VALIDATE: u8 = 0x07;
    /// `YSM_DB_YUBIKEY_AEAD_STORE2` (internal database; not encoded here).
    pub const DB_YUBIKEY_AEAD_STORE2: u8 = 0x08;
    /// `YSM_AES_ECB_BLOCK_ENCRYPT` (not encoded here).
    pub const AES_ECB_BLOCK_ENCRYPT: u8 = 0x0d;
    /// `YSM_AES_ECB_BLOCK_DECRYPT` (not encoded here).
    pub const AES_ECB_BLOCK_DECRYPT: u8 = 0x0e;
    /// `YSM_AES_ECB_BLOCK_DECRYPT_CMP` (not encoded here).
    pub const AES_ECB_BLOCK_DECRYPT_CMP: u8 = 0x0f;
    /// `YSM_HMAC_SHA1_GENERATE` (not encoded here).
    pub const HMAC_SHA1_GENERATE: u8 = 0x10;
    /// `YSM_TEMP_KEY_LOAD` (not encoded here).
    pub const TEMP_KEY_LOAD: u8 = 0x11;
    /// `YSM_BUFFER_LOAD`: write bytes into the data buffer.
    pub const BUFFER_LOAD: u8 = 0x20;
    /// `YSM_BUFFER_RANDOM_LOAD`: write random bytes into the data buffer
    /// (not encoded here).
    pub const BUFFER_RANDOM_LOAD: u8 = 0x21;
    /// `YSM_NONCE_GET`: read (and advance) the device's nonce (not encoded
    /// here).
    pub const NONCE_GET: u8 = 0x22;
    /// `YSM_ECHO`.
    pub const ECHO: u8 = 0x23;
    /// `YSM_RANDOM_GENERATE` (not encoded here).
    pub const RANDOM_GENERATE: u8 = 0x24;
    /// `YSM_RANDOM_RESEED` (not encoded here).
    pub const RANDOM_RESEED: u8 = 0x25;
    /// `YSM_SYSTEM_INFO_QUERY`: versions and unique id.
    pub const SYSTEM_INFO_QUERY: u8 = 0x26;
    /// `YSM_KEY_STORAGE_UNLOCK`: 0.9.x key-storage password.
    pub const KEY_STORAGE_UNLOCK: u8 = 0x27;
    /// `YSM_HSM_UNLOCK`: 1.0+ unlock with an admin YubiKey OTP.
    pub const HSM_UNLOCK: u8 = 0x28;
    /// `YSM_KEY_STORE_DECRYPT`: 1.0+ key-store master key.
    pub const KEY_STORE_DECRYPT: u8 = 0x29;
    /// `YSM_MONITOR_EXIT` (debug firmware only; not encoded here).
    pub const MONITOR_EXIT: u8 = 0x7f;

    /// The if.h name of a command code, or `None` for an unknown code.
    /// The response bit must be cleared first.
    pub fn name(code: u8) -> Option<&'static str> {
        Some(match code {
            NULL => "YSM_NULL",
            AEAD_GENERATE => "YSM_AEAD_GENERATE",
            BUFFER_AEAD_GENERATE => "YSM_BUFFER_AEAD_GENERATE",
            RANDOM_AEAD_GENERATE => "YSM_RANDOM_AEAD_GENERATE",
            AEAD_DECRYPT_CMP => "YSM_AEAD_DECRYPT_CMP",
            DB_YUBIKEY_AEAD_STORE => "YSM_DB_YUBIKEY_AEAD_STORE",
            AEAD_YUBIKEY_OTP_DECODE => "YSM_AEAD_YUBIKEY_OTP_DECODE",
            DB_OTP_VALIDATE => "YSM_DB_OTP_VALIDATE",
            DB_YUBIKEY_AEAD_STORE2 => "YSM_DB_YUBIKEY_AEAD_STORE2",
            AES_ECB_BLOCK_ENCRYPT => "YSM_AES_ECB_BLOCK_ENCRYPT",
            AES_ECB_BLOCK_DECRYPT => "YSM_AES_ECB_BLOCK_DECRYPT",
            AES_ECB_BLOCK_DECRYPT_CMP => "YSM_AES_ECB_BLOCK_DECRYPT_CMP",
            HMAC_SHA1_GENERATE => "YSM_HMAC_SHA1_GENERATE",
            TEMP_KEY_LOAD => "YSM_TEMP_KEY_LOAD",
            BUFFER_LOAD => "YSM_BUFFER_LOAD",
            BUFFER_RANDOM_LOAD => "YSM_BUFFER_RANDOM_LOAD",
            NONCE_GET => "YSM_NONCE_GET",
            ECHO => "YSM_ECHO",
            RANDOM_GENERATE => "YSM_RANDOM_GENERATE",
            RANDOM_RESEED => "YSM_RANDOM_RESEED",
            SYSTEM_INFO_QUERY => "YSM_SYSTEM_INFO_QUERY",
            KEY_STORAGE_UNLOCK => "YSM_KEY_STORAGE_UNLOCK",
            HSM_UNLOCK => "YSM_HSM_UNLOCK",
            KEY_STORE_DECRYPT => "YSM_KEY_STORE_DECRYPT",
            MONITOR_EXIT => "YSM_MONITOR_EXIT",
            _ => return None,
        })
    }

    /// Whether [`Request`](super::Request) and [`Response`](super::Response)
    /// encode and decode this command: the commands ykhsm sends.
    pub fn is_supported(code: u8) -> bool {
        matches!(
            code,
            BUFFER_AEAD_GENERATE
                | AEAD_YUBIKEY_OTP_DECODE
                | BUFFER_LOAD
                | ECHO
                | SYSTEM_INFO_QUERY
                | KEY_STORAGE_UNLOCK
                | HSM_UNLOCK
                | KEY_STORE_DECRYPT
        )
    }
}

/// Key-handle permission flags: a 32-bit word per key handle, set in
/// configuration mode; a command whose flag is missing answers
/// [`Status::FunctionDisabled`].
///
/// The values marked *attested* are written in comments of python-pyhsm's
/// tests (`test/test_aead.py`, `test_otp_validate.py`, `test_aes_ecb.py`,
/// `test_hmac.py`). The values marked *inferred* are not written in any
/// source: every attested command flag is `1 << command code`, and the
/// configuration console lists the flags in command-code order, so these
/// follow that rule. In
/// particular [`AEAD_YUBIKEY_OTP_DECODE`](permission::AEAD_YUBIKEY_OTP_DECODE)
/// = 0x40 is inferred, so a device must never be refused on that flag alone.
pub mod permission {
    /// `YSM_AEAD_GENERATE` (attested).
    pub const AEAD_GENERATE: u32 = 0x0000_0002;
    /// `YSM_BUFFER_AEAD_GENERATE` (attested).
    pub const BUFFER_AEAD_GENERATE: u32 = 0x0000_0004;
    /// `YSM_RANDOM_AEAD_GENERATE` (attested).
    pub const RANDOM_AEAD_GENERATE: u32 = 0x0000_0008;
    /// `YSM_AEAD_DECRYPT_CMP` (attested).
    pub const AEAD_DECRYPT_CMP: u32 = 0x0000_0010;
    /// `YSM_DB_YUBIKEY_AEAD_STORE` (inferred).
    pub const DB_YUBIKEY_AEAD_STORE: u32 = 0x0000_0020;
    /// `YSM_AEAD_YUBIKEY_OTP_DECODE` (**inferred**: `1 << 0x06`; no source
    /// states it): the flag the KSM key handle needs.
    pub const AEAD_YUBIKEY_OTP_DECODE: u32 = 0x0000_0040;
    /// `YSM_DB_YUBIKEY_OTP_VALIDATE` (inferred).
    pub const DB_YUBIKEY_OTP_VALIDATE: u32 = 0x0000_0080;
    /// `YSM_AES_ECB_BLOCK_ENCRYPT` (attested).
    pub const AES_ECB_BLOCK_ENCRYPT: u32 = 0x0000_2000;
    /// `YSM_AES_ECB_BLOCK_DECRYPT` (attested).
    pub const AES_ECB_BLOCK_DECRYPT: u32 = 0x0000_4000;
    /// `YSM_AES_ECB_BLOCK_DECRYPT_CMP` (attested).
    pub const AES_ECB_BLOCK_DECRYPT_CMP: u32 = 0x0000_8000;
    /// `YSM_HMAC_SHA1_GENERATE` (attested).
    pub const HMAC_SHA1_GENERATE: u32 = 0x0001_0000;
    /// `YSM_TEMP_KEY_LOAD` (inferred).
    pub const TEMP_KEY_LOAD: u32 = 0x0002_0000;
    /// `YSM_USER_NONCE`: the host may choose the nonce (firmware ≥ 1.0.4;
    /// attested).
    pub const USER_NONCE: u32 = 0x2000_0000;
    /// `YSM_BUFFER_LOAD` (attested).
    pub const BUFFER_LOAD: u32 = 0x4000_0000;

    const ALL: [(u32, &str); 14] = [
        (AEAD_GENERATE, "YSM_AEAD_GENERATE"),
        (BUFFER_AEAD_GENERATE, "YSM_BUFFER_AEAD_GENERATE"),
        (RANDOM_AEAD_GENERATE, "YSM_RANDOM_AEAD_GENERATE"),
        (AEAD_DECRYPT_CMP, "YSM_AEAD_DECRYPT_CMP"),
        (DB_YUBIKEY_AEAD_STORE, "YSM_DB_YUBIKEY_AEAD_STORE"),
        (AEAD_YUBIKEY_OTP_DECODE, "YSM_AEAD_YUBIKEY_OTP_DECODE"),
        (DB_YUBIKEY_OTP_VALIDATE, "YSM_DB_YUBIKEY_OTP_VALIDATE"),
        (AES_ECB_BLOCK_ENCRYPT, "YSM_AES_ECB_BLOCK_ENCRYPT"),
        (AES_ECB_BLOCK_DECRYPT, "YSM_AES_ECB_BLOCK_DECRYPT"),
        (AES_ECB_BLOCK_DECRYPT_CMP, "YSM_AES_ECB_BLOCK_DECRYPT_CMP"),
        (HMAC_SHA1_GENERATE, "YSM_HMAC_SHA1_GENERATE"),
        (TEMP_KEY_LOAD, "YSM_TEMP_KEY_LOAD"),
        (USER_NONCE, "YSM_USER_NONCE"),
        (BUFFER_LOAD, "YSM_BUFFER_LOAD"),
    ];

    /// The names of the known flags set in `flags`, lowest bit first (for
    /// `--check` and `status` reports). Unknown bits are left out.
    pub fn names(flags: u32) -> Vec<&'static str> {
        ALL.iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|&(_, name)| name)
            .collect()
    }
}

/// The status byte inside a response payload (if.h `YSM_STATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 0x80 `YSM_STATUS_OK`: success.
    Ok,
    /// 0x81 `YSM_KEY_HANDLE_INVALID`: no such key handle.
    KeyHandleInvalid,
    /// 0x82 `YSM_AEAD_INVALID`: the AEAD does not authenticate.
    AeadInvalid,
    /// 0x83 `YSM_OTP_INVALID`: OTP CRC or uid wrong.
    OtpInvalid,
    /// 0x84 `YSM_OTP_REPLAY`: OTP already used (internal database, unlock).
    OtpReplay,
    /// 0x85 `YSM_ID_DUPLICATE`: public id already in the internal database.
    IdDuplicate,
    /// 0x86 `YSM_ID_NOT_FOUND`: public id not in the internal database.
    IdNotFound,
    /// 0x87 `YSM_DB_FULL`: internal database full.
    DbFull,
    /// 0x88 `YSM_MEMORY_ERROR`: memory read/write error.
    MemoryError,
    /// 0x89 `YSM_FUNCTION_DISABLED`: the key handle lacks the permission flag.
    FunctionDisabled,
    /// 0x8a `YSM_KEY_STORAGE_LOCKED`: the key store is not unlocked.
    KeyStorageLocked,
    /// 0x8b `YSM_MISMATCH`: compare failed, or a wrong unlock key (1.0+).
    Mismatch,
    /// 0x8c `YSM_INVALID_PARAMETER`: bad length or argument.
    InvalidParameter,
    /// Any other byte (0xf0–0xff is if.h's custom range). [`Status::from_byte`]
    /// never makes `Other` of a known value.
    Other(u8),
}

impl Status {
    /// The status a byte stands for; total.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x80 => Self::Ok,
            0x81 => Self::KeyHandleInvalid,
            0x82 => Self::AeadInvalid,
            0x83 => Self::OtpInvalid,
            0x84 => Self::OtpReplay,
            0x85 => Self::IdDuplicate,
            0x86 => Self::IdNotFound,
            0x87 => Self::DbFull,
            0x88 => Self::MemoryError,
            0x89 => Self::FunctionDisabled,
            0x8a => Self::KeyStorageLocked,
            0x8b => Self::Mismatch,
            0x8c => Self::InvalidParameter,
            other => Self::Other(other),
        }
    }

    /// The byte sent on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Ok => 0x80,
            Self::KeyHandleInvalid => 0x81,
            Self::AeadInvalid => 0x82,
            Self::OtpInvalid => 0x83,
            Self::OtpReplay => 0x84,
            Self::IdDuplicate => 0x85,
            Self::IdNotFound => 0x86,
            Self::DbFull => 0x87,
            Self::MemoryError => 0x88,
            Self::FunctionDisabled => 0x89,
            Self::KeyStorageLocked => 0x8a,
            Self::Mismatch => 0x8b,
            Self::InvalidParameter => 0x8c,
            Self::Other(b) => b,
        }
    }

    /// Whether this is `YSM_STATUS_OK`.
    pub fn is_ok(self) -> bool {
        self.to_byte() == 0x80
    }

    /// The if.h name, e.g. `"YSM_OTP_INVALID"`; `"YSM_CUSTOM_STATUS"` for
    /// 0xf0–0xff and `"unknown status"` for any other unnamed byte.
    pub fn name(self) -> &'static str {
        match Self::from_byte(self.to_byte()) {
            Self::Ok => "YSM_STATUS_OK",
            Self::KeyHandleInvalid => "YSM_KEY_HANDLE_INVALID",
            Self::AeadInvalid => "YSM_AEAD_INVALID",
            Self::OtpInvalid => "YSM_OTP_INVALID",
            Self::OtpReplay => "YSM_OTP_REPLAY",
            Self::IdDuplicate => "YSM_ID_DUPLICATE",
            Self::IdNotFound => "YSM_ID_NOT_FOUND",
            Self::DbFull => "YSM_DB_FULL",
            Self::MemoryError => "YSM_MEMORY_ERROR",
            Self::FunctionDisabled => "YSM_FUNCTION_DISABLED",
            Self::KeyStorageLocked => "YSM_KEY_STORAGE_LOCKED",
            Self::Mismatch => "YSM_MISMATCH",
            Self::InvalidParameter => "YSM_INVALID_PARAMETER",
            Self::Other(0xf0..=0xff) => "YSM_CUSTOM_STATUS",
            Self::Other(_) => "unknown status",
        }
    }

    /// What the status means, in a few words (after if.h's comments).
    pub fn meaning(self) -> &'static str {
        match Self::from_byte(self.to_byte()) {
            Self::Ok => "success",
            Self::KeyHandleInvalid => "no such key handle",
            Self::AeadInvalid => "the AEAD does not authenticate",
            Self::OtpInvalid => "OTP CRC or uid wrong",
            Self::OtpReplay => "OTP replayed",
            Self::IdDuplicate => "public id already in the internal database",
            Self::IdNotFound => "public id not in the internal database",
            Self::DbFull => "internal database full",
            Self::MemoryError => "memory read/write error",
            Self::FunctionDisabled => "the key handle lacks the permission for this command",
            Self::KeyStorageLocked => "the key store is locked",
            Self::Mismatch => "compare failed or wrong unlock key",
            Self::InvalidParameter => "bad length or argument",
            Self::Other(0xf0..=0xff) => "custom status",
            Self::Other(_) => "status not in YubiHSM_if.h",
        }
    }
}

impl From<u8> for Status {
    fn from(b: u8) -> Self {
        Self::from_byte(b)
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> Self {
        s.to_byte()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (0x{:02x}: {})",
            self.name(),
            self.to_byte(),
            self.meaning()
        )
    }
}

/// A command byte as it appears in an error message: its code and if.h name.
struct CmdLabel(u8);

impl fmt::Display for CmdLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.0;
        let base = code & !RESPONSE_FLAG;
        match (code & RESPONSE_FLAG != 0, cmd::name(base)) {
            (false, Some(name)) => write!(f, "0x{code:02x} {name}"),
            (true, Some(name)) => write!(f, "0x{code:02x} (answer to {name})"),
            (_, None) => write!(f, "0x{code:02x} (unknown command)"),
        }
    }
}

/// Why bytes are not a valid frame, or a value cannot be put in one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Stream reading: the buffer does not yet hold a whole frame. Not an
    /// error in the bytes; read more and try again.
    #[error("incomplete frame: {have} of {need} bytes received so far")]
    Incomplete {
        /// Bytes available.
        have: usize,
        /// Bytes the frame needs (or the least needed to tell).
        need: usize,
    },
    /// Fewer than the two header bytes (length and command).
    #[error("a frame is at least 2 bytes (length and command), got {len}")]
    TooShort {
        /// Length given.
        len: usize,
    },
    /// Length byte 0: no frame counts fewer than its command byte (a zero
    /// here is resync padding, see [`resync_prefix_len`]).
    #[error("the length byte is 0; a frame counts at least its command byte")]
    ZeroLength,
    /// More payload than a frame carries.
    #[error("the payload is {len} bytes; a frame carries at most {MAX_PAYLOAD} (YSM_MAX_PKT_SIZE)")]
    TooLong {
        /// Payload length.
        len: usize,
    },
    /// The length byte does not match the bytes that follow it.
    #[error("the length byte says {bcnt} bytes follow it, but {actual} do")]
    LengthMismatch {
        /// The length byte.
        bcnt: u8,
        /// Bytes after the length byte.
        actual: usize,
    },
    /// The device answered another command than the one sent (pyhsm:
    /// "YubiHSM responded to wrong command"); the link needs a resync.
    #[error("the device answered the wrong command: expected {}, got {}", CmdLabel(*expected), CmdLabel(*got))]
    WrongCommand {
        /// `request command | 0x80`.
        expected: u8,
        /// Byte 1 of the answer.
        got: u8,
    },
    /// A command code this codec does not encode or decode.
    #[error("command {} is not supported by this codec", CmdLabel(*command))]
    UnknownCommand {
        /// The code.
        command: u8,
    },
    /// A variable-length field is longer than its command allows.
    #[error("{field} of {} is {len} bytes; at most {max} are allowed", CmdLabel(*command))]
    FieldTooLong {
        /// Command code.
        command: u8,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A count byte disagrees with the bytes that follow it.
    #[error("the count byte of {field} in {} says {declared} bytes, but {actual} follow", CmdLabel(*command))]
    CountMismatch {
        /// Command code.
        command: u8,
        /// The counted field.
        field: &'static str,
        /// The count byte.
        declared: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The payload ends before its fields do.
    #[error("the payload of {} is truncated: the next field needs {need} bytes, {have} are left", CmdLabel(*command))]
    Truncated {
        /// Command code.
        command: u8,
        /// Bytes the next field needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Bytes left over after the last field.
    #[error("{extra} unexpected bytes after the payload of {}", CmdLabel(*command))]
    TrailingBytes {
        /// Command code.
        command: u8,
        /// How many.
        extra: usize,
    },
    /// The answer does not echo what the request sent (nonce, key handle,
    /// echo data); pyhsm treats this as an error and so does ykhsm.
    #[error("the answer to {} does not echo the request's {field}", CmdLabel(*command))]
    EchoMismatch {
        /// Command code.
        command: u8,
        /// The field that differs.
        field: &'static str,
    },
}

impl FrameError {
    /// Whether this only means "read more bytes" ([`FrameError::Incomplete`]).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete { .. })
    }
}

/// The resync: `YSM_NULL` (0x00) followed by 95 zero bytes, 96 in all, with
/// no length byte. No answer comes; the host then drains its input until
/// 0.1 s of silence and flushes (pyhsm `cmd.py` `reset`).
pub const fn resync_bytes() -> [u8; RESYNC_LEN] {
    [0; RESYNC_LEN]
}

/// Device side: how many leading bytes of `buf` are resync padding (zeros).
/// No frame starts with 0x00, since its length byte counts the command byte.
pub fn resync_prefix_len(buf: &[u8]) -> usize {
    buf.iter().take_while(|&&b| b == 0).count()
}

fn bcnt_frame_len(bcnt: u8) -> Result<usize, FrameError> {
    if bcnt == 0 {
        return Err(FrameError::ZeroLength);
    }
    if bcnt > MAX_BCNT {
        return Err(FrameError::TooLong {
            len: usize::from(bcnt) - 1,
        });
    }
    Ok(usize::from(bcnt) + 1)
}

/// The whole length of the frame whose first two bytes are `header`: 1 + the
/// length byte. Errors if the length byte cannot start a valid frame.
pub fn frame_len(header: [u8; 2]) -> Result<usize, FrameError> {
    bcnt_frame_len(header[0])
}

/// Host side, after reading the two header bytes of an answer to
/// `request_cmd`: checks byte 1 is `request_cmd | 0x80` and the length byte
/// is valid, and returns how many payload bytes are still to read
/// (`bcnt − 1`). On [`FrameError::WrongCommand`] the driver resyncs.
pub fn check_response_header(request_cmd: u8, header: [u8; 2]) -> Result<usize, FrameError> {
    let [bcnt, got] = header;
    let expected = request_cmd | RESPONSE_FLAG;
    if got != expected {
        return Err(FrameError::WrongCommand { expected, got });
    }
    Ok(bcnt_frame_len(bcnt)? - 2)
}

/// Stream reading: whether `buf` starts with a whole frame. `Ok(n)` means the
/// first `n` bytes are one frame (pass `&buf[..n]` to a decoder);
/// [`FrameError::Incomplete`] means read more; any other error means the
/// stream is out of step.
pub fn check_frame(buf: &[u8]) -> Result<usize, FrameError> {
    let Some(&bcnt) = buf.first() else {
        return Err(FrameError::Incomplete { have: 0, need: 2 });
    };
    let need = bcnt_frame_len(bcnt)?;
    if buf.len() < need {
        return Err(FrameError::Incomplete {
            have: buf.len(),
            need,
        });
    }
    Ok(need)
}

/// Whether what a device sent after [`CONFIG_MODE_PROBE`] shows its
/// configuration console: some line (split at `\n`) matching
/// `^(NO_CFG|WSAPI|HSM).*> .*`, as pyhsm checks (`cmd.py`
/// `_handle_invalid_read_response`, after reading 50 bytes). Works on
/// raw bytes; a `\r` is an ordinary character, as in pyhsm.
pub fn is_config_mode(reply: &[u8]) -> bool {
    const PROMPTS: [&[u8]; 3] = [b"NO_CFG", b"WSAPI", b"HSM"];
    reply.split(|&b| b == b'\n').any(|line| {
        PROMPTS.iter().any(|prompt| {
            line.strip_prefix(*prompt)
                .is_some_and(|rest| rest.windows(2).any(|w| w == b"> "))
        })
    })
}

/// The answer to `YSM_SYSTEM_INFO_QUERY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SystemInfo {
    /// Firmware major version.
    pub major: u8,
    /// Firmware minor version.
    pub minor: u8,
    /// Firmware build number.
    pub build: u8,
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub protocol: u8,
    /// The device's unique id.
    pub system_uid: [u8; SYSTEM_UID_SIZE],
}

impl SystemInfo {
    /// Whether the device speaks this codec's protocol version.
    pub fn protocol_supported(&self) -> bool {
        self.protocol == PROTOCOL_VERSION
    }
}

impl fmt::Display for SystemInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "YubiHSM firmware {}.{}.{}, protocol {}, system uid {}",
            self.major,
            self.minor,
            self.build,
            self.protocol,
            hex::encode(self.system_uid)
        )
    }
}

/// The answer to `YSM_BUFFER_AEAD_GENERATE` (the layout of all three
/// AEAD-generating commands, 0x01–0x03): nonce, key handle, status and the
/// AEAD (empty unless the status is OK).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AeadAnswer {
    /// The nonce used; chosen by the device if the request's was all zeros.
    pub nonce: Nonce,
    /// The key handle, echoed.
    pub key_handle: KeyHandle,
    /// Outcome.
    pub status: Status,
    /// The AEAD: sealed data followed by the 8-byte MAC, at most
    /// [`AEAD_MAX_SIZE`] bytes. Not secret.
    pub aead: Vec<u8>,
}

/// The answer to `YSM_AEAD_YUBIKEY_OTP_DECODE` (0x06): the counters in
/// clear. The device does not check replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OtpDecodeAnswer {
    /// The nonce (the frame's "public id" field), echoed.
    pub nonce: Nonce,
    /// The key handle, echoed.
    pub key_handle: KeyHandle,
    /// The 16-bit non-volatile counter, raw (token bytes 6–7).
    pub use_ctr: u16,
    /// The 8-bit session counter (token byte 11).
    pub session_ctr: u8,
    /// Timestamp, high byte (token byte 10).
    pub ts_high: u8,
    /// Timestamp, low 16 bits (token bytes 8–9).
    pub ts_low: u16,
    /// Outcome.
    pub status: Status,
}

impl OtpDecodeAnswer {
    /// The successful answer carrying `counters` (device side).
    pub fn ok(nonce: Nonce, key_handle: KeyHandle, counters: &OtpCounters) -> Self {
        Self {
            nonce,
            key_handle,
            use_ctr: counters.use_counter,
            session_ctr: counters.session_use,
            ts_high: counters.ts_high,
            ts_low: counters.ts_low,
            status: Status::Ok,
        }
    }

    /// A failed answer: `status` and zero counters (device side).
    pub fn failed(nonce: Nonce, key_handle: KeyHandle, status: Status) -> Self {
        Self {
            nonce,
            key_handle,
            use_ctr: 0,
            session_ctr: 0,
            ts_high: 0,
            ts_low: 0,
            status,
        }
    }

    /// The counters if the status is OK; otherwise the status.
    pub fn counters(&self) -> Result<OtpCounters, Status> {
        OtpCounters::try_from(self)
    }
}

impl TryFrom<&OtpDecodeAnswer> for OtpCounters {
    type Error = Status;

    /// Only an OK answer carries counters; any other gives its status back.
    fn try_from(a: &OtpDecodeAnswer) -> Result<Self, Status> {
        if !a.status.is_ok() {
            return Err(a.status);
        }
        Ok(OtpCounters {
            use_counter: a.use_ctr,
            session_use: a.session_ctr,
            ts_high: a.ts_high,
            ts_low: a.ts_low,
        })
    }
}

/// A secret field of a frame: its `Debug` shows only its length
/// (`<redacted 32 bytes>`). What it holds decides how it is wiped (the codec
/// uses [`Zeroizing`] buffers).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> Deref for Redacted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.as_ref().len())
    }
}

/// What the host sends (if.h's request structs): only the commands ykhsm
/// sends, each variant naming who sends it.
///
/// `Debug` shows no secret: buffer contents, passwords and keys are
/// [`Redacted`], OTPs are [`Token`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `YSM_ECHO`: `n, data(n)`; the device sends the data back. Sent by the
    /// driver at start-up (pyhsm's raw-line test) and at the end of every
    /// resync (a marker unique to that resync).
    Echo {
        /// At most [`ECHO_MAX_DATA`] bytes.
        data: Vec<u8>,
    },
    /// `YSM_SYSTEM_INFO_QUERY`: empty payload. Sent at start-up (protocol
    /// version, firmware, and whether the device answers at all) and for
    /// `ykhsmd --check` and `ykadmin status`.
    SystemInfo,
    /// `YSM_BUFFER_LOAD`: `offset, n, data(n)`. The first half of wrapping a
    /// YubiKey's secrets (`ykadmin import-ykksm` and `generate`, through the
    /// daemon), as `yhsm-import-keys` does.
    BufferLoad {
        /// Where in the buffer to write.
        offset: u8,
        /// At most [`DATA_BUF_SIZE`] bytes (a YubiKey's secrets).
        data: Redacted<Zeroizing<Vec<u8>>>,
    },
    /// `YSM_BUFFER_AEAD_GENERATE`: `nonce(6), kh(4)`; seals the data buffer.
    /// The second half of wrapping secrets; also the probe of a key handle's
    /// AEAD-generate permission.
    BufferAeadGenerate {
        /// Nonce; all zeros asks the device to choose.
        nonce: Nonce,
        /// Key handle to seal under.
        key_handle: KeyHandle,
    },
    /// `YSM_AEAD_YUBIKEY_OTP_DECODE`: `public_id(6), kh(4), otp(16), aead(30)`.
    /// Every login on `backend = "yubihsm"`; also the probe of a key
    /// handle's OTP-decode permission.
    OtpDecode {
        /// The CCM nonce of the AEAD, sent in the frame's `public_id` field
        /// (the v1 file's nonce, else the public id's bytes).
        nonce: Nonce,
        /// The AEAD's key handle.
        key_handle: KeyHandle,
        /// The 16 ciphertext bytes of the OTP.
        otp: Token,
        /// The YubiKey AEAD.
        aead: YubiKeyAead,
    },
    /// `YSM_KEY_STORAGE_UNLOCK` (0.9.x): `password(16)`. `ykadmin hsm unlock`
    /// with the master key, on a device whose firmware is 0.9.x.
    KeyStorageUnlock {
        /// The password, zero padded.
        password: Redacted<Zeroizing<[u8; BLOCK_SIZE]>>,
    },
    /// `YSM_HSM_UNLOCK` (1.0+): `public_id(6), otp(16)` of an admin YubiKey.
    /// `ykadmin hsm unlock` with an admin OTP.
    HsmUnlock {
        /// The admin YubiKey's public id.
        public_id: [u8; PUBLIC_ID_SIZE],
        /// The OTP's 16 ciphertext bytes.
        otp: Token,
    },
    /// `YSM_KEY_STORE_DECRYPT` (1.0+): `key(32)`. `ykadmin hsm unlock` with
    /// the master key, on firmware 1.0 and later.
    KeyStoreDecrypt {
        /// The key-store master key, zero padded.
        key: Redacted<Zeroizing<[u8; MAX_KEY_SIZE]>>,
    },
}

/// Reads the fields of one payload, in order, never past its end.
struct Reader<'a> {
    command: u8,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(command: u8, payload: &'a [u8]) -> Self {
        Self {
            command,
            rest: payload,
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let Some((head, tail)) = self.rest.split_at_checked(n) else {
            return Err(FrameError::Truncated {
                command: self.command,
                need: n,
                have: self.rest.len(),
            });
        };
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        copy_into(&mut out, self.bytes(N)?);
        Ok(out)
    }

    /// Fills a secret buffer without a stack copy of the bytes.
    fn secret<const N: usize>(&mut self) -> Result<Zeroizing<[u8; N]>, FrameError> {
        let mut out = Zeroizing::new([0u8; N]);
        copy_into(&mut *out, self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn u16_le(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn key_handle(&mut self) -> Result<KeyHandle, FrameError> {
        Ok(KeyHandle(u32::from_le_bytes(self.array()?)))
    }

    fn nonce(&mut self) -> Result<Nonce, FrameError> {
        Ok(Nonce(self.array()?))
    }

    fn status(&mut self) -> Result<Status, FrameError> {
        Ok(Status::from_byte(self.u8()?))
    }

    /// A count byte followed by exactly that many bytes, which must be the
    /// rest of the payload.
    fn counted_rest(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], FrameError> {
        let declared = usize::from(self.u8()?);
        if declared > max {
            return Err(FrameError::FieldTooLong {
                command: self.command,
                field,
                len: declared,
                max,
            });
        }
        if declared != self.rest.len() {
            return Err(FrameError::CountMismatch {
                command: self.command,
                field,
                declared,
                actual: self.rest.len(),
            });
        }
        let data = self.rest;
        self.rest = &[];
        Ok(data)
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                command: self.command,
                extra: self.rest.len(),
            })
        }
    }
}

/// Copies as many bytes as both sides have (callers pass equal lengths).
fn copy_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

/// Splits a whole frame into command byte and payload, checking the length
/// byte. `expect_cmd` (for answers) is checked before the length.
fn split_frame(frame: &[u8], expect_cmd: Option<u8>) -> Result<(u8, &[u8]), FrameError> {
    let [bcnt, command, payload @ ..] = frame else {
        return Err(FrameError::TooShort { len: frame.len() });
    };
    if let Some(expected) = expect_cmd
        && *command != expected
    {
        return Err(FrameError::WrongCommand {
            expected,
            got: *command,
        });
    }
    if *bcnt == 0 {
        return Err(FrameError::ZeroLength);
    }
    let actual = frame.len() - 1;
    if usize::from(*bcnt) != actual {
        return Err(FrameError::LengthMismatch {
            bcnt: *bcnt,
            actual,
        });
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLong { len: payload.len() });
    }
    Ok((*command, payload))
}

/// The count byte for a variable field, refusing a field over `max`.
fn count_byte(command: u8, field: &'static str, len: usize, max: usize) -> Result<u8, FrameError> {
    let too_long = FrameError::FieldTooLong {
        command,
        field,
        len,
        max,
    };
    if len > max {
        return Err(too_long);
    }
    u8::try_from(len).map_err(|_| too_long)
}

/// Length byte, command byte, payload, in a buffer of exactly that size.
fn assemble(command: u8, payload: &[u8]) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLong { len: payload.len() });
    }
    let bcnt =
        u8::try_from(payload.len() + 1).map_err(|_| FrameError::TooLong { len: payload.len() })?;
    let mut frame = Zeroizing::new(Vec::with_capacity(payload.len() + 2));
    frame.push(bcnt);
    frame.push(command);
    frame.extend_from_slice(payload);
    Ok(frame)
}

impl Request {
    /// The command code.
    pub fn command(&self) -> u8 {
        match self {
            Self::Echo { .. } => cmd::ECHO,
            Self::SystemInfo => cmd::SYSTEM_INFO_QUERY,
            Self::BufferLoad { .. } => cmd::BUFFER_LOAD,
            Self::BufferAeadGenerate { .. } => cmd::BUFFER_AEAD_GENERATE,
            Self::OtpDecode { .. } => cmd::AEAD_YUBIKEY_OTP_DECODE,
            Self::KeyStorageUnlock { .. } => cmd::KEY_STORAGE_UNLOCK,
            Self::HsmUnlock { .. } => cmd::HSM_UNLOCK,
            Self::KeyStoreDecrypt { .. } => cmd::KEY_STORE_DECRYPT,
        }
    }

    /// The frame: `bcnt, command, payload`. Fails if a field is longer than
    /// the command allows. The buffer is wiped on drop, since frames carry
    /// keys, passwords and OTPs.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, FrameError> {
        let command = self.command();
        // Every payload fits in MAX_PAYLOAD once the counts are checked, so
        // this buffer never reallocates (which would leave copies behind).
        let mut p = Zeroizing::new(Vec::with_capacity(MAX_PAYLOAD));
        match self {
            Self::Echo { data } => {
                p.push(count_byte(command, "data", data.len(), ECHO_MAX_DATA)?);
                p.extend_from_slice(data);
            }
            Self::SystemInfo => {}
            Self::BufferLoad { offset, data } => {
                let n = count_byte(command, "data", data.len(), DATA_BUF_SIZE)?;
                p.extend_from_slice(&[*offset, n]);
                p.extend_from_slice(data);
            }
            Self::BufferAeadGenerate { nonce, key_handle } => {
                p.extend_from_slice(&nonce.0);
                p.extend_from_slice(&key_handle.to_le_bytes());
            }
            Self::OtpDecode {
                nonce,
                key_handle,
                otp,
                aead,
            } => {
                p.extend_from_slice(&nonce.0);
                p.extend_from_slice(&key_handle.to_le_bytes());
                p.extend_from_slice(otp.as_bytes());
                p.extend_from_slice(&aead.0);
            }
            Self::KeyStorageUnlock { password } => p.extend_from_slice(&password[..]),
            Self::HsmUnlock { public_id, otp } => {
                p.extend_from_slice(public_id);
                p.extend_from_slice(otp.as_bytes());
            }
            Self::KeyStoreDecrypt { key } => p.extend_from_slice(&key[..]),
        }
        assemble(command, &p)
    }

    /// Device side: the request a whole frame carries. Exact: a frame decodes
    /// only if [`Request::encode`] of the result gives it back. A command
    /// ykhsm does not send is [`FrameError::UnknownCommand`].
    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let (command, payload) = split_frame(frame, None)?;
        let mut r = Reader::new(command, payload);
        let request = match command {
            cmd::ECHO => Self::Echo {
                data: r.counted_rest("data", ECHO_MAX_DATA)?.to_vec(),
            },
            cmd::SYSTEM_INFO_QUERY => Self::SystemInfo,
            cmd::BUFFER_LOAD => {
                let offset = r.u8()?;
                let data = r.counted_rest("data", DATA_BUF_SIZE)?;
                Self::BufferLoad {
                    offset,
                    data: Redacted(Zeroizing::new(data.to_vec())),
                }
            }
            cmd::BUFFER_AEAD_GENERATE => Self::BufferAeadGenerate {
                nonce: r.nonce()?,
                key_handle: r.key_handle()?,
            },
            cmd::AEAD_YUBIKEY_OTP_DECODE => Self::OtpDecode {
                nonce: r.nonce()?,
                key_handle: r.key_handle()?,
                otp: Token::from_bytes(r.array()?),
                aead: YubiKeyAead(r.array()?),
            },
            cmd::KEY_STORAGE_UNLOCK => Self::KeyStorageUnlock {
                password: Redacted(r.secret()?),
            },
            cmd::HSM_UNLOCK => Self::HsmUnlock {
                public_id: r.array()?,
                otp: Token::from_bytes(r.array()?),
            },
            cmd::KEY_STORE_DECRYPT => Self::KeyStoreDecrypt {
                key: Redacted(r.secret()?),
            },
            other => return Err(FrameError::UnknownCommand { command: other }),
        };
        r.finish()?;
        Ok(request)
    }
}

/// What the device answers (if.h's response structs). Each variant
/// answers the [`Request`] variant of the same name. No answer to a
/// command ykhsm sends carries a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `n, data(n)`: the echoed data.
    Echo {
        /// At most [`ECHO_MAX_DATA`] bytes.
        data: Vec<u8>,
    },
    /// `major, minor, build, protocol, system_uid(12)`.
    SystemInfo(SystemInfo),
    /// `count`: bytes now in the buffer.
    BufferLoad {
        /// Bytes in the buffer.
        count: u8,
    },
    /// `nonce(6), kh(4), status, n, aead(n)`.
    BufferAeadGenerate(AeadAnswer),
    /// `public_id(6), kh(4), use_ctr(2), session_ctr, tstph, tstpl(2),
    /// status`.
    OtpDecode(OtpDecodeAnswer),
    /// `status`.
    KeyStorageUnlock {
        /// Outcome.
        status: Status,
    },
    /// `status` (`YSM_OTP_REPLAY` for a used OTP).
    HsmUnlock {
        /// Outcome.
        status: Status,
    },
    /// `status` (`YSM_MISMATCH` for a wrong key).
    KeyStoreDecrypt {
        /// Outcome.
        status: Status,
    },
}

/// At most `max` bytes of `data`, and their count as a byte.
fn clamped(data: &[u8], max: usize) -> (u8, &[u8]) {
    let data = data.get(..max).unwrap_or(data);
    (u8::try_from(data.len()).unwrap_or(u8::MAX), data)
}

impl Response {
    /// The command this answers (without the response bit).
    pub fn command(&self) -> u8 {
        match self {
            Self::Echo { .. } => cmd::ECHO,
            Self::SystemInfo(_) => cmd::SYSTEM_INFO_QUERY,
            Self::BufferLoad { .. } => cmd::BUFFER_LOAD,
            Self::BufferAeadGenerate(_) => cmd::BUFFER_AEAD_GENERATE,
            Self::OtpDecode(_) => cmd::AEAD_YUBIKEY_OTP_DECODE,
            Self::KeyStorageUnlock { .. } => cmd::KEY_STORAGE_UNLOCK,
            Self::HsmUnlock { .. } => cmd::HSM_UNLOCK,
            Self::KeyStoreDecrypt { .. } => cmd::KEY_STORE_DECRYPT,
        }
    }

    /// The status byte, for the answers that carry one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Echo { .. } | Self::SystemInfo(_) | Self::BufferLoad { .. } => None,
            Self::KeyStorageUnlock { status }
            | Self::HsmUnlock { status }
            | Self::KeyStoreDecrypt { status } => Some(*status),
            Self::BufferAeadGenerate(a) => Some(a.status),
            Self::OtpDecode(a) => Some(a.status),
        }
    }

    /// Device side: the frame, `bcnt, command | 0x80, payload`.
    ///
    /// Always a well-formed frame: a variable field longer than its limit
    /// (echo data 95 bytes, AEAD 72) is cut at the limit. An answer built
    /// from a decoded request never needs cutting.
    pub fn encode(&self) -> Vec<u8> {
        let mut p: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(MAX_PAYLOAD));
        match self {
            Self::Echo { data } => {
                let (n, data) = clamped(data, ECHO_MAX_DATA);
                p.push(n);
                p.extend_from_slice(data);
            }
            Self::SystemInfo(info) => {
                p.extend_from_slice(&[info.major, info.minor, info.build, info.protocol]);
                p.extend_from_slice(&info.system_uid);
            }
            Self::BufferLoad { count } => p.push(*count),
            Self::BufferAeadGenerate(a) => {
                let (n, aead) = clamped(&a.aead, AEAD_MAX_SIZE);
                p.extend_from_slice(&a.nonce.0);
                p.extend_from_slice(&a.key_handle.to_le_bytes());
                p.extend_from_slice(&[a.status.to_byte(), n]);
                p.extend_from_slice(aead);
            }
            Self::OtpDecode(a) => {
                p.extend_from_slice(&a.nonce.0);
                p.extend_from_slice(&a.key_handle.to_le_bytes());
                p.extend_from_slice(&a.use_ctr.to_le_bytes());
                p.extend_from_slice(&[a.session_ctr, a.ts_high]);
                p.extend_from_slice(&a.ts_low.to_le_bytes());
                p.push(a.status.to_byte());
            }
            Self::KeyStorageUnlock { status }
            | Self::HsmUnlock { status }
            | Self::KeyStoreDecrypt { status } => p.push(status.to_byte()),
        }
        // Every payload above is at most MAX_PAYLOAD bytes (84 is the
        // largest), so the length byte always fits.
        let bcnt = u8::try_from(p.len() + 1).unwrap_or(MAX_BCNT);
        let mut frame = Vec::with_capacity(p.len() + 2);
        frame.push(bcnt);
        frame.push(self.command() | RESPONSE_FLAG);
        frame.extend_from_slice(&p);
        frame
    }

    /// Host side: the answer a whole frame carries to a request with command
    /// `request_cmd`. Checks byte 1 = `request_cmd | 0x80`
    /// ([`FrameError::WrongCommand`] otherwise), the length byte against the
    /// frame, and every field. Exact, like [`Request::decode`].
    pub fn decode(request_cmd: u8, frame: &[u8]) -> Result<Self, FrameError> {
        if request_cmd & RESPONSE_FLAG != 0 || !cmd::is_supported(request_cmd) {
            return Err(FrameError::UnknownCommand {
                command: request_cmd,
            });
        }
        let (command, payload) = split_frame(frame, Some(request_cmd | RESPONSE_FLAG))?;
        let mut r = Reader::new(command, payload);
        let response = match request_cmd {
            cmd::ECHO => Self::Echo {
                data: r.counted_rest("data", ECHO_MAX_DATA)?.to_vec(),
            },
            cmd::SYSTEM_INFO_QUERY => Self::SystemInfo(SystemInfo {
                major: r.u8()?,
                minor: r.u8()?,
                build: r.u8()?,
                protocol: r.u8()?,
                system_uid: r.array()?,
            }),
            cmd::BUFFER_LOAD => Self::BufferLoad { count: r.u8()? },
            cmd::BUFFER_AEAD_GENERATE => Self::BufferAeadGenerate(AeadAnswer {
                nonce: r.nonce()?,
                key_handle: r.key_handle()?,
                status: r.status()?,
                aead: r.counted_rest("AEAD", AEAD_MAX_SIZE)?.to_vec(),
            }),
            cmd::AEAD_YUBIKEY_OTP_DECODE => Self::OtpDecode(OtpDecodeAnswer {
                nonce: r.nonce()?,
                key_handle: r.key_handle()?,
                use_ctr: r.u16_le()?,
                session_ctr: r.u8()?,
                ts_high: r.u8()?,
                ts_low: r.u16_le()?,
                status: r.status()?,
            }),
            cmd::KEY_STORAGE_UNLOCK => Self::KeyStorageUnlock {
                status: r.status()?,
            },
            cmd::HSM_UNLOCK => Self::HsmUnlock {
                status: r.status()?,
            },
            cmd::KEY_STORE_DECRYPT => Self::KeyStoreDecrypt {
                status: r.status()?,
            },
            other => return Err(FrameError::UnknownCommand { command: other }),
        };
        r.finish()?;
        Ok(response)
    }

    /// Host side: checks that this answer echoes `request` as pyhsm does —
    /// same command; same key handle and nonce where the answer carries them
    /// (for a buffer AEAD generate the nonce only when the status is OK, and
    /// a request nonce of all zeros needs a device-chosen, non-zero one
    /// back); echo data equal.
    pub fn check_echo(&self, request: &Request) -> Result<(), FrameError> {
        let command = request.command();
        if self.command() != command {
            return Err(FrameError::WrongCommand {
                expected: command | RESPONSE_FLAG,
                got: self.command() | RESPONSE_FLAG,
            });
        }
        let mismatch = |field| Err(FrameError::EchoMismatch { command, field });
        match (request, self) {
            (Request::Echo { data: sent }, Self::Echo { data: got }) if sent != got => {
                mismatch("data")
            }
            (Request::BufferAeadGenerate { nonce, key_handle }, Self::BufferAeadGenerate(a)) => {
                if a.key_handle != *key_handle {
                    return mismatch("key handle");
                }
                let device_chooses = nonce.0 == [0; AEAD_NONCE_SIZE];
                let nonce_ok = if device_chooses {
                    a.nonce != *nonce
                } else {
                    a.nonce == *nonce
                };
                if a.status.is_ok() && !nonce_ok {
                    return mismatch("nonce");
                }
                Ok(())
            }
            (
                Request::OtpDecode {
                    nonce, key_handle, ..
                },
                Self::OtpDecode(a),
            ) => {
                if a.key_handle != *key_handle {
                    return mismatch("key handle");
                }
                if a.nonce != *nonce {
                    return mismatch("nonce");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mode_prompts_are_recognised_as_pyhsm_does() {
        assert!(is_config_mode(b"\r\nHSM> "));
        assert!(is_config_mode(b"junk\nNO_CFG> \r\n"));
        assert!(is_config_mode(b"WSAPI (1.0)> x"));
        assert!(!is_config_mode(b"\rHSM> "), "pyhsm splits at \\n only");
        assert!(!is_config_mode(b"HSM>"));
        assert!(!is_config_mode(b" HSM> "));
        assert!(!is_config_mode(b""));
        assert!(!is_config_mode(&[0x12, 0x86, 0xff]));
    }

    #[test]
    fn status_names_follow_if_h() {
        assert_eq!(Status::from_byte(0x83).name(), "YSM_OTP_INVALID");
        assert_eq!(Status::from_byte(0x8c), Status::InvalidParameter);
        assert_eq!(Status::Other(0x80).name(), "YSM_STATUS_OK");
        assert_eq!(Status::from_byte(0xf3).name(), "YSM_CUSTOM_STATUS");
        for b in 0..=u8::MAX {
            assert_eq!(Status::from_byte(b).to_byte(), b);
        }
        assert_eq!(
            Status::OtpInvalid.to_string(),
            "YSM_OTP_INVALID (0x83: OTP CRC or uid wrong)"
        );
    }

    #[test]
    fn permission_names_list_set_flags() {
        assert_eq!(
            permission::names(permission::AEAD_YUBIKEY_OTP_DECODE | permission::USER_NONCE | 1),
            ["YSM_AEAD_YUBIKEY_OTP_DECODE", "YSM_USER_NONCE"]
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let r = Request::KeyStoreDecrypt {
            key: Redacted(Zeroizing::new([0xab; 32])),
        };
        let s = format!("{r:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        assert!(s.contains("<redacted 32 bytes>"), "{s}");
        let r = Request::BufferLoad {
            offset: 0,
            data: Redacted(Zeroizing::new(vec![0xcd; 22])),
        };
        let s = format!("{r:?}");
        assert!(!s.contains("cd") && !s.contains("205"), "{s}");
        assert!(s.contains("<redacted 22 bytes>"), "{s}");
    }
}
