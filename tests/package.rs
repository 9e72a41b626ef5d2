//! The Debian package as an operator meets it (issue 13): built with
//! `packaging/build-deb`, installed with `apt-get install ./ykhsm_*.deb`,
//! configured, used for logins through pamtester and a real sshd, removed,
//! reinstalled, purged.
//!
//! Nothing under test comes from the build tree: `/usr/sbin/ykadmin`, the
//! daemon started the way the installed unit's `ExecStartPre=` and
//! `ExecStart=` say (CI has no systemd as PID 1), `/etc/ykhsm/ykhsmd.toml`,
//! `pam_ykhsm.so` found by name in the system's module directory, the
//! profile enabled with `pam-auth-update --enable ykhsm` into Debian's own
//! common-auth, sshd's own `/etc/pam.d/sshd` and the installed example
//! `sshd_config.d/ykhsm.conf`. The test brings only its YubiKey (the
//! software one of ykhsm-core) and a user.
//!
//! It changes the machine: a package, a user, /etc/pam.d through
//! pam-auth-update, /etc/ykhsm, /etc/yubikeys, /var/lib/ykhsm, the AEAD
//! store. So it runs only as root, refuses to start where any of these
//! already holds something, is one test (the steps depend on each other),
//! and [`Machine`] puts everything back whatever happens. Ignored by
//! default; `scripts/test.sh` runs it after the other suites.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use ykhsm_core::modhex;
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;

/// The test's login user, made with useradd and removed again.
const USER: &str = "ykhsmpkg";
/// A PAM service with no file in /etc/pam.d: PAM reads `other`, which on
/// Debian is `@include common-auth` (and the other three common files).
const PAM_SERVICE: &str = "ykhsm-pkgtest";
/// What the package installs, as the operator's documents name it.
const YKADMIN: &str = "/usr/sbin/ykadmin";
const YKHSMD: &str = "/usr/sbin/ykhsmd";
const MODULE: &str = "/lib/x86_64-linux-gnu/security/pam_ykhsm.so";
const UNIT: &str = "/usr/lib/systemd/system/ykhsmd.service";
const CONFIG: &str = "/etc/ykhsm/ykhsmd.toml";
const PROFILE: &str = "/usr/share/pam-configs/ykhsm";
const SSHD_EXAMPLE: &str = "/usr/share/doc/ykhsm/examples/sshd_config.d/ykhsm.conf";
/// The interface's defaults, which the shipped config keeps.
const KEYS_FILE: &str = "/etc/ykhsm/keys.json";
const AUTHFILE: &str = "/etc/yubikeys";
const SOCKET: &str = "/run/ykhsm/ykhsmd.sock";
const STATE_DIR: &str = "/var/lib/ykhsm";
const AEAD_DIR: &str = "/var/cache/yubikey-ksm/aeads";
/// What the test may leave behind and so takes away at the end: each must
/// be absent when it starts (an operator's installation is never touched).
const OPERATOR_STATE: [&str; 8] = [
    "/etc/ykhsm",
    AUTHFILE,
    "/etc/yubikeys.lock",
    STATE_DIR,
    "/var/cache/yubikey-ksm",
    "/run/ykhsm",
    WANTS_LINK,
    MASK_LINK,
];
/// The unit enabled (deb-systemd-helper, in the postinst).
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/ykhsmd.service";
/// The unit masked while the package is removed but not purged.
const MASK_LINK: &str = "/etc/systemd/system/ykhsmd.service";
/// What pam-auth-update writes: put back byte for byte at the end.
const PAM_FILES: [&str; 2] = ["/etc/pam.d", "/var/lib/pam"];
/// The pages man(1) formats into man-db's cache when the test reads them
/// (dpkg does not know them, so purge leaves them).
const MAN_CACHE: [&str; 4] = [
    "/var/cache/man/cat8/ykhsmd.8.gz",
    "/var/cache/man/cat8/ykadmin.8.gz",
    "/var/cache/man/cat8/pam_ykhsm.8.gz",
    "/var/cache/man/cat5/ykhsmd.toml.5.gz",
];

const WAIT: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, which must succeed; its standard output.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {WAIT:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The state of package `ykhsm` as dpkg has it ("" when unknown to dpkg).
fn dpkg_status() -> String {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "ykhsm"]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under the PAM directories pam-auth-update writes, with its
/// bytes and mode.
fn pam_snapshot() -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut files = Vec::new();
    for dir in PAM_FILES {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_file() {
                files.push((path.clone(), fs::read(&path).unwrap(), meta.mode()));
            }
        }
    }
    files.sort();
    files
}

/// The machine this test borrows. [`Machine::claim`] refuses an
/// installation it could damage; dropping it purges the package, puts the
/// PAM files back, and removes the user and what the test left.
struct Machine {
    pam: Vec<(PathBuf, Vec<u8>, u32)>,
    /// The entries of [`MAN_CACHE`] that were not there before.
    man_cache: Vec<&'static str>,
}

impl Machine {
    fn claim() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the package test installs a package and edits /etc/pam.d: run it as root"
        );
        let status = dpkg_status();
        assert!(
            status.is_empty() || status.contains("not-installed"),
            "ykhsm is on this machine ({status}): this test installs and purges it. \
             If it is left from an earlier run: apt-get purge ykhsm"
        );
        for path in OPERATOR_STATE {
            assert!(
                fs::symlink_metadata(path).is_err(),
                "{path} exists: this test would remove it at the end (an operator's ykhsm state?)"
            );
        }
        assert!(
            !Path::new(&format!("/etc/pam.d/{PAM_SERVICE}")).exists(),
            "/etc/pam.d/{PAM_SERVICE} exists: the test's PAM service must be `other`'s"
        );
        let _ = run(Command::new("userdel").args(["-r", USER]));
        Self {
            pam: pam_snapshot(),
            man_cache: MAN_CACHE
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect(),
        }
    }

    /// The files of /etc/pam.d (the PAM stack) that differ from before
    /// the test, by name. (/var/lib/pam is pam-auth-update's bookkeeping:
    /// it records there that it has seen the profile.)
    fn pam_stack_changes(&self) -> Vec<PathBuf> {
        let now = pam_snapshot();
        let stack = |files: &[(PathBuf, Vec<u8>, u32)]| -> Vec<(PathBuf, Vec<u8>, u32)> {
            files
                .iter()
                .filter(|(p, _, _)| p.starts_with("/etc/pam.d"))
                .cloned()
                .collect()
        };
        let (before, now) = (stack(&self.pam), stack(&now));
        let mut changed: Vec<PathBuf> = now
            .iter()
            .filter(|f| !before.contains(f))
            .chain(before.iter().filter(|f| !now.contains(f)))
            .map(|(p, _, _)| p.clone())
            .collect();
        changed.dedup();
        changed
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !dpkg_status().is_empty() && !dpkg_status().contains("not-installed") {
            let out = apt(&["purge", "-y", "ykhsm"]);
            if !out.status.success() {
                eprintln!("cleanup: apt-get purge ykhsm: {}", text(&out));
            }
        }
        let before: Vec<&PathBuf> = self.pam.iter().map(|(p, _, _)| p).collect();
        for (path, _, _) in pam_snapshot() {
            if !before.contains(&&path) {
                eprintln!("cleanup: removing {}", path.display());
                let _ = fs::remove_file(&path);
            }
        }
        for (path, bytes, mode) in &self.pam {
            if fs::read(path).ok().as_deref() != Some(bytes.as_slice()) {
                eprintln!("cleanup: restoring {}", path.display());
                let _ = fs::write(path, bytes);
            }
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(*mode));
        }
        for path in OPERATOR_STATE {
            let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
        }
        for path in &self.man_cache {
            let _ = fs::remove_file(path);
        }
        let _ = run(Command::new("userdel").args(["-r", USER]));
    }
}

fn apt(args: &[&str]) -> Output {
    run(Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null()))
}

/// `apt-get ARGS`, which must succeed without an error from one of the
/// package's maintainer scripts (a shell error names the script: dpkg
/// would not fail for one in a line that is not the last).
fn apt_ok(args: &[&str]) -> String {
    let out = apt(args);
    let said = text(&out);
    assert!(out.status.success(), "apt-get {args:?}: {said}");
    for line in said.lines() {
        assert!(
            !line.contains("/var/lib/dpkg/info/ykhsm.") && !line.contains("dpkg: error"),
            "apt-get {args:?}: a maintainer script failed: {line}\n{said}"
        );
    }
    said
}

/// The workspace root (for packaging/build-deb and the unit to compare).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the .deb with packaging/build-deb every time: the release build
/// and cargo-deb are quick when nothing changed, and an old .deb is never
/// tested by mistake.
fn build_deb() -> PathBuf {
    let out = run(Command::new(workspace().join("packaging/build-deb"))
        .current_dir(workspace())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit()));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "packaging/build-deb: {said}");
    let last = said.lines().last().unwrap_or_default();
    let deb = workspace().join(last);
    assert!(
        deb.is_file() && last.ends_with("_amd64.deb") && last.contains("debian/ykhsm_"),
        "packaging/build-deb's last line should be the .deb: {said}"
    );
    deb
}

/// A path the package installs: a regular file (not a link), root's, with
/// this mode.
fn assert_installed(path: &str, mode: u32) {
    assert_root_owned(path, false, mode);
}

/// A directory root's and not writable by group or others (what the
/// daemon demands of its directories), with this mode.
fn assert_dir(path: &str, mode: u32) {
    assert_root_owned(path, true, mode);
}

fn assert_root_owned(path: &str, dir: bool, mode: u32) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let kind = if dir { "directory" } else { "regular file" };
    assert!(
        if dir { meta.is_dir() } else { meta.is_file() },
        "{path} is not a {kind}"
    );
    assert_eq!(
        (
            meta.uid(),
            meta.gid(),
            format!("{:04o}", meta.mode() & 0o7777)
        ),
        (0, 0, format!("{mode:04o}")),
        "{path}: owner, group, mode"
    );
}

/// A gzip file made with `gzip -9n`: no file name, no time stamp.
fn assert_gzip_n(path: &str) {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..3], &[0x1f, 0x8b, 8], "{path}: not gzip");
    assert_eq!(bytes[3] & 0x08, 0, "{path}: gzip header holds a file name");
    assert_eq!(
        &bytes[4..8],
        &[0, 0, 0, 0],
        "{path}: gzip header holds a time"
    );
}

/// Everything the package installs, where Debian and the docs say, with
/// its owner and mode; the directories the daemon needs; no keys.
fn check_installed_files() {
    assert_installed(YKHSMD, 0o755);
    assert_installed(YKADMIN, 0o755);
    assert_installed(MODULE, 0o644);
    let elf = fs::read(MODULE).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "{MODULE}");
    assert_installed(UNIT, 0o644);
    assert_eq!(
        fs::read_to_string(UNIT).unwrap(),
        fs::read_to_string(workspace().join("packaging/ykhsmd.service")).unwrap(),
        "the installed unit is packaging/ykhsmd.service"
    );
    assert_installed(CONFIG, 0o644);
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "ykhsm"]));
    assert!(
        conffiles.contains(CONFIG),
        "{CONFIG} is a conffile: {conffiles}"
    );
    assert_installed(PROFILE, 0o644);
    let profile = fs::read_to_string(PROFILE).unwrap();
    assert!(
        profile.lines().any(|l| l == "Default: no"),
        "enabling a second factor must be a decision: {profile}"
    );
    assert!(
        !profile.lines().any(|l| l.starts_with('#')),
        "pam-auth-update has no comments: {profile}"
    );
    for page in [
        "/usr/share/man/man8/ykhsmd.8.gz",
        "/usr/share/man/man8/ykadmin.8.gz",
        "/usr/share/man/man8/pam_ykhsm.8.gz",
        "/usr/share/man/man5/ykhsmd.toml.5.gz",
        "/usr/share/doc/ykhsm/changelog.gz",
    ] {
        assert_installed(page, 0o644);
        assert_gzip_n(page);
    }
    for file in [
        "/usr/share/bash-completion/completions/ykadmin",
        "/usr/share/zsh/vendor-completions/_ykadmin",
        "/usr/share/fish/vendor_completions.d/ykadmin.fish",
        SSHD_EXAMPLE,
        "/usr/share/doc/ykhsm/examples/pam.d/sshd",
        "/usr/share/doc/ykhsm/examples/pam.d/sshd-group-rollout",
        "/usr/share/doc/ykhsm/examples/pam.d/su",
        "/usr/share/doc/ykhsm/examples/pam.d/sudo",
        "/usr/share/doc/ykhsm/examples/systemd/ykhsm-metrics.service",
        "/usr/share/doc/ykhsm/examples/systemd/ykhsm-metrics.timer",
        "/usr/share/doc/ykhsm/copyright",
    ] {
        assert_installed(file, 0o644);
    }
    assert!(
        fs::read_to_string("/usr/share/zsh/vendor-completions/_ykadmin")
            .unwrap()
            .starts_with("#compdef ykadmin")
    );
    assert!(
        fs::read_to_string("/usr/share/fish/vendor_completions.d/ykadmin.fish")
            .unwrap()
            .contains("complete -c ykadmin")
    );
    // Made by the postinst, as the daemon demands them.
    assert_dir("/etc/ykhsm", 0o755);
    assert_dir(AEAD_DIR, 0o755);
    assert_dir(STATE_DIR, 0o700);
    // An empty authfile, so that the daemon can start before anyone is
    // enrolled.
    assert_installed(AUTHFILE, 0o644);
    assert_eq!(fs::read(AUTHFILE).unwrap(), b"", "{AUTHFILE} after install");
    // No key is shipped: the operator makes keys.json.
    assert!(!Path::new(KEYS_FILE).exists(), "{KEYS_FILE} shipped");
    let listed = ok(Command::new("dpkg").args(["-L", "ykhsm"]));
    assert!(!listed.contains("keys.json"), "{listed}");
    // The files on disk are the package's (dpkg's md5sums).
    let verify = ok(Command::new("dpkg").args(["--verify", "ykhsm"]));
    assert!(verify.is_empty(), "dpkg --verify ykhsm: {verify}");
}

/// man(1) finds and renders each page by name, without a warning.
fn check_man_pages() {
    for (section, page) in [
        ("8", "ykhsmd"),
        ("8", "ykadmin"),
        ("8", "pam_ykhsm"),
        ("5", "ykhsmd.toml"),
    ] {
        let out = run(Command::new("man")
            .args(["--warnings", section, page])
            .env("MANWIDTH", "80")
            .env_remove("MAN_KEEP_FORMATTING"));
        let shown = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && shown.contains("NAME") && shown.contains(page),
            "man {section} {page}: {}",
            text(&out)
        );
        assert!(
            warnings.trim().is_empty(),
            "man {section} {page} warns: {warnings}"
        );
    }
}

/// `ykadmin <TAB>` in bash: bash-completion finds the installed file by
/// the command's name and it offers the subcommands.
fn check_bash_completion() {
    let script = "source /usr/share/bash-completion/bash_completion
        __load_completion ykadmin || exit 3
        COMP_WORDS=(ykadmin ''); COMP_CWORD=1; COMP_LINE='ykadmin '; COMP_POINT=8
        _ykadmin ykadmin '' ykadmin
        printf '%s\\n' \"${COMPREPLY[@]}\"";
    let offered = ok(Command::new("bash").args(["-c", script]));
    for sub in [
        "import-ykksm",
        "enroll",
        "revoke",
        "verify",
        "status",
        "counters",
    ] {
        assert!(
            offered.lines().any(|l| l == sub),
            "`ykadmin <TAB>` does not offer {sub}: {offered}"
        );
    }
}

/// The unit as installed: `systemd-analyze verify` (with the binaries and
/// man pages it names now on disk) says nothing.
fn check_unit() {
    let out = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify {UNIT}: {}",
        text(&out)
    );
}

/// One `Key=` line of the installed unit's [Service] section, split into
/// words. The test starts the daemon by these lines, not by a copy.
fn unit_command(key: &str) -> Vec<String> {
    let unit = fs::read_to_string(UNIT).unwrap();
    let mut in_service = false;
    let mut found = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && let Some(value) = line.strip_prefix(&format!("{key}=")) {
            found.push(value.to_owned());
        }
    }
    assert_eq!(found.len(), 1, "{UNIT}: one {key}= line: {found:?}");
    let command = &found[0];
    // Quotes, specifiers, variables and systemd's prefixes (-@:+!) are not
    // read here: if the unit uses them, this test must learn them.
    assert!(
        !command.contains(['"', '\'', '%', '$', '\\'])
            && !command.starts_with(['-', '@', ':', '+', '!']),
        "{key}={command}: needs systemd's command-line parsing"
    );
    command.split_whitespace().map(str::to_owned).collect()
}

/// Whether a binary implements sd_notify (reads `NOTIFY_SOCKET`).
fn speaks_sd_notify(binary: &str) -> bool {
    let bytes = fs::read(binary).unwrap();
    bytes.windows(13).any(|w| w == b"NOTIFY_SOCKET")
}

/// The installed daemon, started as systemd starts the unit.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// `ExecStartPre=` (must pass), then `ExecStart=`; ready when it says
    /// READY=1 on `NOTIFY_SOCKET` (Type=notify), or, for a daemon without
    /// sd_notify, when the socket answers.
    fn start(dir: &Path) -> Self {
        let pre = unit_command("ExecStartPre");
        let out = run(Command::new(&pre[0]).args(&pre[1..]));
        assert!(out.status.success(), "ExecStartPre {pre:?}: {}", text(&out));
        let start = unit_command("ExecStart");
        assert_eq!(start[0], YKHSMD, "ExecStart runs the installed daemon");
        let notify_path = dir.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(WAIT)).unwrap();
        let log = dir.join("ykhsmd.log");
        let child = Command::new(&start[0])
            .args(&start[1..])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{start:?}: {e}"));
        let daemon = Self { child, log };
        if speaks_sd_notify(YKHSMD) {
            let mut buf = [0u8; 4096];
            loop {
                let n = notify.recv(&mut buf).unwrap_or_else(|e| {
                    panic!(
                        "no READY=1 from ykhsmd (Type=notify): {e}; log: {}",
                        daemon.log_text()
                    )
                });
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    break;
                }
            }
            assert!(
                UnixStream::connect(SOCKET).is_ok(),
                "READY=1 before the socket listens"
            );
        } else {
            eprintln!(
                "note: {YKHSMD} does not implement sd_notify yet (Type=notify needs it): waiting for the socket"
            );
            wait_for("the daemon's socket", || {
                UnixStream::connect(SOCKET).is_ok()
            });
        }
        daemon
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `systemctl stop`: SIGTERM, and a clean exit.
    fn stop(mut self) -> String {
        kill(
            Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            Signal::SIGTERM,
        )
        .unwrap();
        let status = wait_exit(&mut self.child);
        assert!(
            status.success(),
            "ykhsmd on SIGTERM: {status}; log: {}",
            self.log_text()
        );
        self.log_text()
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < end, "child {} did not exit", child.id());
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's YubiKey and keys.json for it.
struct YubiKey {
    key: SoftYubiKey,
    /// Every OTP and secret handed out, to look for in the logs.
    secrets: Vec<String>,
}

impl YubiKey {
    /// A new key with a random public id `cccccc…`, its `ykksm-export`
    /// line, and keys.json with a new random key for key handle 1 (root's,
    /// 0600, as the shipped ykhsmd.toml's header tells the operator).
    fn new() -> (Self, String) {
        let mut id = [0u8; 6];
        id[3..].copy_from_slice(&random::<3>());
        let public_id = modhex::encode(&id);
        let aes: [u8; 16] = random();
        let uid: [u8; 6] = random();
        let kh_key = hex::encode(random::<32>());
        let mut keys = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(KEYS_FILE)
            .unwrap();
        writeln!(keys, "{{\"1\": \"{kh_key}\"}}").unwrap();
        let line = format!(
            "2198612,{public_id},{},{},000000000000,2009-12-14T16:40:57,",
            hex::encode(uid),
            hex::encode(aes)
        );
        let key = SoftYubiKey::new(
            PublicId::parse(&public_id).unwrap(),
            YubiKeySecrets::new(aes, uid),
        );
        let secrets = vec![kh_key, hex::encode(aes), hex::encode(uid)];
        (Self { key, secrets }, line)
    }

    fn public_id(&self) -> String {
        self.key.public_id().as_str().to_owned()
    }

    fn otp(&mut self) -> String {
        let otp = self.key.next_otp().to_typed_string().to_string();
        self.secrets.push(otp[otp.len() - 32..].to_owned());
        otp
    }

    /// No log holds a secret, an OTP or its token part.
    fn assert_not_in(&self, what: &str, log: &str) {
        for s in &self.secrets {
            assert!(!log.contains(s.as_str()), "{what} holds a secret or an OTP");
        }
    }
}

/// Where pyhsm's layout files the AEAD of `public_id` under key handle 1:
/// a directory for each pair of its characters, then the file.
fn aead_path(public_id: &str) -> String {
    let pairs: Vec<&str> = (0..public_id.len())
        .step_by(2)
        .map(|i| &public_id[i..i + 2])
        .collect();
    format!("{AEAD_DIR}/1/{}/{public_id}", pairs.join("/"))
}

/// The login user: a password for pam_unix (common-auth asks for it
/// before the YubiKey) and the client's SSH key.
fn create_user(dir: &Path) -> String {
    ok(Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]));
    let password = hex::encode(random::<12>());
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(chpasswd.stdin.take().unwrap(), "{USER}:{password}").unwrap();
    assert!(chpasswd.wait().unwrap().success(), "chpasswd");
    for key in ["hostkey", "clientkey"] {
        ok(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(key)));
    }
    let ssh = format!("/home/{USER}/.ssh");
    ok(Command::new("install").args(["-d", "-m", "700", "-o", USER, &ssh]));
    ok(Command::new("install")
        .args(["-m", "600", "-o", USER])
        .arg(dir.join("clientkey.pub"))
        .arg(format!("{ssh}/authorized_keys")));
    password
}

/// `ykadmin ARGS` with `input` on standard input: (exit code, output).
fn ykadmin(args: &[&str], input: &str) -> (i32, String) {
    let mut child = Command::new(YKADMIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out))
}

/// A login with pamtester through common-auth: the Unix password, then
/// the OTP. Whether it succeeded, and what pamtester said.
fn pamtester(password: &str, otp: &str) -> (bool, String) {
    let mut child = Command::new("pamtester")
        .args(["-v", PAM_SERVICE, USER, "authenticate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pamtester (scripts/install-deps.sh)");
    // pamtester reads one line per prompt.
    write!(child.stdin.take().unwrap(), "{password}\n{otp}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out))
}

/// `pam-auth-update --enable ykhsm`: the shipped profile goes into
/// common-auth, after the primary block (a second factor).
fn enable_profile() {
    let out = run(Command::new("pam-auth-update")
        .args(["--enable", "ykhsm"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "pam-auth-update --enable ykhsm: {}",
        text(&out)
    );
    let common = fs::read_to_string("/etc/pam.d/common-auth").unwrap();
    let lines: Vec<&str> = common
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let ours = lines
        .iter()
        .position(|l| l.contains("pam_ykhsm.so"))
        .unwrap_or_else(|| panic!("common-auth has no pam_ykhsm.so: {common}"));
    let permit = lines
        .iter()
        .position(|l| l.contains("pam_permit.so"))
        .unwrap();
    assert!(
        ours > permit && lines[ours].split_whitespace().nth(1) == Some("required"),
        "pam_ykhsm.so is a required module after the primary block: {common}"
    );
}

fn common_auth_has_module() -> bool {
    fs::read_to_string("/etc/pam.d/common-auth")
        .unwrap()
        .contains("pam_ykhsm.so")
}

struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The system's sshd on 127.0.0.1 with a config of the test's own that
/// includes the installed example, and the system's /etc/pam.d/sshd.
fn start_sshd(dir: &Path) -> Sshd {
    fs::create_dir_all("/run/sshd").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAllowUsers {USER}\n\
             LogLevel VERBOSE\nInclude {SSHD_EXAMPLE}\n",
            dir.join("hostkey").display(),
            dir.join("sshd.pid").display(),
        ),
    )
    .unwrap();
    ok(Command::new("/usr/sbin/sshd")
        .arg("-t")
        .arg("-f")
        .arg(&config));
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .expect("sshd (scripts/install-deps.sh)");
    wait_for("sshd to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Sshd {
        child,
        port,
        dir: dir.to_path_buf(),
    }
}

impl Sshd {
    /// One login with the SSH key; the askpass answers the password and the
    /// YubiKey prompts. (exit code, output, the prompts asked).
    fn login(&self, password: &str, otp: &str) -> (i32, String, String) {
        let dir = &self.dir;
        fs::write(dir.join("password"), password).unwrap();
        fs::write(dir.join("otp"), otp).unwrap();
        let prompts = dir.join("prompts.log");
        let _ = fs::remove_file(&prompts);
        let askpass = dir.join("askpass");
        fs::write(
            &askpass,
            format!(
                "#!/bin/sh\necho \"$1\" >> {p}\ncase \"$1\" in\n*assword*) cat {d}/password ;;\n\
                 *YubiKey*) cat {d}/otp ;;\n*) echo unexpected ;;\nesac\n",
                p = prompts.display(),
                d = dir.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&askpass, fs::Permissions::from_mode(0o755)).unwrap();
        let out = run(Command::new("setsid")
            .args(["-w", "ssh", "-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "NumberOfPasswordPrompts=1",
            ])
            .args(["-o", "ConnectTimeout=20", "-i"])
            .arg(dir.join("clientkey"))
            .arg(format!("{USER}@127.0.0.1"))
            .arg("echo LOGGED-IN-AS-$(id -un)")
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null()));
        (
            out.status.code().unwrap_or(-1),
            text(&out),
            fs::read_to_string(&prompts).unwrap_or_default(),
        )
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

#[test]
#[ignore = "installs the ykhsm package and edits /etc/pam.d as root: scripts/test.sh runs it after the other suites"]
fn installed_package_logs_in_through_pam_and_sshd_and_keeps_its_counters_until_purge() {
    let machine = Machine::claim();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let deb = build_deb();

    // Install: files where they belong, nothing enabled.
    let said = apt_ok(&["install", "-y", deb.to_str().unwrap()]);
    assert!(said.contains("Setting up ykhsm"), "{said}");
    check_installed_files();
    assert_eq!(
        machine.pam_stack_changes(),
        Vec::<PathBuf>::new(),
        "installing changed the PAM stack (Default: no)"
    );
    check_man_pages();
    check_bash_completion();
    check_unit();
    // Without keys the daemon does not start, and says why.
    let out = run(Command::new(YKHSMD).args(["--config", CONFIG, "--check"]));
    assert!(
        !out.status.success() && text(&out).contains(KEYS_FILE),
        "--check without keys.json: {}",
        text(&out)
    );

    // Configure as an operator: keys.json, the daemon, the key imported
    // with ykadmin, the user in the authfile.
    let (mut yubikey, ykksm_line) = YubiKey::new();
    let password = create_user(dir);
    let daemon = Daemon::start(dir);
    let (code, out) = ykadmin(&["import-ykksm", "-"], &format!("{ykksm_line}\n"));
    assert_eq!(code, 0, "ykadmin import-ykksm: {out}");
    assert!(out.contains("imported 1, skipped 0, failed 0"), "{out}");
    let pubid = yubikey.public_id();
    let (code, out) = ykadmin(&["enroll", USER, &pubid], "");
    assert_eq!(code, 0, "ykadmin enroll: {out}");
    assert_eq!(
        fs::read_to_string(AUTHFILE).unwrap(),
        format!("{USER}:{pubid}\n")
    );
    let aead = aead_path(&pubid);
    assert_installed(&aead, 0o600);

    // pamtester through common-auth with the profile: password, then OTP.
    enable_profile();
    let first = yubikey.otp();
    let (logged_in, said) = pamtester(&password, &first);
    assert!(logged_in, "pamtester with the right OTP: {said}");
    assert!(said.contains(&format!("YubiKey for `{USER}'")), "{said}");
    let (logged_in, said) = pamtester(&password, &first);
    assert!(!logged_in, "the same OTP again: {said}");
    let (logged_in, said) = pamtester("wrong password", &yubikey.otp());
    assert!(!logged_in, "a wrong password with a good OTP: {said}");

    // A real sshd: the SSH key, then common-auth's password and YubiKey.
    let sshd = start_sshd(dir);
    let otp = yubikey.otp();
    let (code, said, prompts) = sshd.login(&password, &otp);
    assert_eq!(code, 0, "ssh: {said}\nprompts: {prompts}\n{}", sshd.log());
    assert!(said.contains(&format!("LOGGED-IN-AS-{USER}")), "{said}");
    assert!(
        prompts.contains("Password") && prompts.contains(&format!("YubiKey for `{USER}'")),
        "{prompts}"
    );
    let (code, said, _) = sshd.login(&password, &otp);
    assert_eq!(code, 255, "ssh with the same OTP again: {said}");
    assert!(
        sshd.log().contains("Partial publickey for"),
        "{}",
        sshd.log()
    );
    yubikey.assert_not_in("sshd's log", &sshd.log());
    drop(sshd);
    let log = daemon.stop();
    assert!(
        log.contains("status=OK") && log.contains("status=REPLAYED_OTP"),
        "{log}"
    );
    yubikey.assert_not_in("ykhsmd's log", &log);

    // Remove: out of the PAM stack first, the operator's state kept.
    apt_ok(&["remove", "-y", "ykhsm"]);
    assert!(
        dpkg_status().contains("config-files"),
        "after remove: {}",
        dpkg_status()
    );
    for gone in [YKHSMD, YKADMIN, MODULE, PROFILE, UNIT] {
        assert!(!Path::new(gone).exists(), "{gone} after remove");
    }
    assert_eq!(
        machine.pam_stack_changes(),
        Vec::<PathBuf>::new(),
        "after remove the PAM stack must not name a module that is gone"
    );
    for kept in [
        &format!("{STATE_DIR}/counters.sqlite"),
        KEYS_FILE,
        CONFIG,
        AUTHFILE,
        &aead,
    ] {
        assert!(Path::new(kept).exists(), "{kept} after remove");
    }

    // Reinstall: the counters are still there.
    apt_ok(&["install", "-y", deb.to_str().unwrap()]);
    assert!(
        !common_auth_has_module(),
        "a reinstall enables the profile only if asked"
    );
    let daemon = Daemon::start(dir);
    let (code, out) = ykadmin(&["verify", USER, "-"], &format!("{first}\n"));
    assert_eq!(
        (code, out.trim()),
        (1, "REPLAYED_OTP"),
        "an OTP accepted before the reinstall"
    );
    enable_profile();
    let (logged_in, said) = pamtester(&password, &yubikey.otp());
    assert!(logged_in, "a fresh OTP after the reinstall: {said}");
    let log = daemon.stop();
    yubikey.assert_not_in("ykhsmd's log", &log);

    // Purge: says what it leaves and why; leaves exactly that.
    let said = apt_ok(&["purge", "-y", "ykhsm"]);
    assert!(
        said.contains("Kept, because deleting them cannot be undone")
            && said.contains("what refuses a replayed OTP"),
        "purge must keep the counters and say why: {said}"
    );
    for kept in [STATE_DIR, AEAD_DIR, KEYS_FILE, AUTHFILE] {
        assert!(
            said.contains(kept) && Path::new(kept).exists(),
            "purge keeps and names {kept}: {said}"
        );
    }
    assert!(
        Path::new(&format!("{STATE_DIR}/counters.sqlite")).exists(),
        "the counters after purge"
    );
    assert!(!Path::new(CONFIG).exists(), "the conffile after purge");
    let status = dpkg_status();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "after purge: {status}"
    );
    assert_eq!(
        machine.pam_stack_changes(),
        Vec::<PathBuf>::new(),
        "after purge the PAM stack is as before the test"
    );
    for link in [WANTS_LINK, MASK_LINK] {
        assert!(fs::symlink_metadata(link).is_err(), "{link} after purge");
    }
}
