//! `aeads digest`: one line that says whether two hosts hold the same AEAD
//! store — the proof that an rsync'd pyhsm tree arrived whole.
//!
//! The digest is SHA-1 (what YK-KSM's sync monitor uses) over every regular
//! file below the store's root, in the byte order of their relative paths;
//! per file: the relative path, a NUL byte, the file's length as 8 bytes
//! big-endian, then its bytes. Names starting with `.` (ykhsm's and
//! rsync's temporary files) are left out, as are symlinks, whose targets
//! could be anywhere. `--per-key`: the same, over one public id's files
//! (under every key handle directory), one line per public id.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;

use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};
use thiserror::Error;

/// A file of the store that could not be read.
#[derive(Debug, Error)]
#[error("{}: {source}", path.display())]
pub struct DigestError {
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

/// The store's files: relative path → bytes.
pub fn files(root: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, DigestError> {
    relative_paths(root)?
        .into_iter()
        .map(|rel| {
            let path = root.join(std::ffi::OsStr::from_bytes(&rel));
            let bytes = fs::read(&path).map_err(|source| DigestError { path, source })?;
            Ok((rel, bytes))
        })
        .collect()
}

/// The relative paths of the store's regular files (names starting with
/// `.` and symlinks left out), sorted.
pub fn relative_paths(root: &Path) -> Result<Vec<Vec<u8>>, DigestError> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<Vec<u8>>) -> Result<(), DigestError> {
    let dir = root.join(rel);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DigestError { path, source }
    };
    for entry in fs::read_dir(&dir).map_err(err(&dir))? {
        let entry = entry.map_err(err(&dir))?;
        let name = entry.file_name();
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(err(&path))?;
        let rel_path = rel.join(&name);
        if kind.is_dir() {
            walk(root, &rel_path, out)?;
        } else if kind.is_file() {
            out.push(rel_path.as_os_str().as_bytes().to_vec());
        }
    }
    Ok(())
}

/// SHA-1 over `files` as the module describes, in hex.
pub fn digest<'a>(files: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> String {
    let mut h = Sha1::new();
    for (path, bytes) in files {
        h.update(path);
        h.update([0]);
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

/// The public id a file belongs to: its name (pyhsm names each file after
/// the id).
fn public_id_of(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// A file of the store: (relative path, bytes).
type FileRef<'a> = (&'a Vec<u8>, &'a Vec<u8>);

/// One digest per public id, sorted by id.
pub fn per_key(files: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<String, String> {
    let mut groups: BTreeMap<Vec<u8>, Vec<FileRef<'_>>> = BTreeMap::new();
    for (path, bytes) in files {
        groups
            .entry(public_id_of(path).to_vec())
            .or_default()
            .push((path, bytes));
    }
    groups
        .into_iter()
        .map(|(id, fs)| (String::from_utf8_lossy(&id).into_owned(), digest(fs)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_files_same_digest_any_change_shows() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir_all(d.join("1/cc/cc")).unwrap();
            fs::write(d.join("1/cc/cc/cccccccccccb"), b"one").unwrap();
            fs::write(d.join("1/cc/cc/cccccccccccd"), b"two").unwrap();
        }
        // Temporary files do not count.
        fs::write(b.path().join("1/cc/cc/.ykhsm-x.tmp"), b"partial").unwrap();
        let da = digest(&files(a.path()).unwrap());
        assert_eq!(da, digest(&files(b.path()).unwrap()));
        assert_eq!(da.len(), 40);
        fs::write(b.path().join("1/cc/cc/cccccccccccd"), b"twO").unwrap();
        assert_ne!(da, digest(&files(b.path()).unwrap()));
        // Moving bytes between files changes it too.
        fs::write(b.path().join("1/cc/cc/cccccccccccb"), b"onet").unwrap();
        fs::write(b.path().join("1/cc/cc/cccccccccccd"), b"wo").unwrap();
        assert_ne!(da, digest(&files(b.path()).unwrap()));
        let keys = per_key(&files(a.path()).unwrap());
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            ["cccccccccccb", "cccccccccccd"]
        );
    }
}
