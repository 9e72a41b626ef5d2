//! The AEAD store: pyhsm's directory tree of AEAD files, bit for bit
//! (yubihsm1.md §4).
//!
//! ```text
//! <aead_dir>/<key handle as spelled>/<id[0:2]>/<id[2:4]>/…/<id>
//! ```
//!
//! Lookup tries the configured key handles in order; the next one only when
//! the file is missing. A file that exists but cannot be read or parsed is an
//! error naming it, never a reason to look elsewhere. Writes are atomic: a
//! temporary file in the same directory, fsync, rename, fsync the directory,
//! so a reader sees the old AEAD or the new one and never half of one.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::aead::{AeadError, Nonce, YubiKeyAead};
use crate::aead_file::{AeadFile, AeadFileError, AeadFileFormat, MAX_FILE_LEN};
use crate::keyhandle::{KeyHandle, KeyHandleName};
use crate::otp::PublicId;
use crate::secure_file::{FileVersion, SETTLED};

/// The length pyhsm's importer pads short public ids to (with `c`) when it
/// names their files (`--public-id-chars`, default 12).
pub const PADDED_ID_CHARS: usize = 12;

/// Why the store could not give or take an AEAD. Every variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists but could not be read.
    #[error("cannot read AEAD file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not an AEAD file.
    #[error("AEAD file {} is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: AeadFileError,
    },
    /// The file holds an AEAD that is not a YubiKey's 30 bytes.
    #[error("AEAD file {} holds a {len}-byte AEAD; a YubiKey AEAD is 30 bytes", path.display())]
    NotYubiKeyAead {
        /// The file.
        path: PathBuf,
        /// Length of its AEAD.
        len: usize,
    },
    /// A v0 file whose nonce cannot be derived from the public id.
    #[error("AEAD file {}: {source}", path.display())]
    Nonce {
        /// The file.
        path: PathBuf,
        /// Why.
        source: AeadError,
    },
    /// Writing failed.
    #[error("cannot write AEAD file {}: {source}", path.display())]
    Write {
        /// The file (or directory) being written.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// [`WriteMode::CreateNew`] and the file is already there.
    #[error("AEAD file {} already exists", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// An empty public id has no file name.
    #[error("an empty public id has no AEAD file")]
    EmptyPublicId,
}

/// An AEAD found in the store, with everything a backend needs to open it.
#[derive(Debug, Clone)]
pub struct StoredAead {
    /// The file it came from.
    pub path: PathBuf,
    /// The configured key handle whose directory held it.
    pub directory: KeyHandleName,
    /// The key handle to open it with (the v1 header's, else the directory's).
    pub key_handle: KeyHandle,
    /// The nonce to open it with (the v1 header's, else from the public id).
    pub nonce: Nonce,
    /// The AEAD.
    pub aead: YubiKeyAead,
    /// The file's format.
    pub format: AeadFileFormat,
}

impl StoredAead {
    /// [`YubiKeyAead::fingerprint`] of this AEAD with its key handle and
    /// nonce.
    pub fn fingerprint(&self) -> [u8; 20] {
        self.aead.fingerprint(self.key_handle, &self.nonce)
    }
}

/// Whether a write may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Fail with [`StoreError::Exists`] if the file is there.
    CreateNew,
    /// Replace it atomically.
    Replace,
}

/// pyhsm's AEAD directory tree under one root, with the key handles to look
/// under in order.
#[derive(Debug, Clone)]
pub struct AeadStore {
    dir: PathBuf,
    key_handles: Vec<KeyHandleName>,
    cache: Option<Arc<Mutex<ReadCache>>>,
}

/// The bytes of AEAD files already read, each with the version it was read
/// at; see [`AeadStore::with_read_cache`].
#[derive(Debug)]
struct ReadCache {
    files: HashMap<PathBuf, (FileVersion, Vec<u8>)>,
    /// How long ago a file must have last changed to be kept.
    settled: Duration,
}

/// Files kept at most; past this the cache starts again empty.
const CACHE_MAX: usize = 1 << 17;

/// The path of an id's file below the root: the key handle's directory, the
/// id cut into 2-character directories, then the id.
pub fn relative_path(key_handle: &KeyHandleName, id: &str) -> PathBuf {
    let mut p = PathBuf::from(key_handle.spelled());
    let mut rest = id;
    while !rest.is_empty() {
        let cut = rest.char_indices().nth(2).map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(cut);
        p.push(piece);
        rest = tail;
    }
    p.push(id);
    p
}

/// Reads at most [`MAX_FILE_LEN`] + 1 bytes, so an oversized file is seen as
/// such without reading all of it, in one `read`: a regular file returns all
/// it has up to the count asked. `O_NONBLOCK` keeps a FIFO or device planted
/// at the path from hanging the caller (it then reads as empty or fails).
fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut buf = vec![0u8; MAX_FILE_LEN + 1];
    let n = loop {
        match f.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    buf.truncate(n);
    Ok(buf)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl AeadStore {
    /// A store rooted at `dir`, looking under `key_handles` in this order.
    pub fn new(dir: impl Into<PathBuf>, key_handles: Vec<KeyHandleName>) -> Self {
        Self {
            dir: dir.into(),
            key_handles,
            cache: None,
        }
    }

    /// Keeps the bytes of the files [`AeadStore::lookup`] reads, and reads a
    /// file again only when its version (device, inode, size, mtime,
    /// ctime, mode, owner) has changed since: one `statx` per lookup
    /// instead of open, read and close. A file that changed in the last
    /// two seconds is read every time. For a long-running reader (the
    /// daemon), where the same keys come back all day.
    #[must_use]
    pub fn with_read_cache(self) -> Self {
        self.with_cache_settled(SETTLED)
    }

    fn with_cache_settled(mut self, settled: Duration) -> Self {
        self.cache = Some(Arc::new(Mutex::new(ReadCache {
            files: HashMap::new(),
            settled,
        })));
        self
    }

    /// A file's bytes, from the cache when it holds this version of it.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let Some(cache) = &self.cache else {
            return read_limited(path);
        };
        let meta = fs::metadata(path)?;
        let version = FileVersion::of(&meta);
        let lock = || cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, bytes)) = lock().files.get(path)
            && *v == version
        {
            return Ok(bytes.clone());
        }
        let bytes = read_limited(path)?;
        let mut c = lock();
        let settled = version.settled(c.settled);
        if meta.is_file() && settled && bytes.len() <= MAX_FILE_LEN {
            if c.files.len() >= CACHE_MAX {
                c.files.clear();
            }
            c.files.insert(path.to_path_buf(), (version, bytes.clone()));
        } else {
            c.files.remove(path);
        }
        Ok(bytes)
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configured key handles, in lookup order.
    pub fn key_handles(&self) -> &[KeyHandleName] {
        &self.key_handles
    }

    /// Where ykhsm writes (and first looks for) an id's AEAD.
    pub fn path_for(&self, key_handle: &KeyHandleName, public_id: &PublicId) -> PathBuf {
        self.dir.join(relative_path(key_handle, public_id.as_str()))
    }

    /// The paths tried for an id under one key handle: the exact id, then,
    /// for ids shorter than 12 characters, the `c`-padded name pyhsm's
    /// importer wrote.
    fn candidates(&self, key_handle: &KeyHandleName, public_id: &PublicId) -> Vec<PathBuf> {
        let id = public_id.as_str();
        let mut paths = vec![self.path_for(key_handle, public_id)];
        if id.len() < PADDED_ID_CHARS {
            let padded = format!("{}{id}", "c".repeat(PADDED_ID_CHARS - id.len()));
            paths.push(self.dir.join(relative_path(key_handle, &padded)));
        }
        paths
    }

    /// Finds the AEAD of a public id: `Ok(None)` when no configured key
    /// handle has a file for it. An empty public id has none.
    pub fn lookup(&self, public_id: &PublicId) -> Result<Option<StoredAead>, StoreError> {
        if public_id.is_empty() {
            return Ok(None);
        }
        for kh in &self.key_handles {
            for path in self.candidates(kh, public_id) {
                match self.read(&path) {
                    Ok(bytes) => return load(path, kh, public_id, &bytes).map(Some),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(StoreError::Read { path, source }),
                }
            }
        }
        Ok(None)
    }

    /// Writes a v1 file for `public_id` under `key_handle`'s directory,
    /// atomically, mode 0600, with the header naming the key handle and
    /// nonce the AEAD was made with.
    pub fn write_v1(
        &self,
        key_handle: &KeyHandleName,
        public_id: &PublicId,
        nonce: &Nonce,
        aead: &YubiKeyAead,
        mode: WriteMode,
    ) -> Result<PathBuf, StoreError> {
        if public_id.is_empty() {
            return Err(StoreError::EmptyPublicId);
        }
        let path = self.path_for(key_handle, public_id);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        let werr = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Write { path: p, source }
        };
        self.create_dirs(&parent)?;
        let bytes = AeadFile::v1_bytes(key_handle.value(), nonce, &aead.0);
        let mut tmp = tempfile::Builder::new()
            .prefix(".ykhsm-")
            .suffix(".tmp")
            .tempfile_in(&parent)
            .map_err(werr(&parent))?;
        tmp.write_all(&bytes).map_err(werr(tmp.path()))?;
        tmp.as_file().sync_all().map_err(werr(tmp.path()))?;
        match mode {
            WriteMode::Replace => {
                tmp.persist(&path).map_err(|e| StoreError::Write {
                    path: path.clone(),
                    source: e.error,
                })?;
            }
            WriteMode::CreateNew => {
                tmp.persist_noclobber(&path).map_err(|e| {
                    if e.error.kind() == io::ErrorKind::AlreadyExists {
                        StoreError::Exists { path: path.clone() }
                    } else {
                        StoreError::Write {
                            path: path.clone(),
                            source: e.error,
                        }
                    }
                })?;
            }
        }
        fsync_dir(&parent).map_err(werr(&parent))?;
        Ok(path)
    }

    /// Creates the missing directories from the root down to `leaf`
    /// (mode 0755: names are public ids), fsyncing each new one's parent so
    /// the new entry survives a crash.
    fn create_dirs(&self, leaf: &Path) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        let mut cur = leaf;
        while !cur.is_dir() {
            missing.push(cur.to_path_buf());
            match cur.parent() {
                Some(p) if !p.as_os_str().is_empty() => cur = p,
                _ => break,
            }
        }
        for dir in missing.iter().rev() {
            match DirBuilder::new().mode(0o755).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => continue,
                Err(source) => {
                    return Err(StoreError::Write {
                        path: dir.clone(),
                        source,
                    });
                }
            }
            if let Some(parent) = dir.parent() {
                fsync_dir(parent).map_err(|source| StoreError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// Turns the bytes of a found file into a [`StoredAead`].
fn load(
    path: PathBuf,
    directory: &KeyHandleName,
    public_id: &PublicId,
    bytes: &[u8],
) -> Result<StoredAead, StoreError> {
    let file = match AeadFile::parse(bytes) {
        Ok(f) => f,
        Err(reason) => return Err(StoreError::Malformed { path, reason }),
    };
    let Some(aead) = YubiKeyAead::from_slice(file.aead()) else {
        let len = file.aead().len();
        return Err(StoreError::NotYubiKeyAead { path, len });
    };
    let format = file.format();
    let (key_handle, nonce) = match file {
        AeadFile::V1 {
            key_handle, nonce, ..
        } => (key_handle, nonce),
        AeadFile::V0 { .. } => match Nonce::from_public_id(public_id) {
            Ok(n) => (directory.value(), n),
            Err(source) => return Err(StoreError::Nonce { path, source }),
        },
    };
    Ok(StoredAead {
        path,
        directory: directory.clone(),
        key_handle,
        nonce,
        aead,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aead(fill: u8) -> YubiKeyAead {
        YubiKeyAead([fill; crate::aead::YUBIKEY_AEAD_LEN])
    }

    fn setup(store: &AeadStore) -> (KeyHandleName, PublicId) {
        let kh: KeyHandleName = "1".parse().unwrap();
        let id = PublicId::parse("ccccccdbjrgf").unwrap();
        store
            .write_v1(&kh, &id, &Nonce([1; 6]), &aead(1), WriteMode::CreateNew)
            .unwrap();
        (kh, id)
    }

    fn found(store: &AeadStore, id: &PublicId) -> YubiKeyAead {
        store.lookup(id).unwrap().unwrap().aead
    }

    /// Every change that replaces or rewrites the file is seen by a store
    /// that keeps what it read (here keeping even just-written files).
    #[test]
    fn read_cache_sees_replacement_rewrite_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let khs = vec!["1".parse().unwrap()];
        let store = AeadStore::new(dir.path(), khs).with_cache_settled(Duration::ZERO);
        let (kh, id) = setup(&store);
        assert_eq!(found(&store, &id).0, aead(1).0);
        assert_eq!(found(&store, &id).0, aead(1).0, "from the cache");
        // Replaced by rename (a new inode), as ykadmin and rsync do.
        store
            .write_v1(&kh, &id, &Nonce([1; 6]), &aead(2), WriteMode::Replace)
            .unwrap();
        assert_eq!(found(&store, &id).0, aead(2).0);
        // Rewritten in place, shorter (a v0 file: the bare AEAD).
        let path = store.path_for(&kh, &id);
        fs::write(&path, aead(3).0).unwrap();
        assert_eq!(found(&store, &id).0, aead(3).0);
        // Removed.
        fs::remove_file(&path).unwrap();
        assert!(store.lookup(&id).unwrap().is_none());
    }

    /// A file that changed in the last two seconds is read every time: an
    /// in-place rewrite of the same size within one clock tick keeps size,
    /// inode and (coarse) times, and must still be seen.
    #[test]
    fn read_cache_rereads_a_file_changed_moments_ago() {
        let dir = tempfile::tempdir().unwrap();
        let khs = vec!["1".parse().unwrap()];
        let store = AeadStore::new(dir.path(), khs).with_read_cache();
        let (kh, id) = setup(&store);
        assert_eq!(found(&store, &id).0, aead(1).0);
        let path = store.path_for(&kh, &id);
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 0xff;
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&bytes).unwrap();
        drop(f);
        let mut expected = aead(1).0;
        let last = expected.len() - 1;
        expected[last] ^= 0xff;
        assert_eq!(found(&store, &id).0, expected);
    }
}
