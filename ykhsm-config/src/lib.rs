//! The daemon's configuration file (ykhsmd.toml(5), in packaging/man/):
//! TOML, every key optional, unknown keys refused. Parsed into a raw
//! struct, then validated into [`Config`], which has no `Option` left and
//! whose paths are absolute.
//!
//! The file says where keys, AEADs and the authfile are, so whoever can
//! write it decides who logs in: it must be root's and not writable by
//! group or others, and is opened without following a final symbolic link
//! (checked on the open descriptor, as keys.json is).
//!
//! A crate of its own so that ykadmin reads the same file, with the same
//! defaults and checks, without linking the daemon. `ykhsmd::config` is this
//! crate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use ykhsm_core::keyhandle::{KeyHandleError, KeyHandleName};
use ykhsm_core::secure_file::{self, FilePolicy, SecureFileError, SecureFileErrorKind};
use ykhsm_core::store::{AeadStore, V1Nonce};

mod fleet;

pub use fleet::{DEFAULT_TIMEOUT_MS, FleetSettings, MAX_TIMEOUT_MS, Offline};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/ykhsm/ykhsmd.toml";

/// The largest configuration file read (a real one is well under 4 KiB).
pub const MAX_CONFIG_LEN: u64 = 1 << 20;

/// Why the configuration was refused. Every message names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Owned by another user than root, writable by group or others, a
    /// symbolic link, not a regular file, or too large.
    #[error(transparent)]
    Unsafe(SecureFileError),
    /// TOML syntax, a wrong type or an unknown key.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's description (line, column, key).
        message: String,
    },
    /// A value that parses but cannot be used.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A file the configuration names (`fleet.password_file`,
    /// `fleet.ca_file`) is missing, unreadable, or not safe to trust.
    #[error("{}: {key}: {source}", config.display())]
    File {
        /// The configuration file.
        config: PathBuf,
        /// The key that names the file.
        key: &'static str,
        /// What is wrong with the file (it names the file).
        source: SecureFileError,
    },
}

/// Which backend holds the key-handle keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// pyhsm's keys.json.
    Soft,
    /// A YubiHSM 1 on a serial port.
    Yubihsm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    authfile: Option<PathBuf>,
    aead_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    backend: Option<BackendKind>,
    keys_file: Option<PathBuf>,
    key_handles: Option<Vec<String>>,
    device: Option<PathBuf>,
    // Extensions (docs/architecture.md):
    client_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_user: Option<usize>,
    syslog_socket: Option<PathBuf>,
    debug: Option<bool>,
    accept_random_nonce: Option<bool>,
    // Several bastions sharing counters (docs/fleet.md).
    fleet: Option<fleet::RawFleet>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// The listening socket.
    pub socket: PathBuf,
    /// pam_yubico's user → key map.
    pub authfile: PathBuf,
    /// pyhsm's AEAD store.
    pub aead_dir: PathBuf,
    /// Where the counter database lives; the only place the daemon writes.
    pub state_dir: PathBuf,
    /// The backend and its file or device.
    pub backend: BackendConfig,
    /// Key handles to look under, in order, as spelled.
    pub key_handles: Vec<KeyHandleName>,
    /// How long a client may take to send its request.
    pub client_timeout: Duration,
    /// Connections served at once from root (sshd, su, ykadmin).
    pub max_connections: usize,
    /// Connections served at once from each other uid.
    pub max_connections_per_user: usize,
    /// Where syslog is (`/dev/log`).
    pub syslog_socket: PathBuf,
    /// Extra diagnostic lines (never content).
    pub debug: bool,
    /// Read v1 AEAD files whatever nonce they carry (stores made with
    /// pyhsm's `--random-nonce`), not only those whose nonce is the public
    /// id they are filed under. Off by default: with it on, an AEAD is not
    /// bound to its path, and whoever can write the store can make one
    /// key log in as another public id (docs/security.md).
    pub accept_random_nonce: bool,
    /// The `[fleet]` table: the counter store several bastions share.
    /// None: this host's counters are its own.
    pub fleet: Option<FleetSettings>,
}

/// The backend section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// pyhsm's keys.json.
    Soft {
        /// The keys file.
        keys_file: PathBuf,
    },
    /// A YubiHSM 1.
    Yubihsm {
        /// The serial device.
        device: PathBuf,
    },
}

impl Config {
    /// The counter database.
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("counters.sqlite")
    }

    /// The AEAD store under `key_handles`, read as this configuration says
    /// (which v1 nonces are accepted).
    pub fn aead_store(&self, key_handles: Vec<KeyHandleName>) -> AeadStore {
        AeadStore::new(&self.aead_dir, key_handles).with_v1_nonce(if self.accept_random_nonce {
            V1Nonce::Any
        } else {
            V1Nonce::PublicId
        })
    }

    /// Reads and validates a configuration file, which must be root's and
    /// not writable by group or others.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_owned_by(path, 0)
    }

    /// As [`Config::load`], with another required owner (tests that do not
    /// run as root).
    pub fn load_owned_by(path: &Path, owner: u32) -> Result<Self, ConfigError> {
        let bytes = secure_file::read_checked(path, FilePolicy::trusted(owner, MAX_CONFIG_LEN))
            .map_err(|e| match e.kind {
                SecureFileErrorKind::Io { source, .. } => ConfigError::Read {
                    path: e.path,
                    source,
                },
                kind => ConfigError::Unsafe(SecureFileError { path: e.path, kind }),
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("not UTF-8 text (byte {})", e.valid_up_to()),
        })?;
        Self::parse(path, text)
    }

    /// Validates configuration text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let abs = |key: &'static str, v: Option<PathBuf>, default: &str| {
            let p = v.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(invalid(
                    key,
                    format!("{} is not an absolute path", p.display()),
                ))
            }
        };
        let backend = match raw.backend.unwrap_or(BackendKind::Soft) {
            BackendKind::Soft => {
                if raw.device.is_some() {
                    return Err(invalid(
                        "device",
                        "only used with backend = \"yubihsm\"".into(),
                    ));
                }
                BackendConfig::Soft {
                    keys_file: abs("keys_file", raw.keys_file, "/etc/ykhsm/keys.json")?,
                }
            }
            BackendKind::Yubihsm => {
                if raw.keys_file.is_some() {
                    return Err(invalid(
                        "keys_file",
                        "only used with backend = \"soft\"".into(),
                    ));
                }
                BackendConfig::Yubihsm {
                    device: abs("device", raw.device, "/dev/ttyACM0")?,
                }
            }
        };
        let spelled = raw.key_handles.unwrap_or_else(|| vec!["1".to_owned()]);
        if spelled.is_empty() {
            return Err(invalid("key_handles", "the list is empty".into()));
        }
        let mut key_handles = Vec::new();
        for s in &spelled {
            let kh: KeyHandleName = s
                .parse()
                .map_err(|e: KeyHandleError| invalid("key_handles", e.to_string()))?;
            if key_handles
                .iter()
                .any(|k: &KeyHandleName| k.spelled() == kh.spelled())
            {
                return Err(invalid("key_handles", format!("{s:?} is listed twice")));
            }
            key_handles.push(kh);
        }
        let client_timeout_ms = raw.client_timeout_ms.unwrap_or(5000);
        if !(100..=60_000).contains(&client_timeout_ms) {
            return Err(invalid(
                "client_timeout_ms",
                format!("{client_timeout_ms} is outside 100..=60000"),
            ));
        }
        let max_connections = raw.max_connections.unwrap_or(4096);
        if !(1..=65_536).contains(&max_connections) {
            return Err(invalid(
                "max_connections",
                format!("{max_connections} is outside 1..=65536"),
            ));
        }
        let max_connections_per_user = raw.max_connections_per_user.unwrap_or(16);
        if !(1..=4096).contains(&max_connections_per_user) {
            return Err(invalid(
                "max_connections_per_user",
                format!("{max_connections_per_user} is outside 1..=4096"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            socket: abs("socket", raw.socket, "/run/ykhsm/ykhsmd.sock")?,
            authfile: abs("authfile", raw.authfile, "/etc/yubikeys")?,
            aead_dir: abs("aead_dir", raw.aead_dir, "/var/cache/yubikey-ksm/aeads")?,
            state_dir: abs("state_dir", raw.state_dir, "/var/lib/ykhsm")?,
            backend,
            key_handles,
            client_timeout: Duration::from_millis(client_timeout_ms),
            max_connections,
            max_connections_per_user,
            syslog_socket: abs("syslog_socket", raw.syslog_socket, "/dev/log")?,
            debug: raw.debug.unwrap_or(false),
            accept_random_nonce: raw.accept_random_nonce.unwrap_or(false),
            fleet: raw
                .fleet
                .map(|f| FleetSettings::validate(path, f))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ykhsm/ykhsmd.toml"), text)
    }

    #[test]
    fn empty_file_gives_the_interface_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.socket, Path::new("/run/ykhsm/ykhsmd.sock"));
        assert_eq!(c.authfile, Path::new("/etc/yubikeys"));
        assert_eq!(c.aead_dir, Path::new("/var/cache/yubikey-ksm/aeads"));
        assert_eq!(c.database(), Path::new("/var/lib/ykhsm/counters.sqlite"));
        assert_eq!(
            c.backend,
            BackendConfig::Soft {
                keys_file: "/etc/ykhsm/keys.json".into()
            }
        );
        assert_eq!(c.key_handles.len(), 1);
        assert_eq!(c.key_handles[0].spelled(), "1");
    }

    #[test]
    fn unknown_key_is_refused_naming_file_and_key() {
        let e = parse("sockt = \"/x\"").unwrap_err().to_string();
        assert!(
            e.contains("/etc/ykhsm/ykhsmd.toml") && e.contains("sockt"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_bad_values_are_refused() {
        for (text, needle) in [
            ("socket = 5", "socket"),
            ("backend = \"hsm\"", "backend"),
            ("socket = \"relative.sock\"", "absolute"),
            ("key_handles = []", "empty"),
            ("key_handles = [\"1\", \"1\"]", "twice"),
            ("key_handles = [\"0X2000\"]", "0X2000"),
            ("device = \"/dev/ttyACM0\"", "yubihsm"),
            ("client_timeout_ms = 1", "client_timeout_ms"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains("/etc/ykhsm/ykhsmd.toml"), "{text}: {e}");
        }
    }

    #[test]
    fn key_handles_keep_their_spelling_and_order() {
        let c = parse("key_handles = [\"0x2000\", \"1\", \"KSM1\"]").unwrap();
        let s: Vec<&str> = c.key_handles.iter().map(|k| k.spelled()).collect();
        assert_eq!(s, ["0x2000", "1", "KSM1"]);
    }

    #[test]
    fn accept_random_nonce_is_off_unless_switched_on() {
        assert!(!parse("").unwrap().accept_random_nonce);
        assert!(
            parse("accept_random_nonce = true")
                .unwrap()
                .accept_random_nonce
        );
        let e = parse("accept_random_nonce = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("accept_random_nonce"), "{e}");
    }

    /// The conffile the package installs as /etc/ykhsm/ykhsmd.toml.
    const SHIPPED: &str = include_str!("../../packaging/ykhsmd.toml");

    /// The keys a raw table (`RawConfig`, `RawFleet`) accepts, as serde's
    /// derive lists them: asked of the type itself, so a key added to it
    /// is a key this test knows.
    fn accepted_keys<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
        use serde::de::{self, Visitor};
        use serde::forward_to_deserialize_any;

        /// A deserializer that only records the field names a struct asks for.
        struct Fields<'a>(&'a mut Vec<&'static str>);
        impl<'de> de::Deserializer<'de> for Fields<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.extend_from_slice(fields);
                Err(de::Error::custom("fields recorded"))
            }
            forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut keys = Vec::new();
        let _ = T::deserialize(Fields(&mut keys));
        assert!(!keys.is_empty(), "serde listed no fields");
        keys
    }

    /// `key = value` pairs, as documented.
    type Settings = Vec<(String, String)>;

    /// The line of the shipped file that begins the (commented) `[fleet]`
    /// table: the settings after it are the table's.
    const FLEET_HEADER: &str = "# [fleet]";

    /// The shipped file's `# key = value` lines, uncommented: the settings
    /// it documents, each with the value it says is the default (or, for a
    /// key with none, an example); first the top level's, then the
    /// `[fleet]` table's.
    fn documented_settings() -> (Settings, Settings) {
        let (top, fleet) = SHIPPED
            .split_once(&format!("\n{FLEET_HEADER}\n"))
            .expect("the shipped file has a commented [fleet] table");
        let settings = |text: &str| -> Settings {
            text.lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix("# ")?;
                    let (key, value) = rest.split_once(" = ")?;
                    key.bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_')
                        .then(|| (key.to_owned(), value.to_owned()))
                })
                .collect()
        };
        (settings(top), settings(fleet))
    }

    fn text_of(settings: &[(String, String)]) -> String {
        settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }

    /// Issue 13: the conffile as shipped changes nothing.
    #[test]
    fn shipped_config_file_parses_to_exactly_the_defaults() {
        assert_eq!(parse(SHIPPED).unwrap(), parse("").unwrap());
    }

    /// The sorted keys of `settings`, each once.
    fn keys_once(settings: &[(String, String)]) -> Vec<&str> {
        let mut documented: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
        documented.sort_unstable();
        let before = documented.len();
        documented.dedup();
        assert_eq!(before, documented.len(), "a key is documented twice");
        documented
    }

    /// Issue 13: every key the daemon accepts is in the shipped file, once,
    /// with its default; so a new key cannot be left out of it.
    #[test]
    fn shipped_config_file_documents_every_key_with_its_default() {
        let (settings, fleet_settings) = documented_settings();
        let mut documented = keys_once(&settings);
        // The [fleet] table is documented by its header line.
        documented.push("fleet");
        documented.sort_unstable();
        let mut accepted = accepted_keys::<RawConfig>();
        accepted.sort_unstable();
        assert_eq!(
            documented, accepted,
            "packaging/ykhsmd.toml must show every key RawConfig accepts"
        );
        // Every value has the key's type (deny_unknown_fields: every key
        // is one the daemon knows).
        let all = text_of(&settings);
        toml::from_str::<RawConfig>(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        // Each value is the default: for the soft backend (the default)
        // without `device`, and for the YubiHSM without `keys_file`.
        let without = |key: &str, extra: &str| {
            let mut kept: Vec<(String, String)> =
                settings.iter().filter(|(k, _)| k != key).cloned().collect();
            if !extra.is_empty() {
                kept.retain(|(k, _)| k != "backend");
            }
            format!("{extra}{}", text_of(&kept))
        };
        assert_eq!(parse(&without("device", "")).unwrap(), parse("").unwrap());
        let hsm = "backend = \"yubihsm\"\n";
        assert_eq!(
            parse(&without("keys_file", hsm)).unwrap(),
            parse(hsm).unwrap()
        );

        // The [fleet] table: every key it accepts, once; uncommented, the
        // whole table is valid; the keys that have a default show it.
        let mut accepted = accepted_keys::<fleet::RawFleet>();
        accepted.sort_unstable();
        assert_eq!(
            keys_once(&fleet_settings),
            accepted,
            "packaging/ykhsmd.toml must show every key of [fleet]"
        );
        let table = |settings: &[(String, String)]| format!("[fleet]\n{}", text_of(settings));
        let whole = parse(&table(&fleet_settings)).unwrap_or_else(|e| panic!("{e}"));
        let without_defaults: Vec<(String, String)> = fleet_settings
            .iter()
            .filter(|(k, _)| !["timeout_ms", "offline"].contains(&k.as_str()))
            .cloned()
            .collect();
        assert_eq!(whole, parse(&table(&without_defaults)).unwrap());
    }

    /// Issue 12, item 3: the file is read only when it is its owner's and
    /// nobody else may write it, and never through a symbolic link; every
    /// refusal names it.
    #[test]
    fn config_file_writable_by_others_not_the_owners_or_a_link_is_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ykhsmd.toml");
        std::fs::write(&path, "debug = true\n").unwrap();
        let me = std::fs::metadata(&path).unwrap().uid();
        let mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o644);
        assert!(Config::load_owned_by(&path, me).unwrap().debug);
        for bad in [0o664, 0o646, 0o666] {
            mode(bad);
            let e = Config::load_owned_by(&path, me).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Unsafe(SecureFileError {
                        kind: SecureFileErrorKind::Mode { .. },
                        ..
                    })
                ),
                "{bad:o}: {e}"
            );
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        mode(0o600);
        let e = Config::load_owned_by(&path, me + 1).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Unsafe(SecureFileError {
                    kind: SecureFileErrorKind::Owner { .. },
                    ..
                })
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let link = dir.path().join("link.toml");
        symlink(&path, &link).unwrap();
        let e = Config::load_owned_by(&link, me).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Unsafe(SecureFileError {
                    kind: SecureFileErrorKind::Symlink,
                    ..
                })
            ),
            "{e}"
        );
        let e = Config::load_owned_by(&dir.path().join("absent.toml"), me).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("absent.toml"), "{e}");
    }
}
