//! Who a user name is: the system's user database (NSS, `getpwnam_r`),
//! asked the same way by ykhsmd (at a login, and for each name of the
//! authfile) and by ykadmin (which must edit every line the daemon counts
//! for a user, including lines written under an alias such as `ALICE` or
//! `alice@corp` that sssd resolves to `alice`).

use nix::errno::Errno;

/// What the system's user database (NSS) says about a user name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// A user: its canonical name (`pw_name`, e.g. `alice` for `ALICE` with
    /// sssd's case-insensitive names) and uid.
    Known {
        /// `pw_name`.
        name: String,
        /// `pw_uid`.
        uid: u32,
    },
    /// NSS has no such user.
    Unknown,
    /// NSS could not answer (sssd unreachable, …): why.
    Failed(String),
}

impl Account {
    /// Asks NSS (`getpwnam_r`, which may block: sssd, LDAP). "Not found"
    /// is `Ok(None)`, or one of the errors getpwnam_r(3) lists for it
    /// (`ENOENT`, `ESRCH`, `EBADF`, `EPERM`: nss_wrapper, some modules);
    /// anything else is [`Account::Failed`].
    pub fn lookup(name: &str) -> Self {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Self::Known {
                name: u.name,
                uid: u.uid.as_raw(),
            },
            Ok(None) | Err(Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM) => {
                Self::Unknown
            }
            Err(e) => Self::Failed(e.desc().to_owned()),
        }
    }
}

/// How names are resolved: [`Account::lookup`] in the programs, a table
/// in unit tests.
pub type Resolver = fn(&str) -> Account;
