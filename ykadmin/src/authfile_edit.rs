//! Editing pam_yubico's authfile (`/etc/yubikeys`) in place, for
//! `ykadmin enroll`, `ykadmin revoke` and `ykadmin list`.
//!
//! The format is pam_yubico's (pam-yubico-compat.md §1): `user:id1:id2:…`,
//! `#` comments in column 0 only, empty fields skipped, several lines per
//! user allowed (the ids of all of them count), and `bob:` or `bob` is a user
//! who has a line but no valid key.
//!
//! The editor is split in two:
//!
//! * a pure part ([`enroll`], [`revoke`], [`list`]) that maps the file's
//!   bytes to new bytes. Only lines of the user being edited change; every
//!   other byte (comments, blank lines, other users' lines with their odd
//!   spacing or CR LF ends, the order) is kept byte for byte. A line that
//!   ykhsmd or pam_yubico would read as belonging to the user but that is
//!   not plainly `user:id:id…` (a CR, a NUL, white space, a field that is
//!   not a public id, a line too long for pam_yubico, a leading `:` …) is
//!   never guessed at: the edit is refused, naming the line.
//! * an I/O part ([`rewrite`]) that runs one such edit under an exclusive
//!   lock and replaces the file atomically (temporary file in the same
//!   directory, same owner and mode, fsync, rename, fsync of the directory).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{
    FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::unistd::{Gid, Uid};
use thiserror::Error;
use ykhsm_core::otp::PublicId;
use ykhsm_core::username;

/// The largest authfile read or written (ykhsmd refuses larger ones).
pub const MAX_AUTHFILE_LEN: u64 = 16 << 20;

/// pam_yubico reads lines with `fgets` into 1024 bytes: a line, newline
/// included, must not be longer than this, or its tail is read as a line of
/// its own (and ykhsmd refuses it).
pub const MAX_LINE_LEN: usize = 1023;

/// The longest user name accepted (Linux's `LOGIN_NAME_MAX`).
pub const MAX_USER_LEN: usize = 256;

/// The modhex alphabet, lower case.
const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";

/// The result of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The whole new file.
    pub text: Vec<u8>,
    /// Whether `text` differs from the input. [`rewrite`] writes nothing
    /// when it does not.
    pub changed: bool,
    /// The ids taken out by [`revoke`], as they were written, in file order
    /// (an id on two lines is listed twice). Empty for [`enroll`].
    pub removed: Vec<String>,
}

/// Why an edit was refused. Errors of [`rewrite`] name the file; the pure
/// functions' errors come wrapped in [`EditError::InFile`] there.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EditError {
    /// The user name cannot be written to the authfile.
    #[error("invalid user name {user:?}: {reason}")]
    InvalidUser {
        /// The name given.
        user: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The public id is not 2 to 16 lower-case modhex characters of even
    /// length.
    #[error("invalid public id {public_id:?}: {reason}")]
    InvalidPublicId {
        /// The id given.
        public_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A line that belongs to the user cannot be edited safely.
    #[error(
        "line {line} belongs to user {user:?} but {reason}; refusing to edit it, fix the line by hand"
    )]
    UnsafeLine {
        /// 1-based line number.
        line: usize,
        /// The user being edited.
        user: String,
        /// What is wrong with the line.
        reason: String,
    },
    /// `revoke` for a user who has no line.
    #[error("user {user:?} has no line, nothing to revoke")]
    NoSuchUser {
        /// The user.
        user: String,
    },
    /// `revoke` of an id the user does not have.
    #[error("user {user:?} does not have the key {public_id}")]
    KeyNotEnrolled {
        /// The user.
        user: String,
        /// The id.
        public_id: String,
    },
    /// An error of the edit, with the file it concerns.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The authfile.
        path: PathBuf,
        /// What went wrong.
        error: Box<EditError>,
    },
    /// The authfile is a symbolic link.
    #[error("{} is a symbolic link; refusing to follow it (point ykadmin at the real file)", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The authfile (or its lock file) is not a regular file.
    #[error("{} is not a regular file (it is a {kind})", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The authfile, before or after the edit, is larger than ykhsmd reads.
    #[error("{} would be {len} bytes, more than the {MAX_AUTHFILE_LEN} allowed", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The path has no file name.
    #[error("{} does not name a file", path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl EditError {
    /// The error inside any [`EditError::InFile`] wrappers, to match on the
    /// kind (e.g. [`EditError::KeyNotEnrolled`]) after [`rewrite`].
    pub fn innermost(&self) -> &EditError {
        let mut e = self;
        while let EditError::InFile { error, .. } = e {
            e = error;
        }
        e
    }
}

/// Checks a user name: not empty, at most [`MAX_USER_LEN`] bytes, no `:`,
/// no white space, control or invisible character (a byte-order mark, a
/// zero-width space: [`username::is_invisible`]), not starting with `#`.
pub fn validate_user(user: &str) -> Result<(), EditError> {
    let bad = |reason| {
        Err(EditError::InvalidUser {
            user: user.to_owned(),
            reason,
        })
    };
    if user.is_empty() {
        return bad("it is empty");
    }
    if user.len() > MAX_USER_LEN {
        return bad("it is longer than 256 bytes");
    }
    if user.contains(':') {
        return bad("it contains ':', the authfile's field separator");
    }
    if username::first_invisible(user).is_some() {
        return bad(
            "it contains white space, a control or an invisible character (a byte-order mark, a zero-width space…)",
        );
    }
    if user.starts_with('#') {
        return bad("it starts with '#', which makes the line a comment");
    }
    Ok(())
}

/// Checks a public id as stored in the authfile: 2 to 16 lower-case modhex
/// characters (`cbdefghijklnrtuv`), an even number of them.
pub fn validate_public_id(public_id: &str) -> Result<(), EditError> {
    let bad = |reason: String| {
        Err(EditError::InvalidPublicId {
            public_id: public_id.to_owned(),
            reason,
        })
    };
    if public_id.is_empty() {
        return bad("it is empty".to_owned());
    }
    for (i, c) in public_id.chars().enumerate() {
        let modhex = |c: char| u8::try_from(c).is_ok_and(|b| MODHEX.contains(&b));
        if modhex(c) {
            continue;
        }
        let reason = if modhex(c.to_ascii_lowercase()) {
            format!("character {c:?} at position {i} is upper case; write it in lower case")
        } else {
            format!("character {c:?} at position {i} is not modhex (cbdefghijklnrtuv)")
        };
        return bad(reason);
    }
    let len = public_id.len();
    if len > 16 {
        return bad(format!("it has {len} characters, at most 16 are allowed"));
    }
    if !len.is_multiple_of(2) {
        return bad(format!("it has an odd number of characters ({len})"));
    }
    Ok(())
}

/// A line of the file: its content and its terminator (`"\n"`, or `""` for
/// a last line without one).
type RawLine<'a> = (&'a [u8], &'a [u8]);

fn split_lines(text: &[u8]) -> Vec<RawLine<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let (content, tail) = rest.split_at(i);
                let (nl, tail) = tail.split_at(1);
                out.push((content, nl));
                rest = tail;
            }
            None => {
                out.push((rest, &[][..]));
                rest = &[];
            }
        }
    }
    out
}

/// The user ykhsmd's reader attributes the line to, also for a line it
/// refuses (ykhsmd fails such a user closed): the first `:` field with one
/// trailing CR removed, trimmed.
fn daemon_user(content: &[u8]) -> Option<&str> {
    if content.is_empty() || content.first() == Some(&b'#') {
        return None;
    }
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    let field = content.split(|&b| b == b':').next().unwrap_or_default();
    std::str::from_utf8(field).ok().map(str::trim)
}

/// The users pam_yubico reads from the line: it reads 1023-byte pieces
/// (`fgets`), stops at a NUL (C strings), skips pieces starting with `#`,
/// and takes the first non-empty `:` field (`strtok_r` skips leading `:`).
fn pam_users(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.chunks(MAX_LINE_LEN).filter_map(|piece| {
        let piece = piece.split(|&b| b == 0).next().unwrap_or_default();
        if piece.first() == Some(&b'#') {
            return None;
        }
        piece.split(|&b| b == b':').find(|f| !f.is_empty())
    })
}

/// Whether ykhsmd or pam_yubico reads the line as (also) belonging to
/// `user`: ykhsmd fails a name with invisible characters closed for the
/// name without them too (`\u{feff}bob` is bob's line, and refused).
fn belongs_to(content: &[u8], user: &str) -> bool {
    daemon_user(content).is_some_and(|u| u == user || username::visible_part(u) == user)
        || pam_users(content).any(|u| u == user.as_bytes())
}

/// Why a name with an invisible character is refused.
fn invisible(at: usize, c: char) -> String {
    format!(
        "it contains white space, a control or an invisible character ({})",
        username::describe(at, c)
    )
}

/// A line of the user, checked to be plainly `user:id:id…`.
#[derive(Debug)]
struct UserLine<'a> {
    /// Index into the lines.
    index: usize,
    /// The ids, as written and as parsed (lower-cased).
    ids: Vec<(&'a str, PublicId)>,
}

/// Checks a line that belongs to `user` and reads its ids, or says why it
/// cannot be edited.
fn parse_user_line<'a>(content: &'a [u8], user: &str) -> Result<Vec<(&'a str, PublicId)>, String> {
    if content.len() + 1 > MAX_LINE_LEN {
        return Err(format!(
            "it is {} bytes long, longer than the {} pam_yubico reads as one line",
            content.len() + 1,
            MAX_LINE_LEN
        ));
    }
    if content.contains(&0) {
        return Err("it contains a NUL byte".to_owned());
    }
    if content.contains(&b'\r') {
        return Err("it contains a carriage return (a CR LF line end?)".to_owned());
    }
    let Ok(text) = std::str::from_utf8(content) else {
        return Err("it is not valid UTF-8".to_owned());
    };
    if let Some((at, c)) = username::first_invisible(text) {
        return Err(invisible(at, c));
    }
    let mut fields = text.split(':');
    if fields.next() != Some(user) {
        return Err("it does not start with the user name and ':'".to_owned());
    }
    let mut ids = Vec::new();
    for field in fields.filter(|f| !f.is_empty()) {
        match PublicId::parse(field) {
            Ok(id) => ids.push((field, id)),
            Err(e) => return Err(format!("the field {field:?} is not a public id ({e})")),
        }
    }
    Ok(ids)
}

/// Every line belonging to `user`, in file order; an error for the first
/// one that cannot be edited safely.
fn user_lines<'a>(lines: &[RawLine<'a>], user: &str) -> Result<Vec<UserLine<'a>>, EditError> {
    let mut out = Vec::new();
    for (index, (content, _)) in lines.iter().enumerate() {
        if !belongs_to(content, user) {
            continue;
        }
        let ids = parse_user_line(content, user).map_err(|reason| EditError::UnsafeLine {
            line: index + 1,
            user: user.to_owned(),
            reason,
        })?;
        out.push(UserLine { index, ids });
    }
    Ok(out)
}

/// Reassembles the file, with some lines replaced (`Some`) or deleted
/// (`None`); every other line is copied byte for byte.
fn assemble(lines: &[RawLine<'_>], replace: &HashMap<usize, Option<Vec<u8>>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (content, nl)) in lines.iter().enumerate() {
        match replace.get(&i) {
            None => {
                out.extend_from_slice(content);
                out.extend_from_slice(nl);
            }
            Some(Some(new)) => {
                out.extend_from_slice(new);
                out.extend_from_slice(nl);
            }
            Some(None) => {}
        }
    }
    out
}

fn finish(input: &[u8], text: Vec<u8>, removed: Vec<String>) -> Edit {
    Edit {
        changed: text != input,
        text,
        removed,
    }
}

/// Adds `public_id` to `user`.
///
/// If any line of the user already holds the id (in any letter case, as
/// ykhsmd compares), nothing changes. Otherwise `:id` is appended to the
/// user's last line (`bob` and `bob:` both become `bob:id`), or, when the
/// user has no line or the last one would grow past [`MAX_LINE_LEN`], a line
/// `user:id` is added at the end of the file (after a `\n` if the file does
/// not end with one). Every other byte stays as it was.
pub fn enroll(text: &[u8], user: &str, public_id: &str) -> Result<Edit, EditError> {
    validate_user(user)?;
    validate_public_id(public_id)?;
    let lines = split_lines(text);
    let mine = user_lines(&lines, user)?;
    if mine
        .iter()
        .any(|l| l.ids.iter().any(|(_, id)| id.as_str() == public_id))
    {
        return Ok(finish(text, text.to_vec(), Vec::new()));
    }
    if let Some(last) = mine.last() {
        let (content, _) = lines[last.index];
        let mut new = content.to_vec();
        if !new.ends_with(b":") {
            new.push(b':');
        }
        new.extend_from_slice(public_id.as_bytes());
        if new.len() < MAX_LINE_LEN {
            let replace = HashMap::from([(last.index, Some(new))]);
            return Ok(finish(text, assemble(&lines, &replace), Vec::new()));
        }
    }
    let mut out = text.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(user.as_bytes());
    out.push(b':');
    out.extend_from_slice(public_id.as_bytes());
    out.push(b'\n');
    Ok(finish(text, out, Vec::new()))
}

/// Removes `public_id` (every id when `None`) from every line of `user`.
///
/// The id is matched in any letter case, as ykhsmd compares. An edited line
/// that keeps ids is rewritten as `user:id:id…` (the kept ids as written);
/// one left without ids is deleted, except that without `purge` the user
/// always keeps a line: when no id of the user remains, the user's first
/// line becomes `user:` and their other lines are deleted (a user with no
/// line would have no second factor at all under `nullok`). With `purge`,
/// when no id of the user remains, all of the user's lines are deleted.
///
/// Errors: [`EditError::NoSuchUser`] when the user has no line,
/// [`EditError::KeyNotEnrolled`] when none of the user's lines holds
/// `public_id`.
pub fn revoke(
    text: &[u8],
    user: &str,
    public_id: Option<&str>,
    purge: bool,
) -> Result<Edit, EditError> {
    validate_user(user)?;
    if let Some(id) = public_id {
        validate_public_id(id)?;
    }
    let lines = split_lines(text);
    let mine = user_lines(&lines, user)?;
    if mine.is_empty() {
        return Err(EditError::NoSuchUser {
            user: user.to_owned(),
        });
    }
    let matches = |id: &PublicId| public_id.is_none_or(|want| id.as_str() == want);
    let mut removed = Vec::new();
    let mut remaining = 0;
    // Per user line: the ids kept, if the line held one to remove.
    let mut edited: Vec<(usize, Vec<&str>)> = Vec::new();
    for line in &mine {
        let (gone, kept): (Vec<_>, Vec<_>) = line.ids.iter().partition(|(_, id)| matches(id));
        remaining += kept.len();
        if !gone.is_empty() {
            removed.extend(gone.iter().map(|(s, _)| (*s).to_owned()));
            edited.push((line.index, kept.iter().map(|(s, _)| *s).collect()));
        }
    }
    if let Some(id) = public_id
        && removed.is_empty()
    {
        return Err(EditError::KeyNotEnrolled {
            user: user.to_owned(),
            public_id: id.to_owned(),
        });
    }
    let mut replace: HashMap<usize, Option<Vec<u8>>> = HashMap::new();
    if remaining == 0 {
        for (n, line) in mine.iter().enumerate() {
            let keep = n == 0 && !purge;
            replace.insert(line.index, keep.then(|| format!("{user}:").into_bytes()));
        }
    } else {
        for (index, kept) in edited {
            let new = (!kept.is_empty()).then(|| {
                let mut s = user.to_owned();
                for id in kept {
                    s.push(':');
                    s.push_str(id);
                }
                s.into_bytes()
            });
            replace.insert(index, new);
        }
    }
    Ok(finish(text, assemble(&lines, &replace), removed))
}

/// The users of the file in order of first appearance, each with the ids of
/// all their lines, as written.
///
/// This is a listing, not a check: comment and empty lines are skipped, one
/// trailing CR is dropped, the user is the first `:` field and the ids are
/// the other non-empty fields (invalid UTF-8 shown with U+FFFD); nothing is
/// validated (`ykhsmd --check` reports lines it will not trust).
pub fn list(text: &[u8]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (content, _) in split_lines(text) {
        if content.is_empty() || content.first() == Some(&b'#') {
            continue;
        }
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let line = String::from_utf8_lossy(content);
        let mut fields = line.split(':');
        let user = fields.next().unwrap_or_default();
        if user.is_empty() {
            continue;
        }
        let ids = fields.filter(|f| !f.is_empty()).map(str::to_owned);
        let slot = *seen.entry(user.to_owned()).or_insert_with(|| {
            out.push((user.to_owned(), Vec::new()));
            out.len() - 1
        });
        out[slot].1.extend(ids);
    }
    out
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> EditError {
    let path = path.to_owned();
    move |source| EditError::Io {
        path,
        action,
        source,
    }
}

fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "named pipe"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Opens `path` without following a final symbolic link and checks it is a
/// regular file.
fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<Option<File>, EditError> {
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let file = match options.custom_flags(flags.bits()).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error().map(Errno::from_raw) == Some(Errno::ELOOP) => {
            return Err(EditError::Symlink {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(path, "open")(e)),
    };
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    if !meta.file_type().is_file() {
        return Err(EditError::NotRegularFile {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok(Some(file))
}

/// Reads the authfile: its bytes and metadata, or nothing if it is missing.
fn read_authfile(path: &Path) -> Result<(Vec<u8>, Option<fs::Metadata>), EditError> {
    let Some(file) = open_regular(path, OpenOptions::new().read(true))? else {
        return Ok((Vec::new(), None));
    };
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    let too_large = |len| EditError::TooLarge {
        path: path.to_owned(),
        len,
    };
    if meta.len() > MAX_AUTHFILE_LEN {
        return Err(too_large(meta.len()));
    }
    let mut text = Vec::new();
    file.take(MAX_AUTHFILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(io_err(path, "read"))?;
    if text.len() as u64 > MAX_AUTHFILE_LEN {
        return Err(too_large(text.len() as u64));
    }
    Ok((text, Some(meta)))
}

/// Writes `text` to a temporary file next to `path` with the owner and mode
/// of `old` (root 0644 for a new file), syncs it, renames it over `path`
/// and syncs the directory.
fn replace_file(
    path: &Path,
    dir: &Path,
    name: &std::ffi::OsStr,
    old: Option<&fs::Metadata>,
    text: &[u8],
) -> Result<(), EditError> {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir, "create a temporary file in"))?;
    let tmp_path = tmp.path().to_owned();
    let (owner, mode) = match old {
        Some(m) => (Some((m.uid(), m.gid())), m.mode() & 0o7777),
        // A new authfile: root's, 0644. Only root can give a file away; a
        // test run by another user keeps its own files.
        None => (Uid::effective().is_root().then_some((0, 0)), 0o644),
    };
    let file = tmp.as_file();
    let now = file.metadata().map_err(io_err(&tmp_path, "stat"))?;
    if let Some((uid, gid)) = owner
        && (now.uid(), now.gid()) != (uid, gid)
    {
        nix::unistd::fchown(file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| io_err(&tmp_path, "set the owner of")(e.into()))?;
    }
    // After fchown, which clears set-id bits.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp_path, "set the mode of"))?;
    tmp.write_all(text).map_err(io_err(&tmp_path, "write"))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err(&tmp_path, "sync"))?;
    // On failure the temporary file is removed when the error drops it.
    tmp.persist(path)
        .map_err(|e| io_err(path, "rename the new file over")(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync the directory"))?;
    Ok(())
}

/// Runs one edit of the authfile at `path` as a single locked
/// read-modify-write.
///
/// An exclusive `flock` on `<path>.lock` (created 0600 if missing) is held
/// throughout, so concurrent ykadmin runs cannot lose each other's edits. A
/// missing authfile reads as empty (and is created, root 0644, if the edit
/// changes it). A symbolic link or anything but a regular file is refused.
/// The file is written only if the edit's text differs from what was read:
/// to a temporary file in the same directory with the old file's owner and
/// mode, synced, renamed over `path`, and the directory synced; otherwise
/// the file is left untouched (same inode). The returned [`Edit`]'s
/// `changed` says whether it was written. Errors of `edit` come back
/// wrapped in [`EditError::InFile`].
pub fn rewrite(
    path: &Path,
    edit: impl FnOnce(&[u8]) -> Result<Edit, EditError>,
) -> Result<Edit, EditError> {
    let Some(name) = path.file_name() else {
        return Err(EditError::BadPath {
            path: path.to_owned(),
        });
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut lock_name = name.to_owned();
    lock_name.push(".lock");
    let lock_path = path.with_file_name(lock_name);
    let lock_file = open_regular(
        &lock_path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600),
    )?
    .ok_or_else(|| io_err(&lock_path, "create")(io::ErrorKind::NotFound.into()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err(&lock_path, "lock")(e.into()))?;

    let (old, meta) = read_authfile(path)?;
    let mut result = edit(&old).map_err(|error| EditError::InFile {
        path: path.to_owned(),
        error: Box::new(error),
    })?;
    result.changed = result.text != old;
    if !result.changed {
        return Ok(result);
    }
    if result.text.len() as u64 > MAX_AUTHFILE_LEN {
        return Err(EditError::TooLarge {
            path: path.to_owned(),
            len: result.text.len() as u64,
        });
    }
    replace_file(path, dir, name, meta.as_ref(), &result.text)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "cccccccccccb";
    const B: &str = "cccccccccccd";
    const C: &str = "ccccccccccce";

    fn en(text: &str, user: &str, id: &str) -> Edit {
        enroll(text.as_bytes(), user, id).unwrap()
    }

    fn rv(text: &str, user: &str, id: Option<&str>, purge: bool) -> Edit {
        revoke(text.as_bytes(), user, id, purge).unwrap()
    }

    fn s(e: &Edit) -> &str {
        std::str::from_utf8(&e.text).unwrap()
    }

    /// Other users' lines, comments and blank lines in every odd shape.
    const NOISE: &str = "# comment: bob:cccccccccccb\n\n#\nalice:  cccc\ncarol:cccccccccccb\r\n \ndave::cccccccccccb:\n#bob:x\n";

    #[test]
    fn enroll_appends_to_the_users_last_line() {
        let e = en("bob:cccccccccccb\nalice:x\nbob:cccccccccccd\n", "bob", C);
        assert!(e.changed);
        assert_eq!(
            s(&e),
            "bob:cccccccccccb\nalice:x\nbob:cccccccccccd:ccccccccccce\n"
        );
    }

    #[test]
    fn enroll_new_user_appends_a_line() {
        assert_eq!(s(&en("", "bob", A)), "bob:cccccccccccb\n");
        assert_eq!(s(&en("alice:x\n", "bob", A)), "alice:x\nbob:cccccccccccb\n");
        // No final newline: one is added first, the old bytes are kept.
        assert_eq!(s(&en("alice:x", "bob", A)), "alice:x\nbob:cccccccccccb\n");
        assert_eq!(
            s(&en("alice:x\r\n", "bob", A)),
            "alice:x\r\nbob:cccccccccccb\n"
        );
    }

    #[test]
    fn enroll_to_empty_lines() {
        assert_eq!(s(&en("bob:\n", "bob", A)), "bob:cccccccccccb\n");
        assert_eq!(s(&en("bob\n", "bob", A)), "bob:cccccccccccb\n");
        assert_eq!(s(&en("bob", "bob", A)), "bob:cccccccccccb");
        assert_eq!(s(&en("bob::\n", "bob", A)), "bob::cccccccccccb\n");
        assert_eq!(
            s(&en("bob:cccccccccccd:\n", "bob", A)),
            "bob:cccccccccccd:cccccccccccb\n"
        );
    }

    #[test]
    fn enroll_of_a_present_id_is_a_no_op() {
        for text in [
            "bob:cccccccccccb\n",
            "bob:cccccccccccd\nbob:cccccccccccb:\n",
            "bob:CCCCCCCCCCCB\n",
            "x:y\nbob:cccccccccccb",
        ] {
            let e = en(text, "bob", A);
            assert!(!e.changed, "{text:?}");
            assert_eq!(e.text, text.as_bytes());
        }
        // Same id for another user does not count.
        assert!(en("alice:cccccccccccb\n", "bob", A).changed);
    }

    #[test]
    fn enroll_keeps_every_other_byte() {
        let text = format!("{NOISE}bob:cccccccccccd\n{NOISE}");
        let e = en(&text, "bob", A);
        assert_eq!(
            s(&e),
            format!("{NOISE}bob:cccccccccccd:cccccccccccb\n{NOISE}")
        );
        let e = en(NOISE, "bob", A);
        assert_eq!(s(&e), format!("{NOISE}bob:cccccccccccb\n"));
        // Names are exact and case-sensitive: "Bob", "bobby" are others.
        let e = en("Bob:cccccccccccb\nbobby:cccccccccccb\n", "bob", A);
        assert_eq!(
            s(&e),
            "Bob:cccccccccccb\nbobby:cccccccccccb\nbob:cccccccccccb\n"
        );
    }

    #[test]
    fn enroll_starts_a_new_line_when_the_last_would_be_too_long() {
        let mut line = "bob".to_owned();
        while line.len() + 13 < MAX_LINE_LEN {
            line.push_str(":cccccccccccc");
        }
        let text = format!("{line}\n");
        let e = en(&text, "bob", A);
        assert_eq!(s(&e), format!("{line}\nbob:cccccccccccb\n"));
        for l in e.text.split(|&b| b == b'\n') {
            assert!(l.len() < MAX_LINE_LEN);
        }
    }

    #[test]
    fn revoke_one_id() {
        let e = rv("bob:cccccccccccb:cccccccccccd\n", "bob", Some(A), false);
        assert_eq!(s(&e), "bob:cccccccccccd\n");
        assert_eq!(e.removed, [A]);
        // From every line of the user, any letter case.
        let e = rv(
            "bob:cccccccccccb\nalice:cccccccccccb\nbob:CCCCCCCCCCCB:cccccccccccd\n",
            "bob",
            Some(A),
            false,
        );
        assert_eq!(s(&e), "alice:cccccccccccb\nbob:cccccccccccd\n");
        assert_eq!(e.removed, [A, "CCCCCCCCCCCB"]);
        // Lines without the id are not touched.
        let e = rv(
            "bob::cccccccccccd:\nbob:cccccccccccb\n",
            "bob",
            Some(A),
            false,
        );
        assert_eq!(s(&e), "bob::cccccccccccd:\n");
    }

    #[test]
    fn revoke_last_id_keeps_an_empty_line() {
        let e = rv("bob:cccccccccccb\n", "bob", Some(A), false);
        assert_eq!(s(&e), "bob:\n");
        let e = rv("x:y\nbob:cccccccccccb", "bob", Some(A), false);
        assert_eq!(s(&e), "x:y\nbob:");
        // Duplicate lines: the first is kept, empty.
        let e = rv(
            "bob:cccccccccccb\nx:y\nbob:cccccccccccb\n",
            "bob",
            Some(A),
            false,
        );
        assert_eq!(s(&e), "bob:\nx:y\n");
        assert_eq!(
            list(&e.text),
            [("bob".into(), vec![]), ("x".into(), vec!["y".into()])]
        );
    }

    #[test]
    fn revoke_all() {
        let text = format!("{NOISE}bob:cccccccccccb\n{NOISE}bob:cccccccccccd:ccccccccccce\nbob\n");
        let e = rv(&text, "bob", None, false);
        assert_eq!(s(&e), format!("{NOISE}bob:\n{NOISE}"));
        assert_eq!(e.removed, [A, B, C]);
        // A lone "bob:" stays as it is; "bob" is normalised to "bob:".
        let e = rv("bob:\n", "bob", None, false);
        assert!(!e.changed);
        assert!(e.removed.is_empty());
        assert_eq!(s(&rv("bob\n", "bob", None, false)), "bob:\n");
    }

    #[test]
    fn purge_removes_the_users_lines() {
        let text = format!("{NOISE}bob:cccccccccccb\n{NOISE}bob:\nbob:cccccccccccd");
        let e = rv(&text, "bob", None, true);
        assert_eq!(s(&e), format!("{NOISE}{NOISE}"));
        assert_eq!(s(&rv("bob:\n", "bob", None, true)), "");
        // With an id: the lines go only when the user has no id left.
        let e = rv("bob:cccccccccccb\nbob:\n", "bob", Some(A), true);
        assert_eq!(s(&e), "");
        let e = rv(
            "bob:cccccccccccb\nbob:\nbob:cccccccccccd\n",
            "bob",
            Some(A),
            true,
        );
        assert_eq!(s(&e), "bob:\nbob:cccccccccccd\n");
    }

    #[test]
    fn revoke_errors() {
        let e = revoke(b"alice:cccccccccccb\n", "bob", Some(A), false).unwrap_err();
        assert!(matches!(e, EditError::NoSuchUser { .. }), "{e}");
        let e = revoke(b"alice:cccccccccccb\n", "bob", None, true).unwrap_err();
        assert!(matches!(e, EditError::NoSuchUser { .. }), "{e}");
        let e = revoke(b"", "bob", None, false).unwrap_err();
        assert!(matches!(e, EditError::NoSuchUser { .. }), "{e}");
        let e = revoke(
            b"bob:cccccccccccd\nalice:cccccccccccb\n",
            "bob",
            Some(A),
            false,
        )
        .unwrap_err();
        assert!(matches!(e, EditError::KeyNotEnrolled { .. }), "{e}");
        assert!(e.to_string().contains(A));
        let e = revoke(b"bob:\n", "bob", Some(A), true).unwrap_err();
        assert!(matches!(e, EditError::KeyNotEnrolled { .. }), "{e}");
    }

    #[test]
    fn invalid_inputs() {
        for user in [
            "",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            "#root",
            " bob",
            "bob\r",
            "\u{feff}bob",
            "bo\u{200b}b",
            "bob\u{200d}",
            "bob\u{7f}",
            "bob\u{85}",
        ] {
            let e = enroll(b"", user, A).unwrap_err();
            assert!(matches!(e, EditError::InvalidUser { .. }), "{user:?}: {e}");
            let e = revoke(b"", user, None, false).unwrap_err();
            assert!(matches!(e, EditError::InvalidUser { .. }), "{user:?}: {e}");
        }
        assert!(enroll(b"", &"u".repeat(257), A).is_err());
        assert!(enroll(b"", &"u".repeat(256), A).is_ok());
        for id in [
            "",
            "c",
            "ccc",
            "cccccccccccccccccc",
            "CCCCCCCCCCCB",
            "cccccccccca0",
            "ccccccccccc:",
            "cccc cccc",
            "ccccccccccé",
        ] {
            let e = enroll(b"", "bob", id).unwrap_err();
            assert!(
                matches!(e, EditError::InvalidPublicId { .. }),
                "{id:?}: {e}"
            );
            let e = revoke(b"bob:cccccccccccb\n", "bob", Some(id), false).unwrap_err();
            assert!(
                matches!(e, EditError::InvalidPublicId { .. }),
                "{id:?}: {e}"
            );
        }
        let e = enroll(b"", "bob", "CCCCCCCCCCCB").unwrap_err();
        assert!(e.to_string().contains("lower case"), "{e}");
        for id in ["cb", "cccccccccccccccc", "vvvvvvvvvvvv"] {
            assert!(enroll(b"", "bob", id).is_ok(), "{id}");
        }
    }

    #[test]
    fn unsafe_user_lines_are_refused_with_their_number() {
        let cases: &[(&str, usize)] = &[
            ("x:y\nbob:cccccccccccb\r\n", 2),
            ("bob:cccccccccccb\0\n", 1),
            ("bob\0:cccccccccccb\n", 1),
            ("x\nx\nbob: cccccccccccb\n", 3),
            (" bob:cccccccccccb\n", 1),
            ("bob :cccccccccccb\n", 1),
            ("bob:not-an-id\n", 1),
            ("bob:ccc\n", 1),
            (":bob:cccccccccccb\n", 1),
            ("::bob\n", 1),
            ("bob\t:cccccccccccb\n", 1),
            ("bob:cccccccccccb\nbob:\u{a0}\n", 2),
            // Issue 12, item 4: ykhsmd fails these closed for bob.
            ("\u{feff}bob:cccccccccccb\n", 1),
            ("x:y\nbob\u{200b}:cccccccccccb\n", 2),
            ("b\u{2060}ob:cccccccccccb\n", 1),
            ("bob\u{7f}:cccccccccccb\n", 1),
        ];
        for (text, line) in cases {
            for result in [
                enroll(text.as_bytes(), "bob", C),
                revoke(text.as_bytes(), "bob", None, false),
                revoke(text.as_bytes(), "bob", Some(A), true),
            ] {
                match result {
                    Err(EditError::UnsafeLine { line: l, .. }) => assert_eq!(l, *line, "{text:?}"),
                    other => panic!("{text:?}: {other:?}"),
                }
            }
        }
        // Invalid UTF-8 after the user name.
        let e = enroll(b"bob:\xff\n", "bob", A).unwrap_err();
        assert!(matches!(e, EditError::UnsafeLine { line: 1, .. }), "{e}");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn overlong_lines_naming_the_user_are_refused() {
        // The user's own line too long for pam_yubico.
        let long = format!("bob:{}\n", "cccccccccccc:".repeat(80));
        let e = enroll(long.as_bytes(), "bob", A).unwrap_err();
        assert!(matches!(e, EditError::UnsafeLine { line: 1, .. }), "{e}");
        // Another line, even a comment, whose tail pam_yubico reads as a
        // line of bob's: revoking must not leave that key behind silently.
        for head in ["# ", "alice:"] {
            let pad = MAX_LINE_LEN - head.len();
            let text = format!(
                "bob:cccccccccccb\n{head}{}bob:cccccccccccb\n",
                "x".repeat(pad)
            );
            let e = revoke(text.as_bytes(), "bob", Some(A), false).unwrap_err();
            assert!(matches!(e, EditError::UnsafeLine { line: 2, .. }), "{e}");
        }
        // A long line of someone else is left alone.
        let text = format!("alice:{}\n", "x".repeat(2000));
        let e = en(&text, "bob", A);
        assert_eq!(s(&e), format!("{text}bob:cccccccccccb\n"));
    }

    #[test]
    fn other_users_odd_lines_do_not_matter() {
        let bytes =
            b"alice:  cccc\ncarol:cccccccccccb\r\nbobby:\0\n:\n\xc2\xa0\n\xff\xfe:x\n\tbobx:"
                .to_vec();
        let e = enroll(&bytes, "bob", A).unwrap();
        let mut want = bytes.clone();
        want.extend_from_slice(b"\nbob:cccccccccccb\n");
        assert_eq!(e.text, want);
        let e = revoke(&e.text, "bob", None, true).unwrap();
        assert_eq!(e.text, [&bytes[..], b"\n"].concat());
    }

    #[test]
    fn list_merges_duplicate_lines_in_order() {
        let text =
            "# c\nbob:cccccccccccb\n\nalice::cccccccccccd:\r\nbob:\ncarol\nbob:ccccccccccce\n:x\n";
        assert_eq!(
            list(text.as_bytes()),
            [
                ("bob".to_owned(), vec![A.to_owned(), C.to_owned()]),
                ("alice".to_owned(), vec![B.to_owned()]),
                ("carol".to_owned(), vec![]),
            ]
        );
        assert!(list(b"").is_empty());
    }

    #[test]
    fn enroll_then_revoke_round_trips() {
        let base = format!("{NOISE}bob:cccccccccccd\n");
        let e = en(&base, "bob", A);
        let back = revoke(&e.text, "bob", Some(A), false).unwrap();
        assert_eq!(back.text, base.as_bytes());
    }

    #[test]
    fn innermost_unwraps() {
        let e = EditError::InFile {
            path: "/etc/yubikeys".into(),
            error: Box::new(EditError::NoSuchUser { user: "bob".into() }),
        };
        assert!(matches!(e.innermost(), EditError::NoSuchUser { .. }));
        assert_eq!(
            e.to_string(),
            "/etc/yubikeys: user \"bob\" has no line, nothing to revoke"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Lines of other users and every odd shape, never bob's.
        fn other_line() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"# bob:cccccccccccb".to_vec()),
                Just(b"".to_vec()),
                Just(b"alice:  cccc".to_vec()),
                Just(b"carol:cccccccccccb\r".to_vec()),
                Just(b"dave::cccccccccccd:".to_vec()),
                Just(b"bobby:cccccccccccb".to_vec()),
                Just(b"\xff\xfe:x".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40)
                    .prop_filter("not bob's", |l| !belongs_to(l, "bob")
                        && !l.contains(&b'\n')),
            ]
        }

        fn bob_line() -> impl Strategy<Value = Vec<u8>> {
            (
                proptest::sample::subsequence(vec![A, B, C], 0..=3),
                any::<bool>(),
            )
                .prop_map(|(ids, colon)| {
                    let mut l = "bob".to_owned();
                    for id in ids {
                        l.push(':');
                        l.push_str(id);
                    }
                    if colon {
                        l.push(':');
                    }
                    l.into_bytes()
                })
        }

        fn file() -> impl Strategy<Value = (Vec<u8>, Vec<bool>)> {
            (
                proptest::collection::vec(
                    prop_oneof![
                        3 => other_line().prop_map(|l| (l, false)),
                        1 => bob_line().prop_map(|l| (l, true)),
                    ],
                    0..12,
                ),
                any::<bool>(),
            )
                .prop_map(|(lines, final_nl)| {
                    let mut text = Vec::new();
                    let mut is_bob = Vec::new();
                    let n = lines.len();
                    for (i, (l, bob)) in lines.into_iter().enumerate() {
                        text.extend_from_slice(&l);
                        if i + 1 < n || final_nl {
                            text.push(b'\n');
                        }
                        is_bob.push(bob);
                    }
                    (text, is_bob)
                })
        }

        fn others(text: &[u8]) -> Vec<Vec<u8>> {
            split_lines(text)
                .into_iter()
                .filter(|(c, _)| !belongs_to(c, "bob"))
                .map(|(c, _)| c.to_vec())
                .collect()
        }

        fn bob_ids(text: &[u8]) -> Vec<String> {
            let mut ids: Vec<String> = list(text)
                .into_iter()
                .filter(|(u, _)| u == "bob")
                .flat_map(|(_, ids)| ids)
                .collect();
            ids.sort();
            ids.dedup();
            ids
        }

        fn has_line(text: &[u8]) -> bool {
            list(text).iter().any(|(u, _)| u == "bob")
        }

        proptest! {
            #[test]
            fn enroll_adds_exactly_the_id((text, _) in file(), id in prop_oneof![Just(A), Just(B), Just(C)]) {
                let e = enroll(&text, "bob", id).unwrap();
                prop_assert_eq!(others(&e.text), others(&text));
                let mut want = bob_ids(&text);
                want.push(id.to_owned());
                want.sort();
                want.dedup();
                prop_assert_eq!(bob_ids(&e.text), want);
                prop_assert_eq!(e.changed, !bob_ids(&text).contains(&id.to_owned()));
                // Everything before bob's first line is untouched.
                let prefix: usize = split_lines(&text)
                    .iter()
                    .take_while(|(c, _)| !belongs_to(c, "bob"))
                    .map(|(c, n)| c.len() + n.len())
                    .sum();
                prop_assert!(e.text.starts_with(&text[..prefix]));
            }

            #[test]
            fn revoke_removes_exactly_the_id((text, is_bob) in file(), id in prop_oneof![Just(A), Just(B), Just(C)], purge in any::<bool>()) {
                let result = revoke(&text, "bob", Some(id), purge);
                let before = bob_ids(&text);
                if !is_bob.contains(&true) {
                    let ok = matches!(result, Err(EditError::NoSuchUser { .. }));
                    prop_assert!(ok, "{:?}", result);
                    return Ok(());
                }
                if !before.contains(&id.to_owned()) {
                    let ok = matches!(result, Err(EditError::KeyNotEnrolled { .. }));
                    prop_assert!(ok, "{:?}", result);
                    return Ok(());
                }
                let e = result.unwrap();
                prop_assert!(e.changed);
                prop_assert_eq!(others(&e.text), others(&text));
                let want: Vec<String> = before.into_iter().filter(|i| i != id).collect();
                prop_assert_eq!(bob_ids(&e.text), want.clone());
                prop_assert_eq!(has_line(&e.text), !(purge && want.is_empty()));
            }

            #[test]
            fn revoke_all_leaves_one_empty_line_or_none((text, is_bob) in file(), purge in any::<bool>()) {
                prop_assume!(is_bob.contains(&true));
                let e = revoke(&text, "bob", None, purge).unwrap();
                prop_assert_eq!(others(&e.text), others(&text));
                let bob_lines = split_lines(&e.text).into_iter().filter(|(c, _)| belongs_to(c, "bob")).count();
                prop_assert_eq!(bob_lines, usize::from(!purge));
                prop_assert!(bob_ids(&e.text).is_empty());
            }
        }
    }

    mod io {
        use super::*;
        use std::os::unix::fs::symlink;

        fn names(dir: &Path) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
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
            assert!(matches!(e.innermost(), EditError::NoSuchUser { .. }), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
            // A missing file: revoke says no such user and creates nothing.
            let missing = dir.path().join("other");
            let e = rewrite(&missing, |t| revoke(t, "bob", None, false)).unwrap_err();
            assert!(matches!(e.innermost(), EditError::NoSuchUser { .. }), "{e}");
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
            assert!(matches!(e, EditError::Symlink { .. }), "{e}");
            assert!(e.to_string().contains(&link.display().to_string()), "{e}");
            assert_eq!(fs::read(&real).unwrap(), b"bob:cccccccccccd\n");
            // A dangling link is not followed to create its target either.
            let dangling = dir.path().join("dangling");
            symlink(dir.path().join("nowhere"), &dangling).unwrap();
            let e = rewrite(&dangling, |t| enroll(t, "bob", A)).unwrap_err();
            assert!(matches!(e, EditError::Symlink { .. }), "{e}");
            assert!(!dir.path().join("nowhere").exists());
            // A directory.
            let sub = dir.path().join("sub");
            fs::create_dir(&sub).unwrap();
            let e = rewrite(&sub, |t| enroll(t, "bob", A)).unwrap_err();
            assert!(matches!(e, EditError::NotRegularFile { .. }), "{e}");
            assert!(e.to_string().contains("directory"), "{e}");
            // A named pipe (opened without blocking).
            let fifo = dir.path().join("fifo");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let e = rewrite(&fifo, |t| enroll(t, "bob", A)).unwrap_err();
            assert!(matches!(e, EditError::NotRegularFile { .. }), "{e}");
            // A symlinked lock file.
            let path = dir.path().join("keys");
            symlink(&real, dir.path().join("keys.lock")).unwrap();
            let e = rewrite(&path, |t| enroll(t, "bob", A)).unwrap_err();
            assert!(matches!(e, EditError::Symlink { .. }), "{e}");
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
}
