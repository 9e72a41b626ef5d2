//! The daemon's two log channels. Audit: exactly one line per verification,
//! to syslog (facility authpriv) and to stderr, fixed key order. Diagnostics:
//! the same sinks, for start-up, reloads and problems.
//!
//! Nothing here is given an OTP's token, a key, a uid or an AEAD: callers
//! pass public ids and status words only, and user names are escaped so a
//! crafted name cannot forge a log line.
//!
//! **No peer can make the log grow or stall a login** (issue 12, item 5).
//! A writer thread writes the lines; whoever logs only queues, and never
//! waits for the writer or its sinks. The queue is bounded, in two shares:
//! the daemon's own lines and the audit lines of root's requests
//! ([`DAEMON_SHARE`]), and lines caused by unprivileged peers
//! ([`UNPRIVILEGED_SHARE`]). A line that does not fit its share is dropped
//! and counted — a refusal can never take the room of a root login's audit
//! line, and when even the daemon's share is full (syslog and stderr have
//! taken nothing for a while) the login is still answered and its line is
//! counted as dropped: logins are never held for the log. Once there is room
//! a line says how many were dropped; [`Log::stats`] (`ykadmin status`)
//! has the totals. Refusals of an unprivileged peer are not queued one by
//! one: the first is written, the rest are counted per uid and written as
//! one line a second ([`Log::refusal`]).
//!
//! **Each line is written once under systemd** (issue 13). There stderr is
//! a stream into the journal, and `/dev/log` is the journal's too: every
//! line would be stored twice. systemd names the stream it connected in
//! `JOURNAL_STREAM` (`DEV:INO`); when that is stderr ([`Stderr::Journal`])
//! each line goes to syslog only, which keeps what the audit trail needs
//! (facility authpriv, so `auth.log` and whatever forwards authpriv get
//! it, and the severity), and stderr carries only the lines syslog could
//! not take, with their severity as a `<N>` prefix the journal reads.
//! Started any other way (by hand, in tests) every line goes to both.
//!
//! **The syslog socket is followed** (issue 13): a syslog that is not
//! there at start, restarts, or replaces its socket gets the lines again
//! as soon as it takes them. Before each batch the writer compares the
//! file the path names with the one it is connected to (one `stat`), and
//! connects to a new one at once; a send that fails because the socket
//! went away reconnects once; a socket that refuses is tried again at
//! most once per [`SYSLOG_RETRY`]. Lines that could not be sent meanwhile
//! are counted (and are on stderr); the first line syslog gets when it is
//! back says how many, and [`Log::summary`] has the total. Only the
//! writer does any of this: loggers still never wait.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, IoSlice, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, UnixAddr, sendmmsg};
use syslog::{Facility, LogFormat, Severity};
use ykhsm_proto::report::{LogStats, SyslogStats};

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

/// Bytes of lines the daemon's own lines and root's audit lines may hold
/// in the queue (a line costs its length plus [`LINE_COST`]): about 8,000
/// audit lines, half a second of the benchmark's peak rate, hours of a
/// bastion's.
pub const DAEMON_SHARE: usize = 2 << 20;

/// Bytes of lines unprivileged peers' requests may hold in the queue.
pub const UNPRIVILEGED_SHARE: usize = 256 << 10;

/// What a queued line costs besides its text (its place in the queue and
/// the allocator's share), so that many short lines are bounded too.
const LINE_COST: usize = 64;

/// How long refusals of one peer uid (or repeats of one daemon problem)
/// are counted before the line that says how many there were.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// Peer uids whose refusals are counted each on their own; beyond that
/// many at once, the rest are counted together (`peer_uid=other`).
const COUNTED_UIDS: usize = 1024;

/// How long [`Log::stop`] waits for the writer to write what is queued.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Where log lines go.
///
/// The daemon's log has a writer thread: the acceptors and the event loop
/// queue each line and go on serving, and the thread writes whatever has
/// gathered — to stderr and to syslog, 64 lines per system call. Lines
/// keep their order. [`Log::stop`] writes what is left before the daemon
/// exits.
pub struct Log {
    shared: Arc<Shared>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    debug: bool,
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

/// Whose share of the queue a line takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The daemon's own lines and root's requests' audit lines.
    Daemon,
    /// Lines an unprivileged peer's request caused.
    Unprivileged,
}

impl Source {
    fn of(uid: u32) -> Self {
        if uid == 0 {
            Self::Daemon
        } else {
            Self::Unprivileged
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Daemon => 0,
            Self::Unprivileged => 1,
        }
    }

    fn share(self) -> usize {
        match self {
            Self::Daemon => DAEMON_SHARE,
            Self::Unprivileged => UNPRIVILEGED_SHARE,
        }
    }
}

/// A line waiting for the writer.
struct Queued {
    level: Level,
    source: Source,
    text: String,
}

impl Queued {
    fn cost(&self) -> usize {
        self.text.len() + LINE_COST
    }
}

/// What repeats are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Topic {
    /// Refusals of one unprivileged peer uid.
    Peer(u32),
    /// Refusals of uids beyond [`COUNTED_UIDS`].
    OtherPeers,
    /// One problem of the daemon's (e.g. `accept` failing).
    Daemon(&'static str),
}

/// Repeats of one topic since `since`, by kind (a status word, an errno).
struct Interval {
    since: Instant,
    total: u64,
    kinds: Vec<(&'static str, u64)>,
}

impl Interval {
    fn add(&mut self, kind: &'static str) {
        self.total += 1;
        match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.kinds.push((kind, 1)),
        }
    }
}

/// Repeats being counted instead of written.
#[derive(Default)]
struct Counted {
    open: HashMap<Topic, Interval>,
}

impl Counted {
    /// Counts one occurrence; true if it is the first of its topic (no
    /// interval open), whose own line is to be written.
    fn count(&mut self, topic: Topic, kind: &'static str, now: Instant) -> bool {
        if let Some(i) = self.open.get_mut(&topic) {
            i.add(kind);
            return false;
        }
        let overflow = matches!(topic, Topic::Peer(_)) && self.open.len() >= COUNTED_UIDS;
        let topic = if overflow { Topic::OtherPeers } else { topic };
        let interval = self.open.entry(topic).or_insert_with(|| Interval {
            since: now,
            total: 0,
            kinds: Vec::new(),
        });
        if overflow {
            interval.add(kind);
        }
        !overflow
    }

    /// When the next interval ends.
    fn next_due(&self) -> Option<Instant> {
        self.open.values().map(|i| i.since + COUNT_INTERVAL).min()
    }

    /// The lines of the intervals that are over (all of them with `all`):
    /// those that counted something say how much and start again; the
    /// others end, so the topic's next occurrence is written in full.
    fn close_due(&mut self, now: Instant, all: bool) -> Vec<Queued> {
        let mut lines = Vec::new();
        self.open.retain(|topic, i| {
            let took = now.saturating_duration_since(i.since);
            if !all && took < COUNT_INTERVAL {
                return true;
            }
            if i.total == 0 {
                return false;
            }
            let kinds = i
                .kinds
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let secs = took.as_secs_f64();
            let (source, text) = match topic {
                Topic::Peer(uid) => (
                    Source::Unprivileged,
                    format!(
                        "refused peer_uid={uid}: {} requests in the last {secs:.2} s, not logged one by one ({kinds})",
                        i.total
                    ),
                ),
                Topic::OtherPeers => (
                    Source::Unprivileged,
                    format!(
                        "refused peer_uid=other: {} requests in the last {secs:.2} s from uids beyond the first {COUNTED_UIDS} refused at once, not logged one by one ({kinds})",
                        i.total
                    ),
                ),
                Topic::Daemon(name) => (
                    Source::Daemon,
                    format!(
                        "{name}: {} more times in the last {secs:.2} s, not logged one by one ({kinds})",
                        i.total
                    ),
                ),
            };
            lines.push(Queued {
                level: Level::Warning,
                source,
                text,
            });
            i.since = now;
            i.total = 0;
            i.kinds.clear();
            !all
        });
        lines
    }
}

/// The queue and everything the writer and the loggers share.
struct State {
    /// The writer thread takes the lines; otherwise callers write to
    /// stderr themselves (`--check`, after [`Log::stop`]).
    threaded: bool,
    queue: VecDeque<Queued>,
    /// Bytes per [`Source`] queued or being written.
    held: [usize; 2],
    /// Lines dropped per [`Source`] since the last line that said so.
    dropped: [u64; 2],
    /// Lines dropped per [`Source`] since start.
    dropped_total: [u64; 2],
    counted: Counted,
    /// The writer sleeps on `wake`: a new line must wake it.
    writer_waiting: bool,
    stopping: bool,
    /// Lines the syslog socket did not take since start (the writer's
    /// count, copied after each batch).
    syslog_missed: u64,
    /// Since when syslog has been out of reach, if it is.
    syslog_away: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// What stderr is.
    stderr: Stderr,
    /// The syslog socket's path (`None`: stderr only).
    syslog_path: Option<PathBuf>,
    /// The writer waits here for lines.
    wake: Condvar,
    /// [`Log::stop`] waits here for the writer's last write.
    stopped: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What stderr is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    /// A terminal, a file, a pipe: every line goes to stderr and to
    /// syslog.
    Own,
    /// The journal's stream (`JOURNAL_STREAM` names stderr): each line
    /// goes to syslog, and to stderr only if syslog did not take it.
    Journal,
}

impl Stderr {
    /// Compares `JOURNAL_STREAM` with stderr's device and inode numbers,
    /// as systemd.exec(5) asks: the variable is inherited by whatever the
    /// service starts, whose stderr may be something else.
    fn detect() -> Self {
        let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
            return Self::Own;
        };
        let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
            return Self::Own;
        };
        if names_stream(&var.to_string_lossy(), st.st_dev, st.st_ino) {
            Self::Journal
        } else {
            Self::Own
        }
    }
}

/// Whether `JOURNAL_STREAM`'s `DEV:INO` (decimal) names this device and
/// inode.
fn names_stream(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

fn stderr_text(level: Level, msg: &str, out: &mut String, stderr: Stderr) {
    let tag = match level {
        Level::Error => "error: ",
        Level::Warning => "warning: ",
        Level::Info | Level::Debug => "",
    };
    if stderr == Stderr::Journal {
        // sd-daemon(3)'s prefix: the journal stores the line with this
        // priority (the facility is the unit's SyslogFacility=).
        let _ = write!(out, "<{}>", severity(level) as u8);
    }
    out.push_str("ykhsmd: ");
    out.push_str(tag);
    out.push_str(msg);
    out.push('\n');
}

fn severity(level: Level) -> Severity {
    match level {
        Level::Error => Severity::LOG_ERR,
        Level::Warning => Severity::LOG_WARNING,
        Level::Info => Severity::LOG_INFO,
        Level::Debug => Severity::LOG_DEBUG,
    }
}

/// Lines per write to stderr and per `sendmmsg` to syslog.
const WRITE_BATCH: usize = 64;

/// How often a syslog socket that refused a connection is tried again
/// while its path still names the same file. A new file at the path (a
/// syslogd that made or replaced its socket) is tried at the next batch.
pub const SYSLOG_RETRY: Duration = Duration::from_secs(1);

/// Which file a path names: device and inode numbers, and the inode's
/// change time (a socket bound where another was just removed may get the
/// same inode number).
type FileId = (u64, u64, i64, i64);

/// What `path` names now (following a symbolic link, as `/dev/log` is one
/// to journald's socket on Debian).
fn file_id(path: &Path) -> Option<FileId> {
    fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Whether a send failed because the socket at the other end is gone:
/// closed (its syslogd exited), or never connected.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotFound
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection to syslog's socket.
enum Conn {
    /// `/dev/log` as syslogd and journald make it: one datagram a line.
    Datagram(UnixDatagram),
    /// A stream socket (some containers' syslog): each line ends with a
    /// NUL, as syslog(3) sends it.
    Stream(UnixStream),
}

impl Conn {
    fn open(path: &Path) -> io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        match sock.connect(path) {
            Ok(()) => Ok(Self::Datagram(sock)),
            Err(e) if e.raw_os_error() == Some(Errno::EPROTOTYPE as i32) => {
                UnixStream::connect(path).map(Self::Stream)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `lines` in order: over a datagram socket in one `sendmmsg`,
    /// so a burst of logins costs the writer one system call and syslogd
    /// one wake-up; what one call did not take (a full receive queue) one
    /// by one, waiting as syslog(3) would — only the writer waits. Returns
    /// how many were sent, and the error that stopped it.
    fn send(&mut self, lines: &[Vec<u8>]) -> (usize, Option<io::Error>) {
        let mut sent = 0;
        while sent < lines.len() {
            let rest = &lines[sent..];
            let one = match self {
                Self::Datagram(sock) => {
                    let iovs: Vec<[IoSlice<'_>; 1]> =
                        rest.iter().map(|m| [IoSlice::new(m)]).collect();
                    let mut headers = MultiHeaders::<UnixAddr>::preallocate(rest.len(), None);
                    let taken = sendmmsg(
                        sock.as_raw_fd(),
                        &mut headers,
                        &iovs,
                        vec![None; rest.len()],
                        [] as [ControlMessage<'_>; 0],
                        MsgFlags::empty(),
                    )
                    .map_or(0, Iterator::count);
                    if taken > 0 {
                        sent += taken;
                        continue;
                    }
                    sock.send(&rest[0]).map(|_| ())
                }
                Self::Stream(sock) => sock.write_all(&rest[0]).and_then(|()| sock.write_all(&[0])),
            };
            match one {
                Ok(()) => sent += 1,
                Err(e) => return (sent, Some(e)),
            }
        }
        (sent, None)
    }
}

/// syslog out of reach: since when, and how many lines it missed.
struct Away {
    since: Instant,
    missed: u64,
}

/// The writer's syslog: a socket at a path, followed when syslogd
/// replaces it and reconnected when it comes back.
struct Syslog {
    path: PathBuf,
    formatter: Authpriv,
    /// The connection, and the file the path named when it was made.
    conn: Option<(Conn, Option<FileId>)>,
    /// The last connection attempt that failed: when, and the file the
    /// path named then.
    refused: Option<(Instant, Option<FileId>)>,
    away: Option<Away>,
    /// Lines not sent since start.
    missed_total: u64,
    /// Lines about syslog itself, for stderr only (syslog cannot take them).
    notices: Vec<String>,
}

impl Syslog {
    /// Connects to `path`; if that fails, syslog is away from the start,
    /// and the error says why.
    fn open(path: &Path, formatter: Authpriv) -> (Self, Option<io::Error>) {
        let mut syslog = Self {
            path: path.to_owned(),
            formatter,
            conn: None,
            refused: None,
            away: None,
            missed_total: 0,
            notices: Vec::new(),
        };
        let now = Instant::now();
        let refused = syslog.connect(now).err();
        if refused.is_some() {
            syslog.away = Some(Away {
                since: now,
                missed: 0,
            });
        }
        (syslog, refused)
    }

    fn connect(&mut self, now: Instant) -> io::Result<()> {
        let file = file_id(&self.path);
        match Conn::open(&self.path) {
            Ok(conn) => {
                self.conn = Some((conn, file));
                self.refused = None;
                Ok(())
            }
            Err(e) => {
                self.refused = Some((now, file));
                Err(e)
            }
        }
    }

    /// Whether to try connecting now: at once to a file not tried yet, at
    /// most once per [`SYSLOG_RETRY`] to one that refused.
    fn may_try(&self, file: Option<FileId>, now: Instant) -> bool {
        match self.refused {
            None => true,
            Some((at, refused)) => {
                refused != file || now.saturating_duration_since(at) >= SYSLOG_RETRY
            }
        }
    }

    /// Before a batch: connects to a new socket at the path (syslogd
    /// replaced it; the old one may still be open, taking lines no one
    /// will read), or again to a syslog that was away.
    fn follow(&mut self, now: Instant) {
        let file = file_id(&self.path);
        match &self.conn {
            Some((_, current)) if file.is_none() || file == *current => {}
            _ if !self.may_try(file, now) => {}
            Some(_) => {
                let old = self.conn.take();
                if self.connect(now).is_err() {
                    self.conn = old;
                }
            }
            None => {
                let _ = self.connect(now);
            }
        }
    }

    fn format(&self, level: Level, text: &str) -> Vec<u8> {
        let mut line = Vec::with_capacity(text.len() + 24);
        let _ = self.formatter.format(&mut line, severity(level), text);
        line
    }

    /// When syslog is reachable again after it was away: sends the line
    /// that says how long and how many lines it missed, and returns it
    /// once it is sent (then syslog is back).
    fn announce_back(&mut self, now: Instant, stderr: Stderr) -> Option<Queued> {
        let away = self.away.as_ref()?;
        self.conn.as_ref()?;
        let text = format!(
            "log: syslog at {} reached after {:.1} s without it; {} lines could not be sent to it meanwhile ({})",
            self.path.display(),
            now.saturating_duration_since(away.since).as_secs_f64(),
            away.missed,
            match stderr {
                Stderr::Own => "they are on stderr only",
                Stderr::Journal =>
                    "they went to the journal through stderr, without facility authpriv",
            }
        );
        let line = self.format(Level::Warning, &text);
        let (conn, _) = self.conn.as_mut()?;
        match conn.send(std::slice::from_ref(&line)) {
            (1, _) => {
                self.away = None;
                Some(Queued {
                    level: Level::Warning,
                    source: Source::Daemon,
                    text,
                })
            }
            _ => {
                // Gone again: the batch finds no connection.
                self.conn = None;
                None
            }
        }
    }

    /// Sends `lines`; returns the indices of those not sent (counted as
    /// missed). A socket that went away is reconnected once (syslogd
    /// restarted: the line goes to the new one); if that fails, syslog is
    /// away and a notice says so.
    fn send(&mut self, lines: &[Vec<u8>], now: Instant) -> Vec<usize> {
        let mut unsent = Vec::new();
        let mut i = 0;
        let mut retried = false;
        while i < lines.len() {
            let Some((conn, _)) = self.conn.as_mut() else {
                unsent.extend(i..lines.len());
                break;
            };
            let (n, err) = conn.send(&lines[i..]);
            i += n;
            let Some(e) = err else { continue };
            if !gone(&e) {
                // This line only (one longer than the socket takes).
                unsent.push(i);
                i += 1;
                continue;
            }
            self.conn = None;
            if !retried && self.may_try(file_id(&self.path), now) {
                retried = true;
                if self.connect(now).is_ok() {
                    continue;
                }
            }
            if self.away.is_none() {
                self.away = Some(Away {
                    since: now,
                    missed: 0,
                });
                self.notices.push(format!(
                    "log: syslog at {}: {e}; lines go to stderr only until it can be reached again (tried at once when a new socket appears there, else at most every {} s)",
                    self.path.display(),
                    SYSLOG_RETRY.as_secs()
                ));
            }
        }
        let missed = u64::try_from(unsent.len()).unwrap_or(u64::MAX);
        if let Some(away) = self.away.as_mut() {
            away.missed += missed;
        }
        self.missed_total += missed;
        unsent
    }
}

/// Writes lines to syslog and stderr, [`WRITE_BATCH`] at a time: with
/// [`Stderr::Own`] each line to both; with [`Stderr::Journal`] each to
/// syslog, and to stderr only if syslog did not take it.
fn write_out(lines: &[Queued], syslog: &mut Syslog, stderr: Stderr) {
    let mut text = String::new();
    for chunk in lines.chunks(WRITE_BATCH) {
        let now = Instant::now();
        text.clear();
        syslog.follow(now);
        if let Some(back) = syslog.announce_back(now, stderr)
            && stderr == Stderr::Own
        {
            stderr_text(back.level, &back.text, &mut text, stderr);
        }
        let formatted: Vec<Vec<u8>> = chunk
            .iter()
            .map(|q| syslog.format(q.level, &q.text))
            .collect();
        match stderr {
            Stderr::Own => {
                for q in chunk {
                    stderr_text(q.level, &q.text, &mut text, stderr);
                }
                let _ = std::io::stderr().write_all(text.as_bytes());
                text.clear();
                syslog.send(&formatted, now);
            }
            Stderr::Journal => {
                for i in syslog.send(&formatted, now) {
                    stderr_text(chunk[i].level, &chunk[i].text, &mut text, stderr);
                }
            }
        }
        for notice in syslog.notices.drain(..) {
            stderr_text(Level::Warning, &notice, &mut text, stderr);
        }
        if !text.is_empty() {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

/// How long the writer lets lines gather before writing them.
const LINGER: Duration = Duration::from_millis(10);

/// The writer thread: waits for a line (or the end of a counting
/// interval), lets more gather, writes them all, and only then gives their
/// room in the queue back.
fn writer(shared: &Shared, mut syslog: Syslog) {
    let mut batch = VecDeque::new();
    let mut st = shared.lock();
    loop {
        loop {
            if !st.queue.is_empty() || st.stopping {
                break;
            }
            let now = Instant::now();
            st.writer_waiting = true;
            st = match st.counted.next_due() {
                Some(due) if due <= now => {
                    st.writer_waiting = false;
                    break;
                }
                Some(due) => {
                    shared
                        .wake
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => shared.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
            st.writer_waiting = false;
        }
        if !st.queue.is_empty() && !st.stopping {
            // Let the lines of the next moments gather: one write (and one
            // wake-up of syslogd and of whoever reads stderr) for all of
            // them, instead of three wake-ups per login competing with the
            // logins themselves for the CPU. Loggers never wait for this
            // thread, and wake it at most once per LINGER.
            drop(st);
            thread::sleep(LINGER);
            st = shared.lock();
        }
        std::mem::swap(&mut st.queue, &mut batch);
        let stopping = st.stopping;
        let mut extra = st.counted.close_due(Instant::now(), stopping);
        let [daemon, unprivileged] = std::mem::take(&mut st.dropped);
        if daemon + unprivileged > 0 {
            extra.push(Queued {
                level: if daemon > 0 {
                    Level::Error
                } else {
                    Level::Warning
                },
                source: Source::Daemon,
                text: format!(
                    "log: {} lines dropped: syslog and stderr took nothing for too long and the log queue was full ({daemon} of the daemon's own and root's audit lines, {unprivileged} of unprivileged peers); totals in `ykadmin status`",
                    daemon + unprivileged
                ),
            });
        }
        drop(st);
        write_out(batch.make_contiguous(), &mut syslog, shared.stderr);
        write_out(&extra, &mut syslog, shared.stderr);
        // Freed before the lock is taken: loggers never wait on it for
        // this batch's memory.
        let mut written = [0usize; 2];
        for q in batch.drain(..) {
            written[q.source.index()] += q.cost();
        }
        st = shared.lock();
        for (held, done) in st.held.iter_mut().zip(written) {
            *held = held.saturating_sub(done);
        }
        st.syslog_missed = syslog.missed_total;
        st.syslog_away = syslog.away.as_ref().map(|a| a.since);
        if stopping && st.queue.is_empty() {
            st.threaded = false;
            shared.stopped.notify_all();
            return;
        }
    }
}

impl Log {
    /// Logs to syslog at `syslog_socket` and to stderr (see [`Stderr`]),
    /// from a writer thread. A syslog that cannot be reached is said on
    /// stderr, not fatal: lines go to stderr until it can be.
    pub fn new(syslog_socket: &Path, debug: bool) -> Self {
        let formatter = Authpriv {
            pid: std::process::id(),
        };
        let (syslog, refused) = Syslog::open(syslog_socket, formatter);
        let mut log = Self::stderr_only(debug);
        if let Some(shared) = Arc::get_mut(&mut log.shared) {
            shared.syslog_path = Some(syslog_socket.to_owned());
        }
        if let Some(e) = refused {
            let mut text = String::new();
            stderr_text(
                Level::Warning,
                &format!(
                    "log: no syslog at {} ({e}); lines go to stderr only until it can be reached (tried at once when a socket appears there, else at most every {} s)",
                    syslog_socket.display(),
                    SYSLOG_RETRY.as_secs()
                ),
                &mut text,
                log.shared.stderr,
            );
            let _ = std::io::stderr().write_all(text.as_bytes());
            log.shared.lock().syslog_away = Some(Instant::now());
        }
        let shared = Arc::clone(&log.shared);
        // No thread: the callers write, to stderr only.
        if let Ok(handle) = thread::Builder::new()
            .name("ykhsmd-log".into())
            .spawn(move || writer(&shared, syslog))
        {
            log.shared.lock().threaded = true;
            *log.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
        log
    }

    /// A log with stderr only, written by the caller (`--check`).
    pub fn stderr_only(debug: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    threaded: false,
                    queue: VecDeque::new(),
                    held: [0; 2],
                    dropped: [0; 2],
                    dropped_total: [0; 2],
                    counted: Counted::default(),
                    writer_waiting: false,
                    stopping: false,
                    syslog_missed: 0,
                    syslog_away: None,
                }),
                stderr: Stderr::detect(),
                syslog_path: None,
                wake: Condvar::new(),
                stopped: Condvar::new(),
            }),
            writer: Mutex::new(None),
            debug,
        }
    }

    /// Writes what is queued (and the counts still open) and stops the
    /// writer thread; later lines are written directly. Waits at most
    /// [`STOP_WAIT`]: a syslog that takes nothing does not keep the daemon
    /// from exiting (what is still queued then is lost).
    pub fn stop(&self) {
        let Some(handle) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut st = self.shared.lock();
        st.stopping = true;
        self.shared.wake.notify_one();
        let (mut st, _) = self
            .shared
            .stopped
            .wait_timeout_while(st, STOP_WAIT, |st| st.threaded)
            .unwrap_or_else(|p| p.into_inner());
        if st.threaded {
            // The writer is stuck in a write: leave it.
            st.threaded = false;
            return;
        }
        drop(st);
        let _ = handle.join();
    }

    /// Queues `msg` in `source`'s share, or drops and counts it; with no
    /// writer thread, writes it to stderr.
    fn push(&self, mut st: MutexGuard<'_, State>, source: Source, level: Level, msg: &str) {
        if !st.threaded {
            let mut text = String::new();
            stderr_text(level, msg, &mut text, self.shared.stderr);
            // One write per line, under the lock: lines never mix.
            let _ = std::io::stderr().write_all(text.as_bytes());
            return;
        }
        let i = source.index();
        let cost = msg.len() + LINE_COST;
        if st.held[i] + cost > source.share() {
            st.dropped[i] += 1;
            st.dropped_total[i] += 1;
            return;
        }
        st.held[i] += cost;
        st.queue.push_back(Queued {
            level,
            source,
            text: msg.to_owned(),
        });
        let wake = std::mem::take(&mut st.writer_waiting);
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Writes one line at `level`: the daemon's own, or the audit line of
    /// root's request.
    pub fn line(&self, level: Level, msg: &str) {
        if level == Level::Debug && !self.debug {
            return;
        }
        self.push(self.shared.lock(), Source::Daemon, level, msg);
    }

    /// Writes one line a request of a peer of `uid` caused, in that peer's
    /// share of the queue (unprivileged or not) — for lines that are not
    /// refusals, such as the audit line of an accepted OTP.
    pub fn peer_line(&self, uid: u32, level: Level, msg: &str) {
        if level == Level::Debug && !self.debug {
            return;
        }
        self.push(self.shared.lock(), Source::of(uid), level, msg);
    }

    /// A refusal of a peer of `uid` (`kind`: the status word or the reason,
    /// e.g. `DENIED`, `PROTOCOL_ERROR`, `CONNECTION_LIMIT`), whose line is
    /// `msg`. Root's are written as they come. An unprivileged uid's first
    /// refusal is written; the next ones within [`COUNT_INTERVAL`] are only
    /// counted, and a line then says how many of each kind there were
    /// (`refused peer_uid=65534: 23357 requests in the last 1.00 s, …`),
    /// each second while they go on.
    pub fn refusal(&self, uid: u32, kind: &'static str, level: Level, msg: &str) {
        if uid == 0 {
            return self.line(level, msg);
        }
        self.counted(Topic::Peer(uid), Source::Unprivileged, kind, level, msg);
    }

    /// A problem of the daemon's that may repeat quickly (`name`, e.g.
    /// `accept`; `kind`, e.g. the errno): written once, then counted for
    /// [`COUNT_INTERVAL`] as [`Log::refusal`] does.
    pub fn limited(&self, name: &'static str, kind: &'static str, level: Level, msg: &str) {
        self.counted(Topic::Daemon(name), Source::Daemon, kind, level, msg);
    }

    fn counted(&self, topic: Topic, source: Source, kind: &'static str, level: Level, msg: &str) {
        let mut st = self.shared.lock();
        let first = st.counted.count(topic, kind, Instant::now());
        if first && (level != Level::Debug || self.debug) {
            return self.push(st, source, level, msg);
        }
        // A new interval's end is a new deadline for the writer.
        if first && std::mem::take(&mut st.writer_waiting) {
            drop(st);
            self.shared.wake.notify_one();
        }
    }

    /// For `ykadmin status` and `metrics`: what is queued and what was
    /// dropped since start.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.lock();
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        LogStats {
            queued_lines: n(st.queue.len()),
            queued_bytes: n(st.held.iter().sum()),
            capacity_bytes: n(DAEMON_SHARE + UNPRIVILEGED_SHARE),
            dropped_daemon_lines: st.dropped_total[0],
            dropped_unprivileged_lines: st.dropped_total[1],
            counted_peer_uids: n(st
                .counted
                .open
                .keys()
                .filter(|t| !matches!(t, Topic::Daemon(_)))
                .count()),
            syslog: self.shared.syslog_path.as_ref().map(|path| SyslogStats {
                path: path.display().to_string(),
                away_seconds: st.syslog_away.map(|since| since.elapsed().as_secs()),
                missed_lines: st.syslog_missed,
            }),
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
    // One rule for the daemon and the PAM module.
    if ykhsm_proto::user_name::looks_like_otp(s) {
        ykhsm_proto::user_name::WITHHELD.to_owned()
    } else {
        escape(s)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        Authpriv, COUNT_INTERVAL, COUNTED_UIDS, Counted, DAEMON_SHARE, Level, Log, SYSLOG_RETRY,
        Syslog, Topic, UNPRIVILEGED_SHARE, escape, names_stream, user,
    };

    /// A log whose lines stay queued (no writer takes them).
    fn queue_only() -> Log {
        let log = Log::stderr_only(false);
        log.shared.lock().threaded = true;
        log
    }

    #[test]
    fn refusals_of_a_uid_are_written_once_then_counted_each_second() {
        let mut c = Counted::default();
        let t0 = Instant::now();
        assert!(c.count(Topic::Peer(1000), "DENIED", t0));
        for _ in 0..5 {
            assert!(!c.count(Topic::Peer(1000), "DENIED", t0));
        }
        assert!(!c.count(Topic::Peer(1000), "PROTOCOL_ERROR", t0));
        // Another uid has its own count.
        assert!(c.count(Topic::Peer(1001), "DENIED", t0));
        assert!(c.close_due(t0, false).is_empty());
        assert_eq!(c.next_due(), Some(t0 + COUNT_INTERVAL));
        let t1 = t0 + COUNT_INTERVAL;
        let lines = c.close_due(t1, false);
        assert_eq!(lines.len(), 1, "uid 1001 counted nothing after its first");
        assert_eq!(
            lines[0].text,
            "refused peer_uid=1000: 6 requests in the last 1.00 s, not logged one by one (DENIED=5 PROTOCOL_ERROR=1)"
        );
        // Quiet for an interval: the count ends, and the next refusal is
        // written in full again.
        assert!(c.close_due(t1 + COUNT_INTERVAL, false).is_empty());
        assert!(c.count(Topic::Peer(1000), "DENIED", t1 + COUNT_INTERVAL));
    }

    #[test]
    fn uids_beyond_the_counted_ones_are_counted_together() {
        let mut c = Counted::default();
        let t0 = Instant::now();
        let uids = u32::try_from(COUNTED_UIDS).unwrap();
        for uid in 1..=uids {
            assert!(c.count(Topic::Peer(uid), "DENIED", t0));
        }
        assert!(!c.count(Topic::Peer(uids + 1), "DENIED", t0));
        assert!(!c.count(Topic::Peer(uids + 2), "DENIED", t0));
        let lines = c.close_due(t0 + COUNT_INTERVAL, false);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0]
                .text
                .starts_with("refused peer_uid=other: 2 requests"),
            "{}",
            lines[0].text
        );
    }

    #[test]
    fn a_daemon_problem_is_written_once_then_counted() {
        let mut c = Counted::default();
        let t0 = Instant::now();
        assert!(c.count(Topic::Daemon("accept"), "EMFILE", t0));
        assert!(!c.count(Topic::Daemon("accept"), "EMFILE", t0));
        let lines = c.close_due(t0 + Duration::from_millis(1500), false);
        assert_eq!(
            lines[0].text,
            "accept: 1 more times in the last 1.50 s, not logged one by one (EMFILE=1)"
        );
    }

    /// Issue 12 item 5: refusals can never take the room of root's audit
    /// lines, and nothing grows past its share.
    #[test]
    fn each_source_has_its_own_share_and_drops_are_counted() {
        let log = queue_only();
        let line = "x".repeat(200);
        for uid in 1000..1000 + 20_000 {
            // Accepted OTPs of unprivileged peers are not counted away:
            // they fill the unprivileged share.
            log.peer_line(uid, Level::Info, &line);
        }
        {
            let st = log.shared.lock();
            assert!(st.held[1] <= UNPRIVILEGED_SHARE);
            assert!(st.dropped_total[1] > 0);
            assert_eq!(st.held[0], 0);
        }
        // Root's lines still get in, up to their own share.
        for _ in 0..20_000 {
            log.line(Level::Info, &line);
        }
        let st = log.shared.lock();
        assert!(st.held[0] <= DAEMON_SHARE && st.held[0] > DAEMON_SHARE - 300);
        assert!(st.dropped_total[0] > 0);
        drop(st);
        let stats = log.stats();
        assert!(stats.dropped_daemon_lines > 0 && stats.dropped_unprivileged_lines > 0);
    }

    #[test]
    fn roots_refusals_are_written_one_by_one() {
        let log = queue_only();
        for _ in 0..10 {
            log.refusal(
                0,
                "BAD_OTP",
                Level::Info,
                "verify status=BAD_OTP peer_uid=0",
            );
            log.refusal(
                65534,
                "DENIED",
                Level::Info,
                "verify status=DENIED peer_uid=65534",
            );
        }
        let st = log.shared.lock();
        let root = st
            .queue
            .iter()
            .filter(|q| q.text.contains("peer_uid=0"))
            .count();
        let other = st
            .queue
            .iter()
            .filter(|q| q.text.contains("peer_uid=65534"))
            .count();
        assert_eq!((root, other), (10, 1));
    }

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(names_stream("64768:1234", 64768, 1234));
        assert!(!names_stream("64768:1235", 64768, 1234));
        assert!(!names_stream("1:1234", 64768, 1234));
        for bad in [
            "",
            "64768",
            "64768:",
            ":1234",
            "64768:1234:5",
            "x:y",
            "-1:1234",
        ] {
            assert!(!names_stream(bad, 64768, 1234), "{bad:?}");
        }
    }

    /// A socket file nobody listens on (syslogd died and left it) is
    /// tried at most once per SYSLOG_RETRY; a new socket at the path at
    /// once; lines sent meanwhile are counted.
    #[test]
    fn a_refusing_syslog_is_retried_at_a_bounded_rate_and_a_new_one_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
        let (mut syslog, refused) = Syslog::open(&path, Authpriv { pid: 1 });
        let e = refused.expect("a socket nobody listens on refuses");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        let (t0, _) = syslog.refused.unwrap();
        syslog.follow(t0 + SYSLOG_RETRY / 2);
        assert_eq!(syslog.refused.unwrap().0, t0, "tried again too soon");
        let lines = vec![
            syslog.format(Level::Info, "a"),
            syslog.format(Level::Info, "b"),
        ];
        assert_eq!(syslog.send(&lines, t0 + SYSLOG_RETRY / 2), vec![0, 1]);
        assert_eq!(
            (syslog.missed_total, syslog.away.as_ref().unwrap().missed),
            (2, 2)
        );
        let t1 = t0 + SYSLOG_RETRY;
        syslog.follow(t1);
        assert_eq!(
            syslog.refused.unwrap().0,
            t1,
            "not tried again after SYSLOG_RETRY"
        );
        // syslogd is back: a new socket at the path, taken at once.
        std::fs::remove_file(&path).unwrap();
        let new = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        syslog.follow(t1);
        assert!(syslog.conn.is_some() && syslog.refused.is_none());
        let back = syslog.announce_back(t1, super::Stderr::Own).unwrap();
        assert!(
            back.text.contains("; 2 lines could not be sent"),
            "{}",
            back.text
        );
        assert!(syslog.send(&lines, t1).is_empty());
        let mut buf = [0u8; 512];
        let n = new.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("; 2 lines"));
        assert_eq!(new.recv(&mut buf).unwrap(), lines[0].len());
    }

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
