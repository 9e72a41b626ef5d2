//! The operator's reference of ykhsmd: what `ykhsmd --help` prints after
//! the options, and the man page ykhsmd(8) (`ykhsmd --man`, which the
//! package ships). Both come from the clap definition in `main.rs` and the
//! sections here, so the page cannot drift from `--help`.
//!
//! The text is ASCII: a man page then renders the same in every locale.

use std::io;

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

/// One line on what the daemon is (NAME, `-h`).
pub const ABOUT: &str = "The local YubiKey OTP verifier of ykhsm";

/// DESCRIPTION, and the top of `--help` ([`description`]). Paragraphs are
/// separated by an empty line.
const DESCRIPTION: &str = "\
ykhsmd verifies YubiKey OTPs for pam_ykhsm.so and ykadmin on the same host. \
It listens on a Unix socket only, never on the network. For each login it \
checks, in this order: that the asking process may ask for the user; that \
the user has a line in the authfile (pam_yubico's /etc/yubikeys); that the \
OTP is well formed and its public id is on the user's line; that an AEAD \
file exists for the public id; that the backend (python-pyhsm's keys.json, \
or a YubiHSM 1) decrypts the OTP with it; and that the key's counters are \
above the last ones accepted. The new counters are committed to disk before \
the answer is sent, so no OTP is accepted twice. The answer is one status \
word, and one audit line per login goes to syslog (facility authpriv) with \
the user, the public id, the status word and the counters: never the OTP, a \
key or a uid.

ykhsmd runs as root in the foreground. Before it listens it checks \
everything --check checks, and it does not start if any of it is wrong: \
each error names the file and the problem.

Who may ask is decided from the peer's credentials (SO_PEERCRED), not the \
socket's mode (0666): root may ask anything; any other user may only verify \
their own user name (a screen locker) and never use the admin requests of \
ykadmin.";

/// A part of a section.
#[derive(Debug)]
enum Item {
    /// A paragraph.
    Text(&'static str),
    /// A term and what it means.
    Term(&'static str, &'static str),
}

/// A section of the page, after OPTIONS.
#[derive(Debug)]
struct Section {
    heading: &'static str,
    items: &'static [Item],
}

const SECTIONS: &[Section] = &[
    Section {
        heading: "FILES",
        items: &[
            Item::Text(
                "Defaults; ykhsmd.toml(5) says how to move each. ykhsmd refuses a file \
                 or directory it trusts that is not root's or that group or others may \
                 write, naming it.",
            ),
            Item::Term(
                "/etc/ykhsm/ykhsmd.toml",
                "The configuration, read at start (--config). Root's, not writable by \
                 group or others.",
            ),
            Item::Term(
                "/etc/ykhsm/keys.json",
                "The soft backend's key-handle keys (python-pyhsm's format). Root's, \
                 mode 0600. Read at start and on SIGHUP.",
            ),
            Item::Term(
                "/etc/yubikeys",
                "The authfile: which user may log in with which public ids \
                 (pam_yubico's format). Root's, not writable by group or others. \
                 Re-read whenever it changes.",
            ),
            Item::Term(
                "/var/cache/yubikey-ksm/aeads",
                "The AEAD store, in python-pyhsm's layout. Root's, as is everything \
                 under it; no symbolic links.",
            ),
            Item::Term(
                "/var/lib/ykhsm/counters.sqlite",
                "The counter database, in the state directory (root's, mode 0700): the \
                 only place ykhsmd writes. A database of an older schema is copied aside \
                 (counters.sqlite.schema-N.TIME.bak) and migrated at start; one of a \
                 newer schema is refused with what to do. Keep it: the counters are what \
                 refuses an OTP that was used before.",
            ),
            Item::Term(
                "/run/ykhsm/ykhsmd.sock",
                "The socket (mode 0666) in a root-owned directory (0755), with \
                 ykhsmd.sock.lock beside it: one daemon per socket.",
            ),
            Item::Term(
                "/dev/ttyACM0",
                "The YubiHSM 1, with backend = \"yubihsm\". ykhsmd holds it alone \
                 (flock) and reopens it after an unplug.",
            ),
        ],
    },
    Section {
        heading: "SIGNALS",
        items: &[
            Item::Term(
                "SIGTERM, SIGINT",
                "Stop: no new connections; requests in flight are answered, every log \
                 line is written, the database is closed; exit 0.",
            ),
            Item::Term(
                "SIGHUP",
                "Reload keys.json (a YubiHSM stays open) and the authfile, whose user \
                 names are resolved through NSS again (after a user was renamed, or a \
                 domain added). ykhsmd.toml is read at start only: restart to apply it.",
            ),
        ],
    },
    Section {
        heading: "EXIT STATUS",
        items: &[
            Item::Term("0", "Stopped by SIGTERM or SIGINT; or --check passed."),
            Item::Term(
                "1",
                "The configuration or the start failed (the reason is on standard \
                 error), or --check found a problem (marked FAIL).",
            ),
            Item::Term("2", "The command line is wrong."),
        ],
    },
    Section {
        heading: "SYSTEMD",
        items: &[
            Item::Text(
                "The package's ykhsmd.service runs ykhsmd --check before ykhsmd, as root, \
                 with Type=notify: the unit is started once the socket listens and the \
                 backend answered, and it is ordered before ssh.service. systemctl \
                 reload ykhsmd sends SIGHUP; systemctl restart ykhsmd re-reads \
                 ykhsmd.toml. RuntimeDirectory= makes /run/ykhsm (0755) and \
                 StateDirectory= makes /var/lib/ykhsm (0700); the unit's sandbox lets \
                 ykhsmd write nowhere else and open no device but a ttyACM one, so a \
                 socket or state_dir moved elsewhere needs an override of the unit \
                 (systemctl edit ykhsmd). Its lines: journalctl -u ykhsmd; the audit \
                 lines also in syslog's authpriv facility.",
            ),
            Item::Text(
                "Started by hand, ykhsmd runs the same way in the foreground until \
                 SIGTERM: ykhsmd --config FILE.",
            ),
        ],
    },
];

/// Pages this one refers to: the package's own and Debian's.
const SEE_ALSO: &[(&str, &str)] = &[
    ("ykadmin", "8"),
    ("pam_ykhsm", "8"),
    ("ykhsmd.toml", "5"),
    ("systemctl", "1"),
    ("journalctl", "1"),
];

/// The description wrapped to 80 columns (clap does not wrap `--help`;
/// roff fills the lines again).
pub fn description() -> String {
    let mut out = String::new();
    for (i, paragraph) in DESCRIPTION.split("\n\n").enumerate() {
        if i > 0 {
            out.push('\n');
        }
        wrap(&mut out, paragraph, 0);
    }
    out.trim_end().to_owned()
}

/// What `--help` prints after the options: the sections above as text,
/// wrapped to 80 columns.
pub fn help_text() -> String {
    let mut out = String::new();
    for s in SECTIONS {
        out.push_str(&format!("{}:\n", title_case(s.heading)));
        for item in s.items {
            match item {
                Item::Text(t) => wrap(&mut out, t, 2),
                Item::Term(term, t) => {
                    out.push_str(&format!("  {term}\n"));
                    wrap(&mut out, t, 6);
                }
            }
        }
        out.push('\n');
    }
    let refs: Vec<String> = SEE_ALSO.iter().map(|(p, s)| format!("{p}({s})")).collect();
    out.push_str("See also:\n");
    wrap(&mut out, &refs.join(", "), 2);
    out
}

/// "EXIT STATUS" -> "Exit status".
fn title_case(heading: &str) -> String {
    let lower = heading.to_ascii_lowercase();
    let mut c = lower.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// Appends `text` wrapped to 80 columns, each line indented by `indent`.
fn wrap(out: &mut String, text: &str, indent: usize) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > 80 {
            out.push_str(&format!("{:indent$}{line}\n", ""));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&format!("{:indent$}{line}\n", ""));
    }
}

/// The man page ykhsmd(8), in roff, for the daemon's command line `cmd`:
/// clap_mangen's title, NAME, SYNOPSIS, DESCRIPTION and OPTIONS, then the
/// sections above with their own headings (not clap_mangen's one EXTRA
/// section), SEE ALSO, and the version.
pub fn render(cmd: clap::Command) -> io::Result<Vec<u8>> {
    // The date is left empty (a build date would make the package
    // unreproducible); clap_mangen writes arguments unquoted, and an empty
    // one would be dropped, so it is given as roff's empty string.
    let man = Man::new(cmd)
        .section("8")
        .date("\"\"")
        .source(concat!("ykhsm ", env!("CARGO_PKG_VERSION")))
        .manual("ykhsm");
    let mut parts: Vec<Vec<u8>> = Vec::new();
    type Part = fn(&Man, &mut dyn io::Write) -> io::Result<()>;
    let clap_parts: [Part; 5] = [
        Man::render_title,
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ];
    for render in clap_parts {
        let mut part = Vec::new();
        render(&man, &mut part)?;
        parts.push(part);
    }
    let mut roff = Roff::new();
    for s in SECTIONS {
        roff.control("SH", [s.heading]);
        for item in s.items {
            match item {
                Item::Text(t) => {
                    roff.control("PP", []);
                    roff.text([roman(*t)]);
                }
                Item::Term(term, t) => {
                    roff.control("TP", []);
                    roff.text([bold(*term)]);
                    roff.text([roman(*t)]);
                }
            }
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for (i, (page, section)) in SEE_ALSO.iter().enumerate() {
        refs.push(bold(*page));
        let sep = if i + 1 < SEE_ALSO.len() { ", " } else { "" };
        refs.push(roman(format!("({section}){sep}")));
    }
    roff.text(refs);
    let mut part = Vec::new();
    roff.to_writer(&mut part)?;
    parts.push(part);
    let mut part = Vec::new();
    man.render_version_section(&mut part)?;
    parts.push(part);
    // Each part starts with roff's apostrophe preamble: keep the first.
    let preamble = Roff::new().render().into_bytes();
    let mut page = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        match part.strip_prefix(preamble.as_slice()) {
            Some(rest) if i > 0 => page.extend_from_slice(rest),
            _ => page.extend_from_slice(&part),
        }
    }
    Ok(page)
}
