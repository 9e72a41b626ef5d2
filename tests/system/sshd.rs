//! The whole product: a real OpenSSH sshd on 127.0.0.1 with its own config
//! (including contrib/sshd_config.d/ykhsm.conf) and a PAM stack made of
//! contrib/pam.d/sshd's lines (under pam_wrapper: /etc/pam.d is not
//! touched), pam_ykhsm.so and the real daemon. The client has the right SSH
//! key; its askpass answers the YubiKey prompt.

use ykhsm_testkit as common;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Env, wait_for};

const USER: &str = "ykhsmtest";
const PAM_WRAPPER: &str = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so";

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn module() -> PathBuf {
    common::pam_module()
}

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("contrib")
        .join(rel)
}

/// A system user for the login, removed again at the end.
struct TestUser;

impl TestUser {
    fn create(client_pub: &Path) -> Self {
        let _ = run(Command::new("userdel").args(["-r", USER]));
        let out = run(Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]));
        assert!(out.status.success(), "useradd: {out:?}");
        let ssh = PathBuf::from(format!("/home/{USER}/.ssh"));
        fs::create_dir_all(&ssh).unwrap();
        fs::copy(client_pub, ssh.join("authorized_keys")).unwrap();
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(
            ssh.join("authorized_keys"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let own = format!("{USER}:{USER}");
        assert!(
            run(Command::new("chown").args(["-R", &own, &format!("/home/{USER}")]))
                .status
                .success()
        );
        Self
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = run(Command::new("userdel").args(["-r", USER]));
    }
}

struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_sshd(env: &Env, dir: &Path) -> Sshd {
    fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    let config = dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAllowUsers {USER}\n\
             LogLevel VERBOSE\nStrictModes yes\nInclude {}\n",
            dir.join("hostkey").display(),
            dir.join("sshd.pid").display(),
            contrib("sshd_config.d/ykhsm.conf")
                .canonicalize()
                .unwrap()
                .display(),
        ),
    )
    .unwrap();
    // The PAM stack: contrib/pam.d/sshd's lines, the module by its path.
    let pam = dir.join("pam");
    fs::create_dir_all(&pam).unwrap();
    let module = format!("{} socket={}", module().display(), env.socket.display());
    let auth: String = fs::read_to_string(contrib("pam.d/sshd"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{}\n", l.replace("pam_ykhsm.so", &module)))
        .collect();
    assert!(auth.contains("auth required"), "{auth}");
    fs::write(
        pam.join("sshd"),
        format!("{auth}account required pam_permit.so\nsession required pam_permit.so\n"),
    )
    .unwrap();
    let check = run(Command::new("/usr/sbin/sshd")
        .args(["-t", "-f"])
        .arg(&config));
    assert!(check.status.success(), "sshd -t: {check:?}");
    let log = fs::File::create(dir.join("sshd.log")).unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", &pam)
        .env("LD_PRELOAD", PAM_WRAPPER)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sshd (apt-get install openssh-server)");
    wait_for("sshd to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Sshd { child, port }
}

/// One login: `answer` is what the askpass script types at the YubiKey
/// prompt. Returns (exit code, stdout).
fn login(dir: &Path, sshd: &Sshd, answer: &str) -> (i32, String) {
    let _one_at_a_time = common::one_pam_wrapper_at_a_time();
    let answer_file = dir.join("answer");
    fs::write(&answer_file, answer).unwrap();
    let askpass = dir.join("askpass");
    fs::write(
        &askpass,
        format!(
            "#!/bin/sh\necho \"$1\" >> {}\ncat {}\n",
            dir.join("prompts.log").display(),
            answer_file.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&askpass, fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(Command::new("setsid")
        .args(["-w", "ssh", "-p", &sshd.port.to_string()])
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
            "-o",
            "ConnectTimeout=20",
        ])
        .arg("-i")
        .arg(dir.join("clientkey"))
        .arg(format!("{USER}@127.0.0.1"))
        .arg("echo LOGGED-IN-AS-$(id -un)")
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn ssh_key_then_yubikey_logs_in_and_every_wrong_second_factor_is_refused() {
    if !Path::new("/usr/sbin/sshd").exists() {
        panic!("/usr/sbin/sshd missing: apt-get install openssh-server (scripts/install-deps.sh)");
    }
    let env = Env::new();
    let dir = env.dir.path().join("ssh");
    fs::create_dir_all(&dir).unwrap();
    for key in ["hostkey", "clientkey"] {
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(key)));
        assert!(out.status.success(), "{out:?}");
    }
    let _user = TestUser::create(&dir.join("clientkey.pub"));
    let mut key = env.key("ccccccdbjrgf");
    let mut other = env.key("cccccccccccd");
    env.set_authfile(&format!("{USER}:ccccccdbjrgf\nsomeoneelse:cccccccccccd\n"));
    let mut daemon = env.start();
    let sshd = start_sshd(&env, &dir);

    let otp = env.otp(&mut key);
    let (code, out) = login(&dir, &sshd, &otp);
    assert_eq!(
        (code, out.trim()),
        (0, format!("LOGGED-IN-AS-{USER}").as_str())
    );
    let prompts = fs::read_to_string(dir.join("prompts.log")).unwrap();
    assert!(
        prompts.contains(&format!("YubiKey for `{USER}'")),
        "{prompts}"
    );

    // The same OTP again.
    let (code, out) = login(&dir, &sshd, &otp);
    assert_eq!(code, 255, "replay: {out}");
    // Not an OTP.
    let (code, out) = login(&dir, &sshd, "not-an-otp");
    assert_eq!(code, 255, "garbage: {out}");
    // Someone else's key.
    let (code, out) = login(&dir, &sshd, &env.otp(&mut other));
    assert_eq!(code, 255, "other key: {out}");
    // A fresh OTP still works...
    let (code, _) = login(&dir, &sshd, &env.otp(&mut key));
    assert_eq!(code, 0);
    // ...until the daemon stops.
    daemon.terminate();
    let (code, out) = login(&dir, &sshd, &env.otp(&mut key));
    assert_eq!(code, 255, "daemon stopped: {out}");
    let log = fs::read_to_string(dir.join("sshd.log")).unwrap();
    assert!(log.contains("Partial publickey for"), "{log}");
}
