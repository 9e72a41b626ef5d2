//! The authfile on disk, as ykadmin reads and rewrites it.
//!
//! [`read`] opens it as every trusted file is opened
//! ([`secure_file::read_checked`]: no link followed, a regular file, at most
//! [`MAX_AUTHFILE_LEN`] bytes) but leaves its owner and mode alone:
//! [`rewrite`] keeps both, and ykhsmd, which trusts the file, refuses it at
//! every use unless it is root's and writable by nobody else.
//!
//! [`rewrite`] runs one edit as a single locked read-modify-write: an
//! exclusive `flock` on `<authfile>.lock` (so concurrent ykadmin runs cannot
//! lose each other's edits), then [`secure_file::replace`] with the old
//! file's owner and mode.

use std::fmt;
use std::fs::Metadata;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Uid;
use zeroize::Zeroizing;

use super::MAX_AUTHFILE_LEN;
use super::edit::{Edit, EditError};
use crate::secure_file::{
    self, Existing, FilePolicy, NewFile, Op, SecureFileError, SecureFileErrorKind,
};

/// Why the authfile could not be read or edited: its path (or its lock
/// file's, or its directory's), once, and what went wrong.
#[derive(Debug)]
pub struct AuthfileError {
    /// The file (or directory) concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: AuthfileErrorKind,
}

/// What went wrong ([`AuthfileError`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthfileErrorKind {
    /// The edit was refused: the file is unchanged.
    Edit(EditError),
    /// The file, its lock or its directory: a link, not a regular file, too
    /// large, or a system call failed.
    File(SecureFileErrorKind),
}

impl AuthfileError {
    /// Whether the authfile does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(&self.kind, AuthfileErrorKind::File(SecureFileErrorKind::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound)
    }

    fn edit(path: &Path, error: EditError) -> Self {
        Self {
            path: path.to_path_buf(),
            kind: AuthfileErrorKind::Edit(error),
        }
    }
}

impl From<SecureFileError> for AuthfileError {
    fn from(e: SecureFileError) -> Self {
        Self {
            path: e.path,
            kind: AuthfileErrorKind::File(e.kind),
        }
    }
}

impl fmt::Display for AuthfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            AuthfileErrorKind::Edit(e) => write!(f, "{}: {e}", self.path.display()),
            AuthfileErrorKind::File(kind) => write!(f, "{} {kind}", self.path.display()),
        }
    }
}

impl std::error::Error for AuthfileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            AuthfileErrorKind::Edit(e) => e.source(),
            AuthfileErrorKind::File(kind) => kind.source(),
        }
    }
}

/// Reads the authfile: its metadata and bytes. Not through a final
/// symbolic link, a regular file (a FIFO is refused, not waited on), at
/// most [`MAX_AUTHFILE_LEN`] bytes; any owner and mode (module docs).
pub fn read(path: &Path) -> Result<(Metadata, Zeroizing<Vec<u8>>), AuthfileError> {
    Ok(secure_file::read_checked_with_metadata(
        path,
        FilePolicy::any_owner(MAX_AUTHFILE_LEN),
    )?)
}

/// A new authfile: root's, 0644. Only root can give a file away; a test
/// run by another user keeps its own files.
fn new_authfile() -> NewFile {
    NewFile {
        owner: Uid::effective().is_root().then_some((0, 0)),
        mode: 0o644,
        existing: Existing::Replace,
    }
}

/// Runs one edit of the authfile at `path` as a single locked
/// read-modify-write.
///
/// An exclusive `flock` on `<path>.lock` (created 0600 if missing, refused
/// if it is a link or not a regular file) is held throughout. A missing
/// authfile reads as empty (and is created, root 0644, if the edit changes
/// it); otherwise it is [`read`]. The file is written only if the edit's
/// text differs from what was read, by [`secure_file::replace`] with the
/// old file's owner and mode; otherwise it is left untouched (same inode).
/// The returned [`Edit`]'s `changed` says whether it was written. An error
/// of `edit` comes back as [`AuthfileErrorKind::Edit`] with the authfile's
/// path.
pub fn rewrite(
    path: &Path,
    edit: impl FnOnce(&[u8]) -> Result<Edit, EditError>,
) -> Result<Edit, AuthfileError> {
    let Some(name) = path.file_name() else {
        return Err(SecureFileError::new(path, SecureFileErrorKind::NoFileName).into());
    };
    let mut lock_name = name.to_owned();
    lock_name.push(".lock");
    let lock_path = path.with_file_name(lock_name);
    let lock_file = secure_file::open_lock_file(&lock_path)?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| SecureFileError::io(&lock_path, Op::Lock, e.into()))?;

    let (meta, old) = match read(path) {
        Ok((meta, old)) => (Some(meta), old),
        Err(e) if e.is_not_found() => (None, Zeroizing::new(Vec::new())),
        Err(e) => return Err(e),
    };
    let mut result = edit(&old).map_err(|e| AuthfileError::edit(path, e))?;
    result.changed = result.text != *old;
    if !result.changed {
        return Ok(result);
    }
    let len = result.text.len() as u64;
    if len > MAX_AUTHFILE_LEN {
        return Err(AuthfileError::edit(
            path,
            EditError::TooLarge {
                len,
                max: MAX_AUTHFILE_LEN,
            },
        ));
    }
    let new = meta.as_ref().map_or_else(new_authfile, NewFile::like);
    secure_file::replace(path, &result.text, new)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;
    use crate::authfile::{Edit, EditError, list};
    use std::fs;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    use nix::unistd::Gid;

    const A: &str = "cccccccccccb";
    const B: &str = "cccccccccccd";
    const C: &str = "ccccccccccce";

    fn enroll(text: &[u8], user: &str, id: &str) -> Result<Edit, EditError> {
        crate::authfile::enroll(text, user, id, &|_| Account::Unknown)
    }

    fn revoke(text: &[u8], user: &str, id: Option<&str>, purge: bool) -> Result<Edit, EditError> {
        crate::authfile::revoke(text, user, id, purge, &|_| Account::Unknown)
    }

    /// Other users' lines, comments and blank lines in every odd shape.
    const NOISE: &str = "# comment: bob:cccccccccccb\n\n#\nalice:  cccc\ncarol:cccccccccccb\r\n \ndave::cccccccccccb:\n#bob:x\n";

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn innermost_unwraps() {
        let e = AuthfileError::edit(
            Path::new("/etc/yubikeys"),
            EditError::NoSuchUser { user: "bob".into() },
        );
        assert!(matches!(
            e.kind,
            AuthfileErrorKind::Edit(EditError::NoSuchUser { .. })
        ));
        assert_eq!(
            e.to_string(),
            "/etc/yubikeys: user \"bob\" has no line, nothing to revoke"
        );
    }

    #[test]
    fn rewrite_creates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yubikeys");
        let e = rewrite(&path, |t| enroll(t, "bob", A)).unwrap();
        assert!(e.changed);
        assert_eq!(fs::read(&path).unwrap(), b"bob:cccccccccccb\n");
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o644);
        if Uid::effective().is_root() {
            assert_eq!((meta.uid(), meta.gid()), (0, 0));
        }
        let lock = fs::metadata(dir.path().join("yubikeys.lock")).unwrap();
        assert_eq!(lock.mode() & 0o777, 0o600);
        assert_eq!(names(dir.path()), ["yubikeys", "yubikeys.lock"]);
    }

    #[test]
    fn rewrite_keeps_mode_and_owner_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yubikeys");
        let text = format!("{NOISE}bob:cccccccccccd\n");
        fs::write(&path, &text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let owner = if Uid::effective().is_root() {
            nix::unistd::chown(&path, Some(Uid::from_raw(4321)), Some(Gid::from_raw(8765)))
                .unwrap();
            (4321, 8765)
        } else {
            let m = fs::metadata(&path).unwrap();
            (m.uid(), m.gid())
        };
        let ino = fs::metadata(&path).unwrap().ino();
        let e = rewrite(&path, |t| enroll(t, "bob", A)).unwrap();
        assert!(e.changed);
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_ne!(meta.ino(), ino, "replaced by rename, not written in place");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), owner);
        assert_eq!(
            fs::read(&path).unwrap(),
            format!("{NOISE}bob:cccccccccccd:cccccccccccb\n").as_bytes()
        );
        assert_eq!(names(dir.path()), ["yubikeys", "yubikeys.lock"]);
    }

    #[test]
    fn no_op_edit_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yubikeys");
        fs::write(&path, "bob:cccccccccccb\n").unwrap();
        let before = fs::metadata(&path).unwrap();
        let e = rewrite(&path, |t| enroll(t, "bob", A)).unwrap();
        assert!(!e.changed);
        let after = fs::metadata(&path).unwrap();
        assert_eq!(after.ino(), before.ino());
        assert_eq!(after.mtime_nsec(), before.mtime_nsec());
        assert_eq!(names(dir.path()), ["yubikeys", "yubikeys.lock"]);
        // A closure that claims a change but returns the same text.
        let e = rewrite(&path, |t| {
            Ok(Edit {
                text: t.to_vec(),
                changed: true,
                removed: vec![],
            })
        })
        .unwrap();
        assert!(!e.changed);
        assert_eq!(fs::metadata(&path).unwrap().ino(), before.ino());
    }

    #[test]
    fn edit_errors_name_the_file_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yubikeys");
        fs::write(&path, "alice:cccccccccccb\n").unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        let e = rewrite(&path, |t| revoke(t, "bob", Some(A), false)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuthfileErrorKind::Edit(EditError::NoSuchUser { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        // A missing file: revoke says no such user and creates nothing.
        let missing = dir.path().join("other");
        let e = rewrite(&missing, |t| revoke(t, "bob", None, false)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuthfileErrorKind::Edit(EditError::NoSuchUser { .. })
            ),
            "{e}"
        );
        assert!(!missing.exists());
    }

    #[test]
    fn symlinks_and_special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, "bob:cccccccccccd\n").unwrap();
        let link = dir.path().join("yubikeys");
        symlink(&real, &link).unwrap();
        let e = rewrite(&link, |t| enroll(t, "bob", A)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuthfileErrorKind::File(SecureFileErrorKind::Symlink)
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&link.display().to_string()), "{e}");
        assert_eq!(fs::read(&real).unwrap(), b"bob:cccccccccccd\n");
        // A dangling link is not followed to create its target either.
        let dangling = dir.path().join("dangling");
        symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let e = rewrite(&dangling, |t| enroll(t, "bob", A)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuthfileErrorKind::File(SecureFileErrorKind::Symlink)
            ),
            "{e}"
        );
        assert!(!dir.path().join("nowhere").exists());
        // A directory.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let e = rewrite(&sub, |t| enroll(t, "bob", A)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuthfileErrorKind::File(SecureFileErrorKind::NotRegular { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("directory"), "{e}");
        // A named pipe (opened without blocking).
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = rewrite(&fifo, |t| enroll(t, "bob", A)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuthfileErrorKind::File(SecureFileErrorKind::NotRegular { .. })
            ),
            "{e}"
        );
        // A symlinked lock file.
        let path = dir.path().join("keys");
        symlink(&real, dir.path().join("keys.lock")).unwrap();
        let e = rewrite(&path, |t| enroll(t, "bob", A)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuthfileErrorKind::File(SecureFileErrorKind::Symlink)
            ),
            "{e}"
        );
    }

    #[test]
    fn concurrent_edits_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yubikeys");
        let users: Vec<String> = (0..16).map(|i| format!("user{i}")).collect();
        std::thread::scope(|scope| {
            for u in &users {
                let path = &path;
                scope.spawn(move || {
                    for id in [A, B, C] {
                        rewrite(path, |t| enroll(t, u, id)).unwrap();
                    }
                });
            }
        });
        let got = list(&fs::read(&path).unwrap());
        assert_eq!(got.len(), users.len());
        for (_, ids) in got {
            assert_eq!(ids, [A, B, C]);
        }
        assert_eq!(names(dir.path()), ["yubikeys", "yubikeys.lock"]);
    }
}
