//! Test support: a temporary installation of ykhsm (keys.json, AEAD store,
//! authfile, state directory, a syslog socket), the real `ykhsmd` binary
//! started on it, and software YubiKeys whose OTPs come from the generator
//! the vector tests check. Shared by the whole-system suites
//! (`tests/system/`), the daemon benchmark and the demo.
//!
//! Every OTP, key and uid an [`Env`] hands out is remembered; when the `Env`
//! is dropped, every log line its daemons wrote (stderr and syslog) is
//! checked for them.
//!
//! **One suite, two backends.** With `YKHSM_TEST_BACKEND=yubihsm` every
//! [`Env`] runs its daemon on the YubiHSM 1 emulator (a pseudo-terminal
//! whose key handle 1 holds the same key as keys.json) instead of keys.json:
//! the same tests, the same AEAD files, the same expected answers.
//! `scripts/test.sh` runs the daemon and PAM suites both ways.
//!
//! The programs under test are the workspace's own, found (and built if
//! missing or stale) in the running test's target directory by
//! [`ykhsmd_bin`], [`ykadmin_bin`] and [`pam_module`] (src/bins.rs).
//!
//! [`postgres::Postgres`]: a PostgreSQL server of the test's own, for the
//! fleet store (ykhsm-fleet, `ykadmin fleet`).

// Its types hold child processes, sockets and the secrets a test used;
// nothing prints them.
#![allow(missing_debug_implementations)]

mod bins;
mod install;
pub mod netns;
pub mod postgres;

pub use bins::{pam_module, ykadmin_bin, ykhsmd_bin};
pub use install::{Enrolled, Installation};
pub use ykhsm_hsm_emu::pty::EmuPty;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ykhsm_core::keyhandle::KeyHandleName;
use ykhsm_core::modhex;
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_core::store::WriteMode;
use ykhsm_hsm_emu::{Emulator, Link};
use ykhsm_proto::{Request, Response, ServerUid, Status, call};
use ykhsm_yubihsm::wire::permission;
use zeroize::Zeroizing;

/// The key-handle key of key handle 1 in every test keys.json (AES-256).
pub const KH1_KEY: &str = "2000200020002000200020002000200020002000200020002000200020002000";

/// Whether this run's daemons use the YubiHSM emulator
/// (`YKHSM_TEST_BACKEND=yubihsm`) instead of keys.json.
pub fn on_hsm() -> bool {
    match std::env::var("YKHSM_TEST_BACKEND").as_deref() {
        Ok("yubihsm") => true,
        Ok("soft") | Err(_) => false,
        Ok(other) => panic!("YKHSM_TEST_BACKEND={other:?}: use \"soft\" or \"yubihsm\""),
    }
}

/// For a test about keys.json itself: true (and a note on stderr) when
/// this run is on the HSM, where there is no keys.json to test.
pub fn keys_json_only(test: &str) -> bool {
    let skip = on_hsm();
    if skip {
        eprintln!("{test}: about keys.json; runs with YKHSM_TEST_BACKEND=soft");
    }
    skip
}

/// An emulated YubiHSM 1 on a pseudo-terminal whose key handle 1 holds
/// [`KH1_KEY`] with the permissions a bastion's HSM has (OTP decode) and
/// those `import`/`generate` use (buffer load, buffer AEAD generate with a
/// user nonce). `lock`: starts locked, unlocked by this master key.
pub fn emulated_hsm(lock: Option<[u8; 32]>) -> EmuPty {
    emulated_hsm_with(BASTION_FLAGS, lock)
}

/// As [`emulated_hsm`], key handle 1 with these permission flags.
pub fn emulated_hsm_with(flags: u32, lock: Option<[u8; 32]>) -> EmuPty {
    emulated_hsm_holding(
        &[(1, KH1_KEY.to_owned())],
        flags,
        lock.map(|k| ykhsm_hsm_emu::UnlockSecret::MasterKey(Zeroizing::new(k))),
    )
}

/// The permissions of a bastion's key handle, and those import uses.
pub const BASTION_FLAGS: u32 = permission::AEAD_YUBIKEY_OTP_DECODE
    | permission::BUFFER_AEAD_GENERATE
    | permission::BUFFER_LOAD
    | permission::USER_NONCE;

/// An emulated YubiHSM 1 holding these key handles (number, key in hex).
pub fn emulated_hsm_holding(
    keys: &[(u32, String)],
    flags: u32,
    lock: Option<ykhsm_hsm_emu::UnlockSecret>,
) -> EmuPty {
    let mut emu = Emulator::new(u64::from_le_bytes(random()));
    for (handle, key) in keys {
        emu.add_key(
            *handle,
            ykhsm_core::KeyHandleKey::new(hex::decode(key).unwrap()).unwrap(),
            flags,
        );
    }
    if let Some(secret) = lock {
        emu.lock_with(secret);
    }
    EmuPty::start(Link::new(emu)).unwrap()
}

/// Random bytes from the OS.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// Waits for `cond` until `deadline`, polling; panics with `what` if it
/// never holds.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Collects syslog datagrams sent to a socket of the test's own.
struct Syslog {
    path: PathBuf,
    /// While true the reader takes nothing (a stuck syslogd): the
    /// socket's queue fills and the daemon's sends block.
    paused: Arc<(Mutex<bool>, Condvar)>,
}

impl Syslog {
    fn start(path: PathBuf, lines: Arc<Mutex<Vec<String>>>) -> Self {
        let sock = UnixDatagram::bind(&path).unwrap();
        let l = lines;
        let paused = Arc::new((Mutex::new(false), Condvar::new()));
        let p = Arc::clone(&paused);
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                {
                    let (flag, cv) = &*p;
                    let mut stopped = flag.lock().unwrap();
                    while *stopped {
                        stopped = cv.wait(stopped).unwrap();
                    }
                }
                let Ok(n) = sock.recv(&mut buf) else { break };
                l.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Self { path, paused }
    }

    fn set_paused(&self, paused: bool) {
        let (flag, cv) = &*self.paused;
        *flag.lock().unwrap() = paused;
        cv.notify_all();
    }
}

/// A temporary ykhsm installation (its files are an [`Installation`]'s,
/// reached through `Deref`: `env.socket`, `env.set_authfile(…)`) with
/// everything a test watches: the log lines of its daemons and the secrets
/// that must not be in them.
pub struct Env {
    files: Installation,
    extra_config: Mutex<String>,
    /// `backend = "yubihsm"` on this device instead of keys.json.
    device: Mutex<Option<PathBuf>>,
    logs: Arc<Mutex<Vec<String>>>,
    secrets: Mutex<Vec<String>>,
    syslog: Syslog,
    /// The emulated HSM of a `YKHSM_TEST_BACKEND=yubihsm` run.
    hsm: Mutex<Option<EmuPty>>,
    /// Environment variables for the daemon (see [`Env::daemon_env`]).
    daemon_env: Mutex<Vec<(String, String)>>,
    /// Environment variables for the daemon and ykadmin alike: the
    /// system's view (its user database) both must share.
    system_env: Mutex<Vec<(String, String)>>,
}

impl Env {
    /// keys.json with key handle 1 (AES-256), an empty AEAD store, an
    /// empty authfile (root, 0644), key_handles = ["1"]; on the emulated
    /// HSM instead of keys.json if this run is (see [`on_hsm`]).
    // Not `Default`: it makes a directory, a socket and maybe an emulator.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let files = Installation::new("ykhsm-test-", KH1_KEY);
        let logs = Arc::new(Mutex::new(Vec::new()));
        let syslog = Syslog::start(files.syslog_socket.clone().unwrap(), Arc::clone(&logs));
        let env = Self {
            files,
            extra_config: Mutex::new(String::new()),
            device: Mutex::new(None),
            logs,
            secrets: Mutex::new(vec![KH1_KEY.to_owned()]),
            syslog,
            hsm: Mutex::new(on_hsm().then(|| emulated_hsm(None))),
            daemon_env: Mutex::new(Vec::new()),
            system_env: Mutex::new(Vec::new()),
        };
        if let Some(hsm) = env.hsm.lock().unwrap().as_ref() {
            *env.device.lock().unwrap() = Some(hsm.path().to_path_buf());
        }
        env.write_config();
        env
    }

    /// Replaces the key-handle keys (pyhsm's keys.json text, `{"1": "hex"}`):
    /// keys.json, or on a `YKHSM_TEST_BACKEND=yubihsm` run a new emulated
    /// HSM holding the same keys (before `start`).
    pub fn set_keys_json(&self, json: &str) {
        fs::write(&self.keys_file, json).unwrap();
        let mut hsm = self.hsm.lock().unwrap();
        if hsm.is_none() {
            return;
        }
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        let keys: Vec<(u32, String)> = map
            .into_iter()
            .map(|(k, v)| (k.parse().unwrap(), v))
            .collect();
        for (_, key) in &keys {
            self.secret(key);
        }
        let device = emulated_hsm_holding(&keys, BASTION_FLAGS, None);
        *self.device.lock().unwrap() = Some(device.path().to_path_buf());
        *hsm = Some(device);
        drop(hsm);
        self.write_config();
    }

    /// Unplugs the emulated HSM of a `YKHSM_TEST_BACKEND=yubihsm` run.
    pub fn unplug_hsm(&self) {
        drop(self.hsm.lock().unwrap().take());
    }

    /// Sets an environment variable for the daemons started from now on
    /// (and `ykhsmd --check` runs).
    pub fn daemon_env(&self, key: &str, value: impl AsRef<std::ffi::OsStr>) {
        push_var(&self.daemon_env, key, value.as_ref());
    }

    /// Sets an environment variable for the daemons and `ykadmin` runs
    /// started from now on: what both see of the system.
    pub fn system_env(&self, key: &str, value: impl AsRef<std::ffi::OsStr>) {
        push_var(&self.system_env, key, value.as_ref());
    }

    /// Every variable a daemon is started with: [`Env::system_env`]'s, then
    /// [`Env::daemon_env`]'s.
    fn daemon_vars(&self) -> Vec<(String, String)> {
        let mut vars = self.system_env.lock().unwrap().clone();
        vars.extend(self.daemon_env.lock().unwrap().iter().cloned());
        vars
    }

    /// Runs the daemons (and ykadmin) under nss_wrapper with the test NSS module
    /// (`nss_alias.c`): the system's users are `root` and `accounts`
    /// (name, uid), and names are aliased as sssd does with
    /// case-insensitive names and a default domain (`ALICE`, `alice@corp`
    /// are `alice`). Before `start`.
    pub fn with_nss(&self, accounts: &[(&str, u32)]) -> Nss {
        Nss::install(self, accounts)
    }

    /// Adds TOML lines to the configuration (before `start`).
    pub fn config(&self, extra: &str) {
        let mut e = self.extra_config.lock().unwrap();
        e.push_str(extra);
        e.push('\n');
        drop(e);
        self.write_config();
    }

    fn write_config(&self) {
        self.files.write_config(
            self.device.lock().unwrap().as_deref(),
            &self.extra_config.lock().unwrap(),
        );
    }

    /// Uses a YubiHSM (here: the emulator's pseudo-terminal) instead of
    /// keys.json; key handle 1 must hold [`KH1_KEY`] there, so the same
    /// AEAD files serve both backends.
    pub fn use_yubihsm(&self, device: &Path) {
        *self.device.lock().unwrap() = Some(device.to_path_buf());
        self.write_config();
    }

    /// Remembers a string that must never appear in a log line.
    pub fn secret(&self, s: &str) {
        self.secrets.lock().unwrap().push(s.to_owned());
    }

    /// A new software YubiKey with random secrets and an AEAD in the store
    /// under key handle directory `kh` (sealed with key handle number
    /// `kh_value`, which need not be in keys.json: see [`Env::key_under`]).
    pub fn key(&self, public_id: &str) -> SoftYubiKey {
        self.key_under(public_id, "1")
    }

    /// As [`Env::key`], in another key handle's directory; the AEAD is
    /// sealed with key handle 1's key but records the directory's number,
    /// so it opens only if that key handle exists in keys.json.
    pub fn key_under(&self, public_id: &str, kh: &str) -> SoftYubiKey {
        let secrets = YubiKeySecrets::new(random(), random());
        self.secret(&hex::encode(secrets.key()));
        self.secret(&hex::encode(secrets.uid()));
        self.secret(&modhex::encode(secrets.key()));
        self.secret(&modhex::encode(secrets.uid()));
        let id = PublicId::parse(public_id).unwrap();
        let name: KeyHandleName = kh.parse().unwrap();
        let aead = self
            .files
            .enroll(&name, &id, &secrets, WriteMode::Replace)
            .aead;
        self.secret(&hex::encode(aead.0));
        SoftYubiKey::new(id, secrets)
    }

    /// Puts `key` (made by another `Env`) into this installation's store
    /// too, under key handle 1: another bastion with the same AEADs.
    pub fn share_key(&self, key: &SoftYubiKey) {
        let name: KeyHandleName = "1".parse().unwrap();
        self.files
            .enroll(&name, key.public_id(), key.secrets(), WriteMode::Replace);
    }

    /// A new software YubiKey that is *not* in the store, and the line
    /// `ykksm-export` prints for it (serial 2198612); its secrets are
    /// remembered.
    pub fn ykksm_key(&self, public_id: &str) -> (String, SoftYubiKey) {
        let key: [u8; 16] = random();
        let uid: [u8; 6] = random();
        self.secret(&hex::encode(key));
        self.secret(&hex::encode(uid));
        let line = format!(
            "2198612,{public_id},{},{},000000000000,2009-12-14T16:40:57,",
            hex::encode(uid),
            hex::encode(key)
        );
        let yk = SoftYubiKey::new(
            PublicId::parse(public_id).unwrap(),
            YubiKeySecrets::new(key, uid),
        );
        (line, yk)
    }

    /// The key's next OTP as typed, remembered as a secret (whole and its
    /// token part).
    pub fn otp(&self, key: &mut SoftYubiKey) -> String {
        let otp = key.next_otp().to_typed_string();
        self.remember_otp(&otp);
        otp.to_string()
    }

    /// Remembers an OTP made elsewhere.
    pub fn remember_otp(&self, otp: &str) {
        self.secret(otp);
        if otp.len() >= 32 {
            self.secret(&otp[otp.len() - 32..]);
        }
    }

    /// Starts the real daemon on this installation and waits until it
    /// answers.
    pub fn start(&self) -> Daemon {
        let d = self.spawn();
        d.wait_ready();
        d
    }

    /// Starts the daemon without waiting.
    pub fn spawn(&self) -> Daemon {
        let mut child = Command::new(ykhsmd_bin())
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.daemon_vars())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::clone(&self.logs);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                logs.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            socket: self.socket.clone(),
            reader: Some(reader),
        }
    }

    /// Runs `ykhsmd --config … [args]` to completion: (exit code, stderr+stdout).
    pub fn run_daemon_cmd(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(ykhsmd_bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(self.daemon_vars())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.logs
            .lock()
            .unwrap()
            .extend(text.lines().map(str::to_owned));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Every log line so far (stderr and syslog of every daemon).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Stops reading the syslog socket, as a stuck syslogd would (the
    /// reader takes at most one more datagram).
    pub fn stop_syslog_reader(&self) {
        self.syslog.set_paused(true);
    }

    /// Reads the syslog socket again.
    pub fn resume_syslog_reader(&self) {
        self.syslog.set_paused(false);
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_for(
            &format!("a log line with {needle:?}"),
            Duration::from_secs(10),
            || self.logs().iter().any(|l| l.contains(needle)),
        );
    }

    /// The counter database.
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("counters.sqlite")
    }
}

impl Deref for Env {
    type Target = Installation;

    fn deref(&self) -> &Installation {
        &self.files
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if thread::panicking() {
            return;
        }
        let logs = self.logs();
        let secrets = self.secrets.lock().unwrap();
        for line in &logs {
            let lower = line.to_ascii_lowercase();
            for s in secrets.iter() {
                assert!(
                    !lower.contains(&s.to_ascii_lowercase()),
                    "a log line contains a secret ({}…): {line}",
                    &s[..s.len().min(6)]
                );
            }
        }
    }
}

/// pam_wrapper makes its working directory as `/tmp/pam.<letter>`, trying
/// letters in turn; two runs starting at the same moment can both miss and
/// fall back to the system's PAM. So the suites run PAM under pam_wrapper
/// (pamtester, sshd's logins) one at a time.
pub fn one_pam_wrapper_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds `key=value` to a list of environment variables (UTF-8 values only).
fn push_var(vars: &Mutex<Vec<(String, String)>>, key: &str, value: &std::ffi::OsStr) {
    let value = value.to_str().unwrap().to_owned();
    vars.lock().unwrap().push((key.to_owned(), value));
}

/// nss_wrapper, from Debian's libnss-wrapper (scripts/install-deps.sh).
pub const NSS_WRAPPER: &str = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so";

/// The system's user database as a daemon of an [`Env`] sees it: nss_wrapper
/// (`LD_PRELOAD`) with a passwd file holding only root, and the test module
/// `nss_alias.c` (compiled here with gcc) answering for `accounts` with
/// sssd-like aliases. Real NSS calls: the daemon's `getpwnam_r` and
/// `getpwuid_r` go through glibc's interposed symbols, as with sssd.
pub struct Nss {
    accounts: PathBuf,
    fail: PathBuf,
}

impl Nss {
    fn install(env: &Env, accounts: &[(&str, u32)]) -> Self {
        assert!(
            Path::new(NSS_WRAPPER).exists(),
            "{NSS_WRAPPER} missing: apt-get install libnss-wrapper (scripts/install-deps.sh)"
        );
        let dir = env.dir.path().join("nss");
        fs::create_dir_all(&dir).unwrap();
        let module = dir.join("libnss_ykalias.so");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/src/nss_alias.c");
        let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_owned());
        let out = Command::new(&cc)
            .args([
                "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&module)
            .arg(source)
            .output()
            .unwrap_or_else(|e| panic!("{cc}: {e}"));
        assert!(
            out.status.success(),
            "{cc} {source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let passwd = dir.join("passwd");
        fs::write(&passwd, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let group = dir.join("group");
        fs::write(&group, "root:x:0:\n").unwrap();
        let nss = Self {
            accounts: dir.join("accounts"),
            fail: dir.join("fail"),
        };
        nss.set_accounts(accounts);
        env.system_env("LD_PRELOAD", NSS_WRAPPER);
        env.system_env("NSS_WRAPPER_PASSWD", &passwd);
        env.system_env("NSS_WRAPPER_GROUP", &group);
        env.system_env("NSS_WRAPPER_MODULE_SO_PATH", &module);
        env.system_env("NSS_WRAPPER_MODULE_FN_PREFIX", "ykalias");
        env.system_env("YKALIAS_PASSWD", &nss.accounts);
        env.system_env("YKALIAS_FAIL", &nss.fail);
        nss
    }

    /// Replaces the accounts (name, uid) the module answers for; the
    /// daemon sees the change at its next lookup.
    pub fn set_accounts(&self, accounts: &[(&str, u32)]) {
        let text: String = accounts
            .iter()
            .map(|(name, uid)| format!("{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"))
            .collect();
        let tmp = self.accounts.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.accounts).unwrap();
    }

    /// From now on every lookup fails (`NSS_STATUS_UNAVAIL`, `EIO`), as
    /// with sssd stopped; `false` ends that.
    pub fn set_failing(&self, failing: bool) {
        if failing {
            fs::write(&self.fail, "").unwrap();
        } else {
            let _ = fs::remove_file(&self.fail);
        }
    }
}

/// What a finished `ykadmin` printed, and its exit code.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ykadmin --config <env's> args…` with no input.
pub fn ykadmin(env: &Env, args: &[&str]) -> Out {
    ykadmin_with_input(env, args, "")
}

/// Runs `ykadmin --config <env's> args…` with `input` on its standard input
/// (not a terminal). What it printed goes into the `Env`'s logs, so it is
/// checked for secrets too.
pub fn ykadmin_with_input(env: &Env, args: &[&str], input: &str) -> Out {
    use std::io::Write;
    let mut child = Command::new(ykadmin_bin())
        .envs(env.system_env.lock().unwrap().iter().cloned())
        .arg("--config")
        .arg(&env.config_path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let o = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    env.logs
        .lock()
        .unwrap()
        .extend(o.stdout.lines().chain(o.stderr.lines()).map(str::to_owned));
    o
}

/// The usual installation: one key, `ccccccdbjrgf`, on alice's line, and
/// the daemon running on it. (Bound as `let (env, key, d) = …`, the daemon
/// stops before the `Env` checks the logs.)
pub fn alice() -> (Env, SoftYubiKey, Daemon) {
    let env = Env::new();
    let key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    (env, key, d)
}

/// A running `ykhsmd`. Stopped with SIGTERM (then SIGKILL) on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    reader: Option<thread::JoinHandle<()>>,
}

impl Daemon {
    /// A daemon started elsewhere (`child`: ykhsmd, or a command running
    /// it, with its output wherever the caller sent it), serving `socket`.
    pub fn new(child: Child, socket: &Path) -> Self {
        Self {
            child,
            socket: socket.to_path_buf(),
            reader: None,
        }
    }

    /// Waits until the daemon answers a status request.
    pub fn wait_ready(&self) {
        wait_for("ykhsmd to answer", Duration::from_secs(20), || {
            matches!(
                call(
                    &self.socket,
                    ServerUid::ROOT,
                    &Request::Status,
                    Duration::from_secs(2)
                ),
                Ok(Response::StatusInfo { .. })
            )
        });
    }

    /// One request.
    pub fn request(&self, req: &Request) -> Response {
        call(&self.socket, ServerUid::ROOT, req, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{req:?}: {e}"))
    }

    /// Verifies and returns the status word.
    pub fn verify(&self, user: &str, otp: &str) -> Status {
        match self.request(&Request::Verify {
            user: user.into(),
            otp: Zeroizing::new(otp.into()),
        }) {
            Response::Verdict { status } => status,
            other => panic!("verify answered {other:?}"),
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit status.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return st.code();
            }
            if Instant::now() > end {
                self.kill_hard();
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(i32::try_from(self.child.id()).unwrap()), sig).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// A syslog socket a test binds itself at the configured `syslog_socket`
/// path (see [`Env::bind_syslog`]): a syslogd that starts late, or one that
/// replaced the socket. Its datagrams are kept apart (so a test can tell
/// which socket got a line) and go to the [`Env`]'s logs too.
pub struct SyslogSocket {
    lines: Arc<Mutex<Vec<String>>>,
    sock: UnixDatagram,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl SyslogSocket {
    /// The datagrams this socket received.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Closes the socket (a syslogd that exits): the daemon's next send to
    /// it fails. The path stays, as a dead syslogd leaves it.
    pub fn close(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
    }
}

impl Drop for SyslogSocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

impl Env {
    /// The configured `syslog_socket`.
    pub fn syslog_path(&self) -> PathBuf {
        self.syslog.path.clone()
    }

    /// Removes the syslog socket's path, as if no syslogd had made it yet.
    /// (The harness's own socket stays open, reachable by no path.)
    pub fn unlink_syslog(&self) {
        fs::remove_file(&self.syslog.path).unwrap();
    }

    /// Binds a new syslog socket at the configured path, replacing
    /// whatever is there (unlink, then bind: what syslogd does).
    pub fn bind_syslog(&self) -> SyslogSocket {
        let path = &self.syslog.path;
        let _ = fs::remove_file(path);
        let sock = UnixDatagram::bind(path).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (own, all, halt) = (
            Arc::clone(&lines),
            Arc::clone(&self.logs),
            Arc::clone(&stop),
        );
        let reading = sock.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // Ends when `close` shuts the socket down (recv then returns 0);
            // the socket is closed when this thread drops it.
            while let Ok(n) = reading.recv(&mut buf) {
                if n == 0 && halt.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                own.lock().unwrap().push(line.clone());
                all.lock().unwrap().push(line);
            }
        });
        SyslogSocket {
            lines,
            sock,
            stop,
            reader: Some(reader),
        }
    }

    /// Starts the daemon as systemd would with `StandardError=journal`:
    /// its stderr is a pipe whose device and inode numbers are in
    /// `JOURNAL_STREAM` (what the pipe carries goes to the logs, as with
    /// [`Env::spawn`]). Waits until it answers.
    pub fn start_as_journal(&self) -> Daemon {
        let d = self.spawn_with_stderr_stream(true);
        d.wait_ready();
        d
    }

    /// As [`Env::start_as_journal`], with `JOURNAL_STREAM` naming another
    /// stream than the daemon's stderr (a daemon started by hand from a
    /// shell that systemd started).
    pub fn start_with_stale_journal_stream(&self) -> Daemon {
        let d = self.spawn_with_stderr_stream(false);
        d.wait_ready();
        d
    }

    fn spawn_with_stderr_stream(&self, matching: bool) -> Daemon {
        use std::os::unix::fs::MetadataExt;
        let (read, write) = nix::unistd::pipe().unwrap();
        let meta = File::from(write.try_clone().unwrap()).metadata().unwrap();
        let ino = if matching { meta.ino() } else { meta.ino() + 1 };
        let child = Command::new(ykhsmd_bin())
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.daemon_vars())
            .env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(write))
            .spawn()
            .unwrap();
        // The child has the write end; ours was closed with the Command.
        let logs = Arc::clone(&self.logs);
        let reader = thread::spawn(move || {
            for line in BufReader::new(File::from(read)).lines() {
                let Ok(line) = line else { break };
                logs.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            socket: self.socket.clone(),
            reader: Some(reader),
        }
    }
}
