//! Laws that must hold for every input: round trips (modhex, OTPs, AEADs,
//! AEAD files), the freshness order, and total parsers (any input gives a
//! value or an error, never a panic).

use std::path::Path;

use proptest::prelude::*;
use ykhsm_core::aead::{self, AeadError, KeyHandleKey, Nonce};
use ykhsm_core::aead_file::AeadFile;
use ykhsm_core::counters::{Counters, is_fresh};
use ykhsm_core::keyhandle::{KeyHandle, KeyHandleName, parse_key_handle};
use ykhsm_core::keys_file::KeysFile;
use ykhsm_core::otp::{Otp, OtpFields, OtpPlaintext, PublicId, Token, YubiKeySecrets};
use ykhsm_core::{modhex, ykksm};

fn fields() -> impl Strategy<Value = OtpFields> {
    (
        any::<[u8; 6]>(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
    )
        .prop_map(
            |(uid, use_counter, ts_low, ts_high, session_use, random)| OtpFields {
                uid,
                use_counter,
                ts_low,
                ts_high,
                session_use,
                random,
            },
        )
}

fn public_id() -> impl Strategy<Value = PublicId> {
    prop::collection::vec(any::<u8>(), 0..=8)
        .prop_map(|b| PublicId::parse(&modhex::encode(&b)).unwrap())
}

fn key_handle_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 16),
        prop::collection::vec(any::<u8>(), 24),
        prop::collection::vec(any::<u8>(), 32),
    ]
}

fn counters() -> impl Strategy<Value = Counters> {
    (0u16..=0x7fff, any::<u8>()).prop_map(|(c, u)| Counters::new(c, u).unwrap())
}

/// Text that looks like what people paste: modhex, Dvorak, case, junk.
fn typed_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[cbdefghijklnrtuv]{0,60}",
        "[cbdefghijklnrtuvCBDEFGHIJKLNRTUV]{30,50}",
        "[jxe.uidchtnbpygk]{30,50}",
        "[cbdefghijklnrtuv]{32,48}[^cbdefghijklnrtuv]",
        ".{0,80}",
        "\\PC{0,200}",
    ]
}

proptest! {
    #[test]
    fn modhex_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let m = modhex::encode(&bytes);
        prop_assert_eq!(modhex::decode(&m).unwrap(), bytes.clone());
        prop_assert_eq!(modhex::decode(&m.to_ascii_uppercase()).unwrap(), bytes);
    }

    #[test]
    fn modhex_decode_is_total_and_names_a_real_position(s in "\\PC{0,100}") {
        if let Err(modhex::ModhexError::InvalidChar { position, found }) = modhex::decode(&s) {
            prop_assert_eq!(s.chars().nth(position), Some(found));
        }
    }

    #[test]
    fn otp_round_trips(id in public_id(), token in any::<[u8; 16]>()) {
        let otp = Otp::new(id, Token::from_bytes(token));
        let typed = otp.to_typed_string();
        prop_assert_eq!(Otp::parse(&typed).unwrap(), otp.clone());
        prop_assert_eq!(Otp::parse(&typed.to_ascii_uppercase()).unwrap(), otp);
    }

    /// An OTP typed through a US Dvorak layout parses to the same OTP,
    /// whenever the Dvorak spelling is not itself modhex (it contains one of
    /// the Dvorak-only characters x . p y).
    #[test]
    fn dvorak_typed_otp_is_repaired(id in public_id(), token in any::<[u8; 16]>()) {
        let otp = Otp::new(id, Token::from_bytes(token));
        let dvorak: String = otp.to_typed_string().bytes().map(|c| {
            let i = modhex::ALPHABET.iter().position(|&a| a == c).unwrap();
            char::from(modhex::DVORAK_ALPHABET[i])
        }).collect();
        prop_assume!(dvorak.contains(['x', '.', 'p', 'y']));
        prop_assert_eq!(Otp::parse(&dvorak).unwrap(), otp);
    }

    /// Encoding fields with a key and decoding with the same key and uid
    /// gives the fields back; a different uid or key is refused.
    #[test]
    fn otp_encode_decode(f in fields(), key in any::<[u8; 16]>(), other in any::<[u8; 16]>(), flip in 0usize..6) {
        let sec = YubiKeySecrets::new(key, f.uid);
        let token = sec.encrypt(&OtpPlaintext::from_fields(&f));
        let c = sec.decode(&token).unwrap();
        prop_assert_eq!((c.use_counter, c.session_use, c.ts_low, c.ts_high), (f.use_counter, f.session_use, f.ts_low, f.ts_high));
        prop_assert_eq!(c.counters(), Counters::from_raw(f.use_counter, f.session_use));
        let mut wrong_uid = f.uid;
        wrong_uid[flip] ^= 1;
        prop_assert!(YubiKeySecrets::new(key, wrong_uid).decode(&token).is_err());
        prop_assume!(other != key);
        prop_assert!(YubiKeySecrets::new(other, f.uid).decode(&token).is_err());
    }

    #[test]
    fn aead_round_trips_and_detects_tampering(
        key in key_handle_key(),
        kh in any::<u32>(),
        nonce in any::<[u8; 6]>(),
        plaintext in prop::collection::vec(any::<u8>(), 0..=64),
        flip in any::<prop::sample::Index>(),
        other_kh in any::<u32>(),
    ) {
        let key = KeyHandleKey::new(key).unwrap();
        let (kh, nonce) = (KeyHandle(kh), Nonce(nonce));
        let sealed = aead::seal(&key, kh, &nonce, &plaintext).unwrap();
        prop_assert_eq!(sealed.len(), plaintext.len() + 8);
        prop_assert_eq!(&*aead::open(&key, kh, &nonce, &sealed).unwrap(), &plaintext);
        let mut bad = sealed.clone();
        bad[flip.index(sealed.len())] ^= 0x01;
        prop_assert_eq!(aead::open(&key, kh, &nonce, &bad).unwrap_err(), AeadError::Integrity);
        prop_assume!(other_kh != kh.0);
        prop_assert_eq!(aead::open(&key, KeyHandle(other_kh), &nonce, &sealed).unwrap_err(), AeadError::Integrity);
    }

    #[test]
    fn yubikey_secrets_survive_the_aead(key in key_handle_key(), kh in any::<u32>(), nonce in any::<[u8; 6]>(), yk in any::<[u8; 16]>(), uid in any::<[u8; 6]>()) {
        let key = KeyHandleKey::new(key).unwrap();
        let sec = YubiKeySecrets::new(yk, uid);
        let sealed = ykhsm_core::YubiKeyAead::seal(&key, KeyHandle(kh), &Nonce(nonce), &sec).unwrap();
        prop_assert!(sealed.open(&key, KeyHandle(kh), &Nonce(nonce)).unwrap().ct_eq(&sec));
    }

    #[test]
    fn v1_file_round_trips(kh in any::<u32>(), nonce in any::<[u8; 6]>(), aead in prop::collection::vec(any::<u8>(), 8..=72)) {
        let bytes = AeadFile::v1_bytes(KeyHandle(kh), &Nonce(nonce), &aead);
        prop_assert_eq!(AeadFile::parse(&bytes).unwrap(), AeadFile::V1 { key_handle: KeyHandle(kh), nonce: Nonce(nonce), aead });
    }

    /// The freshness order is YK-VAL's: `countersHigherThanOrEqual` refuses
    /// exactly what `is_fresh` refuses; never-seen is below everything.
    #[test]
    fn freshness_is_ykval_order(a in counters(), b in counters()) {
        let ykval_refuses = a.counter() > b.counter() || (a.counter() == b.counter() && a.session_use() >= b.session_use());
        prop_assert_eq!(is_fresh(Some(a), b), !ykval_refuses);
        prop_assert!(is_fresh(None, b));
        // Exactly one of a<b, a==b, a>b; strictness both ways.
        prop_assert!(!(is_fresh(Some(a), b) && is_fresh(Some(b), a)));
        prop_assert_eq!(a == b, !is_fresh(Some(a), b) && !is_fresh(Some(b), a));
    }

    #[test]
    fn freshness_is_transitive(a in counters(), b in counters(), c in counters()) {
        if is_fresh(Some(a), b) && is_fresh(Some(b), c) {
            prop_assert!(is_fresh(Some(a), c));
        }
    }

    #[test]
    fn caps_lock_bit_is_never_compared(c in 0u16..=0x7fff, u in any::<u8>()) {
        prop_assert_eq!(Counters::from_raw(c | 0x8000, u), Counters::from_raw(c, u));
    }

    // ---- total parsers: any input, an answer, no panic.

    #[test]
    fn otp_parse_is_total(s in typed_text()) {
        if let Ok(otp) = Otp::parse(&s) {
            prop_assert!(otp.public_id().len() <= 16 && otp.public_id().len() % 2 == 0);
        }
        let _ = PublicId::parse(&s);
    }

    #[test]
    fn key_handle_parse_is_total(s in "\\PC{0,20}") {
        let _ = parse_key_handle(&s);
        let _ = s.parse::<KeyHandleName>();
    }

    #[test]
    fn aead_file_parse_is_total(bytes in prop::collection::vec(any::<u8>(), 0..1200), marker in any::<bool>()) {
        let mut input = if marker { b"YubiHSM AEAD\n".to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let _ = AeadFile::parse(&input);
    }

    #[test]
    fn keys_file_parse_is_total(s in prop_oneof![
        "\\{(\"[0-9a-z]{0,12}\": ?\"[0-9a-fA-Fz]{0,70}\",? ?){0,4}\\}",
        "\\PC{0,200}",
    ]) {
        if let Err(e) = KeysFile::parse(Path::new("p/keys.json"), s.as_bytes()) {
            prop_assert!(e.to_string().contains("p/keys.json"));
        }
    }

    #[test]
    fn ykksm_parse_is_total(lines in prop::collection::vec(prop_oneof![
        "[0-9]{0,3},[cbdefghijklnrtuv]{0,18},[0-9a-f]{0,14},[0-9a-fA-F]{0,66},[0-9a-f]{0,12},[T:0-9 -]{0,20},[a-z]{0,3}(,[0-9]{0,2})?",
        "\\PC{0,100}",
        Just("# ykksm 1".to_owned()),
    ], 0..8), crlf in any::<bool>()) {
        let sep = if crlf { "\r\n" } else { "\n" };
        let text = lines.join(sep);
        let p = ykksm::parse(text.as_bytes());
        for e in &p.errors {
            prop_assert!(e.line >= 1 && e.line <= lines.len().max(1));
        }
    }

    #[test]
    fn ykksm_parse_of_random_bytes_is_total(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = ykksm::parse(&bytes);
    }
}

/// Empty, short, long and non-ASCII input to every parser: an error, no panic.
#[test]
fn every_parser_refuses_empty_short_long_and_non_ascii_input() {
    let long = "c".repeat(1 << 20);
    let inputs: [&str; 6] = [
        "",
        "c",
        &long,
        "ééééééééééééééééééééééééééééééééé",
        "\u{0}",
        "cccccccccccccccccccccccccccccccccé",
    ];
    for s in inputs {
        assert!(Otp::parse(s).is_err(), "{:?}", s.get(..20));
        assert!(parse_key_handle(s).is_err(), "{:?}", s.get(..20));
        assert!(KeysFile::parse(Path::new("k.json"), s.as_bytes()).is_err());
        assert!(AeadFile::parse(s.as_bytes()).is_err() || (8..=48).contains(&s.len()));
        let p = ykksm::parse(s.as_bytes());
        assert!(p.records.is_empty());
    }
    assert!(PublicId::parse(&long).is_err());
    assert!(modhex::decode("é").is_err());
    assert!(AeadFile::parse(&vec![0u8; 1 << 20]).is_err());
}
