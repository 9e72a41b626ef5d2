//! The command line itself: help, documented exit codes, usage errors.
//! (The subcommands against a real daemon: ykhsmd/tests/ykadmin.rs.)

use std::process::Command;

fn ykadmin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ykadmin"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_every_subcommand_and_the_exit_codes() {
    let (code, out, _) = ykadmin(&["--help"]);
    assert_eq!(code, 0);
    for sub in [
        "enroll",
        "revoke",
        "list",
        "verify",
        "decrypt",
        "status",
        "metrics",
        "pubid-from-serial",
        "counters",
    ] {
        assert!(out.contains(sub), "{sub} missing from:\n{out}");
    }
    assert!(
        out.contains("Exit codes: 0 done and yes; 1 done and no"),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2_and_a_missing_config_exits_3_naming_the_file() {
    let (code, _, _) = ykadmin(&["no-such-subcommand"]);
    assert_eq!(code, 2);
    let (code, _, err) = ykadmin(&["--config", "/nonexistent/ykhsmd.toml", "status"]);
    assert_eq!(code, 3);
    assert!(err.contains("/nonexistent/ykhsmd.toml"), "{err}");
}

#[test]
fn man_page_and_completions_come_from_the_same_definition() {
    let (code, man, _) = ykadmin(&["man"]);
    assert_eq!(code, 0);
    assert!(man.contains(".TH ykadmin 8"), "{man:.200}");
    assert!(man.contains("import\\-ykksm"), "{man}");
    let (code, bash, _) = ykadmin(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        bash.contains("import-ykksm") && bash.contains("complete"),
        "{bash:.200}"
    );
}
