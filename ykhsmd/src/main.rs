//! ykhsmd, the local YubiKey OTP verifier. The daemon itself lands with the
//! ykhsmd issue; until then this binary only says so.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "ykhsmd {}: the daemon is not built yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
