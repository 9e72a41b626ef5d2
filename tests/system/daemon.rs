//! The real `ykhsmd` binary on a temporary installation, over its real
//! socket: every status word for the case that should give it, in the order
//! of docs/protocol.md ("The order of the checks"), and the audit trail that
//! never holds a secret.

use ykhsm_testkit as common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::Env;
use ykhsm_proto::{Request, Response, Status};
use zeroize::Zeroizing;

#[test]
fn valid_otp_is_accepted_once() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    assert_eq!(d.verify("alice", &otp), Status::Ok);
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
    // The next OTP of the same key is fresh.
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn older_counter_is_a_replay() {
    let (env, mut key, d) = common::alice();
    let first = env.otp(&mut key);
    let second = env.otp(&mut key);
    assert_eq!(d.verify("alice", &second), Status::Ok);
    assert_eq!(d.verify("alice", &first), Status::ReplayedOtp);
    key.replug();
    let after_replug = env.otp(&mut key);
    assert_eq!(d.verify("alice", &after_replug), Status::Ok);
    key.set_counters(1, 200);
    let lower_counter_higher_use = env.otp(&mut key);
    assert_eq!(
        d.verify("alice", &lower_counter_higher_use),
        Status::ReplayedOtp
    );
}

#[test]
fn other_users_key_is_not_authorized() {
    let env = Env::new();
    let mut bobs = env.key("cccccccccccd");
    env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\nbob:cccccccccccd\n");
    let d = env.start();
    let otp = env.otp(&mut bobs);
    assert_eq!(d.verify("alice", &otp), Status::NotAuthorized);
    // Not consumed: bob can still use it.
    assert_eq!(d.verify("bob", &otp), Status::Ok);
}

/// `daemon` is a user of every Debian system (base-passwd), found through
/// the machine's own NSS (the files backend); it has no line here.
#[test]
fn user_without_a_line_has_no_keys() {
    let (env, mut key, d) = common::alice();
    assert_eq!(
        d.verify("daemon", &env.otp(&mut key)),
        Status::NoKeysForUser
    );
    assert_eq!(
        d.request(&Request::HasUser {
            user: "daemon".into()
        }),
        Response::Verdict {
            status: Status::NoKeysForUser
        }
    );
    // A name the system does not know is not a user without keys.
    assert_eq!(
        d.request(&Request::HasUser {
            user: "carol".into()
        }),
        Response::Verdict {
            status: Status::UnknownUser
        }
    );
    assert_eq!(
        d.request(&Request::HasUser {
            user: "alice".into()
        }),
        Response::Verdict { status: Status::Ok }
    );
}

#[test]
fn user_with_an_empty_line_is_not_authorized() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:\nbob\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::NotAuthorized);
    assert_eq!(d.verify("bob", &env.otp(&mut key)), Status::NotAuthorized);
    // An empty line is a line: the PAM module must prompt (nullok does not apply).
    assert_eq!(
        d.request(&Request::HasUser {
            user: "alice".into()
        }),
        Response::Verdict { status: Status::Ok }
    );
}

#[test]
fn key_without_an_aead_is_no_such_key() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    fs::remove_dir_all(env.aead_dir.join("1")).unwrap();
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::NoSuchKey);
}

#[test]
fn bad_crc_wrong_uid_and_garbage_are_bad_otp() {
    let (env, mut key, d) = common::alice();
    let good = env.otp(&mut key);
    // One token character changed: the CRC fails.
    let mut bad_crc = good.clone().into_bytes();
    let last = bad_crc.len() - 1;
    bad_crc[last] = if bad_crc[last] == b'c' { b'b' } else { b'c' };
    let bad_crc = String::from_utf8(bad_crc).unwrap();
    env.remember_otp(&bad_crc);
    assert_eq!(d.verify("alice", &bad_crc), Status::BadOtp);
    // Right key, wrong private id.
    let mut impostor = ykhsm_core::softkey::SoftYubiKey::new(
        key.public_id().clone(),
        ykhsm_core::YubiKeySecrets::new(*key.secrets().key(), [0xee; 6]),
    );
    let wrong_uid = impostor.next_otp().to_typed_string().to_string();
    env.remember_otp(&wrong_uid);
    assert_eq!(d.verify("alice", &wrong_uid), Status::BadOtp);
    for garbage in [
        "",
        "x",
        "ccccccdbjrgf",
        "ccccccdbjrgf!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        &"c".repeat(5000),
        "ééééééééééééééééééééééééééééééééé",
    ] {
        assert_eq!(
            d.verify("alice", garbage),
            Status::BadOtp,
            "{:?}",
            &garbage[..garbage.len().min(20)]
        );
    }
    // None of that consumed anything: the good OTP still works.
    assert_eq!(d.verify("alice", &good), Status::Ok);
}

#[test]
fn aead_under_a_key_handle_missing_from_keys_json_is_backend_error() {
    let env = Env::new();
    env.config("key_handles = [\"1\", \"2\"]");
    let mut key = env.key_under("ccccccdbjrgf", "2");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    env.wait_log("key handle 2 (0x2) is not known to the backend");
}

#[test]
fn removed_or_group_writable_authfile_is_backend_error() {
    let (env, mut key, d) = common::alice();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    fs::set_permissions(&env.authfile, fs::Permissions::from_mode(0o664)).unwrap();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    assert_eq!(
        d.request(&Request::HasUser {
            user: "alice".into()
        }),
        Response::Verdict {
            status: Status::BackendError
        }
    );
    fs::set_permissions(&env.authfile, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    fs::remove_file(&env.authfile).unwrap();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    env.wait_log("yubikeys");
}

#[test]
fn authfile_changes_apply_without_a_restart() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    env.set_authfile("alice:\nbob:ccccccdbjrgf\n");
    assert_eq!(d.verify("alice", &otp), Status::NotAuthorized);
    assert_eq!(d.verify("bob", &otp), Status::Ok);
}

#[test]
fn malformed_authfile_line_fails_closed_for_its_user_and_is_reported_once() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    let mut bobs = env.key("cccccccccccd");
    env.set_authfile("alice:ccccccdbjrgf\nbob:cccccccccccd\nbob:not a key\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    assert_eq!(d.verify("bob", &env.otp(&mut bobs)), Status::BackendError);
    assert_eq!(d.verify("bob", &env.otp(&mut bobs)), Status::BackendError);
    // Every line of both of bob's attempts is written once their audit
    // lines are (the log keeps order).
    common::wait_for("bob's two audit lines", Duration::from_secs(10), || {
        env.logs()
            .iter()
            .filter(|l| l.starts_with("ykhsmd: verify user=bob "))
            .count()
            >= 2
    });
    let reports = env
        .logs()
        .iter()
        .filter(|l| l.contains("line 3") && l.starts_with("ykhsmd: error"))
        .count();
    assert_eq!(reports, 1, "{:#?}", env.logs());
}

/// Runs `chattr` on a file (the WAL must be on a file system that has the
/// immutable flag: ext4 here).
fn chattr(flag: &str, path: &std::path::Path) {
    let st = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "chattr {flag} {}", path.display());
}

#[test]
fn unwritable_database_is_backend_error_never_ok_and_consumes_nothing() {
    let (env, mut key, d) = common::alice();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let otp = env.otp(&mut key);
    let wal = env.state_dir.join("counters.sqlite-wal");
    chattr("+i", &wal);
    let answers: Vec<Status> = (0..3).map(|_| d.verify("alice", &otp)).collect();
    chattr("-i", &wal);
    assert_eq!(answers, [Status::BackendError; 3]);
    env.wait_log("counter database");
    // Nothing was consumed: once the disk takes writes again, the OTP works once.
    assert_eq!(d.verify("alice", &otp), Status::Ok);
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
}

#[test]
fn counter_database_cannot_be_used_behind_the_daemons_back() {
    let (env, mut key, d) = common::alice();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let conn = rusqlite::Connection::open(env.database()).unwrap();
    let err = conn
        .query_row("SELECT count(*) FROM counters", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    drop(conn);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn admin_requests_work_for_root() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    let d = env.start();
    let otp = env.otp(&mut key);
    let Response::Decrypted { line, public_id } = d.request(&Request::Decrypt {
        otp: Zeroizing::new(otp.clone()),
    }) else {
        panic!("decrypt")
    };
    assert_eq!(public_id, "ccccccdbjrgf");
    assert!(line.starts_with("OK counter=0001 low="), "{line}");
    // Decrypt does not consume; ConsumeOtp does.
    let r = d.request(&Request::ConsumeOtp {
        otp: Zeroizing::new(otp.clone()),
    });
    assert_eq!(
        r,
        Response::Consumed {
            status: Status::Ok,
            public_id: "ccccccdbjrgf".into(),
            counter: 1,
            session_use: 0
        }
    );
    let r = d.request(&Request::ConsumeOtp {
        otp: Zeroizing::new(otp),
    });
    assert!(
        matches!(
            r,
            Response::Consumed {
                status: Status::ReplayedOtp,
                ..
            }
        ),
        "{r:?}"
    );
    let Response::Counters { records } = d.request(&Request::CountersExport) else {
        panic!()
    };
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].last, Some((1, 0)));
    let Response::StatusInfo { report } = d.request(&Request::Status) else {
        panic!()
    };
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.part.key_handle() == Some("1")
                && c.health == ykhsm_proto::report::Health::Ok
                && c.detail == "usable"),
        "{report:?}"
    );
}

#[test]
fn counters_merge_never_lowers_and_is_idempotent() {
    let (env, mut key, d) = common::alice();
    key.set_counters(5, 3);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    let Response::Counters { records } = d.request(&Request::CountersExport) else {
        panic!()
    };
    let mut lower = records[0].clone();
    lower.last = Some((4, 3));
    let mut higher = records[0].clone();
    higher.last = Some((9, 3));
    assert_eq!(
        d.request(&Request::CountersMerge {
            records: vec![lower.clone()]
        }),
        Response::Merged {
            raised: 0,
            unchanged: 1
        }
    );
    for expected_raised in [1, 0] {
        assert_eq!(
            d.request(&Request::CountersMerge {
                records: vec![higher.clone(), lower.clone()]
            }),
            Response::Merged {
                raised: expected_raised,
                unchanged: 2 - expected_raised
            }
        );
    }
    // An OTP at or below the merged counters is now a replay; above is fine.
    key.set_counters(9, 0);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::ReplayedOtp);
    key.set_counters(10, 0);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn key_reimported_with_a_new_secret_starts_afresh_only_after_an_explicit_reset() {
    let env = Env::new();
    let mut old = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    old.set_counters(100, 0);
    assert_eq!(d.verify("alice", &env.otp(&mut old)), Status::Ok);
    // Reprogrammed YubiKey: new secret, counters from 1 again. Its AEAD
    // replaced by hand, the counters still belong to the public id.
    let mut new = env.key("ccccccdbjrgf");
    assert_eq!(d.verify("alice", &env.otp(&mut new)), Status::ReplayedOtp);
    // The operator starts the key afresh: logged, and the new key logs in.
    let r = d.request(&Request::CountersReset {
        public_id: "ccccccdbjrgf".into(),
        aeads: vec![],
        reason: "test".into(),
    });
    assert_eq!(
        r,
        Response::Reset {
            generation: 1,
            aeads: 1
        }
    );
    env.wait_log("counters-reset pubid=ccccccdbjrgf generation=1 aeads=1");
    assert_eq!(d.verify("alice", &env.otp(&mut new)), Status::Ok);
    // The old key's OTPs no longer decrypt.
    assert_eq!(d.verify("alice", &env.otp(&mut old)), Status::BadOtp);
}

#[test]
fn audit_has_one_line_per_verification_with_the_fixed_fields() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    assert_eq!(d.verify("alice", &otp), Status::Ok);
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
    // An OTP typed at the user-name prompt is never logged (no user has
    // such a name: UNKNOWN_USER).
    assert_eq!(d.verify(&env.otp(&mut key), "x"), Status::UnknownUser);
    let audit = || -> Vec<String> {
        env.logs()
            .into_iter()
            .filter(|l| l.starts_with("ykhsmd: verify "))
            .collect()
    };
    common::wait_for(
        "three audit lines on stderr",
        Duration::from_secs(10),
        || audit().len() >= 3,
    );
    let stderr = audit();
    assert_eq!(stderr.len(), 3, "{stderr:#?}");
    assert!(stderr[0].starts_with("ykhsmd: verify user=alice pubid=ccccccdbjrgf status=OK counter=1 session_use=0 peer_uid=0 peer_pid="), "{}", stderr[0]);
    assert!(stderr[1].contains("status=REPLAYED_OTP"));
    assert!(
        stderr[2].contains("user=<withheld:looks-like-an-otp>"),
        "{}",
        stderr[2]
    );
    // The same lines went to syslog, facility authpriv (10): <86> = authpriv.info.
    let syslog = || -> Vec<String> {
        env.logs()
            .into_iter()
            .filter(|l| l.starts_with("<86>") && l.contains(" verify "))
            .collect()
    };
    common::wait_for(
        "three audit lines in syslog",
        Duration::from_secs(10),
        || syslog().len() >= 3,
    );
    let syslog = syslog();
    assert_eq!(syslog.len(), 3, "{syslog:#?}");
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let mut d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    assert_eq!(d.terminate(), Some(0));
    assert!(!env.socket.exists());
    // The database is consistent and the WAL was checkpointed.
    let conn = rusqlite::Connection::open(env.database()).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn stale_socket_is_replaced_and_a_second_daemon_is_refused() {
    let env = Env::new();
    let mut d = env.start();
    d.kill_hard();
    assert!(env.socket.exists(), "SIGKILL leaves the socket file behind");
    let d2 = env.start();
    let (code, out) = env.run_daemon_cmd(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another ykhsmd is running"), "{out}");
    drop(d2);
}

#[test]
fn start_up_errors_name_the_file_and_exit_non_zero() {
    let env = Env::new();
    if !common::on_hsm() {
        fs::set_permissions(&env.keys_file, fs::Permissions::from_mode(0o640)).unwrap();
        let (code, out) = env.run_daemon_cmd(&[]);
        assert_eq!(code, 1);
        assert!(out.contains("keys.json") && out.contains("0640"), "{out}");
        fs::set_permissions(&env.keys_file, fs::Permissions::from_mode(0o600)).unwrap();
    }

    fs::set_permissions(&env.authfile, fs::Permissions::from_mode(0o646)).unwrap();
    let (code, out) = env.run_daemon_cmd(&[]);
    assert_eq!(code, 1);
    assert!(out.contains("yubikeys"), "{out}");
    fs::set_permissions(&env.authfile, fs::Permissions::from_mode(0o644)).unwrap();

    env.config("colour = \"blue\"");
    let (code, out) = env.run_daemon_cmd(&[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("ykhsmd.toml") && out.contains("colour"),
        "{out}"
    );
}

#[test]
fn check_reports_each_part_and_exits_by_the_result() {
    let env = Env::new();
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok    key handle 1"), "{out}");
    // Also while the daemon runs (it holds the database).
    let d = env.start();
    let (code, out) = env.run_daemon_cmd(&["--check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("held by the running ykhsmd"), "{out}");
    drop(d);
    if common::on_hsm() {
        // The device missing is named.
        env.unplug_hsm();
        let (code, out) = env.run_daemon_cmd(&["--check"]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  device") && out.contains("cannot open the device"),
            "{out}"
        );
    } else {
        fs::remove_file(&env.keys_file).unwrap();
        let (code, out) = env.run_daemon_cmd(&["--check"]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  backend") && out.contains("keys.json"),
            "{out}"
        );
    }
}

#[test]
fn sighup_reloads_keys_json() {
    if common::keys_json_only("sighup_reloads_keys_json") {
        return;
    }
    let env = Env::new();
    env.config("key_handles = [\"1\", \"2\"]");
    let mut key = env.key_under("ccccccdbjrgf", "2");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    fs::write(
        &env.keys_file,
        format!(r#"{{"1": "{k}", "2": "{k}"}}"#, k = common::KH1_KEY),
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    env.wait_log("reload: keys and authfile re-read");
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn sighup_with_a_refused_keys_file_keeps_the_keys_already_loaded() {
    if common::keys_json_only("sighup_with_a_refused_keys_file_keeps_the_keys_already_loaded") {
        return;
    }
    let (env, mut key, d) = common::alice();
    fs::set_permissions(&env.keys_file, fs::Permissions::from_mode(0o644)).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    env.wait_log("reload: keeping the keys already loaded");
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

// User-name aliases (issue 12, item 4). The daemon runs under nss_wrapper
// with tests/common/nss_alias.c, which aliases names as sssd does with
// case-insensitive names and a default domain: `ALICE` and `alice@corp` are
// the account `alice`. Before the fix the authfile was matched on the exact
// string, so an alias was "a user without keys" (PAM_IGNORE under nullok).

/// The system's users in the alias tests.
const ACCOUNTS: &[(&str, u32)] = &[("alice", 2001), ("bob", 2002), ("carol", 2003)];

fn has_user(d: &common::Daemon, user: &str) -> Status {
    match d.request(&Request::HasUser { user: user.into() }) {
        Response::Verdict { status } => status,
        other => panic!("HasUser answered {other:?}"),
    }
}

#[test]
fn alias_of_an_enrolled_user_is_verified_as_that_user() {
    let env = Env::new();
    let _nss = env.with_nss(ACCOUNTS);
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    for alias in ["ALICE", "alice@corp", "Alice@CORP"] {
        assert_eq!(has_user(&d, alias), Status::Ok, "{alias}");
    }
    let otp = env.otp(&mut key);
    assert_eq!(d.verify("ALICE", &otp), Status::Ok);
    // The same key, the same counters, whichever name was typed.
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
    assert_eq!(d.verify("alice@corp", &env.otp(&mut key)), Status::Ok);
    // Another user's alias is still another user.
    assert_eq!(d.verify("BOB", &env.otp(&mut key)), Status::NoKeysForUser);
}

#[test]
fn authfile_line_written_under_an_alias_counts_for_the_user() {
    let env = Env::new();
    let _nss = env.with_nss(ACCOUNTS);
    let mut first = env.key("ccccccdbjrgf");
    let mut second = env.key("cccccccccccd");
    // Two lines that are one user: their keys add up, as pam_yubico's
    // duplicate lines do.
    env.set_authfile("ALICE:ccccccdbjrgf\nalice@corp:cccccccccccd\n");
    let d = env.start();
    for name in ["alice", "Alice", "ALICE", "alice@corp"] {
        assert_eq!(has_user(&d, name), Status::Ok, "{name}");
    }
    assert_eq!(d.verify("alice", &env.otp(&mut first)), Status::Ok);
    assert_eq!(d.verify("alice", &env.otp(&mut second)), Status::Ok);
    assert_eq!(d.verify("ALICE", &env.otp(&mut second)), Status::Ok);
    assert_eq!(d.verify("alice@corp", &env.otp(&mut first)), Status::Ok);
    assert_eq!(has_user(&d, "bob"), Status::NoKeysForUser);
    env.wait_log("line 1: the user name ALICE is the system's user alice");
}

#[test]
fn name_the_system_does_not_know_without_a_line_is_unknown_user() {
    let env = Env::new();
    let _nss = env.with_nss(ACCOUNTS);
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(has_user(&d, "zed"), Status::UnknownUser);
    assert_eq!(d.verify("zed", &env.otp(&mut key)), Status::UnknownUser);
    assert_eq!(has_user(&d, "alice@elsewhere"), Status::UnknownUser);
    // A user the system knows, without a line: the one case of no keys.
    assert_eq!(has_user(&d, "carol"), Status::NoKeysForUser);
    assert_eq!(has_user(&d, "CAROL"), Status::NoKeysForUser);
    // Nothing was consumed.
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn name_the_system_does_not_know_with_a_line_is_verified_as_given() {
    let env = Env::new();
    let _nss = env.with_nss(ACCOUNTS);
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("svc-deploy:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(has_user(&d, "svc-deploy"), Status::Ok);
    assert_eq!(d.verify("svc-deploy", &env.otp(&mut key)), Status::Ok);
    // Not an alias: the system does not know either name.
    assert_eq!(has_user(&d, "SVC-DEPLOY"), Status::UnknownUser);
    assert_eq!(
        d.verify("SVC-DEPLOY", &env.otp(&mut key)),
        Status::UnknownUser
    );
}

#[test]
fn invisible_characters_in_an_authfile_user_name_are_reported_and_fail_closed() {
    let env = Env::new();
    let _nss = env.with_nss(ACCOUNTS);
    let mut key = env.key("ccccccdbjrgf");
    env.key("cccccccccccd");
    env.key("cccccccccccb");
    env.set_authfile(
        "# the first line has a byte-order mark\n\u{feff}alice:ccccccdbjrgf\nbob\u{200b}:cccccccccccd\ncarol\u{7f}:cccccccccccb\n",
    );
    let d = env.start();
    // The user each line meant fails closed, under any of their names.
    for user in [
        "alice",
        "ALICE",
        "alice@corp",
        "bob",
        "carol",
        "\u{feff}alice",
    ] {
        assert_eq!(has_user(&d, user), Status::BackendError, "{user:?}");
    }
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::BackendError);
    for line in 2..=4 {
        env.wait_log(&format!("line {line}: the user name contains"));
    }
}

#[test]
fn when_the_user_database_fails_no_user_is_without_keys() {
    let env = Env::new();
    let nss = env.with_nss(ACCOUNTS);
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    assert_eq!(has_user(&d, "carol"), Status::NoKeysForUser);
    nss.set_failing(true);
    // Who CAROL is cannot be known now: not "without keys", not unknown.
    assert_eq!(has_user(&d, "carol"), Status::BackendError);
    assert_eq!(has_user(&d, "ALICE"), Status::BackendError);
    // A name on a line is still verified as written.
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
    nss.set_failing(false);
    assert_eq!(has_user(&d, "ALICE"), Status::Ok);
}

/// The authfile's names are resolved when it is read; an NSS change to them
/// (here: the user `dana` appears, and `DANA:…` was written before) is
/// picked up by SIGHUP, without an edit of the file.
#[test]
fn nss_changes_to_the_authfiles_names_are_picked_up_on_sighup() {
    let env = Env::new();
    let nss = env.with_nss(ACCOUNTS);
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("DANA:ccccccdbjrgf\n");
    let d = env.start();
    // The system does not know DANA: matched as written.
    assert_eq!(has_user(&d, "DANA"), Status::Ok);
    assert_eq!(has_user(&d, "dana"), Status::UnknownUser);
    let mut accounts = ACCOUNTS.to_vec();
    accounts.push(("dana", 2004));
    nss.set_accounts(&accounts);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    env.wait_log("authfile re-read");
    common::wait_for("dana to have DANA's line", Duration::from_secs(10), || {
        has_user(&d, "dana") == Status::Ok
    });
    assert_eq!(d.verify("dana@corp", &env.otp(&mut key)), Status::Ok);
}

/// Issue 14 (one reading of the authfile): a line pam_yubico reads as a
/// user's — `:daemon:…` (`strtok` skips the leading `:`), the tail of a
/// line or comment longer than the 1023 bytes pam_yubico reads at once, a
/// name cut short by a NUL — was nobody's line for ykhsmd (or another
/// name's), so that user was "without keys": under `nullok`, no second
/// factor at all. ykadmin's editor already read these lines as the user's
/// and refused to edit them; ykhsmd now reads them the same way and fails
/// the user closed, as for any line it cannot trust.
#[test]
fn a_line_pam_yubico_reads_as_a_users_fails_that_user_closed() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("bob:cccccccccccd\n");
    let d = env.start();
    assert_eq!(has_user(&d, "daemon"), Status::NoKeysForUser);
    for line in [
        ":daemon:ccccccdbjrgf".to_owned(),
        format!("alice:{}daemon:ccccccdbjrgf", "x".repeat(1017)),
        format!("# {}daemon:ccccccdbjrgf", "x".repeat(1021)),
        "daemon\0x:ccccccdbjrgf".to_owned(),
    ] {
        env.set_authfile(&format!("bob:cccccccccccd\n{line}\n"));
        assert_eq!(has_user(&d, "daemon"), Status::BackendError, "{line:?}");
        assert_eq!(
            d.verify("daemon", &env.otp(&mut key)),
            Status::BackendError,
            "{line:?}"
        );
        // The other lines are unaffected.
        assert_eq!(has_user(&d, "bob"), Status::Ok, "{line:?}");
    }
    env.wait_log("pam_yubico reads it as a line of daemon");
}

/// Issue 14 (one way to open a trusted file): the configuration, keys.json
/// and the authfile were opened with a blocking `open`, so a FIFO at the
/// path held `ykhsmd` (and `--check`) until someone wrote to it; ykadmin's
/// editor opened the authfile without blocking and refused anything but a
/// regular file. Every trusted file is now opened the editor's way.
#[test]
fn a_fifo_in_place_of_the_configuration_is_refused_at_once() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let env = Env::new();
    let fifo = env.dir.path().join("ykhsmd-fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut child = Command::new(common::ykhsmd_bin())
        .arg("--config")
        .arg(&fifo)
        .arg("--check")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        exited,
        "ykhsmd --check still waiting on the FIFO after 10 s"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{} is not a regular file (it is a named pipe)",
            fifo.display()
        )),
        "{text}"
    );
}
