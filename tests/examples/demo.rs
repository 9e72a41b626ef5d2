//! The README's demo: ykhsmd on the embedded default (soft keys.json,
//! SQLite) in a temporary directory, a software YubiKey enrolled for a
//! user, and logins through real PAM (pamtester under pam_wrapper, so
//! /etc/pam.d is not touched). Run by scripts/demo.sh, which builds
//! everything first; as root (the daemon refuses files not owned by root).
//! The installation and the daemon process are the test suites' own
//! (ykhsm-testkit).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ykhsm_core::keyhandle::KeyHandleName;
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_core::store::WriteMode;
use ykhsm_testkit::{Daemon, Installation, random};

const PAM_WRAPPER: &str = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so";

fn step(n: u32, text: &str) {
    println!("\n{n}. {text}");
}

/// Logs `user` in through PAM with `answer` typed at the prompt; PAM's words.
fn pam_login(services: &Path, user: &str, answer: &str) -> (bool, String) {
    pam_login_in(None, services, user, answer)
}

/// [`pam_login`], inside the network namespace of process `netns` if given.
fn pam_login_in(netns: Option<u32>, services: &Path, user: &str, answer: &str) -> (bool, String) {
    let mut cmd = match netns {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{pid}/ns/net")).arg("pamtester");
            c
        }
        None => Command::new("pamtester"),
    };
    let mut child = cmd
        .args(["ykhsm-demo", user, "authenticate"])
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", services)
        .env("LD_PRELOAD", PAM_WRAPPER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pamtester");
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{answer}\n").as_bytes());
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let words = said
        .lines()
        // The prompt has no newline: pamtester's verdict may follow it.
        .filter_map(|l| l.split_once("pamtester: ").map(|(_, rest)| rest))
        .filter(|l| !l.starts_with("invoking") && !l.starts_with("performing"))
        .collect::<Vec<_>>()
        .join("; ");
    (out.status.success(), words)
}

fn show(expect_ok: bool, (ok, words): (bool, String)) -> bool {
    let verdict = if ok { "LOGGED IN" } else { "REFUSED" };
    println!("   PAM: {words}  =>  {verdict}");
    ok == expect_ok
}

/// Starts `cmd` (ykhsmd, or a command that runs it) with `config`, its
/// stderr appended to `<root>/ykhsmd.log`, and waits until it answers.
fn start_daemon(mut cmd: Command, config: &Path, socket: &Path, root: &Path) -> Daemon {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("ykhsmd.log"))
        .unwrap();
    let child = cmd
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("ykhsmd");
    let daemon = Daemon::new(child, socket);
    daemon.wait_ready();
    daemon
}

/// The network interfaces process `pid` sees (`/proc/net/dev` in its
/// network namespace): their names.
fn interfaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["cat", "/proc/net/dev"])
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|name| name.trim().to_owned())
        .collect()
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(ykhsmd), Some(module)) = (args.next(), args.next()) else {
        eprintln!("usage: demo PATH/TO/ykhsmd PATH/TO/libpam_ykhsm.so (see scripts/demo.sh)");
        std::process::exit(2);
    };
    // PAM loads a module outside its own directory only by absolute path.
    let Ok(module) = PathBuf::from(&module).canonicalize() else {
        eprintln!("demo: no PAM module at {}", PathBuf::from(module).display());
        std::process::exit(2);
    };
    let ykhsmd = PathBuf::from(ykhsmd);
    let mut files = Installation::new("ykhsm-demo-", &hex::encode(random::<32>()));
    // No syslog socket of its own: the daemon logs to the system's, as
    // installed.
    files.syslog_socket = None;
    let root = files.dir.path();
    println!(
        "ykhsm demo — everything lives in {} and is removed at the end",
        root.display()
    );

    step(
        1,
        "An installation with the embedded default backend (soft keys.json) and SQLite counters",
    );
    files.write_config(None, "");
    let (socket, authfile, config) = (&files.socket, &files.authfile, &files.config_path);
    println!(
        "   {}: key handle 1, a random AES-256 key (mode 0600)",
        files.keys_file.display()
    );

    step(2, "A software YubiKey, enrolled for alice");
    let id = PublicId::parse("ccccccdbjrgf").unwrap();
    let secrets = YubiKeySecrets::new(random(), random());
    let kh: KeyHandleName = "1".parse().unwrap();
    let path = files.enroll(&kh, &id, &secrets, WriteMode::CreateNew).path;
    let mut yubikey = SoftYubiKey::new(id, secrets);
    files.set_authfile("alice:ccccccdbjrgf\nbob:cccccccccccd\n");
    println!(
        "   its secrets sealed into {} (pyhsm's AEAD format)",
        path.display()
    );
    println!(
        "   {}: alice:ccccccdbjrgf (and bob, with another key)",
        authfile.display()
    );

    step(3, "ykhsmd started");
    let mut daemon = Some(start_daemon(Command::new(&ykhsmd), config, socket, root));
    println!("   listening on {}", socket.display());

    let services = root.join("pam.d");
    fs::create_dir(&services).unwrap();
    fs::write(services.join("other"), "auth required pam_deny.so\n").unwrap();
    fs::write(
        services.join("ykhsm-demo"),
        format!(
            "auth required {} socket={}\n",
            module.display(),
            socket.display()
        ),
    )
    .unwrap();
    println!("   PAM service ykhsm-demo: auth required pam_ykhsm.so (through pam_wrapper)");

    let mut good = true;
    let otp = yubikey.next_otp().to_typed_string().to_string();
    step(4, "alice touches her YubiKey: a fresh OTP");
    good &= show(true, pam_login(&services, "alice", &otp));
    step(5, "Someone replays that same OTP");
    good &= show(false, pam_login(&services, "alice", &otp));
    step(6, "bob tries with alice's YubiKey");
    let otp2 = yubikey.next_otp().to_typed_string().to_string();
    good &= show(false, pam_login(&services, "bob", &otp2));
    step(7, "The daemon is stopped; alice tries again");
    drop(daemon.take());
    let otp3 = yubikey.next_otp().to_typed_string().to_string();
    good &= show(false, pam_login(&services, "alice", &otp3));

    step(
        8,
        "No network at all: ykhsmd again, in a network namespace of its own (unshare --net)",
    );
    let mut isolated = Command::new("unshare");
    isolated.arg("--net").arg(&ykhsmd);
    let offline = start_daemon(isolated, config, socket, root);
    let interfaces = interfaces_of(offline.child.id());
    println!(
        "   the daemon's network interfaces: {} (loopback only: no route to anywhere)",
        interfaces.join(", ")
    );
    good &= interfaces == ["lo"];
    println!("   alice logs in from inside that namespace too: nothing but the Unix socket");
    let otp4 = yubikey.next_otp().to_typed_string().to_string();
    good &= show(
        true,
        pam_login_in(Some(offline.child.id()), &services, "alice", &otp4),
    );
    drop(offline);

    println!("\nWhat ykhsmd logged (one audit line per verification; never an OTP):");
    for line in fs::read_to_string(root.join("ykhsmd.log"))
        .unwrap_or_default()
        .lines()
    {
        if line.contains(" verify ") {
            println!("   {line}");
        }
    }
    drop(files);
    println!("\nCleaned up: the daemon is stopped and the temporary directory removed.");
    if !good {
        eprintln!("demo: something did not go as described above");
        std::process::exit(1);
    }
}
