//! The module's arguments, as pam_ykhsm(8) (`packaging/man/pam_ykhsm.8`)
//! documents them.
//!
//! Unknown words are reported and ignored, as pam_yubico does, so a PAM line
//! edited from pam_yubico's keeps working; pam_yubico's own options are
//! named as such. A known option with a bad value is an error: the module
//! then refuses the login (fail closed).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The socket the daemon listens on.
pub(crate) const DEFAULT_SOCKET: &str = "/run/ykhsm/ykhsmd.sock";
/// How long the module waits for the daemon, per request.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// pam_yubico's default public-id length.
pub(crate) const DEFAULT_TOKEN_ID_LENGTH: usize = 12;
/// The longest public id (pam_yubico's `MAX_TOKEN_ID_LEN`).
pub(crate) const MAX_TOKEN_ID_LENGTH: usize = 16;
/// The longest timeout accepted, in seconds.
pub(crate) const MAX_TIMEOUT_SECS: u64 = 300;

/// Where the OTP comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstPass {
    /// Prompt for it.
    No,
    /// From the password already on the stack; prompt if there is none.
    Try,
    /// From the password already on the stack; fail if there is none.
    Use,
}

/// The parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `socket=PATH`.
    pub socket: PathBuf,
    /// `debug`.
    pub debug: bool,
    /// `nullok`.
    pub nullok: bool,
    /// `use_first_pass` / `try_first_pass` (the last one given wins).
    pub first_pass: FirstPass,
    /// `verbose_otp`.
    pub verbose_otp: bool,
    /// `timeout=SECONDS`.
    pub timeout: Duration,
    /// `token_id_length=N`.
    pub token_id_length: usize,
    /// Words that were ignored, with why: for the log.
    pub ignored: Vec<Ignored>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            debug: false,
            nullok: false,
            first_pass: FirstPass::No,
            verbose_otp: false,
            timeout: DEFAULT_TIMEOUT,
            token_id_length: DEFAULT_TOKEN_ID_LENGTH,
            ignored: Vec::new(),
        }
    }
}

/// An argument that was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The option's name (never its value: `key=` may hold a secret).
    pub name: String,
    /// Whether pam_yubico knows it.
    pub pam_yubico: bool,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pam_yubico {
            write!(
                f,
                "{}: a pam_yubico option, not used by pam_ykhsm",
                self.name
            )
        } else {
            write!(f, "{}: unknown option", self.name)
        }
    }
}

/// A known option with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The option.
    pub name: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// pam_yubico's own options (its pam_yubico(8) page), flags and `key=`
/// forms.
const PAM_YUBICO: &[&str] = &[
    "mode",
    "authfile",
    "id",
    "key",
    "urllist",
    "url",
    "capath",
    "cainfo",
    "proxy",
    "debug_file",
    "alwaysok",
    "always_prompt",
    "chalresp_path",
    "ldap_uri",
    "ldapserver",
    "ldapdn",
    "user_attr",
    "yubi_attr",
    "yubi_attr_prefix",
    "ldap_filter",
    "ldap_bind_user",
    "ldap_bind_password",
    "ldap_bind_as_user",
    "ldap_starttls",
    "ldap_cacertfile",
    "ldap_clientcertfile",
    "ldap_clientkeyfile",
    "ldap_connection_timeout",
    "mysql_server",
    "mysql_port",
    "mysql_user",
    "mysql_password",
    "mysql_database",
];

/// Parses the words of the PAM line after the module's path.
pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Args, ArgError> {
    let mut args = Args::default();
    for word in words {
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, None),
        };
        match (name, value) {
            ("debug", None) => args.debug = true,
            ("nullok", None) => args.nullok = true,
            ("verbose_otp", None) => args.verbose_otp = true,
            ("use_first_pass", None) => args.first_pass = FirstPass::Use,
            ("try_first_pass", None) => args.first_pass = FirstPass::Try,
            ("socket", Some(v)) => {
                if !v.starts_with('/') {
                    return Err(ArgError {
                        name: "socket",
                        reason: format!("{v:?} is not an absolute path"),
                    });
                }
                args.socket = PathBuf::from(v);
            }
            ("timeout", Some(v)) => args.timeout = timeout(v)?,
            ("token_id_length", Some(v)) => args.token_id_length = token_id_length(v)?,
            ("debug" | "nullok" | "verbose_otp" | "use_first_pass" | "try_first_pass", Some(_)) => {
                return Err(ArgError {
                    name: flag_name(name),
                    reason: "takes no value".into(),
                });
            }
            ("socket" | "timeout" | "token_id_length", None) => {
                return Err(ArgError {
                    name: value_name(name),
                    reason: "needs a value (name=value)".into(),
                });
            }
            _ => args.ignored.push(Ignored {
                name: printable(name),
                pam_yubico: PAM_YUBICO.contains(&name),
            }),
        }
    }
    Ok(args)
}

fn flag_name(name: &str) -> &'static str {
    match name {
        "debug" => "debug",
        "nullok" => "nullok",
        "verbose_otp" => "verbose_otp",
        "use_first_pass" => "use_first_pass",
        _ => "try_first_pass",
    }
}

fn value_name(name: &str) -> &'static str {
    match name {
        "socket" => "socket",
        "timeout" => "timeout",
        _ => "token_id_length",
    }
}

/// An option name fit for a log line: printable ASCII, at most 40 chars.
fn printable(name: &str) -> String {
    name.chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

fn timeout(v: &str) -> Result<Duration, ArgError> {
    let bad = |reason: String| ArgError {
        name: "timeout",
        reason,
    };
    let secs: u64 = v
        .parse()
        .map_err(|_| bad(format!("{v:?} is not a whole number of seconds")))?;
    if secs == 0 || secs > MAX_TIMEOUT_SECS {
        return Err(bad(format!(
            "{secs} is out of range (1 to {MAX_TIMEOUT_SECS} seconds)"
        )));
    }
    Ok(Duration::from_secs(secs))
}

fn token_id_length(v: &str) -> Result<usize, ArgError> {
    let bad = |reason: String| ArgError {
        name: "token_id_length",
        reason,
    };
    let n: usize = v
        .parse()
        .map_err(|_| bad(format!("{v:?} is not a number")))?;
    if n > MAX_TOKEN_ID_LENGTH || !n.is_multiple_of(2) {
        return Err(bad(format!(
            "{n}: a public id has an even length from 0 to {MAX_TOKEN_ID_LENGTH}"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_give_the_defaults() {
        assert_eq!(parse([]).unwrap(), Args::default());
        let d = Args::default();
        assert_eq!(d.socket, PathBuf::from("/run/ykhsm/ykhsmd.sock"));
        assert_eq!(d.timeout, Duration::from_secs(10));
        assert_eq!(d.token_id_length, 12);
    }

    #[test]
    fn every_argument_of_the_man_page_is_read() {
        let a = parse([
            "socket=/tmp/x.sock",
            "debug",
            "nullok",
            "use_first_pass",
            "verbose_otp",
            "timeout=3",
            "token_id_length=16",
        ])
        .unwrap();
        assert_eq!(a.socket, PathBuf::from("/tmp/x.sock"));
        assert!(a.debug && a.nullok && a.verbose_otp);
        assert_eq!(a.first_pass, FirstPass::Use);
        assert_eq!(a.timeout, Duration::from_secs(3));
        assert_eq!(a.token_id_length, 16);
        assert!(a.ignored.is_empty());
        assert_eq!(
            parse(["use_first_pass", "try_first_pass"])
                .unwrap()
                .first_pass,
            FirstPass::Try,
            "the last one wins, as in pam_yubico"
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "timeout=abc",
            "timeout=0",
            "timeout=-1",
            "timeout=1.5",
            "timeout=301",
            "timeout",
            "token_id_length=x",
            "token_id_length=17",
            "token_id_length=11",
            "socket=relative.sock",
            "socket",
            "nullok=yes",
        ] {
            let e = parse([bad]).unwrap_err();
            assert!(bad.starts_with(e.name), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_and_pam_yubico_words_are_ignored_without_their_values() {
        let a = parse(["id=16", "key=c2VjcmV0", "alwaysok", "frobnicate", "x\ny=1"]).unwrap();
        let names: Vec<(&str, bool)> = a
            .ignored
            .iter()
            .map(|i| (i.name.as_str(), i.pam_yubico))
            .collect();
        assert_eq!(
            names,
            [
                ("id", true),
                ("key", true),
                ("alwaysok", true),
                ("frobnicate", false),
                ("x?y", false)
            ]
        );
        for i in &a.ignored {
            assert!(!i.to_string().contains("c2VjcmV0"));
        }
        // alwaysok is never honoured: ignoring it fails closed.
        assert_eq!(a.nullok, Args::default().nullok);
    }
}
