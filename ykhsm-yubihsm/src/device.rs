//! [`YubiHsm`]: one open YubiHSM 1, its serial line and one exchange at a
//! time (the link as pyhsm's `base.py`, `cmd.py` and `stick.py` drive it).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, DataBits, FlowControl, Parity, SerialPort, StopBits, TTYPort};
use zeroize::Zeroizing;

use ykhsm_core::aead::{Nonce, YubiKeyAead};
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::otp::{OtpCounters, Token};

use crate::error::{Command, HsmError};
use crate::wire::{
    self, AeadAnswer, CONFIG_MODE_PROBE, CONFIG_MODE_READ_LEN, DATA_BUF_SIZE, ECHO_MAX_DATA,
    FrameError, PUBLIC_ID_SIZE, Redacted, Request, Response, Status, SystemInfo, cmd,
};

/// The line speed of the YubiHSM 1's serial port (pyhsm `stick.py`).
const BAUD_RATE: u32 = 115_200;
/// Silence that ends the drain after a resync (pyhsm waits 0.1 s).
const RESYNC_QUIET: Duration = Duration::from_millis(100);
/// Longest a resync drains a device that keeps talking before giving up.
pub(crate) const RESYNC_MAX_DRAIN: Duration = Duration::from_secs(2);
/// Bytes per echo of the start-up raw-line test (pyhsm `test_comm`).
const RAW_TEST_CHUNK: usize = 86;
/// Start of the echo that ends a resync; a per-resync counter follows in 16
/// hex digits. The whole frame is printable ASCII without CR or LF (its
/// length bytes are 34 and 32), so a configuration console (which answers
/// each CR) sees no line end before the probe.
const SYNC_MARKER: &[u8; 16] = b"ykhsm-resync-no-";

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

/// Why a read with a deadline stopped.
enum ReadFail {
    Timeout,
    Gone(io::Error),
}

/// Opens the serial line at `path`: raw mode (no echo, no line editing, no
/// CR/LF translation; `CLOCAL | CREAD`), 115200 baud, 8 data bits, no
/// parity, one stop bit, no flow control, DTR left alone, not the
/// controlling terminal; and exclusive: `TIOCEXCL`, so that no other
/// program (pyhsm's tools, a terminal) run by an unprivileged user can open
/// the port while we hold it, and an exclusive non-blocking `flock`, so
/// that no second ykhsmd (another configuration, `--check`) interleaves its
/// exchanges with ours: `TIOCEXCL` does not stop root, the lock stops a
/// cooperating root process. serialport's exclusive mode (its default,
/// asked for here) does both as it opens; both end when the port is closed.
fn open_line(path: &Path, timeout: Duration) -> Result<TTYPort, HsmError> {
    let open_error = |source| HsmError::Open {
        path: path.to_owned(),
        source,
    };
    let name = path.to_str().ok_or_else(|| {
        open_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the device path is not UTF-8",
        ))
    })?;
    serialport::new(name, BAUD_RATE)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .exclusive(true)
        .timeout(timeout)
        .open_native()
        .map_err(|e| match e.kind() {
            // EBUSY from open(2) (another holder's TIOCEXCL) or the flock
            // held elsewhere: serialport reports both as NoDevice.
            serialport::ErrorKind::NoDevice => HsmError::Busy {
                path: path.to_owned(),
            },
            _ => open_error(io::Error::from(e)),
        })
}

/// An open YubiHSM 1: one serial port, one request at a time.
#[derive(Debug)]
pub struct YubiHsm {
    path: PathBuf,
    /// Exclusive while open (see [`open_line`]): `TIOCEXCL` against other
    /// programs, `flock` against a second ykhsmd or `ykhsmd --check`.
    port: TTYPort,
    timeout: Duration,
    info: SystemInfo,
    needs_resync: bool,
    /// Counter in the echo that ends each resync; starts at a value from the
    /// clock, so two opens of one device do not use the same markers.
    sync_marker: u64,
}

impl YubiHsm {
    /// Opens the device at `path` (e.g. `/dev/ttyACM0`), exclusive and in
    /// raw mode at 115200 baud ([`HsmError::Busy`] if another process holds
    /// it), and runs pyhsm's start-up (`base.py` `YHSM.__init__`): resync,
    /// system info (checking for configuration mode when nothing answers),
    /// protocol version 1, and the raw-line echo test (pyhsm's `test_comm`).
    /// `timeout` bounds each exchange.
    pub fn open(path: &Path, timeout: Duration) -> Result<Self, HsmError> {
        let port = open_line(path, timeout)?;
        let mut hsm = Self {
            path: path.to_owned(),
            port,
            timeout,
            info: SystemInfo {
                major: 0,
                minor: 0,
                build: 0,
                protocol: 0,
                system_uid: [0; wire::SYSTEM_UID_SIZE],
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

    /// `YSM_BUFFER_LOAD` of `plaintext` at offset 0, then
    /// `YSM_BUFFER_AEAD_GENERATE` under `key_handle` and `nonce` (all
    /// zeros: the device picks the nonce): the hardware import path of
    /// `yhsm-import-keys` (pyhsm `ksm/import_keys.py`).
    pub fn buffer_aead_generate(
        &mut self,
        key_handle: KeyHandle,
        nonce: &Nonce,
        plaintext: &[u8],
    ) -> Result<AeadAnswer, HsmError> {
        if plaintext.len() > DATA_BUF_SIZE {
            return Err(HsmError::Encode {
                path: self.path.clone(),
                command: Command(cmd::BUFFER_LOAD),
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
            data: Redacted(Zeroizing::new(plaintext.to_vec())),
        };
        match self.exchange(&load)? {
            Response::BufferLoad { count } if usize::from(count) == plaintext.len() => {}
            Response::BufferLoad { count } => {
                return Err(self.frame_err(
                    cmd::BUFFER_LOAD,
                    FrameError::CountMismatch {
                        command: cmd::BUFFER_LOAD,
                        field: "buffer",
                        declared: usize::from(count),
                        actual: plaintext.len(),
                    },
                ));
            }
            other => return Err(self.unexpected(cmd::BUFFER_LOAD, &other)),
        }
        let request = Request::BufferAeadGenerate {
            nonce: *nonce,
            key_handle,
        };
        match self.exchange(&request)? {
            Response::BufferAeadGenerate(a) => {
                self.ok(cmd::BUFFER_AEAD_GENERATE, a.status)?;
                Ok(a)
            }
            other => Err(self.unexpected(cmd::BUFFER_AEAD_GENERATE, &other)),
        }
    }

    /// `YSM_KEY_STORAGE_UNLOCK` (firmware 0.9.x): `password` (at most 16
    /// bytes), zero padded.
    pub fn key_storage_unlock(&mut self, password: &[u8]) -> Result<(), HsmError> {
        let password = self.padded(password, cmd::KEY_STORAGE_UNLOCK)?;
        self.unlock_exchange(&Request::KeyStorageUnlock { password })
    }

    /// `YSM_KEY_STORE_DECRYPT` (firmware 1.0+): the master key (at most 32
    /// bytes), zero padded.
    pub fn key_store_decrypt(&mut self, key: &[u8]) -> Result<(), HsmError> {
        let key = self.padded(key, cmd::KEY_STORE_DECRYPT)?;
        self.unlock_exchange(&Request::KeyStoreDecrypt { key })
    }

    /// `YSM_HSM_UNLOCK` (firmware 1.0+): an OTP of an admin YubiKey.
    pub fn hsm_unlock(
        &mut self,
        public_id: [u8; PUBLIC_ID_SIZE],
        otp: &Token,
    ) -> Result<(), HsmError> {
        self.unlock_exchange(&Request::HsmUnlock {
            public_id,
            otp: otp.clone(),
        })
    }

    /// One of the three unlock commands, whose answer is a status alone.
    fn unlock_exchange(&mut self, request: &Request) -> Result<(), HsmError> {
        let code = request.command();
        match self.exchange(request)? {
            Response::KeyStorageUnlock { status }
            | Response::HsmUnlock { status }
            | Response::KeyStoreDecrypt { status } => self.ok(code, status),
            other => Err(self.unexpected(code, &other)),
        }
    }

    /// One request/response exchange within the timeout. Resyncs first if
    /// the previous exchange left the link out of step.
    pub fn exchange(&mut self, request: &Request) -> Result<Response, HsmError> {
        let code = request.command();
        let frame = request.encode().map_err(|source| HsmError::Encode {
            path: self.path.clone(),
            command: Command(code),
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
        self.write_all(frame, deadline, code)?;
        let mut answer = Zeroizing::new(Vec::with_capacity(wire::MAX_FRAME_LEN));
        answer.resize(2, 0);
        self.read_exact_until(&mut answer[..2], deadline, code)?;
        let header = [answer[0], answer[1]];
        let rest =
            wire::check_response_header(code, header).map_err(|e| self.frame_err(code, e))?;
        answer.resize(2 + rest, 0);
        self.read_exact_until(&mut answer[2..], deadline, code)?;
        let response = Response::decode(code, &answer).map_err(|e| self.frame_err(code, e))?;
        response
            .check_echo(request)
            .map_err(|e| self.frame_err(code, e))?;
        Ok(response)
    }

    /// Resynchronises the link: 96 zero bytes, drain until 0.1 s of silence,
    /// flush the input (pyhsm `cmd.py` `reset`); then, as pyhsm's `reset`
    /// with its sync test, an echo that must come back within the timeout.
    /// The echo carries a marker unique to this resync, and whole answer
    /// frames that arrive before its answer are read and discarded: a late
    /// answer to a request that timed out (a slow device answers after the
    /// drain) is never taken for the answer to the next request.
    pub fn resync(&mut self) -> Result<(), HsmError> {
        self.needs_resync = true;
        let deadline = Instant::now() + self.timeout;
        self.write_all(&wire::resync_bytes(), deadline, cmd::NULL)?;
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
        self.port
            .clear(ClearBuffer::Input)
            .map_err(|e| HsmError::Line {
                path: self.path.clone(),
                what: "flush the input of",
                source: io::Error::from(e),
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
        self.write_all(&frame, deadline, cmd::NULL)?;
        let mut answer = Zeroizing::new(Vec::with_capacity(wire::MAX_FRAME_LEN));
        loop {
            answer.clear();
            answer.resize(2, 0);
            self.read_exact_until(&mut answer[..2], deadline, cmd::NULL)?;
            let header = [answer[0], answer[1]];
            // Any answer frame may come here, not only the echo's.
            if header[1] & wire::RESPONSE_FLAG == 0 {
                return Err(self.frame_err(
                    cmd::NULL,
                    FrameError::WrongCommand {
                        expected: cmd::ECHO | wire::RESPONSE_FLAG,
                        got: header[1],
                    },
                ));
            }
            let len = wire::frame_len(header).map_err(|e| self.frame_err(cmd::NULL, e))?;
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
        let deadline = Instant::now() + self.timeout;
        self.write_all(CONFIG_MODE_PROBE, deadline, cmd::NULL)?;
        let mut got = Vec::with_capacity(CONFIG_MODE_READ_LEN);
        let mut buf = [0u8; CONFIG_MODE_READ_LEN];
        while got.len() < CONFIG_MODE_READ_LEN && !wire::is_config_mode(&got) {
            let room = CONFIG_MODE_READ_LEN - got.len();
            match self.read_some(&mut buf[..room], deadline) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(ReadFail::Timeout) => break,
                Err(ReadFail::Gone(source)) => return Err(self.gone(cmd::NULL, source)),
            }
        }
        Ok(wire::is_config_mode(&got))
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

    /// Writes all of `bytes` by `deadline` (a device that takes nothing is
    /// a timeout; a write error, one that is gone).
    fn write_all(&mut self, mut bytes: &[u8], deadline: Instant, code: u8) -> Result<(), HsmError> {
        while !bytes.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timeout_error(code));
            }
            self.set_timeout(remaining);
            match self.port.write(bytes) {
                Ok(0) => {
                    let source =
                        io::Error::new(io::ErrorKind::WriteZero, "the serial line took no bytes");
                    return Err(self.gone(code, source));
                }
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(self.timeout_error(code));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.gone(code, e)),
            }
        }
        Ok(())
    }

    /// Reads at least one byte, waiting until `deadline`.
    fn read_some(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, ReadFail> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ReadFail::Timeout);
            }
            self.set_timeout(remaining);
            match self.port.read(buf) {
                Ok(0) => {
                    return Err(ReadFail::Gone(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of file on the serial line",
                    )));
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(ReadFail::Timeout),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    // serialport's poll saw POLLHUP (or POLLNVAL).
                    return Err(ReadFail::Gone(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the serial line hung up",
                    )));
                }
                Err(e) => return Err(ReadFail::Gone(e)),
            }
        }
    }

    /// The wait of the next read or write (serialport polls with it).
    fn set_timeout(&mut self, timeout: Duration) {
        // TTYPort::set_timeout only stores the value; it cannot fail.
        let _ = self.port.set_timeout(timeout);
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
                Err(ReadFail::Timeout) => return Err(self.timeout_error(code)),
                Err(ReadFail::Gone(source)) => return Err(self.gone(code, source)),
            }
        }
        Ok(())
    }

    /// `secret` zero padded to the `N` bytes of `code`'s field (an error
    /// if it is longer), in a wiped buffer.
    fn padded<const N: usize>(
        &self,
        secret: &[u8],
        code: u8,
    ) -> Result<Redacted<Zeroizing<[u8; N]>>, HsmError> {
        let mut padded = Zeroizing::new([0u8; N]);
        let Some(dst) = padded.get_mut(..secret.len()) else {
            return Err(HsmError::Encode {
                path: self.path.clone(),
                command: Command(code),
                source: FrameError::FieldTooLong {
                    command: code,
                    field: "secret",
                    len: secret.len(),
                    max: N,
                },
            });
        };
        dst.copy_from_slice(secret);
        Ok(Redacted(padded))
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
            command: Command(code),
            status,
        }
    }

    fn timeout_error(&self, code: u8) -> HsmError {
        HsmError::Timeout {
            path: self.path.clone(),
            command: Command(code),
            timeout: self.timeout,
        }
    }

    fn gone(&self, code: u8, source: io::Error) -> HsmError {
        HsmError::Gone {
            path: self.path.clone(),
            command: Command(code),
            source,
        }
    }

    fn frame_err(&self, code: u8, source: FrameError) -> HsmError {
        HsmError::Frame {
            path: self.path.clone(),
            command: Command(code),
            source,
        }
    }

    fn unexpected(&self, code: u8, got: &Response) -> HsmError {
        self.frame_err(
            code,
            FrameError::WrongCommand {
                expected: code | wire::RESPONSE_FLAG,
                got: got.command() | wire::RESPONSE_FLAG,
            },
        )
    }
}
