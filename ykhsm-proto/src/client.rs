//! A blocking client for the daemon's socket, with one deadline over
//! connect, write and read: whatever the daemon does (not running, hung with
//! a full backlog, accepting and never answering), a call returns by then.
//! No threads, no async runtime: this runs inside sshd's PAM stack.
//!
//! The socket's path alone does not say who answers: a path left free (the
//! daemon stopped, its directory not yet made) or a wrong `socket=` can be
//! taken by any local user's process. So the client reads the server's uid
//! from the connected socket (`SO_PEERCRED`) and sends nothing — no user
//! name, no OTP — unless it is the uid the caller expects ([`ServerUid`];
//! root for ykhsmd).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use socket2::{Domain, SockAddr, Socket, Type};
use thiserror::Error;

use crate::codec::DecodeError;
use crate::frame::{self, FrameError, MAX_FRAME};
use crate::message::{Request, Response};

/// Requests up to this size are written without setting a write timeout.
const SMALL_REQUEST: usize = 4096;

/// How long to wait before retrying a connect refused for a full backlog.
const BACKLOG_RETRY: Duration = Duration::from_millis(5);

/// The uid the server on the socket must run as. ykhsmd runs as root, so
/// the PAM module and ykadmin ask for [`ServerUid::ROOT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerUid(pub u32);

impl ServerUid {
    /// Root: the daemon.
    pub const ROOT: Self = Self(0);
}

/// Why a call did not produce a response.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect (daemon not running, no socket, permission).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The credentials of the process on the socket could not be read;
    /// nothing was sent.
    #[error("cannot read who serves {path}: {source}")]
    PeerCredentials {
        /// The socket path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The process on the socket runs as another uid than the caller
    /// expects: not the daemon. Nothing was sent.
    #[error(
        "{path} is served by uid {uid}, not uid {expected}: not ykhsmd; nothing was sent to it"
    )]
    WrongServer {
        /// The socket path.
        path: String,
        /// The uid the server runs as (`SO_PEERCRED`: the uid that made
        /// the listening socket).
        uid: u32,
        /// The uid expected.
        expected: u32,
    },
    /// The deadline passed.
    #[error("no answer from the daemon within {0:?}")]
    Timeout(Duration),
    /// A framing or transport error.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The answer did not decode.
    #[error("the daemon's answer does not decode: {0}")]
    Decode(#[from] DecodeError),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn remaining(deadline: Instant, total: Duration) -> Result<Duration, ClientError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ClientError::Timeout(total))
    } else {
        Ok(left)
    }
}

/// Connects to `path` before `deadline` and checks that the server runs as
/// `server`. A full listen backlog (`EAGAIN` on a non-blocking connect) is
/// retried until the deadline.
fn connect(
    path: &Path,
    server: ServerUid,
    deadline: Instant,
    total: Duration,
) -> Result<UnixStream, ClientError> {
    let err = |source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    };
    let addr = SockAddr::unix(path).map_err(err)?;
    // Non-blocking (and close-on-exec) from creation: one syscall fewer.
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None).map_err(err)?;
    loop {
        match socket.connect(&addr) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = remaining(deadline, total)?;
                thread::sleep(left.min(BACKLOG_RETRY));
            }
            Err(e) => return Err(err(e)),
        }
    }
    // Before anything is written: a server of another uid must not even
    // see the request. (A Unix socket is connected once `connect`
    // returns; the kernel recorded the server's credentials at `listen`.)
    let uid = getsockopt(&socket, PeerCredentials)
        .map_err(|e| ClientError::PeerCredentials {
            path: path.display().to_string(),
            source: e.into(),
        })?
        .uid();
    if uid != server.0 {
        return Err(ClientError::WrongServer {
            path: path.display().to_string(),
            uid,
            expected: server.0,
        });
    }
    socket.set_nonblocking(false).map_err(err)?;
    Ok(UnixStream::from(OwnedFd::from(socket)))
}

/// Sends one request to the server on `path` and reads one response, all
/// within `timeout`. The server must run as `server`
/// ([`ServerUid::ROOT`] for ykhsmd), or nothing is sent
/// ([`ClientError::WrongServer`]).
pub fn call(
    path: &Path,
    server: ServerUid,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(path, server, deadline, timeout)?;
    let body = request.encode();
    let framed = frame::frame(&body)?;
    let timed = |e: io::Error| {
        if is_timeout(&e) {
            ClientError::Timeout(timeout)
        } else {
            ClientError::Frame(FrameError::Io(e))
        }
    };
    // A small request fits the empty buffer of a new connection and cannot
    // block; a large one (a counters merge) gets the deadline.
    if framed.len() > SMALL_REQUEST {
        stream
            .set_write_timeout(Some(remaining(deadline, timeout)?))
            .map_err(timed)?;
    }
    io::Write::write_all(&mut stream, &framed).map_err(timed)?;
    // Buffered: an answer usually arrives whole, so header and body cost
    // one read (and one timeout update) instead of two.
    let mut reader = io::BufReader::with_capacity(
        512,
        DeadlineReader {
            stream: &stream,
            deadline,
            total: timeout,
        },
    );
    let answer = frame::read_frame(&mut reader, MAX_FRAME).map_err(|e| match e {
        FrameError::Io(io) if is_timeout(&io) => ClientError::Timeout(timeout),
        other => ClientError::Frame(other),
    })?;
    Ok(Response::decode(&answer)?)
}

/// Sets the read timeout to what is left of the deadline before each read,
/// so a daemon trickling bytes cannot stretch the call.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
    total: Duration,
}

impl io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = remaining(self.deadline, self.total)
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?;
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        io::Read::read(&mut s, buf)
    }
}
