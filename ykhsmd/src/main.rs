//! ykhsmd: parses the command line, loads the configuration, and runs the
//! daemon (or `--check`). Exit codes: 0 normal stop or check passed, 1 a
//! configuration or start-up error or a failed check, 2 a wrong command
//! line. `--man` prints ykhsmd(8), made from this definition and
//! `ykhsmd::manual`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ykhsmd::config::{Config, DEFAULT_CONFIG};
use ykhsmd::{daemon, manual};

#[derive(Debug, Parser)]
#[command(
    version,
    about = manual::ABOUT,
    long_about = manual::description(),
    after_long_help = manual::help_text()
)]
struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Validate the whole configuration (files, permissions, backend, AEAD
    /// directory) and exit 0 or 1.
    #[arg(long)]
    check: bool,
    /// Write the man page ykhsmd.8 (roff) to standard output.
    #[arg(long, hide = true)]
    man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        return print_man_page();
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ykhsmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        return if daemon::check(&config) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ykhsmd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_man_page() -> ExitCode {
    use std::io::Write;
    let page = manual::render(<Args as clap::CommandFactory>::command());
    match page.and_then(|p| std::io::stdout().lock().write_all(&p)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ykhsmd: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}
