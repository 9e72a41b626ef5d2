//! The emulator against ykhsm-core's committed `tests/data/vectors-hsm.json`
//! (`recorded`, `frames`, `keys_json`) and its lock, permission and stream
//! behaviour.
//!
//! Not exercised here, by design: `R4-hmac-sha1` is HMAC-SHA1, a command
//! ykhsm never sends (the emulator does not answer it), and
//! `R5-key-handle-parse` and `R6-modhex` are host-side parsing vectors
//! (pyhsm's `key_handle_to_int`, modhex) with no frame to send to a device.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use serde_json::Value;
use ykhsm_core::{KeyHandle, KeyHandleKey, Nonce, OtpCounters, Token, YubiKeyAead, YubiKeySecrets};
use ykhsm_hsm_emu::pty::EmuPty;
use ykhsm_hsm_emu::{CONFIG_PROMPT, Emulator, Link, Misbehave, UnlockSecret};
use ykhsm_yubihsm::wire::{
    self, AeadAnswer, OtpDecodeAnswer, Redacted, Request, Response, Status, SystemInfo, cmd,
    permission,
};
use zeroize::Zeroizing;

const ALL: u32 = permission::AEAD_GENERATE
    | permission::BUFFER_AEAD_GENERATE
    | permission::RANDOM_AEAD_GENERATE
    | permission::AEAD_DECRYPT_CMP
    | permission::AEAD_YUBIKEY_OTP_DECODE
    | permission::HMAC_SHA1_GENERATE
    | permission::USER_NONCE
    | permission::BUFFER_LOAD;

fn vectors() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ykhsm-core/tests/data/vectors-hsm.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("vectors-hsm.json is JSON")
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex string")).expect("valid hex")
}

fn key(v: &Value) -> KeyHandleKey {
    KeyHandleKey::new(bytes(v)).expect("a 16/24/32-byte key")
}

fn nonce(v: &Value) -> Nonce {
    Nonce(bytes(v).try_into().expect("a 6-byte nonce"))
}

fn kh(v: &Value) -> KeyHandle {
    KeyHandle(
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .expect("a key handle"),
    )
}

fn recorded<'a>(v: &'a Value, prefix: &str) -> Vec<&'a Value> {
    v["recorded"]
        .as_array()
        .expect("recorded")
        .iter()
        .filter(|c| c["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
        .collect()
}

/// An emulator holding every key of `keys_json` with `flags`.
fn emulator_from_keys_json(v: &Value, flags: u32) -> Emulator {
    let mut emu = Emulator::new(7);
    for (handle, hexkey) in v["keys_json"].as_object().expect("keys_json") {
        let handle: u32 = handle.parse().expect("decimal key handle");
        emu.add_key(handle, key(hexkey), flags);
    }
    emu
}

fn request(r: &Request) -> Vec<u8> {
    r.encode().expect("encodable").to_vec()
}

fn secret(data: &[u8]) -> Redacted<Zeroizing<Vec<u8>>> {
    Redacted(Zeroizing::new(data.to_vec()))
}

#[test]
fn keys_json_key_handle_8192_is_the_recorded_vectors_key() {
    let v = vectors();
    for c in recorded(&v, "R1-").into_iter().chain(recorded(&v, "R2-")) {
        assert_eq!(c["key_hex"], v["keys_json"]["8192"], "{}", c["id"]);
    }
}

#[test]
fn recorded_buffer_aead_generate_r1_r2() {
    let v = vectors();
    for c in recorded(&v, "R1-").into_iter().chain(recorded(&v, "R2-")) {
        let id = c["id"].as_str().unwrap_or_default();
        let mut emu = emulator_from_keys_json(&v, ALL);
        let plaintext = bytes(&c["plaintext_hex"]);
        let load = request(&Request::BufferLoad {
            offset: 0,
            data: secret(&plaintext),
        });
        let count = u8::try_from(plaintext.len()).expect("short");
        assert_eq!(
            emu.handle_frame(&load),
            Response::BufferLoad { count }.encode(),
            "{id}"
        );
        let gen_req = request(&Request::BufferAeadGenerate {
            nonce: nonce(&c["nonce_hex"]),
            key_handle: kh(&c["key_handle"]),
        });
        let expected = Response::BufferAeadGenerate(AeadAnswer {
            nonce: nonce(&c["nonce_hex"]),
            key_handle: kh(&c["key_handle"]),
            status: Status::Ok,
            aead: bytes(&c["aead_hex"]),
        })
        .encode();
        assert_eq!(emu.handle_frame(&gen_req), expected, "{id}");
    }
}

#[test]
fn recorded_otp_decodes_r3() {
    let v = vectors();
    let cases = recorded(&v, "R3-");
    assert_eq!(cases.len(), 3);
    for c in cases {
        let id = c["id"].as_str().unwrap_or_default();
        let mut emu = emulator_from_keys_json(&v, permission::AEAD_YUBIKEY_OTP_DECODE);
        let n = nonce(&c["public_id_hex"]);
        let k = kh(&c["key_handle"]);
        let frame = request(&Request::OtpDecode {
            nonce: n,
            key_handle: k,
            otp: Token::from_bytes(bytes(&c["otp_ciphertext_hex"]).try_into().expect("16")),
            aead: YubiKeyAead::from_slice(&bytes(&c["aead_hex"])).expect("30"),
        });
        let answer = match c["expected_status"].as_str() {
            Some("YSM_STATUS_OK") => OtpDecodeAnswer::ok(
                n,
                k,
                &OtpCounters {
                    use_counter: u16::try_from(c["use_ctr"].as_u64().expect("n")).expect("u16"),
                    session_use: u8::try_from(c["session_ctr"].as_u64().expect("n")).expect("u8"),
                    ts_high: u8::try_from(c["ts_high"].as_u64().expect("n")).expect("u8"),
                    ts_low: u16::try_from(c["ts_low"].as_u64().expect("n")).expect("u16"),
                },
            ),
            Some("YSM_OTP_INVALID") => OtpDecodeAnswer::failed(n, k, Status::OtpInvalid),
            other => panic!("{id}: unexpected expected_status {other:?}"),
        };
        let got = emu.handle_frame(&frame);
        assert_eq!(got, Response::OtpDecode(answer).encode(), "{id}");
        assert_eq!(got.first(), Some(&0x12), "{id}: bcnt");
    }
}

#[test]
fn frames_examples() {
    let v = vectors();
    let f = &v["frames"];
    let mut emu = emulator_from_keys_json(&v, ALL);

    // Echo.
    assert_eq!(
        emu.handle_frame(&bytes(&f["echo_request_hex"])),
        bytes(&f["echo_response_hex"])
    );

    // System info: bcnt 0x11, 0xa6, version, protocol 1, 12-byte uid.
    let info = emu.handle_frame(&bytes(&f["system_info_request_hex"]));
    assert_eq!(info.len(), 18);
    assert_eq!(info[..2], [0x11, 0xa6]);
    assert_eq!(info[5], 1, "protocol version");
    let decoded = Response::decode(cmd::SYSTEM_INFO_QUERY, &info).expect("decodes");
    assert_eq!(decoded, Response::SystemInfo(emu.system_info()));

    // Random, nonce get and AEAD decrypt-compare: commands ykhsm never
    // sends get no answer (as any command the codec does not speak).
    for name in [
        "random_16_request_hex",
        "nonce_get_request_hex",
        "aead_decrypt_cmp_s1_kh2000_request_hex",
    ] {
        assert!(emu.handle_frame(&bytes(&f[name])).is_empty(), "{name}");
    }

    // Buffer load of S1, then buffer AEAD generate under 0x2000.
    assert_eq!(
        emu.handle_frame(&bytes(&f["buffer_load_s1_request_hex"])),
        vec![0x02, 0xa0, 22]
    );
    assert_eq!(
        emu.handle_frame(&bytes(&f["buffer_aead_generate_s1_kh2000_request_hex"])),
        bytes(&f["buffer_aead_generate_s1_kh2000_response_hex"])
    );
}

#[test]
fn resync_bytes_get_no_answer_and_echo_follows() {
    let v = vectors();
    let f = &v["frames"];
    let mut link = Link::new(Emulator::new(3));
    assert!(link.input(&bytes(&f["resync_bytes_hex"])).is_empty());
    assert_eq!(link.pending_len(), 0);
    let mut both = bytes(&f["resync_bytes_hex"]);
    both.extend(bytes(&f["echo_request_hex"]));
    assert_eq!(link.input(&both), bytes(&f["echo_response_hex"]));
}

fn otp_decode_frame(v: &Value) -> (Vec<u8>, Nonce, KeyHandle) {
    let c = recorded(v, "R3-otp-decode-828e")[0];
    let n = nonce(&c["public_id_hex"]);
    let k = kh(&c["key_handle"]);
    let frame = request(&Request::OtpDecode {
        nonce: n,
        key_handle: k,
        otp: Token::from_bytes(bytes(&c["otp_ciphertext_hex"]).try_into().expect("16")),
        aead: YubiKeyAead::from_slice(&bytes(&c["aead_hex"])).expect("30"),
    });
    (frame, n, k)
}

fn otp_status(frame: &[u8]) -> Status {
    match Response::decode(cmd::AEAD_YUBIKEY_OTP_DECODE, frame).expect("an answer") {
        Response::OtpDecode(a) => a.status,
        other => panic!("not an OTP-decode answer: {other:?}"),
    }
}

#[test]
fn otp_decode_statuses() {
    let v = vectors();
    let (frame, n, k) = otp_decode_frame(&v);

    // Key handle without the OTP-decode flag: function disabled.
    let mut emu = emulator_from_keys_json(&v, ALL & !permission::AEAD_YUBIKEY_OTP_DECODE);
    assert_eq!(
        otp_status(&emu.handle_frame(&frame)),
        Status::FunctionDisabled
    );

    // No such key handle.
    let mut emu = Emulator::new(1);
    assert_eq!(
        otp_status(&emu.handle_frame(&frame)),
        Status::KeyHandleInvalid
    );

    // Wrong key under the right handle: the AEAD does not authenticate.
    emu.add_key(k.0, KeyHandleKey::new(vec![9; 32]).expect("key"), ALL);
    let answer = emu.handle_frame(&frame);
    assert_eq!(otp_status(&answer), Status::AeadInvalid);
    assert_eq!(
        answer,
        Response::OtpDecode(OtpDecodeAnswer::failed(n, k, Status::AeadInvalid)).encode()
    );
}

#[test]
fn aead_generate_permissions_and_parameters() {
    let v = vectors();
    let n = Nonce(*b"abc123");
    let k = KeyHandle(8192);
    let load = request(&Request::BufferLoad {
        offset: 0,
        data: secret(b"x"),
    });
    let gen_frame = |nonce, key_handle| request(&Request::BufferAeadGenerate { nonce, key_handle });
    let answer =
        |frame: &[u8]| match Response::decode(cmd::BUFFER_AEAD_GENERATE, frame).expect("answer") {
            Response::BufferAeadGenerate(a) => a,
            other => panic!("{other:?}"),
        };

    // A user nonce needs YSM_USER_NONCE.
    let mut emu = emulator_from_keys_json(
        &v,
        permission::BUFFER_AEAD_GENERATE | permission::BUFFER_LOAD,
    );
    assert_eq!(emu.handle_frame(&load), vec![0x02, 0xa0, 1]);
    let a = answer(&emu.handle_frame(&gen_frame(n, k)));
    assert_eq!(a.status, Status::FunctionDisabled);
    assert!(a.aead.is_empty());
    // A zero nonce: the device picks one, and seals the buffer's byte.
    let a = answer(&emu.handle_frame(&gen_frame(Nonce([0; 6]), k)));
    assert_eq!(a.status, Status::Ok);
    assert_ne!(a.nonce, Nonce([0; 6]));
    assert_eq!(a.aead.len(), 9);
    // The next zero nonce gets another nonce.
    let b = answer(&emu.handle_frame(&gen_frame(Nonce([0; 6]), k)));
    assert_ne!(b.nonce, a.nonce);

    // Without the command's own flag, or without the key handle.
    let mut emu = emulator_from_keys_json(&v, ALL & !permission::BUFFER_AEAD_GENERATE);
    emu.handle_frame(&load);
    let a = answer(&emu.handle_frame(&gen_frame(n, k)));
    assert_eq!(a.status, Status::FunctionDisabled);
    let a = answer(&emu.handle_frame(&gen_frame(n, KeyHandle(7))));
    assert_eq!(a.status, Status::KeyHandleInvalid);
    assert_eq!((a.nonce, a.key_handle), (n, KeyHandle(7)), "echoed");
}

#[test]
fn locked_emulator_answers_locked_until_unlocked() {
    let v = vectors();
    let (frame, _, _) = otp_decode_frame(&v);
    let mut emu = emulator_from_keys_json(&v, ALL);
    let mut master = Zeroizing::new([0u8; 32]);
    master[..5].copy_from_slice(b"hello");
    emu.lock_with(UnlockSecret::MasterKey(master.clone()));
    assert!(emu.is_locked());
    assert_eq!(
        otp_status(&emu.handle_frame(&frame)),
        Status::KeyStorageLocked
    );

    // Echo and system info still work while locked.
    assert_eq!(
        emu.handle_frame(&bytes(&v["frames"]["echo_request_hex"])),
        bytes(&v["frames"]["echo_response_hex"])
    );

    // Wrong key: mismatch, still locked.
    let wrong = request(&Request::KeyStoreDecrypt {
        key: Redacted(Zeroizing::new([1; 32])),
    });
    assert_eq!(
        emu.handle_frame(&wrong),
        Response::KeyStoreDecrypt {
            status: Status::Mismatch
        }
        .encode()
    );
    // The 0.9.x password command is not the configured secret.
    let pw = request(&Request::KeyStorageUnlock {
        password: Redacted(Zeroizing::new([0; 16])),
    });
    assert_eq!(
        emu.handle_frame(&pw),
        Response::KeyStorageUnlock {
            status: Status::Mismatch
        }
        .encode()
    );
    assert_eq!(
        otp_status(&emu.handle_frame(&frame)),
        Status::KeyStorageLocked
    );

    let right = request(&Request::KeyStoreDecrypt {
        key: Redacted(master),
    });
    assert_eq!(
        emu.handle_frame(&right),
        Response::KeyStoreDecrypt { status: Status::Ok }.encode()
    );
    assert!(!emu.is_locked());
    assert_eq!(otp_status(&emu.handle_frame(&frame)), Status::Ok);
}

#[test]
fn password_unlock_for_0_9_firmware() {
    let mut emu = Emulator::new(2);
    let mut pw = Zeroizing::new([0u8; 16]);
    pw[..6].copy_from_slice(b"secret");
    emu.lock_with(UnlockSecret::Password(pw.clone()));
    let frame = request(&Request::KeyStorageUnlock {
        password: Redacted(pw),
    });
    assert_eq!(
        emu.handle_frame(&frame),
        Response::KeyStorageUnlock { status: Status::Ok }.encode()
    );
    assert!(!emu.is_locked());
}

#[test]
fn admin_otp_unlock_refuses_replay() {
    let v = vectors();
    let c = recorded(&v, "R3-otp-decode-828e")[0];
    let public_id: [u8; 6] = bytes(&c["public_id_hex"]).try_into().expect("6");
    let secrets = || {
        YubiKeySecrets::new(
            bytes(&c["yubikey_aes_key_hex"]).try_into().expect("16"),
            bytes(&c["uid_hex"]).try_into().expect("6"),
        )
    };
    let otp = |hexv: &Value| Token::from_bytes(bytes(hexv).try_into().expect("16"));
    let mut emu = Emulator::new(4);
    emu.lock_with(UnlockSecret::AdminOtp {
        public_id,
        secrets: secrets(),
    });
    let unlock = |t: Token, id: [u8; 6]| {
        request(&Request::HsmUnlock {
            public_id: id,
            otp: t,
        })
    };
    let st = |s| Response::HsmUnlock { status: s }.encode();

    assert_eq!(
        emu.handle_frame(&unlock(otp(&c["otp_ciphertext_hex"]), [1; 6])),
        st(Status::IdNotFound)
    );
    let bad = recorded(&v, "R3-otp-decode-0001")[0];
    assert_eq!(
        emu.handle_frame(&unlock(otp(&bad["otp_ciphertext_hex"]), public_id)),
        st(Status::OtpInvalid)
    );
    let newer = recorded(&v, "R3-otp-decode-c91e")[0];
    assert_eq!(
        emu.handle_frame(&unlock(otp(&newer["otp_ciphertext_hex"]), public_id)),
        st(Status::Ok)
    );
    assert!(!emu.is_locked());
    // Counter 1 after counter 2: replay.
    assert_eq!(
        emu.handle_frame(&unlock(otp(&c["otp_ciphertext_hex"]), public_id)),
        st(Status::OtpReplay)
    );
}

#[test]
fn unknown_and_malformed_frames_get_no_answer() {
    let mut emu = Emulator::new(5);
    // YSM_RANDOM_RESEED: not decoded by the codec.
    let mut reseed = vec![33, 0x25];
    reseed.extend([0; 32]);
    assert!(emu.handle_frame(&reseed).is_empty());
    // Unknown command code.
    assert!(emu.handle_frame(&[0x01, 0x55]).is_empty());
    // Echo whose count disagrees with the frame.
    assert!(emu.handle_frame(&[0x03, 0x23, 0x05, 0x41]).is_empty());
}

#[test]
fn split_and_merged_writes_go_through_link() {
    let v = vectors();
    let f = &v["frames"];
    let echo = bytes(&f["echo_request_hex"]);
    let echo_answer = bytes(&f["echo_response_hex"]);
    let mut link = Link::new(emulator_from_keys_json(&v, ALL));

    // One byte at a time.
    let mut out = Vec::new();
    for b in &echo {
        out.extend(link.input(std::slice::from_ref(b)));
    }
    assert_eq!(out, echo_answer);
    assert_eq!(link.pending_len(), 0);

    // Split in two, the second write also carrying a whole second frame.
    let (a, b) = echo.split_at(3);
    assert!(link.input(a).is_empty());
    assert_eq!(link.pending_len(), 3);
    let mut rest = b.to_vec();
    rest.extend(bytes(&f["system_info_request_hex"]));
    let out = link.input(&rest);
    assert_eq!(out[..echo_answer.len()], echo_answer[..]);
    let info = &out[echo_answer.len()..];
    assert_eq!(
        Response::decode(cmd::SYSTEM_INFO_QUERY, info).expect("system info"),
        Response::SystemInfo(link.emulator().system_info())
    );

    // Two frames in one write: buffer load then buffer AEAD generate.
    let mut two = bytes(&f["buffer_load_s1_request_hex"]);
    two.extend(bytes(&f["buffer_aead_generate_s1_kh2000_request_hex"]));
    let mut want = vec![0x02, 0xa0, 22];
    want.extend(bytes(&f["buffer_aead_generate_s1_kh2000_response_hex"]));
    assert_eq!(link.input(&two), want);

    // A partial frame forgotten after an idle gap.
    assert!(link.input(&echo[..4]).is_empty());
    link.idle();
    assert_eq!(link.input(&echo), echo_answer);

    // A length byte too large for any frame is skipped.
    let mut junk = vec![0xff];
    junk.extend(&echo);
    assert_eq!(link.input(&junk), echo_answer);
}

#[test]
fn config_mode_console_is_recognised_by_the_host_check() {
    let mut link = Link::new(Emulator::new(6));
    link.set_config_mode(true);
    let reply = link.input(wire::CONFIG_MODE_PROBE);
    assert_eq!(reply.len(), 3 * CONFIG_PROMPT.len());
    assert!(wire::is_config_mode(&reply));
    assert!(link.input(&[0x01, 0x26]).is_empty());
    link.set_config_mode(false);
    assert_eq!(link.input(&[0x01, 0x26]).len(), 18);
}

#[test]
fn custom_system_info_is_reported() {
    let mut emu = Emulator::new(0);
    let info = SystemInfo {
        major: 0,
        minor: 9,
        build: 8,
        protocol: 1,
        system_uid: *b"0123456789ab",
    };
    emu.set_system_info(info);
    assert_eq!(
        emu.handle_frame(&[0x01, 0x26]),
        Response::SystemInfo(info).encode()
    );
}

// ---- Link::input_with, bus reset, and the pty's misbehaviour ---------------

fn echo(data: &[u8]) -> Vec<u8> {
    request(&Request::Echo {
        data: data.to_vec(),
    })
}

fn echo_answer(data: &[u8]) -> Vec<u8> {
    Response::Echo {
        data: data.to_vec(),
    }
    .encode()
}

#[test]
fn input_with_hands_out_each_answer_and_stops_on_false() {
    let mut link = Link::new(Emulator::new(1));
    let mut both = echo(b"one");
    both.extend_from_slice(&[0; 5]);
    both.extend_from_slice(&echo(b"two"));
    let mut seen = Vec::new();
    link.input_with(&both, |a| {
        seen.push(a);
        true
    });
    assert_eq!(seen, [echo_answer(b"one"), echo_answer(b"two")]);

    // Stop after the first: the second frame and a partial third are dropped.
    let mut three = both.clone();
    three.extend_from_slice(&echo(b"three")[..3]);
    let mut seen = Vec::new();
    link.input_with(&three, |a| {
        seen.push(a);
        false
    });
    assert_eq!(seen, [echo_answer(b"one")]);
    assert_eq!(link.pending_len(), 0);
    assert_eq!(link.input(&echo(b"four")), echo_answer(b"four"));

    // Configuration mode: the prompts of one chunk in one answer.
    link.set_config_mode(true);
    let mut seen = Vec::new();
    link.input_with(b"\r\r", |a| {
        seen.push(a);
        true
    });
    assert_eq!(seen, [[CONFIG_PROMPT, CONFIG_PROMPT].concat()]);
}

#[test]
fn bus_reset_forgets_the_buffer_but_not_keys_or_lock() {
    let mut emu = Emulator::new(1);
    emu.add_key(1, KeyHandleKey::new(vec![7; 16]).unwrap(), ALL);
    emu.handle_frame(&request(&Request::BufferLoad {
        offset: 0,
        data: secret(&[1; 22]),
    }));
    assert_eq!(emu.buffer_len(), 22);
    emu.bus_reset();
    assert_eq!(emu.buffer_len(), 0);
    let answer = emu.handle_frame(&request(&Request::BufferAeadGenerate {
        nonce: Nonce([1; 6]),
        key_handle: KeyHandle(1),
    }));
    let Ok(Response::BufferAeadGenerate(a)) = Response::decode(cmd::BUFFER_AEAD_GENERATE, &answer)
    else {
        panic!("{answer:02x?}");
    };
    assert_eq!(a.status, Status::Ok);
    assert_eq!(
        a.aead.len(),
        8,
        "an AEAD of the empty buffer: the MAC alone"
    );
    assert!(!emu.is_locked());
}

/// The host side of an [`EmuPty`], raw: writes bytes, reads with a deadline.
struct RawPort(std::fs::File);

impl RawPort {
    fn open(pty: &EmuPty) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
            .open(pty.path())
            .unwrap();
        Self(f)
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.0.write_all(bytes).unwrap();
    }

    /// Reads until `n` bytes came, the line hung up, or `within` passed.
    fn read(&mut self, n: usize, within: Duration) -> Read {
        use std::io::Read as _;
        use std::os::fd::AsFd;
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read::TimedOut(got);
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(ms)).unwrap() == 0 {
                continue;
            }
            let revents = fds[0].revents().unwrap();
            if !revents.contains(PollFlags::POLLIN) {
                return Read::HungUp(got);
            }
            let mut buf = vec![0u8; n - got.len()];
            match self.0.read(&mut buf) {
                Ok(0) | Err(_) => return Read::HungUp(got),
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
        Read::Got(got)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Read {
    Got(Vec<u8>),
    TimedOut(Vec<u8>),
    HungUp(Vec<u8>),
}

const QUICK: Duration = Duration::from_millis(150);
const LONG: Duration = Duration::from_secs(5);

#[test]
fn pty_answers_and_garbage_mode_garbles_each_answer() {
    let pty = EmuPty::start(Link::new(Emulator::new(1))).unwrap();
    let mut port = RawPort::open(&pty);
    let want = echo_answer(b"hello");
    port.write(&echo(b"hello"));
    assert_eq!(port.read(want.len(), LONG), Read::Got(want.clone()));

    pty.set_misbehave(Misbehave::Garbage);
    assert_eq!(pty.misbehave(), Misbehave::Garbage);
    for _ in 0..2 {
        port.write(&echo(b"hello"));
        let Read::Got(junk) = port.read(want.len(), LONG) else {
            panic!("no garbage");
        };
        assert_eq!(junk[0], want[0], "a plausible length byte");
        assert_eq!(junk[1] & 0x80, 0, "never a response command");
        assert_ne!(junk, want);
        // Nothing more than the answer's length.
        assert_eq!(port.read(1, QUICK), Read::TimedOut(Vec::new()));
    }
    assert_eq!(pty.misbehaved(), 2);
    pty.set_misbehave(Misbehave::None);
    port.write(&echo(b"hello"));
    assert_eq!(port.read(want.len(), LONG), Read::Got(want));
}

#[test]
fn pty_once_misbehaves_on_the_next_answer_only() {
    let pty = EmuPty::start(Link::new(Emulator::new(1))).unwrap();
    let mut port = RawPort::open(&pty);
    let want = echo_answer(b"x");
    pty.set_misbehave_once(Misbehave::Garbage);
    port.write(&echo(b"x"));
    let Read::Got(junk) = port.read(want.len(), LONG) else {
        panic!("no answer");
    };
    assert_ne!(junk, want);
    assert_eq!(pty.misbehave(), Misbehave::None);
    port.write(&echo(b"x"));
    assert_eq!(port.read(want.len(), LONG), Read::Got(want));
    assert_eq!(pty.misbehaved(), 1);
}

#[test]
fn pty_slow_sends_the_answer_after_the_delay() {
    let delay = Duration::from_millis(200);
    let mut emu = Emulator::new(1);
    // The setting an EmuPty starts with.
    emu.set_misbehave(Misbehave::Slow(delay));
    let pty = EmuPty::start(Link::new(emu)).unwrap();
    assert_eq!(pty.misbehave(), Misbehave::Slow(delay));
    let mut port = RawPort::open(&pty);
    let want = echo_answer(b"late");
    let start = Instant::now();
    port.write(&echo(b"late"));
    assert!(pty.wait_misbehaved(1, LONG));
    assert!(start.elapsed() >= delay, "{:?}", start.elapsed());
    assert_eq!(port.read(want.len(), LONG), Read::Got(want.clone()));
    // Two requests in one write: each answer is delayed from when the
    // emulator got to its request, so they come in order, one delay apart.
    let other = echo_answer(b"next");
    let start = Instant::now();
    port.write(&[echo(b"late"), echo(b"next")].concat());
    let all = [want, other].concat();
    assert_eq!(port.read(all.len(), LONG), Read::Got(all));
    assert!(start.elapsed() >= 2 * delay, "{:?}", start.elapsed());
    assert_eq!(pty.misbehaved(), 3);
    pty.set_misbehave(Misbehave::None);
    let start = Instant::now();
    port.write(&echo(b"prompt"));
    let want = echo_answer(b"prompt");
    assert_eq!(port.read(want.len(), LONG), Read::Got(want));
    assert!(start.elapsed() < delay, "{:?}", start.elapsed());
}

#[test]
fn pty_reset_mid_command_sends_half_and_forgets_the_rest() {
    let mut emu = Emulator::new(1);
    emu.add_key(1, KeyHandleKey::new(vec![7; 16]).unwrap(), ALL);
    let pty = EmuPty::start(Link::new(emu)).unwrap();
    let mut port = RawPort::open(&pty);
    port.write(&request(&Request::BufferLoad {
        offset: 0,
        data: secret(&[1; 22]),
    }));
    let loaded = Response::BufferLoad { count: 22 }.encode();
    assert_eq!(port.read(loaded.len(), LONG), Read::Got(loaded));

    // Two frames in one write: half the first answer, nothing of the second.
    pty.set_misbehave(Misbehave::ResetMidCommand);
    let want = echo_answer(b"cut here");
    let two = [echo(b"cut here"), echo(b"dropped")].concat();
    port.write(&two);
    assert!(pty.wait_misbehaved(1, LONG));
    assert_eq!(
        port.read(want.len(), QUICK),
        Read::TimedOut(want[..want.len() / 2].to_vec())
    );

    // The buffer was forgotten: an AEAD of it is the MAC alone.
    pty.set_misbehave(Misbehave::None);
    port.write(&request(&Request::BufferAeadGenerate {
        nonce: Nonce([1; 6]),
        key_handle: KeyHandle(1),
    }));
    let Read::Got(answer) = port.read(2, LONG) else {
        panic!("no answer");
    };
    let len = usize::from(answer[0]) + 1;
    let Read::Got(rest) = port.read(len - 2, LONG) else {
        panic!("short answer");
    };
    let answer = [answer, rest].concat();
    let Ok(Response::BufferAeadGenerate(a)) = Response::decode(cmd::BUFFER_AEAD_GENERATE, &answer)
    else {
        panic!("{answer:02x?}");
    };
    assert_eq!(a.aead.len(), 8);
    assert_eq!(pty.misbehaved(), 1);
}

#[test]
fn pty_close_hangs_up_and_stays_gone() {
    let pty = EmuPty::start(Link::new(Emulator::new(1))).unwrap();
    let mut port = RawPort::open(&pty);
    port.write(&echo(b"ping"));
    let want = echo_answer(b"ping");
    assert_eq!(port.read(want.len(), LONG), Read::Got(want));
    assert!(!pty.is_gone());

    pty.set_misbehave(Misbehave::Close);
    port.write(&echo(b"ping"));
    assert_eq!(port.read(1, LONG), Read::HungUp(Vec::new()));
    assert!(pty.is_gone());
    assert_eq!(pty.misbehaved(), 1);
    pty.set_misbehave(Misbehave::None);
    assert!(pty.is_gone());
    use std::io::Write;
    assert!(port.0.write_all(&echo(b"ping")).is_err());
}

#[test]
fn pty_mute_drops_answers_and_keeps_the_setting() {
    let pty = EmuPty::start(Link::new(Emulator::new(1))).unwrap();
    let mut port = RawPort::open(&pty);
    pty.set_misbehave_once(Misbehave::Garbage);
    pty.set_mute(true);
    port.write(&echo(b"quiet"));
    assert_eq!(port.read(1, QUICK), Read::TimedOut(Vec::new()));
    pty.set_mute(false);
    // The one-shot was not used up by the dropped answer.
    assert_eq!(pty.misbehave(), Misbehave::Garbage);
    port.write(&echo(b"quiet"));
    let want = echo_answer(b"quiet");
    let Read::Got(junk) = port.read(want.len(), LONG) else {
        panic!("no answer");
    };
    assert_ne!(junk, want);
    assert_eq!(pty.misbehaved(), 1);
}
