//! The socket: binding it safely, accepting connections with bounded
//! concurrency, reading one request per connection under a deadline, and
//! draining in-flight requests on shutdown.
//!
//! Access control is the peer's credentials (`SO_PEERCRED`), read when the
//! connection is accepted, not the socket's mode (0666). Root connections
//! (sshd, su, ykadmin) and every other uid have separate limits, so no
//! unprivileged flood of silent connections can take the slots logins need;
//! each connection must deliver its request within `client_timeout`.
//!
//! **No peer can take the daemon's descriptors** (issue 12, item 6). The
//! limits ([`Limits`]: per other uid, all other uids together, root) are
//! applied by the acceptor threads as they accept, before anything is
//! queued: a connection over its limit is closed at once, and the queue to
//! the event loop is bounded by the slots themselves. The daemon
//! (`daemon.rs`) sets the limits below `RLIMIT_NOFILE`, keeping a reserve
//! for its own files. Should `accept` fail for want of descriptors anyway,
//! each acceptor gives up a spare descriptor it holds for that, takes the
//! connection waiting (root's is served, any other closed) and takes the
//! spare back; the failure is logged once a second with a count.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{self, MsgFlags};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::timeout;
use ykhsm_proto::frame::{self, FrameError, HEADER_LEN, MAX_FRAME, MAX_UNPRIVILEGED_FRAME};
use ykhsm_proto::{Request, Response};
use zeroize::Zeroizing;

use ykhsm_core::secure_file::{self, FilePolicy, Op, SecureFileErrorKind};

use crate::db::{Busy, Committer};
use crate::login::Ask;
use crate::service::{Peer, Service};

/// Why the socket could not be set up: the path concerned (the socket, its
/// directory or its lock file), once, and what is wrong.
#[derive(Debug, Error)]
#[error("{} {kind}", path.display())]
pub struct BindError {
    /// The path concerned.
    pub path: PathBuf,
    /// What is wrong.
    #[source]
    pub kind: BindErrorKind,
}

/// What is wrong ([`BindError`]); each reads after the path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BindErrorKind {
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: Op,
        /// The error.
        source: io::Error,
    },
    /// The socket's directory is not root's alone (someone else could
    /// replace the socket), or is a link or not a directory.
    #[error("{0} (it is the socket's directory: nobody but root may write it)")]
    Directory(SecureFileErrorKind),
    /// The lock file next to the socket is a link or not a regular file,
    /// or cannot be opened.
    #[error(transparent)]
    LockFile(SecureFileErrorKind),
    /// The socket path has no directory part.
    #[error("has no directory")]
    NoDirectory,
    /// Something that is not a socket is at the socket's path.
    #[error("exists and is not a socket; remove it")]
    NotASocket,
    /// Another daemon holds the socket's lock.
    #[error("is in use: another ykhsmd is running on it (it holds {})", lock.display())]
    Running {
        /// The lock file.
        lock: PathBuf,
    },
}

/// The bound socket and the lock that makes it ours. Dropping it removes
/// the socket file; the lock goes with the process.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener.
    pub listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Creates the socket: its directory root-owned 0755 (made if missing, and
/// refused if anyone else could write it: `secure_file::ensure_dir`, the
/// daemon's one ownership check), an exclusive lock next to it so two
/// daemons cannot race, a stale socket file removed only under that lock,
/// then bind and chmod 0666.
pub fn bind(path: &Path, owner: u32) -> Result<BoundSocket, BindError> {
    let fail = |p: &Path, kind| BindError {
        path: p.to_path_buf(),
        kind,
    };
    let io_err = |p: &Path, op| {
        let p = p.to_path_buf();
        move |source| BindError {
            path: p,
            kind: BindErrorKind::Io { op, source },
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| fail(path, BindErrorKind::NoDirectory))?;
    secure_file::ensure_dir(dir, 0o755, FilePolicy::trusted(owner, 0))
        .map_err(|e| fail(&e.path, BindErrorKind::Directory(e.kind)))?;
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock_path = dir.join(lock_name);
    let lock_file = secure_file::open_lock_file(&lock_path)
        .map_err(|e| fail(&e.path, BindErrorKind::LockFile(e.kind)))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            fail(
                path,
                BindErrorKind::Running {
                    lock: lock_path.clone(),
                },
            )
        } else {
            io_err(&lock_path, Op::Lock)(io::Error::from(errno))
        }
    })?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // We hold the lock, so no live ykhsmd owns this file: stale.
            fs::remove_file(path).map_err(io_err(path, Op::Remove))?;
        }
        Ok(_) => return Err(fail(path, BindErrorKind::NotASocket)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, Op::Stat)(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err(path, Op::Bind))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .map_err(io_err(path, Op::Chmod))?;
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        _lock: lock,
    })
}

/// Whether a ykhsmd holds the lock of `socket` (it is running).
pub fn daemon_running(socket: &Path) -> bool {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = socket.with_file_name(name);
    let Ok(f) = OpenOptions::new().read(true).open(lock_path) else {
        return false;
    };
    matches!(
        Flock::lock(f, FlockArg::LockExclusiveNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// How many connections the daemon holds at once, by peer: set by the
/// daemon from `RLIMIT_NOFILE` and the configuration, so that connections
/// alone can never take the descriptors the daemon needs for its own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Root's connections held by the event loop (`max_connections`, or
    /// fewer if the descriptors do not allow it).
    pub root: usize,
    /// All other uids' connections together.
    pub others: usize,
    /// Each other uid's (`max_connections_per_user`).
    pub per_user: usize,
}

/// Connection counts of the peers other than root.
#[derive(Debug)]
struct OtherSlots {
    used: Mutex<OthersUsed>,
    total: usize,
    per_user: usize,
}

#[derive(Debug, Default)]
struct OthersUsed {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// A connection of a peer other than root; its slot is freed on drop.
struct UserSlot {
    slots: Arc<OtherSlots>,
    uid: u32,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy)]
enum Full {
    /// Its uid has [`Limits::per_user`] connections.
    User(usize),
    /// Other uids have [`Limits::others`] connections together.
    Others(usize),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(n) => write!(f, "{n} connections of this uid open"),
            Self::Others(n) => write!(f, "{n} connections of non-root peers open"),
        }
    }
}

impl OtherSlots {
    fn take(self: &Arc<Self>, uid: u32) -> Result<UserSlot, Full> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.total >= self.total {
            return Err(Full::Others(self.total));
        }
        let n = used.by_uid.entry(uid).or_insert(0);
        if *n >= self.per_user {
            return Err(Full::User(self.per_user));
        }
        *n += 1;
        used.total += 1;
        Ok(UserSlot {
            slots: Arc::clone(self),
            uid,
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut used = self.slots.used.lock().unwrap_or_else(|p| p.into_inner());
        used.total = used.total.saturating_sub(1);
        if let Some(n) = used.by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                used.by_uid.remove(&self.uid);
            }
        }
    }
}

/// A connection's claim on a slot, held until the connection ends.
enum Slot {
    Root { _held: OwnedSemaphorePermit },
    Other { _held: UserSlot },
}

/// Every connection slot, shared by the acceptors (which take them) and
/// the event loop (which holds them until the connection ends).
struct Slots {
    root: Arc<Semaphore>,
    others: Arc<OtherSlots>,
}

impl Slots {
    fn new(limits: Limits) -> Self {
        Self {
            root: Arc::new(Semaphore::new(limits.root)),
            others: Arc::new(OtherSlots {
                used: Mutex::new(OthersUsed::default()),
                total: limits.others,
                per_user: limits.per_user,
            }),
        }
    }

    /// How many connections may wait for the event loop at once: each
    /// holds a slot.
    fn capacity(limits: Limits) -> usize {
        limits.root + limits.others
    }
}

/// Acceptor threads besides the first: they accept only while connections
/// wait in the backlog (see [`Acceptors`]). One was as fast as two or three
/// at 64 clients on two CPUs, and keeps accepting while the first one
/// waits for a slow root client.
const HELPERS: usize = 1;

/// A connection the acceptors pass to the event loop: a peer other than
/// root, a request that is not all there yet, or an admin request; with
/// what was read of it so far.
struct Handoff {
    stream: StdUnixStream,
    peer: Peer,
    read: Zeroizing<Vec<u8>>,
    slot: Slot,
}

/// What the acceptors pass connections on with: bounded (by the slots,
/// which every queued connection holds) and never waited on.
type HandoffTx = mpsc::Sender<Handoff>;

/// Connections the kernel holds for the acceptors. A flood of
/// connections from one user keeps the backlog full, and a login waits
/// behind all of it: 4,096 (the kernel's default maximum) took the
/// acceptors 100 ms or more to get through; 128 take a millisecond or
/// two. More logins than this arriving in the same instant are not lost:
/// the client retries a connect refused for a full backlog until its
/// deadline.
const BACKLOG: i32 = 128;

/// The acceptor threads and how to stop them.
///
/// One acceptor always sleeps in `accept(2)`, and when logins come one at
/// a time it answers all of them itself: the same thread on a CPU that is
/// still awake, its caches warm (measured here: about 30 µs less per
/// login, and a quarter less CPU, than four threads taking turns — the
/// kernel wakes `accept`'s sleepers oldest first). When it finds another
/// connection waiting behind the one it took, it calls the helper, which
/// accepts too until the backlog is empty again, then goes back to waiting;
/// and it leaves the commit to the commit thread, so as to go back to
/// accepting — unless the connection before was another uid's: a backlog
/// of someone's flood is no reason to hand a login to a thread that would
/// compete with the flood for the CPU. Both run ahead of the rest of the
/// daemon (see [`run_ahead`]).
struct Acceptors {
    listener: Arc<StdUnixListener>,
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What the acceptors share.
struct Shared {
    stopping: AtomicBool,
    /// Connections are waiting: helpers, accept.
    busy: Mutex<bool>,
    call: Condvar,
    /// The connection accepted last was root's.
    last_was_root: AtomicBool,
    /// `accept` lacked descriptors until this long after `epoch`.
    short_until_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl Shared {
    fn lock_busy(&self) -> std::sync::MutexGuard<'_, bool> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls the helpers, if they are not already accepting.
    fn call_helpers(&self) {
        let mut busy = self.lock_busy();
        if !*busy {
            *busy = true;
            self.call.notify_all();
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `accept` failed for want of descriptors.
    fn note_short_of_fds(&self) {
        let until = self.now_ms().saturating_add(SHORT_OF_FDS_FOR_MS);
        self.short_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether `accept` lacked descriptors in the last
    /// [`SHORT_OF_FDS_FOR_MS`].
    fn short_of_fds(&self) -> bool {
        self.now_ms() < self.short_until_ms.load(Ordering::Relaxed)
    }

    /// Waits until helpers are called for; false when stopping.
    fn wait_for_call(&self) -> bool {
        let mut busy = self.lock_busy();
        while !*busy && !self.stopping.load(Ordering::Acquire) {
            busy = self.call.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        !self.stopping.load(Ordering::Acquire)
    }
}

impl Acceptors {
    fn start(
        listener: StdUnixListener,
        service: &Arc<Service>,
        slots: &Arc<Slots>,
        handoff: &HandoffTx,
    ) -> io::Result<Self> {
        // Blocking: an idle acceptor sleeps in accept(2).
        listener.set_nonblocking(false)?;
        // A short backlog (listen(2) again only changes its length): a
        // login that gets in waits behind at most BACKLOG connections, not
        // SOMAXCONN (4096) of someone's flood.
        socket::listen(&listener, socket::Backlog::new(BACKLOG)?)?;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            last_was_root: AtomicBool::new(true),
            short_until_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            busy: Mutex::new(false),
            call: Condvar::new(),
        });
        let mut threads = Vec::with_capacity(1 + HELPERS);
        for i in 0..=HELPERS {
            let (l, sh, svc, sl, tx) = (
                Arc::clone(&listener),
                Arc::clone(&shared),
                Arc::clone(service),
                Arc::clone(slots),
                handoff.clone(),
            );
            let spawned = thread::Builder::new()
                .name(format!("ykhsmd-accept-{i}"))
                .spawn(move || {
                    let to = Passer {
                        service: &svc,
                        slots: &sl,
                        handoff: &tx,
                    };
                    accept_loop(&l, &sh, i > 0, &to);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let partial = Self {
                        listener,
                        shared,
                        threads,
                    };
                    partial.stop();
                    return Err(e);
                }
            }
        }
        Ok(Self {
            listener,
            shared,
            threads,
        })
    }

    /// Stops accepting (shutting the listener down wakes every thread in
    /// `accept`) and waits for the acceptors to finish what they hold.
    fn stop(self) {
        self.shared.stopping.store(true, Ordering::Release);
        {
            let _busy = self.shared.lock_busy();
            self.shared.call.notify_all();
        }
        let _ = socket::shutdown(self.listener.as_raw_fd(), socket::Shutdown::Read);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What an acceptor needs to serve a connection or pass it on.
struct Passer<'a> {
    service: &'a Arc<Service>,
    slots: &'a Slots,
    handoff: &'a HandoffTx,
}

/// A descriptor held in reserve (`/dev/null`) for when `accept` fails for
/// want of descriptors: given up, it lets the acceptor take the next
/// connection off the backlog — serving root's, closing anyone else's —
/// instead of leaving the backlog full and every client waiting.
struct Spare(Option<File>);

impl Spare {
    fn new() -> Self {
        Self(File::open("/dev/null").ok())
    }

    /// Takes the reserve back (it may not be free yet: then at the next
    /// shortage).
    fn refill(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

/// The name of an `accept` failure, for its count.
fn errno_name(errno: nix::errno::Errno) -> &'static str {
    use nix::errno::Errno;
    match errno {
        Errno::EMFILE => "EMFILE",
        Errno::ENFILE => "ENFILE",
        Errno::ENOBUFS => "ENOBUFS",
        Errno::ENOMEM => "ENOMEM",
        Errno::EINTR => "EINTR",
        _ => "other",
    }
}

/// How long after `accept` last lacked descriptors other uids'
/// connections are still closed at once, so that what descriptors come
/// free go to root's logins and the daemon's own files.
const SHORT_OF_FDS_FOR_MS: u64 = 1000;

/// How long an acceptor backs off when `accept` fails and no spare
/// descriptor is left, or for a reason other than descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// How many nice steps the threads that serve root's logins run ahead of
/// the rest of the daemon: the acceptors, and the commit thread and the
/// YubiHSM's, which the daemon starts while it runs ahead itself (a thread
/// starts at its creator's nice value).
pub const AHEAD_NICE_STEPS: i32 = 10;

/// Puts the calling thread [`AHEAD_NICE_STEPS`] ahead of where it is, and
/// returns where it was. A flood of connections from a local user's
/// processes competes for the CPU with the threads that serve logins: at
/// equal priority, on 2 CPUs with 4 flooding processes, the flood kept the
/// backlog full most of the time (a login's connect is then refused and
/// retried) and a login waited for the CPU at each thread it crossed. The
/// event loop, which serves other uids' connections, the blocking pool
/// and the log writer stay at the daemon's own priority. An idle acceptor
/// sleeps in `accept`, so this costs nothing when nothing floods.
pub fn run_ahead(log: &crate::log::Log) -> i32 {
    use rustix::process::{getpriority_process, setpriority_process};
    let me = Some(rustix::thread::gettid());
    let nice = getpriority_process(me).unwrap_or(0);
    let ahead = (nice - AHEAD_NICE_STEPS).max(-20);
    if let Err(e) = setpriority_process(me, ahead) {
        log.debug(&format!(
            "thread {}: cannot raise its priority to nice {ahead}: {e}",
            thread::current().name().unwrap_or("?")
        ));
    }
    nice
}

/// Puts the calling thread back at `nice` (from [`run_ahead`]).
pub fn run_at(nice: i32) {
    let me = Some(rustix::thread::gettid());
    let _ = rustix::process::setpriority_process(me, nice);
}

fn accept_loop(listener: &StdUnixListener, shared: &Shared, helper: bool, to: &Passer<'_>) {
    let _ = run_ahead(to.service.log());
    let mut spare = Spare::new();
    loop {
        if helper && !shared.wait_for_call() {
            return;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) if shared.stopping.load(Ordering::Acquire) => return,
            Err(e) => match accept_failed(&e, listener, shared, &mut spare, to.service.log()) {
                Some(s) => s,
                None => continue,
            },
        };
        let waiting = more_waiting(listener);
        if waiting {
            shared.call_helpers();
        } else if helper {
            // The backlog is empty: back to waiting for a call.
            *shared.lock_busy() = false;
        }
        let Ok(cred) = socket::getsockopt(&stream, socket::sockopt::PeerCredentials) else {
            continue;
        };
        let peer = Peer {
            uid: cred.uid(),
            pid: Some(cred.pid()),
        };
        let after_root = shared.last_was_root.swap(peer.uid == 0, Ordering::Relaxed);
        if peer.uid != 0 {
            if shared.short_of_fds() {
                to.service.log().refusal(
                    peer.uid,
                    "FD_LIMIT",
                    crate::log::Level::Warning,
                    &format!(
                        "peer_uid={}: connection closed: the daemon is short of descriptors",
                        peer.uid
                    ),
                );
            } else {
                to.admit(stream, peer);
            }
        } else {
            // Others waiting behind a root login are most likely more
            // logins, which this thread should go back to accepting while
            // the commit thread commits; behind a connection of another
            // uid, they are most likely that uid's flood, which is no
            // reason to hand root's commit to a thread that would compete
            // with the flood for the CPU.
            let committer = if waiting && after_root {
                Committer::CommitThread(Busy::Accepting)
            } else {
                Committer::Acceptor
            };
            // A panic costs this connection (closed: the client fails
            // closed), not the acceptor.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                serve_here(stream, peer, committer, to);
            }));
        }
        spare.refill();
    }
}

/// `accept` failed: logged (the first time in a second in full, then
/// counted). For want of descriptors, the acceptor gives up its spare to
/// take the next connection anyway, and for the next second closes other
/// uids' connections at once; for any other reason, or with no spare left,
/// it backs off a moment.
fn accept_failed(
    e: &io::Error,
    listener: &StdUnixListener,
    shared: &Shared,
    spare: &mut Spare,
    log: &crate::log::Log,
) -> Option<StdUnixStream> {
    let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
    let short = matches!(errno, nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE);
    log.limited(
        "accept",
        errno_name(errno),
        crate::log::Level::Error,
        &format!(
            "accept: {e}{}",
            if short {
                "; while descriptors are short, connections of uids other than root are closed at once"
            } else {
                ""
            }
        ),
    );
    if short {
        shared.note_short_of_fds();
        spare.refill();
        if let Some(reserve) = spare.0.take() {
            drop(reserve);
            if let Ok((s, _)) = listener.accept() {
                return Some(s);
            }
        }
    }
    thread::sleep(ACCEPT_BACKOFF);
    None
}

impl Passer<'_> {
    /// A connection of a uid other than root: closed at once if its uid
    /// (or all of them together) is at its limit or it has gone already,
    /// else passed to the event loop with its slot and what it has sent
    /// (its name needs a passwd lookup, which may block: not here).
    fn admit(&self, stream: StdUnixStream, peer: Peer) {
        let slot = match self.slots.others.take(peer.uid) {
            Ok(slot) => slot,
            Err(full) => {
                self.service.log().refusal(
                    peer.uid,
                    "CONNECTION_LIMIT",
                    crate::log::Level::Warning,
                    &format!(
                        "connection limit reached for peer_uid={} ({full}); closed",
                        peer.uid
                    ),
                );
                return;
            }
        };
        // Connected and gone already: nothing to answer. (A peek, so no
        // request bytes are copied here.)
        let mut byte = [0u8; 1];
        if let Ok(0) | Err(nix::errno::Errno::ECONNRESET) = socket::recv(
            stream.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK,
        ) {
            return;
        }
        self.pass(stream, peer, &[], Slot::Other { _held: slot });
    }

    /// Hands a connection to the event loop. The queue holds at most one
    /// connection per slot, so it is never full; if it were, the
    /// connection would be closed (the client fails closed).
    fn pass(&self, stream: StdUnixStream, peer: Peer, read: &[u8], slot: Slot) {
        if stream.set_nonblocking(true).is_ok() {
            let _ = self.handoff.try_send(Handoff {
                stream,
                peer,
                read: Zeroizing::new(read.to_vec()),
                slot,
            });
        }
    }

    /// Hands root's connection to the event loop, if a root slot is free.
    fn pass_root(&self, stream: StdUnixStream, peer: Peer, read: &[u8]) {
        match Arc::clone(&self.slots.root).try_acquire_owned() {
            Ok(permit) => self.pass(stream, peer, read, Slot::Root { _held: permit }),
            Err(_) => self.service.log().limited(
                "root connections",
                "CONNECTION_LIMIT",
                crate::log::Level::Warning,
                "connection limit reached for peer_uid=0 (max_connections); closed",
            ),
        }
    }
}

/// Whether another connection is waiting to be accepted.
fn more_waiting(listener: &StdUnixListener) -> bool {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|k| k > 0)
}

/// Answers a root login or user probe whose request is already there on
/// this thread: read, checks, commit (or a place in the next batch, whose
/// committer then answers) and answer, with no event loop in between.
/// Anything else goes to the event loop.
fn serve_here(stream: StdUnixStream, peer: Peer, committer: Committer, to: &Passer<'_>) {
    let service = to.service;
    let pass = |stream: StdUnixStream, read: &[u8]| to.pass_root(stream, peer, read);
    let mut first = Zeroizing::new([0u8; FIRST_READ]);
    let Some(mut n) = recv_now(&stream, &mut first[..]) else {
        return;
    };
    if committer == Committer::Acceptor && matches!(whole_frame(&first[..n], MAX_FRAME), Ok(None)) {
        // Connected a moment ago and still writing: worth a short wait
        // here rather than a trip through the event loop — unless others
        // are waiting to be accepted (then this acceptor does not commit
        // either).
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(FIRST_WAIT_MS)).is_ok_and(|k| k > 0) {
            let Some(more) = recv_now(&stream, &mut first[n..]) else {
                return;
            };
            n += more;
        }
    }
    let body = match whole_frame(&first[..n], MAX_FRAME) {
        Ok(Some(body)) => body,
        // Not all here yet; or refused, which the event loop answers and
        // then waits for the rest of the frame (`refuse`), as no acceptor
        // may.
        Ok(None) | Err(_) => return pass(stream, &first[..n]),
    };
    let ask = match Request::decode(body) {
        Err(e) => return refuse_here(&stream, service, peer, "request", &e),
        Ok(Request::Verify { user, otp }) => Ask::Verify { user, otp },
        Ok(Request::HasUser { user }) => Ask::HasUser { user },
        Ok(_) => return pass(stream, &first[..n]),
    };
    let svc = Arc::clone(service);
    service.answer(peer, &ask, Instant::now(), committer, move |handled| {
        // The audit line first: lines stay in the order of the answers,
        // whichever threads gave them.
        if let Some(audit) = &handled.audit {
            audit.write(svc.log(), &peer);
        }
        answer_here(&stream, &handled.response);
    });
}

/// How long an acceptor waits for a root client's request that is not all
/// there yet: a client writes right after connecting, and an acceptor that
/// was already awake can beat it. A silent root client costs an acceptor
/// this once, then the event loop holds it.
const FIRST_WAIT_MS: u8 = 1;

/// Reads what is there without waiting: `None` if the client closed or the
/// socket failed, `Some(0)` if nothing is there yet.
fn recv_now(stream: &StdUnixStream, buf: &mut [u8]) -> Option<usize> {
    if buf.is_empty() {
        return Some(0);
    }
    match socket::recv(stream.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(nix::errno::Errno::EAGAIN) => Some(0),
        Err(_) => None,
    }
}

/// Writes an answer without waiting: a small answer on a fresh connection
/// always fits its socket buffer. One that does not is dropped with the
/// connection, which the client takes as a failure.
fn answer_here(stream: &StdUnixStream, response: &Response) {
    let Ok(framed) = frame::frame(&response.encode()) else {
        return;
    };
    let _ = socket::send(
        stream.as_raw_fd(),
        &framed,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// Logs a request that could not be read; the answer that says why.
fn refusal(
    service: &Service,
    peer: Peer,
    what: &str,
    e: &(dyn std::fmt::Display + Sync),
) -> Response {
    service.log().refusal(
        peer.uid,
        "PROTOCOL_ERROR",
        crate::log::Level::Warning,
        &format!("peer_uid={}: refused {what}: {e}", peer.uid),
    );
    Response::ProtocolError {
        message: e.to_string(),
    }
}

fn refuse_here(
    stream: &StdUnixStream,
    service: &Service,
    peer: Peer,
    what: &str,
    e: &(dyn std::fmt::Display + Sync),
) {
    answer_here(stream, &refusal(service, peer, what, e));
}

/// Serves `listener` until `shutdown` completes: the acceptor threads
/// answer root's logins, this event loop every connection they pass on,
/// each within its slots and read deadline. Then stops accepting and
/// waits (up to the client timeout plus a second) for requests in flight.
pub async fn run(
    listener: StdUnixListener,
    service: Arc<Service>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let cfg = service.config().clone();
    let slots = Arc::new(Slots::new(limits));
    let mut tasks = JoinSet::new();
    let (tx, mut rx) = mpsc::channel(Slots::capacity(limits).max(1));
    let acceptors = Acceptors::start(listener, &service, &slots, &tx)?;
    drop(tx);
    tokio::pin!(shutdown);
    let mut acceptors = Some(acceptors);
    loop {
        while tasks.try_join_next().is_some() {}
        let handoff = tokio::select! {
            () = &mut shutdown, if acceptors.is_some() => {
                // Stop the acceptors; what they pass on meanwhile is still
                // served, until the channel closes behind the last one.
                if let Some(a) = acceptors.take() {
                    let _ = tokio::task::spawn_blocking(move || a.stop()).await;
                }
                continue;
            }
            h = rx.recv() => match h {
                Some(h) => h,
                None => break,
            },
        };
        let Handoff {
            stream,
            peer,
            read,
            slot,
        } = handoff;
        let Ok(stream) = UnixStream::from_std(stream) else {
            continue;
        };
        let svc = Arc::clone(&service);
        tasks.spawn(async move {
            serve(stream, peer, read, &svc).await;
            drop(slot);
        });
    }
    let grace = cfg.client_timeout + Duration::from_secs(1);
    if timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        service.log().warn(&format!(
            "shutdown: {} connections still open after {grace:?}; closing them",
            tasks.len()
        ));
        tasks.abort_all();
    }
    Ok(())
}

/// What one direct read takes at once: any verify request fits.
const FIRST_READ: usize = 1024;

/// A whole frame at the start of `buf`: its body. `Ok(None)`: not all here.
fn whole_frame(buf: &[u8], max: usize) -> Result<Option<&[u8]>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(h);
    let len = frame::parse_header(header, max)?;
    Ok(buf.get(HEADER_LEN..HEADER_LEN + len))
}

/// Reads one request, from what the acceptor already read (`read`) and
/// the socket. With nothing read yet, first directly on the socket: a
/// client writes its request right after connecting, so it is usually there
/// already, and the reactor (which learns of a new socket's readiness only
/// at its next turn) is not waited for. Otherwise through the reactor; the
/// caller bounds the whole by the read deadline. Bodies over `max` are
/// refused before anything is allocated for them.
async fn read_request(
    stream: &mut UnixStream,
    max: usize,
    read: Zeroizing<Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut have = read;
    if have.is_empty() {
        let mut first = Zeroizing::new([0u8; FIRST_READ]);
        let n = match nix::unistd::read(&*stream, &mut first[..]) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(e) => return Err(FrameError::Io(io::Error::from(e))),
        };
        have.extend_from_slice(&first[..n]);
    }
    if let Some(body) = whole_frame(&have, max)? {
        return Ok(Zeroizing::new(body.to_vec()));
    }
    while have.len() < HEADER_LEN {
        let mut b = [0u8; HEADER_LEN];
        let k = stream.read(&mut b[..HEADER_LEN - have.len()]).await?;
        if k == 0 {
            return Err(FrameError::Closed);
        }
        have.extend_from_slice(&b[..k]);
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&have[..HEADER_LEN]);
    let len = frame::parse_header(header, max)?;
    let mut body = Zeroizing::new(vec![0u8; len]);
    let already = (have.len() - HEADER_LEN).min(len);
    body[..already].copy_from_slice(&have[HEADER_LEN..HEADER_LEN + already]);
    stream.read_exact(&mut body[already..]).await.map_err(eof)?;
    Ok(body)
}

fn eof(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// Sends a response: directly if the socket takes it whole (a small answer
/// on a fresh connection always fits), else the rest through the reactor.
async fn send(stream: &mut UnixStream, response: &Response, limit: Duration) {
    let Ok(framed) = frame::frame(&response.encode()) else {
        return;
    };
    let done = match nix::unistd::write(&*stream, &framed) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(_) => return,
    };
    if done < framed.len() {
        let _ = timeout(limit, stream.write_all(&framed[done..])).await;
    }
}

/// Logs a request that could not be read and tells the client why, then
/// lets it finish writing ([`drain`]).
async fn refuse(
    stream: &mut UnixStream,
    service: &Service,
    peer: Peer,
    what: &str,
    e: &(dyn std::fmt::Display + Sync),
) {
    let limit = service.config().client_timeout;
    send(stream, &refusal(service, peer, what, e), limit).await;
    drain(stream, limit).await;
}

/// The most a refused client's writing is waited for: the largest frame
/// anyone may send.
const DRAIN_MAX: usize = HEADER_LEN + MAX_FRAME;

/// After a refusal, the rest of the client's frame (an oversized body) may
/// still be on its way or unread, and closing a Unix socket with unread
/// bytes resets the connection: the client's read after the answer fails
/// with ECONNRESET, a write still under way with EPIPE, and a client that
/// writes its whole frame before it reads loses the answer (issue 14). So
/// the daemon ends its side (the client reads the answer, then end of
/// file) and reads and drops what still comes, until the client closes,
/// up to [`DRAIN_MAX`] bytes or for `limit` (docs/protocol.md, "Frames").
async fn drain(stream: &mut UnixStream, limit: Duration) {
    let _ = stream.shutdown().await;
    // On the heap, and only here: every connection's task stays small.
    let mut buf = Zeroizing::new(vec![0u8; 16 << 10]);
    let mut left = DRAIN_MAX;
    let _ = timeout(limit, async {
        while left > 0 {
            match stream.read(&mut buf[..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// One connection: one request, one answer.
async fn serve(
    mut stream: UnixStream,
    peer: Peer,
    read: Zeroizing<Vec<u8>>,
    service: &Arc<Service>,
) {
    let limit = service.config().client_timeout;
    let max = if peer.uid == 0 {
        MAX_FRAME
    } else {
        MAX_UNPRIVILEGED_FRAME
    };
    let body = match timeout(limit, read_request(&mut stream, max, read)).await {
        Err(_) => {
            service.log().debug(&format!(
                "peer_uid={} sent no request within {limit:?}; closed",
                peer.uid
            ));
            return;
        }
        Ok(Err(FrameError::Closed | FrameError::Io(_))) => return,
        Ok(Err(e)) => return refuse(&mut stream, service, peer, "frame", &e).await,
        Ok(Ok(body)) => body,
    };
    let request = match Request::decode(&body) {
        Ok(r) => r,
        Err(e) => return refuse(&mut stream, service, peer, "request", &e).await,
    };
    drop(body);
    let handled = service.handle(peer, request).await;
    if let Some(audit) = &handled.audit {
        audit.write(service.log(), &peer);
    }
    send(&mut stream, &handled.response, limit).await;
}
