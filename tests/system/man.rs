//! The four man pages the package ships (issue 13): ykhsmd(8) and
//! ykadmin(8), generated from their clap definitions (`ykhsmd --man`,
//! `ykadmin man`), and pam_ykhsm(8) and ykhsmd.toml(5), written by hand in
//! `packaging/man/`. Each renders without a groff or man warning, refers
//! only to pages that exist on a system with the package, and says what the
//! code does: the module's options and status → PAM codes, the config's
//! keys and defaults, the daemon's signals and exit codes.
//!
//! Needs `groff` and `man` (Debian's man-db, in scripts/install-deps.sh).

use ykhsm_testkit as common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ykhsm_proto::status::ALL;

/// The pages the package installs.
const SHIPPED: &[&str] = &["ykhsmd(8)", "ykadmin(8)", "pam_ykhsm(8)", "ykhsmd.toml(5)"];

/// Pages of Debian 12 that a bastion with the package has, and the package
/// each comes from (every one a dependency of ykhsm's or of its base
/// system): a reference to anything else is a reference to nothing.
const SYSTEM: &[(&str, &str)] = &[
    ("pam(7)", "libpam-runtime"),
    ("pam.conf(5)", "libpam-runtime"),
    ("pam.d(5)", "libpam-runtime"),
    ("pam-auth-update(8)", "libpam-runtime"),
    ("pam_unix(8)", "libpam-modules"),
    ("pam_permit(8)", "libpam-modules"),
    ("pam_deny(8)", "libpam-modules"),
    ("pam_succeed_if(8)", "libpam-modules"),
    ("sshd(8)", "openssh-server"),
    ("sshd_config(5)", "openssh-server"),
    ("systemctl(1)", "systemd"),
    ("journalctl(1)", "systemd"),
    ("systemd.exec(5)", "systemd"),
    ("systemd.service(5)", "systemd"),
    ("systemd.unit(5)", "systemd"),
    ("su(1)", "util-linux"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (groff and man come with man-db: scripts/install-deps.sh)")
        });
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = run(cmd, b"");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Each shipped page, as (name(section), roff source), generated or read
/// as the package does.
fn pages() -> Vec<(&'static str, String)> {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    vec![
        (
            "ykhsmd(8)",
            stdout_of(Command::new(common::ykhsmd_bin()).arg("--man")),
        ),
        (
            "ykadmin(8)",
            stdout_of(Command::new(common::ykadmin_bin()).arg("man")),
        ),
        ("pam_ykhsm(8)", read("packaging/man/pam_ykhsm.8")),
        ("ykhsmd.toml(5)", read("packaging/man/ykhsmd.toml.5")),
    ]
}

/// The page as plain text, every paragraph on one line (so no reference is
/// broken across lines).
fn plain_text(roff: &str) -> String {
    let out = run(
        Command::new("groff").args(["-man", "-Tascii", "-P-cbou", "-rLL=4000n"]),
        roff.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every `name(N)` in `text`: a man page reference.
fn references(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut refs = BTreeSet::new();
    for (i, _) in text.match_indices('(') {
        let Some(&section) = b.get(i + 1) else {
            continue;
        };
        if !section.is_ascii_digit() || b.get(i + 2) != Some(&b')') {
            continue;
        }
        let start = text[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "_.:+-".contains(c)))
            .map_or(0, |p| p + 1);
        let name = text[start..i].trim_start_matches(['.', '-']);
        if !name.is_empty() {
            refs.insert(format!("{name}({})", section as char));
        }
    }
    refs
}

/// The lines of section `heading` of a rendered page.
fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let start = text.find(&format!("\n{heading}\n"))? + heading.len() + 2;
    let rest = &text[start..];
    // The next heading starts in column 0.
    let end = rest
        .match_indices('\n')
        .find(|(i, _)| rest[i + 1..].starts_with(|c: char| c.is_ascii_uppercase()))
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

/// Issue 13: no page names a page that is not there. ykadmin's page named
/// `ykadmin-enroll(8)` and a dozen more, none of them shipped, and had no
/// SEE ALSO; ykhsmd had no page.
#[test]
fn man_pages_refer_only_to_pages_that_are_shipped_or_on_debian() {
    let known: BTreeSet<&str> = SHIPPED
        .iter()
        .copied()
        .chain(SYSTEM.iter().map(|(p, _)| *p))
        .collect();
    let mut problems = Vec::new();
    for (page, roff) in pages() {
        let text = plain_text(&roff);
        match section(&text, "SEE ALSO") {
            None => problems.push(format!("{page}: no SEE ALSO section")),
            Some(see_also) => {
                let refs = references(see_also);
                if refs.is_empty() {
                    problems.push(format!("{page}: SEE ALSO names no page"));
                }
                for other in SHIPPED.iter().filter(|p| **p != page) {
                    if !refs.contains(*other) {
                        problems.push(format!("{page}: SEE ALSO does not name {other}"));
                    }
                }
            }
        }
        for r in references(&text) {
            if !known.contains(r.as_str()) {
                problems.push(format!(
                    "{page}: refers to {r}, which is neither shipped nor a Debian page"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Issue 13: every page renders cleanly: ASCII source (the same in every
/// locale), no warning from `groff -ww`, none from `man --warnings` in a
/// UTF-8 and in the C locale.
#[test]
fn every_shipped_page_renders_without_warnings() {
    let mut problems = Vec::new();
    for (page, roff) in pages() {
        if let Some(c) = roff.chars().find(|c| !c.is_ascii()) {
            problems.push(format!(
                "{page}: non-ASCII character {c:?} in the roff source"
            ));
        }
        let title = page.replace('(', " ").replace(')', "");
        if !roff.contains(&format!(".TH {title} ")) {
            problems.push(format!("{page}: no .TH {title} line"));
        }
        let out = run(
            Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]),
            roff.as_bytes(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !err.is_empty() {
            problems.push(format!("{page}: groff -man -Tutf8 -ww -z: {err}"));
        }
        for locale in ["C.UTF-8", "C"] {
            let out = run(
                Command::new("man")
                    .args(["--warnings", "-l", "-"])
                    .env("LC_ALL", locale)
                    .env("MANWIDTH", "80")
                    .env_remove("MANPAGER")
                    .env_remove("PAGER"),
                roff.as_bytes(),
            );
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() || !err.is_empty() || out.stdout.is_empty() {
                problems.push(format!("{page}: LC_ALL={locale} man --warnings -l: {err}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The text of `.TP` entry `tag` in roff source: the lines after the
/// `.TP` whose first line is `tag`, up to the next paragraph macro.
fn tp_entry<'a>(roff: &'a str, tag: &str) -> Option<&'a str> {
    let start = roff.find(&format!(".TP\n{tag}\n"))? + 5 + tag.len();
    let rest = &roff[start..];
    let end = [".TP\n", ".PP\n", ".SH ", ".SS "]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Issue 13: pam_ykhsm(8) gives every status word the PAM code the module
/// returns for it, with and without `nullok` (UNKNOWN_USER among them).
#[test]
fn pam_ykhsm_page_gives_every_status_word_its_pam_code() {
    let roff = std::fs::read_to_string(repo().join("packaging/man/pam_ykhsm.8")).unwrap();
    let mut problems = Vec::new();
    for status in ALL {
        let Some(entry) = tp_entry(&roff, &format!(".B {status}")) else {
            problems.push(format!("{status}: no entry"));
            continue;
        };
        let code = pam_ykhsm::verdict::pam_code(status, false);
        let with_nullok = pam_ykhsm::verdict::pam_code(status, true);
        let first = entry.lines().take(4).collect::<Vec<_>>().join(" ");
        if !first.contains(&format!("{code:?}")) {
            problems.push(format!(
                "{status}: page says {first:?}, the module returns {code:?}"
            ));
        }
        if with_nullok != code
            && !(first.contains(&format!("{with_nullok:?}")) && first.contains("nullok"))
        {
            problems.push(format!(
                "{status}: with nullok the module returns {with_nullok:?}: {first:?}"
            ));
        }
        if with_nullok == code && first.contains("nullok") && !first.contains("also with") {
            problems.push(format!(
                "{status}: nullok changes nothing for it: {first:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The options pam_ykhsm itself parses (pam_yubico's other arguments are
/// accepted and ignored, so they are not listed).
const MODULE_OPTIONS: &[&str] = &[
    "socket",
    "timeout",
    "nullok",
    "use_first_pass",
    "try_first_pass",
    "token_id_length",
    "verbose_otp",
    "debug",
];

/// Issue 13: pam_ykhsm(8) documents every option the module accepts, and
/// each one it documents is one the module accepts.
#[test]
fn pam_ykhsm_page_documents_every_module_option() {
    let roff = std::fs::read_to_string(repo().join("packaging/man/pam_ykhsm.8")).unwrap();
    let options = roff
        .split(".SH OPTIONS\n")
        .nth(1)
        .and_then(|s| s.split("\n.SH ").next())
        .expect("an OPTIONS section");
    let mut documented = BTreeSet::new();
    for tag in options
        .split(".TP\n")
        .skip(1)
        .filter_map(|e| e.lines().next())
    {
        let word = tag
            .trim_start_matches(".BI ")
            .trim_start_matches(".B ")
            .split(' ')
            .next()
            .unwrap();
        let sample = match word {
            "socket=" => "socket=/run/ykhsm/other.sock",
            "timeout=" => "timeout=5",
            "token_id_length=" => "token_id_length=12",
            w => w,
        };
        let parsed =
            pam_ykhsm::args::parse([sample]).unwrap_or_else(|e| panic!("the page's {tag:?}: {e}"));
        assert!(
            parsed.ignored.is_empty(),
            "the page's {tag:?} is not an option of the module"
        );
        documented.insert(word.trim_end_matches('=').to_owned());
    }
    let expected: BTreeSet<String> = MODULE_OPTIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, expected);
    let synopsis = roff
        .split(".SH SYNOPSIS\n")
        .nth(1)
        .unwrap()
        .split(".SH ")
        .next()
        .unwrap();
    for o in MODULE_OPTIONS {
        assert!(synopsis.contains(o), "SYNOPSIS lacks {o}");
    }
}

/// roff's escapes in the values of the pages, back to text.
fn unroff(s: &str) -> String {
    s.replace("\\(dq", "\"")
        .replace("\\-", "-")
        .replace("\\e", "\\")
}

/// Issue 13: ykhsmd.toml(5) has an entry for every key of the shipped
/// configuration file (which the config crate's tests tie to the keys the
/// daemon accepts), with the same default (or, for a key with none, the
/// same example).
#[test]
fn ykhsmd_toml_page_documents_every_key_with_the_shipped_default() {
    let roff = std::fs::read_to_string(repo().join("packaging/man/ykhsmd.toml.5")).unwrap();
    let shipped = std::fs::read_to_string(repo().join("packaging/ykhsmd.toml")).unwrap();
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for entry in roff.split(".TP\n").skip(1) {
        let Some(rest) = entry.lines().next().and_then(|l| l.strip_prefix(".BR ")) else {
            continue;
        };
        let Some((key, _type)) = rest.split_once(" \" (") else {
            continue;
        };
        documented.insert(key.to_owned());
        // A key with no default (the [fleet] table's url and files)
        // shows an example instead, the same in both.
        let default = entry
            .split("Default:\n.BR ")
            .nth(1)
            .or_else(|| entry.split("Example:\n.BR ").nth(1))
            .and_then(|d| d.lines().next())
            .map(|d| unroff(d.trim_end_matches([' ', '.', ';'])));
        let in_file = shipped
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {key} = ")).map(str::to_owned));
        if default != in_file {
            problems.push(format!(
                "{key}: the page's default {default:?}, the file's {in_file:?}"
            ));
        }
    }
    let in_file: BTreeSet<String> = shipped
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# ")?
                .split_once(" = ")
                .map(|(k, _)| k.to_owned())
        })
        .filter(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        documented, in_file,
        "keys in ykhsmd.toml(5) vs packaging/ykhsmd.toml"
    );
}

/// Issue 13: `ykhsmd --help` and ykhsmd(8) carry what an operator needs:
/// files, signals, exit codes, the systemd unit; `--man` needs no
/// configuration and is not offered in the help.
#[test]
fn ykhsmd_help_and_man_page_carry_the_operators_reference() {
    let help = stdout_of(Command::new(common::ykhsmd_bin()).arg("--help"));
    for needle in [
        "Files:",
        "/etc/ykhsm/keys.json",
        "Signals:",
        "SIGHUP",
        "Exit status:",
        "Systemd:",
        "ykhsmd.service",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(!help.contains("--man"), "{help}");
    let man = stdout_of(Command::new(common::ykhsmd_bin()).args([
        "--config",
        "/nonexistent/ykhsmd.toml",
        "--man",
    ]));
    for needle in [
        ".TH ykhsmd 8 ",
        ".SH FILES",
        ".SH SIGNALS",
        ".SH \"EXIT STATUS\"",
        ".SH SYSTEMD",
        ".SH \"SEE ALSO\"",
        "\\-\\-check",
    ] {
        assert!(man.contains(needle), "ykhsmd --man lacks {needle:?}");
    }
}
