//! Opening files and directories whose owner and mode are part of the
//! security of the system (keys.json, the authfile, the configuration, the
//! AEAD store): named checks, each error naming the path (the shape of
//! sudo-rs's `secure_open`). The one module for ownership checks.
//!
//! A file is opened without following a final symbolic link and checked on
//! the open descriptor ([`read_checked`]). A tree (the AEAD store) is walked
//! from its root down with [`CheckedDir`]: the root is opened with
//! `O_DIRECTORY | O_NOFOLLOW`, every child with `openat` relative to its
//! checked parent and `O_NOFOLLOW`, and each is checked on its own
//! descriptor, so a walk never leaves the directories it checked and never
//! follows a link planted on the way.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
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
    /// A symbolic link where a file or directory must be: never followed.
    #[error("{} is a symbolic link; links are not followed here (put the file or directory itself there)", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Not a directory where one must be.
    #[error("{} is not a directory", path.display())]
    NotDirectory {
        /// The path.
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

impl SecureFileError {
    /// Whether the path (or a directory on the way to it) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
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
        .map_err(|e| refused_open(path, e))?;
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
    Facts::of(meta).check(path, Kind::File, policy)
}

/// The checks of a directory on its metadata: a directory, owner, forbidden
/// mode bits (the policy's size limit does not apply).
pub fn check_dir_metadata(
    path: &Path,
    meta: &Metadata,
    policy: FilePolicy,
) -> Result<(), SecureFileError> {
    Facts::of(meta).check(path, Kind::Dir, policy)
}

/// What a directory entry is, as `lstat` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The part of a file's metadata the checks look at.
#[derive(Debug, Clone, Copy)]
struct Facts {
    kind: Kind,
    uid: u32,
    mode: u32,
    len: u64,
}

impl Facts {
    fn of(meta: &Metadata) -> Self {
        let t = meta.file_type();
        let kind = if t.is_file() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Self {
            kind,
            uid: meta.uid(),
            mode: meta.mode(),
            len: meta.len(),
        }
    }

    fn of_stat(st: &FileStat) -> Self {
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let kind = if fmt == SFlag::S_IFREG {
            Kind::File
        } else if fmt == SFlag::S_IFDIR {
            Kind::Dir
        } else if fmt == SFlag::S_IFLNK {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Self {
            kind,
            uid: st.st_uid,
            mode: st.st_mode,
            len: u64::try_from(st.st_size).unwrap_or(0),
        }
    }

    /// Type first (a link is named as such), then owner, mode and, for
    /// files, size.
    fn check(&self, path: &Path, want: Kind, policy: FilePolicy) -> Result<(), SecureFileError> {
        let path_buf = || path.to_path_buf();
        match (self.kind, want) {
            (Kind::Symlink, _) => return Err(SecureFileError::Symlink { path: path_buf() }),
            (Kind::File, Kind::File) | (Kind::Dir, Kind::Dir) => {}
            (_, Kind::Dir) => return Err(SecureFileError::NotDirectory { path: path_buf() }),
            (_, _) => return Err(SecureFileError::NotRegular { path: path_buf() }),
        }
        if self.uid != policy.owner {
            return Err(SecureFileError::Owner {
                path: path_buf(),
                found: self.uid,
                expected: policy.owner,
            });
        }
        let mode = self.mode & 0o7777;
        if mode & policy.forbidden_mode != 0 {
            return Err(SecureFileError::Mode {
                path: path_buf(),
                mode,
                forbidden: policy.forbidden_mode,
                fix: mode & !policy.forbidden_mode,
            });
        }
        if want == Kind::File && self.len > policy.max_len {
            return Err(SecureFileError::TooLarge {
                path: path_buf(),
                len: self.len,
                max: policy.max_len,
            });
        }
        Ok(())
    }
}

/// An `open` that failed, named: a link refused by `O_NOFOLLOW` (`ELOOP`)
/// is called a link; anything else is an I/O error on the path.
fn refused_open(path: &Path, e: io::Error) -> SecureFileError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return SecureFileError::Symlink {
            path: path.to_path_buf(),
        };
    }
    SecureFileError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn io_error(path: &Path, e: Errno) -> SecureFileError {
    SecureFileError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

/// Opens a directory: never through a final link, close-on-exec, readable
/// (for listing it).
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens a file for reading: never through a final link, close-on-exec,
/// and without blocking (a FIFO planted at the path cannot hang the reader;
/// it is then refused as not a regular file).
const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC);

/// A directory opened without following a symbolic link and checked on its
/// descriptor (type, owner, mode). Its children are reached only through
/// it (`openat`, `fstatat` with `AT_SYMLINK_NOFOLLOW`), each checked the
/// same way, so a walk from a checked root stays inside checked
/// directories whatever is renamed meanwhile.
#[derive(Debug)]
pub struct CheckedDir {
    fd: OwnedFd,
    path: PathBuf,
    policy: FilePolicy,
}

/// How many directories and files a [`check_tree`] walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCount {
    /// Directories, the root included.
    pub dirs: u64,
    /// Regular files.
    pub files: u64,
}

impl CheckedDir {
    /// Opens `path` (`O_DIRECTORY | O_NOFOLLOW`) and checks it against
    /// `policy`; the same policy applies to everything reached through it.
    pub fn open(path: &Path, policy: FilePolicy) -> Result<Self, SecureFileError> {
        let fd = open(path, DIR_FLAGS, Mode::empty())
            .map_err(|e| Self::refused(path, e, || fs_kind(path)))?;
        Self::checked(fd, path.to_path_buf(), policy)
    }

    /// The directory's path, as it was reached.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the child directory `name` (one path component) the same way.
    pub fn dir(&self, name: &OsStr) -> Result<Self, SecureFileError> {
        let path = self.path.join(name);
        one_component(&path, name)?;
        let fd = openat(&self.fd, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| Self::refused(&path, e, || self.kind_of(name)))?;
        Self::checked(fd, path, self.policy)
    }

    /// Reads the child file `name` after checking it: not a link, a regular
    /// file, owner and mode; checked again on the open descriptor, whose
    /// metadata is returned with at most `limit` bytes (read in one `read`,
    /// so a larger file shows as `limit` bytes without being read whole).
    pub fn read_file(
        &self,
        name: &OsStr,
        limit: usize,
    ) -> Result<(Metadata, Vec<u8>), SecureFileError> {
        let path = self.path.join(name);
        one_component(&path, name)?;
        let st = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io_error(&path, e))?;
        Facts::of_stat(&st).check(&path, Kind::File, self.policy)?;
        let fd = openat(&self.fd, name, FILE_FLAGS, Mode::empty())
            .map_err(|e| Self::refused(&path, e, || self.kind_of(name)))?;
        read_open(&path, File::from(fd), self.policy, limit)
    }

    /// The names in the directory (not `.` and `..`), from a listing of
    /// its own (`openat(fd, ".")`: the same directory, a fresh offset).
    pub fn names(&self) -> Result<Vec<OsString>, SecureFileError> {
        let mut dir = Dir::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| io_error(&self.path, e))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_error(&self.path, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }

    fn checked(fd: OwnedFd, path: PathBuf, policy: FilePolicy) -> Result<Self, SecureFileError> {
        let file = File::from(fd);
        let meta = file.metadata().map_err(|source| SecureFileError::Io {
            path: path.clone(),
            source,
        })?;
        check_dir_metadata(&path, &meta, policy)?;
        Ok(Self {
            fd: OwnedFd::from(file),
            path,
            policy,
        })
    }

    /// What the child `name` is, without following it.
    fn kind_of(&self, name: &OsStr) -> Option<Kind> {
        fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| Facts::of_stat(&st).kind)
    }

    /// An `open(at)` that failed, named: `O_NOFOLLOW` refuses a link with
    /// `ELOOP`, `O_DIRECTORY` anything else with `ENOTDIR`; `kind` says
    /// which it was.
    fn refused(path: &Path, e: Errno, kind: impl FnOnce() -> Option<Kind>) -> SecureFileError {
        if e != Errno::ELOOP && e != Errno::ENOTDIR {
            return io_error(path, e);
        }
        let path = path.to_path_buf();
        match kind() {
            Some(Kind::Symlink) => SecureFileError::Symlink { path },
            Some(Kind::File | Kind::Other) if e == Errno::ENOTDIR => {
                SecureFileError::NotDirectory { path }
            }
            _ => SecureFileError::Io {
                path,
                source: io::Error::from(e),
            },
        }
    }
}

/// A child is reached by one name: no `/` (which `openat` would resolve,
/// following links on the way), not `.` or `..`, not empty.
fn one_component(path: &Path, name: &OsStr) -> Result<(), SecureFileError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(SecureFileError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"),
        });
    }
    Ok(())
}

/// What `path` is, without following it.
fn fs_kind(path: &Path) -> Option<Kind> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| Facts::of(&m).kind)
}

/// The checks on an open file's descriptor, then at most `limit` bytes of
/// it in one `read` (a regular file returns all it has up to the count).
fn read_open(
    path: &Path,
    mut file: File,
    policy: FilePolicy,
    limit: usize,
) -> Result<(Metadata, Vec<u8>), SecureFileError> {
    let io_err = |source| SecureFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(io_err)?;
    check_metadata(path, &meta, policy)?;
    let mut buf = vec![0u8; limit];
    let n = loop {
        match file.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    };
    buf.truncate(n);
    Ok((meta, buf))
}

/// Opens the file at `path` without following a final link, checks it on
/// the descriptor and reads at most `limit` bytes, as
/// [`CheckedDir::read_file`] does; for a caller that has checked the
/// directories on the way by other means (the AEAD store's read cache).
pub fn read_path(
    path: &Path,
    policy: FilePolicy,
    limit: usize,
) -> Result<(Metadata, Vec<u8>), SecureFileError> {
    let fd = open(path, FILE_FLAGS, Mode::empty()).map_err(|e| {
        if e == Errno::ELOOP {
            SecureFileError::Symlink {
                path: path.to_path_buf(),
            }
        } else {
            io_error(path, e)
        }
    })?;
    read_open(path, File::from(fd), policy, limit)
}

/// Checks every directory and file below `root` (and `root` itself, when
/// it was opened) against the root's policy: directories and regular files
/// only, no links, each owned and moded as the policy says. The first
/// problem stops the walk, naming its path. A directory is checked before
/// anything in it is looked at, so the walk never descends into a
/// directory someone else could have filled.
pub fn check_tree(root: &CheckedDir) -> Result<TreeCount, SecureFileError> {
    let mut count = TreeCount::default();
    walk(root, &mut count)?;
    Ok(count)
}

fn walk(dir: &CheckedDir, count: &mut TreeCount) -> Result<(), SecureFileError> {
    count.dirs += 1;
    let mut names = dir.names()?;
    names.sort();
    for name in names {
        let path = dir.path.join(&name);
        let st = match fstatat(&dir.fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since the listing: nothing left to check.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io_error(&path, e)),
        };
        let facts = Facts::of_stat(&st);
        if facts.kind == Kind::Dir {
            match dir.dir(&name) {
                Ok(child) => walk(&child, count)?,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        } else {
            facts.check(&path, Kind::File, dir.policy)?;
            count.files += 1;
        }
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
