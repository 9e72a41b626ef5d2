//! A YubiHSM 1 driver over its serial port (yubihsm1.md §1–§2), and a
//! [`Backend`] on top of it.
//!
//! [`YubiHsm`] owns the open device: raw mode, the start-up checks of §1
//! (resync, configuration mode, system info, protocol version, the raw-line
//! echo test), and one request/response exchange at a time with a deadline.
//! The frames themselves are [`ykhsm_core::yubihsm`]'s.
//!
//! [`YubiHsmBackend`] serialises requests through a mutex, maps the device's
//! statuses to [`BackendError`] (0x82 and 0x83 are a bad OTP, §7), and
//! reopens the device on the next request after it disappeared.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, BaudRate, ControlFlags, FlushArg, SetArg};
use thiserror::Error;
use zeroize::Zeroizing;

use ykhsm_core::aead::{Nonce, YubiKeyAead};
use ykhsm_core::backend::{Backend, BackendError, Purpose, Unlock};
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::otp::{OtpCounters, Token, YubiKeySecrets};
use ykhsm_core::yubihsm::{
    self, AeadAnswer, BLOCK_SIZE, CONFIG_MODE_PROBE, CONFIG_MODE_READ_LEN, DATA_BUF_SIZE,
    ECHO_MAX_DATA, FrameError, MAX_KEY_SIZE, PUBLIC_ID_SIZE, RANDOM_MAX_LEN, Request, Response,
    Status, SystemInfo, cmd,
};

/// Silence that ends the drain after a resync (pyhsm waits 0.1 s).
const RESYNC_QUIET: Duration = Duration::from_millis(100);
/// Longest a resync drains a device that keeps talking before giving up.
const RESYNC_MAX_DRAIN: Duration = Duration::from_secs(2);
/// Bytes per echo of the start-up raw-line test (pyhsm `test_comm`).
const RAW_TEST_CHUNK: usize = 86;
/// Start of the echo that ends a resync; a per-resync counter follows in 16
/// hex digits. The whole frame is printable ASCII without CR or LF (its
/// length bytes are 34 and 32), so a configuration console (which answers
/// each CR) sees no line end before the probe.
const SYNC_MARKER: &[u8; 16] = b"ykhsm-resync-no-";

/// A command byte as errors show it: `0x06 YSM_AEAD_YUBIKEY_OTP_DECODE`.
fn label(code: u8) -> String {
    match cmd::name(code) {
        Some(name) => format!("0x{code:02x} {name}"),
        None => format!("0x{code:02x}"),
    }
}

/// [`label`], or `resync` for [`cmd::NULL`] (errors during a resync, which
/// runs before the command that needed it).
fn command_label(code: u8) -> String {
    if code == cmd::NULL {
        "resync".to_owned()
    } else {
        label(code)
    }
}

/// A starting value for [`YubiHsm`]'s resync markers: the clock's
/// nanoseconds and the process id, so the markers of an earlier open of the
/// same device (whose late answers may still come) are not reused.
fn initial_sync_marker() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let low = u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or_default();
    low ^ (u64::from(std::process::id()) << 32)
}

/// What went wrong talking to a YubiHSM. Every variant names the device path;
/// those about one exchange name the command. No key material is ever kept.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The device could not be opened.
    #[error("YubiHSM {}: cannot open the device: {source}", path.display())]
    Open {
        /// Device path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the device (its `flock`): only one may talk
    /// to a YubiHSM at a time.
    #[error(
        "YubiHSM {}: another process has the device open (a second ykhsmd?); only one may use it",
        path.display()
    )]
    Busy {
        /// Device path.
        path: PathBuf,
    },
    /// The serial line could not be put in raw mode (or flushed).
    #[error("YubiHSM {}: cannot set up the serial line ({what}): {source}", path.display())]
    Termios {
        /// Device path.
        path: PathBuf,
        /// The termios step.
        what: &'static str,
        /// The error.
        #[source]
        source: nix::Error,
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
    #[error("YubiHSM {}: unsupported protocol version {} ({info}); only version {} is supported", path.display(), info.protocol, yubihsm::PROTOCOL_VERSION)]
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
    /// No (complete) answer before the deadline.
    #[error("YubiHSM {}: no answer to {command} within {timeout:?}", path.display())]
    Timeout {
        /// Device path.
        path: PathBuf,
        /// The command, e.g. `0x26 YSM_SYSTEM_INFO_QUERY`, or `resync`
        /// (the echo that ends a resync did not come back).
        command: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The device went away (read or write error, hang-up, end of file).
    #[error("YubiHSM {}: device gone during {command}: {source}", path.display())]
    Gone {
        /// Device path.
        path: PathBuf,
        /// The command, or `resync`.
        command: String,
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
        command: String,
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
        command: String,
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
        command: String,
        /// The status.
        status: Status,
    },
    /// An unlock secret that cannot be sent.
    #[error("YubiHSM {}: {reason}", path.display())]
    Unlock {
        /// Device path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The device kept sending during a resync.
    #[error("YubiHSM {}: the device kept sending for {:?} during a resync", path.display(), RESYNC_MAX_DRAIN)]
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

/// Why a read with a deadline stopped.
enum ReadFail {
    Timeout,
    Gone(io::Error),
}

/// An open YubiHSM 1: one serial port, one request at a time.
#[derive(Debug)]
pub struct YubiHsm {
    path: PathBuf,
    /// Held with an exclusive `flock` while open: a second ykhsmd (another
    /// configuration) or `ykhsmd --check` cannot interleave its exchanges
    /// with ours.
    port: Flock<File>,
    timeout: Duration,
    info: SystemInfo,
    needs_resync: bool,
    /// Counter in the echo that ends each resync; starts at a value from the
    /// clock, so two opens of one device do not use the same markers.
    sync_marker: u64,
}

impl YubiHsm {
    /// Opens the device at `path` (e.g. `/dev/ttyACM0`), puts the line in raw
    /// mode at 115200 baud and runs the start-up of yubihsm1.md §1: resync,
    /// system info (checking for configuration mode when nothing answers),
    /// protocol version 1, and the raw-line echo test. `timeout` bounds each
    /// exchange.
    pub fn open(path: &Path, timeout: Duration) -> Result<Self, HsmError> {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(path)
            .map_err(|source| HsmError::Open {
                path: path.to_owned(),
                source,
            })?;
        let port = Flock::lock(port, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                HsmError::Busy {
                    path: path.to_owned(),
                }
            } else {
                HsmError::Open {
                    path: path.to_owned(),
                    source: io::Error::from(errno),
                }
            }
        })?;
        let termios_err = |what| {
            let path = path.to_owned();
            move |source| HsmError::Termios { path, what, source }
        };
        let mut t = termios::tcgetattr(port.as_fd()).map_err(termios_err("tcgetattr"))?;
        termios::cfmakeraw(&mut t);
        t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
        termios::cfsetspeed(&mut t, BaudRate::B115200).map_err(termios_err("cfsetspeed"))?;
        termios::tcsetattr(port.as_fd(), SetArg::TCSANOW, &t).map_err(termios_err("tcsetattr"))?;
        let mut hsm = Self {
            path: path.to_owned(),
            port,
            timeout,
            info: SystemInfo {
                major: 0,
                minor: 0,
                build: 0,
                protocol: 0,
                system_uid: [0; yubihsm::SYSTEM_UID_SIZE],
            },
            needs_resync: true,
            sync_marker: initial_sync_marker(),
        };
        let info = match hsm.system_info() {
            Ok(info) => info,
            Err(e @ HsmError::Timeout { .. }) => {
                if hsm.probe_config_mode()? {
                    return Err(HsmError::ConfigMode { path: hsm.path });
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if !info.protocol_supported() {
            return Err(HsmError::UnsupportedProtocol {
                path: hsm.path,
                info,
            });
        }
        hsm.info = info;
        hsm.raw_line_test()?;
        Ok(hsm)
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the device reported at start-up.
    pub fn info(&self) -> SystemInfo {
        self.info
    }

    /// The deadline of one exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `YSM_SYSTEM_INFO_QUERY`.
    pub fn system_info(&mut self) -> Result<SystemInfo, HsmError> {
        match self.exchange(&Request::SystemInfo)? {
            Response::SystemInfo(info) => Ok(info),
            other => Err(self.unexpected(cmd::SYSTEM_INFO_QUERY, &other)),
        }
    }

    /// `YSM_ECHO`: at most [`ECHO_MAX_DATA`] bytes, returned as the device
    /// sent them back (checked equal).
    pub fn echo(&mut self, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        match self.exchange(&Request::Echo {
            data: data.to_vec(),
        })? {
            Response::Echo { data } => Ok(data),
            other => Err(self.unexpected(cmd::ECHO, &other)),
        }
    }

    /// `YSM_RANDOM_GENERATE`, as many times as needed for `n` bytes.
    pub fn random(&mut self, n: usize) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let mut out = Zeroizing::new(Vec::with_capacity(n));
        while out.len() < n {
            let want = (n - out.len()).min(RANDOM_MAX_LEN);
            let len = u8::try_from(want).unwrap_or(u8::MAX);
            match self.exchange(&Request::RandomGenerate { len })? {
                Response::RandomGenerate { data } => out.extend_from_slice(&data),
                other => return Err(self.unexpected(cmd::RANDOM_GENERATE, &other)),
            }
        }
        Ok(out)
    }

    /// `YSM_AEAD_YUBIKEY_OTP_DECODE`: the counters of `token`, decrypted with
    /// the YubiKey key inside `aead` (sealed under `key_handle` and `nonce`).
    /// A non-OK status is [`HsmError::Status`].
    pub fn otp_decode(
        &mut self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        aead: &YubiKeyAead,
        token: &Token,
    ) -> Result<OtpCounters, HsmError> {
        let request = Request::OtpDecode {
            nonce: *nonce,
            key_handle,
            otp: token.clone(),
            aead: aead.clone(),
        };
        match self.exchange(&request)? {
            Response::OtpDecode(answer) => answer
                .counters()
                .map_err(|status| self.status_error(cmd::AEAD_YUBIKEY_OTP_DECODE, status)),
            other => Err(self.unexpected(cmd::AEAD_YUBIKEY_OTP_DECODE, &other)),
        }
    }

    /// `YSM_AEAD_GENERATE`: seals `plaintext` (at most 64 bytes) under
    /// `key_handle` and `nonce` (all zeros: the device picks the nonce).
    pub fn aead_generate(
        &mut self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        plaintext: &[u8],
    ) -> Result<AeadAnswer, HsmError> {
        let request = Request::AeadGenerate {
            nonce: *nonce,
            key_handle,
            data: Zeroizing::new(plaintext.to_vec()),
        };
        match self.exchange(&request)? {
            Response::AeadGenerate(a) => self.aead_ok(cmd::AEAD_GENERATE, a),
            other => Err(self.unexpected(cmd::AEAD_GENERATE, &other)),
        }
    }

    /// `YSM_BUFFER_LOAD` of `plaintext` at offset 0, then
    /// `YSM_BUFFER_AEAD_GENERATE`: the hardware import path of
    /// `yhsm-import-keys` (yubihsm1.md §3).
    pub fn buffer_aead_generate(
        &mut self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        plaintext: &[u8],
    ) -> Result<AeadAnswer, HsmError> {
        if plaintext.len() > DATA_BUF_SIZE {
            return Err(HsmError::Encode {
                path: self.path.clone(),
                command: label(cmd::BUFFER_LOAD),
                source: FrameError::FieldTooLong {
                    command: cmd::BUFFER_LOAD,
                    field: "data",
                    len: plaintext.len(),
                    max: DATA_BUF_SIZE,
                },
            });
        }
        let load = Request::BufferLoad {
            offset: 0,
            data: Zeroizing::new(plaintext.to_vec()),
        };
        match self.exchange(&load)? {
            Response::BufferLoad { count } if usize::from(count) == plaintext.len() => {}
            Response::BufferLoad { count } => {
                return Err(HsmError::Frame {
                    path: self.path.clone(),
                    command: label(cmd::BUFFER_LOAD),
                    source: FrameError::CountMismatch {
                        command: cmd::BUFFER_LOAD,
                        field: "buffer",
                        declared: usize::from(count),
                        actual: plaintext.len(),
                    },
                });
            }
            other => return Err(self.unexpected(cmd::BUFFER_LOAD, &other)),
        }
        let request = Request::BufferAeadGenerate {
            nonce: *nonce,
            key_handle,
        };
        match self.exchange(&request)? {
            Response::BufferAeadGenerate(a) => self.aead_ok(cmd::BUFFER_AEAD_GENERATE, a),
            other => Err(self.unexpected(cmd::BUFFER_AEAD_GENERATE, &other)),
        }
    }

    /// `YSM_KEY_STORAGE_UNLOCK` (firmware 0.9.x): `password` (at most 16
    /// bytes), zero padded.
    pub fn key_storage_unlock(&mut self, password: &[u8]) -> Result<(), HsmError> {
        let mut padded = Zeroizing::new([0u8; BLOCK_SIZE]);
        self.pad_into(&mut padded[..], password, cmd::KEY_STORAGE_UNLOCK)?;
        match self.exchange(&Request::KeyStorageUnlock { password: padded })? {
            Response::KeyStorageUnlock { status } => self.ok(cmd::KEY_STORAGE_UNLOCK, status),
            other => Err(self.unexpected(cmd::KEY_STORAGE_UNLOCK, &other)),
        }
    }

    /// `YSM_KEY_STORE_DECRYPT` (firmware 1.0+): the master key (at most 32
    /// bytes), zero padded.
    pub fn key_store_decrypt(&mut self, key: &[u8]) -> Result<(), HsmError> {
        let mut padded = Zeroizing::new([0u8; MAX_KEY_SIZE]);
        self.pad_into(&mut padded[..], key, cmd::KEY_STORE_DECRYPT)?;
        match self.exchange(&Request::KeyStoreDecrypt { key: padded })? {
            Response::KeyStoreDecrypt { status } => self.ok(cmd::KEY_STORE_DECRYPT, status),
            other => Err(self.unexpected(cmd::KEY_STORE_DECRYPT, &other)),
        }
    }

    /// `YSM_HSM_UNLOCK` (firmware 1.0+): an OTP of an admin YubiKey.
    pub fn hsm_unlock(
        &mut self,
        public_id: [u8; PUBLIC_ID_SIZE],
        otp: &Token,
    ) -> Result<(), HsmError> {
        let request = Request::HsmUnlock {
            public_id,
            otp: otp.clone(),
        };
        match self.exchange(&request)? {
            Response::HsmUnlock { status } => self.ok(cmd::HSM_UNLOCK, status),
            other => Err(self.unexpected(cmd::HSM_UNLOCK, &other)),
        }
    }

    /// One request/response exchange within the timeout. Resyncs first if
    /// the previous exchange left the link out of step.
    pub fn exchange(&mut self, request: &Request) -> Result<Response, HsmError> {
        let code = request.command();
        let frame = request.encode().map_err(|source| HsmError::Encode {
            path: self.path.clone(),
            command: label(code),
            source,
        })?;
        if self.needs_resync {
            self.resync()?;
        }
        let result = self.exchange_inner(code, &frame, request);
        if result.is_err() {
            self.needs_resync = true;
        }
        result
    }

    fn exchange_inner(
        &mut self,
        code: u8,
        frame: &[u8],
        request: &Request,
    ) -> Result<Response, HsmError> {
        let deadline = Instant::now() + self.timeout;
        self.write_all(frame, code)?;
        let mut answer = Zeroizing::new(Vec::with_capacity(yubihsm::MAX_FRAME_LEN));
        answer.resize(2, 0);
        self.read_exact_until(&mut answer[..2], deadline, code)?;
        let header = [answer[0], answer[1]];
        let rest =
            yubihsm::check_response_header(code, header).map_err(|e| self.frame_err(code, e))?;
        answer.resize(2 + rest, 0);
        self.read_exact_until(&mut answer[2..], deadline, code)?;
        let response = Response::decode(code, &answer).map_err(|e| self.frame_err(code, e))?;
        response
            .check_echo(request)
            .map_err(|e| self.frame_err(code, e))?;
        Ok(response)
    }

    /// Resynchronises the link (yubihsm1.md §1): 96 zero bytes, drain until
    /// 0.1 s of silence, flush the input; then, as pyhsm's `reset` with its
    /// sync test, an echo that must come back within the timeout. The echo
    /// carries a marker unique to this resync, and whole answer frames that
    /// arrive before its answer are read and discarded: a late answer to a
    /// request that timed out (a slow device answers after the drain) is
    /// never taken for the answer to the next request.
    pub fn resync(&mut self) -> Result<(), HsmError> {
        self.needs_resync = true;
        self.write_all(&yubihsm::resync_bytes(), cmd::NULL)?;
        let start = Instant::now();
        let mut sink = [0u8; 128];
        loop {
            match self.read_some(&mut sink, Instant::now() + RESYNC_QUIET) {
                Ok(_) => {
                    if start.elapsed() > RESYNC_MAX_DRAIN {
                        return Err(HsmError::Babbling {
                            path: self.path.clone(),
                        });
                    }
                }
                Err(ReadFail::Timeout) => break,
                Err(ReadFail::Gone(source)) => return Err(self.gone(cmd::NULL, source)),
            }
        }
        termios::tcflush(self.port.as_fd(), FlushArg::TCIFLUSH).map_err(|source| {
            HsmError::Termios {
                path: self.path.clone(),
                what: "tcflush",
                source,
            }
        })?;
        self.sync_echo()?;
        self.needs_resync = false;
        Ok(())
    }

    /// The end of a resync: echoes a fresh marker and reads answer frames
    /// until its own comes back, discarding the others (the device answers
    /// in order, so anything before it is stale). Errors name `resync`.
    fn sync_echo(&mut self) -> Result<(), HsmError> {
        self.sync_marker = self.sync_marker.wrapping_add(1);
        let mut data = SYNC_MARKER.to_vec();
        data.extend_from_slice(format!("{:016x}", self.sync_marker).as_bytes());
        let request = Request::Echo { data };
        let frame = request
            .encode()
            .map_err(|source| self.frame_err(cmd::NULL, source))?;
        let deadline = Instant::now() + self.timeout;
        self.write_all(&frame, cmd::NULL)?;
        let mut answer = Zeroizing::new(Vec::with_capacity(yubihsm::MAX_FRAME_LEN));
        loop {
            answer.clear();
            answer.resize(2, 0);
            self.read_exact_until(&mut answer[..2], deadline, cmd::NULL)?;
            let header = [answer[0], answer[1]];
            // Any answer frame may come here, not only the echo's.
            if header[1] & yubihsm::RESPONSE_FLAG == 0 {
                return Err(self.frame_err(
                    cmd::NULL,
                    FrameError::WrongCommand {
                        expected: cmd::ECHO | yubihsm::RESPONSE_FLAG,
                        got: header[1],
                    },
                ));
            }
            let len = yubihsm::frame_len(header).map_err(|e| self.frame_err(cmd::NULL, e))?;
            answer.resize(len, 0);
            self.read_exact_until(&mut answer[2..], deadline, cmd::NULL)?;
            let ours = Response::decode(cmd::ECHO, &answer)
                .is_ok_and(|response| response.check_echo(&request).is_ok());
            if ours {
                return Ok(());
            }
        }
    }

    /// After a silent start: writes `\r\r\r` and looks for the configuration
    /// console's prompt in up to 50 bytes.
    fn probe_config_mode(&mut self) -> Result<bool, HsmError> {
        self.write_all(CONFIG_MODE_PROBE, cmd::NULL)?;
        let deadline = Instant::now() + self.timeout;
        let mut got = Vec::with_capacity(CONFIG_MODE_READ_LEN);
        let mut buf = [0u8; CONFIG_MODE_READ_LEN];
        while got.len() < CONFIG_MODE_READ_LEN && !yubihsm::is_config_mode(&got) {
            let room = CONFIG_MODE_READ_LEN - got.len();
            match self.read_some(&mut buf[..room], deadline) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(ReadFail::Timeout) => break,
                Err(ReadFail::Gone(source)) => return Err(self.gone(cmd::NULL, source)),
            }
        }
        Ok(yubihsm::is_config_mode(&got))
    }

    /// pyhsm's `test_comm`: echo all 256 byte values and `\r\n\r\n` in
    /// chunks of 86 bytes.
    fn raw_line_test(&mut self) -> Result<(), HsmError> {
        let mut all: Vec<u8> = (0..=u8::MAX).collect();
        all.extend_from_slice(b"\r\n\r\n");
        for chunk in all.chunks(RAW_TEST_CHUNK.min(ECHO_MAX_DATA)) {
            match self.echo(chunk) {
                Ok(back) if back == chunk => {}
                Ok(_) | Err(HsmError::Frame { .. }) => {
                    self.needs_resync = true;
                    return Err(HsmError::LineNotRaw {
                        path: self.path.clone(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8], code: u8) -> Result<(), HsmError> {
        let result = self.port.write_all(bytes).and_then(|()| self.port.flush());
        result.map_err(|source| self.gone(code, source))
    }

    /// Reads at least one byte, waiting until `deadline`.
    fn read_some(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, ReadFail> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ReadFail::Timeout);
            }
            // Round up so a sub-millisecond remainder still waits.
            let ms = remaining.as_micros().div_ceil(1000);
            let timeout = PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX));
            let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ReadFail::Gone(io::Error::from(e))),
            }
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if !revents.contains(PollFlags::POLLIN)
                && revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
            {
                return Err(ReadFail::Gone(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the serial line hung up",
                )));
            }
            match self.port.read(buf) {
                Ok(0) => {
                    return Err(ReadFail::Gone(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of file on the serial line",
                    )));
                }
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) => return Err(ReadFail::Gone(e)),
            }
        }
    }

    fn read_exact_until(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
        code: u8,
    ) -> Result<(), HsmError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_some(&mut buf[filled..], deadline) {
                Ok(n) => filled += n,
                Err(ReadFail::Timeout) => {
                    return Err(HsmError::Timeout {
                        path: self.path.clone(),
                        command: command_label(code),
                        timeout: self.timeout,
                    });
                }
                Err(ReadFail::Gone(source)) => return Err(self.gone(code, source)),
            }
        }
        Ok(())
    }

    fn pad_into(&self, dst: &mut [u8], src: &[u8], code: u8) -> Result<(), HsmError> {
        if src.len() > dst.len() {
            return Err(HsmError::Encode {
                path: self.path.clone(),
                command: label(code),
                source: FrameError::FieldTooLong {
                    command: code,
                    field: "secret",
                    len: src.len(),
                    max: dst.len(),
                },
            });
        }
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
        Ok(())
    }

    fn aead_ok(&self, code: u8, answer: AeadAnswer) -> Result<AeadAnswer, HsmError> {
        self.ok(code, answer.status)?;
        Ok(answer)
    }

    fn ok(&self, code: u8, status: Status) -> Result<(), HsmError> {
        if status.is_ok() {
            Ok(())
        } else {
            Err(self.status_error(code, status))
        }
    }

    fn status_error(&self, code: u8, status: Status) -> HsmError {
        HsmError::Status {
            path: self.path.clone(),
            command: label(code),
            status,
        }
    }

    fn gone(&self, code: u8, source: io::Error) -> HsmError {
        HsmError::Gone {
            path: self.path.clone(),
            command: command_label(code),
            source,
        }
    }

    fn frame_err(&self, code: u8, source: FrameError) -> HsmError {
        HsmError::Frame {
            path: self.path.clone(),
            command: command_label(code),
            source,
        }
    }

    fn unexpected(&self, code: u8, got: &Response) -> HsmError {
        self.frame_err(
            code,
            FrameError::WrongCommand {
                expected: code | yubihsm::RESPONSE_FLAG,
                got: got.command() | yubihsm::RESPONSE_FLAG,
            },
        )
    }
}

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

/// Maps a device error to what the daemon answers: 0x82/0x83 are a bad OTP
/// (yubihsm1.md §7); 0x81 and 0x89 are named; everything else is a failure
/// naming the device, the command and the status.
fn to_backend_error(e: HsmError, key_handle: KeyHandle, purpose: Purpose) -> BackendError {
    match e.status() {
        Some(Status::KeyStorageLocked) => BackendError::Locked(match &e {
            HsmError::Status { path, .. } => format!("YubiHSM {}", path.display()),
            other => other.to_string(),
        }),
        Some(Status::OtpInvalid) => BackendError::OtpInvalid,
        Some(Status::AeadInvalid) => BackendError::AeadInvalid { key_handle },
        Some(Status::KeyHandleInvalid) => BackendError::UnknownKeyHandle { key_handle },
        Some(Status::FunctionDisabled) => BackendError::NotPermitted {
            key_handle,
            purpose,
        },
        _ => BackendError::Failure(e.to_string()),
    }
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
            BackendError::Failure(format!(
                "YubiHSM {}: {} returned a {}-byte AEAD, expected {}",
                self.path.display(),
                label(cmd::BUFFER_AEAD_GENERATE),
                answer.aead.len(),
                yubihsm::YUBIKEY_AEAD_SIZE
            ))
        })
    }

    fn is_device(&self) -> bool {
        true
    }

    fn health(&self) -> Option<Result<String, BackendError>> {
        Some(
            self.system_info()
                .map(|info| format!("{}: {info}", self.path.display()))
                .map_err(|e| BackendError::Failure(e.to_string())),
        )
    }

    /// The master key goes to `YSM_KEY_STORE_DECRYPT` on firmware 1.0 and
    /// later, to `YSM_KEY_STORAGE_UNLOCK` on 0.9.x (as pyhsm's
    /// `yhsm-keystore-unlock` does); an admin OTP to `YSM_HSM_UNLOCK`.
    fn unlock(&self, secret: &Unlock) -> Result<(), BackendError> {
        let result = self.with_hsm(|hsm| match secret {
            Unlock::MasterKey(key) if hsm.info().major == 0 => hsm.key_storage_unlock(key),
            Unlock::MasterKey(key) => hsm.key_store_decrypt(key),
            Unlock::AdminOtp(otp) => {
                let mut public_id = [0u8; PUBLIC_ID_SIZE];
                let bytes = otp.public_id().to_bytes();
                if bytes.len() != PUBLIC_ID_SIZE {
                    return Err(HsmError::Unlock {
                        path: hsm.path().to_owned(),
                        reason: format!(
                            "the admin OTP's public id is {} bytes long; the YubiHSM takes {PUBLIC_ID_SIZE}",
                            bytes.len()
                        ),
                    });
                }
                public_id.copy_from_slice(&bytes);
                hsm.hsm_unlock(public_id, otp.token())
            }
        });
        result.map_err(|e| {
            let refused = match e.status() {
                Some(Status::Mismatch) => Some("wrong master key"),
                Some(Status::OtpReplay) => Some("the admin OTP was used before"),
                Some(Status::OtpInvalid) => Some("the OTP does not decode under the admin key"),
                Some(Status::IdNotFound) => {
                    Some("that public id is not an admin YubiKey of this HSM")
                }
                _ => None,
            };
            match (refused, &e) {
                (Some(why), _) => BackendError::UnlockRefused(format!("{e} ({why})")),
                (None, HsmError::Unlock { .. } | HsmError::Encode { .. }) => {
                    BackendError::UnlockRefused(e.to_string())
                }
                (None, _) => BackendError::Failure(e.to_string()),
            }
        })
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
                        &YubiKeyAead([0; yubihsm::YUBIKEY_AEAD_SIZE]),
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
