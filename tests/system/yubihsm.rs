//! `backend = "yubihsm"`: the real daemon on the YubiHSM 1 emulator's
//! pseudo-terminal, with the same AEAD files the soft backend reads (key
//! handle 1 holds the same key in both), giving the same answers.

use ykhsm_testkit as common;

use std::time::Duration;

use common::{Env, emulated_hsm};
use ykhsm_hsm_emu::Misbehave;
use ykhsm_proto::{Request, Response, Status};
use ykhsm_yubihsm::wire::permission;

/// An installation where alice has the key `ccccccdbjrgf`; the daemon is
/// not started (the test chooses its device first).
fn alice_env() -> (Env, ykhsm_core::softkey::SoftYubiKey) {
    let env = Env::new();
    let key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    (env, key)
}

/// An emulated YubiHSM whose key handle 1 is the test installation's.
fn hsm() -> ykhsm_hsm_emu::pty::EmuPty {
    emulated_hsm(None)
}

#[test]
fn soft_and_hsm_backends_answer_alike_for_the_same_aead_files() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    let mut other = env.key("cccccccccccb");
    env.set_authfile("alice:ccccccdbjrgf\nbob:cccccccccccb\n");
    let device = hsm();
    env.use_yubihsm(device.path());
    let d = env.start();
    let otp = env.otp(&mut key);
    assert_eq!(d.verify("alice", &otp), Status::Ok);
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
    assert_eq!(
        d.verify("alice", &env.otp(&mut other)),
        Status::NotAuthorized
    );
    // bob's OTP under alice's public id: the AEAD opens, the OTP does not.
    let forged = format!("ccccccdbjrgf{}", &env.otp(&mut other)[12..]);
    assert_eq!(d.verify("alice", &forged), Status::BadOtp);
    assert_eq!(d.verify("bob", &env.otp(&mut other)), Status::Ok);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn device_gone_is_backend_error_and_it_recovers_when_it_is_back() {
    let (env, mut key) = alice_env();
    // The daemon's device is a symlink, as a udev rule would make it.
    let link = env.dir.path().join("yubihsm");
    let first = hsm();
    std::os::unix::fs::symlink(first.path(), &link).unwrap();
    env.use_yubihsm(&link);
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    // Unplugged: every login is refused, nothing is accepted.
    drop(first);
    let while_gone = env.otp(&mut key);
    assert_eq!(d.verify("alice", &while_gone), Status::BackendError);
    // Plugged in again (a new terminal behind the same name).
    let second = hsm();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(second.path(), &link).unwrap();
    common::wait_for(
        "the daemon to use the device again",
        std::time::Duration::from_secs(20),
        || d.verify("alice", &env.otp(&mut key)) == Status::Ok,
    );
    // The OTP refused while the device was gone was never accepted, and is
    // now older than the last accepted one.
    assert_eq!(d.verify("alice", &while_gone), Status::ReplayedOtp);
    drop(second);
}

/// `import-ykksm` through the HSM: the secrets go to the device (buffer
/// load + buffer AEAD generate) and only the AEAD comes back; the same
/// files then verify OTPs.
#[test]
fn import_through_the_hsm_writes_aeads_that_verify() {
    let env = Env::new();
    let device = hsm();
    env.use_yubihsm(device.path());
    let d = env.start();
    let (line, mut yk) = env.ykksm_key("ccccccdbjrgf");
    let text = format!("{line}\n");
    let config = ykhsmd::config::Config::load(&env.config_path).unwrap();
    let report =
        ykadmin::import::import_ykksm(&config, text.as_bytes(), &config.key_handles, false, false)
            .unwrap();
    assert_eq!(report.summary(), "imported 1, skipped 0, failed 0");
    // Re-running: the HSM wraps the same secret to the same AEAD.
    let again =
        ykadmin::import::import_ykksm(&config, text.as_bytes(), &config.key_handles, false, false)
            .unwrap();
    assert_eq!(again.summary(), "imported 0, skipped 1, failed 0");
    env.set_authfile("alice:ccccccdbjrgf\n");
    assert_eq!(d.verify("alice", &env.otp(&mut yk)), Status::Ok);
}

/// The YubiHSM is busy (here: its answer comes after the daemon's 1 s
/// deadline). Everything that needs no device is answered meanwhile; the
/// login waiting on the device gets `BACKEND_ERROR`, and once the device
/// answers in time again, logins work and nothing was accepted twice.
#[test]
fn requests_that_need_no_device_do_not_wait_behind_a_slow_hsm() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    let mut stranger = env.key("cccccccccccd");
    env.set_authfile("alice:ccccccdbjrgf\nbob:\n");
    let device = hsm();
    env.use_yubihsm(device.path());
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);

    let slow_otp = env.otp(&mut key);
    let (slow, _) = login_held_by_a_slow_device(&d, &device, &slow_otp);
    // The device holds alice's login now. None of these needs it.
    let no_device = [
        // daemon: a system user (base-passwd) without a line.
        ("daemon", env.otp(&mut key), Status::NoKeysForUser),
        ("carol", env.otp(&mut key), Status::UnknownUser),
        ("bob", env.otp(&mut key), Status::NotAuthorized),
        ("alice", env.otp(&mut stranger), Status::NotAuthorized),
        ("alice", "not an otp".to_owned(), Status::BadOtp),
    ];
    for (user, otp, want) in &no_device {
        assert_eq!(d.verify(user, otp), *want, "{user}");
        assert!(!slow.is_finished(), "{user}'s answer waited for the device");
    }
    for (user, want) in [
        ("alice", Status::Ok),
        ("daemon", Status::NoKeysForUser),
        ("carol", Status::UnknownUser),
    ] {
        match d.request(&Request::HasUser { user: user.into() }) {
            Response::Verdict { status } => assert_eq!(status, want),
            other => panic!("{other:?}"),
        }
        assert!(!slow.is_finished(), "HasUser waited for the device");
    }
    assert_eq!(slow.join().unwrap(), Status::BackendError);

    device.set_misbehave(Misbehave::None);
    common::wait_for("logins to work again", Duration::from_secs(20), || {
        d.verify("alice", &env.otp(&mut key)) == Status::Ok
    });
    assert_eq!(d.verify("alice", &slow_otp), Status::ReplayedOtp);
}

/// A login that waited behind a hung HSM for longer than `client_timeout`
/// is answered `BACKEND_ERROR` without being sent to the device, so its OTP
/// stays unused: it logs in once the device answers again.
#[test]
fn logins_queued_too_long_behind_a_hung_hsm_are_refused_without_the_device() {
    let env = Env::new();
    env.config("client_timeout_ms = 300");
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let device = hsm();
    env.use_yubihsm(device.path());
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);

    let (first, second) = (env.otp(&mut key), env.otp(&mut key));
    let (slow, held) = login_held_by_a_slow_device(&d, &device, &first);
    // Queued behind the first login, which holds the device for its whole
    // 1 s deadline: longer than client_timeout.
    assert_eq!(d.verify("alice", &second), Status::BackendError);
    assert_eq!(slow.join().unwrap(), Status::BackendError);
    assert_eq!(
        device.answered(),
        held,
        "the second login reached the device"
    );
    env.wait_log("answered BACKEND_ERROR without asking it");

    device.set_misbehave(Misbehave::None);
    common::wait_for("the unused OTP to log in", Duration::from_secs(20), || {
        d.verify("alice", &second) == Status::Ok
    });
    assert_eq!(d.verify("alice", &first), Status::ReplayedOtp);
}

/// Garbage on the line and a device reset halfway through its answer: that
/// login gets `BACKEND_ERROR` (the link is resynchronised), the next one
/// `OK`, and the OTP refused is never accepted later.
#[test]
fn garbage_and_a_reset_mid_answer_are_backend_errors_then_the_link_recovers() {
    let (env, mut key) = alice_env();
    let device = hsm();
    env.use_yubihsm(device.path());
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    for mode in [Misbehave::Garbage, Misbehave::ResetMidCommand] {
        device.set_misbehave_once(mode);
        let refused = env.otp(&mut key);
        assert_eq!(
            d.verify("alice", &refused),
            Status::BackendError,
            "{mode:?}"
        );
        assert_eq!(
            d.verify("alice", &env.otp(&mut key)),
            Status::Ok,
            "{mode:?}"
        );
        assert_eq!(d.verify("alice", &refused), Status::ReplayedOtp, "{mode:?}");
    }
    assert!(
        env.logs().iter().any(|l| l.contains("bad answer to")),
        "the garbage is named in the log"
    );
}

/// A locked HSM is named by `--check` and `status`; `ykadmin hsm unlock`
/// refuses a wrong master key and takes the right one (from standard
/// input, never echoed or logged); logins work from then on.
#[test]
fn locked_hsm_is_named_then_unlocked_with_ykadmin() {
    let (env, mut key) = alice_env();
    let master: [u8; 32] = common::random();
    let master_hex = hex::encode(master);
    env.secret(&master_hex);
    let device = common::emulated_hsm(Some(master));
    env.use_yubihsm(device.path());

    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  key handle 1") && out.contains("the key store is locked"),
        "{out}"
    );
    assert!(out.contains("ykadmin hsm unlock"), "{out}");

    let d = env.start();
    let refused = env.otp(&mut key);
    assert_eq!(d.verify("alice", &refused), Status::BackendError);
    let status = common::ykadmin(&env, &["status"]);
    assert!(
        status.stdout.contains("key_handle 1") && status.stdout.contains("key store is locked"),
        "{}",
        status.stdout
    );

    let wrong = common::ykadmin_with_input(
        &env,
        &["hsm", "unlock"],
        &format!("{}\n\n", "ab".repeat(32)),
    );
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("wrong master key"),
        "{}",
        wrong.stderr
    );
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);

    let right = common::ykadmin_with_input(
        &env,
        &["hsm", "unlock", "--no-otp"],
        &format!("{master_hex}\n"),
    );
    assert_eq!(
        (right.code, right.stdout.as_str()),
        (0, "unlocked\n"),
        "{}",
        right.stderr
    );
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    assert_eq!(d.verify("alice", &refused), Status::ReplayedOtp);
    let status = common::ykadmin(&env, &["status"]);
    assert!(status.stdout.contains("usable"), "{}", status.stdout);
    env.wait_log("hsm unlock: done (master key)");
}

/// A key store locked for an admin YubiKey: `hsm unlock --otp-only` with
/// its OTP unlocks; the same OTP again is refused as used before.
#[test]
fn hsm_unlock_with_an_admin_yubikey_otp() {
    let (env, mut key) = alice_env();
    let admin_secrets = ykhsm_core::otp::YubiKeySecrets::new(common::random(), common::random());
    let admin_id = ykhsm_core::otp::PublicId::parse("cccccccccccn").unwrap();
    let mut admin = ykhsm_core::softkey::SoftYubiKey::new(
        admin_id.clone(),
        ykhsm_core::otp::YubiKeySecrets::new(*admin_secrets.key(), *admin_secrets.uid()),
    );
    env.secret(&hex::encode(admin_secrets.key()));
    let device = common::emulated_hsm_holding(
        &[(1, common::KH1_KEY.to_owned())],
        permission::AEAD_YUBIKEY_OTP_DECODE,
        Some(ykhsm_hsm_emu::UnlockSecret::AdminOtp {
            public_id: admin_id.to_bytes().try_into().unwrap(),
            secrets: admin_secrets,
        }),
    );
    env.use_yubihsm(device.path());
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    let otp = env.otp(&mut admin);
    let o = common::ykadmin_with_input(&env, &["hsm", "unlock", "--otp-only"], &format!("{otp}\n"));
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "unlocked\n"),
        "{}",
        o.stderr
    );
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let again =
        common::ykadmin_with_input(&env, &["hsm", "unlock", "--otp-only"], &format!("{otp}\n"));
    assert_eq!(again.code, 3, "{}", again.stderr);
    assert!(again.stderr.contains("used before"), "{}", again.stderr);
    env.wait_log("hsm unlock: done (admin OTP pubid=cccccccccccn)");
}

/// A bastion's key handle that may not decode OTPs: named by `--check` and
/// `status`, and logins get `BACKEND_ERROR`.
#[test]
fn key_handle_without_the_otp_decode_permission_is_named() {
    let (env, mut key) = alice_env();
    let device = common::emulated_hsm_with(
        permission::BUFFER_AEAD_GENERATE | permission::BUFFER_LOAD | permission::USER_NONCE,
        None,
    );
    env.use_yubihsm(device.path());
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  key handle 1") && out.contains("lacks the permission for OTP decode"),
        "{out}"
    );
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    let status = common::ykadmin(&env, &["status"]);
    assert!(
        status.stdout.contains("YSM_FUNCTION_DISABLED"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("firmware"), "{}", status.stdout);
}

/// `hsm unlock` on the soft backend says there is nothing to unlock.
#[test]
fn hsm_unlock_on_the_soft_backend_says_there_is_nothing_to_unlock() {
    if common::on_hsm() {
        return;
    }
    let (env, _key, _d) = common::alice();
    let o = common::ykadmin_with_input(
        &env,
        &["hsm", "unlock", "--no-otp"],
        &format!("{}\n", "00".repeat(32)),
    );
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("no key store to unlock"), "{}", o.stderr);
}

/// The daemon holds the YubiHSM's port in exclusive mode (`TIOCEXCL`):
/// another program run by an unprivileged user cannot open it while the
/// daemon has it, even where the file's mode would let it (here the
/// emulator's terminal is made 0666, so that only the exclusive mode can
/// refuse), and logins go on undisturbed. Root is not stopped by
/// `TIOCEXCL`; the `flock` stops a second ykhsmd (docs/security.md).
#[test]
fn an_unprivileged_process_cannot_open_the_device_while_the_daemon_holds_it() {
    use std::os::unix::fs::PermissionsExt;
    let (env, mut key) = alice_env();
    let device = hsm();
    std::fs::set_permissions(device.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    open_as_nobody(device.path()).expect("anyone may open it before the daemon");
    env.use_yubihsm(device.path());
    let d = env.start();
    // A login through the device: the daemon has it open now.
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let refused = open_as_nobody(device.path()).unwrap_err();
    assert!(refused.contains("Device or resource busy"), "{refused}");
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

/// Makes the device answer 3 s late (after the daemon's 1 s deadline) and
/// sends alice's login with `otp` from another thread; returns once the
/// device holds it, with the device's `answered` count at that moment.
fn login_held_by_a_slow_device(
    d: &common::Daemon,
    device: &ykhsm_hsm_emu::pty::EmuPty,
    otp: &str,
) -> (std::thread::JoinHandle<Status>, u64) {
    device.set_misbehave(Misbehave::Slow(Duration::from_secs(3)));
    let held = device.answered() + 1;
    let (socket, otp) = (d.socket.clone(), otp.to_owned());
    let login = std::thread::spawn(move || verify_at(&socket, "alice", &otp));
    assert!(
        device.wait_answered(held, Duration::from_secs(10)),
        "the login never reached the device"
    );
    (login, held)
}

fn verify_at(socket: &std::path::Path, user: &str, otp: &str) -> Status {
    match ykhsm_proto::call(
        socket,
        ykhsm_proto::ServerUid::ROOT,
        &Request::Verify {
            user: user.into(),
            otp: ykhsm_proto::Zeroizing::new(otp.into()),
        },
        Duration::from_secs(30),
    ) {
        Ok(Response::Verdict { status }) => status,
        other => panic!("{other:?}"),
    }
}

/// Opens `device` for reading and writing as `nobody`, as any other program
/// would (pyhsm's tools, a terminal): a shell run through `setpriv`. `Err`
/// with the shell's message if the open fails.
fn open_as_nobody(device: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", "exec 3<>\"$1\"", "sh"])
        .arg(device)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
