//! The files of an installation, in a temporary directory: keys.json, the
//! AEAD store, the authfile and the configuration, laid out as an
//! operator's are, for a daemon to be started on. No process and no log
//! capture: [`Env`](crate::Env) adds those for the suites; the benchmark
//! and the demo use this alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use ykhsm_core::backend::SoftBackend;
use ykhsm_core::keyhandle::KeyHandleName;
use ykhsm_core::keys_file::KeysFile;
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::store::{AeadStore, WriteMode};
use ykhsm_core::{KeyHandleKey, Nonce, YubiKeyAead};

/// A temporary ykhsm installation's files; removed on drop.
pub struct Installation {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub authfile: PathBuf,
    pub aead_dir: PathBuf,
    pub state_dir: PathBuf,
    pub keys_file: PathBuf,
    /// The configured `syslog_socket` (nothing listens there until the
    /// caller binds it); `None` leaves it out of the configuration, so the
    /// daemon logs to the system's `/dev/log`.
    pub syslog_socket: Option<PathBuf>,
    /// Key handle 1's key, as written to keys.json: what AEADs are sealed
    /// with.
    kh1_key: KeyHandleKey,
    /// The soft backend on keys.json as first written.
    backend: SoftBackend,
}

/// A key enrolled by [`Installation::enroll`]: what its AEAD file holds.
pub struct Enrolled {
    pub nonce: Nonce,
    pub aead: YubiKeyAead,
    /// The AEAD file.
    pub path: PathBuf,
}

impl Installation {
    /// A new directory `/tmp/<prefix>…` with keys.json holding key handle
    /// 1 (`kh1_key`, a hex AES key; mode 0600, as the daemon demands), an
    /// empty AEAD directory and an empty authfile. The configuration is
    /// written by [`Installation::write_config`].
    pub fn new(prefix: &str, kh1_key: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let root = dir.path();
        let keys_file = root.join("keys.json");
        let keys_json = format!(r#"{{"1": "{kh1_key}"}}"#);
        fs::write(&keys_file, &keys_json).unwrap();
        fs::set_permissions(&keys_file, fs::Permissions::from_mode(0o600)).unwrap();
        let aead_dir = root.join("aeads");
        fs::create_dir(&aead_dir).unwrap();
        let backend = SoftBackend::new(
            KeysFile::parse(Path::new("keys.json"), keys_json.as_bytes()).unwrap(),
        );
        let files = Self {
            config_path: root.join("ykhsmd.toml"),
            socket: root.join("run/ykhsmd.sock"),
            authfile: root.join("yubikeys"),
            aead_dir,
            state_dir: root.join("state"),
            keys_file,
            syslog_socket: Some(root.join("syslog.sock")),
            kh1_key: KeyHandleKey::new(hex::decode(kh1_key).unwrap()).unwrap(),
            backend,
            dir,
        };
        files.set_authfile("");
        files
    }

    /// The soft backend on keys.json as [`Installation::new`] wrote it.
    pub fn backend(&self) -> &SoftBackend {
        &self.backend
    }

    /// Seals a YubiKey's secrets into an AEAD file in key-handle directory
    /// `kh` of the store. The AEAD is sealed with key handle 1's key and
    /// records `kh`'s number, so it opens only where that key handle holds
    /// the same key (for `kh` = 1: keys.json, or an HSM holding it).
    pub fn enroll(
        &self,
        kh: &KeyHandleName,
        id: &PublicId,
        secrets: &YubiKeySecrets,
        mode: WriteMode,
    ) -> Enrolled {
        let nonce = Nonce::from_public_id(id).unwrap();
        let aead = YubiKeyAead::seal(&self.kh1_key, kh.value(), &nonce, secrets).unwrap();
        let path = AeadStore::new(&self.aead_dir, vec![kh.clone()])
            .write_v1(kh, id, &nonce, &aead, mode)
            .unwrap();
        Enrolled { nonce, aead, path }
    }

    /// Replaces the authfile atomically (root-owned, mode 0644).
    pub fn set_authfile(&self, text: &str) {
        let tmp = self.dir.path().join("yubikeys.tmp");
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&tmp, &self.authfile).unwrap();
    }

    /// Writes the configuration: these paths, keys.json (the default
    /// backend) or `backend = "yubihsm"` on `device`, then `extra` (TOML
    /// lines).
    pub fn write_config(&self, device: Option<&Path>, extra: &str) {
        let backend = match device {
            Some(device) => format!("backend = \"yubihsm\"\ndevice = {device:?}\n"),
            None => format!("keys_file = {:?}\n", self.keys_file),
        };
        let syslog = match &self.syslog_socket {
            Some(path) => format!("syslog_socket = {path:?}\n"),
            None => String::new(),
        };
        let text = format!(
            "socket = {:?}\nauthfile = {:?}\naead_dir = {:?}\nstate_dir = {:?}\n{backend}{syslog}{extra}",
            self.socket, self.authfile, self.aead_dir, self.state_dir,
        );
        fs::write(&self.config_path, text).unwrap();
    }
}
