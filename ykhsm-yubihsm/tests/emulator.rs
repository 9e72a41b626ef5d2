//! The driver against the in-process emulator on a pseudo-terminal.

use std::path::Path;
use std::time::{Duration, Instant};

use ykhsm_core::aead::{KeyHandleKey, Nonce, YubiKeyAead};
use ykhsm_core::backend::{Backend, BackendError, FailureCause, Purpose};
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_hsm_emu::pty::EmuPty;
use ykhsm_hsm_emu::{Emulator, Link, Misbehave};
use ykhsm_yubihsm::wire::{Status, permission};
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

/// Only one process (one `YubiHsm`) may have the device open: a second
/// open is refused by name until the first is closed.
#[test]
fn a_second_open_of_the_device_is_refused_while_the_first_holds_it() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let first = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    let err = YubiHsm::open(emu.path(), TIMEOUT).unwrap_err();
    assert!(matches!(err, HsmError::Busy { .. }), "{err:?}");
    assert!(err.to_string().contains("another process"), "{err}");
    drop(first);
    let mut second = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    assert_eq!(second.echo(b"mine now").unwrap(), b"mine now");
}

/// Opens `device` for reading and writing as `nobody` (a shell run through
/// `setpriv`, as any other program would open it): `Err` with the shell's
/// message if the open fails.
fn open_as_nobody(device: &Path) -> Result<(), String> {
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

/// The driver holds the port in exclusive mode (`TIOCEXCL`): while it is
/// open, an unprivileged process cannot open the device (EBUSY), even where
/// the file's mode would let it; once the driver is dropped (the port
/// closed) it can again.
#[test]
fn the_port_is_exclusive_while_open_and_released_when_dropped() {
    use std::os::unix::fs::PermissionsExt;
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    std::fs::set_permissions(emu.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    open_as_nobody(emu.path()).expect("anyone may open it before");
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    let err = open_as_nobody(emu.path()).unwrap_err();
    assert!(err.contains("Device or resource busy"), "{err}");
    assert_eq!(hsm.echo(b"still mine").unwrap(), b"still mine");
    drop(hsm);
    open_as_nobody(emu.path()).expect("anyone may open it after");
}

#[test]
fn startup_system_info_and_echo() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    assert_eq!(hsm.info().protocol, 1);
    assert_eq!(hsm.system_info().unwrap(), hsm.info());
    assert_eq!(hsm.echo(b"ekoeko").unwrap(), b"ekoeko");
    // The raw-line test at open went through: every byte value, CR and LF
    // crossed the line unchanged (raw mode, no translation).
    let all: Vec<u8> = (0..=u8::MAX).rev().take(90).collect();
    assert_eq!(hsm.echo(&all).unwrap(), all);
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
    match &err {
        BackendError::Failure(FailureCause::Device(cause)) => assert!(
            matches!(cause.downcast_ref(), Some(HsmError::Timeout { .. })),
            "{cause}"
        ),
        other => panic!("{other}"),
    }
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
        BackendError::Failure(FailureCause::Device(cause)) => match cause.downcast_ref() {
            Some(HsmError::Open { path, .. }) => assert_eq!(path, &link_path),
            _ => panic!("{cause}"),
        },
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("ttyHSM"), "{err}");
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
    assert!(
        matches!(&err, BackendError::Failure(FailureCause::Device(cause))
            if cause.downcast_ref::<HsmError>().is_some_and(HsmError::is_gone)),
        "{err}"
    );
    assert!(!err.is_bad_otp());
    assert!(!backend.is_connected());

    // Replugged (new pty behind the same path): recovers by itself.
    let second = EmuPty::start(Link::new(emulator())).unwrap();
    std::fs::remove_file(&link_path).unwrap();
    std::os::unix::fs::symlink(second.path(), &link_path).unwrap();
    backend.decode_otp(kh, &nonce, &aead, otp.token()).unwrap();
    assert!(backend.is_connected());
}

// ---- Misbehaving device (ykhsm_hsm_emu::Misbehave) -------------------------

/// An otp_decode of `yk`'s OTP with these counters through key handle 1, and
/// the counters it must give.
fn decode_counters(hsm: &mut YubiHsm, yk: &SoftYubiKey, use_counter: u16, session: u8) {
    let nonce = nonce_of(yk);
    let kh = KeyHandle(KH_OTP);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), kh, &nonce, yk.secrets()).unwrap();
    let otp = yk.otp_with(use_counter, session);
    let got = hsm.otp_decode(kh, &nonce, &aead, otp.token()).unwrap();
    assert_eq!(
        (got.use_counter, got.session_use),
        (use_counter, session),
        "the answer to another OTP"
    );
    assert_eq!(got, yk.secrets().decode(otp.token()).unwrap());
}

#[test]
fn garbage_is_a_frame_error_then_resync_recovers() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    let yk = soft_key();
    emu.set_misbehave(Misbehave::Garbage);
    for _ in 0..2 {
        let start = Instant::now();
        let err = hsm.echo(b"garbage please").unwrap_err();
        assert!(matches!(err, HsmError::Frame { .. }), "{err}");
        assert!(err.to_string().contains("YSM_ECHO"), "{err}");
        // Seen from the header, not after waiting for the deadline.
        assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    }
    let nonce = nonce_of(&yk);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), KeyHandle(KH_OTP), &nonce, yk.secrets()).unwrap();
    let err = hsm
        .otp_decode(KeyHandle(KH_OTP), &nonce, &aead, yk.otp_with(3, 1).token())
        .unwrap_err();
    assert!(matches!(err, HsmError::Frame { .. }), "{err}");
    assert!(emu.misbehaved() >= 3);

    emu.set_misbehave(Misbehave::None);
    assert_eq!(hsm.echo(b"clean again").unwrap(), b"clean again");
    decode_counters(&mut hsm, &yk, 4, 2);
    assert_eq!(hsm.system_info().unwrap(), hsm.info());
}

#[test]
fn garbage_at_open_is_a_frame_error_not_a_hang() {
    let mut emu = emulator();
    emu.set_misbehave(Misbehave::Garbage);
    let emu = EmuPty::start(Link::new(emu)).unwrap();
    let start = Instant::now();
    let err = YubiHsm::open(emu.path(), TIMEOUT).unwrap_err();
    assert!(matches!(err, HsmError::Frame { .. }), "{err}");
    assert!(start.elapsed() < 3 * TIMEOUT, "{:?}", start.elapsed());
    emu.set_misbehave(Misbehave::None);
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    decode_counters(&mut hsm, &soft_key(), 1, 0);
}

/// The late answer to a timed-out request must never be taken for the
/// answer to the next one, whether it arrives during the resync's drain
/// (`late` just above the timeout) or after it, while the host is already
/// talking again.
#[test]
fn slow_answer_times_out_and_the_late_answer_is_not_taken_for_the_next() {
    let yk = soft_key();
    let nonce = nonce_of(&yk);
    let kh = KeyHandle(KH_OTP);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), kh, &nonce, yk.secrets()).unwrap();
    for late in [Duration::from_millis(50), Duration::from_millis(300)] {
        let emu = EmuPty::start(Link::new(emulator())).unwrap();
        let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();

        // Echo: different payloads.
        emu.set_misbehave(Misbehave::Slow(TIMEOUT + late));
        let start = Instant::now();
        let err = hsm.echo(b"first, answered late").unwrap_err();
        assert!(matches!(err, HsmError::Timeout { .. }), "{err}");
        assert!(start.elapsed() >= TIMEOUT, "{:?}", start.elapsed());
        emu.set_misbehave(Misbehave::None);
        assert_eq!(hsm.echo(b"second").unwrap(), b"second", "late {late:?}");
        // The late answer was sent (before the one to "second").
        assert_eq!(emu.misbehaved(), 1);
        assert_eq!(hsm.echo(b"third").unwrap(), b"third");

        // OTP decode: same key handle and nonce, so only the counters tell
        // the answers apart.
        emu.set_misbehave(Misbehave::Slow(TIMEOUT + late));
        let err = hsm
            .otp_decode(kh, &nonce, &aead, yk.otp_with(10, 1).token())
            .unwrap_err();
        assert!(matches!(err, HsmError::Timeout { .. }), "{err}");
        emu.set_misbehave(Misbehave::None);
        decode_counters(&mut hsm, &yk, 11, 0);
        assert_eq!(emu.misbehaved(), 2);
        decode_counters(&mut hsm, &yk, 12, 0);
    }
}

#[test]
fn slow_but_within_the_timeout_is_fine() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    emu.set_misbehave(Misbehave::Slow(TIMEOUT / 4));
    let start = Instant::now();
    assert_eq!(hsm.echo(b"patience").unwrap(), b"patience");
    assert!(start.elapsed() >= TIMEOUT / 4);
    decode_counters(&mut hsm, &soft_key(), 7, 7);
    assert_eq!(emu.misbehaved(), 2);
}

#[test]
fn reset_mid_command_times_out_then_resync_recovers() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    let yk = soft_key();
    emu.set_misbehave(Misbehave::ResetMidCommand);
    let err = hsm.echo(b"cut in half").unwrap_err();
    assert!(matches!(err, HsmError::Timeout { .. }), "{err}");
    let nonce = nonce_of(&yk);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), KeyHandle(KH_OTP), &nonce, yk.secrets()).unwrap();
    let err = hsm
        .otp_decode(KeyHandle(KH_OTP), &nonce, &aead, yk.otp_with(5, 0).token())
        .unwrap_err();
    assert!(matches!(err, HsmError::Timeout { .. }), "{err}");
    assert_eq!(emu.misbehaved(), 2);

    emu.set_misbehave(Misbehave::None);
    assert_eq!(hsm.echo(b"whole").unwrap(), b"whole");
    decode_counters(&mut hsm, &yk, 5, 1);

    // Reset on the buffer load of a buffer AEAD generate (one shot): the
    // next one loads the buffer again and gives the soft seal's bytes.
    emu.set_misbehave_once(Misbehave::ResetMidCommand);
    let err = hsm
        .buffer_aead_generate(KeyHandle(KH_OTP), &nonce, &yk.secrets().to_plaintext()[..])
        .unwrap_err();
    assert!(matches!(err, HsmError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("YSM_BUFFER_LOAD"), "{err}");
    assert_eq!(emu.misbehave(), Misbehave::None);
    let answer = hsm
        .buffer_aead_generate(KeyHandle(KH_OTP), &nonce, &yk.secrets().to_plaintext()[..])
        .unwrap();
    let soft = YubiKeyAead::seal(&kh_key(KH_OTP), KeyHandle(KH_OTP), &nonce, yk.secrets()).unwrap();
    assert_eq!(answer.aead, soft.0);
}

#[test]
fn close_is_gone_and_stays_gone() {
    let emu = EmuPty::start(Link::new(emulator())).unwrap();
    let mut hsm = YubiHsm::open(emu.path(), TIMEOUT).unwrap();
    emu.set_misbehave(Misbehave::Close);
    let start = Instant::now();
    let err = hsm.echo(b"unplugged").unwrap_err();
    assert!(err.is_gone(), "{err}");
    assert!(err.to_string().contains("YSM_ECHO"), "{err}");
    assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    assert!(emu.is_gone());
    emu.set_misbehave(Misbehave::None);
    assert!(emu.is_gone());
    // The port stays dead: every later exchange is Gone, none hangs.
    for _ in 0..2 {
        let start = Instant::now();
        let err = hsm.echo(b"anyone?").unwrap_err();
        assert!(err.is_gone(), "{err}");
        assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    }
}

#[test]
fn close_then_backend_reopens_the_replugged_device() {
    let dir = tempfile::tempdir().unwrap();
    let link_path = dir.path().join("ttyHSM");
    let first = EmuPty::start(Link::new(emulator())).unwrap();
    std::os::unix::fs::symlink(first.path(), &link_path).unwrap();
    let backend = YubiHsmBackend::open(&link_path, TIMEOUT).unwrap();
    let yk = soft_key();
    let nonce = nonce_of(&yk);
    let kh = KeyHandle(KH_OTP);
    let aead = YubiKeyAead::seal(&kh_key(KH_OTP), kh, &nonce, yk.secrets()).unwrap();

    let got = backend
        .decode_otp(kh, &nonce, &aead, yk.otp_with(1, 0).token())
        .unwrap();
    assert_eq!((got.use_counter, got.session_use), (1, 0));

    first.set_misbehave(Misbehave::Close);
    let err = backend
        .with_hsm(|hsm| hsm.otp_decode(kh, &nonce, &aead, yk.otp_with(2, 0).token()))
        .unwrap_err();
    assert!(err.is_gone(), "{err}");
    assert!(!backend.is_connected());
    assert!(first.is_gone());
    // Through the Backend trait: a failure, not a bad OTP.
    let err = backend
        .decode_otp(kh, &nonce, &aead, yk.otp_with(2, 0).token())
        .unwrap_err();
    assert!(!err.is_bad_otp(), "{err}");

    // Replugged: a new pty behind the same path.
    let second = EmuPty::start(Link::new(emulator())).unwrap();
    std::fs::remove_file(&link_path).unwrap();
    std::os::unix::fs::symlink(second.path(), &link_path).unwrap();
    let got = backend
        .decode_otp(kh, &nonce, &aead, yk.otp_with(2, 1).token())
        .unwrap();
    assert_eq!((got.use_counter, got.session_use), (2, 1));
    assert!(backend.is_connected());
    assert_eq!(second.misbehaved(), 0);
}
