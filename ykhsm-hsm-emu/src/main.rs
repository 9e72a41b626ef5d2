//! `ykhsm-hsm-emu`: the YubiHSM 1 emulator on a pseudo-terminal, for manual
//! tests and benchmarks (give ykhsmd or ykadmin the printed path, or the
//! `--link`, as the device).
//!
//! ```text
//! ykhsm-hsm-emu --keys FILE [--lock-master-key HEX] [--link PATH] [--seed N] [--ignore-stdin]
//! ```
//!
//! It prints the terminal's path on stdout (one line), then serves until
//! SIGTERM or SIGINT, or until stdin is closed (so a test that dies takes it
//! along), and removes its `--link` on the way out.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use zeroize::Zeroizing;

use ykhsm_core::KeyHandleKey;
use ykhsm_core::keys_file::KeysFile;
use ykhsm_hsm_emu::pty::EmuPty;
use ykhsm_hsm_emu::{Emulator, Link, UnlockSecret};
use ykhsm_yubihsm::wire::{MAX_KEY_SIZE, permission};

/// The permissions every key handle of `--keys` gets: OTP decode, and
/// buffer AEAD generate with a user nonce (what ykhsmd and `ykadmin import`
/// use).
const FLAGS: u32 = permission::AEAD_YUBIKEY_OTP_DECODE
    | permission::BUFFER_AEAD_GENERATE
    | permission::BUFFER_LOAD
    | permission::USER_NONCE;

/// How often the wait looks whether the emulator thread is still serving.
const CHECK_MS: u16 = 500;

/// A YubiHSM 1 emulator on a pseudo-terminal (test support).
///
/// Prints the terminal's path on stdout, then serves until SIGTERM or
/// SIGINT, or until stdin is closed.
#[derive(Debug, Parser)]
#[command(name = "ykhsm-hsm-emu", version)]
struct Args {
    /// pyhsm keys.json: {"<decimal key handle>": "<hex AES key of 16, 24 or
    /// 32 bytes>"}. Each key handle may decode OTPs and make buffer AEADs
    /// with a user nonce.
    #[arg(long, value_name = "FILE")]
    keys: PathBuf,
    /// Start locked; YSM_KEY_STORE_DECRYPT with this master key (hex, at most
    /// 32 bytes, zero padded) unlocks. Visible to ps: test keys only.
    #[arg(long, value_name = "HEX", value_parser = parse_master_key)]
    lock_master_key: Option<MasterKey>,
    /// Also make a symbolic link PATH to the terminal (replacing a symbolic
    /// link already there, refusing anything else); removed on exit.
    #[arg(long, value_name = "PATH")]
    link: Option<PathBuf>,
    /// Seed of the system uid.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Do not watch stdin: serve until a signal only (for running in the
    /// background with stdin on /dev/null).
    #[arg(long)]
    ignore_stdin: bool,
}

/// The `--lock-master-key`, zero padded to 32 bytes; wiped on drop.
#[derive(Clone)]
struct MasterKey(Zeroizing<[u8; MAX_KEY_SIZE]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn parse_master_key(hex_key: &str) -> Result<MasterKey, String> {
    let digits = hex_key.len();
    if digits == 0 || !digits.is_multiple_of(2) || digits > 2 * MAX_KEY_SIZE {
        return Err(format!(
            "expected an even number of hex digits, from 2 to {} ({digits} given)",
            2 * MAX_KEY_SIZE
        ));
    }
    let mut key = Zeroizing::new([0u8; MAX_KEY_SIZE]);
    let dst = key
        .get_mut(..digits / 2)
        .ok_or_else(|| "the key is too long".to_owned())?;
    hex::decode_to_slice(hex_key, dst).map_err(|_| "not hex".to_owned())?;
    Ok(MasterKey(key))
}

/// The keys of a keys.json, checked by ykhsm's own loader ([`KeysFile`]:
/// decimal key handles, 16/24/32-byte hex keys, no duplicates) and then
/// taken from the same bytes, since the loader only lends its keys.
fn load_keys(path: &Path) -> Result<Vec<(u32, KeyHandleKey)>, String> {
    let bytes =
        Zeroizing::new(fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?);
    let checked = KeysFile::parse(path, &bytes).map_err(|e| e.to_string())?;
    let bad = || format!("{}: not a keys.json object", path.display());
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let mut keys = Vec::with_capacity(map.len());
    for (name, value) in map {
        let serde_json::Value::String(hex_key) = value else {
            return Err(bad());
        };
        let hex_key = Zeroizing::new(hex_key);
        let handle: u32 = name.parse().map_err(|_| bad())?;
        let mut raw = Zeroizing::new(vec![0u8; hex_key.len() / 2]);
        hex::decode_to_slice(hex_key.as_bytes(), &mut raw[..]).map_err(|_| bad())?;
        let key = KeyHandleKey::new(std::mem::take(&mut *raw)).ok_or_else(bad)?;
        keys.push((handle, key));
    }
    if keys.len() != checked.key_handles().count() {
        return Err(bad());
    }
    Ok(keys)
}

/// `--link`: removed on drop if it still points at the terminal.
#[derive(Debug)]
struct Symlink {
    link: PathBuf,
    target: PathBuf,
}

impl Symlink {
    fn create(link: &Path, target: &Path) -> Result<Self, String> {
        let what = |e: io::Error| {
            format!(
                "cannot link {} to {}: {e}",
                link.display(),
                target.display()
            )
        };
        match fs::symlink_metadata(link) {
            Ok(meta) if meta.file_type().is_symlink() => fs::remove_file(link).map_err(what)?,
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a symbolic link; not replacing it",
                    link.display()
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(what(e)),
        }
        std::os::unix::fs::symlink(target, link).map_err(what)?;
        Ok(Self {
            link: link.to_owned(),
            target: target.to_owned(),
        })
    }
}

impl Drop for Symlink {
    fn drop(&mut self) {
        if fs::read_link(&self.link).is_ok_and(|t| t == self.target) {
            let _ = fs::remove_file(&self.link);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ykhsm-hsm-emu: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    // Block the signals before the serving thread starts, so that every
    // thread inherits the mask and they only arrive through the signalfd.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| format!("cannot block SIGTERM and SIGINT: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot make a signalfd: {e}"))?;

    let mut emu = Emulator::new(args.seed);
    for (handle, key) in load_keys(&args.keys)? {
        emu.add_key(handle, key, FLAGS);
    }
    if let Some(MasterKey(key)) = args.lock_master_key {
        emu.lock_with(UnlockSecret::MasterKey(key));
    }
    let pty =
        EmuPty::start(Link::new(emu)).map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?;
    let _link = match &args.link {
        Some(link) => Some(Symlink::create(link, pty.path())?),
        None => None,
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", pty.path().display())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(out);
    serve_until_told(&signals, !args.ignore_stdin, &pty)
}

/// Waits for SIGTERM/SIGINT or the end of stdin (when watched), while the
/// pty thread serves.
fn serve_until_told(signals: &SignalFd, watch_stdin: bool, pty: &EmuPty) -> Result<(), String> {
    let stdin = io::stdin();
    let mut sink = [0u8; 512];
    loop {
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if watch_stdin {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(CHECK_MS)) {
            Ok(0) | Err(Errno::EINTR) => {
                if pty.is_gone() {
                    return Err("the emulator stopped serving".to_owned());
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let fired = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        if fds.first().is_some_and(fired) {
            return Ok(());
        }
        if fds.get(1).is_some_and(fired) {
            // Anything typed is ignored; end of file (or an error) ends.
            match stdin.lock().read(&mut sink) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }
}
