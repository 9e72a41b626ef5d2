//! `backend = "yubihsm"`: the real daemon on the YubiHSM 1 emulator's
//! pseudo-terminal, with the same AEAD files the soft backend reads (key
//! handle 1 holds the same key in both), giving the same answers.

mod common;

use common::Env;
use ykhsm_core::aead::KeyHandleKey;
use ykhsm_core::yubihsm::permission;
use ykhsm_hsm_emu::pty::EmuPty;
use ykhsm_hsm_emu::{Emulator, Link};
use ykhsm_proto::Status;

/// An emulated YubiHSM whose key handle 1 is the test installation's.
fn hsm() -> EmuPty {
    let mut emu = Emulator::new(1);
    emu.add_key(
        1,
        KeyHandleKey::new(hex::decode(common::KH1_KEY).unwrap()).unwrap(),
        permission::AEAD_YUBIKEY_OTP_DECODE
            | permission::BUFFER_AEAD_GENERATE
            | permission::BUFFER_LOAD
            | permission::USER_NONCE,
    );
    EmuPty::start(Link::new(emu)).unwrap()
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
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
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
