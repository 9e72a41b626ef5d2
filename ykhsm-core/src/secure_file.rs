//! Opening, checking and replacing files and directories whose owner and
//! mode are part of the security of the system: keys.json, the
//! configuration, the authfile, the AEAD store, the socket's and the
//! state's directories. The one module for ownership checks (the shape of
//! sudo-rs's `secure_open`): one policy type, one set of named checks, each
//! error naming the path once ([`SecureFileError`] is a path and a
//! [`SecureFileErrorKind`]).
//!
//! A file is opened without following a final symbolic link (and without
//! blocking, so a FIFO planted at the path is refused rather than waited
//! on) and checked on the open descriptor ([`read_checked`],
//! [`open_regular`]). A directory is checked the same way ([`check_dir`],
//! [`ensure_dir`]). A tree (the AEAD store) is walked from its root down
//! with [`CheckedDir`]: the root is opened with `O_DIRECTORY | O_NOFOLLOW`,
//! every child with `openat` relative to its checked parent and
//! `O_NOFOLLOW`, and each is checked on its own descriptor, so a walk never
//! leaves the directories it checked and never follows a link planted on
//! the way. A file is written by [`replace`]: a temporary file in the same
//! directory, owner and mode set, synced, renamed over the old one, the
//! directory synced — a reader sees the old file or the new one, whole.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{Gid, Uid};
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

/// What a file or directory must satisfy to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePolicy {
    /// The uid that must own it (0 in production); `None`: any owner.
    pub owner: Option<u32>,
    /// Mode bits that must all be clear, e.g. `0o077` (no group/other
    /// access) or `0o022` (not writable by group/other).
    pub forbidden_mode: u32,
    /// The largest size accepted for a file, in bytes.
    pub max_len: u64,
}

impl FilePolicy {
    /// A secret: owned by `owner`, no permission bit for group or other
    /// (keys.json, the state directory).
    pub const fn secret(owner: u32, max_len: u64) -> Self {
        Self {
            owner: Some(owner),
            forbidden_mode: 0o077,
            max_len,
        }
    }

    /// Trusted: owned by `owner`, writable by nobody else (the
    /// configuration, the authfile, the AEAD store, the socket's
    /// directory).
    pub const fn trusted(owner: u32, max_len: u64) -> Self {
        Self {
            owner: Some(owner),
            forbidden_mode: 0o022,
            max_len,
        }
    }

    /// Any owner and mode: the type (a regular file or a directory, never
    /// a link) and the size only. For a file whose owner and mode are
    /// someone else's to check: the authfile as ykadmin edits it, keeping
    /// both (ykhsmd checks them at every use).
    pub const fn any_owner(max_len: u64) -> Self {
        Self {
            owner: None,
            forbidden_mode: 0,
            max_len,
        }
    }
}

/// What a path is, as `lstat` or `fstat` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// Anything else.
    Unknown,
}

impl FileKind {
    /// What `file_type` says.
    pub fn of(file_type: fs::FileType) -> Self {
        if file_type.is_file() {
            Self::Regular
        } else if file_type.is_dir() {
            Self::Directory
        } else if file_type.is_symlink() {
            Self::Symlink
        } else if file_type.is_fifo() {
            Self::Fifo
        } else if file_type.is_socket() {
            Self::Socket
        } else if file_type.is_block_device() {
            Self::BlockDevice
        } else if file_type.is_char_device() {
            Self::CharDevice
        } else {
            Self::Unknown
        }
    }

    fn of_mode(st_mode: u32) -> Self {
        let fmt = SFlag::from_bits_truncate(st_mode & SFlag::S_IFMT.bits());
        [
            (SFlag::S_IFREG, Self::Regular),
            (SFlag::S_IFDIR, Self::Directory),
            (SFlag::S_IFLNK, Self::Symlink),
            (SFlag::S_IFIFO, Self::Fifo),
            (SFlag::S_IFSOCK, Self::Socket),
            (SFlag::S_IFBLK, Self::BlockDevice),
            (SFlag::S_IFCHR, Self::CharDevice),
        ]
        .into_iter()
        .find_map(|(flag, kind)| (fmt == flag).then_some(kind))
        .unwrap_or(Self::Unknown)
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Regular => "regular file",
            Self::Directory => "directory",
            Self::Symlink => "symbolic link",
            Self::Fifo => "named pipe",
            Self::Socket => "socket",
            Self::BlockDevice => "block device",
            Self::CharDevice => "character device",
            Self::Unknown => "special file",
        })
    }
}

/// The operation on a path that failed, as an error says it after the
/// path ("/etc/yubikeys cannot be opened: …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `open`.
    Open,
    /// `read`.
    Read,
    /// `fstat`, `lstat`.
    Stat,
    /// Listing a directory.
    List,
    /// Making a file or directory.
    Create,
    /// Making a temporary file in a directory.
    CreateTemp,
    /// `flock`.
    Lock,
    /// `fchown`.
    Chown,
    /// `chmod`.
    Chmod,
    /// `write`.
    Write,
    /// `fsync` of a file.
    Sync,
    /// Renaming a new file over the path.
    Rename,
    /// `fsync` of a directory.
    SyncDir,
    /// `unlink`.
    Remove,
    /// `bind` of a socket.
    Bind,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "cannot be opened",
            Self::Read => "cannot be read",
            Self::Stat => "cannot be examined (stat)",
            Self::List => "cannot be listed",
            Self::Create => "cannot be created",
            Self::CreateTemp => "cannot hold a new temporary file",
            Self::Lock => "cannot be locked",
            Self::Chown => "cannot be given its owner",
            Self::Chmod => "cannot be given its mode",
            Self::Write => "cannot be written",
            Self::Sync => "cannot be synced to disk",
            Self::Rename => "cannot be replaced",
            Self::SyncDir => "cannot be synced to disk (the directory)",
            Self::Remove => "cannot be removed",
            Self::Bind => "cannot be bound (socket)",
        })
    }
}

/// Why a file or directory was refused: its path, once, and what is wrong.
/// Displayed as the path followed by the kind ("/etc/yubikeys has mode
/// 0664; …").
#[derive(Debug)]
pub struct SecureFileError {
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: SecureFileErrorKind,
}

/// What is wrong with a file or directory ([`SecureFileError`]); each
/// reads after the path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SecureFileErrorKind {
    /// A system call failed (missing, unreadable, a full disk).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: Op,
        /// The error.
        source: io::Error,
    },
    /// A symbolic link where a file or directory must be: never followed.
    #[error(
        "is a symbolic link; links are not followed here (put the file or directory itself there)"
    )]
    Symlink,
    /// Not a regular file where one must be.
    #[error("is not a regular file (it is a {found})")]
    NotRegular {
        /// What it is.
        found: FileKind,
    },
    /// Not a directory where one must be.
    #[error("is not a directory (it is a {found})")]
    NotDirectory {
        /// What it is.
        found: FileKind,
    },
    /// Owned by the wrong user.
    #[error("is owned by uid {found}, it must be owned by uid {expected}")]
    Owner {
        /// The owner found.
        found: u32,
        /// The owner required.
        expected: u32,
    },
    /// Has a forbidden permission bit.
    #[error("has mode {mode:04o}; the bits {forbidden:04o} must be clear (try chmod {fix:04o})")]
    Mode {
        /// Its permission bits.
        mode: u32,
        /// The bits that must be clear.
        forbidden: u32,
        /// A mode that would pass.
        fix: u32,
    },
    /// Larger than the policy allows.
    #[error("is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A name inside a directory that is not one path component (it has a
    /// `/`, or is `.`, `..` or empty): never resolved.
    #[error("is not reached by one name inside its directory")]
    NotOneComponent,
    /// The path names no file (it ends in `..`, or is `/`).
    #[error("does not name a file")]
    NoFileName,
}

impl SecureFileError {
    /// The error `kind` for `path`.
    pub fn new(path: &Path, kind: SecureFileErrorKind) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
        }
    }

    /// `op` on `path` failed with `source`.
    pub fn io(path: &Path, op: Op, source: io::Error) -> Self {
        Self::new(path, SecureFileErrorKind::Io { op, source })
    }

    /// Whether the path (or a directory on the way to it) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(&self.kind, SecureFileErrorKind::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for SecureFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for SecureFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

/// A closure for `map_err` turning an I/O error of `op` on `path` into a
/// [`SecureFileError`].
fn io_err(path: &Path, op: Op) -> impl FnOnce(io::Error) -> SecureFileError + '_ {
    move |source| SecureFileError::io(path, op, source)
}

fn errno_err(path: &Path, op: Op, e: Errno) -> SecureFileError {
    SecureFileError::io(path, op, io::Error::from(e))
}

/// Opens a file with `options` plus: never through a final symbolic link
/// (refused as [`SecureFileErrorKind::Symlink`]), without blocking (a FIFO
/// at the path is opened at once, then refused), never as a controlling
/// terminal, close-on-exec; and refuses anything but a regular file, on
/// the open descriptor.
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<File, SecureFileError> {
    let file = options
        .custom_flags(FILE_FLAGS.bits())
        .open(path)
        .map_err(|e| refused_open(path, e))?;
    let meta = file.metadata().map_err(io_err(path, Op::Stat))?;
    match FileKind::of(meta.file_type()) {
        FileKind::Regular => Ok(file),
        found => Err(SecureFileError::new(
            path,
            SecureFileErrorKind::NotRegular { found },
        )),
    }
}

/// Opens (and makes, 0600, if missing) a lock file for `flock`, as
/// [`open_regular`] opens any file: the authfile's `<authfile>.lock`, the
/// socket's `<socket>.lock`.
pub fn open_lock_file(path: &Path) -> Result<File, SecureFileError> {
    open_regular(
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600),
    )
}

/// Opens `path` as [`open_regular`] does, checks it against `policy` on
/// the open descriptor (no check-then-open race), and reads it into a
/// buffer that is wiped on drop.
pub fn read_checked(
    path: &Path,
    policy: FilePolicy,
) -> Result<Zeroizing<Vec<u8>>, SecureFileError> {
    read_checked_with_metadata(path, policy).map(|(_, bytes)| bytes)
}

/// As [`read_checked`], with the metadata of the file read (its owner and
/// mode, for a writer that keeps them).
pub fn read_checked_with_metadata(
    path: &Path,
    policy: FilePolicy,
) -> Result<(Metadata, Zeroizing<Vec<u8>>), SecureFileError> {
    let file = open_regular(path, OpenOptions::new().read(true))?;
    let meta = file.metadata().map_err(io_err(path, Op::Stat))?;
    check_metadata(path, &meta, policy)?;
    let buf = read_wiped(&file, meta.len(), policy.max_len.saturating_add(1))
        .map_err(io_err(path, Op::Read))?;
    let len = buf.len() as u64;
    if len > policy.max_len {
        return Err(SecureFileError::new(
            path,
            SecureFileErrorKind::TooLarge {
                len,
                max: policy.max_len,
            },
        ));
    }
    Ok((meta, buf))
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
    let meta = file.metadata().map_err(io_err(path, Op::Stat))?;
    check_metadata(path, &meta, policy)
}

/// The checks of [`read_checked`] on a file's metadata: regular file, owner,
/// forbidden mode bits, size. (Give it `symlink_metadata` to refuse links.)
pub fn check_metadata(
    path: &Path,
    meta: &Metadata,
    policy: FilePolicy,
) -> Result<(), SecureFileError> {
    Facts::of(meta).check(path, Want::File, policy)
}

/// The checks of a directory on its metadata: a directory, owner, forbidden
/// mode bits (the policy's size limit does not apply).
pub fn check_dir_metadata(
    path: &Path,
    meta: &Metadata,
    policy: FilePolicy,
) -> Result<(), SecureFileError> {
    Facts::of(meta).check(path, Want::Dir, policy)
}

/// Checks the directory at `path` against `policy`: opened without
/// following a final link (`O_DIRECTORY | O_NOFOLLOW`), checked on its
/// descriptor (type, owner, mode).
pub fn check_dir(path: &Path, policy: FilePolicy) -> Result<(), SecureFileError> {
    CheckedDir::open(path, policy).map(drop)
}

/// The directory at `path`, checked as [`check_dir`] checks it; made first,
/// with its missing parents, if it does not exist, and given `mode`
/// whatever the umask (the socket's directory, `state_dir`).
pub fn ensure_dir(
    path: &Path,
    mode: u32,
    policy: FilePolicy,
) -> Result<CheckedDir, SecureFileError> {
    match CheckedDir::open(path, policy) {
        Err(e) if e.is_not_found() => {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(path)
                .map_err(io_err(path, Op::Create))?;
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(io_err(path, Op::Chmod))?;
            CheckedDir::open(path, policy)
        }
        found => found,
    }
}

/// Which type a check wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    File,
    Dir,
}

/// The part of a file's metadata the checks look at.
#[derive(Debug, Clone, Copy)]
struct Facts {
    kind: FileKind,
    uid: u32,
    mode: u32,
    len: u64,
}

impl Facts {
    fn of(meta: &Metadata) -> Self {
        Self {
            kind: FileKind::of(meta.file_type()),
            uid: meta.uid(),
            mode: meta.mode(),
            len: meta.len(),
        }
    }

    fn of_stat(st: &FileStat) -> Self {
        Self {
            kind: FileKind::of_mode(st.st_mode),
            uid: st.st_uid,
            mode: st.st_mode,
            len: u64::try_from(st.st_size).unwrap_or(0),
        }
    }

    /// Type first (a link is named as such), then owner, mode and, for
    /// files, size.
    fn check(&self, path: &Path, want: Want, policy: FilePolicy) -> Result<(), SecureFileError> {
        use SecureFileErrorKind as K;
        let refuse = |kind| Err(SecureFileError::new(path, kind));
        match (self.kind, want) {
            (FileKind::Symlink, _) => return refuse(K::Symlink),
            (FileKind::Regular, Want::File) | (FileKind::Directory, Want::Dir) => {}
            (found, Want::Dir) => return refuse(K::NotDirectory { found }),
            (found, Want::File) => return refuse(K::NotRegular { found }),
        }
        if let Some(expected) = policy.owner
            && self.uid != expected
        {
            return refuse(K::Owner {
                found: self.uid,
                expected,
            });
        }
        let mode = self.mode & 0o7777;
        if mode & policy.forbidden_mode != 0 {
            return refuse(K::Mode {
                mode,
                forbidden: policy.forbidden_mode,
                fix: mode & !policy.forbidden_mode,
            });
        }
        if want == Want::File && self.len > policy.max_len {
            return refuse(K::TooLarge {
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
        return SecureFileError::new(path, SecureFileErrorKind::Symlink);
    }
    SecureFileError::io(path, Op::Open, e)
}

/// Opens a directory: never through a final link, close-on-exec, readable
/// (for listing it).
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens a file: never through a final link, close-on-exec, never as a
/// controlling terminal, and without blocking (a FIFO planted at the path
/// cannot hang the reader; it is then refused as not a regular file).
const FILE_FLAGS: OFlag = OFlag::O_NOFOLLOW
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
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
            .map_err(|e| errno_err(&path, Op::Stat, e))?;
        Facts::of_stat(&st).check(&path, Want::File, self.policy)?;
        let fd = openat(&self.fd, name, FILE_FLAGS, Mode::empty())
            .map_err(|e| Self::refused(&path, e, || self.kind_of(name)))?;
        read_open(&path, File::from(fd), self.policy, limit)
    }

    /// The names in the directory (not `.` and `..`), from a listing of
    /// its own (`openat(fd, ".")`: the same directory, a fresh offset).
    pub fn names(&self) -> Result<Vec<OsString>, SecureFileError> {
        let mut dir = Dir::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| errno_err(&self.path, Op::List, e))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| errno_err(&self.path, Op::List, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }

    fn checked(fd: OwnedFd, path: PathBuf, policy: FilePolicy) -> Result<Self, SecureFileError> {
        let file = File::from(fd);
        let meta = file.metadata().map_err(io_err(&path, Op::Stat))?;
        check_dir_metadata(&path, &meta, policy)?;
        Ok(Self {
            fd: OwnedFd::from(file),
            path,
            policy,
        })
    }

    /// What the child `name` is, without following it.
    fn kind_of(&self, name: &OsStr) -> Option<FileKind> {
        fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| Facts::of_stat(&st).kind)
    }

    /// An `open(at)` that failed, named: `O_NOFOLLOW` refuses a link with
    /// `ELOOP`, `O_DIRECTORY` anything else with `ENOTDIR`; `kind` says
    /// which it was.
    fn refused(path: &Path, e: Errno, kind: impl FnOnce() -> Option<FileKind>) -> SecureFileError {
        if e != Errno::ELOOP && e != Errno::ENOTDIR {
            return errno_err(path, Op::Open, e);
        }
        match kind() {
            Some(FileKind::Symlink) => SecureFileError::new(path, SecureFileErrorKind::Symlink),
            Some(found) if e == Errno::ENOTDIR && found != FileKind::Directory => {
                SecureFileError::new(path, SecureFileErrorKind::NotDirectory { found })
            }
            _ => errno_err(path, Op::Open, e),
        }
    }
}

/// A child is reached by one name: no `/` (which `openat` would resolve,
/// following links on the way), not `.` or `..`, not empty.
fn one_component(path: &Path, name: &OsStr) -> Result<(), SecureFileError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(SecureFileError::new(
            path,
            SecureFileErrorKind::NotOneComponent,
        ));
    }
    Ok(())
}

/// What `path` is, without following it.
fn fs_kind(path: &Path) -> Option<FileKind> {
    fs::symlink_metadata(path)
        .ok()
        .map(|m| FileKind::of(m.file_type()))
}

/// The checks on an open file's descriptor, then at most `limit` bytes of
/// it in one `read` (a regular file returns all it has up to the count).
fn read_open(
    path: &Path,
    mut file: File,
    policy: FilePolicy,
    limit: usize,
) -> Result<(Metadata, Vec<u8>), SecureFileError> {
    let meta = file.metadata().map_err(io_err(path, Op::Stat))?;
    check_metadata(path, &meta, policy)?;
    let mut buf = vec![0u8; limit];
    let n = loop {
        match file.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SecureFileError::io(path, Op::Read, e)),
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
            SecureFileError::new(path, SecureFileErrorKind::Symlink)
        } else {
            errno_err(path, Op::Open, e)
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
            Err(e) => return Err(errno_err(&path, Op::Stat, e)),
        };
        let facts = Facts::of_stat(&st);
        if facts.kind == FileKind::Directory {
            match dir.dir(&name) {
                Ok(child) => walk(&child, count)?,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        } else {
            facts.check(&path, Want::File, dir.policy)?;
            count.files += 1;
        }
    }
    Ok(())
}

/// Owner and mode of the file [`replace`] writes, and whether it may
/// replace one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFile {
    /// The uid and gid to give it; `None`: the writer's own.
    pub owner: Option<(u32, u32)>,
    /// Its permission bits, whatever the umask.
    pub mode: u32,
    /// What happens to a file already at the path.
    pub existing: Existing,
}

/// What [`replace`] does with a file already at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replaced (renamed over).
    Replace,
    /// Kept: the write fails with an `AlreadyExists` I/O error.
    Keep,
}

impl NewFile {
    /// The writer's own, with `mode`, replacing any file at the path.
    pub const fn with_mode(mode: u32) -> Self {
        Self {
            owner: None,
            mode,
            existing: Existing::Replace,
        }
    }

    /// The owner, group and mode of the file `meta` describes: a new
    /// version of it.
    pub fn like(meta: &Metadata) -> Self {
        Self {
            owner: Some((meta.uid(), meta.gid())),
            mode: meta.mode() & 0o7777,
            existing: Existing::Replace,
        }
    }

    /// The same, failing instead of replacing a file already at the path.
    #[must_use]
    pub const fn create_new(self) -> Self {
        Self {
            existing: Existing::Keep,
            ..self
        }
    }
}

/// The directory a file is made in: its parent, or `.` for a bare name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory (hidden, ending in `.tmp`, so no reader of the directory
/// takes it for one of its own), given `new`'s owner (before the mode:
/// `fchown` clears set-id bits) and mode, written, synced, renamed over
/// `path` (or, for [`Existing::Keep`], linked there only if nothing is),
/// and the directory synced, so the rename survives a crash. A reader sees
/// the old file or the new one, whole; on failure the temporary file is
/// removed and the old file is untouched.
pub fn replace(path: &Path, bytes: &[u8], new: NewFile) -> Result<(), SecureFileError> {
    let name = path
        .file_name()
        .ok_or_else(|| SecureFileError::new(path, SecureFileErrorKind::NoFileName))?;
    let dir = parent_dir(path);
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir, Op::CreateTemp))?;
    let tmp_path = tmp.path().to_path_buf();
    let file = tmp.as_file();
    if let Some((uid, gid)) = new.owner {
        let now = file.metadata().map_err(io_err(&tmp_path, Op::Stat))?;
        if (now.uid(), now.gid()) != (uid, gid) {
            nix::unistd::fchown(file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| errno_err(&tmp_path, Op::Chown, e))?;
        }
    }
    file.set_permissions(Permissions::from_mode(new.mode))
        .map_err(io_err(&tmp_path, Op::Chmod))?;
    tmp.write_all(bytes).map_err(io_err(&tmp_path, Op::Write))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err(&tmp_path, Op::Sync))?;
    let renamed = match new.existing {
        Existing::Replace => tmp.persist(path).map(drop),
        Existing::Keep => tmp.persist_noclobber(path).map(drop),
    };
    renamed.map_err(|e| SecureFileError::io(path, Op::Rename, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, Op::SyncDir))?;
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

    fn me() -> u32 {
        Uid::effective().as_raw()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn errors_name_the_path_once_then_what_is_wrong() {
        let e = SecureFileError::new(
            Path::new("/etc/yubikeys"),
            SecureFileErrorKind::Mode {
                mode: 0o664,
                forbidden: 0o022,
                fix: 0o644,
            },
        );
        assert_eq!(
            e.to_string(),
            "/etc/yubikeys has mode 0664; the bits 0022 must be clear (try chmod 0644)"
        );
        let e = SecureFileError::io(
            Path::new("/etc/yubikeys"),
            Op::Open,
            io::Error::from(io::ErrorKind::NotFound),
        );
        assert!(e.is_not_found());
        assert!(
            e.to_string()
                .starts_with("/etc/yubikeys cannot be opened: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_fifo_or_a_link_is_refused_without_waiting_or_following() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        // Nobody writes to it: a blocking open would wait forever.
        let e = read_checked(&fifo, FilePolicy::trusted(me(), 100)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                SecureFileErrorKind::NotRegular {
                    found: FileKind::Fifo
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("is not a regular file (it is a named pipe)"),
            "{e}"
        );
        let real = dir.path().join("real");
        fs::write(&real, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = open_regular(&link, OpenOptions::new().read(true)).unwrap_err();
        assert!(matches!(e.kind, SecureFileErrorKind::Symlink), "{e}");
        let e = open_regular(dir.path(), OpenOptions::new().read(true)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                SecureFileErrorKind::NotRegular {
                    found: FileKind::Directory
                }
            ),
            "{e}"
        );
        // Any owner and mode, when the policy says so; never a link.
        fs::set_permissions(&real, Permissions::from_mode(0o666)).unwrap();
        assert_eq!(
            &*read_checked(&real, FilePolicy::any_owner(1)).unwrap(),
            b"x"
        );
        let e = read_checked(&real, FilePolicy::trusted(me(), 1)).unwrap_err();
        assert!(matches!(e.kind, SecureFileErrorKind::Mode { .. }), "{e}");
        assert!(read_checked(&link, FilePolicy::any_owner(1)).is_err());
    }

    #[test]
    fn ensure_dir_makes_a_missing_directory_and_checks_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("run/ykhsm");
        ensure_dir(&made, 0o755, FilePolicy::trusted(me(), 0)).unwrap();
        assert_eq!(mode_of(&made), 0o755);
        // As it is, when it exists.
        fs::set_permissions(&made, Permissions::from_mode(0o775)).unwrap();
        let e = ensure_dir(&made, 0o755, FilePolicy::trusted(me(), 0)).unwrap_err();
        assert!(
            matches!(e.kind, SecureFileErrorKind::Mode { mode: 0o775, .. }),
            "{e}"
        );
        assert_eq!(e.path, made);
        let e = check_dir(&made, FilePolicy::trusted(me() + 1, 0)).unwrap_err();
        assert!(matches!(e.kind, SecureFileErrorKind::Owner { .. }), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        let e = ensure_dir(&link, 0o755, FilePolicy::any_owner(0)).unwrap_err();
        assert!(matches!(e.kind, SecureFileErrorKind::Symlink), "{e}");
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let e = ensure_dir(&file, 0o755, FilePolicy::any_owner(0)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                SecureFileErrorKind::NotDirectory {
                    found: FileKind::Regular
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn replace_writes_whole_with_owner_and_mode_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        replace(&path, b"one", NewFile::with_mode(0o640)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode_of(&path), 0o640);
        let old = fs::metadata(&path).unwrap();
        replace(&path, b"two", NewFile::like(&old)).unwrap();
        let new = fs::metadata(&path).unwrap();
        assert_ne!(new.ino(), old.ino(), "renamed over, not written in place");
        assert_eq!(
            (new.uid(), new.gid(), mode_of(&path)),
            (old.uid(), old.gid(), 0o640)
        );
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // Keep: the file there stays, the write fails.
        let e = replace(&path, b"three", NewFile::with_mode(0o600).create_new()).unwrap_err();
        assert!(
            matches!(&e.kind, SecureFileErrorKind::Io { op: Op::Rename, source } if source.kind() == io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // Into a missing directory: named, nothing made.
        let e = replace(&dir.path().join("no/f"), b"x", NewFile::with_mode(0o600)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                SecureFileErrorKind::Io {
                    op: Op::CreateTemp,
                    ..
                }
            ),
            "{e}"
        );
        // Only the file: no temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
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
