//! The hot path of a login: parse the typed OTP, open the YubiKey AEAD under
//! the key handle (AES-256-CCM, as pyhsm's key handles usually are), decrypt
//! the token (AES-128-ECB), check CRC and uid. Also the same with the AEAD
//! read from the store: as ykadmin reads it (every directory from the root
//! down opened and checked, the file read), and as the daemon does (its
//! read cache: the file's lstat, and the directory chain checked once and
//! then trusted until inotify reports a change). Figures:
//! docs/performance.md.
//!
//! Run: `cargo bench -p ykhsm-core --bench decode`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use ykhsm_core::aead::{Nonce, YubiKeyAead};
use ykhsm_core::backend::{Backend, SoftBackend};
use ykhsm_core::keyhandle::{KeyHandle, KeyHandleName};
use ykhsm_core::keys_file::KeysFile;
use ykhsm_core::otp::{Otp, OtpFields, OtpPlaintext, PublicId, YubiKeySecrets};
use ykhsm_core::store::{AeadStore, WriteMode};

fn setup() -> (SoftBackend, YubiKeyAead, Nonce, String, PublicId) {
    let keys = KeysFile::parse(
        Path::new("bench/keys.json"),
        br#"{"1": "2000200020002000200020002000200020002000200020002000200020002000"}"#,
    )
    .unwrap();
    let backend = SoftBackend::new(keys);
    let public_id = PublicId::parse("ccccccdbjrgf").unwrap();
    let nonce = Nonce::from_public_id(&public_id).unwrap();
    let secrets = YubiKeySecrets::new([0x5a; 16], [1, 2, 3, 4, 5, 6]);
    let aead = backend
        .wrap_secrets(KeyHandle(1), &nonce, &secrets)
        .unwrap();
    let token = secrets.encrypt(&OtpPlaintext::from_fields(&OtpFields {
        uid: [1, 2, 3, 4, 5, 6],
        use_counter: 17,
        session_use: 3,
        ..OtpFields::default()
    }));
    let typed = Otp::new(public_id.clone(), token)
        .to_typed_string()
        .to_string();
    (backend, aead, nonce, typed, public_id)
}

fn bench(c: &mut Criterion) {
    let (backend, aead, nonce, typed, public_id) = setup();

    c.bench_function("otp_parse", |b| {
        b.iter(|| Otp::parse(black_box(&typed)).unwrap())
    });

    c.bench_function("otp_parse_and_decode_aes256_aead", |b| {
        b.iter(|| {
            let otp = Otp::parse(black_box(&typed)).unwrap();
            backend
                .decode_otp(KeyHandle(1), &nonce, &aead, otp.token())
                .unwrap()
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let kh: KeyHandleName = "1".parse().unwrap();
    let store = AeadStore::new(dir.path(), vec![kh.clone()]);
    store
        .write_v1(&kh, &public_id, &nonce, &aead, WriteMode::CreateNew)
        .unwrap();
    c.bench_function("otp_parse_store_lookup_and_decode", |b| {
        b.iter(|| {
            let otp = Otp::parse(black_box(&typed)).unwrap();
            let found = store.lookup(otp.public_id()).unwrap().unwrap();
            backend
                .decode_otp(found.key_handle, &found.nonce, &found.aead, otp.token())
                .unwrap()
        })
    });

    let cached = AeadStore::new(dir.path(), vec![kh.clone()]).with_read_cache();
    // The cache keeps a file only once it has been unchanged for two
    // seconds (criterion's warm-up is three).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    c.bench_function("otp_parse_cached_store_lookup_and_decode", |b| {
        b.iter(|| {
            let otp = Otp::parse(black_box(&typed)).unwrap();
            let found = cached.lookup(otp.public_id()).unwrap().unwrap();
            backend
                .decode_otp(found.key_handle, &found.nonce, &found.aead, otp.token())
                .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
