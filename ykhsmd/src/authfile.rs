//! The user → key map, `/etc/yubikeys`, in pam_yubico's format
//! (pam-yubico-compat.md §1): `user:id1:id2:…`, `#` comments in column 0,
//! empty fields skipped, several lines per user allowed.
//!
//! A file written for pam_yubico works unchanged. Unlike pam_yubico, the
//! file must be a root-owned regular file that group and others cannot
//! write, and a line that cannot be trusted fails closed for the user it
//! names (`BACKEND_ERROR`) instead of being half-read. The file is re-read
//! whenever it changes (device, inode, size, mtime or ctime differ), so an
//! edit takes effect at the next login without a restart.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use ykhsm_core::otp::PublicId;
use ykhsm_core::secure_file::{self, FilePolicy, FileVersion, SETTLED, SecureFileError};

/// The largest authfile read.
pub const MAX_AUTHFILE_LEN: u64 = 16 << 20;
/// pam_yubico reads lines into 1024 bytes: longer lines are cut there, so a
/// longer line is refused here rather than misread.
pub const MAX_LINE_LEN: usize = 1023;

/// Why the authfile cannot be used at all.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuthfileError {
    /// Missing, unreadable, not regular, wrong owner, writable by others.
    #[error(transparent)]
    File(#[from] SecureFileError),
}

/// A line that is not trusted, or worth a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number.
    pub line: usize,
    /// The user the line names, if one can be read.
    pub user: Option<String>,
    /// What is wrong.
    pub reason: String,
    /// Whether the line fails closed (`true`) or is only a warning.
    pub fails_closed: bool,
}

/// One user's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Public ids from every line of the user, in file order.
    pub keys: Vec<PublicId>,
    /// A line naming this user could not be trusted: the user gets
    /// `BACKEND_ERROR` until it is fixed.
    pub broken: bool,
}

/// A parsed authfile.
#[derive(Debug, Default)]
pub struct Parsed {
    users: HashMap<String, Entry>,
    /// Lines that failed or drew a warning, in order.
    pub problems: Vec<Problem>,
}

/// What the authfile says about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// No line for the user.
    NoLine,
    /// A line of the user could not be trusted.
    Broken,
    /// The user's keys (possibly none: an empty line matches nothing).
    Keys(&'a [PublicId]),
}

impl Parsed {
    /// Parses the file's bytes.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut p = Self::default();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            p.parse_line(i + 1, raw);
        }
        p
    }

    fn problem(&mut self, line: usize, user: Option<&str>, reason: &str, fails_closed: bool) {
        let user = user
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        if fails_closed && let Some(u) = &user {
            self.users.entry(u.clone()).or_default().broken = true;
        }
        self.problems.push(Problem {
            line,
            user,
            reason: reason.to_owned(),
            fails_closed,
        });
    }

    fn parse_line(&mut self, line: usize, raw: &[u8]) {
        if raw.is_empty() || raw[0] == b'#' {
            return;
        }
        let (raw, crlf) = match raw.strip_suffix(b"\r") {
            Some(r) => (r, true),
            None => (raw, false),
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            let user = raw
                .split(|&b| b == b':')
                .next()
                .and_then(|u| std::str::from_utf8(u).ok());
            self.problem(line, user, "the line is not valid UTF-8", true);
            return;
        };
        let mut fields = text.split(':');
        let user = fields.next().unwrap_or("");
        if raw.len() + 1 > MAX_LINE_LEN {
            self.problem(
                line,
                Some(user),
                "the line is longer than pam_yubico reads (1023 bytes)",
                true,
            );
            return;
        }
        if user.is_empty() {
            self.problem(line, None, "the line has no user name before ':'", true);
            return;
        }
        if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(
                line,
                Some(user),
                "the user name contains white space or a control character",
                true,
            );
            return;
        }
        if crlf {
            self.problem(
                line,
                Some(user),
                "the line ends in CR LF; the CR was ignored (pam_yubico would not match the last key)",
                false,
            );
        }
        let mut keys = Vec::new();
        for field in fields.filter(|f| !f.is_empty()) {
            match PublicId::parse(field) {
                Ok(id) if !id.is_empty() => keys.push(id),
                Ok(_) => {}
                Err(e) => {
                    let reason = format!("a key is not a public id: {e}");
                    self.problem(line, Some(user), &reason, true);
                    return;
                }
            }
        }
        self.users
            .entry(user.to_owned())
            .or_default()
            .keys
            .extend(keys);
    }

    /// What the file says about `user` (exact, case-sensitive match).
    pub fn lookup(&self, user: &str) -> Lookup<'_> {
        match self.users.get(user) {
            None => Lookup::NoLine,
            Some(e) if e.broken => Lookup::Broken,
            Some(e) => Lookup::Keys(&e.keys),
        }
    }

    /// Every user with a line, sorted.
    pub fn users(&self) -> Vec<(&str, &Entry)> {
        let mut v: Vec<(&str, &Entry)> = self.users.iter().map(|(k, v)| (k.as_str(), v)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// The authfile, re-read when it changes, checked on every use.
#[derive(Debug)]
pub struct Authfile {
    path: PathBuf,
    owner: u32,
    cache: Mutex<Option<Cached>>,
}

/// The last read: the version it was read at, its bytes, their parse.
#[derive(Debug)]
struct Cached {
    version: FileVersion,
    bytes: Vec<u8>,
    parsed: Arc<Parsed>,
}

/// The result of [`Authfile::current`].
#[derive(Debug)]
pub struct Current {
    /// The parsed file.
    pub parsed: Arc<Parsed>,
    /// Whether it was (re)read just now: its problems are new to the log.
    pub reread: bool,
}

impl Authfile {
    /// The authfile at `path`, which must be owned by `owner` (0 in
    /// production).
    pub fn new(path: PathBuf, owner: u32) -> Self {
        Self {
            path,
            owner,
            cache: Mutex::new(None),
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn policy(&self) -> FilePolicy {
        FilePolicy::trusted(self.owner, MAX_AUTHFILE_LEN)
    }

    /// The file as it is now: owner, type and mode are checked at every
    /// call (a file made group-writable stops working at once); it is
    /// re-parsed only when it changed.
    pub fn current(&self) -> Result<Current, AuthfileError> {
        let meta = fs::symlink_metadata(&self.path).map_err(|source| SecureFileError::Io {
            path: self.path.clone(),
            source,
        })?;
        // The checks read_checked makes on the open file, here also for the
        // cached case where nothing is opened.
        secure_file::check_metadata(&self.path, &meta, self.policy())?;
        let version = FileVersion::of(&meta);
        let lock = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // The same settled version: the same contents. A file changed in
        // the last moments is read again each time (see FileVersion).
        if let Some(c) = lock().as_ref()
            && c.version == version
            && version.settled(SETTLED)
        {
            return Ok(Current {
                parsed: Arc::clone(&c.parsed),
                reread: false,
            });
        }
        let bytes = secure_file::read_checked(&self.path, self.policy())?;
        let mut cache = lock();
        if let Some(c) = cache.as_mut()
            && *c.bytes == **bytes
        {
            // Read again, unchanged: nothing new to report.
            c.version = version;
            return Ok(Current {
                parsed: Arc::clone(&c.parsed),
                reread: false,
            });
        }
        let parsed = Arc::new(Parsed::parse(&bytes));
        *cache = Some(Cached {
            version,
            bytes: bytes.to_vec(),
            parsed: Arc::clone(&parsed),
        });
        Ok(Current {
            parsed,
            reread: true,
        })
    }

    /// Forgets the cached parse (SIGHUP): the next use re-reads the file.
    pub fn invalidate(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<PublicId> {
        v.iter().map(|s| PublicId::parse(s).unwrap()).collect()
    }

    /// A revocation written in place, to the same size, moments after the
    /// last read (so size, inode and coarse times may all be unchanged) is
    /// seen by the next use; the same bytes read again report nothing new.
    #[test]
    fn in_place_rewrite_of_the_same_size_is_seen_at_once() {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yubikeys");
        fs::write(&path, "alice:ccccccdbjrgf\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let authfile = Authfile::new(path.clone(), uid);
        let first = authfile.current().unwrap();
        assert!(first.reread);
        assert!(
            matches!(first.parsed.lookup("alice"), Lookup::Keys(k) if k == ids(&["ccccccdbjrgf"]))
        );
        let again = authfile.current().unwrap();
        assert!(!again.reread, "unchanged bytes are nothing new");
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"bobby:ccccccdbjrgf\n").unwrap();
        drop(f);
        let now = authfile.current().unwrap();
        assert!(now.reread);
        assert!(matches!(now.parsed.lookup("alice"), Lookup::NoLine));
        assert!(matches!(now.parsed.lookup("bobby"), Lookup::Keys(_)));
    }

    #[test]
    fn pam_yubico_example_reads_as_pam_yubico_does() {
        let p = Parsed::parse(
            b"# comment\nalice:ccccccbchvth:vvincredible\nbob:cccccccfhcbe:ccccccbchvth:\nalice:cccccccccccc\n",
        );
        assert_eq!(
            p.lookup("alice"),
            Lookup::Keys(&ids(&["ccccccbchvth", "vvincredible", "cccccccccccc"]))
        );
        assert_eq!(
            p.lookup("bob"),
            Lookup::Keys(&ids(&["cccccccfhcbe", "ccccccbchvth"]))
        );
        assert_eq!(p.lookup("carol"), Lookup::NoLine);
        assert_eq!(p.lookup("Alice"), Lookup::NoLine);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn empty_user_line_means_no_valid_key() {
        let p = Parsed::parse(b"bob:\ncarol\ndave::\n");
        for u in ["bob", "carol", "dave"] {
            assert_eq!(p.lookup(u), Lookup::Keys(&[]), "{u}");
        }
    }

    #[test]
    fn malformed_line_fails_closed_for_its_user_only() {
        let p = Parsed::parse(b"alice:cccccccccccb\nbob:not-modhex!\nbob:cccccccccccd\n:cccccccccccc\ncarol :cccccccccccb\n");
        assert_eq!(p.lookup("alice"), Lookup::Keys(&ids(&["cccccccccccb"])));
        assert_eq!(p.lookup("bob"), Lookup::Broken);
        assert_eq!(p.lookup("carol"), Lookup::Broken);
        let lines: Vec<(usize, bool)> = p
            .problems
            .iter()
            .map(|x| (x.line, x.fails_closed))
            .collect();
        assert_eq!(lines, [(2, true), (4, true), (5, true)]);
    }

    #[test]
    fn crlf_is_a_warning_and_the_key_still_works() {
        let p = Parsed::parse(b"alice:cccccccccccb\r\n");
        assert_eq!(p.lookup("alice"), Lookup::Keys(&ids(&["cccccccccccb"])));
        assert_eq!(p.problems.len(), 1);
        assert!(!p.problems[0].fails_closed);
    }

    #[test]
    fn overlong_line_fails_closed() {
        let mut text = b"eve:".to_vec();
        text.extend(std::iter::repeat_n(b'c', 2000));
        let p = Parsed::parse(&text);
        assert_eq!(p.lookup("eve"), Lookup::Broken);
    }
}
