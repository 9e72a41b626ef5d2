//! The man page ykadmin(8), from the same clap definition as `--help`.
//!
//! clap_mangen's own page lists each subcommand as a page of its own
//! (`ykadmin-enroll(8)`, ...), and the package ships none of those: here the
//! subcommands are written out in one COMMANDS section, with their
//! arguments and options, and SEE ALSO names only pages the package (or
//! Debian) has.

use std::io;

use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// The pages SEE ALSO names: the package's own.
const SEE_ALSO: &[(&str, &str)] = &[("ykhsmd", "8"), ("ykhsmd.toml", "5"), ("pam_ykhsm", "8")];

/// Renders the page for ykadmin's command line `cmd`.
pub fn render(cmd: clap::Command) -> io::Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    // The date is left empty (a build date would make the package
    // unreproducible); clap_mangen writes arguments unquoted, and an empty
    // one would be dropped, so it is given as roff's empty string.
    let man = Man::new(cmd.clone())
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
    roff.control("SH", ["COMMANDS"]);
    let name = cmd.get_name().to_owned();
    commands(&mut roff, &cmd, &name);
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        // ykadmin's after-help is its exit codes.
        roff.control("SH", ["EXIT STATUS"]);
        roff.text([roman(after.to_string())]);
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
    let page = String::from_utf8(page).map_err(io::Error::other)?;
    Ok(ascii(&page).into_bytes())
}

/// Each visible subcommand of `cmd` (called `path`), depth first: its
/// command line, what it does, its own options.
fn commands(roff: &mut Roff, cmd: &clap::Command, path: &str) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let path = format!("{path} {}", sub.get_name());
        if sub.has_subcommands() {
            commands(roff, sub, &path);
            continue;
        }
        roff.control("TP", []);
        let mut line: Vec<Inline> = vec![bold(path.as_str())];
        for arg in sub.get_positionals().filter(|a| !a.is_hide_set()) {
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
            let many = if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
                "..."
            } else {
                ""
            };
            if arg.is_required_set() {
                line.extend([roman(" "), italic(value), roman(many)]);
            } else {
                line.extend([roman(" ["), italic(value), roman(format!("]{many}"))]);
            }
        }
        roff.text(line);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            for (i, paragraph) in about.to_string().split("\n\n").enumerate() {
                if i > 0 {
                    roff.control("IP", []);
                }
                roff.text([roman(paragraph)]);
            }
        }
        let options: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| {
                !a.is_positional()
                    && !a.is_hide_set()
                    && !a.is_global_set()
                    && !matches!(a.get_id().as_str(), "help" | "version")
            })
            .collect();
        if options.is_empty() {
            continue;
        }
        roff.control("RS", []);
        for arg in options {
            roff.control("TP", []);
            let mut line = Vec::new();
            if let Some(s) = arg.get_short() {
                line.push(bold(format!("-{s}")));
                line.push(roman(", "));
            }
            if let Some(l) = arg.get_long() {
                line.push(bold(format!("--{l}")));
            }
            if arg.get_action().takes_values() {
                let value = arg
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
                line.extend([roman(" "), italic(value)]);
            }
            roff.text(line);
            let mut help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && arg.get_action().takes_values() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            roff.text([roman(help)]);
        }
        roff.control("RE", []);
    }
}

/// The page in ASCII: the dashes and ellipses of the help texts as roff's
/// own characters, so the page renders without warnings in every locale.
fn ascii(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        match c {
            '\u{2013}' => out.push_str("\\(en"),
            '\u{2014}' => out.push_str("\\(em"),
            '\u{2026}' => out.push_str("..."),
            '\u{2018}' => out.push_str("\\(oq"),
            '\u{2019}' => out.push_str("\\(cq"),
            '\u{201c}' => out.push_str("\\(lq"),
            '\u{201d}' => out.push_str("\\(rq"),
            '\u{2192}' => out.push_str("\\(->"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("\\[u{:04X}]", u32::from(c))),
        }
    }
    out
}
