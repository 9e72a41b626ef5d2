//! The AEAD store and the configuration file as the real daemon trusts
//! them (issue 12, items 2 and 3): an AEAD is bound to the public id it is
//! filed under, and the configuration, the store's directories and its
//! AEAD files must be root's and writable by nobody else — refused at
//! start, by `--check`, and at every login, naming the path.

use ykhsm_testkit as common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Env, random, wait_for};
use ykhsm_core::keyhandle::{KeyHandle, KeyHandleName};
use ykhsm_core::otp::{PublicId, YubiKeySecrets};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_core::store::{AeadStore, WriteMode, relative_path};
use ykhsm_core::{KeyHandleKey, Nonce, YubiKeyAead, modhex};
use ykhsm_proto::Status;

/// The uid of `nobody`: "not root's".
const NOBODY: u32 = 65534;

/// Where pyhsm's layout puts `id`'s AEAD under key handle 1.
fn aead_path(env: &Env, id: &str) -> PathBuf {
    let kh: KeyHandleName = "1".parse().unwrap();
    env.aead_dir.join(relative_path(&kh, id))
}

/// `otp`'s token behind another public id.
fn with_public_id(public_id: &str, otp: &str) -> String {
    format!("{public_id}{}", &otp[otp.len() - 32..])
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A new software YubiKey whose v1 AEAD (key handle 1) carries `nonce`, as
/// pyhsm's `yhsm-import-keys --random-nonce` writes them (its soft HSM
/// writes a nonce of zeros).
fn key_with_nonce(env: &Env, public_id: &str, nonce: Nonce) -> SoftYubiKey {
    let secrets = YubiKeySecrets::new(random(), random());
    for s in [
        hex::encode(secrets.key()),
        hex::encode(secrets.uid()),
        modhex::encode(secrets.key()),
        modhex::encode(secrets.uid()),
    ] {
        env.secret(&s);
    }
    let id = PublicId::parse(public_id).unwrap();
    file_with_nonce(env, &id, &secrets, nonce);
    SoftYubiKey::new(id, secrets)
}

/// Writes `secrets` sealed with key handle 1 and `nonce` as `id`'s v1 file.
fn file_with_nonce(env: &Env, id: &PublicId, secrets: &YubiKeySecrets, nonce: Nonce) {
    let key = KeyHandleKey::new(hex::decode(common::KH1_KEY).unwrap()).unwrap();
    let aead = YubiKeyAead::seal(&key, KeyHandle(1), &nonce, secrets).unwrap();
    env.secret(&hex::encode(aead.0));
    let kh: KeyHandleName = "1".parse().unwrap();
    AeadStore::new(&env.aead_dir, vec![kh.clone()])
        .write_v1(&kh, id, &nonce, &aead, WriteMode::Replace)
        .unwrap();
}

/// Starts the daemon and expects it to refuse: exit 1 before it answers,
/// with a log line containing `needle`.
fn refused_at_start(env: &Env, needle: &str) {
    let mut d = env.spawn();
    wait_for("ykhsmd to exit", Duration::from_secs(20), || {
        d.child.try_wait().unwrap().is_some()
    });
    let code = d.child.try_wait().unwrap().and_then(|s| s.code());
    assert_eq!(code, Some(1), "ykhsmd was expected to refuse to start");
    env.wait_log(needle);
}

/// `ykhsmd --check` fails, naming `needle`.
fn refused_by_check(env: &Env, needle: &str) {
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(needle),
        "--check does not name {needle}: {out}"
    );
}

/// Alice's key `ccccccdbjrgf` and bob's `cccccccccccb`, both in the store
/// under key handle 1 (v1 files whose nonce is their public id).
fn alice_and_bob(env: &Env) -> (SoftYubiKey, SoftYubiKey) {
    let alice = env.key("ccccccdbjrgf");
    let bob = env.key("cccccccccccb");
    env.set_authfile("alice:ccccccdbjrgf\nbob:cccccccccccb\n");
    (alice, bob)
}

// ---- Item 2: an AEAD is bound to the public id it is filed under ----

/// Issue 12, item 2: bob's v1 file copied over alice's, alice's public id
/// in front of bob's token. Before: `OK` for alice, and the same token
/// still `OK` for bob.
#[test]
fn v1_aead_filed_under_another_public_id_is_backend_error_naming_the_file() {
    let env = Env::new();
    let (_alice, mut bob) = alice_and_bob(&env);
    let alices_file = aead_path(&env, "ccccccdbjrgf");
    fs::copy(aead_path(&env, "cccccccccccb"), &alices_file).unwrap();
    let d = env.start();
    let bobs_otp = env.otp(&mut bob);
    let forged = with_public_id("ccccccdbjrgf", &bobs_otp);
    env.remember_otp(&forged);
    assert_eq!(d.verify("alice", &forged), Status::BackendError);
    wait_for(
        "a log line naming the file, its public id and the nonce",
        Duration::from_secs(10),
        || {
            env.logs().iter().any(|l| {
                l.contains(&alices_file.display().to_string())
                    && l.contains("public id ccccccdbjrgf")
                    && l.contains("nonce")
            })
        },
    );
    // Nothing was consumed: bob's OTP is his.
    assert_eq!(d.verify("bob", &bobs_otp), Status::Ok);
}

/// `accept_random_nonce = true`: stores made with pyhsm's `--random-nonce`
/// (here a nonce of zeros, as its soft HSM writes) are read, and so is a
/// mis-filed file, as before; the daemon says at start what that costs.
#[test]
fn with_accept_random_nonce_any_v1_nonce_is_read_as_before_and_the_cost_is_logged() {
    let env = Env::new();
    let (_alice, mut bob) = alice_and_bob(&env);
    let mut carol = key_with_nonce(&env, "cccccccccccd", Nonce([0; 6]));
    env.set_authfile("alice:ccccccdbjrgf\nbob:cccccccccccb\ncarol:cccccccccccd\n");
    fs::copy(
        aead_path(&env, "cccccccccccb"),
        aead_path(&env, "ccccccdbjrgf"),
    )
    .unwrap();
    // Without the switch: refused.
    let d = env.start();
    assert_eq!(
        d.verify("carol", &env.otp(&mut carol)),
        Status::BackendError
    );
    drop(d);
    env.config("accept_random_nonce = true");
    let d = env.start();
    assert_eq!(d.verify("carol", &env.otp(&mut carol)), Status::Ok);
    let bobs_otp = env.otp(&mut bob);
    let forged = with_public_id("ccccccdbjrgf", &bobs_otp);
    env.remember_otp(&forged);
    assert_eq!(d.verify("alice", &forged), Status::Ok);
    assert_eq!(d.verify("bob", &bobs_otp), Status::Ok);
    // One warning line at start (on stderr, and the same line to syslog).
    env.wait_log("warning: accept_random_nonce = true");
    let warnings: Vec<String> = env
        .logs()
        .into_iter()
        .filter(|l| l.starts_with("ykhsmd: warning: accept_random_nonce"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("not bound") && warnings[0].contains("another public id"),
        "{}",
        warnings[0]
    );
}

/// The way out of `accept_random_nonce` (docs/migrating.md): a key whose
/// file came from `--random-nonce` is refused, `import-ykksm` names it and
/// `--force` rewrites it bound to its public id, after which it logs in.
#[test]
fn import_ykksm_force_rebinds_a_random_nonce_file_to_its_public_id() {
    let env = Env::new();
    let (line, mut key) = env.ykksm_key("ccccccdbjrgf");
    file_with_nonce(&env, key.public_id(), key.secrets(), Nonce([0; 6]));
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    let export = env.dir.path().join("keys.txt");
    fs::write(&export, format!("# ykksm 1\n{line}\n")).unwrap();
    let o = common::ykadmin(&env, &["import-ykksm", export.to_str().unwrap()]);
    assert_eq!(
        o.stdout, "imported 0, skipped 0, failed 1\n",
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("nonce") && o.stderr.contains("--force"),
        "{}",
        o.stderr
    );
    let o = common::ykadmin(&env, &["import-ykksm", "--force", export.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

/// pyhsm's importer names a short id's file after the id padded with `c`
/// to 12 characters, and writes the short id's own bytes (zero-padded) as
/// the nonce: that file is bound to the short id and still verifies.
#[test]
fn pyhsm_v1_file_of_a_short_public_id_at_the_padded_path_still_verifies() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ykhsm-core/tests/data");
    let hsm: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(format!("{dir}/vectors-hsm.json")).unwrap())
            .unwrap();
    let otps: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(format!("{dir}/vectors.json")).unwrap()).unwrap();
    let q1 = hsm["extra_cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "Q1-short-public-id-import")
        .unwrap();
    let otp = otps["otp"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["public_id"] == "ftftftcccc")
        .unwrap()["otp"]
        .as_str()
        .unwrap();
    let env = Env::new();
    env.set_keys_json(&hsm["keys_json"].to_string());
    let path = env.aead_dir.join(q1["rel_paths"][0].as_str().unwrap());
    assert!(path.ends_with("ccftftftcccc"), "{}", path.display());
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(
        &path,
        hex::decode(q1["v1_file_hex"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    env.set_authfile("alice:ftftftcccc\n");
    env.remember_otp(otp);
    let d = env.start();
    assert_eq!(d.verify("alice", otp), Status::Ok);
}

// ---- Item 3: the configuration and the store must be root's ----

/// Issue 12, item 3: the configuration file writable by group or others,
/// or owned by another user, is refused by the daemon and by `--check`,
/// naming it. Before: read whoever owned it.
#[test]
fn config_file_writable_by_others_or_not_roots_is_refused_at_start_and_by_check() {
    let env = Env::new();
    let config = env.config_path.display().to_string();
    for mode in [0o664, 0o646] {
        set_mode(&env.config_path, mode);
        refused_at_start(&env, &config);
        refused_by_check(&env, &config);
    }
    set_mode(&env.config_path, 0o644);
    chown(&env.config_path, Some(NOBODY), None).unwrap();
    refused_at_start(&env, &format!("{config} is owned by uid {NOBODY}"));
    refused_by_check(&env, &format!("{config} is owned by uid {NOBODY}"));
    chown(&env.config_path, Some(0), None).unwrap();
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 0, "{out}");
}

/// The store's root, a key handle's directory, a directory of the id's
/// path and the AEAD file: each, when writable by group or others or owned
/// by another user, stops the daemon from starting and fails `--check`,
/// naming it.
#[test]
fn store_directory_or_aead_file_writable_by_others_or_not_roots_is_refused_at_start_and_by_check() {
    let env = Env::new();
    let _key = env.key("ccccccdbjrgf");
    let file = aead_path(&env, "ccccccdbjrgf");
    for target in [
        env.aead_dir.clone(),
        env.aead_dir.join("1"),
        env.aead_dir.join("1/cc/cc"),
        file,
    ] {
        let named = target.display().to_string();
        let mode = mode_of(&target);
        for bad in [mode | 0o020, mode | 0o002] {
            set_mode(&target, bad);
            refused_at_start(&env, &format!("{named} has mode {bad:04o}"));
            refused_by_check(&env, &format!("{named} has mode {bad:04o}"));
        }
        set_mode(&target, mode);
        chown(&target, Some(NOBODY), None).unwrap();
        refused_at_start(&env, &format!("{named} is owned by uid {NOBODY}"));
        refused_by_check(&env, &format!("{named} is owned by uid {NOBODY}"));
        chown(&target, Some(0), None).unwrap();
    }
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 0, "{out}");
}

/// A symbolic link anywhere from the store's root down (the root itself, a
/// key handle's directory, a directory of the id's path, the AEAD file) is
/// not followed: refused at start and by `--check`, naming the link.
#[test]
fn symlink_in_the_store_is_refused_at_start_and_by_check() {
    let env = Env::new();
    let _key = env.key("ccccccdbjrgf");
    let file = aead_path(&env, "ccccccdbjrgf");
    let elsewhere = env.dir.path().join("elsewhere");
    for target in [
        env.aead_dir.clone(),
        env.aead_dir.join("1"),
        env.aead_dir.join("1/cc/cc"),
        file,
    ] {
        fs::rename(&target, &elsewhere).unwrap();
        symlink(&elsewhere, &target).unwrap();
        let named = format!("{} is a symbolic link", target.display());
        refused_at_start(&env, &named);
        refused_by_check(&env, &named);
        fs::remove_file(&target).unwrap();
        fs::rename(&elsewhere, &target).unwrap();
    }
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 0, "{out}");
}

/// The same changes made while the daemon runs: the next login whose AEAD
/// path passes through the changed directory or file is `BACKEND_ERROR`,
/// logged naming the path; put right, logins work again.
#[test]
fn store_made_writable_by_others_or_not_roots_while_running_is_backend_error_naming_the_path() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let file = aead_path(&env, "ccccccdbjrgf");
    for target in [
        env.aead_dir.clone(),
        env.aead_dir.join("1"),
        env.aead_dir.join("1/cc/cc/cc/db"),
        file,
    ] {
        let named = target.display().to_string();
        let mode = mode_of(&target);
        for (change, needle) in [
            (
                mode | 0o020,
                format!("{named} has mode {:04o}", mode | 0o020),
            ),
            (
                mode | 0o002,
                format!("{named} has mode {:04o}", mode | 0o002),
            ),
        ] {
            set_mode(&target, change);
            assert_eq!(
                d.verify("alice", &env.otp(&mut key)),
                Status::BackendError,
                "{needle}"
            );
            env.wait_log(&needle);
            set_mode(&target, mode);
            assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
        }
        chown(&target, Some(NOBODY), None).unwrap();
        assert_eq!(
            d.verify("alice", &env.otp(&mut key)),
            Status::BackendError,
            "{named} owned by nobody"
        );
        env.wait_log(&format!("{named} is owned by uid {NOBODY}"));
        chown(&target, Some(0), None).unwrap();
        assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    }
}

/// A directory or the AEAD file swapped for a symbolic link (to a copy
/// that is itself root's and in order) while the daemon runs: not
/// followed, `BACKEND_ERROR` naming the link.
#[test]
fn store_symlinked_while_running_is_backend_error_naming_the_link() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let elsewhere = env.dir.path().join("elsewhere");
    for target in [
        env.aead_dir.clone(),
        env.aead_dir.join("1"),
        env.aead_dir.join("1/cc/cc/cc/db/jr"),
        aead_path(&env, "ccccccdbjrgf"),
    ] {
        fs::rename(&target, &elsewhere).unwrap();
        symlink(&elsewhere, &target).unwrap();
        assert_eq!(
            d.verify("alice", &env.otp(&mut key)),
            Status::BackendError,
            "{}",
            target.display()
        );
        env.wait_log(&format!("{} is a symbolic link", target.display()));
        fs::remove_file(&target).unwrap();
        fs::rename(&elsewhere, &target).unwrap();
        assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    }
}
