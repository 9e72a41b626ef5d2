//! Framing: a 5-byte header — version byte, then the body length as a
//! big-endian u32 — then the body. The length is checked against the
//! reader's limit before anything is allocated (mini-redis's "is a whole
//! frame here?" before parse).

use std::io::{self, Read, Write};

use thiserror::Error;
use zeroize::Zeroizing;

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 5;
/// The largest body a privileged (root) peer may send, and the largest the
/// daemon sends (a counters export of a large fleet).
pub const MAX_FRAME: usize = 16 << 20;
/// The largest body an unprivileged peer may send: a verify is well under
/// 1 KiB.
pub const MAX_UNPRIVILEGED_FRAME: usize = 4096;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer closed the connection before a whole frame.
    #[error("the connection closed before a whole frame arrived")]
    Closed,
    /// A version this crate does not speak.
    #[error("unsupported protocol version {got} (this side speaks {VERSION})")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// Longer than the reader accepts.
    #[error("frame of {len} bytes is larger than the {max} allowed")]
    TooLarge {
        /// Length announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Transport error (including a timeout: `WouldBlock`/`TimedOut`).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// The header for a body of `len` bytes; `None` if `len` exceeds u32.
pub fn header(len: usize) -> Option<[u8; HEADER_LEN]> {
    let n = u32::try_from(len).ok()?;
    let b = n.to_be_bytes();
    Some([VERSION, b[0], b[1], b[2], b[3]])
}

/// Checks a header and returns the body length.
pub fn parse_header(h: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    if h[0] != VERSION {
        return Err(FrameError::Version { got: h[0] });
    }
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// The whole frame (header ‖ body) in one buffer, wiped on drop.
pub fn frame(body: &[u8]) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let h = header(body.len()).ok_or(FrameError::TooLarge {
        len: body.len(),
        max: MAX_FRAME,
    })?;
    let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + body.len()));
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    Ok(out)
}

/// Writes one frame with a single `write_all`.
pub fn write_frame<W: Write>(w: &mut W, body: &[u8]) -> Result<(), FrameError> {
    w.write_all(&frame(body)?)?;
    w.flush()?;
    Ok(())
}

fn read_exact_or_closed<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    })
}

/// Reads one frame's body, refusing bodies over `max` before allocating.
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut h)?;
    let len = parse_header(h, max)?;
    let mut body = Zeroizing::new(vec![0u8; len]);
    read_exact_or_closed(r, &mut body)?;
    Ok(body)
}
