//! The user → key map, `/etc/yubikeys`, in pam_yubico's format (yubico-pam's
//! `util.c` `check_user_token`): `user:id1:id2:…`, `#` comments in column 0,
//! empty fields skipped, several lines per user allowed. Each line is read
//! by `ykhsm_core::authfile`, the parse ykadmin's editor uses too; this
//! module ties the names to the system's accounts and keeps the result.
//!
//! A file written for pam_yubico works unchanged. Unlike pam_yubico, the
//! file must be a root-owned regular file that group and others cannot
//! write (`ykhsm_core::secure_file`, as every file the daemon trusts), and a
//! line that cannot be trusted fails closed (`BACKEND_ERROR`) for every
//! user it names — as written, as meant, and as pam_yubico would read it
//! (`ykhsm_core::authfile::ParsedLine::names`) — instead of being
//! half-read. The file is re-read whenever it changes (device, inode, size,
//! mtime or ctime differ), so an edit takes effect at the next login
//! without a restart.
//!
//! **User names are the system's.** pam_yubico compares the PAM user
//! string with the line's name; with NSS backends that alias names (sssd's
//! case-insensitive names, `alice@corp` for `alice`) that made `ALICE` "a
//! user without keys", skipped under `nullok`. Here a name is the account
//! NSS gives it (`getpwnam`'s `pw_name`): each line's name is resolved when
//! the file is parsed (at start, when it changes, on SIGHUP), and lines are
//! found by their name as written and by that account, so a line written
//! under an alias counts for the user, and several lines that are one user
//! add up, as pam_yubico's duplicate lines do. So NSS changes to the names
//! *in the file* take effect when the file is next parsed (a `SIGHUP` forces
//! it); the name a login gives is resolved at the login (see
//! [`Parsed::account_of`]). A name NSS does not know is looked up as
//! written; with no line it is [`Lookup::UnknownUser`], never "without
//! keys". A user name with a byte-order mark, white space, a control or a
//! zero-width character fails closed for the name as written and for the
//! name with those characters removed (the user the operator meant).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ykhsm_core::authfile::{self, Line, LineError, MAX_AUTHFILE_LEN};
use ykhsm_core::otp::PublicId;
use ykhsm_core::secure_file::{self, FilePolicy, FileVersion, Op, SETTLED, SecureFileError};

use crate::log;
/// After NSS failed to resolve a name of the file, how long the parse is
/// kept before the next use resolves the names again (a transient sssd
/// outage heals by itself; until then users with no line of their own get
/// `BACKEND_ERROR`, see [`Lookup::Unresolved`]).
pub const NSS_RETRY: Duration = Duration::from_secs(10);

pub use ykhsm_core::account::{Account, Resolver};

/// A line that is not trusted, or worth a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number.
    pub line: usize,
    /// The user the line names, if one can be read.
    pub user: Option<String>,
    /// What is wrong.
    pub reason: Reason,
    /// Whether the line fails closed (`true`) or is only a warning.
    pub fails_closed: bool,
}

/// What is wrong with a line, or worth a warning. Displayed for the log:
/// user names through [`log::user`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The line cannot be trusted (`ykhsm_core::authfile`'s reading).
    Line {
        /// Why.
        error: LineError,
        /// The name without the characters nobody sees, failed closed too.
        meant: Option<String>,
        /// Users pam_yubico reads from the line, failed closed too.
        pam_yubico: Vec<String>,
    },
    /// The line ends in CR LF; the CR was ignored.
    CrLf,
    /// A name of the file that NSS resolves to another name.
    Alias {
        /// The name as written.
        name: String,
        /// The account's name (`pw_name`).
        account: String,
    },
    /// NSS could not resolve a name of the file.
    NssFailed {
        /// The name.
        name: String,
        /// What NSS said.
        why: String,
        /// How many of the file's names are left untied, this one included.
        untied: usize,
        /// How many names the file has.
        total: usize,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line {
                error,
                meant,
                pam_yubico,
            } => {
                write!(f, "{error}")?;
                if let Some(meant) = meant {
                    write!(f, "; it fails closed, also for {}", log::user(meant))?;
                }
                if let Some((first, rest)) = pam_yubico.split_first() {
                    /// Names shown; a line of megabytes can hold thousands.
                    const SHOWN: usize = 3;
                    write!(f, "; pam_yubico reads it as a line of {}", log::user(first))?;
                    for name in rest.iter().take(SHOWN - 1) {
                        write!(f, ", {}", log::user(name))?;
                    }
                    if rest.len() >= SHOWN {
                        write!(f, " and {} more", rest.len() + 1 - SHOWN)?;
                    }
                    f.write_str(", so it fails closed for them too")?;
                }
                Ok(())
            }
            Self::CrLf => f.write_str(
                "the line ends in CR LF; the CR was ignored (pam_yubico would not match the last key)",
            ),
            Self::Alias { name, account } => write!(
                f,
                "the user name {} is the system's user {} (NSS): its keys count for {} under every name",
                log::user(name),
                log::user(account),
                log::user(account)
            ),
            Self::NssFailed {
                name,
                why,
                untied,
                total,
            } => write!(
                f,
                "the system's user database (NSS) could not resolve the user name {}: {why}; {untied} of the file's {total} names are not tied to a user, and until they are (at a use {}s later, or SIGHUP) names without a line of their own get BACKEND_ERROR",
                log::user(name),
                NSS_RETRY.as_secs()
            ),
        }
    }
}

/// One user's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Public ids from every line of the user, in file order.
    pub keys: Vec<PublicId>,
    /// A line naming this user could not be trusted: the user gets
    /// `BACKEND_ERROR` until it is fixed.
    pub broken: bool,
    /// The first line naming the user (1-based).
    pub line: usize,
}

impl Entry {
    /// Adds another line's keys and state (a duplicate line, or a line of
    /// another name of the same account).
    fn absorb(&mut self, other: &Entry) {
        self.broken |= other.broken;
        for k in &other.keys {
            if !self.keys.contains(k) {
                self.keys.push(k.clone());
            }
        }
        if self.line == 0 || (other.line != 0 && other.line < self.line) {
            self.line = other.line;
        }
    }
}

/// A parsed authfile.
#[derive(Debug, Default)]
pub struct Parsed {
    /// By the name as written (and, for a name with invisible characters,
    /// also by its visible part).
    users: HashMap<String, Entry>,
    /// What NSS said about each name of `users` when the file was parsed.
    accounts: HashMap<String, Account>,
    /// By account (`pw_name`): every name of `users` NSS resolved to it.
    by_account: HashMap<String, Entry>,
    /// NSS failed for some name of the file: a user may have a line that
    /// could not be tied to them.
    nss_failed: bool,
    /// Lines that failed or drew a warning, in line order.
    pub problems: Vec<Problem>,
}

/// What the authfile says about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The system knows the user and no line names it under any of its
    /// names: a user without keys (`NO_KEYS_FOR_USER`).
    NoLine,
    /// The system does not know the name and no line names it
    /// (`UNKNOWN_USER`): not a user without keys.
    UnknownUser,
    /// No line names it as written, and who it is could not be learned: NSS
    /// failed for the name now, or for a name of the file when it was
    /// parsed (that line may be this user's). Fails closed.
    Unresolved,
    /// A line of the user could not be trusted.
    Broken,
    /// The user's keys (possibly none: an empty line matches nothing).
    Keys(Vec<PublicId>),
}

impl Parsed {
    /// Parses the file's bytes, without asking NSS: every name is looked
    /// up as written (see [`Parsed::parse_resolving`]).
    pub fn parse(bytes: &[u8]) -> Self {
        let mut p = Self::default();
        for line in authfile::parse(bytes) {
            let number = line.raw.number;
            match &line.line {
                Line::Comment => {}
                Line::Keys { user, ids, crlf } => {
                    if *crlf {
                        p.problems.push(Problem {
                            line: number,
                            user: Some((*user).to_owned()),
                            reason: Reason::CrLf,
                            fails_closed: false,
                        });
                    }
                    let keys = &mut p.user_entry(user, number).keys;
                    keys.extend(ids.iter().map(|(_, id)| id.clone()));
                }
                Line::Broken { error, .. } => {
                    let names = line.names();
                    for name in names.all() {
                        p.user_entry(name, number).broken = true;
                    }
                    p.problems.push(Problem {
                        line: number,
                        user: names.all().next().map(str::to_owned),
                        reason: Reason::Line {
                            error: error.clone(),
                            meant: names.meant.clone(),
                            pam_yubico: names.pam_yubico.iter().map(|n| (*n).to_owned()).collect(),
                        },
                        fails_closed: true,
                    });
                }
            }
        }
        p
    }

    /// Parses the file's bytes and resolves every user name in it through
    /// `resolve` (NSS), once per name.
    pub fn parse_resolving(bytes: &[u8], resolve: Resolver) -> Self {
        let mut p = Self::parse(bytes);
        p.resolve(resolve);
        p
    }

    /// Ties each name of the file to its account, and reports names that
    /// are another name of an account, and the first name NSS could not
    /// resolve. After a failure NSS is not asked again in this pass (a
    /// backend that is down could cost its timeout per name); the names
    /// left count as failed too.
    fn resolve(&mut self, resolve: Resolver) {
        let mut names: Vec<(&String, &Entry)> = self.users.iter().collect();
        names.sort_by_key(|(n, e)| (e.line, n.as_str()));
        let total = names.len();
        let mut notes = Vec::new();
        for (i, (name, entry)) in names.into_iter().enumerate() {
            let account = if self.nss_failed {
                Account::Failed("not asked: NSS failed for an earlier name".to_owned())
            } else {
                resolve(name)
            };
            match &account {
                Account::Known {
                    name: canonical, ..
                } => {
                    self.by_account
                        .entry(canonical.clone())
                        .or_default()
                        .absorb(entry);
                    if canonical != name {
                        notes.push(Problem {
                            line: entry.line,
                            user: Some(name.clone()),
                            reason: Reason::Alias {
                                name: name.clone(),
                                account: canonical.clone(),
                            },
                            fails_closed: false,
                        });
                    }
                }
                Account::Unknown => {}
                Account::Failed(_) if self.nss_failed => {}
                Account::Failed(why) => {
                    self.nss_failed = true;
                    notes.push(Problem {
                        line: entry.line,
                        user: Some(name.clone()),
                        reason: Reason::NssFailed {
                            name: name.clone(),
                            why: why.clone(),
                            untied: total - i,
                            total,
                        },
                        fails_closed: false,
                    });
                }
            }
            self.accounts.insert(name.clone(), account);
        }
        self.problems.extend(notes);
        self.problems.sort_by_key(|p| p.line);
    }

    /// Whether NSS failed for some name of the file when it was parsed.
    pub fn nss_failed(&self) -> bool {
        self.nss_failed
    }

    /// What NSS said about `user` when the file was parsed, if a line
    /// names it as written and NSS answered: a login under that name needs
    /// no NSS call (the file's names follow NSS when the file is parsed).
    pub fn account_of(&self, user: &str) -> Option<&Account> {
        self.accounts
            .get(user)
            .filter(|a| !matches!(a, Account::Failed(_)))
    }

    fn user_entry(&mut self, name: &str, line: usize) -> &mut Entry {
        let e = self.users.entry(name.to_owned()).or_default();
        if e.line == 0 {
            e.line = line;
        }
        e
    }

    /// What the file says about `user`, who NSS says is `account`: the
    /// lines naming `user` as written, and, when NSS knows the user, the
    /// lines of every name of the file that is the same account (and of
    /// the account's own name). A name NSS does not know is looked up as
    /// written only.
    pub fn lookup(&self, user: &str, account: &Account) -> Lookup {
        let mut found: Vec<&Entry> = Vec::new();
        if let Account::Known { name, .. } = account {
            found.extend(self.by_account.get(name));
            found.extend(self.users.get(name));
        }
        found.extend(self.users.get(user));
        if found.is_empty() {
            return match account {
                Account::Known { .. } if self.nss_failed => Lookup::Unresolved,
                Account::Known { .. } => Lookup::NoLine,
                Account::Unknown => Lookup::UnknownUser,
                Account::Failed(_) => Lookup::Unresolved,
            };
        }
        let mut all = Entry::default();
        for e in found {
            all.absorb(e);
        }
        if all.broken {
            Lookup::Broken
        } else {
            Lookup::Keys(all.keys)
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
    resolve: Resolver,
    cache: Mutex<Option<Cached>>,
}

/// The last read: the version it was read at, its bytes, their parse.
#[derive(Debug)]
struct Cached {
    version: FileVersion,
    bytes: Vec<u8>,
    parsed: Arc<Parsed>,
    /// When the names were resolved.
    resolved: Instant,
}

impl Cached {
    /// NSS failed for a name when the file was parsed, long enough ago to
    /// ask again.
    fn retry_due(&self) -> bool {
        self.parsed.nss_failed() && self.resolved.elapsed() >= NSS_RETRY
    }
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
        Self::with_resolver(path, owner, Account::lookup)
    }

    /// As [`Authfile::new`], resolving the file's user names with
    /// `resolve` instead of NSS.
    pub fn with_resolver(path: PathBuf, owner: u32, resolve: Resolver) -> Self {
        Self {
            path,
            owner,
            resolve,
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
    /// re-parsed, and its user names resolved through NSS, only when it
    /// changed (or, after NSS failed for one of its names, at a use
    /// [`NSS_RETRY`] later).
    pub fn current(&self) -> Result<Current, SecureFileError> {
        let meta = fs::symlink_metadata(&self.path)
            .map_err(|source| SecureFileError::io(&self.path, Op::Stat, source))?;
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
            && !c.retry_due()
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
            && !c.retry_due()
        {
            // Read again, unchanged: nothing new to report.
            c.version = version;
            return Ok(Current {
                parsed: Arc::clone(&c.parsed),
                reread: false,
            });
        }
        // Under the lock: one thread asks NSS, the others wait for its
        // answer rather than asking too.
        let parsed = Arc::new(Parsed::parse_resolving(&bytes, self.resolve));
        *cache = Some(Cached {
            version,
            bytes: bytes.to_vec(),
            parsed: Arc::clone(&parsed),
            resolved: Instant::now(),
        });
        Ok(Current {
            parsed,
            reread: true,
        })
    }

    /// Forgets the cached parse (SIGHUP): the next use re-reads the file
    /// and resolves its user names again (how NSS changes to the names in
    /// the file are picked up without an edit).
    pub fn invalidate(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ykhsm_core::authfile::MAX_LINE_LEN;

    fn ids(v: &[&str]) -> Vec<PublicId> {
        v.iter().map(|s| PublicId::parse(s).unwrap()).collect()
    }

    fn known(name: &str) -> Account {
        Account::Known {
            name: name.to_owned(),
            uid: 2000,
        }
    }

    /// NSS as sssd with case-insensitive names and the default domain
    /// `corp`: alice, bob and carol exist; `ldap-down` cannot be resolved.
    fn sssd(name: &str) -> Account {
        let lower = name.to_lowercase();
        let short = lower.strip_suffix("@corp").unwrap_or(&lower);
        match short {
            "alice" | "bob" | "carol" => known(short),
            "ldap-down" => Account::Failed("Connection refused".into()),
            _ => Account::Unknown,
        }
    }

    #[test]
    fn every_name_of_a_user_finds_the_keys_of_every_line_of_that_user() {
        let p = Parsed::parse_resolving(
            b"ALICE:cccccccccccb\nalice@corp:cccccccccccd\nalice:ccccccccccce\nbob:cccccccccccf\n",
            sssd,
        );
        let all = ids(&["cccccccccccb", "cccccccccccd", "ccccccccccce"]);
        for name in ["alice", "ALICE", "Alice@Corp", "alice@corp"] {
            let keys = p.lookup(name, &sssd(name));
            assert_eq!(keys, Lookup::Keys(all.clone()), "{name}");
        }
        assert_eq!(
            p.lookup("BOB", &sssd("BOB")),
            Lookup::Keys(ids(&["cccccccccccf"]))
        );
        assert_eq!(p.lookup("carol", &sssd("carol")), Lookup::NoLine);
        assert_eq!(p.lookup("CAROL", &sssd("CAROL")), Lookup::NoLine);
        assert_eq!(p.lookup("zed", &sssd("zed")), Lookup::UnknownUser);
        // The names written as aliases are reported, as warnings.
        let notes: Vec<(usize, bool)> = p
            .problems
            .iter()
            .map(|x| (x.line, x.fails_closed))
            .collect();
        assert_eq!(notes, [(1, false), (2, false)]);
        assert_eq!(p.account_of("ALICE"), Some(&known("alice")));
        assert_eq!(p.account_of("carol"), None);
    }

    #[test]
    fn a_name_nss_does_not_know_is_looked_up_as_written() {
        let p = Parsed::parse_resolving(b"svc-x:cccccccccccb\n", sssd);
        assert_eq!(
            p.lookup("svc-x", &sssd("svc-x")),
            Lookup::Keys(ids(&["cccccccccccb"]))
        );
        assert_eq!(p.lookup("SVC-X", &sssd("SVC-X")), Lookup::UnknownUser);
    }

    #[test]
    fn a_broken_line_under_an_alias_fails_the_user_closed() {
        let p = Parsed::parse_resolving(b"alice:cccccccccccb\nALICE:not-modhex\n", sssd);
        assert_eq!(p.lookup("alice", &sssd("alice")), Lookup::Broken);
        assert_eq!(p.lookup("alice@corp", &sssd("alice@corp")), Lookup::Broken);
    }

    #[test]
    fn invisible_characters_fail_closed_for_the_name_meant() {
        let p = Parsed::parse_resolving(
            "\u{feff}alice:cccccccccccb\nbob\u{200b}:cccccccccccd\ncarol\u{2060}:cccccccccccd\ndave\u{1}:cccccccccccd\neve\u{85}:cccccccccccd\nfred\u{7f}:cccccccccccd\n"
                .as_bytes(),
            sssd,
        );
        for name in [
            "alice",
            "ALICE",
            "\u{feff}alice",
            "bob",
            "bob@corp",
            "carol",
        ] {
            assert_eq!(p.lookup(name, &sssd(name)), Lookup::Broken, "{name:?}");
        }
        for name in ["dave", "eve", "fred"] {
            assert_eq!(p.lookup(name, &Account::Unknown), Lookup::Broken, "{name}");
        }
        let lines: Vec<(usize, bool)> = p
            .problems
            .iter()
            .map(|x| (x.line, x.fails_closed))
            .collect();
        assert_eq!(
            lines,
            [
                (1, true),
                (2, true),
                (3, true),
                (4, true),
                (5, true),
                (6, true)
            ]
        );
        assert!(
            p.problems[0]
                .reason
                .to_string()
                .contains("U+FEFF at byte 0"),
            "{:?}",
            p.problems[0]
        );
        assert!(
            p.problems[0].reason.to_string().contains("also for alice"),
            "{:?}",
            p.problems[0]
        );
    }

    #[test]
    fn when_nss_fails_no_known_user_is_without_keys() {
        let p = Parsed::parse_resolving(b"alice:cccccccccccb\nldap-down:cccccccccccd\n", sssd);
        assert!(p.nss_failed());
        // carol might be ldap-down's user: not "without keys".
        assert_eq!(p.lookup("carol", &sssd("carol")), Lookup::Unresolved);
        // A name on a line as written still has its keys.
        assert_eq!(
            p.lookup("alice", &sssd("alice")),
            Lookup::Keys(ids(&["cccccccccccb"]))
        );
        // NSS failing for the name asked about: its own line, or nothing.
        let down = Account::Failed("timeout".into());
        assert_eq!(
            p.lookup("alice", &down),
            Lookup::Keys(ids(&["cccccccccccb"]))
        );
        assert_eq!(p.lookup("ALICE", &down), Lookup::Unresolved);
        assert_eq!(p.account_of("ldap-down"), None);
        assert!(p.problems.iter().any(|x| x.line == 2 && !x.fails_closed));
    }

    #[test]
    fn after_one_nss_failure_the_other_names_are_not_asked() {
        let p = Parsed::parse_resolving(
            b"ldap-down:cccccccccccb\nALICE:cccccccccccd\nbob:cccccccccccf\n",
            sssd,
        );
        assert!(p.nss_failed());
        // ALICE was not tied to alice: alice is not "without keys", and
        // ALICE's own line still counts as written.
        assert_eq!(p.lookup("alice", &sssd("alice")), Lookup::Unresolved);
        assert_eq!(
            p.lookup("ALICE", &sssd("ALICE")),
            Lookup::Keys(ids(&["cccccccccccd"]))
        );
        assert_eq!(p.account_of("bob"), None);
        // One report, for the first name.
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert!(
            p.problems[0]
                .reason
                .to_string()
                .contains("3 of the file's 3 names"),
            "{:?}",
            p.problems[0]
        );
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
        let authfile = Authfile::with_resolver(path.clone(), uid, sssd);
        let first = authfile.current().unwrap();
        assert!(first.reread);
        assert!(
            first.parsed.lookup("alice", &Account::Unknown) == Lookup::Keys(ids(&["ccccccdbjrgf"]))
        );
        let again = authfile.current().unwrap();
        assert!(!again.reread, "unchanged bytes are nothing new");
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"bobby:ccccccdbjrgf\n").unwrap();
        drop(f);
        let now = authfile.current().unwrap();
        assert!(now.reread);
        assert_eq!(
            now.parsed.lookup("alice", &Account::Unknown),
            Lookup::UnknownUser
        );
        assert!(matches!(
            now.parsed.lookup("bobby", &Account::Unknown),
            Lookup::Keys(_)
        ));
    }

    #[test]
    fn pam_yubico_example_reads_as_pam_yubico_does() {
        let p = Parsed::parse(
            b"# comment\nalice:ccccccbchvth:vvincredible\nbob:cccccccfhcbe:ccccccbchvth:\nalice:cccccccccccc\n",
        );
        assert_eq!(
            p.lookup("alice", &Account::Unknown),
            Lookup::Keys(ids(&["ccccccbchvth", "vvincredible", "cccccccccccc"]))
        );
        assert_eq!(
            p.lookup("bob", &Account::Unknown),
            Lookup::Keys(ids(&["cccccccfhcbe", "ccccccbchvth"]))
        );
        assert_eq!(p.lookup("carol", &known("carol")), Lookup::NoLine);
        // Exact and case-sensitive where NSS knows no other name.
        assert_eq!(p.lookup("Alice", &Account::Unknown), Lookup::UnknownUser);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn empty_user_line_means_no_valid_key() {
        let p = Parsed::parse(b"bob:\ncarol\ndave::\n");
        for u in ["bob", "carol", "dave"] {
            assert_eq!(p.lookup(u, &Account::Unknown), Lookup::Keys(vec![]), "{u}");
        }
    }

    #[test]
    fn malformed_line_fails_closed_for_its_user_only() {
        let p = Parsed::parse(b"alice:cccccccccccb\nbob:not-modhex!\nbob:cccccccccccd\n:cccccccccccc\ncarol :cccccccccccb\n");
        assert_eq!(
            p.lookup("alice", &Account::Unknown),
            Lookup::Keys(ids(&["cccccccccccb"]))
        );
        assert_eq!(p.lookup("bob", &Account::Unknown), Lookup::Broken);
        assert_eq!(p.lookup("carol", &Account::Unknown), Lookup::Broken);
        let lines: Vec<(usize, bool)> = p
            .problems
            .iter()
            .map(|x| (x.line, x.fails_closed))
            .collect();
        assert_eq!(lines, [(2, true), (4, true), (5, true)]);
    }

    #[test]
    fn a_line_pam_yubico_reads_as_a_users_fails_that_user_closed() {
        let p = Parsed::parse(b"alice:cccccccccccb\n:bob:cccccccccccd\n");
        assert_eq!(p.lookup("bob", &Account::Unknown), Lookup::Broken);
        assert_eq!(
            p.lookup("alice", &Account::Unknown),
            Lookup::Keys(ids(&["cccccccccccb"]))
        );
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].user.as_deref(), Some("bob"));
        let reason = p.problems[0].reason.to_string();
        assert!(
            reason.starts_with(
                "the line has no user name before ':'; pam_yubico reads it as a line of bob"
            ),
            "{reason}"
        );
        // A line of many pieces names a few of them.
        let piece = |head: &str| format!("{head}{}", "x".repeat(MAX_LINE_LEN - head.len()));
        let mut text = piece("eve:");
        for i in 0..10 {
            text.push_str(&piece(&format!("u{i}:")));
        }
        let p = Parsed::parse(text.as_bytes());
        assert_eq!(p.lookup("u9", &Account::Unknown), Lookup::Broken);
        let reason = p.problems[0].reason.to_string();
        assert!(
            reason.ends_with("a line of u0, u1, u2 and 7 more, so it fails closed for them too"),
            "{reason}"
        );
    }

    #[test]
    fn crlf_is_a_warning_and_the_key_still_works() {
        let p = Parsed::parse(b"alice:cccccccccccb\r\n");
        assert_eq!(
            p.lookup("alice", &Account::Unknown),
            Lookup::Keys(ids(&["cccccccccccb"]))
        );
        assert_eq!(p.problems.len(), 1);
        assert!(!p.problems[0].fails_closed);
    }

    #[test]
    fn overlong_line_fails_closed() {
        let mut text = b"eve:".to_vec();
        text.extend(std::iter::repeat_n(b'c', 2000));
        let p = Parsed::parse(&text);
        assert_eq!(p.lookup("eve", &Account::Unknown), Lookup::Broken);
    }
}
