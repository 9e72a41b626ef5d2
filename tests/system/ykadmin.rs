//! `ykadmin` against the real daemon: each subcommand that is built, with
//! its output and exit code.

use ykhsm_testkit as common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Env, ykadmin, ykadmin_bin, ykadmin_with_input};
use ykhsm_proto::Status;

/// Copies one host's AEAD store to another, as rsync would.
fn copy_aeads(from: &Env, to: &Env) {
    let copy = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.aead_dir.display()))
        .arg(&to.aead_dir)
        .status()
        .unwrap();
    assert!(copy.success());
}

#[test]
fn pubid_from_serial_in_both_forms() {
    let env = Env::new();
    let o = ykadmin(&env, &["pubid-from-serial", "2198612"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "ccccccdbjrgf\n"));
    let o = ykadmin(&env, &["pubid-from-serial", "--ykman", "2198612"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "vvccccdbjrgf\n"));
}

#[test]
fn verify_prints_the_status_word_and_exits_zero_only_for_ok() {
    let (env, mut key, _d) = common::alice();
    let otp = env.otp(&mut key);
    let o = ykadmin(&env, &["verify", "alice", &otp]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "OK\n"), "{}", o.stderr);
    let o = ykadmin(&env, &["verify", "alice", &otp]);
    assert_eq!((o.code, o.stdout.as_str()), (1, "REPLAYED_OTP\n"));
    // daemon: a system user (base-passwd) without a line.
    let o = ykadmin(&env, &["--json", "verify", "daemon", &env.otp(&mut key)]);
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stdout.trim(),
        r#"{"user":"daemon","status":"NO_KEYS_FOR_USER"}"#
    );
    let o = ykadmin(&env, &["verify", "carol", &env.otp(&mut key)]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (
            1,
            "UNKNOWN_USER
"
        )
    );
}

#[test]
fn decrypt_answers_as_yubikey_ksm_and_consumes_nothing() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    let o = ykadmin(&env, &["decrypt", &otp]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("OK counter=0001 low="), "{}", o.stdout);
    assert!(o.stdout.ends_with(" use=00\n"), "{}", o.stdout);
    assert_eq!(d.verify("alice", &otp), Status::Ok, "decrypt consumed it");
    let o = ykadmin(&env, &["decrypt", "not-an-otp"]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.starts_with("ERR "), "{}", o.stdout);
}

#[test]
fn status_reports_the_daemon_and_fails_plainly_without_it() {
    let (env, _key, mut d) = common::alice();
    let o = ykadmin(&env, &["status"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("database"), "{}", o.stdout);
    let o = ykadmin(&env, &["--json", "status"]);
    assert!(
        o.stdout.starts_with('{') && o.stdout.contains("\"database\""),
        "{}",
        o.stdout
    );
    d.terminate();
    let o = ykadmin(&env, &["status"]);
    assert_eq!(o.code, 3);
    assert!(o.stderr.contains("is it running?"), "{}", o.stderr);
}

#[test]
fn enroll_and_revoke_keep_every_other_byte_of_the_authfile() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    let before = "# managed by hand\n\nroot:cccccccccccb\n  odd spacing stays\nalice:\ncarol:cccccccccccd:\r\n";
    env.set_authfile(before);
    let d = env.start();
    // By public id.
    let o = ykadmin(&env, &["enroll", "alice", "ccccccdbjrgf"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let after = fs::read_to_string(&env.authfile).unwrap();
    assert_eq!(after, before.replace("alice:\n", "alice:ccccccdbjrgf\n"));
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    // Revoke: the line stays, empty, so alice is refused (also under nullok).
    let o = ykadmin(&env, &["revoke", "alice", "ccccccdbjrgf"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(fs::read_to_string(&env.authfile).unwrap(), before);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::NotAuthorized);
    // By OTP: verified first, its counter recorded.
    let otp = env.otp(&mut key);
    let o = ykadmin(&env, &["enroll", "dave", &otp]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        fs::read_to_string(&env.authfile)
            .unwrap()
            .ends_with("dave:ccccccdbjrgf\n")
    );
    assert_eq!(d.verify("dave", &otp), Status::ReplayedOtp);
    assert_eq!(d.verify("dave", &env.otp(&mut key)), Status::Ok);
    // An OTP that does not verify enrolls nothing.
    let o = ykadmin(&env, &["enroll", "erin", &otp]);
    assert_eq!(o.code, 1);
    assert!(!fs::read_to_string(&env.authfile).unwrap().contains("erin"));
    // --purge removes the line.
    let o = ykadmin(&env, &["revoke", "--purge", "dave"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(fs::read_to_string(&env.authfile).unwrap(), before);
    // list shows users and what the daemon knows of their keys.
    let o = ykadmin(&env, &["list"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("alice  (no key: refused)"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("root  cccccccccccb  never used"),
        "{}",
        o.stdout
    );
}

/// Issue 12, item 4: a user name with a byte-order mark looks like alice's
/// line; ykhsmd fails alice closed, `list` says so, and `enroll alice`
/// refuses to add a line beside it, naming the line.
#[test]
fn list_flags_and_enroll_refuses_a_user_name_with_an_invisible_character() {
    let env = Env::new();
    let before = "\u{feff}alice:ccccccdbjrgf\nbob:cccccccccccb\n";
    env.set_authfile(before);
    let _d = env.start();
    let o = ykadmin(&env, &["list"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("\"\\u{feff}alice\"  (refused: an invisible or control character in the name, U+FEFF at byte 0; ykhsmd fails \"alice\" closed)"),
        "{}",
        o.stdout
    );
    let o = ykadmin(&env, &["list", "alice"]);
    assert!(o.stdout.contains("refused"), "{}", o.stdout);
    let o = ykadmin(&env, &["enroll", "alice", "cccccccccccd"]);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("line 1") && o.stderr.contains("U+FEFF"),
        "{}",
        o.stderr
    );
    let o = ykadmin(&env, &["enroll", "\u{200b}carol", "cccccccccccd"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("invisible character"), "{}", o.stderr);
    assert_eq!(fs::read_to_string(&env.authfile).unwrap(), before);
}

/// Issue 14 (one authfile module): `list` read the authfile with a plain
/// read, following a symbolic link that `enroll` and `revoke` refuse (and
/// waiting on a FIFO, reading a file of any size). It now reads it as they
/// do: the same refusal, naming the file.
#[test]
fn list_refuses_an_authfile_that_enroll_refuses() {
    let env = Env::new();
    env.set_authfile("alice:ccccccdbjrgf\n");
    let real = env.dir.path().join("yubikeys.real");
    fs::rename(&env.authfile, &real).unwrap();
    std::os::unix::fs::symlink(&real, &env.authfile).unwrap();
    let o = ykadmin(&env, &["enroll", "bob", "cccccccccccd"]);
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(o.stderr.contains("is a symbolic link"), "{}", o.stderr);
    let o = ykadmin(&env, &["list"]);
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stderr
            .contains(&format!("{} is a symbolic link", env.authfile.display())),
        "{}",
        o.stderr
    );
    assert!(!o.stdout.contains("alice"), "{}", o.stdout);
}

#[test]
fn two_daemons_converge_by_export_and_merge_both_ways() {
    let (one, mut key, d1) = common::alice();
    let two = Env::new();
    // The same AEAD on both hosts, as rsync would copy it.
    copy_aeads(&one, &two);
    two.set_authfile("alice:ccccccdbjrgf\n");
    let d2 = two.start();
    let used_on_one = one.otp(&mut key);
    assert_eq!(d1.verify("alice", &used_on_one), Status::Ok);
    let later_on_two = one.otp(&mut key);
    // Not yet replicated: host two accepts the older OTP...
    let export1 = one.dir.path().join("one.counters");
    let o = ykadmin(&one, &["counters", "export", export1.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        fs::read_to_string(&export1)
            .unwrap()
            .starts_with("# ykhsm-counters 2\n")
    );
    let o = ykadmin(&two, &["counters", "merge", export1.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("raised 1"), "{}", o.stdout);
    // ...but after the merge the OTP accepted on one is a replay on two.
    assert_eq!(d2.verify("alice", &used_on_one), Status::ReplayedOtp);
    assert_eq!(d2.verify("alice", &later_on_two), Status::Ok);
    // And back, through a pipe.
    let o = ykadmin(&two, &["counters", "export"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut merge = Command::new(ykadmin_bin())
        .arg("--config")
        .arg(&one.config_path)
        .args(["counters", "merge", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    merge
        .stdin
        .take()
        .unwrap()
        .write_all(o.stdout.as_bytes())
        .unwrap();
    assert!(merge.wait_with_output().unwrap().status.success());
    assert_eq!(d1.verify("alice", &later_on_two), Status::ReplayedOtp);
    // Merging again changes nothing, in either direction.
    let o = ykadmin(&two, &["counters", "merge", export1.to_str().unwrap()]);
    assert!(o.stdout.contains("raised 0"), "{}", o.stdout);
    // A damaged export is refused with its line number, and merges nothing.
    let bad = one.dir.path().join("bad.counters");
    fs::write(&bad, "# ykhsm-counters 1\nccccccdbjrgf nothex 1 2 3 4 5\n").unwrap();
    let o = ykadmin(&two, &["counters", "merge", bad.to_str().unwrap()]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("line 2"), "{}", o.stderr);
}

#[test]
fn ykval_export_import_makes_the_last_otp_yk_val_accepted_a_replay() {
    let (env, key, d) = common::alice();
    // YK-VAL last accepted counter 5 (caps-lock bit set: 0x8005), use 3.
    let last = key.otp_with(5, 3).to_typed_string().to_string();
    env.remember_otp(&last);
    let export = env.dir.path().join("ykval.csv");
    fs::write(
        &export,
        "1,1359470658,1359470700,ccccccdbjrgf,32773,3,32729,4,aoincuhfuahs,alice\n\
         1,1359470658,1359470658,cccccccccccb,-1,-1,-1,-1,,never used\n\
         0,1359470658,1359470658,cccccccccccd,7,1,1,1,,stolen\n",
    )
    .unwrap();
    let o = ykadmin(
        &env,
        &["counters", "import-ykval", export.to_str().unwrap()],
    );
    // Counters belong to the public id: cccccccccccd's are kept although
    // its AEAD is not here (yet).
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("counters of 2 keys merged: raised 2"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("1 never used"), "{}", o.stdout);
    assert!(
        o.stdout.contains("marked inactive") && o.stdout.contains("cccccccccccd"),
        "{}",
        o.stdout
    );
    assert_eq!(d.verify("alice", &last), Status::ReplayedOtp);
    let older = key.otp_with(5, 2).to_typed_string().to_string();
    env.remember_otp(&older);
    assert_eq!(d.verify("alice", &older), Status::ReplayedOtp);
    let next = key.otp_with(5, 4).to_typed_string().to_string();
    env.remember_otp(&next);
    assert_eq!(d.verify("alice", &next), Status::Ok);
    // Importing the same export again lowers nothing.
    let o = ykadmin(
        &env,
        &["counters", "import-ykval", export.to_str().unwrap()],
    );
    assert!(o.stdout.contains("raised 0, unchanged 2"), "{}", o.stdout);
}

#[test]
fn aeads_digest_is_equal_for_equal_stores_and_per_key_names_each_key() {
    let (one, _key, _d) = common::alice();
    let two = Env::new();
    copy_aeads(&one, &two);
    let a = ykadmin(&one, &["aeads", "digest"]);
    let b = ykadmin(&two, &["aeads", "digest"]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(a.stdout, b.stdout);
    assert!(a.stdout.ends_with("  1 files\n"), "{}", a.stdout);
    let _other = two.key("cccccccccccb");
    let b = ykadmin(&two, &["aeads", "digest"]);
    assert_ne!(a.stdout, b.stdout);
    let j = ykadmin(&two, &["--json", "aeads", "digest"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["files"], 2);
    assert_eq!(v["digest"].as_str().unwrap().len(), 40);
    let per = ykadmin(&two, &["aeads", "digest", "--per-key"]);
    let ids: Vec<&str> = per
        .stdout
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids, ["cccccccccccb", "ccccccdbjrgf"]);
}

#[test]
fn import_ykksm_from_the_command_line_imports_skips_and_names_bad_lines() {
    let env = Env::new();
    let d = env.start();
    let (line, mut yk) = env.ykksm_key("ccccccdbjrgf");
    let export = env.dir.path().join("keys.txt");
    fs::write(&export, format!("# ykksm 1\n{line}\nthis is no key line\n")).unwrap();
    let o = ykadmin(&env, &["import-ykksm", export.to_str().unwrap()]);
    assert_eq!(o.code, 1, "a bad line: exit 1\n{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "imported 1, skipped 0, failed 1\n");
    assert!(o.stderr.contains("line 3"), "{}", o.stderr);
    let o = ykadmin(&env, &["import-ykksm", export.to_str().unwrap()]);
    assert_eq!(o.stdout, "imported 0, skipped 1, failed 1\n");
    let o = ykadmin(&env, &["--json", "import-ykksm", export.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let counts = (
        v["imported"].as_u64(),
        v["skipped"].as_u64(),
        v["failed"].as_u64(),
    );
    assert_eq!(counts, (Some(0), Some(1), Some(1)));
    assert_eq!(v["failures"][0]["line"], 3);
    // The imported key logs in.
    env.set_authfile("alice:ccccccdbjrgf\n");
    assert_eq!(d.verify("alice", &env.otp(&mut yk)), Status::Ok);
}

/// An AEAD for `public_id` holding exactly these secrets (the vectors').
fn key_with(env: &Env, public_id: &str, key_hex: &str, uid_hex: &str) {
    use ykhsm_core::backend::{Backend, SoftBackend};
    use ykhsm_core::keys_file::KeysFile;
    let keys_json = format!(r#"{{"1": "{}"}}"#, common::KH1_KEY);
    let backend = SoftBackend::new(
        KeysFile::parse(std::path::Path::new("keys.json"), keys_json.as_bytes()).unwrap(),
    );
    let secrets = ykhsm_core::otp::YubiKeySecrets::new(
        hex::decode(key_hex).unwrap().try_into().unwrap(),
        hex::decode(uid_hex).unwrap().try_into().unwrap(),
    );
    env.secret(key_hex);
    env.secret(uid_hex);
    let id = ykhsm_core::otp::PublicId::parse(public_id).unwrap();
    // An id longer than 6 bytes cannot be the nonce: a random one, which
    // the v1 file records (as `yhsm-import-keys --random-nonce`), read only
    // with accept_random_nonce.
    let nonce = ykhsm_core::Nonce::from_public_id(&id).unwrap_or_else(|_| {
        env.config("accept_random_nonce = true");
        ykhsm_core::Nonce(common::random())
    });
    let aead = backend
        .wrap_secrets(ykhsm_core::keyhandle::KeyHandle(1), &nonce, &secrets)
        .unwrap();
    let kh: ykhsm_core::keyhandle::KeyHandleName = "1".parse().unwrap();
    ykhsm_core::store::AeadStore::new(&env.aead_dir, vec![kh.clone()])
        .write_v1(
            &kh,
            &id,
            &nonce,
            &aead,
            ykhsm_core::store::WriteMode::Replace,
        )
        .unwrap();
}

/// `ykadmin decrypt` prints YK-KSM's answer byte for byte, for every
/// `ksm_decrypt_answer` vector (OK and ERR alike).
#[test]
fn decrypt_matches_every_ksm_decrypt_answer_vector() {
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ykhsm-core/tests/data/vectors.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = |x: &serde_json::Value| x.as_str().unwrap().to_owned();
    let k = &v["ksm_decrypt_answer"];
    // Each OK vector's key in a store of its own (two vectors' public ids
    // would collide in pyhsm's layout: a short id's file is a longer one's
    // directory).
    let mut checked = 0;
    for e in k["ok"].as_array().unwrap() {
        let otp = s(&e["otp"]);
        let id = &otp[..otp.len() - 32];
        if id.is_empty() {
            continue; // no file name for an empty public id
        }
        let env = Env::new();
        key_with(&env, id, &s(&e["key_hex"]), &s(&e["uid_hex"]));
        let _d = env.start();
        env.remember_otp(&otp);
        let o = ykadmin(&env, &["decrypt", &otp]);
        let answer = format!("{}\n", s(&e["answer"]));
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (0, answer.as_str()),
            "{otp}: {}",
            o.stderr
        );
        checked += 1;
    }
    // The error cases: the selftest database's key, and the import doc's.
    let selftest = v["otp"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["public_id"] == "idkfefrdhtru")
        .unwrap();
    let errs = Env::new();
    key_with(
        &errs,
        "idkfefrdhtru",
        &s(&selftest["key_hex"]),
        &s(&selftest["uid_hex"]),
    );
    let empty = Env::new();
    for e in k["errors"].as_array().unwrap() {
        if let Some(key) = e.get("key_hex") {
            let why = s(&e["why"]);
            let uid = why.rsplit("!= ").next().unwrap();
            key_with(&errs, "cccccccccccd", &s(key), uid);
        }
    }
    let _de = errs.start();
    let _dm = empty.start();
    for e in k["errors"].as_array().unwrap() {
        let env = if s(&e["source"]).contains("Installation") {
            &empty
        } else {
            &errs
        };
        let otp = s(&e["otp"]);
        let o = ykadmin(env, &["decrypt", &otp]);
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (1, format!("{}\n", s(&e["answer"])).as_str()),
            "{otp}: {}",
            o.stderr
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
}

#[test]
fn aeads_check_names_every_file_that_is_malformed_or_does_not_authenticate() {
    let env = Env::new();
    let _good = env.key("ccccccdbjrgf");
    let _tampered = env.key("cccccccccccb");
    let _truncated = env.key("cccccccccccd");
    let _d = env.start();
    let o = ykadmin(&env, &["aeads", "check"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "key handle 1: 3 AEADs, 3 good, 0 bad\n");
    // pyhsm's layout: key handle, the id in 2-character directories, the id.
    let path = |id: &str| {
        let mut p = env.aead_dir.join("1");
        for pair in id.as_bytes().chunks(2) {
            p.push(std::str::from_utf8(pair).unwrap());
        }
        p.join(id)
    };
    // One bit flipped in the AEAD, one file cut short.
    let tampered = path("cccccccccccb");
    let mut bytes = fs::read(&tampered).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&tampered, &bytes).unwrap();
    let truncated = path("cccccccccccd");
    let bytes = fs::read(&truncated).unwrap();
    fs::write(&truncated, &bytes[..20]).unwrap();
    let o = ykadmin(&env, &["aeads", "check"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .starts_with("key handle 1: 3 AEADs, 1 good, 2 bad\n"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(&format!(
            "BAD {}: does not authenticate",
            tampered.display()
        )),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(&format!("BAD {}:", truncated.display())),
        "{}",
        o.stdout
    );
    assert!(
        !o.stdout.contains("ccccccdbjrgf"),
        "the good one is not named: {}",
        o.stdout
    );
    // The same for programs.
    let o = ykadmin(&env, &["--json", "aeads", "check"]);
    assert_eq!(o.code, 1);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v[0]["key_handle"], "1");
    assert_eq!(v[0]["aeads"], 3);
    assert_eq!(v[0]["good"], 1);
    assert_eq!(v[0]["bad"].as_array().unwrap().len(), 2);
}

/// pyhsm's own files, as vectors-hsm.json gives them (v1 in one store, v0
/// in another, each at every path pyhsm would use): OTPs verify unchanged
/// and `aeads check` passes.
#[test]
fn a_pyhsm_aead_tree_verifies_unchanged_and_passes_aeads_check() {
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ykhsm-core/tests/data/vectors-hsm.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["aead_cases"].as_array().unwrap();
    for (format, order, verified_suffix) in [
        ("v1_file_hex", r#"["1", "0x2000", "8192"]"#, "-kh1"),
        ("v0_file_hex", r#"["0x2000", "1", "8192"]"#, "-kh2000"),
    ] {
        let env = Env::new();
        env.set_keys_json(&v["keys_json"].to_string());
        env.config(&format!("key_handles = {order}\n"));
        for c in cases {
            let bytes = hex::decode(c[format].as_str().unwrap()).unwrap();
            for rel in c["rel_paths"].as_array().unwrap() {
                let path = env.aead_dir.join(rel.as_str().unwrap());
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, &bytes).unwrap();
            }
        }
        env.set_authfile("alice:ftftftcccccb:ccccccdbjrgf:cbdefghijkln\n");
        let d = env.start();
        let mut verified = 0;
        for c in cases
            .iter()
            .filter(|c| c["id"].as_str().unwrap().ends_with(verified_suffix))
        {
            for o in c["otps"].as_array().unwrap() {
                let otp = o["otp"].as_str().unwrap();
                env.remember_otp(otp);
                assert_eq!(
                    d.verify("alice", otp),
                    Status::Ok,
                    "{format} {}: {otp}",
                    c["id"]
                );
                verified += 1;
            }
        }
        assert_eq!(verified, 9, "{format}");
        let o = ykadmin(&env, &["aeads", "check"]);
        assert_eq!(o.code, 0, "{format}: {}{}", o.stdout, o.stderr);
        let names: Vec<String> = serde_json::from_str(order).unwrap();
        let expected: String = names
            .iter()
            .map(|n| format!("key handle {n}: 3 AEADs, 3 good, 0 bad\n"))
            .collect();
        assert_eq!(o.stdout, expected, "{format}");
    }
}

#[test]
fn generate_seals_new_keys_and_writes_the_programming_lines_0600_only() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let d = env.start();
    let out = env.dir.path().join("program.txt");
    let o = ykadmin(
        &env,
        &[
            "generate",
            "--serial",
            "2198612",
            "--count",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("vvccccdbjrgf vvccccdbjrgg"),
        "{}",
        o.stdout
    );
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = fs::read_to_string(&out).unwrap();
    // Program a software YubiKey from the ykman line, as an operator would.
    let line = text
        .lines()
        .find(|l| l.contains("--public-id vvccccdbjrgf"))
        .unwrap();
    let words: Vec<&str> = line.split(' ').collect();
    let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    let (uid_hex, key_hex) = (after("--private-id"), after("--key"));
    env.secret(uid_hex);
    env.secret(key_hex);
    assert!(!o.stdout.contains(key_hex) && !o.stderr.contains(key_hex));
    assert!(text.contains(&format!(
        "ykpersonalize -1 -ofixed=vvccccdbjrgf -ouid={uid_hex} -a{key_hex}"
    )));
    let mut yk = ykhsm_core::softkey::SoftYubiKey::new(
        ykhsm_core::otp::PublicId::parse("vvccccdbjrgf").unwrap(),
        ykhsm_core::otp::YubiKeySecrets::new(
            hex::decode(key_hex).unwrap().try_into().unwrap(),
            hex::decode(uid_hex).unwrap().try_into().unwrap(),
        ),
    );
    let o = ykadmin(&env, &["enroll", "alice", &env.otp(&mut yk)]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(d.verify("alice", &env.otp(&mut yk)), Status::Ok);
    // The file is never overwritten, nor an existing key.
    let o = ykadmin(
        &env,
        &[
            "generate",
            "--serial",
            "2198612",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 1);
    let other = env.dir.path().join("again.txt");
    let o = ykadmin(
        &env,
        &[
            "generate",
            "--serial",
            "2198612",
            "--out",
            other.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 1, "an existing key is not replaced: {}", o.stdout);
    // A prefix: running numbers after it.
    let third = env.dir.path().join("third.txt");
    let o = ykadmin(
        &env,
        &[
            "generate",
            "--prefix",
            "vvdd",
            "--count",
            "2",
            "--out",
            third.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("vvddcccccccb vvddcccccccd"),
        "{}",
        o.stdout
    );
    for l in fs::read_to_string(&third)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ykman"))
    {
        let w: Vec<&str> = l.split(' ').collect();
        env.secret(w[w.len() - 1]);
        env.secret(w[w.iter().position(|x| *x == "--private-id").unwrap() + 1]);
    }
}

// Issue 12, item 11: OTPs off the command line. `-` reads the OTP (for
// `enroll`, the key) from standard input, and without the argument a
// terminal prompts for it; the argument form stays for scripts.

/// `ykadmin --config <env's> args…` with its standard input a pipe the test
/// holds, so ykadmin blocks reading it until the test writes.
fn ykadmin_waiting_on_stdin(env: &Env, args: &[&str]) -> Child {
    Command::new(ykadmin_bin())
        .arg("--config")
        .arg(&env.config_path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn verify_reads_the_otp_from_standard_input_for_dash_and_consumes_it() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    let o = ykadmin_with_input(&env, &["verify", "alice", "-"], &format!("{otp}\n"));
    assert_eq!((o.code, o.stdout.as_str()), (0, "OK\n"), "{}", o.stderr);
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp, "not consumed");
    // A line as a Windows or terminal program ends it, and one with no end.
    let crlf = env.otp(&mut key);
    let o = ykadmin_with_input(&env, &["verify", "alice", "-"], &format!("{crlf}\r\n"));
    assert_eq!((o.code, o.stdout.as_str()), (0, "OK\n"), "{}", o.stderr);
    let bare = env.otp(&mut key);
    let o = ykadmin_with_input(&env, &["verify", "alice", "-"], &bare);
    assert_eq!((o.code, o.stdout.as_str()), (0, "OK\n"), "{}", o.stderr);
    // Only the first line is the OTP.
    let o = ykadmin_with_input(
        &env,
        &["verify", "alice", "-"],
        &format!("{bare}\n{}\n", env.otp(&mut key)),
    );
    assert_eq!((o.code, o.stdout.as_str()), (1, "REPLAYED_OTP\n"));
}

#[test]
fn decrypt_reads_the_otp_from_standard_input_for_dash_and_consumes_nothing() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    let o = ykadmin_with_input(&env, &["decrypt", "-"], &format!("{otp}\n"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("OK counter=0001 low="), "{}", o.stdout);
    assert_eq!(d.verify("alice", &otp), Status::Ok, "decrypt consumed it");
}

#[test]
fn enroll_reads_an_otp_or_a_public_id_from_standard_input_for_dash() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    let d = env.start();
    // An OTP: verified and consumed first.
    let otp = env.otp(&mut key);
    let o = ykadmin_with_input(&env, &["enroll", "alice", "-"], &format!("{otp}\n"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        fs::read_to_string(&env.authfile).unwrap(),
        "alice:ccccccdbjrgf\n"
    );
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp, "not consumed");
    // A public id.
    let o = ykadmin_with_input(&env, &["enroll", "bob", "-"], "ccccccdbjrgf\n");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        fs::read_to_string(&env.authfile)
            .unwrap()
            .contains("bob:ccccccdbjrgf\n")
    );
    assert_eq!(d.verify("bob", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn an_otp_read_from_standard_input_is_not_on_the_command_line() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    let mut child = ykadmin_waiting_on_stdin(&env, &["verify", "alice", "-"]);
    // What `ps` shows every local user; ykadmin waits on the pipe the test
    // holds, so it is read while ykadmin runs.
    let cmdline = format!("/proc/{}/cmdline", child.id());
    let mut args = Vec::new();
    common::wait_for(
        "ykadmin's own command line",
        Duration::from_secs(10),
        || {
            args = fs::read(&cmdline).unwrap_or_default();
            args.split(|&b| b == 0).any(|a| a == b"verify")
        },
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "ykadmin did not wait for standard input"
    );
    let args = String::from_utf8_lossy(&args).to_ascii_lowercase();
    assert!(args.ends_with("verify\0alice\0-\0"), "{args:?}");
    assert!(
        !args.contains(&otp[otp.len() - 32..]),
        "the OTP is in {cmdline}"
    );
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{otp}").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
}

#[test]
fn an_over_long_line_on_standard_input_is_refused_without_reading_it_all() {
    let (env, _key, _d) = common::alice();
    let mut child = ykadmin_waiting_on_stdin(&env, &["verify", "alice", "-"]);
    let mut stdin = child.stdin.take().unwrap();
    let total = 16 << 20;
    // No newline in 16 MiB: ykadmin must stop reading long before.
    let writer = thread::spawn(move || {
        let chunk = vec![b'c'; 1 << 16];
        let mut sent = 0usize;
        while sent < total {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let out = child.wait_with_output().unwrap();
    let sent = writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("standard input") && stderr.contains("longer than"),
        "{stderr}"
    );
    assert!(sent < total, "ykadmin read all {total} bytes");
}

#[test]
fn without_the_argument_and_without_a_terminal_ykadmin_says_how_to_give_it() {
    let (env, _key, _d) = common::alice();
    for args in [&["verify", "alice"][..], &["decrypt"], &["enroll", "bob"]] {
        let o = ykadmin(&env, args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains("not a terminal") && o.stderr.contains("`-`"),
            "{args:?}: {}",
            o.stderr
        );
    }
    // An empty line is no OTP either.
    let o = ykadmin_with_input(&env, &["verify", "alice", "-"], "\n");
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("standard input"), "{}", o.stderr);
}

#[test]
fn without_the_argument_verify_prompts_on_the_terminal_without_echo() {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave;
    let mut master = File::from(pty.master);
    // ykadmin in a session of its own whose controlling terminal is the
    // pseudo-terminal (setsid --ctty), as on an operator's terminal.
    let mut child = Command::new("setsid")
        .args(["--ctty", "--wait"])
        .arg(ykadmin_bin())
        .arg("--config")
        .arg(&env.config_path)
        .args(["verify", "alice"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = Arc::clone(&screen);
        let mut from = master.try_clone().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            // Ends with EIO once the last descriptor of the slave closes.
            while let Ok(n @ 1..) = from.read(&mut buf) {
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let shown = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    common::wait_for("the prompt", Duration::from_secs(10), || {
        shown().contains("OTP")
    });
    common::wait_for("echo to be off", Duration::from_secs(10), || {
        !tcgetattr(&slave)
            .unwrap()
            .local_flags
            .contains(LocalFlags::ECHO)
    });
    drop(slave);
    // A YubiKey types the OTP and Enter.
    master.write_all(format!("{otp}\r").as_bytes()).unwrap();
    let mut code = None;
    common::wait_for("ykadmin to answer", Duration::from_secs(20), || {
        code = child.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    reader.join().unwrap();
    let screen = shown();
    assert_eq!(code, Some(Some(0)), "{screen}");
    assert!(screen.contains("OK"), "{screen}");
    let lower = screen.to_ascii_lowercase();
    assert!(!lower.contains(&otp[otp.len() - 32..]), "echoed: {screen}");
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
}

/// Issue 12, item 2: a v1 AEAD copied under another public id authenticates
/// (it is a good AEAD of another key), so only its nonce tells: `aeads
/// check` lists it, naming the file and the public id it is filed under.
#[test]
fn aeads_check_lists_a_v1_aead_filed_under_another_public_id() {
    let env = Env::new();
    let _alice = env.key("ccccccdbjrgf");
    let _bob = env.key("cccccccccccb");
    let kh: ykhsm_core::keyhandle::KeyHandleName = "1".parse().unwrap();
    let path = |id: &str| env.aead_dir.join(ykhsm_core::store::relative_path(&kh, id));
    fs::copy(path("cccccccccccb"), path("ccccccdbjrgf")).unwrap();
    let _d = env.start();
    let o = ykadmin(&env, &["aeads", "check"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .starts_with("key handle 1: 2 AEADs, 1 good, 1 bad\n"),
        "{}",
        o.stdout
    );
    let line = o
        .stdout
        .lines()
        .find(|l| l.contains("BAD"))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!("  BAD {}:", path("ccccccdbjrgf").display()))
            && line.contains("public id ccccccdbjrgf")
            && line.contains("nonce"),
        "{}",
        o.stdout
    );
    // With random-nonce stores switched on, it is read as it always was.
    env.config("accept_random_nonce = true");
    let o = ykadmin(&env, &["aeads", "check"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
}

/// Issue 12, item 3: ykadmin reads the daemon's configuration and refuses
/// it, as the daemon does, when group or others may write it or it is not
/// root's.
#[test]
fn ykadmin_refuses_a_config_file_writable_by_others_or_not_roots() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let (env, _key, _d) = common::alice();
    let config = env.config_path.display().to_string();
    fs::set_permissions(&env.config_path, fs::Permissions::from_mode(0o664)).unwrap();
    let o = ykadmin(&env, &["status"]);
    assert_eq!(o.code, 3, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains(&format!("{config} has mode 0664")),
        "{}",
        o.stderr
    );
    fs::set_permissions(&env.config_path, fs::Permissions::from_mode(0o644)).unwrap();
    chown(&env.config_path, Some(65534), None).unwrap();
    let o = ykadmin(&env, &["status"]);
    assert_eq!(o.code, 3, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .contains(&format!("{config} is owned by uid 65534")),
        "{}",
        o.stderr
    );
    chown(&env.config_path, Some(0), None).unwrap();
    assert_eq!(ykadmin(&env, &["status"]).code, 0);
}

// Issue 13, monitoring: `status` exits by its health, `--json` prints one
// document from serde types with numbers as numbers and nothing else, and
// `metrics` writes node_exporter's textfile format atomically.

/// The one JSON document `o` printed on standard output: anything else
/// there (a text line before it, a second document) fails the test.
fn json_of(o: &common::Out) -> serde_json::Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "standard output is not one JSON document ({e}):\n{}\nstderr:\n{}",
            o.stdout, o.stderr
        )
    })
}

#[test]
fn status_exits_1_and_says_error_when_a_check_fails() {
    let (env, _key, _d) = common::alice();
    let o = ykadmin(&env, &["status"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    // The store goes away (an unmounted volume, a bad rsync).
    fs::rename(&env.aead_dir, env.dir.path().join("aeads.moved")).unwrap();
    let o = ykadmin(&env, &["status"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("aead_dir"))
        .unwrap_or_else(|| panic!("no aead_dir line:\n{}", o.stdout));
    assert!(line.contains("ERROR"), "{line}");
    let o = ykadmin(&env, &["--json", "status"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    let v = json_of(&o);
    assert_eq!(v["healthy"], false, "{v}");
    let checks = v["checks"].as_array().unwrap();
    let aead_dir = checks.iter().find(|c| c["part"] == "aead_dir").unwrap();
    assert_eq!(aead_dir["health"], "error", "{v}");
    let key_handle = checks.iter().find(|c| c["part"] == "key_handle").unwrap();
    assert_eq!(
        (&key_handle["key_handle"], &key_handle["health"]),
        (&serde_json::json!("1"), &serde_json::json!("ok")),
        "{v}"
    );
}

#[test]
fn json_status_is_one_document_with_numbers_as_numbers() {
    let (env, mut key, d) = common::alice();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let o = ykadmin(&env, &["--json", "status"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let v = json_of(&o);
    assert_eq!(v["healthy"], true, "{v}");
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    assert_eq!(v["answers"]["OK"], 1, "{v}");
    assert_eq!(v["answers"]["REPLAYED_OTP"], 0, "{v}");
    assert_eq!(v["database"]["keys"], 1, "{v}");
    assert!(v["database"]["size_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["database"]["last_commit"].is_u64(), "{v}");
    assert_eq!(v["authfile"]["users"], 1, "{v}");
    assert_eq!(v["authfile"]["lines_failing_closed"], 0, "{v}");
    for field in ["dropped_daemon_lines", "dropped_unprivileged_lines"] {
        assert!(v["log"][field].is_u64(), "{field}: {v}");
    }
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["health"], "ok", "{c}");
    }
}

#[test]
fn json_output_of_every_subcommand_is_one_document() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let _d = env.start();
    let path = |name: &str| env.dir.path().join(name).display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let o = ykadmin(&env, &all);
        let v = json_of(&o);
        (o.code, v)
    };
    let (code, v) = run(&["pubid-from-serial", "2198612"]);
    assert_eq!((code, &v["serial"]), (0, &serde_json::json!(2_198_612)));
    let otp = env.otp(&mut key);
    let (code, v) = run(&["decrypt", &otp]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["public_id"], "ccccccdbjrgf");
    let (code, v) = run(&["verify", "alice", &otp]);
    assert_eq!((code, &v["status"]), (0, &serde_json::json!("OK")));
    // Enroll by OTP: nothing but the document, the counters as numbers.
    let (code, v) = run(&["enroll", "bob", &env.otp(&mut key)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["public_id"], "ccccccdbjrgf", "{v}");
    assert_eq!(v["verified"]["counter"], 1, "{v}");
    assert!(v["verified"]["session_use"].is_u64(), "{v}");
    let (code, v) = run(&["enroll", "carol", "cccccccccccb"]);
    assert_eq!((code, &v["changed"]), (0, &serde_json::json!(true)), "{v}");
    let (code, v) = run(&["revoke", "carol", "cccccccccccb"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["removed"], serde_json::json!(["cccccccccccb"]), "{v}");
    let (code, v) = run(&["list"]);
    assert_eq!(code, 0, "{v}");
    let alice = v
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .unwrap();
    assert_eq!(alice["keys"][0]["counter"], 1, "{v}");
    assert!(alice["keys"][0]["last_used"].is_u64(), "{v}");
    // Counters: export (its own format), then merge, import-ykval, reset.
    let export = path("counters.txt");
    assert_eq!(ykadmin(&env, &["counters", "export", &export]).code, 0);
    let (code, v) = run(&["counters", "merge", &export]);
    assert_eq!((code, &v["records"]), (0, &serde_json::json!(1)), "{v}");
    let ykval = path("ykval.csv");
    fs::write(
        &ykval,
        "1,1359470658,1359470700,cccccccccccd,5,3,32729,4,,x\n\
         0,1359470658,1359470658,cccccccccccf,7,1,1,1,,stolen\n",
    )
    .unwrap();
    let (code, v) = run(&["counters", "import-ykval", &ykval]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (&v["keys"], &v["raised"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "{v}"
    );
    assert_eq!(v["inactive"], serde_json::json!(["cccccccccccf"]), "{v}");
    let (code, v) = run(&["counters", "reset", "ccccccdbjrgf"]);
    assert_eq!((code, &v["generation"]), (0, &serde_json::json!(1)), "{v}");
    // The store.
    let (code, v) = run(&["aeads", "check"]);
    assert_eq!((code, &v[0]["aeads"]), (0, &serde_json::json!(1)), "{v}");
    let (code, v) = run(&["aeads", "digest"]);
    assert_eq!((code, &v["files"]), (0, &serde_json::json!(1)), "{v}");
    let (code, v) = run(&["aeads", "digest", "--per-key"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["ccccccdbjrgf"].is_string(), "{v}");
    // New keys and imported ones.
    let programming = path("program.txt");
    let (code, v) = run(&["generate", "--prefix", "vvdd", "--out", &programming]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["public_ids"].as_array().unwrap().len(), 1, "{v}");
    for l in fs::read_to_string(&programming)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ykman"))
    {
        let w: Vec<&str> = l.split(' ').collect();
        env.secret(w[w.len() - 1]);
        env.secret(w[w.iter().position(|x| *x == "--private-id").unwrap() + 1]);
    }
    let (line, _yk) = env.ykksm_key("cccccccccccg");
    let keys = path("keys.txt");
    fs::write(&keys, format!("{line}\n")).unwrap();
    let (code, v) = run(&["import-ykksm", &keys]);
    assert_eq!((code, &v["imported"]), (0, &serde_json::json!(1)), "{v}");
    let (code, v) = run(&["status"]);
    assert_eq!((code, &v["healthy"]), (0, &serde_json::json!(true)), "{v}");
}

#[test]
fn json_aeads_check_puts_a_key_handle_without_a_directory_in_the_document() {
    let (env, _key, _d) = common::alice();
    // Key handle 2 has no directory in the store (yet).
    env.config("key_handles = [\"1\", \"2\"]");
    let o = ykadmin(&env, &["--json", "aeads", "check"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let v = json_of(&o);
    assert_eq!(v[0]["good"], 1, "{v}");
    assert_eq!(
        (&v[1]["key_handle"], &v[1]["directory"], &v[1]["aeads"]),
        (
            &serde_json::json!("2"),
            &serde_json::json!("missing"),
            &serde_json::json!(0)
        ),
        "{v}"
    );
}

#[test]
fn json_is_refused_where_the_output_has_a_format_of_its_own() {
    let (env, _key, _d) = common::alice();
    for args in [
        &["--json", "man"][..],
        &["--json", "completions", "bash"],
        &["--json", "counters", "export"],
        &["--json", "metrics"],
    ] {
        let o = ykadmin(&env, args);
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (2, ""),
            "{args:?}: {}",
            o.stderr
        );
        assert!(o.stderr.contains("--json"), "{args:?}: {}", o.stderr);
    }
}

/// A sample of the exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Whether `s` is a metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), or with
/// `colon` false a label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
fn is_name(s: &str, colon: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
    };
    let mut chars = s.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// Parses Prometheus's text exposition format as node_exporter's textfile
/// collector reads it, strictly: every line a `# HELP`, a `# TYPE` or a
/// sample; every sample after its family's TYPE line, the family's samples
/// together; names and label names well formed; label values quoted with
/// their escapes; a value, no timestamp (the collector refuses them); no
/// sample twice; the last line ends with a newline.
fn parse_exposition(text: &str) -> Vec<Sample> {
    use std::collections::{HashMap, HashSet};
    assert!(text.ends_with('\n'), "no final newline:\n{text}");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen = HashSet::new();
    let mut samples = Vec::new();
    let mut enter = |family: &str, current: &mut Option<String>| {
        if current.as_deref() != Some(family) {
            assert!(finished.insert(family.to_owned()), "{family}: lines apart");
            *current = Some(family.to_owned());
        }
    };
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kw, name, tail) = (words.next(), words.next(), words.next());
            let name = name.unwrap_or_else(|| panic!("{at}"));
            assert!(is_name(name, true), "{at}");
            enter(name, &mut current);
            match kw {
                Some("HELP") => {
                    let help = tail.unwrap_or_else(|| panic!("{at}"));
                    assert!(!help.is_empty() && helps.insert(name.to_owned()), "{at}");
                    assert!(!types.contains_key(name), "{at}: HELP after TYPE");
                }
                Some("TYPE") => {
                    let t = tail.unwrap_or_else(|| panic!("{at}"));
                    assert!(
                        ["counter", "gauge", "untyped"].contains(&t),
                        "{at}: type {t}"
                    );
                    assert!(
                        types.insert(name.to_owned(), t.to_owned()).is_none(),
                        "{at}"
                    );
                }
                _ => panic!("{at}: a comment that is neither HELP nor TYPE"),
            }
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{at}"));
        let name = &line[..end];
        assert!(is_name(name, true), "{at}");
        assert!(types.contains_key(name), "{at}: no TYPE line before it");
        enter(name, &mut current);
        let (labels, rest) = match line[end..].strip_prefix('{') {
            Some(body) => parse_labels(body, &at),
            None => (Vec::new(), &line[end..]),
        };
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: no space before the value"));
        assert!(!value.contains(' '), "{at}: a timestamp or more");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("{at}: value")),
        };
        if types[name] == "counter" {
            assert!(name.ends_with("_total") && value >= 0.0, "{at}");
        }
        let mut key = labels.clone();
        key.sort();
        assert!(seen.insert((name.to_owned(), key)), "{at}: twice");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The labels of a sample from just after its `{`: the pairs, and what
/// follows the `}`.
fn parse_labels<'a>(body: &'a str, at: &str) -> (Vec<(String, String)>, &'a str) {
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut rest = body;
    if let Some(after) = rest.strip_prefix('}') {
        return (labels, after);
    }
    loop {
        let eq = rest.find('=').unwrap_or_else(|| panic!("{at}"));
        let label = &rest[..eq];
        assert!(
            is_name(label, false) && !label.starts_with("__"),
            "{at}: label {label:?}"
        );
        assert!(
            !labels.iter().any(|(l, _)| l == label),
            "{at}: {label} twice"
        );
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("{at}: unquoted value"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            match chars.next().unwrap_or_else(|| panic!("{at}: open quote")) {
                (i, '"') => break i,
                (_, '\\') => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => panic!("{at}: bad escape"),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((label.to_owned(), value));
        rest = &rest[close + 1..];
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        rest = rest
            .strip_prefix(',')
            .unwrap_or_else(|| panic!("{at}: no comma between labels"));
    }
}

/// The value of the sample `name` with exactly `labels`, if there is one.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(l, w)| l == k && w == v))
        })
        .map(|s| s.value)
}

/// A node_exporter textfile directory in the `Env`, and the file
/// `ykadmin metrics --out` writes there.
fn textfile(env: &Env) -> std::path::PathBuf {
    let dir = env.dir.path().join("node-exporter");
    if !dir.exists() {
        fs::create_dir(&dir).unwrap();
    }
    dir.join("ykhsm.prom")
}

/// Runs `ykadmin metrics --out FILE` and parses what it wrote.
fn metrics(env: &Env) -> (common::Out, Vec<Sample>) {
    let out = textfile(env);
    let o = ykadmin(env, &["metrics", "--out", out.to_str().unwrap()]);
    let text = fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}{}", out.display(), o.stdout, o.stderr));
    let samples = parse_exposition(&text);
    (o, samples)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn metrics_file_is_replaced_atomically_mode_0644_leaving_no_temporary_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (env, _key, _d) = common::alice();
    let out = textfile(&env);
    // Under a umask that would make it private: node_exporter runs as
    // another user and must read it.
    let run = || {
        Command::new("sh")
            .arg("-c")
            .arg("umask 077; exec \"$0\" --config \"$1\" metrics --out \"$2\"")
            .arg(ykadmin_bin())
            .arg(&env.config_path)
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    assert!(first.stdout.is_empty(), "{first:?}");
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    let old_text = fs::read_to_string(&out).unwrap();
    // node_exporter reading the file while it is replaced reads it whole.
    let mut held = File::open(&out).unwrap();
    let second = run();
    assert!(second.status.success(), "{second:?}");
    let replaced = fs::metadata(&out).unwrap();
    assert_ne!(meta.ino(), replaced.ino(), "written in place");
    assert_eq!(replaced.permissions().mode() & 0o7777, 0o644);
    let mut read = String::new();
    held.read_to_string(&mut read).unwrap();
    assert_eq!(read, old_text);
    let names: Vec<String> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ykhsm.prom"]);
    parse_exposition(&fs::read_to_string(&out).unwrap());
}

#[test]
fn metrics_parse_as_the_exposition_format_with_the_daemons_numbers() {
    let (env, _key, _d) = common::alice();
    let (o, samples) = metrics(&env);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(sample(&samples, "ykhsm_up", &[]), Some(1.0));
    assert!(sample(&samples, "ykhsm_uptime_seconds", &[]).is_some());
    for word in [
        "OK",
        "BAD_OTP",
        "REPLAYED_OTP",
        "NO_SUCH_KEY",
        "NOT_AUTHORIZED",
        "NO_KEYS_FOR_USER",
        "BACKEND_ERROR",
        "DENIED",
        "UNKNOWN_USER",
    ] {
        let v = sample(&samples, "ykhsm_answers_total", &[("status", word)]);
        assert_eq!(v, Some(0.0), "{word}: {samples:?}");
    }
    let healthy = |labels: &[(&str, &str)]| sample(&samples, "ykhsm_healthy", labels);
    assert_eq!(
        healthy(&[("part", "key_handle"), ("key_handle", "1")]),
        Some(1.0)
    );
    for part in ["aead_dir", "authfile", "database"] {
        assert_eq!(healthy(&[("part", part)]), Some(1.0), "{part}");
    }
    assert_eq!(sample(&samples, "ykhsm_authfile_users", &[]), Some(1.0));
    for source in ["daemon", "unprivileged"] {
        let v = sample(
            &samples,
            "ykhsm_log_dropped_lines_total",
            &[("source", source)],
        );
        assert_eq!(v, Some(0.0), "{source}");
    }
    // The database: the file and its write-ahead log.
    let size = |suffix: &str| {
        let mut p = env.database().into_os_string();
        p.push(suffix);
        fs::metadata(p).map_or(0, |m| m.len())
    };
    assert_eq!(
        sample(&samples, "ykhsm_database_size_bytes", &[]),
        Some((size("") + size("-wal")) as f64)
    );
    // Nothing committed since the daemon started: no time to give.
    assert_eq!(
        sample(
            &samples,
            "ykhsm_database_last_commit_timestamp_seconds",
            &[]
        ),
        None
    );
}

#[test]
fn metrics_ok_count_goes_up_by_one_after_a_login_and_the_commit_time_is_recent() {
    let (env, mut key, d) = common::alice();
    let ok = |s: &[Sample]| sample(s, "ykhsm_answers_total", &[("status", "OK")]).unwrap();
    let (_, before) = metrics(&env);
    let started = unix_now().floor();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let ended = unix_now().ceil();
    let (o, after) = metrics(&env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(ok(&after), ok(&before) + 1.0);
    let commit = sample(&after, "ykhsm_database_last_commit_timestamp_seconds", &[])
        .unwrap_or_else(|| panic!("no commit time: {after:?}"));
    assert!(
        (started..=ended).contains(&commit),
        "commit at {commit}, login between {started} and {ended}"
    );
    assert_eq!(sample(&after, "ykhsm_database_keys", &[]), Some(1.0));
}

#[test]
fn metrics_say_ykhsm_up_0_and_exit_3_when_the_daemon_is_stopped() {
    let (env, _key, mut d) = common::alice();
    let (o, samples) = metrics(&env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(sample(&samples, "ykhsm_up", &[]), Some(1.0));
    d.terminate();
    let (o, samples) = metrics(&env);
    assert_eq!(o.code, 3, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("is it running?"), "{}", o.stderr);
    assert_eq!(sample(&samples, "ykhsm_up", &[]), Some(0.0));
    assert_eq!(
        sample(&samples, "ykhsm_answers_total", &[("status", "OK")]),
        None
    );
}

#[test]
fn metrics_into_a_missing_directory_fail_naming_it() {
    let (env, _key, _d) = common::alice();
    let out = env.dir.path().join("no-such-dir/ykhsm.prom");
    let o = ykadmin(&env, &["metrics", "--out", out.to_str().unwrap()]);
    assert_eq!(o.code, 3, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("no-such-dir"), "{}", o.stderr);
}

#[test]
fn metrics_without_out_go_to_standard_output() {
    let (env, _key, _d) = common::alice();
    let o = ykadmin(&env, &["metrics"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let samples = parse_exposition(&o.stdout);
    assert_eq!(sample(&samples, "ykhsm_up", &[]), Some(1.0));
}

// `ykadmin revoke` and the system's user names. The daemon counts a line
// written under an alias of a user (`ALICE`, `alice@corp`: sssd's
// case-insensitive names and default domain, here the test NSS module under
// nss_wrapper) as the user's. Before the fix, revoke matched only the name as
// typed: `ykadmin revoke alice <id>` answered "does not have the key" for a
// key on an `ALICE:` line, and `ykadmin revoke alice` left it there, so a
// "revoked" key kept logging alice in.

#[test]
fn revoke_takes_the_key_off_every_line_the_daemon_counts_for_the_user() {
    let env = Env::new();
    let nss = env.with_nss(&[("alice", 2001), ("bob", 2002)]);
    let mut first = env.key("ccccccdbjrgf");
    let mut second = env.key("cccccccccccd");
    env.set_authfile("alice:ccccccdbjrgf\nALICE:cccccccccccd\nbob:cccccccccccb\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut second)), Status::Ok);

    // One key, revoked under the account's name, taken off the alias line.
    let o = ykadmin(&env, &["revoke", "alice", "cccccccccccd"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        fs::read_to_string(&env.authfile).unwrap(),
        "alice:ccccccdbjrgf\nbob:cccccccccccb\n"
    );
    assert_eq!(
        d.verify("alice", &env.otp(&mut second)),
        Status::NotAuthorized
    );
    assert_eq!(d.verify("alice", &env.otp(&mut first)), Status::Ok);

    // Every key, revoked under an alias: each of alice's lines loses its
    // keys, the first one stays (empty, as written), bob's line is kept.
    env.set_authfile("alice:ccccccdbjrgf\nalice@corp:cccccccccccd\nbob:cccccccccccb\n");
    assert_eq!(d.verify("alice", &env.otp(&mut second)), Status::Ok);
    let o = ykadmin(&env, &["revoke", "Alice"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        fs::read_to_string(&env.authfile).unwrap(),
        "alice:\nbob:cccccccccccb\n"
    );
    for key in [&mut first, &mut second] {
        assert_eq!(d.verify("alice", &env.otp(key)), Status::NotAuthorized);
    }

    // The system's user database down: whose a line is cannot be told, so
    // nothing is edited and the error says why.
    let before = "alice:ccccccdbjrgf\nALICE:cccccccccccd\n";
    env.set_authfile(before);
    nss.set_failing(true);
    let o = ykadmin(&env, &["revoke", "alice", "ccccccdbjrgf"]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("user database"), "{}", o.stderr);
    assert_eq!(fs::read_to_string(&env.authfile).unwrap(), before);
}
