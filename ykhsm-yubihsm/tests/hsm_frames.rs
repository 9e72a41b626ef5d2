//! The YubiHSM 1 frame codec (`ykhsm_yubihsm::wire`) against the frames of
//! ykhsm-core's committed `tests/data/vectors-hsm.json` (`frames`, the
//! OTP-decode frames of every `aead_cases` entry, the hardware-recorded
//! `recorded` vectors), plus properties: every request and answer
//! round-trips, and no input makes a decoder panic.
//!
//! The vectors are read only from that committed copy, so the test runs on
//! a bare clone. Not exercised here, by design: `R4-hmac-sha1` (HMAC-SHA1, a
//! command ykhsm never sends, so the codec does not encode it), and
//! `R5-key-handle-parse` and `R6-modhex`, host-side parsing vectors that
//! ykhsm-core's tests cover.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::Value;
use ykhsm_core::{KeyHandle, Nonce, OtpCounters, Token, YubiKeyAead};
use ykhsm_yubihsm::wire::{
    self, AeadAnswer, FrameError, OtpDecodeAnswer, Redacted, Request, Response, Status, SystemInfo,
    cmd,
};
use zeroize::Zeroizing;

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

fn nonce(v: &Value) -> Nonce {
    Nonce(bytes(v).try_into().expect("a 6-byte nonce"))
}

fn key_handle(v: &Value) -> KeyHandle {
    KeyHandle(
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .expect("a key handle"),
    )
}

fn token(v: &Value) -> Token {
    Token::from_bytes(bytes(v).try_into().expect("16 OTP bytes"))
}

fn aead(v: &Value) -> YubiKeyAead {
    YubiKeyAead::from_slice(&bytes(v)).expect("a 30-byte AEAD")
}

fn secret(data: &[u8]) -> Redacted<Zeroizing<Vec<u8>>> {
    Redacted(Zeroizing::new(data.to_vec()))
}

fn aead_case<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["aead_cases"]
        .as_array()
        .expect("aead_cases")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("aead case {id}"))
}

fn recorded<'a>(v: &'a Value, prefix: &str) -> Vec<&'a Value> {
    v["recorded"]
        .as_array()
        .expect("recorded")
        .iter()
        .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
        .collect()
}

/// `request` encodes to `frame`, and `frame` decodes back to `request`.
fn assert_request_frame(request: &Request, frame: &[u8], what: &str) {
    let encoded = request.encode().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        hex::encode(&*encoded),
        hex::encode(frame),
        "{what}: encoding"
    );
    let decoded = Request::decode(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(&decoded, request, "{what}: decoding");
}

/// `frame` is a well-framed request for `command`, a command ykhsm never
/// sends: the codec refuses it by name, on both sides.
fn assert_not_sent(frame: &[u8], command: u8, what: &str) {
    assert_eq!(wire::check_frame(frame), Ok(frame.len()), "{what}: framing");
    assert_eq!(frame[1], command, "{what}: command");
    assert!(!cmd::is_supported(command), "{what}");
    assert_eq!(
        Request::decode(frame),
        Err(FrameError::UnknownCommand { command }),
        "{what}"
    );
    assert!(cmd::name(command).is_some(), "{what}: named for logs");
}

/// `frame` decodes (as the answer to `response`'s command) to `response`,
/// and `response` encodes back to `frame`.
fn assert_response_frame(response: &Response, frame: &[u8], what: &str) {
    let decoded =
        Response::decode(response.command(), frame).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(&decoded, response, "{what}: decoding");
    assert_eq!(
        hex::encode(response.encode()),
        hex::encode(frame),
        "{what}: encoding"
    );
}

const SYSTEM_INFO_LAYOUT: &str =
    "bcnt=0x11, 0xa6, major, minor, build, protocol(=1), 12-byte system uid";
const HSM_UNLOCK_LAYOUT: &str = "bcnt=0x17, 0x28, public id (6), OTP ciphertext (16)";

#[test]
fn every_frames_entry_round_trips_through_the_codec() {
    let v = vectors();
    let s1 = aead_case(&v, "S1-kh2000");
    let s1_nonce = nonce(&s1["nonce_hex"]);
    let s1_kh = key_handle(&s1["key_handle"]);
    let s1_plain = bytes(&s1["plaintext_hex"]);
    let s1_aead = bytes(&s1["aead_hex"]);
    let frames = v["frames"].as_object().expect("frames is an object");
    assert!(!frames.is_empty());
    for (name, value) in frames {
        match name.as_str() {
            "resync_bytes_hex" => {
                assert_eq!(wire::resync_bytes().to_vec(), bytes(value));
                assert_eq!(bytes(value).len(), 96);
            }
            "echo_request_hex" => assert_request_frame(
                &Request::Echo {
                    data: b"ekoeko".to_vec(),
                },
                &bytes(value),
                name,
            ),
            "echo_response_hex" => assert_response_frame(
                &Response::Echo {
                    data: b"ekoeko".to_vec(),
                },
                &bytes(value),
                name,
            ),
            "system_info_request_hex" => {
                assert_request_frame(&Request::SystemInfo, &bytes(value), name);
            }
            "random_16_request_hex" => {
                assert_not_sent(&bytes(value), cmd::RANDOM_GENERATE, name);
            }
            "nonce_get_request_hex" => assert_not_sent(&bytes(value), cmd::NONCE_GET, name),
            "buffer_load_s1_request_hex" => assert_request_frame(
                &Request::BufferLoad {
                    offset: 0,
                    data: secret(&s1_plain),
                },
                &bytes(value),
                name,
            ),
            "buffer_aead_generate_s1_kh2000_request_hex" => assert_request_frame(
                &Request::BufferAeadGenerate {
                    nonce: s1_nonce,
                    key_handle: s1_kh,
                },
                &bytes(value),
                name,
            ),
            "buffer_aead_generate_s1_kh2000_response_hex" => assert_response_frame(
                &Response::BufferAeadGenerate(AeadAnswer {
                    nonce: s1_nonce,
                    key_handle: s1_kh,
                    status: Status::Ok,
                    aead: s1_aead.clone(),
                }),
                &bytes(value),
                name,
            ),
            "aead_decrypt_cmp_s1_kh2000_request_hex" => {
                let frame = bytes(value);
                assert_not_sent(&frame, cmd::AEAD_DECRYPT_CMP, name);
                // nonce(6), kh(4), n, cleartext ‖ AEAD: the S1 values.
                assert_eq!(frame[2..8], s1_nonce.0, "{name}");
                assert_eq!(frame[8..12], s1_kh.to_le_bytes(), "{name}");
                assert_eq!(
                    frame[13..],
                    [s1_plain.as_slice(), &s1_aead].concat(),
                    "{name}"
                );
            }
            // Layouts in prose: checked by the two tests below, written
            // against exactly these descriptions.
            "system_info_response_layout" => assert_eq!(value, SYSTEM_INFO_LAYOUT),
            "hsm_unlock_request_layout" => assert_eq!(value, HSM_UNLOCK_LAYOUT),
            "resync_note" | "note" => {}
            other => panic!("frames entry {other:?} has no check in this test; add one"),
        }
    }
}

#[test]
fn system_info_response_follows_the_documented_layout() {
    let info = SystemInfo {
        major: 1,
        minor: 0,
        build: 4,
        protocol: 1,
        system_uid: *b"uid-0123456\x01",
    };
    let frame = Response::SystemInfo(info).encode();
    assert_eq!(frame.len(), 18);
    assert_eq!(frame[..6], [0x11, 0xa6, 1, 0, 4, 1]);
    assert_eq!(frame[6..], info.system_uid);
    assert_response_frame(&Response::SystemInfo(info), &frame, "system info");
    assert!(info.protocol_supported());
    assert!(
        !SystemInfo {
            protocol: 2,
            ..info
        }
        .protocol_supported()
    );
    // One byte short or long of the 16-byte payload is refused.
    let mut short = frame.clone();
    short.pop();
    short[0] = 0x10;
    assert!(matches!(
        Response::decode(cmd::SYSTEM_INFO_QUERY, &short),
        Err(FrameError::Truncated { .. })
    ));
    let mut long = frame.clone();
    long.push(0);
    long[0] = 0x12;
    assert!(matches!(
        Response::decode(cmd::SYSTEM_INFO_QUERY, &long),
        Err(FrameError::TrailingBytes { extra: 1, .. })
    ));
}

#[test]
fn hsm_unlock_request_follows_the_documented_layout() {
    let public_id = [0x4d, 0x4d, 0x4d, 0, 0, 1];
    let otp = [0x82; 16];
    let request = Request::HsmUnlock {
        public_id,
        otp: Token::from_bytes(otp),
    };
    let frame = request.encode().expect("encodes");
    assert_eq!(frame.len(), 24);
    assert_eq!(frame[..2], [0x17, 0x28]);
    assert_eq!(frame[2..8], public_id);
    assert_eq!(frame[8..], otp);
    assert_request_frame(&request, &frame, "hsm unlock");
}

#[test]
fn otp_decode_request_matches_recorded_frame() {
    let v = vectors();
    let mut checked = 0;
    for case in v["aead_cases"].as_array().expect("aead_cases") {
        for otp in case["otps"].as_array().expect("otps") {
            let request = Request::OtpDecode {
                nonce: nonce(&case["nonce_hex"]),
                key_handle: key_handle(&case["key_handle"]),
                otp: token(&otp["otp_ciphertext_hex"]),
                aead: aead(&case["aead_hex"]),
            };
            let what = format!("{} {}", case["id"], otp["otp"]);
            assert_request_frame(&request, &bytes(&otp["hsm_request_frame_hex"]), &what);
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} OTPs in aead_cases");
}

#[test]
fn otp_decode_response_carries_the_recorded_counters() {
    let v = vectors();
    for case in v["aead_cases"].as_array().expect("aead_cases") {
        for otp in case["otps"].as_array().expect("otps") {
            let what = format!("{} {}", case["id"], otp["otp"]);
            let frame = bytes(&otp["hsm_response_frame_hex"]);
            assert_eq!(frame[..2], [0x12, 0x86], "{what}");
            let response = Response::decode(cmd::AEAD_YUBIKEY_OTP_DECODE, &frame)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let Response::OtpDecode(answer) = &response else {
                panic!("{what}: {response:?}");
            };
            let n = |k: &str| otp[k].as_u64().expect(k);
            assert_eq!(answer.nonce, nonce(&case["nonce_hex"]), "{what}");
            assert_eq!(answer.key_handle, key_handle(&case["key_handle"]), "{what}");
            assert_eq!(u64::from(answer.use_ctr), n("use_ctr"), "{what}");
            assert_eq!(u64::from(answer.session_ctr), n("session_ctr"), "{what}");
            assert_eq!(u64::from(answer.ts_high), n("ts_high"), "{what}");
            assert_eq!(u64::from(answer.ts_low), n("ts_low"), "{what}");
            assert_eq!(answer.status, Status::Ok, "{what}");
            assert_eq!(
                hex::encode(response.encode()),
                hex::encode(&frame),
                "{what}"
            );

            let counters = answer.counters().expect("an OK answer has counters");
            assert_eq!(counters.ksm_answer(), otp["ksm_answer"], "{what}");
            // And back: the device side builds the same frame from them.
            let rebuilt = OtpDecodeAnswer::ok(answer.nonce, answer.key_handle, &counters);
            assert_eq!(Response::OtpDecode(rebuilt).encode(), frame, "{what}");

            let request = Request::OtpDecode {
                nonce: nonce(&case["nonce_hex"]),
                key_handle: key_handle(&case["key_handle"]),
                otp: token(&otp["otp_ciphertext_hex"]),
                aead: aead(&case["aead_hex"]),
            };
            response
                .check_echo(&request)
                .expect("the answer echoes the request");
        }
    }
}

#[test]
fn recorded_hardware_otp_decodes_frame_as_documented() {
    let v = vectors();
    let cases = recorded(&v, "R3-");
    assert_eq!(cases.len(), 3);
    for r in cases {
        let what = r["id"].as_str().expect("id");
        let request = Request::OtpDecode {
            nonce: nonce(&r["public_id_hex"]),
            key_handle: key_handle(&r["key_handle"]),
            otp: token(&r["otp_ciphertext_hex"]),
            aead: aead(&r["aead_hex"]),
        };
        let frame = request.encode().expect("encodes");
        assert_eq!(frame.len(), 58, "{what}");
        assert_eq!(frame[..2], [0x39, cmd::AEAD_YUBIKEY_OTP_DECODE], "{what}");
        assert_eq!(Request::decode(&frame).as_ref(), Ok(&request), "{what}");

        let expected_status = r["expected_status"].as_str().expect("expected_status");
        let answer = if expected_status == "YSM_STATUS_OK" {
            let n = |k: &str| r[k].as_u64().expect(k);
            let counters = OtpCounters {
                use_counter: u16::try_from(n("use_ctr")).expect("u16"),
                session_use: u8::try_from(n("session_ctr")).expect("u8"),
                ts_high: u8::try_from(n("ts_high")).expect("u8"),
                ts_low: u16::try_from(n("ts_low")).expect("u16"),
            };
            OtpDecodeAnswer::ok(
                nonce(&r["public_id_hex"]),
                key_handle(&r["key_handle"]),
                &counters,
            )
        } else {
            OtpDecodeAnswer::failed(
                nonce(&r["public_id_hex"]),
                key_handle(&r["key_handle"]),
                Status::OtpInvalid,
            )
        };
        assert_eq!(answer.status.name(), expected_status, "{what}");
        let response_frame = Response::OtpDecode(answer).encode();
        assert_eq!(response_frame.len(), 19, "{what}");
        assert_eq!(response_frame[..2], [0x12, 0x86], "{what}");
        let decoded =
            Response::decode(cmd::AEAD_YUBIKEY_OTP_DECODE, &response_frame).expect("decodes");
        decoded.check_echo(&request).expect("echoes");
        let Response::OtpDecode(decoded) = decoded else {
            panic!("{what}: not an OTP decode answer");
        };
        match decoded.counters() {
            Ok(c) => assert_eq!(c.ksm_answer(), r["ksm_answer"], "{what}"),
            Err(status) => {
                assert_eq!(status, Status::OtpInvalid, "{what}");
                assert_eq!(r["ksm_answer"], "ERR", "{what}");
            }
        }
    }
}

#[test]
fn failed_otp_decode_gives_its_status_instead_of_counters() {
    let answer = OtpDecodeAnswer::failed(Nonce([1; 6]), KeyHandle(1), Status::AeadInvalid);
    assert_eq!(answer.counters(), Err(Status::AeadInvalid));
    assert_eq!(OtpCounters::try_from(&answer), Err(Status::AeadInvalid));
    assert_eq!(
        Response::OtpDecode(answer).status(),
        Some(Status::AeadInvalid)
    );
}

#[test]
fn response_to_wrong_command_is_refused() {
    let v = vectors();
    let echo_answer = bytes(&v["frames"]["echo_response_hex"]);
    assert_eq!(
        Response::decode(cmd::AEAD_YUBIKEY_OTP_DECODE, &echo_answer),
        Err(FrameError::WrongCommand {
            expected: 0x86,
            got: 0xa3
        })
    );
    // A request frame sent back unchanged lacks the response bit.
    let echo_request = bytes(&v["frames"]["echo_request_hex"]);
    assert_eq!(
        Response::decode(cmd::ECHO, &echo_request),
        Err(FrameError::WrongCommand {
            expected: 0xa3,
            got: 0x23
        })
    );
    // The driver can tell from the two header bytes alone.
    let header = [echo_answer[0], echo_answer[1]];
    assert_eq!(wire::check_response_header(cmd::ECHO, header), Ok(7));
    assert!(matches!(
        wire::check_response_header(cmd::AEAD_YUBIKEY_OTP_DECODE, header),
        Err(FrameError::WrongCommand { .. })
    ));
    let message = Response::decode(cmd::AEAD_YUBIKEY_OTP_DECODE, &echo_answer)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("YSM_AEAD_YUBIKEY_OTP_DECODE") && message.contains("YSM_ECHO"),
        "{message}"
    );
}

#[test]
fn answer_that_does_not_echo_the_request_is_refused() {
    let request = Request::OtpDecode {
        nonce: Nonce([1, 2, 3, 4, 5, 6]),
        key_handle: KeyHandle(1),
        otp: Token::from_bytes([0; 16]),
        aead: YubiKeyAead([0; 30]),
    };
    let answer = |nonce, kh| {
        Response::OtpDecode(OtpDecodeAnswer::failed(
            Nonce(nonce),
            KeyHandle(kh),
            Status::OtpInvalid,
        ))
    };
    assert_eq!(answer([1, 2, 3, 4, 5, 6], 1).check_echo(&request), Ok(()));
    assert!(matches!(
        answer([1, 2, 3, 4, 5, 7], 1).check_echo(&request),
        Err(FrameError::EchoMismatch { field: "nonce", .. })
    ));
    assert!(matches!(
        answer([1, 2, 3, 4, 5, 6], 2).check_echo(&request),
        Err(FrameError::EchoMismatch {
            field: "key handle",
            ..
        })
    ));
    assert!(matches!(
        Response::Echo { data: vec![] }.check_echo(&request),
        Err(FrameError::WrongCommand { .. })
    ));
    assert!(matches!(
        Response::Echo {
            data: b"ekoek".to_vec()
        }
        .check_echo(&Request::Echo {
            data: b"ekoeko".to_vec()
        }),
        Err(FrameError::EchoMismatch { field: "data", .. })
    ));
}

#[test]
fn zero_nonce_lets_the_device_choose_one() {
    let zero = Request::BufferAeadGenerate {
        nonce: Nonce([0; 6]),
        key_handle: KeyHandle(0x2000),
    };
    let answer = |nonce, status| {
        Response::BufferAeadGenerate(AeadAnswer {
            nonce: Nonce(nonce),
            key_handle: KeyHandle(0x2000),
            status,
            aead: vec![0; 30],
        })
    };
    assert_eq!(answer([9; 6], Status::Ok).check_echo(&zero), Ok(()));
    assert!(answer([0; 6], Status::Ok).check_echo(&zero).is_err());
    let chosen = Request::BufferAeadGenerate {
        nonce: Nonce([7; 6]),
        key_handle: KeyHandle(0x2000),
    };
    assert_eq!(answer([7; 6], Status::Ok).check_echo(&chosen), Ok(()));
    assert!(answer([9; 6], Status::Ok).check_echo(&chosen).is_err());
    // A failed answer's nonce is not checked (pyhsm checks it only on OK).
    assert_eq!(
        answer([0; 6], Status::FunctionDisabled).check_echo(&chosen),
        Ok(())
    );
}

#[test]
fn length_byte_must_match_the_frame() {
    let v = vectors();
    let frame = bytes(&v["frames"]["echo_request_hex"]);
    let mut long = frame.clone();
    long.push(0);
    assert_eq!(
        Request::decode(&long),
        Err(FrameError::LengthMismatch { bcnt: 8, actual: 9 })
    );
    assert_eq!(
        Request::decode(&frame[..8]),
        Err(FrameError::LengthMismatch { bcnt: 8, actual: 7 })
    );
    let answer = Response::HsmUnlock { status: Status::Ok }.encode();
    assert_eq!(answer.len(), 3);
    assert_eq!(
        Response::decode(cmd::HSM_UNLOCK, &answer[..2]),
        Err(FrameError::LengthMismatch { bcnt: 2, actual: 1 })
    );
    assert_eq!(Request::decode(&[]), Err(FrameError::TooShort { len: 0 }));
    assert_eq!(Request::decode(&[1]), Err(FrameError::TooShort { len: 1 }));
    assert_eq!(Request::decode(&[0, 0x23]), Err(FrameError::ZeroLength));
}

#[test]
fn stream_helper_tells_incomplete_from_invalid() {
    let v = vectors();
    let frame = bytes(&v["aead_cases"][0]["otps"][0]["hsm_request_frame_hex"]);
    assert_eq!(frame.len(), 58);
    for cut in 0..frame.len() {
        let err = wire::check_frame(&frame[..cut]).unwrap_err();
        assert!(err.is_incomplete(), "{cut}: {err}");
    }
    assert_eq!(wire::check_frame(&frame), Ok(58));
    // Bytes of the next frame do not matter.
    let mut two = frame.clone();
    two.extend_from_slice(&[0x01, 0x26]);
    assert_eq!(wire::check_frame(&two), Ok(58));
    assert_eq!(wire::frame_len([frame[0], frame[1]]), Ok(58));

    let bad = wire::check_frame(&[0x62, 0x23]).unwrap_err();
    assert_eq!(bad, FrameError::TooLong { len: 97 });
    assert!(!bad.is_incomplete());
    assert_eq!(wire::frame_len([0, 0]), Err(FrameError::ZeroLength));
    assert_eq!(wire::frame_len([0x61, 0x23]), Ok(98));
    assert_eq!(
        wire::check_response_header(cmd::ECHO, [0, 0xa3]),
        Err(FrameError::ZeroLength)
    );
}

#[test]
fn resync_zeros_are_skipped_on_the_device_side() {
    let v = vectors();
    let mut stream = wire::resync_bytes().to_vec();
    let echo = bytes(&v["frames"]["echo_request_hex"]);
    stream.extend_from_slice(&echo);
    let skip = wire::resync_prefix_len(&stream);
    assert_eq!(skip, 96);
    let rest = &stream[skip..];
    let n = wire::check_frame(rest).expect("a whole frame");
    assert_eq!(
        Request::decode(&rest[..n]),
        Ok(Request::Echo {
            data: b"ekoeko".to_vec()
        })
    );
}

#[test]
fn oversized_fields_are_refused_when_encoding() {
    let cases = [
        (Request::Echo { data: vec![0; 96] }, "data", 95),
        (
            Request::BufferLoad {
                offset: 0,
                data: secret(&[0; 65]),
            },
            "data",
            64,
        ),
    ];
    for (request, field, max) in cases {
        let command = request.command();
        let err = request.encode().unwrap_err();
        assert_eq!(
            err,
            FrameError::FieldTooLong {
                command,
                field,
                len: max + 1,
                max
            }
        );
        assert!(err.to_string().contains(&format!("at most {max}")), "{err}");
    }
    // The largest allowed values fit in one frame.
    let echo = Request::Echo { data: vec![7; 95] }.encode().expect("fits");
    assert_eq!(echo.len(), 98);
    assert_eq!(echo[0], 0x61);
    let load = Request::BufferLoad {
        offset: 0,
        data: secret(&[0; 64]),
    };
    assert_eq!(load.encode().expect("fits").len(), 68);
}

#[test]
fn oversized_response_fields_are_cut_to_a_valid_frame() {
    let too_long = Response::Echo { data: vec![1; 200] };
    let frame = too_long.encode();
    assert_eq!(frame.len(), 98);
    assert_eq!(
        Response::decode(cmd::ECHO, &frame),
        Ok(Response::Echo { data: vec![1; 95] })
    );
}

#[test]
fn trailing_and_missing_bytes_are_refused() {
    let v = vectors();
    let frame = bytes(&v["aead_cases"][0]["otps"][0]["hsm_request_frame_hex"]);
    let mut long = frame.clone();
    long.push(0);
    long[0] += 1;
    assert_eq!(
        Request::decode(&long),
        Err(FrameError::TrailingBytes {
            command: cmd::AEAD_YUBIKEY_OTP_DECODE,
            extra: 1
        })
    );
    let mut short = frame[..frame.len() - 1].to_vec();
    short[0] -= 1;
    assert_eq!(
        Request::decode(&short),
        Err(FrameError::Truncated {
            command: cmd::AEAD_YUBIKEY_OTP_DECODE,
            need: 30,
            have: 29
        })
    );
    // A count byte that disagrees with the bytes after it.
    let echo = [0x04, cmd::ECHO, 0x05, b'a', b'b'];
    assert_eq!(
        Request::decode(&echo),
        Err(FrameError::CountMismatch {
            command: cmd::ECHO,
            field: "data",
            declared: 5,
            actual: 2
        })
    );
    // An AEAD answer whose count exceeds 72 bytes.
    let mut aead = vec![0x0e, 0x82, 1, 2, 3, 4, 5, 6, 1, 0, 0, 0, 0x80, 73];
    aead[0] = u8::try_from(aead.len() - 1).expect("small");
    assert!(matches!(
        Response::decode(cmd::BUFFER_AEAD_GENERATE, &aead),
        Err(FrameError::FieldTooLong {
            field: "AEAD",
            len: 73,
            max: 72,
            ..
        })
    ));
}

#[test]
fn unsupported_commands_are_refused() {
    // YSM_DB_YUBIKEY_AEAD_STORE is a real command this codec does not speak.
    let frame = [0x01, cmd::DB_YUBIKEY_AEAD_STORE];
    assert_eq!(
        Request::decode(&frame),
        Err(FrameError::UnknownCommand { command: 0x05 })
    );
    assert_eq!(
        Response::decode(cmd::DB_YUBIKEY_AEAD_STORE, &[0x01, 0x85]),
        Err(FrameError::UnknownCommand { command: 0x05 })
    );
    assert_eq!(
        Response::decode(0x86, &[0x01, 0x86]),
        Err(FrameError::UnknownCommand { command: 0x86 })
    );
    assert_eq!(
        Request::decode(&[0x01, 0xa3]),
        Err(FrameError::UnknownCommand { command: 0xa3 })
    );
    assert_eq!(cmd::name(0x05), Some("YSM_DB_YUBIKEY_AEAD_STORE"));
    assert_eq!(cmd::name(0x55), None);
    // Only the commands ykhsm sends are spoken; a frame of any other
    // command is refused naming it, whatever its payload.
    for command in 0..0x80u8 {
        if SUPPORTED.contains(&command) {
            assert!(cmd::is_supported(command), "0x{command:02x}");
            continue;
        }
        assert!(!cmd::is_supported(command), "0x{command:02x}");
        for payload_len in [0usize, 6, 10, 95] {
            let mut frame = vec![u8::try_from(payload_len + 1).expect("small"), command];
            frame.resize(payload_len + 2, 1);
            assert_eq!(
                Request::decode(&frame),
                Err(FrameError::UnknownCommand { command }),
                "0x{command:02x}"
            );
            frame[1] |= 0x80;
            assert_eq!(
                Response::decode(command, &frame),
                Err(FrameError::UnknownCommand { command }),
                "0x{command:02x}"
            );
        }
    }
}

#[test]
fn debug_output_hides_secrets() {
    let v = vectors();
    let otp = &v["aead_cases"][0]["otps"][0];
    let request = Request::decode(&bytes(&otp["hsm_request_frame_hex"])).expect("decodes");
    let shown = format!("{request:?}");
    let ciphertext = otp["otp_ciphertext_hex"].as_str().expect("hex");
    assert!(!shown.contains(ciphertext), "{shown}");
    assert!(shown.contains("OtpDecode"), "{shown}");
    let unlock = Request::KeyStorageUnlock {
        password: Redacted(Zeroizing::new(*b"sixteen byte pw!")),
    };
    let shown = format!("{unlock:?}");
    assert!(!shown.contains("sixteen"), "{shown}");
    assert!(shown.contains("<redacted 16 bytes>"), "{shown}");
}

#[test]
fn config_mode_console_is_recognised() {
    assert!(wire::is_config_mode(b"\r\r\n\r\nHSM> \r\nHSM> "));
    assert!(wire::is_config_mode(b"NO_CFG> "));
    assert!(wire::is_config_mode(b"\nWSAPI> list"));
    assert!(!wire::is_config_mode(b"\x12\x86 not a console"));
    assert!(!wire::is_config_mode(b"HSM"));
    assert!(!wire::is_config_mode(&[0xff; 50]));
    assert_eq!(wire::CONFIG_MODE_PROBE, b"\r\r\r");
}

#[test]
fn status_bytes_name_the_if_h_constants() {
    let names = [
        (0x80, "YSM_STATUS_OK"),
        (0x81, "YSM_KEY_HANDLE_INVALID"),
        (0x82, "YSM_AEAD_INVALID"),
        (0x83, "YSM_OTP_INVALID"),
        (0x84, "YSM_OTP_REPLAY"),
        (0x85, "YSM_ID_DUPLICATE"),
        (0x86, "YSM_ID_NOT_FOUND"),
        (0x87, "YSM_DB_FULL"),
        (0x88, "YSM_MEMORY_ERROR"),
        (0x89, "YSM_FUNCTION_DISABLED"),
        (0x8a, "YSM_KEY_STORAGE_LOCKED"),
        (0x8b, "YSM_MISMATCH"),
        (0x8c, "YSM_INVALID_PARAMETER"),
    ];
    for (b, name) in names {
        let s = Status::from_byte(b);
        assert_eq!(s.name(), name);
        assert_eq!(s.to_byte(), b);
        assert!(!matches!(s, Status::Other(_)));
        assert!(s.to_string().starts_with(name));
    }
    assert_eq!(Status::from_byte(0x00), Status::Other(0));
    assert!(Status::from_byte(0x42).to_string().contains("0x42"));
}

fn nonce_strategy() -> impl Strategy<Value = Nonce> {
    any::<[u8; 6]>().prop_map(Nonce)
}

fn kh_strategy() -> impl Strategy<Value = KeyHandle> {
    any::<u32>().prop_map(KeyHandle)
}

fn data(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn status_strategy() -> impl Strategy<Value = Status> {
    any::<u8>().prop_map(Status::from_byte)
}

fn request_strategy() -> impl Strategy<Value = Request> {
    prop_oneof![
        data(95).prop_map(|data| Request::Echo { data }),
        Just(Request::SystemInfo),
        (any::<u8>(), data(64)).prop_map(|(offset, d)| Request::BufferLoad {
            offset,
            data: secret(&d)
        }),
        (nonce_strategy(), kh_strategy())
            .prop_map(|(nonce, key_handle)| Request::BufferAeadGenerate { nonce, key_handle }),
        (
            nonce_strategy(),
            kh_strategy(),
            any::<[u8; 16]>(),
            any::<[u8; 30]>()
        )
            .prop_map(|(nonce, key_handle, otp, aead)| Request::OtpDecode {
                nonce,
                key_handle,
                otp: Token::from_bytes(otp),
                aead: YubiKeyAead(aead),
            }),
        any::<[u8; 16]>().prop_map(|p| Request::KeyStorageUnlock {
            password: Redacted(Zeroizing::new(p))
        }),
        (any::<[u8; 6]>(), any::<[u8; 16]>()).prop_map(|(public_id, otp)| Request::HsmUnlock {
            public_id,
            otp: Token::from_bytes(otp)
        }),
        any::<[u8; 32]>().prop_map(|k| Request::KeyStoreDecrypt {
            key: Redacted(Zeroizing::new(k))
        }),
    ]
}

fn aead_answer() -> impl Strategy<Value = AeadAnswer> {
    (nonce_strategy(), kh_strategy(), status_strategy(), data(72)).prop_map(
        |(nonce, key_handle, status, aead)| AeadAnswer {
            nonce,
            key_handle,
            status,
            aead,
        },
    )
}

fn response_strategy() -> impl Strategy<Value = Response> {
    prop_oneof![
        data(95).prop_map(|data| Response::Echo { data }),
        (any::<[u8; 4]>(), any::<[u8; 12]>()).prop_map(
            |([major, minor, build, protocol], system_uid)| {
                Response::SystemInfo(SystemInfo {
                    major,
                    minor,
                    build,
                    protocol,
                    system_uid,
                })
            }
        ),
        any::<u8>().prop_map(|count| Response::BufferLoad { count }),
        aead_answer().prop_map(Response::BufferAeadGenerate),
        (
            nonce_strategy(),
            kh_strategy(),
            any::<(u16, u8, u8, u16)>(),
            status_strategy()
        )
            .prop_map(
                |(nonce, key_handle, (use_ctr, session_ctr, ts_high, ts_low), status)| {
                    Response::OtpDecode(OtpDecodeAnswer {
                        nonce,
                        key_handle,
                        use_ctr,
                        session_ctr,
                        ts_high,
                        ts_low,
                        status,
                    })
                }
            ),
        status_strategy().prop_map(|status| Response::KeyStorageUnlock { status }),
        status_strategy().prop_map(|status| Response::HsmUnlock { status }),
        status_strategy().prop_map(|status| Response::KeyStoreDecrypt { status }),
    ]
}

const SUPPORTED: [u8; 8] = [
    cmd::BUFFER_AEAD_GENERATE,
    cmd::AEAD_YUBIKEY_OTP_DECODE,
    cmd::BUFFER_LOAD,
    cmd::ECHO,
    cmd::SYSTEM_INFO_QUERY,
    cmd::KEY_STORAGE_UNLOCK,
    cmd::HSM_UNLOCK,
    cmd::KEY_STORE_DECRYPT,
];

/// A frame with a correct length byte and a supported command (response
/// bit optional) around an arbitrary payload: reaches the field parsers.
fn framed() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (
        proptest::sample::select(SUPPORTED.to_vec()),
        any::<bool>(),
        data(96),
    )
        .prop_map(|(command, response, payload)| {
            let byte1 = if response { command | 0x80 } else { command };
            let mut frame = vec![u8::try_from(payload.len() + 1).expect("≤ 97"), byte1];
            frame.extend_from_slice(&payload);
            (command, frame)
        })
}

#[test]
fn decoders_refuse_edge_inputs_without_panicking() {
    let inputs: [Vec<u8>; 8] = [
        vec![],
        vec![0],
        vec![0xff],
        vec![0xff; 1000],
        vec![0; 1000],
        vec![0x61; 98],
        vec![0x62; 99],
        wire::resync_bytes().to_vec(),
    ];
    for input in &inputs {
        assert!(Request::decode(input).is_err(), "{input:?}");
        for command in 0..=u8::MAX {
            assert!(Response::decode(command, input).is_err());
        }
        let _ = wire::check_frame(input);
        let _ = wire::is_config_mode(input);
    }
}

proptest! {
    #[test]
    fn every_request_round_trips(request in request_strategy()) {
        let frame = request.encode().expect("valid requests encode");
        prop_assert!(frame.len() <= wire::MAX_FRAME_LEN);
        prop_assert_eq!(usize::from(frame[0]), frame.len() - 1);
        prop_assert_eq!(wire::check_frame(&frame), Ok(frame.len()));
        prop_assert_eq!(Request::decode(&frame), Ok(request));
    }

    #[test]
    fn every_response_round_trips(response in response_strategy()) {
        let frame = response.encode();
        prop_assert!(frame.len() <= wire::MAX_FRAME_LEN);
        prop_assert_eq!(frame[1], response.command() | 0x80);
        let header = [frame[0], frame[1]];
        prop_assert_eq!(
            wire::check_response_header(response.command(), header),
            Ok(frame.len() - 2)
        );
        prop_assert_eq!(Response::decode(response.command(), &frame), Ok(response));
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(
        input in proptest::collection::vec(any::<u8>(), 0..1000),
        command in any::<u8>(),
    ) {
        let _ = Request::decode(&input);
        let _ = Response::decode(command, &input);
        let _ = wire::check_frame(&input);
        let _ = wire::is_config_mode(&input);
        if let Ok(header) = <[u8; 2]>::try_from(input.get(..2).unwrap_or_default()) {
            let _ = wire::frame_len(header);
            let _ = wire::check_response_header(command, header);
        }
    }

    #[test]
    fn decoded_frames_re_encode_to_the_same_bytes((command, frame) in framed()) {
        if let Ok(request) = Request::decode(&frame) {
            prop_assert_eq!(request.encode().expect("re-encodes").to_vec(), frame.clone());
        }
        if let Ok(response) = Response::decode(command, &frame) {
            prop_assert_eq!(response.encode(), frame);
        }
    }

    #[test]
    fn mutated_valid_frames_decode_exactly_or_not_at_all(
        request in request_strategy(),
        response in response_strategy(),
        at in any::<proptest::sample::Index>(),
        value in any::<u8>(),
        keep_length_byte in any::<bool>(),
    ) {
        let mut frame = request.encode().expect("encodes").to_vec();
        let i = at.index(frame.len());
        if keep_length_byte && i == 0 {
            frame.push(value);
        } else {
            frame[i] = value;
        }
        if let Ok(decoded) = Request::decode(&frame) {
            prop_assert_eq!(decoded.encode().expect("re-encodes").to_vec(), frame);
        }
        let mut frame = response.encode();
        let i = at.index(frame.len());
        frame[i] = value;
        if let Ok(decoded) = Response::decode(response.command(), &frame) {
            prop_assert_eq!(decoded.encode(), frame);
        }
    }
}
