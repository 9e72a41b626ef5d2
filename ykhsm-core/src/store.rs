//! The AEAD store: pyhsm's directory tree of AEAD files, bit for bit
//! (pyhsm `ksm/import_keys.py` `output_filename`, `ksm/yubikey_ksm.py`
//! `aead_filename`).
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
//!
//! **What the store is trusted with.** An AEAD file decides which secret a
//! public id's OTPs are checked against, so:
//!
//! - an AEAD is bound to the public id it is filed under: a v0 file is
//!   opened with the public id as nonce, and a v1 file's own nonce must be
//!   that same nonce ([`V1Nonce::PublicId`], what pyhsm writes without
//!   `--random-nonce`; for a short id at its `c`-padded path, the short
//!   id's). Otherwise anyone who can copy one user's file over another's
//!   logs in as that other user with their own key.
//!   [`V1Nonce::Any`] reads stores made with `--random-nonce`, where only
//!   the store's ownership stands between a writer and every account;
//! - the root, every directory on the way to a file and the file itself
//!   must be owned by the store's owner (root) and not writable by group
//!   or others, and no symbolic link is followed on the way: the root is
//!   opened with `O_DIRECTORY | O_NOFOLLOW` and each child with `openat`
//!   from its checked parent ([`secure_file::CheckedDir`]). Anything else
//!   is an error naming the path.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, Metadata};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use thiserror::Error;

use crate::aead::{AeadError, Nonce, YubiKeyAead};
use crate::aead_file::{AeadFile, AeadFileError, AeadFileFormat, MAX_FILE_LEN};
use crate::keyhandle::{KeyHandle, KeyHandleName};
use crate::otp::PublicId;
use crate::secure_file::{
    self, CheckedDir, FilePolicy, FileVersion, NewFile, SETTLED, SecureFileError,
    SecureFileErrorKind, TreeCount,
};

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
    /// A v1 file whose nonce is not the public id it is filed under: the
    /// AEAD of another key copied here, or a store made with pyhsm's
    /// `--random-nonce` (read only with [`V1Nonce::Any`]).
    #[error(
        "AEAD file {} is filed under public id {public_id}, but its nonce is {}, not {}: the AEAD of another key filed here, or a store made with pyhsm's --random-nonce (read only with accept_random_nonce = true)",
        path.display(),
        hex::encode(found.0),
        expected.map_or_else(
            || "the public id (longer than 6 bytes, it cannot be a nonce)".to_owned(),
            |n| format!("the public id's {}", hex::encode(n.0))
        )
    )]
    NonceMismatch {
        /// The file.
        path: PathBuf,
        /// The public id it is filed under.
        public_id: PublicId,
        /// The nonce its v1 header carries.
        found: Nonce,
        /// The public id's nonce (none for ids over 12 characters).
        expected: Option<Nonce>,
    },
    /// The root, a directory on the way to the file, or the file is not
    /// owned by the store's owner, is writable by group or others, is a
    /// symbolic link, or cannot be opened: the store is not read.
    #[error(transparent)]
    Insecure(SecureFileError),
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

/// Which nonce a v1 file's header may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum V1Nonce {
    /// The nonce of the public id the file is filed under, as pyhsm's
    /// importer writes it by default: an AEAD opens only at its own path.
    #[default]
    PublicId,
    /// Any nonce, for stores made with pyhsm's `--random-nonce` (whose soft
    /// HSM writes zeros). An AEAD is then not bound to its path: whoever
    /// can write the store can file one key's AEAD under another public id
    /// and log in as it; the store's ownership is the only defence.
    Any,
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
    v1_nonce: V1Nonce,
    owner: u32,
    cache: Option<Arc<Mutex<ReadCache>>>,
}

/// What [`AeadStore::check`] found: per configured key handle, the
/// directories and files under its directory (none: no directory).
#[derive(Debug, Clone)]
pub struct StoreCheck {
    /// The key handles in lookup order.
    pub key_handles: Vec<(KeyHandleName, Option<TreeCount>)>,
}

/// What [`AeadStore::with_read_cache`] keeps between lookups.
///
/// The bytes of AEAD files already read, each with the version it was read
/// at; and the directory chains (root to a file's directory) found in
/// order, which stay so until inotify reports a change in one of the
/// directories watched. A change to a directory itself (chmod, chown,
/// removal, rename) and to any entry in it (created, removed, renamed,
/// chmod, chown) is reported on the watch of that directory or of its
/// parent; the kernel queues the event before the change's system call
/// returns, so a lookup that reads the queue first never trusts a chain
/// changed before it began.
#[derive(Debug)]
struct ReadCache {
    files: HashMap<PathBuf, (FileVersion, Vec<u8>)>,
    /// How long ago a file must have last changed to be kept.
    settled: Duration,
    /// Watches every directory of `chains`; none if inotify could not be
    /// had (then every lookup walks its chain).
    watch: Option<Inotify>,
    /// Directories (holding AEAD files) whose chain from the root was
    /// checked, and watched, with no change reported since.
    chains: HashSet<PathBuf>,
    /// Counts the reported changes: a chain checked across one is not kept.
    generation: u64,
}

impl ReadCache {
    /// Reads every change inotify has queued; any change forgets every
    /// checked chain (changes are rare: imports, rsync, an operator).
    fn drain(&mut self) {
        let Some(watch) = &self.watch else { return };
        let mut changed = false;
        loop {
            match watch.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(_) => changed = true,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // Not knowing what changed: trust no chain, now or later.
                    self.watch = None;
                    changed = true;
                    break;
                }
            }
        }
        if changed {
            self.chains.clear();
            self.generation = self.generation.wrapping_add(1);
        }
    }
}

/// What a watched directory reports: changes to itself and to its entries
/// that can change who owns or may write what is reached through it.
/// Never through a final link, and only directories.
const WATCH: AddWatchFlags = AddWatchFlags::IN_ATTRIB
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR)
    .union(AddWatchFlags::IN_DONT_FOLLOW);

/// Files (and chains) kept at most; past this the cache starts again empty.
const CACHE_MAX: usize = 1 << 17;

/// One place an id's file may be.
#[derive(Debug)]
struct Place {
    /// The file's path below the root (key handle, directories, name).
    rel: PathBuf,
    /// The file's whole path.
    path: PathBuf,
}

impl Place {
    /// The directory holding the file.
    fn leaf(&self) -> &Path {
        self.path.parent().unwrap_or(&self.path)
    }

    /// The directories below the root, in order (key handle first), and the
    /// file's name.
    fn components(&self) -> (Vec<&OsStr>, &OsStr) {
        let mut all: Vec<&OsStr> = self.rel.iter().collect();
        let name = all.pop().unwrap_or_default();
        (all, name)
    }
}

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

/// At most this much of a file is read: [`MAX_FILE_LEN`] + 1, so an
/// oversized file is seen as such without reading all of it.
const READ_LIMIT: usize = MAX_FILE_LEN + 1;

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl AeadStore {
    /// A store rooted at `dir`, looking under `key_handles` in this order,
    /// owned by root, its v1 files bound to their public ids
    /// ([`V1Nonce::PublicId`]).
    pub fn new(dir: impl Into<PathBuf>, key_handles: Vec<KeyHandleName>) -> Self {
        Self {
            dir: dir.into(),
            key_handles,
            v1_nonce: V1Nonce::PublicId,
            owner: 0,
            cache: None,
        }
    }

    /// Which nonces v1 files may carry (the configuration's
    /// `accept_random_nonce`).
    #[must_use]
    pub fn with_v1_nonce(mut self, v1_nonce: V1Nonce) -> Self {
        self.v1_nonce = v1_nonce;
        self
    }

    /// Another owner than root for the store's directories and files
    /// (tests that do not run as root).
    #[must_use]
    pub fn owned_by(mut self, owner: u32) -> Self {
        self.owner = owner;
        self
    }

    /// Keeps what [`AeadStore::lookup`] found, for a long-running reader
    /// (the daemon), where the same keys come back all day:
    ///
    /// - the bytes of the files read, read again only when a file's version
    ///   (device, inode, size, mtime, ctime, mode, owner) has changed, so a
    ///   lookup costs one `lstat` of the file instead of open, read and
    ///   close; a file that changed in the last two seconds is read every
    ///   time;
    /// - the directory chains checked on the way to those files, kept while
    ///   inotify reports no change in them, so a lookup costs one `read` of
    ///   the inotify queue (empty) instead of an `openat` and `fstat` per
    ///   directory. Without inotify every lookup walks its chain.
    #[must_use]
    pub fn with_read_cache(self) -> Self {
        self.with_cache_settled(SETTLED)
    }

    fn with_cache_settled(mut self, settled: Duration) -> Self {
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
        self.cache = Some(Arc::new(Mutex::new(ReadCache {
            files: HashMap::new(),
            settled,
            watch,
            chains: HashSet::new(),
            generation: 0,
        })));
        self
    }

    /// Owner and mode every directory and file of the store must have.
    fn policy(&self) -> FilePolicy {
        FilePolicy::trusted(self.owner, u64::MAX)
    }

    /// A refusal of the walk as a store error: an I/O error on the file
    /// itself is a read error; everything else (a directory, a link, owner,
    /// mode) says the store is not in order.
    fn refused(e: SecureFileError, file: &Path) -> StoreError {
        match e {
            SecureFileError {
                path,
                kind: SecureFileErrorKind::Io { source, .. },
            } if path == file => StoreError::Read { path, source },
            e => StoreError::Insecure(e),
        }
    }

    /// The bytes of the file at `place`, `None` if it (or a directory on
    /// the way) is missing.
    fn read(&self, place: &Place) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(cache) = &self.cache else {
            return Ok(self.walk(place)?.map(|(_, bytes)| bytes));
        };
        let lock = || cache.lock().unwrap_or_else(|p| p.into_inner());
        // Missing is missing, whatever the directories on the way: the
        // next place is tried, and nothing is read from this one.
        let meta = match fs::symlink_metadata(&place.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => None,
            Ok(meta) => Some(meta),
        };
        // The queue is read after the lstat: a change made before it is
        // seen here, so the lstat went through a chain still in order.
        let (chain_checked, generation, cached) = {
            let mut c = lock();
            c.drain();
            let cached = meta.as_ref().and_then(|m| {
                let version = FileVersion::of(m);
                c.files
                    .get(&place.path)
                    .filter(|(v, _)| *v == version)
                    .map(|(_, bytes)| bytes.clone())
            });
            (c.chains.contains(place.leaf()), c.generation, cached)
        };
        if let (true, Some(meta)) = (chain_checked, &meta) {
            secure_file::check_metadata(&place.path, meta, self.policy())
                .map_err(|e| Self::refused(e, &place.path))?;
            if cached.is_some() {
                return Ok(cached);
            }
            let (meta, bytes) = secure_file::read_path(&place.path, self.policy(), READ_LIMIT)
                .map_err(|e| Self::refused(e, &place.path))?;
            Self::keep(&mut lock(), &place.path, &meta, &bytes);
            return Ok(Some(bytes));
        }
        // The chain is not known to be in order: watch it, then walk it.
        let watched = self.watch(&mut lock(), place);
        let Some((meta, bytes)) = self.walk(place)? else {
            return Ok(None);
        };
        let mut c = lock();
        c.drain();
        if watched && c.generation == generation {
            if c.chains.len() >= CACHE_MAX {
                c.chains.clear();
            }
            c.chains.insert(place.leaf().to_path_buf());
        }
        Self::keep(&mut c, &place.path, &meta, &bytes);
        Ok(Some(bytes))
    }

    /// Keeps a file's bytes with the version they were read at, if that
    /// version can stand for them (settled).
    fn keep(c: &mut ReadCache, path: &Path, meta: &Metadata, bytes: &[u8]) {
        let version = FileVersion::of(meta);
        if version.settled(c.settled) && bytes.len() <= MAX_FILE_LEN {
            if c.files.len() >= CACHE_MAX {
                c.files.clear();
            }
            c.files
                .insert(path.to_path_buf(), (version, bytes.to_vec()));
        } else {
            c.files.remove(path);
        }
    }

    /// Puts a watch on every directory from the root to `place`'s, before
    /// they are checked; whether every one took.
    fn watch(&self, c: &mut ReadCache, place: &Place) -> bool {
        let Some(watch) = &c.watch else {
            return false;
        };
        let (dirs, _) = place.components();
        let mut dir = self.dir.clone();
        let mut all = watch.add_watch(&dir, WATCH).is_ok();
        for name in dirs {
            dir.push(name);
            all &= watch.add_watch(&dir, WATCH).is_ok();
        }
        all
    }

    /// Walks from the root to `place` without following links, checking
    /// every directory and then the file on their descriptors, and reads
    /// the file. `None` if something on the way is missing.
    fn walk(&self, place: &Place) -> Result<Option<(Metadata, Vec<u8>)>, StoreError> {
        let missing_or = |e: SecureFileError| {
            if e.is_not_found() {
                Ok(None)
            } else {
                Err(Self::refused(e, &place.path))
            }
        };
        let (dirs, name) = place.components();
        let mut dir = match CheckedDir::open(&self.dir, self.policy()) {
            Ok(d) => d,
            Err(e) => return missing_or(e),
        };
        for child in dirs {
            dir = match dir.dir(child) {
                Ok(d) => d,
                Err(e) => return missing_or(e),
            };
        }
        match dir.read_file(name, READ_LIMIT) {
            Ok(found) => Ok(Some(found)),
            Err(e) => missing_or(e),
        }
    }

    /// Checks the whole store as the daemon will read it, without following
    /// links: the root, then every directory and file under each
    /// configured key handle's directory (a missing one is noted). The
    /// first problem is the error, naming its path.
    pub fn check(&self) -> Result<StoreCheck, StoreError> {
        let refused = |e| StoreError::Insecure(e);
        let root = CheckedDir::open(&self.dir, self.policy()).map_err(refused)?;
        let mut key_handles = Vec::new();
        for kh in &self.key_handles {
            let count = match root.dir(OsStr::new(kh.spelled())) {
                Ok(dir) => Some(secure_file::check_tree(&dir).map_err(refused)?),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(refused(e)),
            };
            key_handles.push((kh.clone(), count));
        }
        Ok(StoreCheck { key_handles })
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

    /// The places tried for an id under one key handle: the exact id, then,
    /// for ids shorter than 12 characters, the `c`-padded name pyhsm's
    /// importer wrote.
    fn candidates(&self, key_handle: &KeyHandleName, public_id: &PublicId) -> Vec<Place> {
        let id = public_id.as_str();
        let mut names = vec![id.to_owned()];
        if id.len() < PADDED_ID_CHARS {
            names.push(format!("{}{id}", "c".repeat(PADDED_ID_CHARS - id.len())));
        }
        names
            .into_iter()
            .map(|name| {
                let rel = relative_path(key_handle, &name);
                let path = self.dir.join(&rel);
                Place { rel, path }
            })
            .collect()
    }

    /// Finds the AEAD of a public id: `Ok(None)` when no configured key
    /// handle has a file for it. An empty public id has none.
    pub fn lookup(&self, public_id: &PublicId) -> Result<Option<StoredAead>, StoreError> {
        if public_id.is_empty() {
            return Ok(None);
        }
        for kh in &self.key_handles {
            for place in self.candidates(kh, public_id) {
                if let Some(bytes) = self.read(&place)? {
                    return load(place.path, kh, public_id, &bytes, self.v1_nonce).map(Some);
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
        let rel = relative_path(key_handle, public_id.as_str());
        let path = self.dir.join(&rel);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        self.check_existing(&rel)?;
        self.create_dirs(&parent)?;
        let bytes = AeadFile::v1_bytes(key_handle.value(), nonce, &aead.0);
        let new = match mode {
            WriteMode::Replace => NewFile::with_mode(0o600),
            WriteMode::CreateNew => NewFile::with_mode(0o600).create_new(),
        };
        secure_file::replace(&path, &bytes, new).map_err(|e| match e.kind {
            SecureFileErrorKind::Io { source, .. }
                if source.kind() == io::ErrorKind::AlreadyExists
                    && mode == WriteMode::CreateNew =>
            {
                StoreError::Exists { path: path.clone() }
            }
            SecureFileErrorKind::Io { source, .. } => StoreError::Write {
                path: e.path,
                source,
            },
            kind => StoreError::Insecure(SecureFileError { path: e.path, kind }),
        })?;
        Ok(path)
    }

    /// Checks the directories that already exist on the way to the file at
    /// `rel` as a lookup would (the store's owner's, not writable by others,
    /// no link): a write never lands in a directory someone else controls,
    /// nor follows a planted link out of the store.
    fn check_existing(&self, rel: &Path) -> Result<(), StoreError> {
        let mut dirs: Vec<&OsStr> = rel.iter().collect();
        dirs.pop();
        let found = |r: Result<CheckedDir, SecureFileError>| match r {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(StoreError::Insecure(e)),
        };
        let Some(mut dir) = found(CheckedDir::open(&self.dir, self.policy()))? else {
            return Ok(());
        };
        for name in dirs {
            match found(dir.dir(name))? {
                Some(d) => dir = d,
                None => return Ok(()),
            }
        }
        Ok(())
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

/// Turns the bytes of a found file into a [`StoredAead`], bound to the
/// public id it was filed under: the nonce is the public id's (a v0 file's
/// by definition, a v1 file's checked) unless `v1_nonce` is
/// [`V1Nonce::Any`].
fn load(
    path: PathBuf,
    directory: &KeyHandleName,
    public_id: &PublicId,
    bytes: &[u8],
    v1_nonce: V1Nonce,
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
        } => {
            // For a short id found at its c-padded path this is the short
            // id's nonce, which is what pyhsm's importer wrote there.
            let expected = Nonce::from_public_id(public_id).ok();
            if v1_nonce == V1Nonce::PublicId && expected != Some(nonce) {
                return Err(StoreError::NonceMismatch {
                    path,
                    public_id: public_id.clone(),
                    found: nonce,
                    expected,
                });
            }
            (key_handle, nonce)
        }
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
    use std::fs::OpenOptions;
    use std::io::Write as _;

    use super::*;

    fn aead(fill: u8) -> YubiKeyAead {
        YubiKeyAead([fill; crate::aead::YUBIKEY_AEAD_LEN])
    }

    fn nonce(id: &PublicId) -> Nonce {
        Nonce::from_public_id(id).unwrap()
    }

    fn setup(store: &AeadStore) -> (KeyHandleName, PublicId) {
        let kh: KeyHandleName = "1".parse().unwrap();
        let id = PublicId::parse("ccccccdbjrgf").unwrap();
        store
            .write_v1(&kh, &id, &nonce(&id), &aead(1), WriteMode::CreateNew)
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
            .write_v1(&kh, &id, &nonce(&id), &aead(2), WriteMode::Replace)
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

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn kh1() -> KeyHandleName {
        "1".parse().unwrap()
    }

    fn id(s: &str) -> PublicId {
        PublicId::parse(s).unwrap()
    }

    /// A store of the current user's at `dir`, with or without the read
    /// cache.
    fn store_at(dir: &Path, cached: bool) -> AeadStore {
        let store = AeadStore::new(dir, vec![kh1()]).owned_by(me());
        if cached {
            store.with_cache_settled(Duration::ZERO)
        } else {
            store
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Issue 12, item 2: bob's AEAD filed under alice's public id.
    #[test]
    fn v1_file_whose_nonce_is_not_its_public_id_is_refused_naming_the_file_and_the_id() {
        for cached in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = store_at(dir.path(), cached);
            let (alice, bob) = (id("ccccccdbjrgf"), id("cccccccccccb"));
            store
                .write_v1(&kh1(), &alice, &nonce(&bob), &aead(2), WriteMode::CreateNew)
                .unwrap();
            let path = store.path_for(&kh1(), &alice);
            let err = store.lookup(&alice).unwrap_err();
            assert!(
                matches!(&err, StoreError::NonceMismatch { path: p, public_id, found, expected }
                    if *p == path && *public_id == alice && *found == nonce(&bob)
                        && *expected == Some(nonce(&alice))),
                "{err:?}"
            );
            let msg = err.to_string();
            for needle in [
                &path.display().to_string(),
                "public id ccccccdbjrgf",
                "nonce is 000000000001",
                "000000218c54",
                "accept_random_nonce",
            ] {
                assert!(msg.contains(needle), "{needle}: {msg}");
            }
            // Read as it always was when random nonces are accepted.
            let any = store_at(dir.path(), cached).with_v1_nonce(V1Nonce::Any);
            let found = any.lookup(&alice).unwrap().unwrap();
            assert_eq!((found.nonce, found.aead.0), (nonce(&bob), aead(2).0));
        }
    }

    /// pyhsm's importer files a short id under its `c`-padded name with the
    /// short id's own nonce (vector Q1): bound to the short id, not to the
    /// 12-character id the padded name spells.
    #[test]
    fn short_id_at_the_padded_path_is_bound_to_the_short_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true);
        let (short, padded) = (id("ftftftcccc"), id("ccftftftcccc"));
        assert_eq!(hex::encode(nonce(&short).0), "4d4d4d000000");
        store
            .write_v1(
                &kh1(),
                &padded,
                &nonce(&short),
                &aead(1),
                WriteMode::CreateNew,
            )
            .unwrap();
        let found = store.lookup(&short).unwrap().unwrap();
        assert_eq!(found.path, store.path_for(&kh1(), &padded));
        assert_eq!(found.nonce, nonce(&short));
        let err = store.lookup(&padded).unwrap_err();
        assert!(
            matches!(err, StoreError::NonceMismatch { ref public_id, .. } if *public_id == padded),
            "{err}"
        );
    }

    /// A public id over 12 characters cannot be a nonce, so its v1 file
    /// (only `--random-nonce` makes one) is read only with any nonce.
    #[test]
    fn v1_file_of_an_id_too_long_for_a_nonce_needs_any_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), false);
        let long = id("cbdefghijklnrtuv");
        store
            .write_v1(
                &kh1(),
                &long,
                &Nonce([7; 6]),
                &aead(1),
                WriteMode::CreateNew,
            )
            .unwrap();
        let err = store.lookup(&long).unwrap_err();
        assert!(
            matches!(err, StoreError::NonceMismatch { expected: None, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("longer than 6 bytes"), "{err}");
        let any = store.with_v1_nonce(V1Nonce::Any);
        assert_eq!(any.lookup(&long).unwrap().unwrap().nonce, Nonce([7; 6]));
    }

    /// The root, a key handle's directory, a directory on the id's path and
    /// the file: writable by group or others, or someone else's, each is
    /// refused naming it, also after a lookup that found the chain in order
    /// (the read cache sees the change), and read again once put right.
    #[test]
    fn a_directory_or_file_on_the_way_writable_by_others_or_not_the_owners_is_refused() {
        for cached in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("aeads");
            let store = store_at(&root, cached);
            let (_, alice) = setup(&store);
            let file = store.path_for(&kh1(), &alice);
            for target in [
                root.clone(),
                root.join("1"),
                root.join("1/cc/cc"),
                file.parent().unwrap().to_path_buf(),
                file.clone(),
            ] {
                assert!(store.lookup(&alice).unwrap().is_some());
                let mode = mode_of(&target);
                for bad in [mode | 0o020, mode | 0o002] {
                    set_mode(&target, bad);
                    let err = store.lookup(&alice).unwrap_err();
                    assert!(
                        matches!(&err, StoreError::Insecure(SecureFileError { path, kind: SecureFileErrorKind::Mode { mode: m, .. } })
                            if *path == target && *m == bad),
                        "cached={cached} {}: {err}",
                        target.display()
                    );
                    set_mode(&target, mode);
                    assert!(store.lookup(&alice).unwrap().is_some());
                }
                if me() == 0 {
                    std::os::unix::fs::chown(&target, Some(65534), None).unwrap();
                    let err = store.lookup(&alice).unwrap_err();
                    assert!(
                        matches!(&err, StoreError::Insecure(SecureFileError { path, kind: SecureFileErrorKind::Owner { found: 65534, expected: 0 } })
                            if *path == target),
                        "cached={cached} {}: {err}",
                        target.display()
                    );
                    assert!(err.to_string().contains("is owned by uid 65534"), "{err}");
                    std::os::unix::fs::chown(&target, Some(0), None).unwrap();
                }
            }
        }
    }

    /// A symbolic link on the way (the root, a directory, the file) is not
    /// followed, also where the chain was found in order before.
    #[test]
    fn a_symlink_on_the_way_is_not_followed_and_is_named() {
        for cached in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("aeads");
            let store = store_at(&root, cached);
            let (_, alice) = setup(&store);
            let elsewhere = dir.path().join("elsewhere");
            for target in [
                root.clone(),
                root.join("1"),
                root.join("1/cc/cc/cc"),
                store.path_for(&kh1(), &alice),
            ] {
                assert!(store.lookup(&alice).unwrap().is_some());
                fs::rename(&target, &elsewhere).unwrap();
                std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
                let err = store.lookup(&alice).unwrap_err();
                assert!(
                    matches!(&err, StoreError::Insecure(SecureFileError { path, kind: SecureFileErrorKind::Symlink }) if *path == target),
                    "cached={cached} {}: {err}",
                    target.display()
                );
                assert!(err.to_string().contains("is a symbolic link"), "{err}");
                fs::remove_file(&target).unwrap();
                fs::rename(&elsewhere, &target).unwrap();
            }
            assert!(store.lookup(&alice).unwrap().is_some());
        }
    }

    /// The read cache trusts a checked chain until inotify reports a change
    /// in it: a lookup then costs the file's lstat and an empty read of
    /// the queue; after a change (even a chmod to the same mode) the chain
    /// is walked and checked again.
    #[test]
    fn read_cache_trusts_a_checked_chain_until_inotify_reports_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true);
        let (_, alice) = setup(&store);
        let leaf = store
            .path_for(&kh1(), &alice)
            .parent()
            .unwrap()
            .to_path_buf();
        let state = |store: &AeadStore| {
            let c = store.cache.as_ref().unwrap().lock().unwrap();
            assert!(c.watch.is_some(), "inotify is available here");
            (c.chains.contains(&leaf), c.generation)
        };
        assert!(store.lookup(&alice).unwrap().is_some());
        let (kept, generation) = state(&store);
        assert!(kept);
        assert!(store.lookup(&alice).unwrap().is_some());
        assert_eq!(state(&store), (true, generation), "no change, no walk");
        let mid = dir.path().join("1/cc/cc");
        set_mode(&mid, mode_of(&mid));
        assert!(store.lookup(&alice).unwrap().is_some());
        let (kept, after) = state(&store);
        assert!(kept && after != generation, "walked again after the chmod");
    }

    /// Without inotify nothing is trusted between lookups: every lookup
    /// walks its chain, and still sees every change.
    #[test]
    fn without_inotify_every_lookup_walks_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true);
        store.cache.as_ref().unwrap().lock().unwrap().watch = None;
        let (_, alice) = setup(&store);
        assert!(store.lookup(&alice).unwrap().is_some());
        assert!(
            store
                .cache
                .as_ref()
                .unwrap()
                .lock()
                .unwrap()
                .chains
                .is_empty()
        );
        let mid = dir.path().join("1/cc/cc/cc");
        let mode = mode_of(&mid);
        set_mode(&mid, mode | 0o022);
        assert!(matches!(
            store.lookup(&alice),
            Err(StoreError::Insecure(SecureFileError {
                kind: SecureFileErrorKind::Mode { .. },
                ..
            }))
        ));
        set_mode(&mid, mode);
        assert!(store.lookup(&alice).unwrap().is_some());
    }

    /// `check` walks the root and every configured key handle's tree (a
    /// missing one is noted; one not configured is not read) and names the
    /// first thing out of order.
    #[test]
    fn check_walks_the_configured_trees_and_names_the_first_problem() {
        let dir = tempfile::tempdir().unwrap();
        let khs: Vec<KeyHandleName> = vec![kh1(), "2".parse().unwrap()];
        let store = AeadStore::new(dir.path(), khs).owned_by(me());
        for s in ["ccccccdbjrgf", "cccccccccccb"] {
            let i = id(s);
            store
                .write_v1(&kh1(), &i, &nonce(&i), &aead(1), WriteMode::CreateNew)
                .unwrap();
        }
        let unused = dir.path().join("3");
        fs::create_dir(&unused).unwrap();
        set_mode(&unused, 0o777);
        let found = store.check().unwrap();
        let summary: Vec<(String, Option<u64>)> = found
            .key_handles
            .iter()
            .map(|(kh, c)| (kh.spelled().to_owned(), c.map(|c| c.files)))
            .collect();
        assert_eq!(summary, [("1".to_owned(), Some(2)), ("2".to_owned(), None)]);
        let leaf = dir.path().join("1/cc/cc/cc/cc/cc");
        let odd = leaf.join("stray");
        for plant in ["fifo", "link", "mode"] {
            match plant {
                "fifo" => {
                    nix::unistd::mkfifo(&odd, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .unwrap()
                }
                "link" => std::os::unix::fs::symlink("/etc/passwd", &odd).unwrap(),
                _ => {
                    fs::write(&odd, b"x").unwrap();
                    set_mode(&odd, 0o666);
                }
            }
            let err = store.check().unwrap_err();
            let ok = match (&err, plant) {
                (
                    StoreError::Insecure(SecureFileError {
                        path,
                        kind: SecureFileErrorKind::NotRegular { .. },
                    }),
                    "fifo",
                )
                | (
                    StoreError::Insecure(SecureFileError {
                        path,
                        kind: SecureFileErrorKind::Symlink,
                    }),
                    "link",
                )
                | (
                    StoreError::Insecure(SecureFileError {
                        path,
                        kind: SecureFileErrorKind::Mode { .. },
                    }),
                    "mode",
                ) => *path == odd,
                _ => false,
            };
            assert!(ok, "{plant}: {err}");
            fs::remove_file(&odd).unwrap();
        }
        assert!(store.check().is_ok());
    }

    /// A place whose directories are missing is not found, and nothing of
    /// it is kept.
    #[test]
    fn a_missing_place_is_not_found() {
        for cached in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = store_at(dir.path(), cached);
            assert!(store.lookup(&id("ccccccdbjrgf")).unwrap().is_none());
            let missing_root = store_at(&dir.path().join("absent"), cached);
            assert!(missing_root.lookup(&id("ccccccdbjrgf")).unwrap().is_none());
        }
    }

    /// A write checks the directories already there as a lookup does: it
    /// never lands in one someone else may write, nor follows a link out
    /// of the store.
    #[test]
    fn write_refuses_a_directory_on_the_way_that_is_not_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("aeads");
        let store = store_at(&root, false);
        let (kh, alice) = setup(&store);
        let bob = id("cccccccccccb");
        let shared = root.join("1/cc/cc/cc");
        set_mode(&shared, 0o777);
        let err = store
            .write_v1(&kh, &bob, &nonce(&bob), &aead(2), WriteMode::CreateNew)
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Insecure(SecureFileError { path, kind: SecureFileErrorKind::Mode { .. } }) if *path == shared),
            "{err}"
        );
        set_mode(&shared, 0o755);
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::rename(&shared, dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &shared).unwrap();
        let err = store
            .write_v1(&kh, &bob, &nonce(&bob), &aead(2), WriteMode::CreateNew)
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Insecure(SecureFileError { path, kind: SecureFileErrorKind::Symlink }) if *path == shared),
            "{err}"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written through the link"
        );
        fs::remove_file(&shared).unwrap();
        fs::rename(dir.path().join("moved"), &shared).unwrap();
        store
            .write_v1(&kh, &bob, &nonce(&bob), &aead(2), WriteMode::CreateNew)
            .unwrap();
        assert!(store.lookup(&alice).unwrap().is_some());
        assert!(store.lookup(&bob).unwrap().is_some());
    }
}
