//! The byte-level reader and writer behind every message: big-endian
//! integers, length-prefixed strings and lists (docs/protocol.md, "Body
//! encoding"). Reading is total: a short or malformed body is a
//! [`DecodeError`], never a panic; `Reader::finish` refuses trailing bytes
//! (rustls's `Reader::all`). Only [`DecodeError`] is public: the messages
//! are read and written through `Request` and `Response`.

use thiserror::Error;

/// Why a message body does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body ends inside a field.
    #[error("message truncated: {field} needs {need} more bytes, {have} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Bytes after the last field.
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// An unknown message kind.
    #[error("unknown message kind {kind:#04x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A string that is not UTF-8.
    #[error("{field} is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A `Failed` response that says `OK`: a refusal cannot be the
    /// verdict that lets a user in (only a `Verdict` can say `OK`).
    #[error("a Failed answer with status OK (only a Verdict can say OK)")]
    FailedWithOk,
    /// A field value outside its range.
    #[error("{field} has an invalid value")]
    BadValue {
        /// The field.
        field: &'static str,
    },
}

/// Reads fields from a message body.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over a whole body.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                field,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A fixed-size array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian u16.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u32.
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u64.
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A u16-length-prefixed byte string.
    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = usize::from(self.u16(field)?);
        self.take(n, field)
    }

    /// A u16-length-prefixed UTF-8 string.
    pub(crate) fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(field)?).map_err(|_| DecodeError::NotUtf8 { field })
    }

    /// A u32 element count, checked against the bytes left (each element
    /// needs at least `min_item_len` bytes), so a huge count cannot make the
    /// caller reserve memory the body does not back.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32(field)?).map_err(|_| DecodeError::BadValue { field })?;
        let need = n.saturating_mul(min_item_len.max(1));
        if need > self.buf.len() {
            return Err(DecodeError::Truncated {
                field,
                need,
                have: self.buf.len(),
            });
        }
        Ok(n)
    }

    /// Ends reading: any byte left is an error.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                extra: self.buf.len(),
            })
        }
    }
}

/// Writes fields of a message body.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty body.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The bytes written.
    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// Raw bytes, no prefix.
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// One byte.
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A big-endian u16.
    pub(crate) fn u16(&mut self, v: u16) {
        self.raw(&v.to_be_bytes());
    }

    /// A big-endian u32.
    pub(crate) fn u32(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }

    /// A big-endian u64.
    pub(crate) fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }

    /// A u16-length-prefixed byte string; longer input is cut at 65535
    /// bytes (callers validate lengths before writing).
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        let n = b.len().min(usize::from(u16::MAX));
        self.u16(u16::try_from(n).unwrap_or(u16::MAX));
        self.raw(&b[..n]);
    }

    /// A u16-length-prefixed UTF-8 string (cut like [`Writer::bytes`], at a
    /// character boundary).
    pub(crate) fn str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes(&s.as_bytes()[..end]);
    }

    /// A u32 element count.
    pub(crate) fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}
