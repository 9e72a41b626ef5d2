//! The fleet store over TLS (`ca_file`): the server's certificate is
//! checked against that CA alone, and its name against the host in the
//! URL (libpq's verify-full). Against a real PostgreSQL with TLS on
//! (ykhsm_testkit::postgres, certificates made with openssl).

use std::path::Path;

use ykhsm_config::{Config, FleetSettings};
use ykhsm_fleet::{ErrorClass, Fleet, FleetError, Raised};
use ykhsm_proto::CounterRecord;
use ykhsm_testkit::postgres::{Postgres, make_ca};

fn settings(url: &str, extra: &str) -> FleetSettings {
    Config::parse(
        Path::new("/etc/ykhsm/ykhsmd.toml"),
        &format!("[fleet]\nurl = {url:?}\ntimeout_ms = 10000\n{extra}\n"),
    )
    .unwrap()
    .fleet
    .unwrap()
}

fn files(pg: &Postgres, dir: &Path, ca: &Path) -> String {
    let pw = dir.join("fleet.password");
    pg.write_password_file(&pw);
    format!(
        "password_file = {:?}\nca_file = {:?}",
        pw.display().to_string(),
        ca.display().to_string()
    )
}

fn rec(counter: u16) -> CounterRecord {
    CounterRecord {
        public_id: "ccccccdbjrgf".into(),
        generation: 0,
        last: Some((counter, 0)),
        ts_high: 0,
        ts_low: 0,
        modified: 1_767_225_600,
        reset_at: 0,
        aeads: Vec::new(),
    }
}

fn tls_failure(e: &FleetError) {
    assert_eq!(e.class(), ErrorClass::Other, "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[test]
fn the_right_ca_and_name_connect_over_tls() {
    let pg = Postgres::start_with_tls();
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(&settings(
        &pg.url_tls(),
        &files(&pg, dir.path(), pg.ca_file()),
    ))
    .unwrap();
    fleet.init().unwrap();
    assert_eq!(fleet.raise(&[rec(1)]).unwrap(), [Raised::Won]);
    // The server says this session is TLS.
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'ykhsm'"
        )
        .trim(),
        "t"
    );
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let pg = Postgres::start_with_tls();
    let dir = tempfile::tempdir().unwrap();
    // The certificate is for "localhost"; 127.0.0.1 is not in it.
    let url = format!("postgresql://ykhsm@127.0.0.1:{}/ykhsm", pg.port());
    let mut fleet = Fleet::new(&settings(&url, &files(&pg, dir.path(), pg.ca_file()))).unwrap();
    let e = fleet.status().unwrap_err();
    tls_failure(&e);
    assert!(e.to_string().contains("not valid for name"), "{e}");
    assert!(!fleet.is_connected());
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let pg = Postgres::start_with_tls();
    let dir = tempfile::tempdir().unwrap();
    let other = make_ca(&dir.path().join("other"), "not the server's CA");
    let mut fleet = Fleet::new(&settings(&pg.url_tls(), &files(&pg, dir.path(), &other))).unwrap();
    let e = fleet.status().unwrap_err();
    tls_failure(&e);
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}

#[test]
fn a_server_without_tls_is_refused_when_ca_file_is_set() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(&dir.path().join("ca"), "a CA");
    let url = format!("postgresql://ykhsm@localhost:{}/ykhsm", pg.port());
    let mut fleet = Fleet::new(&settings(&url, &files(&pg, dir.path(), &ca))).unwrap();
    let e = fleet.status().unwrap_err();
    tls_failure(&e);
}

#[test]
fn a_ca_file_without_a_certificate_is_refused_by_new() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("empty.pem");
    std::fs::write(&ca, "no certificate here\n").unwrap();
    let url = format!("postgresql://ykhsm@localhost:{}/ykhsm", pg.port());
    let e = Fleet::new(&settings(&url, &files(&pg, dir.path(), &ca))).unwrap_err();
    assert!(matches!(e, FleetError::Config(_)), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("fleet.ca_file") && e.contains("no certificate"),
        "{e}"
    );
}
