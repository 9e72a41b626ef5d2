//! `ykadmin generate`: new YubiKey secrets from the OS's random source,
//! sealed into AEADs by the daemon's backend, and the command lines that
//! program a YubiKey with them written to a file created 0600 — the one
//! place an AES key appears in plain text, because the key must be
//! programmed with it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use ykhsm_core::keyhandle::KeyHandleName;
use ykhsm_core::otp::PublicId;
use ykhsm_core::store::{AeadStore, WriteMode};
use ykhsm_core::{Nonce, YubiKeyAead, modhex, serial};
use ykhsm_proto::{Request, Response, ServerUid, Zeroizing, call};

/// How the public ids are chosen.
#[derive(Debug, Clone)]
pub enum Ids {
    /// From serial numbers, in the `ykman --serial-public-id` form.
    Serial(u32),
    /// A modhex prefix, then a running number to 12 characters.
    Prefix(String),
}

/// Why nothing (more) could be generated.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The prefix or serial cannot give valid ids.
    #[error("{0}")]
    Ids(String),
    /// The output file.
    #[error("{}: {source}", path.display())]
    Out {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The OS random source.
    #[error("/dev/urandom: {0}")]
    Random(io::Error),
    /// The daemon.
    #[error("ykhsmd at {}: {message}", socket.display())]
    Daemon {
        /// Its socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing the AEAD.
    #[error("{0}")]
    Store(#[from] ykhsm_core::store::StoreError),
}

/// What was made.
#[derive(Debug)]
pub struct Generated {
    /// The public ids, in order.
    pub public_ids: Vec<String>,
    /// The AEAD files written.
    pub files: Vec<PathBuf>,
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, GenerateError> {
    let mut b = Zeroizing::new([0u8; N]);
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b[..]))
        .map_err(GenerateError::Random)?;
    Ok(b)
}

/// The public ids to make.
fn ids(
    how: &Ids,
    count: u32,
    store: &AeadStore,
    kh: &KeyHandleName,
) -> Result<Vec<String>, GenerateError> {
    match how {
        Ids::Serial(first) => (0..count)
            .map(|i| {
                first
                    .checked_add(i)
                    .map(serial::public_id_ykman)
                    .ok_or_else(|| GenerateError::Ids("the serial numbers run past 2^32".into()))
            })
            .collect(),
        Ids::Prefix(prefix) => {
            if prefix.len() % 2 != 0 || prefix.len() > 10 || modhex::decode(prefix).is_err() {
                return Err(GenerateError::Ids(format!(
                    "--prefix {prefix:?}: modhex, an even number of characters, at most 10"
                )));
            }
            let digits = (12 - prefix.len()) / 2;
            let mut out = Vec::new();
            let mut n: u64 = 1;
            while out.len() < count as usize {
                let bytes = n.to_be_bytes();
                let Some(tail) = bytes.get(8 - digits..) else {
                    return Err(GenerateError::Ids(
                        "no room for a number after the prefix".into(),
                    ));
                };
                if digits < 8 && n >> (8 * digits) != 0 {
                    return Err(GenerateError::Ids(format!(
                        "the prefix {prefix} has no free ids left"
                    )));
                }
                let id = format!("{prefix}{}", modhex::encode(tail));
                let parsed = PublicId::parse(&id).map_err(|e| GenerateError::Ids(e.to_string()))?;
                if !store.path_for(kh, &parsed).exists() {
                    out.push(id);
                }
                n += 1;
            }
            Ok(out)
        }
    }
}

/// Generates `count` keys under key handle `kh`, writes their AEADs and
/// the programming lines to `out` (created 0600; refused if it exists).
pub fn generate(
    socket: &Path,
    store: &AeadStore,
    kh: &KeyHandleName,
    how: &Ids,
    count: u32,
    out: &Path,
) -> Result<Generated, GenerateError> {
    let ids = ids(how, count, store, kh)?;
    let out_err = |source| GenerateError::Out {
        path: out.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(out_err)?;
    file.write_all(
        b"# ykadmin generate: program each YubiKey with ONE of the two lines below it, then\n\
          # shred this file (it holds the keys' AES keys). Slot 1 is the short touch.\n",
    )
    .map_err(out_err)?;
    let mut made = Generated {
        public_ids: Vec::new(),
        files: Vec::new(),
    };
    for id in ids {
        let public_id = PublicId::parse(&id).map_err(|e| GenerateError::Ids(e.to_string()))?;
        let key = random::<16>()?;
        let uid = random::<6>()?;
        let nonce = match Nonce::from_public_id(&public_id) {
            Ok(n) => n,
            Err(_) => Nonce(*random::<6>()?),
        };
        let mut secrets = Zeroizing::new([0u8; 22]);
        secrets[..16].copy_from_slice(&key[..]);
        secrets[16..].copy_from_slice(&uid[..]);
        let request = Request::WrapSecrets {
            key_handle: kh.value().0,
            nonce: nonce.0,
            secrets,
        };
        let aead = match call(socket, ServerUid::ROOT, &request, Duration::from_secs(30)) {
            Ok(Response::Wrapped { aead }) => YubiKeyAead(aead),
            Ok(Response::Failed { message, .. } | Response::ProtocolError { message }) => {
                return Err(GenerateError::Daemon {
                    socket: socket.to_path_buf(),
                    message,
                });
            }
            Ok(other) => {
                return Err(GenerateError::Daemon {
                    socket: socket.to_path_buf(),
                    message: format!("unexpected answer {other:?}"),
                });
            }
            Err(e) => {
                return Err(GenerateError::Daemon {
                    socket: socket.to_path_buf(),
                    message: e.to_string(),
                });
            }
        };
        let path = store.write_v1(kh, &public_id, &nonce, &aead, WriteMode::CreateNew)?;
        let key_hex = Zeroizing::new(hex::encode(&key[..]));
        let uid_hex = Zeroizing::new(hex::encode(&uid[..]));
        // Written as soon as the AEAD exists: a failure later never leaves
        // a key in the store that nobody can program.
        let lines = Zeroizing::new(format!(
            "# {id}\nykman otp yubiotp 1 --public-id {id} --private-id {} --key {}\n\
             ykpersonalize -1 -ofixed={id} -ouid={} -a{}\n",
            *uid_hex, *key_hex, *uid_hex, *key_hex
        ));
        file.write_all(lines.as_bytes()).map_err(out_err)?;
        file.sync_all().map_err(out_err)?;
        made.public_ids.push(id);
        made.files.push(path);
    }
    Ok(made)
}
