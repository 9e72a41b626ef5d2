//! The file formats and their failure modes: keys.json (owner, mode, every
//! error naming the file and key handle, no key in any message), the AEAD
//! store (lookup order, missing vs malformed vs unreadable, atomic writes)
//! and the ykksm line format (header, CRLF, per-line errors).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use ykhsm_core::aead::{Nonce, YubiKeyAead};
use ykhsm_core::aead_file::AeadFile;
use ykhsm_core::backend::{Backend, BackendError, Purpose, SoftBackend};
use ykhsm_core::keyhandle::{KeyHandle, KeyHandleName};
use ykhsm_core::keys_file::{KeysFile, KeysFileError};
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::secure_file::{SecureFileError, SecureFileErrorKind};
use ykhsm_core::store::{AeadStore, StoreError, WriteMode};
use ykhsm_core::ykksm::{self, YkksmErrorKind};

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f";
const KEY_B: &str = "1f1e1d1c1b1a19181716151413121110";

fn write_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn me(path: &Path) -> u32 {
    fs::metadata(path).unwrap().uid()
}

// ------------------------------------------------------------------ keys.json

#[test]
fn keys_file_with_owner_and_mode_0600_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    write_mode(
        &path,
        &format!(r#"{{"1": "{KEY_A}", "8192": "{KEY_B}{KEY_B}"}}"#),
        0o600,
    );
    let keys = KeysFile::load_owned_by(&path, me(&path)).unwrap();
    assert_eq!(
        keys.key_handles().collect::<Vec<_>>(),
        vec![KeyHandle(1), KeyHandle(8192)]
    );
    assert_eq!(keys.get(KeyHandle(8192)).unwrap().len(), 32);
}

#[test]
fn keys_file_with_any_group_or_other_bit_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    for mode in [0o640, 0o604, 0o610, 0o601, 0o644] {
        write_mode(&path, &format!(r#"{{"1": "{KEY_A}"}}"#), mode);
        let err = KeysFile::load_owned_by(&path, me(&path)).unwrap_err();
        assert!(
            matches!(
                err,
                KeysFileError::File(SecureFileError {
                    kind: SecureFileErrorKind::Mode { .. },
                    ..
                })
            ),
            "{mode:o}: {err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn keys_file_owned_by_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    write_mode(&path, &format!(r#"{{"1": "{KEY_A}"}}"#), 0o600);
    let err = KeysFile::load_owned_by(&path, me(&path) + 1).unwrap_err();
    assert!(
        matches!(
            err,
            KeysFileError::File(SecureFileError {
                kind: SecureFileErrorKind::Owner { .. },
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("keys.json"));
}

#[test]
fn keys_file_behind_a_symlink_or_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    write_mode(&real, &format!(r#"{{"1": "{KEY_A}"}}"#), 0o600);
    let link = dir.path().join("keys.json");
    symlink(&real, &link).unwrap();
    assert!(KeysFile::load_owned_by(&link, me(&real)).is_err());
    let missing = dir.path().join("absent.json");
    let err = KeysFile::load_owned_by(&missing, 0).unwrap_err();
    assert!(err.to_string().contains("absent.json"), "{err}");
}

/// Every malformed keys.json gives an error naming the file (and the key
/// handle where there is one) and never echoing the key material.
#[test]
fn keys_file_errors_name_file_and_key_handle_but_never_the_key() {
    let secretish = "abcdefabcdefabcdefabcdefabcdefab0"; // 33 hex digits
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "JSON"),
        ("[]".into(), "object"),
        ("{}".into(), "no key handles"),
        (format!(r#"{{"0x2000": "{KEY_A}"}}"#), "0x2000"),
        (format!(r#"{{"-1": "{KEY_A}"}}"#), "-1"),
        (format!(r#"{{"4294967296": "{KEY_A}"}}"#), "4294967296"),
        (
            format!(r#"{{"1": "{KEY_A}", "01": "{KEY_A}"}}"#),
            "more than once",
        ),
        (format!(r#"{{"7": "{secretish}"}}"#), "key handle 7"),
        (
            r#"{"7": "zz0102030405060708090a0b0c0d0e0f"}"#.into(),
            "key handle 7",
        ),
        (r#"{"7": 5}"#.into(), "object"),
        (format!(r#"{{"7": "{KEY_A}""#), "JSON"),
        (format!(r#""{secretish}""#), "object"),
    ];
    for (text, needle) in cases {
        let err = KeysFile::parse(Path::new("/etc/ykhsm/keys.json"), text.as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/ykhsm/keys.json"), "{text}: {msg}");
        assert!(msg.contains(needle), "{text}: {msg} lacks {needle:?}");
        assert!(
            !msg.contains(secretish) && !msg.contains(KEY_A),
            "{msg} leaks a key"
        );
    }
}

#[test]
fn keys_never_appear_in_debug_output() {
    let keys = KeysFile::parse(
        Path::new("k.json"),
        format!(r#"{{"1": "{KEY_A}"}}"#).as_bytes(),
    )
    .unwrap();
    let dbg = format!("{keys:?} {:?}", keys.get(KeyHandle(1)).unwrap());
    assert!(!dbg.contains(KEY_A) && !dbg.contains("0, 1, 2"), "{dbg}");
    assert!(dbg.contains("AES-128"), "{dbg}");
}

#[test]
fn soft_backend_refuses_unknown_key_handles() {
    let keys = KeysFile::parse(
        Path::new("k.json"),
        format!(r#"{{"1": "{KEY_A}"}}"#).as_bytes(),
    )
    .unwrap();
    let backend = SoftBackend::new(keys);
    assert!(
        backend
            .check_key_handle(KeyHandle(1), Purpose::OtpDecode)
            .is_ok()
    );
    let err = backend
        .check_key_handle(KeyHandle(2), Purpose::AeadGenerate)
        .unwrap_err();
    assert!(matches!(
        err,
        BackendError::UnknownKeyHandle {
            key_handle: KeyHandle(2)
        }
    ));
    assert!(!err.is_bad_otp());
    let sec = YubiKeySecrets::new([7; 16], [8; 6]);
    assert!(
        backend
            .wrap_secrets(KeyHandle(2), &Nonce([0; 6]), &sec)
            .is_err()
    );
}

// ------------------------------------------------------------------ the store

fn backend() -> SoftBackend {
    let text = format!(r#"{{"1": "{KEY_A}", "2": "{KEY_B}"}}"#);
    SoftBackend::new(KeysFile::parse(Path::new("k.json"), text.as_bytes()).unwrap())
}

fn names(list: &[&str]) -> Vec<KeyHandleName> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn aead_for(b: &SoftBackend, kh: u32, id: &PublicId) -> (Nonce, YubiKeyAead) {
    let nonce = Nonce::from_public_id(id).unwrap();
    let aead = b
        .wrap_secrets(
            KeyHandle(kh),
            &nonce,
            &YubiKeySecrets::new([u8::try_from(kh).unwrap(); 16], [9; 6]),
        )
        .unwrap();
    (nonce, aead)
}

#[test]
fn key_handles_are_tried_in_configured_order_only_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend();
    let id = PublicId::parse("ccccccdbjrgf").unwrap();
    let store = AeadStore::new(dir.path(), names(&["1", "2"]));
    let kh2: KeyHandleName = "2".parse().unwrap();
    let (nonce, aead2) = aead_for(&b, 2, &id);
    store
        .write_v1(&kh2, &id, &nonce, &aead2, WriteMode::CreateNew)
        .unwrap();
    // Missing under 1: found under 2.
    assert_eq!(store.lookup(&id).unwrap().unwrap().key_handle, KeyHandle(2));
    // Present under 1: 1 wins.
    let kh1: KeyHandleName = "1".parse().unwrap();
    let (_, aead1) = aead_for(&b, 1, &id);
    store
        .write_v1(&kh1, &id, &nonce, &aead1, WriteMode::CreateNew)
        .unwrap();
    assert_eq!(store.lookup(&id).unwrap().unwrap().key_handle, KeyHandle(1));
    // Malformed under 1: an error naming the file, not a fall-through to 2.
    let p1 = store.path_for(&kh1, &id);
    fs::write(&p1, b"YubiHSM AEAD\n\x07garbage").unwrap();
    let err = store.lookup(&id).unwrap_err();
    assert!(matches!(err, StoreError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains(&p1.display().to_string()), "{err}");
    // Not a file under 1 (a directory where the file should be): an error
    // too, naming it.
    fs::remove_file(&p1).unwrap();
    fs::create_dir(&p1).unwrap();
    let err = store.lookup(&id).unwrap_err();
    assert!(
        matches!(err, StoreError::Insecure(SecureFileError { ref path, kind: SecureFileErrorKind::NotRegular { .. } }) if *path == p1),
        "{err}"
    );
}

#[test]
fn unknown_public_id_and_empty_id_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = AeadStore::new(dir.path(), names(&["1"]));
    assert!(
        store
            .lookup(&PublicId::parse("vvvvvvvvvvvv").unwrap())
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .lookup(&PublicId::parse("").unwrap())
            .unwrap()
            .is_none()
    );
    let kh: KeyHandleName = "1".parse().unwrap();
    let err = store
        .write_v1(
            &kh,
            &PublicId::parse("").unwrap(),
            &Nonce([0; 6]),
            &YubiKeyAead([0; 30]),
            WriteMode::Replace,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::EmptyPublicId));
}

#[test]
fn written_aead_is_0600_complete_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend();
    let id = PublicId::parse("cbdefghijkln").unwrap();
    let store = AeadStore::new(dir.path().join("aeads"), names(&["1"]));
    let kh: KeyHandleName = "1".parse().unwrap();
    let (nonce, aead) = aead_for(&b, 1, &id);
    let path = store
        .write_v1(&kh, &id, &nonce, &aead, WriteMode::CreateNew)
        .unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        AeadFile::v1_bytes(KeyHandle(1), &nonce, &aead.0)
    );
    let siblings: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("cbdefghijkln")]);
    // CreateNew refuses to overwrite; Replace swaps the whole file.
    let err = store
        .write_v1(&kh, &id, &nonce, &aead, WriteMode::CreateNew)
        .unwrap_err();
    assert!(matches!(err, StoreError::Exists { .. }), "{err}");
    let (_, other) = aead_for(&b, 2, &id);
    store
        .write_v1(&kh, &id, &nonce, &other, WriteMode::Replace)
        .unwrap();
    assert_eq!(store.lookup(&id).unwrap().unwrap().aead, other);
}

#[test]
fn oversized_and_empty_aead_files_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let id = PublicId::parse("cbdefghijkln").unwrap();
    let store = AeadStore::new(dir.path(), names(&["1"]));
    let kh: KeyHandleName = "1".parse().unwrap();
    let path = store.path_for(&kh, &id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    for bytes in [vec![], vec![0u8; 1 << 20], vec![0u8; 31]] {
        fs::write(&path, &bytes).unwrap();
        let err = store.lookup(&id).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Malformed { .. } | StoreError::NotYubiKeyAead { .. }
            ),
            "{} bytes: {err}",
            bytes.len()
        );
    }
}

#[test]
fn v0_file_of_a_long_public_id_has_no_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let id = PublicId::parse("cbdefghijklnrtuv").unwrap();
    let store = AeadStore::new(dir.path(), names(&["1"]));
    let kh: KeyHandleName = "1".parse().unwrap();
    let path = store.path_for(&kh, &id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, [0u8; 30]).unwrap();
    let err = store.lookup(&id).unwrap_err();
    assert!(matches!(err, StoreError::Nonce { .. }), "{err}");
}

// ------------------------------------------------------------------- ykksm

const GEN_KEYS: &str = "# ykksm 1\n\
# serialnr,identity,internaluid,aeskey,lockpw,created,accessed[,progflags]\n\
1,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,881ae7bee927,2009-12-14T16:40:57,\n\
2,cccccccccccd,d74fbdf6a891,82211e0854e7369e83d941f24761a84f,881ae7bee927,2009-12-14T16:40:57,,17\n\
# the end\n";

#[test]
fn ykksm_with_header_lf_and_without_header_crlf_read_the_same() {
    let with = ykksm::parse(GEN_KEYS.as_bytes());
    assert!(with.header && with.errors.is_empty(), "{:?}", with.errors);
    let without_text: String = GEN_KEYS
        .lines()
        .skip(1)
        .map(|l| format!("{l}\r\n"))
        .collect();
    let without = ykksm::parse(without_text.as_bytes());
    assert!(
        !without.header && without.errors.is_empty(),
        "{:?}",
        without.errors
    );
    let ids = |p: &ykksm::YkksmParse| {
        p.records
            .iter()
            .map(|r| (r.serial, r.public_id.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&with),
        vec![(1, "cccccccccccb".into()), (2, "cccccccccccd".into())]
    );
    assert_eq!(ids(&with), ids(&without));
    assert_eq!(with.records[0].line, 3);
    assert_eq!(without.records[0].line, 2);
    assert_eq!(hex::encode(with.records[0].secrets.uid()), "d74fbdf6a890");
    assert_eq!(
        hex::encode(with.records[0].secrets.key()),
        "82211e0854e7369e83d941f24761a84e"
    );
}

#[test]
fn ykksm_bad_lines_are_reported_with_number_and_reason_and_good_lines_kept() {
    let text = "\
1,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,881ae7bee927,2009-12-14T16:40:57,
x,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,,,
3,,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,,,
4,cccccccccccbx,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,,,
5,cccccccccccb,d74fbdf6a89,82211e0854e7369e83d941f24761a84e,,,
6,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e82211e0854e7369e,,,
7,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84g,,,
8,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,12,,
9,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,,yesterday,
10,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,,,,x
11,cccccccccccb
12,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,,,,,,

No data?!
14,cccccccccccd,d74fbdf6a890,82211e0854e7369e83d941f24761a84e  # trailing comment
";
    let p = ykksm::parse(text.as_bytes());
    let got: Vec<(usize, YkksmErrorKind)> =
        p.errors.iter().map(|e| (e.line, e.kind.clone())).collect();
    use YkksmErrorKind as K;
    assert_eq!(got.len(), 12, "{got:#?}");
    assert_eq!(got[0], (2, K::BadSerial));
    assert_eq!(got[1], (3, K::EmptyPublicId));
    assert!(matches!(got[2], (4, K::BadPublicId(_))));
    assert_eq!(got[3], (5, K::BadUid));
    assert_eq!(got[4], (6, K::BadKeyLength { hex_digits: 48 }));
    assert_eq!(got[5], (7, K::KeyNotHex));
    assert_eq!(got[6], (8, K::BadLockCode));
    assert!(matches!(got[7], (9, K::BadTimestamp { number: 6, .. })));
    assert_eq!(got[8], (10, K::BadProgflags));
    assert_eq!(got[9], (11, K::FieldCount { found: 2 }));
    assert_eq!(got[10], (12, K::FieldCount { found: 10 }));
    assert_eq!(got[11], (14, K::NoData));
    assert_eq!(
        p.records.iter().map(|r| r.line).collect::<Vec<_>>(),
        vec![1, 15]
    );
    for e in &p.errors {
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("line {}: ", e.line)), "{msg}");
        assert!(
            !msg.contains("82211e08") && !msg.contains("d74fbdf6"),
            "{msg} quotes a secret"
        );
    }
}

#[test]
fn ykksm_non_utf8_line_is_an_error_for_that_line_only() {
    let mut text = b"1,cccccccccccb,d74fbdf6a890,82211e0854e7369e83d941f24761a84e,,,\n".to_vec();
    text.extend_from_slice(b"\xff\xfe,\n");
    let p = ykksm::parse(&text);
    assert_eq!(p.records.len(), 1);
    assert_eq!(p.errors.len(), 1);
    assert_eq!(
        (p.errors[0].line, p.errors[0].kind.clone()),
        (2, YkksmErrorKind::NotText)
    );
}
