//! The socket: binding it safely, accepting connections with bounded
//! concurrency, reading one request per connection under a deadline, and
//! draining in-flight requests on shutdown.
//!
//! Access control is the peer's credentials (`SO_PEERCRED`), read when the
//! connection is accepted, not the socket's mode (0666). Root connections
//! (sshd, su, ykadmin) and every other uid have separate limits, so no
//! unprivileged flood of silent connections can take the slots logins need;
//! each connection must deliver its request within `client_timeout`.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use ykhsm_proto::frame::{self, FrameError, HEADER_LEN, MAX_FRAME, MAX_UNPRIVILEGED_FRAME};
use ykhsm_proto::{Request, Response};

use crate::service::{Peer, Service};

/// Why the socket could not be set up. Every message names the path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BindError {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The socket's directory is not safe.
    #[error("{}: {reason}", path.display())]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another daemon holds the socket.
    #[error("another ykhsmd is running on {} (it holds {})", socket.display(), lock.display())]
    Running {
        /// The socket.
        socket: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

/// The bound socket and the lock that makes it ours. Dropping it removes
/// the socket file; the lock goes with the process.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener (std, non-blocking, ready for tokio).
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
/// refused if anyone else could write it), an exclusive lock next to it so
/// two daemons cannot race, a stale socket file removed only under that
/// lock, then bind and chmod 0666.
pub fn bind(path: &Path, owner: u32) -> Result<BoundSocket, BindError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| BindError::Io { path: p, source }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| BindError::Unsafe {
            path: path.to_path_buf(),
            reason: "the socket path has no directory".into(),
        })?;
    match fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(BindError::Unsafe {
            path: dir.to_path_buf(),
            reason: "is not a directory".into(),
        });
    }
    if meta.uid() != owner {
        return Err(BindError::Unsafe {
            path: dir.to_path_buf(),
            reason: format!(
                "is owned by uid {}, it must be owned by uid {owner}",
                meta.uid()
            ),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(BindError::Unsafe {
            path: dir.to_path_buf(),
            reason: format!(
                "has mode {:04o}: group or others could replace the socket (chmod 0755)",
                meta.mode() & 0o7777
            ),
        });
    }
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock_path = dir.join(lock_name);
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(lock_open_flags())
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            BindError::Running {
                socket: path.to_path_buf(),
                lock: lock_path.clone(),
            }
        } else {
            io_err(&lock_path)(io::Error::from(errno))
        }
    })?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // We hold the lock, so no live ykhsmd owns this file: stale.
            fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(_) => {
            return Err(BindError::Unsafe {
                path: path.to_path_buf(),
                reason: "exists and is not a socket; remove it".into(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(io_err(path))?;
    listener.set_nonblocking(true).map_err(io_err(path))?;
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

/// `O_NOFOLLOW | O_CLOEXEC` for the lock file.
fn lock_open_flags() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits()
}

/// Per-uid connection counts for non-root peers.
#[derive(Debug, Default)]
struct UserSlots {
    used: Mutex<HashMap<u32, usize>>,
}

/// A non-root connection's slot; freed on drop.
struct UserSlot {
    slots: Arc<UserSlots>,
    uid: u32,
}

impl UserSlots {
    fn take(self: &Arc<Self>, uid: u32, max: usize) -> Option<UserSlot> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let n = used.entry(uid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            slots: Arc::clone(self),
            uid,
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut used = self.slots.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = used.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                used.remove(&self.uid);
            }
        }
    }
}

/// A connection's claim on a slot, held until the connection ends.
struct Slot {
    _root: Option<OwnedSemaphorePermit>,
    _user: Option<UserSlot>,
}

/// Serves `listener` until `shutdown` completes, then stops accepting and
/// waits (up to the client timeout plus a second) for requests in flight.
pub async fn run(
    listener: UnixListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = service.config().clone();
    let root_slots = Arc::new(Semaphore::new(cfg.max_connections));
    let user_slots = Arc::new(UserSlots::default());
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        service.log().error(&format!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(cred) = stream.peer_cred() else { continue };
                let peer = Peer { uid: cred.uid(), pid: cred.pid() };
                let slot = if peer.uid == 0 {
                    Arc::clone(&root_slots)
                        .try_acquire_owned()
                        .ok()
                        .map(|p| Slot { _root: Some(p), _user: None })
                } else {
                    user_slots
                        .take(peer.uid, cfg.max_connections_per_user)
                        .map(|u| Slot { _root: None, _user: Some(u) })
                };
                let Some(slot) = slot else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        service.log().warn(&format!(
                            "connection limit reached for peer_uid={} ({refused} connections refused so far)",
                            peer.uid
                        ));
                    }
                    continue; // dropping the stream closes it
                };
                let svc = Arc::clone(&service);
                tasks.spawn(async move {
                    serve(stream, peer, &svc).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
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

/// Reads one request. First directly on the socket: a client writes its
/// request right after connecting, so it is usually there already, and the
/// reactor (which learns of a new socket's readiness only at its next turn)
/// is not waited for. Otherwise through the reactor, from the bytes already
/// read; the caller bounds the whole by the read deadline. Bodies over
/// `max` are refused before anything is allocated for them.
async fn read_request(
    stream: &mut UnixStream,
    max: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, FrameError> {
    let mut first = zeroize::Zeroizing::new([0u8; FIRST_READ]);
    let n = match nix::unistd::read(&*stream, &mut first[..]) {
        Ok(0) => return Err(FrameError::Closed),
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => return Err(FrameError::Io(io::Error::from(e))),
    };
    if let Some(body) = whole_frame(&first[..n], max)? {
        return Ok(zeroize::Zeroizing::new(body.to_vec()));
    }
    let mut have = zeroize::Zeroizing::new(first[..n].to_vec());
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
    let mut body = zeroize::Zeroizing::new(vec![0u8; len]);
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

/// Logs a request that could not be read and tells the client why.
async fn refuse(
    stream: &mut UnixStream,
    service: &Service,
    peer: Peer,
    what: &str,
    e: &(dyn std::fmt::Display + Sync),
) {
    service
        .log()
        .warn(&format!("peer_uid={}: refused {what}: {e}", peer.uid));
    let message = e.to_string();
    let limit = service.config().client_timeout;
    send(stream, &Response::ProtocolError { message }, limit).await;
}

/// One connection: one request, one answer.
async fn serve(mut stream: UnixStream, peer: Peer, service: &Arc<Service>) {
    let limit = service.config().client_timeout;
    let max = if peer.uid == 0 {
        MAX_FRAME
    } else {
        MAX_UNPRIVILEGED_FRAME
    };
    let body = match timeout(limit, read_request(&mut stream, max)).await {
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
    send(&mut stream, &handled.response, limit).await;
    if let Some(line) = handled.audit {
        service.write_audit(&line);
    }
}
