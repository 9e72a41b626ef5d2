//! `ykadmin fleet init` and `ykadmin fleet status`: the real ykadmin
//! against a real PostgreSQL server (ykhsm_testkit::postgres), with the
//! daemon's configuration file and its [fleet] table.

use ykhsm_testkit as common;

use common::postgres::Postgres;
use common::{Env, Out, ykadmin};

/// An installation whose [fleet] table points at `pg` over TCP, with the
/// role's password in a 0600 file.
fn env_with_fleet(pg: &Postgres) -> (Env, tempfile::TempDir) {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("fleet.password");
    pg.write_password_file(&pw);
    env.config(&format!(
        "[fleet]\nurl = {:?}\npassword_file = {:?}",
        pg.url_tcp(),
        pw.display().to_string()
    ));
    (env, dir)
}

fn json(o: &Out) -> serde_json::Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", o.stdout))
}

fn no_password(pg: &Postgres, o: &Out) {
    assert!(
        !o.stdout.contains(pg.password()) && !o.stderr.contains(pg.password()),
        "the password was printed: {} {}",
        o.stdout,
        o.stderr
    );
}

#[test]
fn fleet_init_creates_the_schema_once_and_status_reports_it() {
    let mut pg = Postgres::start();
    let (env, _dir) = env_with_fleet(&pg);
    let store = format!("ykhsm@127.0.0.1:{}/ykhsm", pg.port());

    // No schema yet: status says what to do, and exits 1.
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 1, "{} {}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .contains(&format!("fleet store {store}: connected")),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("no schema"), "{}", o.stdout);
    assert!(o.stderr.contains("ykadmin fleet init"), "{}", o.stderr);
    no_password(&pg, &o);

    let o = ykadmin(&env, &["fleet", "init"]);
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    assert_eq!(
        o.stdout.trim(),
        format!("fleet store {store}: created the schema (version 1)")
    );
    let o = ykadmin(&env, &["fleet", "init"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("current (version 1); nothing to do"),
        "{}",
        o.stdout
    );
    let o = ykadmin(&env, &["--json", "fleet", "init"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = json(&o);
    assert_eq!(j["outcome"], "current");
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["store"], store);

    pg.sql(
        "ykhsm",
        "INSERT INTO ykhsm_counters (public_id, generation, counter, session_use, ts_high, \
         ts_low, modified, reset_at) VALUES ('ccccccdbjrgf', 0, 3, 1, 0, 0, 1767225600, 0)",
    );
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("(PostgreSQL 15"), "{}", o.stdout);
    assert!(
        o.stdout.contains("schema version 1 (this ykhsm: 1)"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("keys: 1"), "{}", o.stdout);
    let o = ykadmin(&env, &["--json", "fleet", "status"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = json(&o);
    assert_eq!(j["connected"], true);
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["known_schema_version"], 1);
    assert_eq!(j["rows"], 1);
    assert!(j["problem"].is_null(), "{j}");
    assert_eq!(o.stdout.lines().count(), 1, "one JSON document");

    // The server goes away: status exits 1 and says so; init cannot do
    // its job (3).
    pg.stop();
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 1, "{} {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("not connected"), "{}", o.stdout);
    assert!(o.stderr.contains("cannot be reached"), "{}", o.stderr);
    no_password(&pg, &o);
    let o = ykadmin(&env, &["--json", "fleet", "status"]);
    assert_eq!(o.code, 1);
    let j = json(&o);
    assert_eq!(j["connected"], false);
    assert!(
        j["problem"].as_str().unwrap().contains("cannot be reached"),
        "{j}"
    );
    let o = ykadmin(&env, &["fleet", "init"]);
    assert_eq!(o.code, 3, "{} {}", o.stdout, o.stderr);
    assert!(o.stderr.contains("cannot be reached"), "{}", o.stderr);

    pg.start_again();
    assert_eq!(ykadmin(&env, &["fleet", "status"]).code, 0);
}

#[test]
fn fleet_status_without_a_fleet_table_exits_1_and_init_3() {
    let env = Env::new();
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 1, "{} {}", o.stdout, o.stderr);
    assert!(o.stderr.contains("no [fleet] table"), "{}", o.stderr);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    let o = ykadmin(&env, &["fleet", "init"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("no [fleet] table"), "{}", o.stderr);
}

#[test]
fn a_schema_from_a_newer_ykhsm_is_reported_and_never_downgraded() {
    let pg = Postgres::start();
    let (env, _dir) = env_with_fleet(&pg);
    assert_eq!(ykadmin(&env, &["fleet", "init"]).code, 0);
    pg.sql("ykhsm", "UPDATE ykhsm_schema SET version = 7");
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 1, "{} {}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("schema version 7 (this ykhsm: 1)"),
        "{}",
        o.stdout
    );
    assert!(o.stderr.contains("newer ykhsm"), "{}", o.stderr);
    let o = ykadmin(&env, &["fleet", "init"]);
    assert_eq!(o.code, 1, "{} {}", o.stdout, o.stderr);
    assert!(o.stderr.contains("never downgrades"), "{}", o.stderr);
    assert_eq!(
        pg.sql("ykhsm", "SELECT version FROM ykhsm_schema").trim(),
        "7"
    );
}

#[test]
fn a_fleet_table_ykadmin_cannot_use_is_refused_naming_the_key() {
    let pg = Postgres::start();
    // A password in the URL: refused when the file is read (exit 3), and
    // not repeated.
    let env = Env::new();
    env.config(&format!(
        "[fleet]\nurl = \"postgresql://ykhsm:{}@127.0.0.1:{}/ykhsm\"",
        pg.password(),
        pg.port()
    ));
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("fleet.url") && o.stderr.contains("password_file"),
        "{}",
        o.stderr
    );
    no_password(&pg, &o);
    // A password file others can read.
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("fleet.password");
    pg.write_password_file(&pw);
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    env.config(&format!(
        "[fleet]\nurl = {:?}\npassword_file = {:?}",
        pg.url_tcp(),
        pw.display().to_string()
    ));
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("fleet.password_file") && o.stderr.contains("0644"),
        "{}",
        o.stderr
    );
    // A remote host without ca_file.
    let env = Env::new();
    env.config("[fleet]\nurl = \"postgresql://ykhsm@db1.example/ykhsm\"");
    let o = ykadmin(&env, &["fleet", "status"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("fleet.ca_file"), "{}", o.stderr);
}
