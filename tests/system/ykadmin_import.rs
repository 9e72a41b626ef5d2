//! `ykadmin import-ykksm`'s library (`ykadmin::import::import_ykksm`)
//! against the real daemon: keys generated here, written as `ykksm-export`
//! text (seven comma-separated fields, no `# ykksm 1` header), imported,
//! then OTPs of software YubiKeys with those secrets verified by the daemon.

use ykhsm_testkit as common;

use std::fs;
use std::time::Instant;

use common::{Env, random};
use ykadmin::import::{ImportError, ImportReport, import_ykksm};
use ykhsm_core::keyhandle::KeyHandleName;
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_core::store::AeadStore;
use ykhsm_core::{Nonce, modhex};
use ykhsm_proto::Status;
use ykhsmd::config::Config;

/// A key as an export has it.
struct TestKey {
    serial: u32,
    public_id: String,
    key: [u8; 16],
    uid: [u8; 6],
}

impl TestKey {
    /// Key number `n` of a batch: public id `ddcc` + modhex of `n`, random
    /// secrets.
    fn new(n: u32) -> Self {
        let b = n.to_be_bytes();
        Self {
            serial: 1_000_000 + n,
            public_id: modhex::encode(&[0x22, 0x00, b[0], b[1], b[2], b[3]]),
            key: random(),
            uid: random(),
        }
    }

    /// The same public id with other secrets.
    fn reprogrammed(&self) -> Self {
        Self {
            serial: self.serial,
            public_id: self.public_id.clone(),
            key: random(),
            uid: random(),
        }
    }

    /// The line `ykksm-export` prints for it.
    fn line(&self) -> String {
        format!(
            "{},{},{},{},{},2009-12-14T16:40:57,",
            self.serial,
            self.public_id,
            hex::encode(self.uid),
            hex::encode(self.key),
            hex::encode(random::<6>()),
        )
    }

    /// A software YubiKey programmed with it.
    fn yubikey(&self) -> SoftYubiKey {
        SoftYubiKey::new(
            PublicId::parse(&self.public_id).unwrap(),
            YubiKeySecrets::new(self.key, self.uid),
        )
    }

    /// Tells the environment never to log these secrets.
    fn remember(&self, env: &Env) {
        env.secret(&hex::encode(self.key));
        env.secret(&hex::encode(self.uid));
        env.secret(&modhex::encode(&self.key));
        env.secret(&modhex::encode(&self.uid));
    }
}

fn keys(env: &Env, n: u32) -> Vec<TestKey> {
    let keys: Vec<TestKey> = (0..n).map(TestKey::new).collect();
    for k in &keys {
        k.remember(env);
    }
    keys
}

/// `ykksm-export` output (no header).
fn export(keys: &[TestKey]) -> String {
    keys.iter().map(|k| k.line() + "\n").collect()
}

fn config(env: &Env) -> Config {
    Config::load(&env.config_path).unwrap()
}

fn kh(s: &str) -> KeyHandleName {
    s.parse().unwrap()
}

fn import(env: &Env, text: &str, khs: &[&str], force: bool) -> ImportReport {
    let config = config(env);
    let khs: Vec<KeyHandleName> = khs.iter().map(|s| kh(s)).collect();
    import_ykksm(&config, text.as_bytes(), &khs, force, false).unwrap()
}

fn counts(r: &ImportReport) -> (usize, usize, usize, usize) {
    (r.imported, r.replaced, r.skipped, r.failed)
}

/// One OTP of `key` checked as `user`.
fn verify(env: &Env, d: &common::Daemon, user: &str, key: &mut SoftYubiKey) -> Status {
    let otp = env.otp(key);
    d.verify(user, &otp)
}

/// Asserts no failure message carries any of the keys' secrets.
fn assert_no_secrets(report: &ImportReport, keys: &[&TestKey]) {
    let text = format!("{report:?}").to_ascii_lowercase();
    for k in keys {
        for s in [hex::encode(k.key), hex::encode(k.uid)] {
            assert!(!text.contains(&s), "the report carries a secret: {text}");
        }
    }
}

#[test]
fn ten_thousand_keys_import_then_a_rerun_skips_them_all() {
    const N: u32 = 10_000;
    let env = Env::new();
    let keys = keys(&env, N);
    let picked = [0, 4_999, 9_999];
    let ids: Vec<&str> = picked.iter().map(|&i| keys[i].public_id.as_str()).collect();
    env.set_authfile(&format!("alice:{}\n", ids.join(":")));
    let d = env.start();
    let text = export(&keys);

    let t = Instant::now();
    let r = import(&env, &text, &["1"], false);
    let first = t.elapsed();
    eprintln!(
        "import-ykksm: {N} keys imported in {:.2} s ({:.0} keys/s)",
        first.as_secs_f64(),
        f64::from(N) / first.as_secs_f64()
    );
    assert_eq!(counts(&r), (N as usize, 0, 0, 0), "{:?}", r.failures);
    assert_eq!(r.keys, N as usize);
    assert!(!r.header);
    assert!(r.is_success());
    assert_eq!(r.summary(), format!("imported {N}, skipped 0, failed 0"));
    for &i in &picked {
        let mut yk = keys[i].yubikey();
        assert_eq!(verify(&env, &d, "alice", &mut yk), Status::Ok, "key {i}");
    }

    let t = Instant::now();
    let again = import(&env, &text, &["1"], false);
    let second = t.elapsed();
    eprintln!(
        "import-ykksm: {N} keys re-run (all skipped) in {:.2} s",
        second.as_secs_f64()
    );
    assert_eq!(
        counts(&again),
        (0, 0, N as usize, 0),
        "{:?}",
        again.failures
    );
    // Still the same secrets: the next OTPs verify.
    for &i in &picked {
        let mut yk = keys[i].yubikey();
        yk.set_counters(5, 0);
        assert_eq!(verify(&env, &d, "alice", &mut yk), Status::Ok, "key {i}");
    }
}

#[test]
fn with_and_without_the_ykksm_1_header() {
    let env = Env::new();
    let keys = keys(&env, 4);
    env.set_authfile(&format!(
        "alice:{}:{}\nbob:{}:{}\n",
        keys[0].public_id, keys[1].public_id, keys[2].public_id, keys[3].public_id
    ));
    let d = env.start();

    // What ykksm-gen-keys writes: header, comments, CRLF line ends.
    let with = format!(
        "# ykksm 1\r\n# serialnr,identity,internaluid,aeskey,lockpw,created,accessed[,progflags]\r\n{}\r\n{}  # a comment\r\n# the end\r\n",
        keys[0].line(),
        keys[1].line()
    );
    let r = import(&env, &with, &["1"], false);
    assert!(r.header);
    assert_eq!(counts(&r), (2, 0, 0, 0), "{:?}", r.failures);

    // What ykksm-export writes: no header, 7 fields, plus a progflags line.
    let without = format!("{}\n{},17\n", keys[2].line(), keys[3].line());
    let r = import(&env, &without, &["1"], false);
    assert!(!r.header);
    assert_eq!(counts(&r), (2, 0, 0, 0), "{:?}", r.failures);

    for (user, k) in [
        ("alice", &keys[0]),
        ("alice", &keys[1]),
        ("bob", &keys[2]),
        ("bob", &keys[3]),
    ] {
        let mut yk = k.yubikey();
        assert_eq!(verify(&env, &d, user, &mut yk), Status::Ok, "{user}");
    }
    // The files are v1, with the public id as nonce (pyhsm's convention).
    let store = AeadStore::new(&env.aead_dir, vec![kh("1")]);
    let id = PublicId::parse(&keys[0].public_id).unwrap();
    let found = store.lookup(&id).unwrap().unwrap();
    assert_eq!(found.path, store.path_for(&kh("1"), &id));
    assert_eq!(found.nonce, Nonce::from_public_id(&id).unwrap());
}

#[test]
fn bad_lines_are_named_and_the_good_ones_imported() {
    let env = Env::new();
    let keys = keys(&env, 3);
    env.set_authfile(&format!(
        "alice:{}:{}\n",
        keys[0].public_id, keys[2].public_id
    ));
    let d = env.start();
    let bad_key = keys[1].line().replace(&hex::encode(keys[1].key), "zz");
    let text = [
        keys[0].line(),                   // 1 good
        bad_key,                          // 2 aesKey not hex
        "1,ccccccdbjrgf,0011".to_owned(), // 3 too few fields
        String::new(),                    // 4 blank: ignored
        "No data?!".to_owned(),           // 5 empty export
        format!(
            "7,,{},{},{},,",
            hex::encode(keys[1].uid),
            hex::encode(keys[1].key),
            "000000000000"
        ), // 6 empty publicName
        keys[2].line(),                   // 7 good
        format!(
            "8,ccccccccccccdd,{},{},000000000000,,",
            hex::encode(keys[1].uid),
            hex::encode(keys[1].key)
        ), // 8 public id too long
    ]
    .join("\n");
    let r = import(&env, &text, &["1"], false);
    assert_eq!(counts(&r), (2, 0, 0, 5), "{:#?}", r.failures);
    assert!(!r.is_success());
    let lines: Vec<usize> = r.failures.iter().map(|n| n.line).collect();
    assert_eq!(lines, [2, 3, 5, 6, 8]);
    let msgs: Vec<String> = r.failures.iter().map(ToString::to_string).collect();
    assert!(msgs[0].starts_with("line 2: aesKey (field 4)"), "{msgs:?}");
    assert!(msgs[1].starts_with("line 3: 3 fields"), "{msgs:?}");
    assert!(msgs[2].contains("No data?!"), "{msgs:?}");
    assert!(
        msgs[3].contains("publicName (field 2) is empty"),
        "{msgs:?}"
    );
    assert!(
        msgs[4].starts_with("line 8: public id ccccccccccccdd: "),
        "{msgs:?}"
    );
    assert_no_secrets(&r, &[&keys[0], &keys[1], &keys[2]]);

    for k in [&keys[0], &keys[2]] {
        let mut yk = k.yubikey();
        assert_eq!(verify(&env, &d, "alice", &mut yk), Status::Ok);
    }
}

#[test]
fn a_conflict_fails_without_force_and_is_replaced_with_it() {
    let env = Env::new();
    let keys = keys(&env, 2);
    let new = keys[0].reprogrammed();
    new.remember(&env);
    env.set_authfile(&format!(
        "alice:{}:{}\n",
        keys[0].public_id, keys[1].public_id
    ));
    let d = env.start();
    let r = import(&env, &export(&keys), &["1"], false);
    assert_eq!(counts(&r), (2, 0, 0, 0), "{:?}", r.failures);

    // The same public id, reprogrammed: a named conflict; the rest skipped.
    let text = format!("{}\n{}\n", keys[1].line(), new.line());
    let r = import(&env, &text, &["1"], false);
    assert_eq!(counts(&r), (0, 0, 1, 1), "{:?}", r.failures);
    let msg = r.failures[0].to_string();
    let expected = format!(
        "line 2: public id {} under key handle 1: the existing AEAD holds a different secret; \
         --force replaces it",
        new.public_id
    );
    assert!(msg.starts_with(&expected), "{msg}");
    assert_no_secrets(&r, &[&keys[0], &new]);
    // The old secret still works, the new one does not.
    let mut old_yk = keys[0].yubikey();
    assert_eq!(verify(&env, &d, "alice", &mut old_yk), Status::Ok);
    let mut new_yk = new.yubikey();
    new_yk.set_counters(100, 0);
    assert_ne!(verify(&env, &d, "alice", &mut new_yk), Status::Ok);

    // With force it is replaced, and counted as imported.
    let r = import(&env, &text, &["1"], true);
    assert_eq!(counts(&r), (1, 1, 1, 0), "{:?}", r.failures);
    assert_eq!(r.replacements[0].line, 2);
    assert!(
        r.replacements[0].to_string().contains("replaced"),
        "{:?}",
        r.replacements
    );
    new_yk.set_counters(101, 0);
    assert_eq!(verify(&env, &d, "alice", &mut new_yk), Status::Ok);
    old_yk.set_counters(200, 0);
    assert_ne!(verify(&env, &d, "alice", &mut old_yk), Status::Ok);

    // And now the same secret again: skipped.
    let r = import(&env, &text, &["1"], false);
    assert_eq!(counts(&r), (0, 0, 2, 0), "{:?}", r.failures);

    // The same public id twice in one input with two secrets: the second
    // line fails, even with force.
    let twice = format!("{}\n{}\n", new.line(), keys[0].line());
    let r = import(&env, &twice, &["1"], true);
    assert_eq!(counts(&r), (0, 0, 1, 1), "{:?}", r.failures);
    assert!(
        r.failures[0]
            .to_string()
            .contains("line 1 has the same public id with a different secret"),
        "{:?}",
        r.failures
    );

    // A malformed file is a named failure, replaced only with force.
    let store = AeadStore::new(&env.aead_dir, vec![kh("1")]);
    let path = store.path_for(&kh("1"), &PublicId::parse(&keys[1].public_id).unwrap());
    fs::write(&path, b"not an AEAD").unwrap();
    let one = format!("{}\n", keys[1].line());
    let r = import(&env, &one, &["1"], false);
    assert_eq!(counts(&r), (0, 0, 0, 1), "{:?}", r.failures);
    let msg = r.failures[0].to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("--force"),
        "{msg}"
    );
    let r = import(&env, &one, &["1"], true);
    assert_eq!(counts(&r), (1, 1, 0, 0), "{:?}", r.failures);
    let mut yk = keys[1].yubikey();
    assert_eq!(verify(&env, &d, "alice", &mut yk), Status::Ok);
}

#[test]
fn two_key_handles_each_get_an_aead() {
    let env = Env::new();
    let kh2_key = hex::encode(random::<32>());
    env.secret(&kh2_key);
    env.set_keys_json(&format!(
        r#"{{"1": "{}", "2": "{kh2_key}"}}"#,
        common::KH1_KEY
    ));
    env.config(r#"key_handles = ["1", "0x2"]"#);
    let keys = keys(&env, 3);
    env.set_authfile(&format!(
        "alice:{}\n",
        keys.iter()
            .map(|k| k.public_id.as_str())
            .collect::<Vec<_>>()
            .join(":")
    ));
    let d = env.start();
    let config = config(&env);
    assert_eq!(config.key_handles, [kh("1"), kh("0x2")]);

    let text = export(&keys);
    let r = import_ykksm(&config, text.as_bytes(), &config.key_handles, false, false).unwrap();
    assert_eq!(counts(&r), (6, 0, 0, 0), "{:?}", r.failures);
    // With the progress bar (drawn only when stderr is a terminal).
    let r = import_ykksm(&config, text.as_bytes(), &config.key_handles, false, true).unwrap();
    assert_eq!(counts(&r), (0, 0, 6, 0), "{:?}", r.failures);

    let mut yks: Vec<SoftYubiKey> = keys.iter().map(TestKey::yubikey).collect();
    for yk in &mut yks {
        assert_eq!(verify(&env, &d, "alice", yk), Status::Ok);
    }
    // Without key handle 1's files, the daemon finds the 0x2 ones, made
    // under key handle 2.
    let store2 = AeadStore::new(&env.aead_dir, vec![kh("0x2")]);
    for k in &keys {
        let found = store2
            .lookup(&PublicId::parse(&k.public_id).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(found.key_handle.0, 2);
        assert!(found.path.starts_with(env.aead_dir.join("0x2")));
    }
    fs::remove_dir_all(env.aead_dir.join("1")).unwrap();
    for yk in &mut yks {
        assert_eq!(verify(&env, &d, "alice", yk), Status::Ok);
    }

    // Only the one given: 1 again.
    let r = import(&env, &text, &["1"], false);
    assert_eq!(counts(&r), (3, 0, 0, 0), "{:?}", r.failures);

    // A key handle the backend does not have stops the import before
    // anything is written, and is named.
    let err = import_ykksm(&config, text.as_bytes(), &[kh("3")], false, false).unwrap_err();
    assert!(matches!(err, ImportError::KeyHandle { .. }), "{err}");
    assert!(err.to_string().starts_with("key handle 3: "), "{err}");
    assert!(!env.aead_dir.join("3").exists());
}

#[test]
fn no_daemon_or_no_aead_directory_is_an_error_naming_it() {
    let env = Env::new();
    let keys = keys(&env, 1);
    let text = export(&keys);
    let config = config(&env);
    let err = import_ykksm(&config, text.as_bytes(), &[kh("1")], false, false).unwrap_err();
    assert!(matches!(err, ImportError::Daemon { .. }), "{err}");
    assert!(
        err.to_string().contains(&env.socket.display().to_string()),
        "{err}"
    );

    let _d = env.start();
    let mut config = config;
    config.aead_dir = env.dir.path().join("missing");
    let err = import_ykksm(&config, text.as_bytes(), &[kh("1")], false, false).unwrap_err();
    assert!(matches!(err, ImportError::AeadDir { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    let err = import_ykksm(&config, text.as_bytes(), &[], false, false).unwrap_err();
    assert!(matches!(err, ImportError::NoKeyHandles), "{err}");
}
