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

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IoSlice, Write as _};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, UnixAddr, sendmmsg};
use syslog::{Facility, LogFormat, Logger, LoggerBackend, Severity};
use ykhsm_proto::report::LogStats;

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
}

struct Shared {
    state: Mutex<State>,
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

/// Sends lines to syslog: over a datagram socket (`/dev/log`) in one
/// `sendmmsg`, one datagram each, so a burst of logins costs the writer
/// one system call and syslogd one wake-up; otherwise line by line.
fn syslog_batch(l: &mut Logger<LoggerBackend, Authpriv>, batch: &[Queued]) {
    let LoggerBackend::Unix(sock) = &l.backend else {
        for q in batch {
            let _ = match q.level {
                Level::Error => l.err(&q.text),
                Level::Warning => l.warning(&q.text),
                Level::Info => l.info(&q.text),
                Level::Debug => l.debug(&q.text),
            };
        }
        return;
    };
    let lines: Vec<Vec<u8>> = batch
        .iter()
        .map(|q| {
            let mut line = Vec::with_capacity(q.text.len() + 24);
            let _ = l
                .formatter
                .format(&mut line, severity(q.level), q.text.as_str());
            line
        })
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = lines.iter().map(|m| [IoSlice::new(m)]).collect();
    let mut headers = MultiHeaders::<UnixAddr>::preallocate(lines.len(), None);
    let sent = sendmmsg(
        sock.as_raw_fd(),
        &mut headers,
        &iovs,
        vec![None; lines.len()],
        [] as [ControlMessage<'_>; 0],
        MsgFlags::empty(),
    )
    .map_or(0, Iterator::count);
    // What one call did not take (a full receive queue): one by one,
    // waiting as the syslog crate would. Only the writer waits.
    for m in lines.iter().skip(sent) {
        let _ = sock.send(m);
    }
}

/// Writes lines to stderr and syslog, [`WRITE_BATCH`] at a time.
fn write_out(lines: &[Queued], syslog: &mut Option<Logger<LoggerBackend, Authpriv>>) {
    let mut text = String::new();
    for chunk in lines.chunks(WRITE_BATCH) {
        text.clear();
        for q in chunk {
            stderr_text(q.level, &q.text, &mut text);
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
        if let Some(l) = syslog.as_mut() {
            syslog_batch(l, chunk);
        }
    }
}

/// How long the writer lets lines gather before writing them.
const LINGER: Duration = Duration::from_millis(10);

/// The writer thread: waits for a line (or the end of a counting
/// interval), lets more gather, writes them all, and only then gives their
/// room in the queue back.
fn writer(shared: &Shared, mut syslog: Option<Logger<LoggerBackend, Authpriv>>) {
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
        write_out(batch.make_contiguous(), &mut syslog);
        write_out(&extra, &mut syslog);
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
        if stopping && st.queue.is_empty() {
            st.threaded = false;
            shared.stopped.notify_all();
            return;
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
        let log = Self::stderr_only(debug);
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
                }),
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
            stderr_text(level, msg, &mut text);
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
        COUNT_INTERVAL, COUNTED_UIDS, Counted, DAEMON_SHARE, Level, Log, Topic, UNPRIVILEGED_SHARE,
        escape, user,
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
