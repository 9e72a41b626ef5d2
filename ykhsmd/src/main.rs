//! ykhsmd: parses the command line, loads the configuration, and runs the
//! daemon (or `--check`). Exit codes: 0 normal stop or check passed, 1 a
//! configuration or start-up error or a failed check.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ykhsmd::config::{Config, DEFAULT_CONFIG};
use ykhsmd::daemon;

/// The local YubiKey OTP verifier of ykhsm.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Validate the whole configuration (files, permissions, backend, AEAD
    /// directory) and exit 0 or 1.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
