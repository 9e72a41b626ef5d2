//! `ykadmin import-ykksm`: YK-KSM's keys into ykhsm's AEAD store (the
//! subcommand's use: README.md, docs/migrating.md; the line format:
//! `ykhsm_core::ykksm`).
//!
//! The input is `ykksm-export` output (no header) or `ykksm-gen-keys` /
//! `yhsm-import-keys` input (with the `# ykksm 1` header). For every good
//! line and every key handle, the daemon's backend seals the key's secrets
//! (AES key ‖ uid) into an AEAD, and the AEAD is written as a v1 file at
//! [`AeadStore::path_for`]. The nonce is the public id's bytes, zero-padded
//! to 6 ([`Nonce::from_public_id`]), as `yhsm-import-keys` does without
//! `--random-nonce`; the v1 header records it with the key handle number.
//!
//! Importing twice changes nothing: AES-CCM is deterministic, so the same
//! secret wrapped under the same key handle and nonce gives the same AEAD,
//! and a key whose file already holds that AEAD is skipped. A file that
//! holds a different secret (or cannot be read) is a conflict, reported by
//! line, public id and key handle, and left alone unless `force`.
//!
//! What fails for one key (a bad line, a conflict, a backend refusal for
//! one key) is counted and reported, and the other keys are still imported.
//! Only what stops the whole job (no daemon, the daemon refuses ykadmin, a
//! key handle the backend does not have, an AEAD directory that cannot be
//! written) is an [`ImportError`].
//!
//! Secrets never leave this module except inside the request to the daemon:
//! no message, report or `Debug` output carries an AES key, a uid or an
//! AEAD.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use thiserror::Error;
use ykhsm_config::Config;
use ykhsm_core::keyhandle::{KeyHandle, KeyHandleName};
use ykhsm_core::otp::YubiKeySecrets;
use ykhsm_core::store::{AeadStore, StoreError, StoredAead, WriteMode};
use ykhsm_core::ykksm::{self, YkksmRecord};
use ykhsm_core::{Nonce, YubiKeyAead};
use ykhsm_proto::{ClientError, Request, Response, ServerUid, Status, Zeroizing, call};

/// How long one wrap request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Keys worked on at once, whatever the number of CPUs: each is a daemon
/// round trip and a durable file write (two fsyncs), mostly waiting, so a
/// few in flight hide most of it. Far below the daemon's limit on root's
/// connections (`max_connections`, 4096 by default).
const WORKERS: usize = 8;

/// What the import did, key by key.
///
/// Counts are per key file, that is per (good line, key handle) pair; a bad
/// line counts once in [`ImportReport::failed`], as does a line whose
/// public id cannot be a nonce or repeats an earlier line's with another
/// secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Whether the input started with `# ykksm 1`.
    pub header: bool,
    /// Good lines (keys) read.
    pub keys: usize,
    /// Key files written, including the replaced ones.
    pub imported: usize,
    /// Of [`ImportReport::imported`], files that replaced an existing one
    /// (only with `force`).
    pub replaced: usize,
    /// Key files already holding the same secret, left as they were.
    pub skipped: usize,
    /// Bad lines and key files that could not be written.
    pub failed: usize,
    /// Each failure, in input order.
    pub failures: Vec<ImportNote>,
    /// Each replacement, in input order.
    pub replacements: Vec<ImportNote>,
    /// Each key started afresh because its AEAD now holds another secret
    /// (a reprogrammed YubiKey), in input order.
    pub resets: Vec<ImportNote>,
}

impl ImportReport {
    /// `imported N, skipped N, failed N`, the line the CLI prints.
    pub fn summary(&self) -> String {
        format!(
            "imported {}, skipped {}, failed {}",
            self.imported, self.skipped, self.failed
        )
    }

    /// Whether nothing failed (the CLI's exit 0).
    pub fn is_success(&self) -> bool {
        self.failed == 0
    }
}

/// One failed or replaced key, by input line. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportNote {
    /// 1-based line of the input.
    pub line: usize,
    /// The key's public id, when the line had a good one.
    pub public_id: Option<String>,
    /// The key handle as spelled, when it concerns one key file.
    pub key_handle: Option<String>,
    /// What happened.
    pub reason: String,
}

impl fmt::Display for ImportNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match (&self.public_id, &self.key_handle) {
            (Some(id), Some(kh)) => write!(f, "public id {id} under key handle {kh}: ")?,
            (Some(id), None) => write!(f, "public id {id}: ")?,
            _ => {}
        }
        f.write_str(&self.reason)
    }
}

/// Why the import could not be done at all. Names the socket, key handle or
/// path at fault; never carries a secret.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImportError {
    /// No key handle to import under.
    #[error("no key handle to import under: the configuration has none and none was given")]
    NoKeyHandles,
    /// The daemon could not be asked.
    #[error("ykhsmd at {}: {source} (is it running? `ykhsmd --config {} --check`)", socket.display(), config.display())]
    Daemon {
        /// The socket.
        socket: PathBuf,
        /// The configuration file.
        config: PathBuf,
        /// What went wrong.
        source: ClientError,
    },
    /// The daemon refused the request (not root) or did not understand it.
    #[error("ykhsmd at {} refused to wrap secrets: {message}", socket.display())]
    Refused {
        /// The socket.
        socket: PathBuf,
        /// The daemon's reason, with its status word.
        message: String,
    },
    /// The backend cannot wrap under a key handle (not in keys.json, not
    /// allowed, HSM locked).
    #[error("key handle {key_handle}: the backend cannot wrap secrets under it: {message}")]
    KeyHandle {
        /// The key handle as spelled.
        key_handle: String,
        /// The daemon's reason.
        message: String,
    },
    /// The AEAD directory is missing or cannot be written.
    #[error("AEAD directory {}: {source}", path.display())]
    AeadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing an AEAD file failed (disk full, permissions).
    #[error("{0}")]
    Write(StoreError),
    /// The import stopped part way.
    #[error(
        "{source} (stopped after {done} of {total} key files; run the import again once this \
         is fixed: keys already imported are skipped)"
    )]
    Interrupted {
        /// Key files dealt with (imported, skipped or failed) before it stopped.
        done: usize,
        /// Key files to do.
        total: usize,
        /// Why it stopped.
        source: Box<ImportError>,
    },
}

/// What happened to one key file. The fingerprint is that of the AEAD
/// the file now holds with the line's secret.
enum Outcome {
    Imported([u8; 20]),
    Replaced {
        note: ImportNote,
        fingerprint: [u8; 20],
        /// The file held another secret (known, not guessed): the key was
        /// reprogrammed, and its counters must start afresh.
        other_secret: bool,
    },
    Skipped(Option<[u8; 20]>),
    Failed(ImportNote),
}

/// What the daemon said to one wrap request.
enum Wrap {
    Aead(YubiKeyAead),
    /// The backend refused this one (its message).
    BackendError(String),
}

/// Everything the workers share.
struct Job<'a> {
    config: &'a Config,
    force: bool,
    records: &'a [YkksmRecord],
    nonces: &'a [Option<Nonce>],
    key_handles: &'a [KeyHandleName],
    stores: Vec<AeadStore>,
}

/// Imports `ykksm-export` text (with or without the `# ykksm 1` header)
/// under each of `key_handles` (the CLI passes the configured ones unless
/// `--key-handle` was given), through the daemon at `config.socket`, into
/// `config.aead_dir`.
///
/// Bad lines and per-key conflicts are in the report; the good lines are
/// imported all the same. `force` replaces AEAD files that hold a different
/// secret or cannot be read. `progress` draws a progress bar on standard
/// error (pass whether it is a terminal).
///
/// `input` holds AES keys: the caller should keep it in a zeroizing buffer.
pub fn import_ykksm(
    config: &Config,
    input: &[u8],
    key_handles: &[KeyHandleName],
    force: bool,
    progress: bool,
) -> Result<ImportReport, ImportError> {
    if key_handles.is_empty() {
        return Err(ImportError::NoKeyHandles);
    }
    check_aead_dir(&config.aead_dir)?;
    // One wrap of an all-zero (non-)secret per key handle: the daemon is
    // there, answers root, and has the key handle, before anything is
    // written.
    for kh in key_handles {
        let zero = YubiKeySecrets::new([0; 16], [0; 6]);
        if let Wrap::BackendError(message) = wrap(config, kh.value(), &Nonce([0; 6]), &zero)? {
            return Err(ImportError::KeyHandle {
                key_handle: kh.spelled().to_owned(),
                message,
            });
        }
    }

    let parsed = ykksm::parse(input);
    let mut report = ImportReport {
        header: parsed.header,
        keys: parsed.records.len(),
        ..ImportReport::default()
    };
    let records = parsed.records;
    // Per line: the notes of the line itself (bad line, unusable public id,
    // duplicate) and of its key files, merged in line order at the end.
    let mut line_notes: Vec<(usize, Outcome)> = parsed
        .errors
        .iter()
        .map(|e| {
            (
                e.line,
                Outcome::Failed(ImportNote {
                    line: e.line,
                    public_id: None,
                    key_handle: None,
                    reason: e.kind.to_string(),
                }),
            )
        })
        .collect();

    // Which records to work on: a public id whose nonce cannot be made
    // fails; a repeated public id is skipped (same secret) or fails (another
    // secret), so no two workers ever touch the same file.
    let mut nonces: Vec<Option<Nonce>> = Vec::with_capacity(records.len());
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for (i, rec) in records.iter().enumerate() {
        let note = |reason: String| ImportNote {
            line: rec.line,
            public_id: Some(rec.public_id.as_str().to_owned()),
            key_handle: None,
            reason,
        };
        let nonce = match Nonce::from_public_id(&rec.public_id) {
            Ok(n) => n,
            Err(_) => {
                let reason = "longer than 6 bytes (12 modhex characters), so it cannot be \
                              the AEAD nonce (pyhsm's store uses the public id)";
                line_notes.push((rec.line, Outcome::Failed(note(reason.to_owned()))));
                nonces.push(None);
                continue;
            }
        };
        if let Some(&j) = first_line.get(rec.public_id.as_str()) {
            let earlier: &YkksmRecord = &records[j];
            if earlier.secrets.ct_eq(&rec.secrets) {
                for _ in key_handles {
                    line_notes.push((rec.line, Outcome::Skipped(None)));
                }
            } else {
                line_notes.push((
                    rec.line,
                    Outcome::Failed(note(format!(
                        "line {} has the same public id with a different secret; this line is \
                         not imported",
                        earlier.line
                    ))),
                ));
            }
            nonces.push(None);
            continue;
        }
        first_line.insert(rec.public_id.as_str(), i);
        nonces.push(Some(nonce));
    }

    let work: Vec<(usize, usize)> = nonces
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_some())
        .flat_map(|(r, _)| (0..key_handles.len()).map(move |k| (r, k)))
        .collect();
    let total = work.len();
    let bar = progress_bar(total, progress);
    let job = Job {
        config,
        force,
        records: &records,
        nonces: &nonces,
        key_handles,
        stores: key_handles
            .iter()
            .map(|kh| config.aead_store(vec![kh.clone()]))
            .collect(),
    };
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let fatal: Mutex<Option<ImportError>> = Mutex::new(None);
    let results: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::with_capacity(total));
    let workers = WORKERS.min(total.max(1));
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(r, k)) = work.get(i) else { break };
                    match job.one(r, k) {
                        Ok(outcome) => {
                            mine.push((i, outcome));
                            done.fetch_add(1, Ordering::Relaxed);
                            bar.inc(1);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            fatal
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(e);
                        }
                    }
                }
                results
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(mine);
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    results.sort_by_key(|(i, _)| *i);
    // Keys whose AEAD now holds another secret start afresh — also when the
    // import stopped half-way, for the files already replaced.
    let resets = reset_replaced(config, &records, &work, &results);
    if let Some(e) = fatal.into_inner().unwrap_or_else(PoisonError::into_inner) {
        let done = done.load(Ordering::Relaxed);
        return Err(if done == 0 {
            e
        } else {
            ImportError::Interrupted {
                done,
                total,
                source: Box::new(e),
            }
        });
    }
    for (line, r) in resets {
        match r {
            Ok(note) => report.resets.push(note),
            Err(note) => line_notes.push((line, Outcome::Failed(note))),
        }
    }
    line_notes.extend(
        results
            .into_iter()
            .map(|(i, o)| (records[work[i].0].line, o)),
    );
    // Stable: within a line, the line's own note first, then key handles in
    // the order given.
    line_notes.sort_by_key(|(line, _)| *line);
    for (_, outcome) in line_notes {
        match outcome {
            Outcome::Imported(_) => report.imported += 1,
            Outcome::Replaced { note, .. } => {
                report.imported += 1;
                report.replaced += 1;
                report.replacements.push(note);
            }
            Outcome::Skipped(_) => report.skipped += 1,
            Outcome::Failed(note) => {
                report.failed += 1;
                report.failures.push(note);
            }
        }
    }
    Ok(report)
}

impl Job<'_> {
    /// Imports record `r` under key handle `k`.
    fn one(&self, r: usize, k: usize) -> Result<Outcome, ImportError> {
        let rec = &self.records[r];
        let kh = &self.key_handles[k];
        let store = &self.stores[k];
        let id = &rec.public_id;
        let Some(nonce) = self.nonces[r] else {
            // Not in the work list.
            return Ok(Outcome::Skipped(None));
        };
        let note = |reason: String| ImportNote {
            line: rec.line,
            public_id: Some(id.as_str().to_owned()),
            key_handle: Some(kh.spelled().to_owned()),
            reason,
        };
        let aead = match wrap(self.config, kh.value(), &nonce, &rec.secrets)? {
            Wrap::Aead(a) => a,
            Wrap::BackendError(m) => {
                return Ok(Outcome::Failed(note(format!(
                    "the backend did not wrap the secrets: {m}"
                ))));
            }
        };
        let write = |mode| store.write_v1(kh, id, &nonce, &aead, mode);
        let fingerprint = aead.fingerprint(kh.value(), &nonce);
        // A write error fails this key, or the whole import when the
        // store cannot take files at all.
        let failed_write = |e: StoreError| {
            if stops_everything(&e) {
                Err(ImportError::Write(e))
            } else {
                Ok(Outcome::Failed(note(e.to_string())))
            }
        };
        let replace = |what: String, other_secret: bool| -> Result<Outcome, ImportError> {
            match write(WriteMode::Replace) {
                Ok(path) => Ok(Outcome::Replaced {
                    note: note(format!(
                        "{what}; replaced by {} (--force){}",
                        path.display(),
                        if other_secret {
                            ""
                        } else {
                            "; its counters were kept, as whether the secret changed is \
                             unknown (if the key was reprogrammed: ykadmin counters reset)"
                        }
                    )),
                    fingerprint,
                    other_secret,
                }),
                Err(e) => failed_write(e),
            }
        };
        let existing = match store.lookup(id) {
            Ok(None) => {
                return match write(WriteMode::CreateNew) {
                    Ok(_) => Ok(Outcome::Imported(fingerprint)),
                    Err(StoreError::Exists { path }) => Ok(Outcome::Failed(note(format!(
                        "AEAD file {} appeared while importing; run the import again",
                        path.display()
                    )))),
                    Err(e) => failed_write(e),
                };
            }
            Ok(Some(existing)) => existing,
            Err(e) if self.force => return replace(e.to_string(), false),
            Err(e) => {
                return Ok(Outcome::Failed(note(format!("{e}; --force replaces it"))));
            }
        };
        match self.same_secret(&existing, kh.value(), &nonce, &aead, &rec.secrets)? {
            Ok(true) => Ok(Outcome::Skipped(Some(existing.fingerprint()))),
            Ok(false) if self.force => replace(
                format!(
                    "the existing AEAD {} held a different secret",
                    existing.path.display()
                ),
                true,
            ),
            Ok(false) => Ok(Outcome::Failed(note(format!(
                "the existing AEAD holds a different secret; --force replaces it ({})",
                existing.path.display()
            )))),
            Err(m) if self.force => replace(m, false),
            Err(m) => Ok(Outcome::Failed(note(format!("{m}; --force replaces it")))),
        }
    }

    /// Whether `existing` holds `secrets`: the AEAD just made, when it was
    /// made the same way, else the secrets wrapped again under the existing
    /// file's key handle and nonce (a file from `yhsm-import-keys
    /// --random-nonce`, say). `Err` with a reason when that cannot be told.
    fn same_secret(
        &self,
        existing: &StoredAead,
        key_handle: KeyHandle,
        nonce: &Nonce,
        aead: &YubiKeyAead,
        secrets: &YubiKeySecrets,
    ) -> Result<Result<bool, String>, ImportError> {
        if existing.key_handle == key_handle && existing.nonce == *nonce {
            return Ok(Ok(existing.aead.0 == aead.0));
        }
        Ok(
            match wrap(self.config, existing.key_handle, &existing.nonce, secrets)? {
                Wrap::Aead(again) => Ok(existing.aead.0 == again.0),
                Wrap::BackendError(m) => Err(format!(
                    "the existing AEAD {} was made under key handle {}, which the backend \
                     cannot wrap under ({m}), so whether it holds the same secret is unknown",
                    existing.path.display(),
                    existing.key_handle
                )),
            },
        )
    }
}

/// Has the daemon wrap `secrets`. One connection per request, as the
/// protocol has it.
fn wrap(
    config: &Config,
    key_handle: KeyHandle,
    nonce: &Nonce,
    secrets: &YubiKeySecrets,
) -> Result<Wrap, ImportError> {
    let plaintext: Zeroizing<[u8; 22]> = secrets.to_plaintext();
    let request = Request::WrapSecrets {
        key_handle: key_handle.0,
        nonce: nonce.0,
        secrets: plaintext,
    };
    match call(&config.socket, ServerUid::ROOT, &request, TIMEOUT) {
        Ok(Response::Wrapped { aead }) => Ok(Wrap::Aead(YubiKeyAead(aead))),
        Ok(Response::Failed {
            status: Status::BackendError,
            message,
        }) => Ok(Wrap::BackendError(message)),
        Ok(Response::Failed { status, message }) => Err(ImportError::Refused {
            socket: config.socket.clone(),
            message: format!("{status}: {message}"),
        }),
        Ok(Response::ProtocolError { message }) => Err(ImportError::Refused {
            socket: config.socket.clone(),
            message: format!("the daemon did not understand: {message}"),
        }),
        Ok(other) => Err(ImportError::Refused {
            socket: config.socket.clone(),
            message: format!("unexpected answer ({})", response_name(&other)),
        }),
        Err(source) => Err(ImportError::Daemon {
            socket: config.socket.clone(),
            config: config.path.clone(),
            source,
        }),
    }
}

/// A short name for an unexpected response (its `Debug` could carry data).
fn response_name(response: &Response) -> &'static str {
    match response {
        Response::Verdict { .. } => "verdict",
        Response::Failed { .. } => "failed",
        Response::ProtocolError { .. } => "protocol-error",
        Response::StatusInfo { .. } => "status-info",
        Response::Decrypted { .. } => "decrypted",
        Response::Consumed { .. } => "consumed",
        Response::Wrapped { .. } => "wrapped",
        Response::Counters { .. } => "counters",
        Response::Merged { .. } => "merged",
        Response::Reset { .. } => "reset",
    }
}

/// For every key one of whose AEAD files was replaced because it held
/// another secret: asks the daemon to start the key's counters afresh,
/// bound to the files that now hold the line's secret (the ones this import
/// wrote or found equal; a file it could not replace keeps the old secret
/// and is left unbound). The AEADs were written first, so between the two
/// an OTP of the new secret is at worst refused, never an old one accepted.
/// Per key: (its line, the note for the report or the failure).
fn reset_replaced(
    config: &Config,
    records: &[YkksmRecord],
    work: &[(usize, usize)],
    results: &[(usize, Outcome)],
) -> Vec<(usize, Result<ImportNote, ImportNote>)> {
    let mut per_record: std::collections::BTreeMap<usize, (bool, Vec<[u8; 20]>)> =
        std::collections::BTreeMap::new();
    for (i, outcome) in results {
        let (r, _) = work[*i];
        let entry = per_record.entry(r).or_default();
        match outcome {
            Outcome::Imported(fp) | Outcome::Skipped(Some(fp)) => entry.1.push(*fp),
            Outcome::Replaced {
                fingerprint,
                other_secret,
                ..
            } => {
                entry.0 |= *other_secret;
                entry.1.push(*fingerprint);
            }
            Outcome::Skipped(None) | Outcome::Failed(_) => {}
        }
    }
    per_record
        .into_iter()
        .filter(|(_, (other_secret, _))| *other_secret)
        .map(|(r, (_, aeads))| {
            let rec = &records[r];
            let id = rec.public_id.as_str().to_owned();
            let note = |reason: String| ImportNote {
                line: rec.line,
                public_id: Some(id.clone()),
                key_handle: None,
                reason,
            };
            let request = Request::CountersReset {
                public_id: id.clone(),
                aeads,
                reason: format!("import-ykksm --force, another secret (line {})", rec.line),
            };
            let result = match call(&config.socket, ServerUid::ROOT, &request, TIMEOUT) {
                Ok(Response::Reset { generation, aeads }) => Ok(note(format!(
                    "another secret: counters reset, generation {generation}, bound to {aeads} AEAD file{}",
                    if aeads == 1 { "" } else { "s" }
                ))),
                Ok(Response::Failed { status, message }) => Err(format!("{status}: {message}")),
                Ok(other) => Err(format!("unexpected answer ({})", response_name(&other))),
                Err(e) => Err(e.to_string()),
            };
            (
                rec.line,
                result.map_err(|m| {
                    note(format!(
                        "the AEAD now holds another secret, but its counters could not be reset \
                         ({m}): the new key's OTPs are refused until `ykadmin counters reset {id}`"
                    ))
                }),
            )
        })
        .collect()
}

/// Whether a write error stops the whole import (the store cannot take
/// files) rather than this one key.
fn stops_everything(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Write { source, .. } if matches!(
            source.kind(),
            io::ErrorKind::StorageFull
                | io::ErrorKind::ReadOnlyFilesystem
                | io::ErrorKind::PermissionDenied
                | io::ErrorKind::QuotaExceeded
        )
    )
}

/// The AEAD directory must exist and take new files.
fn check_aead_dir(dir: &Path) -> Result<(), ImportError> {
    let err = |source| ImportError::AeadDir {
        path: dir.to_path_buf(),
        source,
    };
    if !std::fs::metadata(dir).map_err(err)?.is_dir() {
        return Err(err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    tempfile::Builder::new()
        .prefix(".ykhsm-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    Ok(())
}

fn progress_bar(total: usize, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(total).unwrap_or(u64::MAX)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        ProgressStyle::with_template("importing {bar:40} {pos}/{len} keys, {per_sec}, {eta} left")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_display_names_line_key_and_handle_only() {
        let n = ImportNote {
            line: 7,
            public_id: Some("ccccccdbjrgf".into()),
            key_handle: Some("1".into()),
            reason: "the existing AEAD holds a different secret; --force replaces it".into(),
        };
        assert_eq!(
            n.to_string(),
            "line 7: public id ccccccdbjrgf under key handle 1: the existing AEAD holds a \
             different secret; --force replaces it"
        );
        let bad = ImportNote {
            line: 3,
            public_id: None,
            key_handle: None,
            reason: "aesKey (field 4) is not hex".into(),
        };
        assert_eq!(bad.to_string(), "line 3: aesKey (field 4) is not hex");
    }

    #[test]
    fn summary_is_the_cli_line() {
        let r = ImportReport {
            imported: 3,
            skipped: 2,
            failed: 1,
            ..ImportReport::default()
        };
        assert_eq!(r.summary(), "imported 3, skipped 2, failed 1");
        assert!(!r.is_success());
    }
}
