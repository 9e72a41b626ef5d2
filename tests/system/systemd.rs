//! The real `ykhsmd` as systemd runs it (issue 13): readiness and state
//! sent to `NOTIFY_SOCKET` (Type=notify), each log line written once when
//! stderr is the journal (`JOURNAL_STREAM`), and a syslog socket that
//! appears late, is replaced, or restarts while the daemon runs.
//!
//! No systemd here: the tests play its part — a datagram socket of their
//! own as `NOTIFY_SOCKET`, a pipe whose device and inode numbers are in
//! `JOURNAL_STREAM`, and syslog sockets bound and closed at the configured
//! path.

use ykhsm_testkit as common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use common::Env;
use nix::sys::signal::Signal;
use ykhsm_proto::Status;

/// How long a test waits for a notification.
const WAIT: Duration = Duration::from_secs(20);

/// The socket systemd listens on for a service's notifications.
struct NotifySocket {
    sock: UnixDatagram,
    /// Every datagram received so far, in order.
    got: Vec<String>,
}

impl NotifySocket {
    /// A socket at a path in the `Env`'s directory, given to the daemons
    /// the `Env` starts from now on.
    fn bind(env: &Env) -> Self {
        let path = env.dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        env.daemon_env("NOTIFY_SOCKET", &path);
        Self {
            sock,
            got: Vec::new(),
        }
    }

    /// A socket in the abstract namespace (`NOTIFY_SOCKET=@name`), as some
    /// service managers give.
    fn bind_abstract(env: &Env) -> Self {
        let name = format!("ykhsm-test-notify-{}", hex::encode(common::random::<8>()));
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        env.daemon_env("NOTIFY_SOCKET", format!("@{name}"));
        Self {
            sock,
            got: Vec::new(),
        }
    }

    /// Waits (up to [`WAIT`]) for the next datagram holding the line
    /// `line`, and returns it; every datagram received is kept in `got`.
    fn wait_for(&mut self, line: &str) -> String {
        let end = Instant::now() + WAIT;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {WAIT:?} waiting for {line:?} on NOTIFY_SOCKET; got {:#?}",
                self.got
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.got.push(datagram.clone());
            if datagram.lines().any(|l| l == line) {
                return datagram;
            }
        }
    }

    /// The `STATUS=` text of a datagram.
    fn status(datagram: &str) -> &str {
        datagram
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or_else(|| panic!("no STATUS= in {datagram:?}"))
    }
}

/// alice with one key, and a notification socket for the daemon.
fn alice_notified() -> (Env, ykhsm_core::softkey::SoftYubiKey, NotifySocket) {
    let env = Env::new();
    let key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let n = NotifySocket::bind(&env);
    (env, key, n)
}

/// Type=notify: systemd starts `Before=ssh.service` units' successors
/// once READY=1 arrives, so it must not come before a login can connect.
#[test]
fn ready_is_sent_once_the_socket_accepts_connections() {
    let (env, mut key, mut n) = alice_notified();
    let d = env.spawn();
    let ready = n.wait_for("READY=1");
    // At the moment READY=1 arrives the socket takes connections.
    UnixStream::connect(&env.socket)
        .unwrap_or_else(|e| panic!("READY=1 came before the socket listened: {e}"));
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let status = NotifySocket::status(&ready);
    assert!(
        status.starts_with(&format!("serving on {}", env.socket.display())),
        "{status}"
    );
    // Nothing before it said READY.
    assert_eq!(
        n.got
            .iter()
            .filter(|g| g.lines().any(|l| l == "READY=1"))
            .count(),
        1,
        "{:#?}",
        n.got
    );
}

#[test]
fn stopping_is_sent_on_sigterm() {
    let (env, _key, mut n) = alice_notified();
    let mut d = env.spawn();
    n.wait_for("READY=1");
    d.signal(Signal::SIGTERM);
    let stopping = n.wait_for("STOPPING=1");
    assert!(
        NotifySocket::status(&stopping).starts_with("stopping"),
        "{stopping}"
    );
    assert_eq!(d.terminate(), Some(0));
}

/// SIGHUP (the unit's ExecReload): RELOADING=1 with the monotonic time
/// systemd ≥ 253 asks for, then READY=1 once the keys and authfile are
/// re-read.
#[test]
fn sighup_is_announced_with_reloading_then_ready() {
    let (env, mut key, mut n) = alice_notified();
    let d = env.spawn();
    n.wait_for("READY=1");
    d.signal(Signal::SIGHUP);
    let reloading = n.wait_for("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    let ready = n.wait_for("READY=1");
    assert!(
        NotifySocket::status(&ready).starts_with("serving on"),
        "{ready}"
    );
    env.wait_log("reload:");
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

/// The daemon starts without its YubiHSM and reopens it when it is there
/// (logins get BACKEND_ERROR meanwhile): it is ready once the first
/// attempt to reach the device is over, and STATUS says what it found.
#[test]
fn ready_without_the_yubihsm_says_the_device_is_not_answering() {
    let (env, mut key, mut n) = alice_notified();
    let device = env.dir.path().join("ttyACM-unplugged");
    env.use_yubihsm(&device);
    let d = env.spawn();
    let ready = n.wait_for("READY=1");
    UnixStream::connect(&env.socket).unwrap();
    let status = NotifySocket::status(&ready);
    println!("STATUS={status}");
    assert!(
        status.contains(&device.display().to_string()) && status.contains("not answering"),
        "{status}"
    );
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
}

#[test]
fn ready_with_the_backend_answering_says_so() {
    let (env, _key, mut n) = alice_notified();
    let _d = env.spawn();
    let ready = n.wait_for("READY=1");
    let status = NotifySocket::status(&ready);
    println!("STATUS={status}");
    assert!(status.contains("key handle 1 usable"), "{status}");
}

#[test]
fn an_abstract_notify_socket_gets_ready_too() {
    let env = Env::new();
    let mut n = NotifySocket::bind_abstract(&env);
    let _d = env.spawn();
    n.wait_for("READY=1");
    UnixStream::connect(&env.socket).unwrap();
}

/// Lines of the daemon's stderr (`ykhsmd: …`, or `<N>ykhsmd: …` under the
/// journal) and of syslog (`<PRI>ykhsmd[PID]: …`) that contain `needle`.
fn sinks(env: &Env, needle: &str) -> (Vec<String>, Vec<String>) {
    env.logs()
        .into_iter()
        .filter(|l| l.contains(needle))
        .partition(|l| !l.contains("ykhsmd["))
}

fn is_syslog_audit(l: &str) -> bool {
    // <86> = authpriv.info.
    l.starts_with("<86>ykhsmd[") && l.contains("verify user=alice")
}

/// Under systemd stderr and `/dev/log` both end in the journal: each line
/// is written once, to syslog, which keeps facility authpriv.
#[test]
fn under_the_journal_each_line_is_written_once_to_syslog() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let mut d = env.start_as_journal();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    common::wait_for("the audit line in syslog", WAIT, || {
        env.logs().iter().any(|l| is_syslog_audit(l))
    });
    // Everything the daemon wrote to stderr has been read once it exits.
    assert_eq!(d.terminate(), Some(0));
    let (stderr, syslog) = sinks(&env, "verify user=alice");
    assert_eq!(
        (stderr.len(), syslog.len()),
        (0, 1),
        "the audit line appears {} times: stderr {stderr:#?}, syslog {syslog:#?}",
        stderr.len() + syslog.len()
    );
    let (stderr, syslog) = sinks(&env, "started: socket=");
    assert_eq!(
        (stderr.len(), syslog.len()),
        (0, 1),
        "{stderr:#?} {syslog:#?}"
    );
}

/// What syslog cannot take goes to the journal through stderr instead,
/// with its severity (`<6>` = info), still once.
#[test]
fn under_the_journal_lines_syslog_cannot_take_go_to_stderr_once() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    env.unlink_syslog();
    let mut d = env.start_as_journal();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    assert_eq!(d.terminate(), Some(0));
    let (stderr, syslog) = sinks(&env, "verify user=alice");
    assert_eq!(
        (stderr.len(), syslog.len()),
        (1, 0),
        "{stderr:#?} {syslog:#?}"
    );
    assert!(
        stderr[0].starts_with("<6>ykhsmd: verify user=alice pubid=ccccccdbjrgf status=OK"),
        "{}",
        stderr[0]
    );
    assert!(
        env.logs()
            .iter()
            .any(|l| l.starts_with("<4>ykhsmd: warning: log: no syslog at ")),
        "{:#?}",
        env.logs()
    );
}

/// `JOURNAL_STREAM` naming another stream than stderr (started by hand
/// from a shell systemd started): both sinks, as without systemd.
#[test]
fn a_journal_stream_that_is_not_stderr_changes_nothing() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let mut d = env.start_with_stale_journal_stream();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    common::wait_for("the audit line in syslog", WAIT, || {
        env.logs().iter().any(|l| is_syslog_audit(l))
    });
    assert_eq!(d.terminate(), Some(0));
    let (stderr, syslog) = sinks(&env, "verify user=alice");
    assert_eq!(
        (stderr.len(), syslog.len()),
        (1, 1),
        "{stderr:#?} {syslog:#?}"
    );
    assert!(
        stderr[0].starts_with("ykhsmd: verify user=alice"),
        "{}",
        stderr[0]
    );
}

/// Waits until `lines` holds an audit line of alice's.
fn wait_audit(what: &str, lines: impl Fn() -> Vec<String>) {
    common::wait_for(what, WAIT, || lines().iter().any(|l| is_syslog_audit(l)));
}

/// The count in `log: syslog at PATH …; N lines …`.
fn missed(line: &str) -> u64 {
    line.split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"))
}

/// Issue 13: a daemon started before syslog's socket existed sent no
/// audit line to syslog in its whole life. It connects once the socket is
/// there, and says how many lines syslog missed meanwhile.
#[test]
fn a_syslog_socket_made_after_start_gets_the_audit_lines() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    env.unlink_syslog();
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    env.wait_log("ykhsmd: verify user=alice");
    let syslog = env.bind_syslog();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    wait_audit("an audit line at the new syslog socket", || syslog.lines());
    let lines = syslog.lines();
    let back = lines
        .iter()
        .find(|l| l.contains("log: syslog at"))
        .unwrap_or_else(|| panic!("no line about the lines syslog missed: {lines:#?}"));
    assert!(
        back.contains(&env.syslog_path().display().to_string()),
        "{back}"
    );
    // At least the first login's audit line and the start-up lines.
    assert!(missed(back) >= 2, "{back}");
    println!("{back}");
}

/// syslogd replaced its socket (unlink, bind) while the old one is still
/// open: lines go to the new socket.
#[test]
fn a_replaced_syslog_socket_gets_the_next_lines() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    wait_audit("an audit line at the first syslog socket", || env.logs());
    let replaced = env.bind_syslog();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    wait_audit("an audit line at the new syslog socket", || {
        replaced.lines()
    });
}

/// syslogd restarted: its socket closed (sends fail), then a new one at
/// the same path. Lines go to the new socket, and the one the daemon
/// could not send meanwhile is counted.
#[test]
fn a_restarted_syslog_gets_the_next_lines_and_the_count_missed() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    env.unlink_syslog();
    let first = env.bind_syslog();
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    wait_audit("an audit line at the first syslog socket", || first.lines());
    first.close();
    // Sent while syslog is down: on stderr only.
    assert_ne!(d.verify("daemon", &env.otp(&mut key)), Status::Ok);
    env.wait_log("ykhsmd: verify user=daemon");
    env.wait_log("log: syslog at");
    let second = env.bind_syslog();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    wait_audit("an audit line at the new syslog socket", || second.lines());
    let lines = second.lines();
    let back = lines
        .iter()
        .find(|l| l.contains("log: syslog at"))
        .unwrap_or_else(|| panic!("no line about the lines syslog missed: {lines:#?}"));
    assert!(missed(back) >= 1, "{back}");
    assert!(
        !lines.iter().any(|l| l.contains("user=daemon")),
        "{lines:#?}"
    );
}

/// A notification socket that is not there is said in the log, and the
/// daemon serves all the same; without `NOTIFY_SOCKET` nothing is tried.
#[test]
fn an_unreachable_notify_socket_is_logged_not_fatal() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let plain = env.start();
    assert_eq!(plain.verify("alice", &env.otp(&mut key)), Status::Ok);
    drop(plain);
    assert!(
        !env.logs().iter().any(|l| l.contains("NOTIFY_SOCKET")),
        "{:#?}",
        env.logs()
    );
    env.daemon_env("NOTIFY_SOCKET", env.dir.path().join("no-such-socket"));
    let d = env.start();
    env.wait_log("cannot notify the service manager at NOTIFY_SOCKET=");
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}
