//! The daemon's two log channels. Audit: exactly one line per verification,
//! to syslog (facility authpriv) and to stderr, fixed key order. Diagnostics:
//! the same sinks, for start-up, reloads and problems.
//!
//! Nothing here is given an OTP's token, a key, a uid or an AEAD: callers
//! pass public ids and status words only, and user names are escaped so a
//! crafted name cannot forge a log line.

use std::fmt::Write as _;
use std::io::{IoSlice, Write as _};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, UnixAddr, sendmmsg};
use syslog::{Facility, LogFormat, Logger, LoggerBackend, Severity};

/// RFC 3164 lines without a timestamp, `<PRI>ykhsmd[PID]: message`, facility
/// authpriv: syslogd stamps the time on receipt, in local time. (The syslog
/// crate's own formatter stamps UTC as if it were local time, and parses its
/// time format again for every line.)
#[derive(Debug, Clone, Copy)]
struct Authpriv {
    pid: u32,
}

impl<T: std::fmt::Display> LogFormat<T> for Authpriv {
    fn format<W: std::io::Write>(
        &self,
        w: &mut W,
        severity: Severity,
        message: T,
    ) -> syslog::Result<()> {
        let pri = Facility::LOG_AUTHPRIV as u8 | severity as u8;
        write!(w, "<{pri}>ykhsmd[{}]: {message}", self.pid).map_err(syslog::Error::Write)
    }
}

/// Where log lines go.
///
/// The daemon's log has a writer thread: the event loop hands it each line
/// and goes on serving, and the thread writes whatever has gathered — all
/// of it to stderr in one write, each line to syslog. Lines keep their
/// order. [`Log::stop`] writes what is left before the daemon exits.
pub struct Log {
    sink: Mutex<Sink>,
    debug: bool,
}

enum Sink {
    /// Written by the calling thread.
    Direct(Option<Logger<LoggerBackend, Authpriv>>),
    /// Handed to the writer thread.
    Thread(mpsc::Sender<(Level, String)>, thread::JoinHandle<()>),
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("debug", &self.debug)
            .finish_non_exhaustive()
    }
}

/// Severity of a diagnostic line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something is broken.
    Error,
    /// Something is off.
    Warning,
    /// Normal operation.
    Info,
    /// Detail, only with `debug = true`.
    Debug,
}

fn stderr_text(level: Level, msg: &str, out: &mut String) {
    let tag = match level {
        Level::Error => "error: ",
        Level::Warning => "warning: ",
        Level::Info | Level::Debug => "",
    };
    out.push_str("ykhsmd: ");
    out.push_str(tag);
    out.push_str(msg);
    out.push('\n');
}

fn to_syslog(l: &mut Logger<LoggerBackend, Authpriv>, level: Level, msg: &str) {
    let _ = match level {
        Level::Error => l.err(msg),
        Level::Warning => l.warning(msg),
        Level::Info => l.info(msg),
        Level::Debug => l.debug(msg),
    };
}

fn severity(level: Level) -> Severity {
    match level {
        Level::Error => Severity::LOG_ERR,
        Level::Warning => Severity::LOG_WARNING,
        Level::Info => Severity::LOG_INFO,
        Level::Debug => Severity::LOG_DEBUG,
    }
}

/// Datagrams per `sendmmsg`.
const SYSLOG_BATCH: usize = 64;

/// Sends a batch of lines to syslog: over a datagram socket (`/dev/log`)
/// in one `sendmmsg` per 64 lines, one datagram each, so a burst of
/// logins costs the writer one system call and syslogd one wake-up;
/// otherwise line by line.
fn syslog_batch(l: &mut Logger<LoggerBackend, Authpriv>, batch: &[(Level, String)]) {
    let LoggerBackend::Unix(sock) = &l.backend else {
        for (level, msg) in batch {
            to_syslog(l, *level, msg);
        }
        return;
    };
    let lines: Vec<Vec<u8>> = batch
        .iter()
        .map(|(level, msg)| {
            let mut line = Vec::with_capacity(msg.len() + 24);
            let _ = l
                .formatter
                .format(&mut line, severity(*level), msg.as_str());
            line
        })
        .collect();
    for chunk in lines.chunks(SYSLOG_BATCH) {
        let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|m| [IoSlice::new(m)]).collect();
        let mut headers = MultiHeaders::<UnixAddr>::preallocate(chunk.len(), None);
        let sent = sendmmsg(
            sock.as_raw_fd(),
            &mut headers,
            &iovs,
            vec![None; chunk.len()],
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        )
        .map_or(0, Iterator::count);
        // What one call did not take (a full receive queue): one by one,
        // waiting as the syslog crate would.
        for m in chunk.iter().skip(sent) {
            let _ = sock.send(m);
        }
    }
}

/// How long the writer lets lines gather before writing them.
const LINGER: Duration = Duration::from_millis(10);

/// The writer thread: takes a line, then everything else waiting, writes
/// the lot to stderr at once and each line to syslog.
fn writer(
    rx: &mpsc::Receiver<(Level, String)>,
    mut syslog: Option<Logger<LoggerBackend, Authpriv>>,
) {
    while let Ok(first) = rx.recv() {
        // Let the lines of the next moments gather: one write (and one
        // wake-up of syslogd and of whoever reads stderr) for all of them,
        // instead of three wake-ups per login competing with the logins
        // themselves for the CPU. Senders never wait for this thread, and
        // wake it at most once per LINGER.
        thread::sleep(LINGER);
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut text = String::new();
        for (level, msg) in &batch {
            stderr_text(*level, msg, &mut text);
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
        if let Some(l) = syslog.as_mut() {
            syslog_batch(l, &batch);
        }
    }
}

impl Log {
    /// Logs to stderr, and to syslog at `syslog_socket` when it can be
    /// reached (a missing syslog is said once on stderr, not fatal), from a
    /// writer thread.
    pub fn new(syslog_socket: &Path, debug: bool) -> Self {
        let formatter = Authpriv {
            pid: std::process::id(),
        };
        let syslog = match syslog::unix_custom(formatter, syslog_socket) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "ykhsmd: warning: no syslog at {} ({e}); logging to stderr only",
                    syslog_socket.display()
                );
                None
            }
        };
        let (tx, rx) = mpsc::channel();
        let sink = match thread::Builder::new()
            .name("ykhsmd-log".into())
            .spawn(move || writer(&rx, syslog))
        {
            Ok(handle) => Sink::Thread(tx, handle),
            // No thread: write from the caller, to stderr only.
            Err(_) => Sink::Direct(None),
        };
        Self {
            sink: Mutex::new(sink),
            debug,
        }
    }

    /// A log with stderr only, written by the caller (`--check`).
    pub fn stderr_only(debug: bool) -> Self {
        Self {
            sink: Mutex::new(Sink::Direct(None)),
            debug,
        }
    }

    /// Writes what is queued and stops the writer thread; later lines are
    /// written directly.
    pub fn stop(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Sink::Thread(..) = &*sink {
            let old = std::mem::replace(&mut *sink, Sink::Direct(None));
            if let Sink::Thread(tx, handle) = old {
                drop(tx);
                let _ = handle.join();
            }
        }
    }

    /// Writes one line at `level`.
    pub fn line(&self, level: Level, msg: &str) {
        if level == Level::Debug && !self.debug {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *sink {
            Sink::Thread(tx, _) => {
                let _ = tx.send((level, msg.to_owned()));
            }
            Sink::Direct(syslog) => {
                let mut text = String::new();
                stderr_text(level, msg, &mut text);
                // One write per line: lines never mix.
                let _ = std::io::stderr().write_all(text.as_bytes());
                if let Some(l) = syslog.as_mut() {
                    to_syslog(l, level, msg);
                }
            }
        }
    }

    /// An error line.
    pub fn error(&self, msg: &str) {
        self.line(Level::Error, msg);
    }

    /// A warning line.
    pub fn warn(&self, msg: &str) {
        self.line(Level::Warning, msg);
    }

    /// An info line.
    pub fn info(&self, msg: &str) {
        self.line(Level::Info, msg);
    }

    /// A debug line (only with `debug = true`).
    pub fn debug(&self, msg: &str) {
        self.line(Level::Debug, msg);
    }

    /// Whether debug lines are written.
    pub fn is_debug(&self) -> bool {
        self.debug
    }
}

/// A user name (or any client-supplied text) made safe for one log line:
/// printable ASCII other than space, `"` and `\` stays; everything else is
/// escaped; at most 64 characters are kept.
pub fn escape(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 64 {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() && c != '"' && c != '\\' {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    if out.is_empty() {
        out.push_str("\"\"");
    }
    out
}

/// A user name for a log line: [`escape`]d, and withheld entirely when it
/// parses as an OTP (someone typed their OTP at the login prompt).
pub fn user(s: &str) -> String {
    if ykhsm_core::otp::Otp::parse(s).is_ok() {
        "<withheld:looks-like-an-otp>".to_owned()
    } else {
        escape(s)
    }
}

#[cfg(test)]
mod tests {
    use super::{escape, user};

    #[test]
    fn otp_typed_as_user_name_is_withheld() {
        assert_eq!(
            user("ccccccdbjrgfkljjucgrvddcgfhldbibefkvdvijhhjf"),
            "<withheld:looks-like-an-otp>"
        );
        assert_eq!(user("alice"), "alice");
    }

    #[test]
    fn escape_defuses_newlines_and_spaces() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("a b\nc"), "a\\u{20}b\\u{a}c");
        assert_eq!(escape(""), "\"\"");
        assert!(escape(&"x".repeat(500)).len() < 80);
    }
}
