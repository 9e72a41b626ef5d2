//! Counters belong to a key's public id, across key handles, AEAD files,
//! hosts and database versions; only an explicit, logged reset starts a
//! key afresh, and a reset travels to other hosts without letting an AEAD
//! that still holds the retired secret accept anything. The counter
//! database is root's alone.
//!
//! Against the real daemon and the real `ykadmin`.

use ykhsm_testkit as common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Env, KH1_KEY, ykadmin, ykadmin_with_input};
use ykhsm_core::softkey::SoftYubiKey;
use ykhsm_proto::Status;

/// A second key-handle key for keys.json (AES-128).
const KH2_KEY: &str = "000102030405060708090a0b0c0d0e0f";

/// An installation whose keys.json has key handles 1 and 2, configured in
/// this `order`, alice enrolled with `ccccccdbjrgf`, and the key imported
/// with `ykadmin import-ykksm` under both key handles; the daemon running.
fn two_key_handles(order: &str) -> (Env, SoftYubiKey, common::Daemon) {
    let env = Env::new();
    env.set_keys_json(&format!(r#"{{"1": "{KH1_KEY}", "2": "{KH2_KEY}"}}"#));
    env.secret(KH2_KEY);
    env.config(&format!("key_handles = {order}"));
    env.set_authfile("alice:ccccccdbjrgf\n");
    let (line, key) = env.ykksm_key("ccccccdbjrgf");
    let d = env.start();
    let o = ykadmin_with_input(&env, &["import-ykksm", "-"], &format!("{line}\n"));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("imported 2"), "{}", o.stdout);
    (env, key, d)
}

fn otp(env: &Env, key: &SoftYubiKey, counter: u16, session_use: u8) -> String {
    let otp = key
        .otp_with(counter, session_use)
        .to_typed_string()
        .to_string();
    env.remember_otp(&otp);
    otp
}

/// The issue's replay: an OTP accepted through key handle 1's AEAD was
/// accepted again once that AEAD moved away and key handle 2's was read.
#[test]
fn an_otp_accepted_under_one_key_handle_is_a_replay_under_another() {
    let (env, key, d) = two_key_handles(r#"["1", "2"]"#);
    let five = otp(&env, &key, 5, 0);
    let six = otp(&env, &key, 6, 0);
    assert_eq!(d.verify("alice", &five), Status::Ok);
    assert_eq!(d.verify("alice", &six), Status::Ok);
    // Key handle 1's AEADs move away: the key is read under key handle 2.
    fs::rename(env.aead_dir.join("1"), env.dir.path().join("kh1-moved")).unwrap();
    assert_eq!(d.verify("alice", &five), Status::ReplayedOtp);
    assert_eq!(d.verify("alice", &six), Status::ReplayedOtp);
    assert_eq!(d.verify("alice", &otp(&env, &key, 7, 0)), Status::Ok);
}

/// YK-VAL's counters must cover the key whichever key handle its AEAD is
/// read under (they covered only the first).
#[test]
fn counters_import_ykval_covers_every_key_handle() {
    let (env, key, d) = two_key_handles(r#"["1", "2"]"#);
    let export = env.dir.path().join("ykval.csv");
    fs::write(
        &export,
        "1,1359470658,1359470700,ccccccdbjrgf,9,3,32729,4,aoincuhfuahs,alice\n",
    )
    .unwrap();
    let o = ykadmin(
        &env,
        &["counters", "import-ykval", export.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let accepted_by_yk_val = otp(&env, &key, 9, 3);
    fs::rename(env.aead_dir.join("1"), env.dir.path().join("kh1-moved")).unwrap();
    assert_eq!(d.verify("alice", &accepted_by_yk_val), Status::ReplayedOtp);
    assert_eq!(d.verify("alice", &otp(&env, &key, 9, 4)), Status::Ok);
}

/// Two bastions whose configurations list the key handles in another
/// order: a merge raises what the other host's logins read, and says
/// "raised" only when it did.
#[test]
fn merge_between_hosts_with_other_key_handle_orders_raises_what_logins_read() {
    let (one, key, d1) = two_key_handles(r#"["1", "2"]"#);
    let two = Env::new();
    two.set_keys_json(&format!(r#"{{"1": "{KH1_KEY}", "2": "{KH2_KEY}"}}"#));
    two.config(r#"key_handles = ["2", "1"]"#);
    two.set_authfile("alice:ccccccdbjrgf\n");
    copy_tree(&one.aead_dir, &two.aead_dir);
    let d2 = two.start();
    let used_on_one = otp(&one, &key, 5, 0);
    two.remember_otp(&used_on_one);
    assert_eq!(d1.verify("alice", &used_on_one), Status::Ok);
    let export = one.dir.path().join("one.counters");
    let o = ykadmin(&one, &["counters", "export", export.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = ykadmin(&two, &["counters", "merge", export.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("raised 1"), "{}", o.stdout);
    assert_eq!(d2.verify("alice", &used_on_one), Status::ReplayedOtp);
    let o = ykadmin(&two, &["counters", "merge", export.to_str().unwrap()]);
    assert!(o.stdout.contains("raised 0, unchanged 1"), "{}", o.stdout);
}

/// A reprogrammed YubiKey: `import-ykksm --force` of its new secret writes
/// the AEADs and starts the key afresh (logged, shown by `list`); the reset
/// travels to another bastion by export | merge, where the AEAD still
/// holding the old secret accepts nothing until the store is updated; and
/// merging back and forth never undoes the reset or lowers a counter.
#[test]
fn a_reset_is_explicit_logged_listed_and_travels_without_reopening_old_otps() {
    let one = Env::new();
    one.set_authfile("alice:ccccccdbjrgf\n");
    let (old_line, old) = one.ykksm_key("ccccccdbjrgf");
    let d1 = one.start();
    let o = ykadmin_with_input(&one, &["import-ykksm", "-"], &format!("{old_line}\n"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let two = Env::new();
    two.set_authfile("alice:ccccccdbjrgf\n");
    copy_tree(&one.aead_dir, &two.aead_dir);
    let d2 = two.start();
    assert_eq!(d1.verify("alice", &otp(&one, &old, 10, 0)), Status::Ok);
    // Made by the old key but never typed anywhere (or captured): counter 11.
    let old_unused = otp(&one, &old, 11, 0);
    two.remember_otp(&old_unused);
    sync(&one, &two);

    // The key is reprogrammed: a new secret, same public id, counter from 1.
    let (new_line, new) = one.ykksm_key("ccccccdbjrgf");
    let plain = ykadmin_with_input(&one, &["import-ykksm", "-"], &format!("{new_line}\n"));
    assert_eq!(
        plain.code, 1,
        "another secret is a conflict without --force"
    );
    let o = ykadmin_with_input(
        &one,
        &["import-ykksm", "--force", "-"],
        &format!("{new_line}\n"),
    );
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .contains("counters reset, generation 1, bound to 1 AEAD file"),
        "{}",
        o.stderr
    );
    one.wait_log("counters-reset pubid=ccccccdbjrgf generation=1 aeads=1");
    let list = ykadmin(&one, &["list"]);
    assert!(
        list.stdout
            .contains("never used since the reset  generation=1"),
        "{}",
        list.stdout
    );
    let new_first = otp(&one, &new, 1, 0);
    two.remember_otp(&new_first);
    assert_eq!(d1.verify("alice", &new_first), Status::Ok);
    assert_eq!(d1.verify("alice", &old_unused), Status::BadOtp);

    // Host two learns of the reset before its AEAD store is updated: the
    // old secret's AEAD there is not the one generation 1 is bound to.
    sync(&one, &two);
    assert_eq!(d2.verify("alice", &old_unused), Status::BackendError);
    two.wait_log("is not one the key's counter generation 1 was started for");
    // Its store updated (rsync), host two takes the new key, once.
    copy_tree(&one.aead_dir, &two.aead_dir);
    assert_eq!(d2.verify("alice", &new_first), Status::ReplayedOtp);
    let new_second = otp(&one, &new, 2, 0);
    two.remember_otp(&new_second);
    assert_eq!(d2.verify("alice", &new_second), Status::Ok);
    assert_eq!(d2.verify("alice", &old_unused), Status::BadOtp);

    // Back and forth again: nothing is undone or lowered on either host.
    sync(&two, &one);
    sync(&one, &two);
    assert_eq!(d1.verify("alice", &new_second), Status::ReplayedOtp);
    let list = ykadmin(&two, &["list"]);
    assert!(
        list.stdout
            .contains("ccccccdbjrgf  counter=2 session_use=0"),
        "{}",
        list.stdout
    );
    assert!(list.stdout.contains("generation=1"), "{}", list.stdout);
}

/// `ykadmin counters reset` needs an AEAD to bind to, and binds to what the
/// store holds now.
#[test]
fn counters_reset_binds_to_the_store_and_refuses_a_key_without_an_aead() {
    let (env, mut key, d) = common::alice();
    key.set_counters(100, 0);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let o = ykadmin(&env, &["counters", "reset", "cccccccccccb"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("no AEAD for cccccccccccb"),
        "{}",
        o.stderr
    );
    let o = ykadmin(&env, &["counters", "reset", "not-modhex"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = ykadmin(&env, &["counters", "reset", "ccccccdbjrgf"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .contains("ccccccdbjrgf: counters reset; generation 1, bound to 1 AEAD file"),
        "{}",
        o.stdout
    );
    // The same secret after a reset: its OTPs count from scratch (this is
    // what a reset means; the doc says to run it only for a new secret).
    key.set_counters(1, 0);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

/// A database written by schema 1 (counters per public id and AEAD
/// fingerprint) is copied aside and migrated when the daemon starts;
/// nothing accepted before is accepted after, whichever AEAD it was kept
/// for.
#[test]
fn a_schema_1_database_is_migrated_and_nothing_accepted_before_is_accepted_after() {
    let env = Env::new();
    let key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    fs::create_dir(&env.state_dir).unwrap();
    fs::set_permissions(&env.state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    {
        // The schema ykhsmd 0.1 wrote, byte for byte, and two rows for the
        // key: one per AEAD (key handles 1 and 2, say).
        let conn = rusqlite::Connection::open(env.database()).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS counters (
                public_id   TEXT    NOT NULL,
                fingerprint BLOB    NOT NULL,
                counter     INTEGER NOT NULL,
                session_use INTEGER NOT NULL,
                ts_high     INTEGER NOT NULL,
                ts_low      INTEGER NOT NULL,
                modified    INTEGER NOT NULL,
                PRIMARY KEY (public_id, fingerprint)
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;
             INSERT INTO counters VALUES ('ccccccdbjrgf', x'0101010101010101010101010101010101010101', 5, 0, 0, 0, 1700000000);
             INSERT INTO counters VALUES ('ccccccdbjrgf', x'0202020202020202020202020202020202020202', 9, 2, 0, 0, 1700000001);
             INSERT INTO counters VALUES ('cccccccccccb', x'0303030303030303030303030303030303030303', 1, 1, 0, 0, 1700000002);",
        )
        .unwrap();
    }
    let d = env.start();
    env.wait_log("migrated from schema 1 to 2 (3 rows, now 2 keys");
    env.wait_log("1 keys had counters for several AEADs");
    for (c, u) in [(5, 0), (9, 0), (9, 2)] {
        assert_eq!(
            d.verify("alice", &otp(&env, &key, c, u)),
            Status::ReplayedOtp,
            "({c}, {u}) was accepted before the migration"
        );
    }
    assert_eq!(d.verify("alice", &otp(&env, &key, 9, 3)), Status::Ok);
    // The copy: the old file as it was, root's alone.
    let copies: Vec<_> = fs::read_dir(&env.state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".schema-1."))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(mode(&copies[0]), 0o600);
    let old = rusqlite::Connection::open(&copies[0]).unwrap();
    let rows: i64 = old
        .query_row("SELECT count(*) FROM counters", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3);
    drop(d);
    // Started again: nothing more to migrate.
    let d = env.start();
    assert_eq!(
        d.verify("alice", &otp(&env, &key, 9, 3)),
        Status::ReplayedOtp
    );
    let migrations = env
        .logs()
        .iter()
        .filter(|l| l.starts_with("ykhsmd: ") && l.contains("migrated from schema"))
        .count();
    assert_eq!(migrations, 1, "one migration, on stderr once");
}

/// A database from a newer ykhsm is refused at start and by --check, with
/// what to do.
#[test]
fn a_database_from_a_newer_schema_is_refused_with_what_to_do() {
    let env = Env::new();
    fs::create_dir(&env.state_dir).unwrap();
    fs::set_permissions(&env.state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    {
        let conn = rusqlite::Connection::open(env.database()).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 3;")
            .unwrap();
    }
    let (code, out) = env.run_daemon_cmd(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("schema version 3 was written by a newer ykhsmd"),
        "{out}"
    );
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  database"), "{out}");
    assert!(out.contains("newer ykhsmd"), "{out}");
}

/// The counter database and its WAL files are 0600 (also one made with a
/// looser mode), and a state_dir that group or others can enter is refused
/// at start and by --check, naming it.
#[test]
fn the_counter_database_is_root_only() {
    let env = Env::new();
    // An existing database someone made world-readable.
    fs::create_dir(&env.state_dir).unwrap();
    fs::set_permissions(&env.state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(env.database(), b"").unwrap();
    fs::set_permissions(env.database(), fs::Permissions::from_mode(0o644)).unwrap();
    let key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &otp(&env, &key, 1, 0)), Status::Ok);
    env.wait_log("had mode 0644; now 0600");
    // (In exclusive locking mode SQLite keeps the WAL index in memory: no
    // -shm file, but check it if there is one.)
    for suffix in ["", "-wal", "-shm"] {
        let p = Path::new(&format!("{}{suffix}", env.database().display())).to_path_buf();
        if suffix != "-shm" || p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    drop(d);
    // A state_dir others can read.
    fs::set_permissions(&env.state_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out) = env.run_daemon_cmd(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "state_dir {} has mode 0755",
            env.state_dir.display()
        )),
        "{out}"
    );
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  state_dir"), "{out}");
    // A new state_dir is made 0700.
    fs::remove_dir_all(&env.state_dir).unwrap();
    let d = env.start();
    assert_eq!(mode(&env.state_dir), 0o700);
    assert_eq!(mode(&env.database()), 0o600);
    drop(d);
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// `ykadmin counters export` on `from`, `counters merge` on `to`.
fn sync(from: &Env, to: &Env) {
    let o = ykadmin(from, &["counters", "export"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let m = ykadmin_with_input(to, &["counters", "merge", "-"], &o.stdout);
    assert_eq!(m.code, 0, "{}{}", m.stdout, m.stderr);
}

/// Copies a directory tree (the AEAD store, as rsync would), replacing
/// files that differ.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            let tmp = to.join(".copy.tmp");
            fs::copy(e.path(), &tmp).unwrap();
            fs::rename(&tmp, &dest).unwrap();
        }
    }
}
