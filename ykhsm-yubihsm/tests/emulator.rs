//! The driver against the in-process emulator on a pseudo-terminal.

use std::path::Path;
use std::time::{Duration, Instant};

use ykhsm_core::aead::{KeyHandleKey, Nonce, YubiKeyAead};
use ykhsm_core::backend::{Backend, BackendError, Purpose};
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_core::yubihsm::{Status, permission};
use ykhsm_hsm_emu::pty::EmuPty;
use ykhsm_hsm_emu::{Emulator, Link};
use ykhsm_yubihsm::{HsmError, YubiHsm, YubiHsmBackend};

const TIMEOUT: Duration = Duration::from_millis(400);
/// Key handle allowed to decode OTPs and make AEADs with a user nonce.
const KH_OTP: u32 = 1;
/// Key handle that may make AEADs but not decode OTPs.
const KH_GEN: u32 = 2;

fn kh_key(handle: u32) -> KeyHandleKey {
    let mut bytes = vec![0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::try_from(i).unwrap() ^ u8::try_from(handle).unwrap();
    }
    KeyHandleKey::new(bytes).unwrap()
}

fn emulator() -> Emulator {
    let mut emu = Emulator::new(7);
    emu.add_key(
        KH_OTP,
        kh_key(KH_OTP),
        permission::AEAD_YUBIKEY_OTP_DECODE
            | permission::AEAD_GENERATE
            | permission::BUFFER_AEAD_GENERATE
            | permission::BUFFER_LOAD
            | permission::USER_NONCE,
    );
    emu.add_key(
        KH_GEN,
        kh_key(KH_GEN),
        permission::BUFFER_AEAD_GENERATE | permission::BUFFER_LOAD | permission::USER_NONCE,
    );
    emu
}

fn soft_key() -> SoftYubiKey {
    let secrets = YubiKeySecrets::new(
        [
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
            0xff, 0x01,
        ],
        [1, 2, 3, 4, 5, 6],
    );
    SoftYubiKey::new(PublicId::parse("ftftftcccccb").unwrap(), secrets)
}

fn nonce_of(yk: &SoftYubiKey) -> Nonce {
    Nonce::from_public_id(yk.public_id()).unwrap()
}

#[test]
fn startup_system_info_echo_random() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    assert_eq!(hsm.info().protocol, 1);
    assert_eq!(hsm.system_info().unwrap(), hsm.info());
    assert_eq!(hsm.echo(b"ekoeko").unwrap(), b"ekoeko");
    assert_eq!(hsm.random(200).unwrap().len(), 200);
    assert_eq!(hsm.path(), emu.path());
}

#[test]
fn open_refuses_configuration_mode() {
    let mut link = Link::new(emulator());
    link.set_config_mode(true);
    let emu = EmuPty::start(link).unwrap();
    let err = YubiHsm::open(emu.path(), TIMEOUT).unwrap_err();
    assert!(matches!(err, HsmError::ConfigMode { .. }), "{err}");
    assert!(err.to_string().contains(&emu.path().display().to_string()));
    assert!(err.to_string().contains("configuration mode"));
}

#[test]
fn open_missing_device_names_path() {
    let err = YubiHsm::open(Path::new("/nonexistent/ttyACM9"), TIMEOUT).unwrap_err();
    assert!(matches!(err, HsmError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/ttyACM9"));
}

#[test]
fn otp_decode_good_bad_and_not_permitted() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let backend = YubiHsmBackend::open(emu.path(), TIMEOUT).unwrap();
    let mut yk = soft_key();
    let nonce = nonce_of(&yk);
    let kh = KeyHandle(KH_OTP);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), kh, &nonce, yk.secrets()).unwrap();

    // Good OTP: the counters the soft decode gives.
    yk.set_counters(5, 3);
    let otp = yk.next_otp();
    let want = yk.secrets().decode(otp.token()).unwrap();
    let got = backend.decode_otp(kh, &nonce, &aead, otp.token()).unwrap();
    assert_eq!(got, want);
    assert_eq!((got.use_counter, got.session_use), (5, 3));

    // OTP from another YubiKey key: CRC/uid wrong → OtpInvalid (BAD_OTP).
    let other = SoftYubiKey::new(
        PublicId::parse("ftftftcccccb").unwrap(),
        YubiKeySecrets::new([0x42; 16], [1, 2, 3, 4, 5, 6]),
    );
    let bad = other.otp_with(5, 4);
    let err = backend
        .decode_otp(kh, &nonce, &aead, bad.token())
        .unwrap_err();
    assert!(matches!(err, BackendError::OtpInvalid), "{err}");
    assert!(err.is_bad_otp());

    // Tampered AEAD → AeadInvalid (BAD_OTP).
    let mut tampered = aead.clone();
    tampered.0[0] ^= 1;
    let err = backend
        .decode_otp(kh, &nonce, &tampered, otp.token())
        .unwrap_err();
    assert!(matches!(err, BackendError::AeadInvalid { .. }), "{err}");
    assert!(err.is_bad_otp());

    // Key handle without the OTP-decode permission → named, not BAD_OTP.
    let kh2 = KeyHandle(KH_GEN);
    let aead2 = YubiKeyAead::seal(&kh_key(KH_GEN), kh2, &nonce, yk.secrets()).unwrap();
    let err = backend
        .decode_otp(kh2, &nonce, &aead2, otp.token())
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::NotPermitted {
                key_handle: KeyHandle(KH_GEN),
                purpose: Purpose::OtpDecode
            }
        ),
        "{err}"
    );
    assert!(!err.is_bad_otp());

    // Unknown key handle.
    let err = backend
        .decode_otp(KeyHandle(99), &nonce, &aead, otp.token())
        .unwrap_err();
    assert!(
        matches!(err, BackendError::UnknownKeyHandle { .. }),
        "{err}"
    );

    // The driver itself names command and status.
    let err = backend
        .with_hsm(|hsm| hsm.otp_decode(kh2, &nonce, &aead2, otp.token()))
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::FunctionDisabled));
    let msg = err.to_string();
    assert!(msg.contains("YSM_AEAD_YUBIKEY_OTP_DECODE"), "{msg}");
    assert!(msg.contains("YSM_FUNCTION_DISABLED"), "{msg}");

    // check_key_handle probes.
    backend.check_key_handle(kh, Purpose::OtpDecode).unwrap();
    backend.check_key_handle(kh, Purpose::AeadGenerate).unwrap();
    backend
        .check_key_handle(kh2, Purpose::AeadGenerate)
        .unwrap();
    assert!(matches!(
        backend.check_key_handle(kh2, Purpose::OtpDecode),
        Err(BackendError::NotPermitted { .. })
    ));
    assert!(matches!(
        backend.check_key_handle(KeyHandle(99), Purpose::OtpDecode),
        Err(BackendError::UnknownKeyHandle { .. })
    ));
}

#[test]
fn wrap_secrets_matches_soft_seal() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let backend = YubiHsmBackend::open(emu.path(), TIMEOUT).unwrap();
    let yk = soft_key();
    let nonce = nonce_of(&yk);
    for handle in [KH_OTP, KH_GEN] {
        let kh = KeyHandle(handle);
        let aead = backend.wrap_secrets(kh, &nonce, yk.secrets()).unwrap();
        let soft = YubiKeyAead::seal(&kh_key(handle), kh, &nonce, yk.secrets()).unwrap();
        assert_eq!(aead, soft);
        let opened = aead.open(&kh_key(handle), kh, &nonce).unwrap();
        assert!(opened.ct_eq(yk.secrets()));
    }
    // Direct AEAD generate (0x01) gives the same bytes.
    let answer = backend
        .with_hsm(|hsm| {
            hsm.aead_generate(KeyHandle(KH_OTP), &nonce, &yk.secrets().to_plaintext()[..])
        })
        .unwrap();
    let soft = YubiKeyAead::seal(&kh_key(KH_OTP), KeyHandle(KH_OTP), &nonce, yk.secrets()).unwrap();
    assert_eq!(answer.aead, soft.0);
}

#[test]
fn timeout_then_recovery() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let backend = YubiHsmBackend::open(emu.path(), TIMEOUT).unwrap();
    emu.set_mute(true);
    let start = Instant::now();
    let err = backend.system_info().unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, HsmError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("YSM_SYSTEM_INFO_QUERY"), "{err}");
    assert!(elapsed >= TIMEOUT, "{elapsed:?}");
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(500),
        "{elapsed:?}"
    );
    // Decode under a mute device: a backend failure, not BAD_OTP.
    let yk = soft_key();
    let nonce = nonce_of(&yk);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), KeyHandle(KH_OTP), &nonce, yk.secrets()).unwrap();
    let otp = yk.otp_with(1, 0);
    let err = backend
        .decode_otp(KeyHandle(KH_OTP), &nonce, &aead, otp.token())
        .unwrap_err();
    assert!(matches!(err, BackendError::Failure(_)), "{err}");
    assert!(!err.is_bad_otp());
    // The emulator answers again: the next request resyncs and works.
    emu.set_mute(false);
    let info = backend.system_info().unwrap();
    assert_eq!(info.protocol, 1);
    backend
        .decode_otp(KeyHandle(KH_OTP), &nonce, &aead, otp.token())
        .unwrap();
}

#[test]
fn unplug_and_replug_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let link_path = dir.path().join("ttyHSM");
    let backend = YubiHsmBackend::new_lazy(&link_path, TIMEOUT);
    let yk = soft_key();
    let nonce = nonce_of(&yk);
    let kh = KeyHandle(KH_OTP);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), kh, &nonce, yk.secrets()).unwrap();
    let otp = yk.otp_with(1, 0);

    // No device yet: a failure naming the path.
    let err = backend
        .decode_otp(kh, &nonce, &aead, otp.token())
        .unwrap_err();
    match &err {
        BackendError::Failure(msg) => assert!(msg.contains("ttyHSM"), "{msg}"),
        other => panic!("{other}"),
    }
    assert!(!backend.is_connected());

    // Plugged in.
    let first = EmuPty::start(Link::new(emulator())).unwrap();
    std::os::unix::fs::symlink(first.path(), &link_path).unwrap();
    backend.decode_otp(kh, &nonce, &aead, otp.token()).unwrap();
    assert!(backend.is_connected());

    // Unplugged: the master side closes.
    drop(first);
    let err = backend
        .decode_otp(kh, &nonce, &aead, otp.token())
        .unwrap_err();
    assert!(matches!(err, BackendError::Failure(_)), "{err}");
    assert!(!err.is_bad_otp());
    assert!(!backend.is_connected());

    // Replugged (new pty behind the same path): recovers by itself.
    let second = EmuPty::start(Link::new(emulator())).unwrap();
    std::fs::remove_file(&link_path).unwrap();
    std::os::unix::fs::symlink(second.path(), &link_path).unwrap();
    backend.decode_otp(kh, &nonce, &aead, otp.token()).unwrap();
    assert!(backend.is_connected());
}
