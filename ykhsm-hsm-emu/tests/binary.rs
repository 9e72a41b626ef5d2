//! The `ykhsm-hsm-emu` binary, driven by the real driver
//! (`ykhsm_yubihsm::YubiHsm`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ykhsm_core::KeyHandle;
use ykhsm_core::aead::{KeyHandleKey, Nonce, YubiKeyAead};
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_yubihsm::YubiHsm;
use ykhsm_yubihsm::wire::Status;

const TIMEOUT: Duration = Duration::from_millis(400);
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const MASTER_HEX: &str = "5a5a5a5a0102030405060708";

fn start(args: &[&str]) -> (Child, ChildStdout, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        format!(r#"{{"1": "{KEY_HEX}", "8192": "{}"}}"#, &KEY_HEX[..32]),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ykhsm-hsm-emu"))
        .arg("--keys")
        .arg(&keys)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.ends_with('\n'), "{line:?}");
    let path = PathBuf::from(line.trim_end());
    (child, stdout.into_inner(), path, dir)
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the emulator did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn binary_serves_the_driver_unlocks_and_exits_when_stdin_closes() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyHSM");
    let (mut child, _stdout, path, _keys_dir) = start(&[
        "--lock-master-key",
        MASTER_HEX,
        "--link",
        link.to_str().unwrap(),
    ]);
    assert!(path.starts_with("/dev/"), "{}", path.display());
    assert_eq!(std::fs::read_link(&link).unwrap(), path);

    let mut hsm = YubiHsm::open(&link, TIMEOUT).unwrap();
    assert_eq!(hsm.info().protocol, 1);
    assert_eq!(hsm.system_info().unwrap(), hsm.info());
    assert_eq!(hsm.echo(b"ekoeko").unwrap(), b"ekoeko");

    // Locked until YSM_KEY_STORE_DECRYPT with the master key.
    let yk = SoftYubiKey::new(
        PublicId::parse("ftftftcccccb").unwrap(),
        YubiKeySecrets::new([0x33; 16], [1, 2, 3, 4, 5, 6]),
    );
    let nonce = Nonce::from_public_id(yk.public_id()).unwrap();
    let kh = KeyHandle(1);
    let key = KeyHandleKey::new(hex::decode(KEY_HEX).unwrap()).unwrap();
    let aead = YubiKeyAead::seal(&key, kh, &nonce, yk.secrets()).unwrap();
    let otp = yk.otp_with(9, 2);
    let err = hsm.otp_decode(kh, &nonce, &aead, otp.token()).unwrap_err();
    assert_eq!(err.status(), Some(Status::KeyStorageLocked), "{err}");
    let err = hsm.key_store_decrypt(&[0x5a; 12]).unwrap_err();
    assert_eq!(err.status(), Some(Status::Mismatch), "{err}");
    hsm.key_store_decrypt(&hex::decode(MASTER_HEX).unwrap())
        .unwrap();
    let counters = hsm.otp_decode(kh, &nonce, &aead, otp.token()).unwrap();
    assert_eq!((counters.use_counter, counters.session_use), (9, 2));
    // The permissions: buffer AEAD generate with a user nonce, on the
    // 16-byte key too.
    let answer = hsm
        .buffer_aead_generate(KeyHandle(8192), &nonce, &yk.secrets().to_plaintext()[..])
        .unwrap();
    let key16 = KeyHandleKey::new(hex::decode(&KEY_HEX[..32]).unwrap()).unwrap();
    let soft = YubiKeyAead::seal(&key16, KeyHandle(8192), &nonce, yk.secrets()).unwrap();
    assert_eq!(answer.aead, soft.0);

    // Stdin closed: the emulator exits, the device is gone, the link removed.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"typed input is ignored\n").unwrap();
    assert_eq!(hsm.echo(b"still here").unwrap(), b"still here");
    drop(stdin);
    assert!(wait_exit(&mut child).success());
    assert!(hsm.echo(b"gone?").unwrap_err().is_gone());
    assert!(std::fs::symlink_metadata(&link).is_err());
}

#[test]
fn binary_exits_on_sigterm_and_refuses_bad_options() {
    let (mut child, _stdout, path, _keys_dir) = start(&[]);
    let mut hsm = YubiHsm::open(&path, TIMEOUT).unwrap();
    assert_eq!(hsm.echo(b"before").unwrap(), b"before");
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child).success());

    // A master key that is not hex, and a keys file that does not exist.
    let out = Command::new(env!("CARGO_BIN_EXE_ykhsm-hsm-emu"))
        .args([
            "--keys",
            "/nonexistent/keys.json",
            "--lock-master-key",
            "xyz",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_ykhsm-hsm-emu"))
        .args(["--keys", "/nonexistent/keys.json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("/nonexistent/keys.json"), "{msg}");
}
