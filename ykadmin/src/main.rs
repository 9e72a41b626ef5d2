//! ykadmin, the operator's tool. Its subcommands land with the ykadmin issue;
//! until then this binary only says so.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "ykadmin {}: no subcommands are built yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
