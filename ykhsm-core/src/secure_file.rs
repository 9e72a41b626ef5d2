//! Opening files whose owner and mode are part of the security of the
//! system (keys.json, the authfile): one function with named checks, each
//! error naming the path (the shape of sudo-rs's `secure_open`).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use zeroize::Zeroizing;

/// One version of a file, as its metadata tells it: a rename over it, a
/// rewrite, a truncation, a chmod or chown, a touch — any change to its
/// contents changes its ctime, and most change more.
///
/// The kernel stamps times at clock-tick granularity, so a file changed
/// twice within one tick, in place, to the same size, can show the same
/// version both times. A file whose version is [`FileVersion::settled`]
/// (unchanged for [`SETTLED`]) gets a later ctime from any change to come,
/// so only a settled version may stand for the contents once read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
}

/// How long a file must have been unchanged for its version to stand for
/// its contents.
pub const SETTLED: Duration = Duration::from_secs(2);

impl FileVersion {
    /// The version `meta` describes.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
        }
    }

    /// Whether the file last changed at least `age` ago (a ctime in the
    /// future is not settled).
    pub fn settled(&self, age: Duration) -> bool {
        let changed = Duration::new(
            u64::try_from(self.ctime.0).unwrap_or(0),
            u32::try_from(self.ctime.1).unwrap_or(0),
        );
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|now| now.checked_sub(changed).is_some_and(|d| d >= age))
    }
}

/// What a file must satisfy to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePolicy {
    /// The uid that must own the file (0 in production).
    pub owner: u32,
    /// Mode bits that must all be clear, e.g. `0o077` (no group/other
    /// access) or `0o022` (not writable by group/other).
    pub forbidden_mode: u32,
    /// The largest size accepted, in bytes.
    pub max_len: u64,
}

impl FilePolicy {
    /// A secret file: owned by `owner`, no permission bit for group or other.
    pub const fn secret(owner: u32, max_len: u64) -> Self {
        Self {
            owner,
            forbidden_mode: 0o077,
            max_len,
        }
    }

    /// A trusted file: owned by `owner`, writable by nobody else.
    pub const fn trusted(owner: u32, max_len: u64) -> Self {
        Self {
            owner,
            forbidden_mode: 0o022,
            max_len,
        }
    }
}

/// Why a checked file was refused. Every variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SecureFileError {
    /// Open or read failed (missing, unreadable, a symbolic link).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Owned by the wrong user.
    #[error("{} is owned by uid {found}, it must be owned by uid {expected}", path.display())]
    Owner {
        /// The file.
        path: PathBuf,
        /// The owner found.
        found: u32,
        /// The owner required.
        expected: u32,
    },
    /// Has a forbidden permission bit.
    #[error("{} has mode {mode:04o}; the bits {forbidden:04o} must be clear (try chmod {fix:04o})", path.display())]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The bits that must be clear.
        forbidden: u32,
        /// A mode that would pass.
        fix: u32,
    },
    /// Larger than the policy allows.
    #[error("{} is {len} bytes, more than the {max} allowed", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
}

/// Opens `path` without following a final symbolic link, checks it against
/// `policy` on the open descriptor (no check-then-open race), and reads it
/// into a buffer that is wiped on drop.
pub fn read_checked(
    path: &Path,
    policy: FilePolicy,
) -> Result<Zeroizing<Vec<u8>>, SecureFileError> {
    let io_err = |source| SecureFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err)?;
    check(path, &file, policy)?;
    let expected = file.metadata().map_err(io_err)?.len();
    let buf = read_wiped(&file, expected, policy.max_len + 1).map_err(io_err)?;
    let len = buf.len() as u64;
    if len > policy.max_len {
        return Err(SecureFileError::TooLarge {
            path: path.to_path_buf(),
            len,
            max: policy.max_len,
        });
    }
    Ok(buf)
}

/// Reads `reader` to its end, or to `limit` bytes, into a buffer wiped on
/// drop. `Read::read_to_end` grows its vector as it goes, and every
/// reallocation frees a copy of what was read so far (keys.json's keys)
/// without wiping it; here the buffer is sized from `expected` (the length
/// fstat gave) and, should the file have grown since, replaced by a bigger
/// one, the old one wiped.
fn read_wiped(mut reader: impl Read, expected: u64, limit: u64) -> io::Result<Zeroizing<Vec<u8>>> {
    let size = |n: u64| usize::try_from(n.min(limit)).unwrap_or(usize::MAX);
    // One byte more than expected, so that reaching the end needs no growth.
    let mut buf = Zeroizing::new(vec![0u8; size(expected.saturating_add(1)).max(1)]);
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if filled as u64 >= limit {
                break;
            }
            let mut bigger = Zeroizing::new(vec![0u8; size((filled as u64).saturating_mul(2))]);
            bigger[..filled].copy_from_slice(&buf[..filled]);
            buf = bigger;
        }
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Shrinks the length only: the capacity, wiped on drop, stays.
    buf.truncate(filled);
    Ok(buf)
}

/// The checks of [`read_checked`] on an open file.
pub fn check(path: &Path, file: &File, policy: FilePolicy) -> Result<(), SecureFileError> {
    let meta = file.metadata().map_err(|source| SecureFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check_metadata(path, &meta, policy)
}

/// The checks of [`read_checked`] on a file's metadata: regular file, owner,
/// forbidden mode bits, size. (Give it `symlink_metadata` to refuse links.)
pub fn check_metadata(
    path: &Path,
    meta: &Metadata,
    policy: FilePolicy,
) -> Result<(), SecureFileError> {
    if !meta.file_type().is_file() {
        return Err(SecureFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != policy.owner {
        return Err(SecureFileError::Owner {
            path: path.to_path_buf(),
            found: meta.uid(),
            expected: policy.owner,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & policy.forbidden_mode != 0 {
        return Err(SecureFileError::Mode {
            path: path.to_path_buf(),
            mode,
            forbidden: policy.forbidden_mode,
            fix: mode & !policy.forbidden_mode,
        });
    }
    if meta.len() > policy.max_len {
        return Err(SecureFileError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            max: policy.max_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `step` bytes per read, like a pipe or a slow file.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn wiped_read_returns_all_bytes_whether_the_file_is_as_long_as_stat_said_or_grew() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for expected in [0, 1, 999, 1000, 5000] {
            let got = read_wiped(
                Trickle {
                    data: &data,
                    step: 7,
                },
                expected,
                1 << 20,
            )
            .unwrap();
            assert_eq!(&got[..], &data[..], "stat said {expected}");
        }
    }

    #[test]
    fn wiped_read_stops_at_the_limit() {
        let data = vec![1u8; 1000];
        let got = read_wiped(
            Trickle {
                data: &data,
                step: 64,
            },
            10,
            101,
        )
        .unwrap();
        assert_eq!(got.len(), 101);
        let got = read_wiped(&data[..], 5000, 101).unwrap();
        assert_eq!(got.len(), 101);
    }
}
