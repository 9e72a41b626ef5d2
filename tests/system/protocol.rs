//! docs/protocol.md is enough to write a client (issue 14): `protocol_client.py`
//! beside this file, a client in Python written from that document alone,
//! asks the real daemon what a PAM module and a monitor ask — `HasUser`, a
//! login's `Verify`, `Status` — and must read every answer as this crate
//! does. When the document and the daemon part ways, this fails.
//!
//! Needs `python3` (scripts/install-deps.sh installs it).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::Env;
use ykhsm_proto::report::StatusReport;
use ykhsm_proto::{Request, Response, Status};
use ykhsm_testkit as common;

/// Runs the Python client on the daemon's socket with `args`, `input` on
/// its standard input; what it printed (it exits 0 only with an answer).
fn client(env: &Env, args: &[&str], input: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("system/protocol_client.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&env.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (apt-get install python3; scripts/install-deps.sh)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    assert!(
        out.status.success(),
        "protocol_client.py {args:?}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The lines the client prints for the fields of `report` that do not
/// change from one request to the next (not the uptime, file sizes or the
/// log queue), in its format.
fn stable_lines(report: &StatusReport) -> Vec<String> {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
    let mut lines = vec![
        format!("version={}", report.version),
        format!("config={}", report.config),
        format!("socket={}", report.socket),
        format!("backend={}", report.backend.as_str()),
        format!("backend_path={}", report.backend_path),
        format!("authfile_users={}", report.authfile.users),
        format!(
            "authfile_lines_failing_closed={}",
            report.authfile.lines_failing_closed
        ),
        format!("database_path={}", report.database.path),
        format!("database_keys={}", opt(report.database.keys)),
        format!("database_last_commit={}", opt(report.database.last_commit)),
    ];
    for c in &report.checks {
        let part = match c.part.key_handle() {
            Some(name) => format!("{}:{name}", c.part.kind()),
            None => c.part.kind().to_owned(),
        };
        lines.push(format!("check={part} {} {}", c.health.as_str(), c.detail));
    }
    for (status, n) in &report.answers {
        lines.push(format!("answer={status} {n}"));
    }
    lines
}

#[test]
fn a_client_written_from_the_protocol_document_alone_asks_verifies_and_reads_the_status() {
    let (env, mut key, d) = common::alice();
    let otp = env.otp(&mut key);
    assert_eq!(client(&env, &["has-user", "alice"], ""), "Verdict OK");
    // root: a user the system knows, without a line.
    assert_eq!(
        client(&env, &["has-user", "root"], ""),
        "Verdict NO_KEYS_FOR_USER"
    );
    assert_eq!(client(&env, &["verify", "alice"], &otp), "Verdict OK");
    assert_eq!(
        client(&env, &["verify", "alice"], &otp),
        "Verdict REPLAYED_OTP"
    );
    // The OTP was consumed once, by the client's first verify.
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);

    let status = client(&env, &["status"], "");
    let Response::StatusInfo { report } = d.request(&Request::Status) else {
        panic!("Status answered something else");
    };
    let printed: Vec<&str> = status.lines().collect();
    assert_eq!(printed.first(), Some(&"StatusInfo"), "{status}");
    for line in stable_lines(&report) {
        assert!(
            printed.contains(&line.as_str()),
            "the client read the status report otherwise: no line {line:?} in\n{status}"
        );
    }
    assert!(
        printed.contains(&"answer=OK 1"),
        "one login accepted:\n{status}"
    );

    // A frame of another version: a ProtocolError, then end of file (the
    // client checks that the daemon closed after its answer).
    let refused = client(&env, &["raw", "090000000101"], "");
    assert!(refused.starts_with("ProtocolError: "), "{refused}");
}
