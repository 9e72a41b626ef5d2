//! The optional `[fleet]` table: several bastions sharing their counters
//! through one PostgreSQL database (the `ykhsm-fleet` crate).
//!
//! ```toml
//! [fleet]
//! url = "postgresql://ykhsm@db1.example/ykhsm"   # or "host=/run/postgresql dbname=ykhsm user=ykhsm"
//! password_file = "/etc/ykhsm/fleet.password"    # root's, mode 0600
//! ca_file = "/etc/ykhsm/fleet-ca.pem"            # TLS, certificate and host name checked
//! timeout_ms = 200
//! offline = "local"                              # or "deny"
//! ```
//!
//! The URL is parsed here by the same parser that connects (tokio-postgres),
//! so what is checked is what is connected to:
//!
//! - it names a user and at least one host, and holds no password (this
//!   file is readable by all; the password goes in `password_file`);
//! - without `ca_file` every host is local: a Unix socket (a host starting
//!   with `/`), `localhost`, or a loopback address (127.0.0.1, ::1). The
//!   password and the counters never cross a network in clear;
//! - with `ca_file` every host is a TCP host with a name to check (TLS over
//!   a Unix socket does not exist in PostgreSQL), and the connection is
//!   TLS with the server's certificate checked against `ca_file` alone and
//!   its name against the host (libpq's `sslmode=verify-full`). `sslmode`
//!   in the URL may only agree with that (`require`, or `disable` without
//!   `ca_file`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::config::{Host, SslMode};
use ykhsm_core::secure_file::{self, FilePolicy};
use zeroize::Zeroizing;

use crate::ConfigError;

/// The default of `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 200;
/// The largest `timeout_ms` accepted.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// The largest password file read.
const MAX_PASSWORD_LEN: u64 = 4096;
/// The largest CA file read.
const MAX_CA_LEN: u64 = 1 << 20;

/// What a login does while the fleet store cannot be reached (or does not
/// answer within `timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offline {
    /// Checked against this host's own counters only: the bastion keeps
    /// working, and an OTP not yet seen by the store could be used once on
    /// each host that is cut off meanwhile.
    #[default]
    Local,
    /// Refused until the store answers again.
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    url: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    timeout_ms: Option<u64>,
    offline: Option<Offline>,
}

/// The `[fleet]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// The configuration file it came from (named in the errors about the
    /// files below).
    pub config: PathBuf,
    /// The libpq connection string, as written: a URI
    /// (`postgresql://ykhsm@db1.example/ykhsm`) or key=value pairs
    /// (`host=/run/postgresql dbname=ykhsm user=ykhsm`). It holds no
    /// password.
    pub url: String,
    /// The file holding the role's password (root's, mode 0600; one line).
    /// None: no password is sent (a Unix socket with peer authentication).
    pub password_file: Option<PathBuf>,
    /// The CA certificates (PEM) the server's certificate must chain to.
    /// Some: TLS, certificate and host name checked. None: no TLS, local
    /// hosts only.
    pub ca_file: Option<PathBuf>,
    /// How long one round trip to the store may take, connecting included.
    pub timeout: Duration,
    /// What logins do while the store is out of reach.
    pub offline: Offline,
}

impl FleetSettings {
    pub(crate) fn validate(config: &Path, raw: RawFleet) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: config.to_path_buf(),
            key,
            message,
        };
        let abs = |key: &'static str, p: Option<PathBuf>| match p {
            Some(p) if !p.is_absolute() => Err(invalid(
                key,
                format!("{} is not an absolute path", p.display()),
            )),
            p => Ok(p),
        };
        let url = raw.url.ok_or_else(|| {
            invalid(
                "fleet.url",
                "missing: the [fleet] table needs the store's connection string, e.g. \
                 url = \"postgresql://ykhsm@db1.example/ykhsm\""
                    .into(),
            )
        })?;
        let password_file = abs("fleet.password_file", raw.password_file)?;
        let ca_file = abs("fleet.ca_file", raw.ca_file)?;
        check_url(&url, ca_file.is_some()).map_err(|m| invalid("fleet.url", m))?;
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(
                "fleet.timeout_ms",
                format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}"),
            ));
        }
        Ok(Self {
            config: config.to_path_buf(),
            url,
            password_file,
            ca_file,
            timeout: Duration::from_millis(timeout_ms),
            offline: raw.offline.unwrap_or_default(),
        })
    }

    /// The connection settings the URL gives (no password: see
    /// [`FleetSettings::read_password`]), `sslmode` as `ca_file` says:
    /// `require` with it, `disable` without.
    pub fn connect_config(&self) -> tokio_postgres::Config {
        // Validated in `validate`, which parsed the same string.
        let mut c = tokio_postgres::Config::from_str(&self.url).unwrap_or_default();
        c.ssl_mode(if self.ca_file.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
        c
    }

    /// Where the store is, for messages: `user@host:port/dbname`, hosts
    /// joined by `,`; never a password.
    pub fn describe(&self) -> String {
        describe(&self.connect_config())
    }

    /// The password from `password_file` (None when there is none): the
    /// file must be root's with no permission bit for group or others, is
    /// not read through a symbolic link, and holds one line (a final
    /// newline is not part of the password).
    pub fn read_password(&self) -> Result<Option<Zeroizing<String>>, ConfigError> {
        self.read_password_owned_by(0)
    }

    /// As [`FleetSettings::read_password`], with another required owner
    /// (tests that do not run as root).
    pub fn read_password_owned_by(
        &self,
        owner: u32,
    ) -> Result<Option<Zeroizing<String>>, ConfigError> {
        const KEY: &str = "fleet.password_file";
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let bytes = secure_file::read_checked(path, FilePolicy::secret(owner, MAX_PASSWORD_LEN))
            .map_err(|source| ConfigError::File {
                config: self.config.clone(),
                key: KEY,
                source,
            })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: self.config.clone(),
            key: KEY,
            message: format!("{}: {message}", path.display()),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid("is not UTF-8 text".into()))?;
        let line = text
            .strip_suffix('\n')
            .map_or(text, |l| l.strip_suffix('\r').unwrap_or(l));
        if line.is_empty() {
            return Err(invalid("is empty".into()));
        }
        if line.contains(['\n', '\r', '\0']) {
            return Err(invalid(
                "holds more than one line (only the password, on one line)".into(),
            ));
        }
        Ok(Some(Zeroizing::new(line.to_owned())))
    }

    /// The contents of `ca_file` (None when there is none): root's, not
    /// writable by group or others, not read through a symbolic link.
    pub fn read_ca(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        self.read_ca_owned_by(0)
    }

    /// As [`FleetSettings::read_ca`], with another required owner.
    pub fn read_ca_owned_by(&self, owner: u32) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let bytes = secure_file::read_checked(path, FilePolicy::trusted(owner, MAX_CA_LEN))
            .map_err(|source| ConfigError::File {
                config: self.config.clone(),
                key: "fleet.ca_file",
                source,
            })?;
        Ok(Some(bytes.to_vec()))
    }
}

/// `user@host:port/dbname`, for messages.
fn describe(c: &tokio_postgres::Config) -> String {
    let ports = c.get_ports();
    let hosts: Vec<String> = (0..c.get_hosts().len().max(c.get_hostaddrs().len()))
        .map(|i| {
            let host = match (c.get_hosts().get(i), c.get_hostaddrs().get(i)) {
                (Some(Host::Tcp(h)), _) if h.contains(':') => format!("[{h}]"),
                (Some(Host::Tcp(h)), _) => h.clone(),
                (Some(Host::Unix(p)), _) => p.display().to_string(),
                (None, Some(IpAddr::V6(a))) => format!("[{a}]"),
                (None, Some(a)) => a.to_string(),
                (None, None) => String::new(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = c.get_user().unwrap_or("");
    let db = c.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

/// Whether a TCP host is this machine: `localhost` or a loopback address.
fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// The checks of the module's documentation; the message says what is
/// wrong and what to do, and never repeats the URL (it could hold a
/// password).
fn check_url(url: &str, tls: bool) -> Result<(), String> {
    let c = tokio_postgres::Config::from_str(url).map_err(|e| {
        let why = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
        format!("not a libpq connection string ({e}{why})")
    })?;
    if c.get_password().is_some() {
        return Err(
            "holds a password; this file is readable by every local user. \
                    Remove it from the URL and put it in password_file (root's, mode 0600)"
                .into(),
        );
    }
    if c.get_user().is_none_or(str::is_empty) {
        return Err("names no user (postgresql://USER@HOST/DB, or user=USER)".into());
    }
    let (hosts, addrs) = (c.get_hosts(), c.get_hostaddrs());
    if hosts.is_empty() && addrs.is_empty() {
        return Err(
            "names no host (postgresql://USER@HOST/DB, or host=/run/postgresql \
                    for the local socket)"
                .into(),
        );
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(format!(
            "names {} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        ));
    }
    let n = hosts.len().max(addrs.len());
    if c.get_ports().len() > 1 && c.get_ports().len() != n {
        return Err(format!("names {n} hosts but {} ports", c.get_ports().len()));
    }
    match (c.get_ssl_mode(), tls) {
        (SslMode::Disable, true) => {
            return Err("says sslmode=disable, but ca_file is set (TLS); remove one".into());
        }
        (SslMode::Require, false) => {
            return Err(
                "says sslmode=require, but without ca_file there is no CA to check \
                        the server's certificate against; set ca_file"
                    .into(),
            );
        }
        _ => {}
    }
    for i in 0..n {
        let host = hosts.get(i);
        let addr = addrs.get(i);
        if tls {
            match host {
                Some(Host::Tcp(_)) => {}
                Some(Host::Unix(p)) => {
                    return Err(format!(
                        "host {} is a Unix socket, where PostgreSQL has no TLS; with ca_file \
                         name the server by its TCP host name (or remove ca_file)",
                        p.display()
                    ));
                }
                None => {
                    return Err(
                        "with ca_file every host needs a name to check the server's \
                                certificate against (host=NAME, not only hostaddr=)"
                            .into(),
                    );
                }
            }
            continue;
        }
        // Without TLS: where the connection goes (hostaddr if given, else
        // host) must be this machine.
        let local = match (addr, host) {
            (Some(a), _) => a.is_loopback(),
            (None, Some(Host::Unix(_))) => true,
            (None, Some(Host::Tcp(h))) => is_local(h),
            (None, None) => false,
        };
        if !local {
            let shown = match (addr, host) {
                (Some(a), _) => a.to_string(),
                (None, Some(Host::Tcp(h))) => h.clone(),
                _ => String::new(),
            };
            return Err(format!(
                "host {shown} is not this machine (a Unix socket, localhost, 127.0.0.1 or ::1): \
                 without fleet.ca_file the password and the counters would cross the network \
                 in clear. Set fleet.ca_file (TLS, the server's certificate and name checked)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    const CONFIG: &str = "/etc/ykhsm/ykhsmd.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new(CONFIG), text)
    }

    fn fleet(text: &str) -> Result<FleetSettings, ConfigError> {
        parse(&format!("[fleet]\n{text}")).map(|c| c.fleet.expect("a [fleet] table"))
    }

    fn refused(text: &str, key: &str, needle: &str) -> String {
        let e = fleet(text).unwrap_err().to_string();
        assert!(e.contains(CONFIG), "{text}: {e}");
        assert!(e.contains(key), "{text}: {e}");
        assert!(e.contains(needle), "{text}: {e}");
        e
    }

    #[test]
    fn no_table_no_fleet() {
        assert_eq!(parse("").unwrap().fleet, None);
    }

    #[test]
    fn defaults_and_both_url_forms() {
        let f = fleet("url = \"postgresql://ykhsm@localhost/ykhsm\"").unwrap();
        assert_eq!(f.timeout, Duration::from_millis(200));
        assert_eq!(f.offline, Offline::Local);
        assert_eq!(f.password_file, None);
        assert_eq!(f.ca_file, None);
        assert_eq!(f.describe(), "ykhsm@localhost:5432/ykhsm");
        let f = fleet("url = \"host=/run/postgresql dbname=ykhsm user=ykhsm\"").unwrap();
        assert_eq!(f.describe(), "ykhsm@/run/postgresql:5432/ykhsm");
        assert_eq!(f.connect_config().get_ssl_mode(), SslMode::Disable);
        for local in [
            "postgresql://ykhsm@127.0.0.1:5433/ykhsm",
            "postgresql://ykhsm@[::1]/ykhsm",
            "host=::1 user=ykhsm",
            "host=db1.example hostaddr=127.0.0.1 user=ykhsm",
            "postgresql://ykhsm@%2Frun%2Fpostgresql/ykhsm",
            "postgresql://ykhsm@localhost/ykhsm?sslmode=disable",
        ] {
            fleet(&format!("url = {local:?}")).unwrap_or_else(|e| panic!("{local}: {e}"));
        }
        let f = fleet(
            "url = \"postgresql://ykhsm@db1.example/ykhsm\"\n\
             ca_file = \"/etc/ykhsm/ca.pem\"\npassword_file = \"/etc/ykhsm/fleet.password\"\n\
             timeout_ms = 1500\noffline = \"deny\"",
        )
        .unwrap();
        assert_eq!(f.timeout, Duration::from_millis(1500));
        assert_eq!(f.offline, Offline::Deny);
        assert_eq!(f.connect_config().get_ssl_mode(), SslMode::Require);
        assert_eq!(f.describe(), "ykhsm@db1.example:5432/ykhsm");
    }

    #[test]
    fn url_is_required_and_must_parse() {
        refused("", "fleet.url", "missing");
        refused("timeout_ms = 100", "fleet.url", "missing");
        refused(
            "url = \"postgresql://ykhsm@localhost/ykhsm?frobnicate=1\"",
            "fleet.url",
            "frobnicate",
        );
        refused(
            "url = \"host=/run/postgresql\"",
            "fleet.url",
            "names no user",
        );
        refused(
            "url = \"user=ykhsm dbname=ykhsm\"",
            "fleet.url",
            "names no host",
        );
        refused("url = 5", "url", "string");
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_not_repeated() {
        for url in [
            "postgresql://ykhsm:S3cretPw@localhost/ykhsm",
            "host=/run/postgresql user=ykhsm password=S3cretPw",
            "postgresql://ykhsm@localhost/ykhsm?password=S3cretPw",
        ] {
            let e = refused(&format!("url = {url:?}"), "fleet.url", "password_file");
            assert!(!e.contains("S3cretPw"), "{e}");
        }
    }

    #[test]
    fn a_remote_host_needs_ca_file() {
        for url in [
            "postgresql://ykhsm@db1.example/ykhsm",
            "postgresql://ykhsm@192.0.2.7/ykhsm",
            "host=localhost,db2.example user=ykhsm",
            "host=localhost hostaddr=192.0.2.7 user=ykhsm",
        ] {
            let e = refused(&format!("url = {url:?}"), "fleet.url", "fleet.ca_file");
            assert!(e.contains("not this machine"), "{e}");
        }
        // With ca_file: fine.
        fleet("url = \"postgresql://ykhsm@db1.example/ykhsm\"\nca_file = \"/etc/ykhsm/ca.pem\"")
            .unwrap();
    }

    #[test]
    fn ca_file_needs_tcp_host_names_and_agreeing_sslmode() {
        let ca = "ca_file = \"/etc/ykhsm/ca.pem\"";
        refused(
            &format!("url = \"host=/run/postgresql user=ykhsm\"\n{ca}"),
            "fleet.url",
            "Unix socket",
        );
        refused(
            &format!("url = \"hostaddr=192.0.2.7 user=ykhsm\"\n{ca}"),
            "fleet.url",
            "name",
        );
        refused(
            &format!("url = \"postgresql://ykhsm@db1.example/ykhsm?sslmode=disable\"\n{ca}"),
            "fleet.url",
            "sslmode=disable",
        );
        refused(
            "url = \"postgresql://ykhsm@localhost/ykhsm?sslmode=require\"",
            "fleet.url",
            "sslmode=require",
        );
        fleet(&format!(
            "url = \"postgresql://ykhsm@db1.example/ykhsm?sslmode=require\"\n{ca}"
        ))
        .unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let url = "url = \"host=/run/postgresql user=ykhsm\"";
        refused(
            &format!("{url}\ntimeout_ms = 0"),
            "fleet.timeout_ms",
            "outside",
        );
        refused(
            &format!("{url}\ntimeout_ms = 60001"),
            "fleet.timeout_ms",
            "outside",
        );
        refused(
            &format!("{url}\ntimeout_ms = \"fast\""),
            "timeout_ms",
            "expected u64",
        );
        refused(&format!("{url}\noffline = \"allow\""), "offline", "local");
        refused(
            &format!("{url}\npassword_file = \"pw\""),
            "fleet.password_file",
            "absolute",
        );
        refused(
            &format!("{url}\nca_file = \"ca.pem\""),
            "fleet.ca_file",
            "absolute",
        );
        refused(
            &format!("{url}\npasword_file = \"/x\""),
            "pasword_file",
            "unknown",
        );
        let e = parse("fleet = 1").unwrap_err().to_string();
        assert!(e.contains("fleet") && e.contains(CONFIG), "{e}");
    }

    mod files {
        use super::*;
        use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

        fn settings(dir: &Path) -> FleetSettings {
            fleet(&format!(
                "url = \"postgresql://ykhsm@db1.example/ykhsm\"\n\
                 password_file = \"{}/pw\"\nca_file = \"{}/ca.pem\"",
                dir.display(),
                dir.display()
            ))
            .unwrap()
        }

        fn write(path: &Path, text: &str, mode: u32) {
            std::fs::write(path, text).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        #[test]
        fn password_file_is_read_as_one_line() {
            let dir = tempfile::tempdir().unwrap();
            let s = settings(dir.path());
            let pw = dir.path().join("pw");
            let me = std::fs::metadata(dir.path()).unwrap().uid();
            for (text, want) in [
                ("hunter2\n", "hunter2"),
                ("hunter2", "hunter2"),
                ("hunter2\r\n", "hunter2"),
                (" spaced out \n", " spaced out "),
            ] {
                write(&pw, text, 0o600);
                assert_eq!(
                    s.read_password_owned_by(me)
                        .unwrap()
                        .as_deref()
                        .map(String::as_str),
                    Some(want)
                );
            }
            let none = fleet("url = \"host=/run/postgresql user=ykhsm\"").unwrap();
            assert!(none.read_password_owned_by(me).unwrap().is_none());
            assert!(none.read_ca_owned_by(me).unwrap().is_none());
        }

        #[test]
        fn password_file_must_be_the_owners_alone_and_one_line() {
            let dir = tempfile::tempdir().unwrap();
            let s = settings(dir.path());
            let pw = dir.path().join("pw");
            let me = std::fs::metadata(dir.path()).unwrap().uid();
            let shown = pw.display().to_string();
            let check = |e: ConfigError, needle: &str| {
                let e = e.to_string();
                for n in [CONFIG, "fleet.password_file", shown.as_str(), needle] {
                    assert!(e.contains(n), "{needle}: {e}");
                }
                assert!(!e.contains("hunter2"), "{e}");
            };
            check(s.read_password_owned_by(me).unwrap_err(), "No such file");
            for mode in [0o640, 0o604, 0o644] {
                write(&pw, "hunter2\n", mode);
                check(s.read_password_owned_by(me).unwrap_err(), "mode");
            }
            write(&pw, "hunter2\n", 0o600);
            check(s.read_password_owned_by(me + 1).unwrap_err(), "owned by");
            write(&pw, "", 0o600);
            check(s.read_password_owned_by(me).unwrap_err(), "empty");
            write(&pw, "\n", 0o600);
            check(s.read_password_owned_by(me).unwrap_err(), "empty");
            write(&pw, "hunter2\nhunter3\n", 0o600);
            check(s.read_password_owned_by(me).unwrap_err(), "one line");
            std::fs::write(&pw, b"\xff\xfe\n").unwrap();
            check(s.read_password_owned_by(me).unwrap_err(), "UTF-8");
            std::fs::remove_file(&pw).unwrap();
            let real = dir.path().join("real");
            write(&real, "hunter2\n", 0o600);
            symlink(&real, &pw).unwrap();
            check(s.read_password_owned_by(me).unwrap_err(), "symbolic link");
        }

        #[test]
        fn ca_file_must_not_be_writable_by_others() {
            let dir = tempfile::tempdir().unwrap();
            let s = settings(dir.path());
            let ca = dir.path().join("ca.pem");
            let me = std::fs::metadata(dir.path()).unwrap().uid();
            write(&ca, "-----BEGIN CERTIFICATE-----\n", 0o644);
            assert_eq!(
                s.read_ca_owned_by(me).unwrap().unwrap(),
                b"-----BEGIN CERTIFICATE-----\n"
            );
            write(&ca, "x", 0o664);
            let e = s.read_ca_owned_by(me).unwrap_err().to_string();
            for n in [CONFIG, "fleet.ca_file", "mode"] {
                assert!(e.contains(n), "{e}");
            }
            write(&ca, "x", 0o644);
            let e = s.read_ca_owned_by(me + 1).unwrap_err().to_string();
            assert!(e.contains("fleet.ca_file") && e.contains("owned by"), "{e}");
        }
    }
}
