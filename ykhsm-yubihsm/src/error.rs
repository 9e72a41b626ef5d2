//! What went wrong talking to a YubiHSM: one error type for the driver,
//! every variant naming the device path, those about one exchange naming
//! the command. No key material is ever kept in one.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::wire::{self, FrameError, Status, SystemInfo, cmd};

/// The command an error is about, as errors show it:
/// `0x06 YSM_AEAD_YUBIKEY_OTP_DECODE`, or `resync` for `YSM_NULL` (an error
/// during a resync, which runs before the command that needed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command(pub u8);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.0;
        if code == cmd::NULL {
            return f.write_str("resync");
        }
        match cmd::name(code) {
            Some(name) => write!(f, "0x{code:02x} {name}"),
            None => write!(f, "0x{code:02x}"),
        }
    }
}

/// What went wrong talking to a YubiHSM. Every variant names the device path;
/// those about one exchange name the command. No key material is ever kept.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The device could not be opened (missing, not a terminal, no
    /// permission) or its line set up (raw mode, 115200 baud).
    #[error("YubiHSM {}: cannot open the device: {source}", path.display())]
    Open {
        /// Device path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the device: its `flock` (a second ykhsmd), or
    /// for an unprivileged opener its exclusive mode (`TIOCEXCL`). Only one
    /// may talk to a YubiHSM at a time.
    #[error(
        "YubiHSM {}: another process has the device open (a second ykhsmd?); only one may use it",
        path.display()
    )]
    Busy {
        /// Device path.
        path: PathBuf,
    },
    /// The serial line could not be flushed (`tcflush`, during a resync).
    #[error("YubiHSM {}: cannot {what} the serial line: {source}", path.display())]
    Line {
        /// Device path.
        path: PathBuf,
        /// The step, e.g. `flush the input of`.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The device talks its configuration console (started with the button
    /// held), not frames.
    #[error(
        "YubiHSM {}: the device is in configuration mode (started with its button held); unplug it and plug it in again without touching the button",
        path.display()
    )]
    ConfigMode {
        /// Device path.
        path: PathBuf,
    },
    /// The device speaks another protocol version than 1.
    #[error("YubiHSM {}: unsupported protocol version {} ({info}); only version {} is supported", path.display(), info.protocol, wire::PROTOCOL_VERSION)]
    UnsupportedProtocol {
        /// Device path.
        path: PathBuf,
        /// What the device reported.
        info: SystemInfo,
    },
    /// The start-up echo of all 256 byte values came back altered: the line
    /// is not raw, or this is not a YubiHSM.
    #[error("YubiHSM {}: the raw-line echo test failed (bytes altered on the line)", path.display())]
    LineNotRaw {
        /// Device path.
        path: PathBuf,
    },
    /// No (complete) answer before the deadline, or the request could not
    /// be written by then.
    #[error("YubiHSM {}: no answer to {command} within {timeout:?}", path.display())]
    Timeout {
        /// Device path.
        path: PathBuf,
        /// The command, or `resync` (the echo that ends a resync did not
        /// come back).
        command: Command,
        /// The deadline.
        timeout: Duration,
    },
    /// The device went away (read or write error, hang-up, end of file).
    #[error("YubiHSM {}: device gone during {command}: {source}", path.display())]
    Gone {
        /// Device path.
        path: PathBuf,
        /// The command, or `resync`.
        command: Command,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The answer was not a valid frame for the request (garbage, wrong
    /// command, wrong echo); the link is resynchronised before the next
    /// command.
    #[error("YubiHSM {}: bad answer to {command}: {source}", path.display())]
    Frame {
        /// Device path.
        path: PathBuf,
        /// The command, or `resync`.
        command: Command,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The request could not be encoded (a field too long).
    #[error("YubiHSM {}: cannot encode {command}: {source}", path.display())]
    Encode {
        /// Device path.
        path: PathBuf,
        /// The command.
        command: Command,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The device answered with a status other than `YSM_STATUS_OK`.
    #[error("YubiHSM {}: {command} failed: {status}", path.display())]
    Status {
        /// Device path.
        path: PathBuf,
        /// The command.
        command: Command,
        /// The status.
        status: Status,
    },
    /// An admin OTP whose public id is not the 6 bytes `YSM_HSM_UNLOCK`
    /// carries.
    #[error(
        "YubiHSM {}: the admin OTP's public id is {len} bytes long; the YubiHSM takes {}",
        path.display(),
        wire::PUBLIC_ID_SIZE
    )]
    AdminPublicIdLength {
        /// Device path.
        path: PathBuf,
        /// The public id's length in bytes.
        len: usize,
    },
    /// A buffer AEAD generate answered with an AEAD that is not a YubiKey
    /// AEAD's 30 bytes.
    #[error(
        "YubiHSM {}: {} returned a {len}-byte AEAD, expected {}",
        path.display(),
        Command(cmd::BUFFER_AEAD_GENERATE),
        wire::YUBIKEY_AEAD_SIZE
    )]
    AeadLength {
        /// Device path.
        path: PathBuf,
        /// The AEAD's length.
        len: usize,
    },
    /// The device kept sending during a resync.
    #[error("YubiHSM {}: the device kept sending for {:?} during a resync", path.display(), crate::device::RESYNC_MAX_DRAIN)]
    Babbling {
        /// Device path.
        path: PathBuf,
    },
}

impl HsmError {
    /// Whether the device disappeared (the port must be reopened).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Gone { .. })
    }

    /// The device's status, if this is a non-OK answer.
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
