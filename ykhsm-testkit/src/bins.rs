//! The programs under test, `ykhsmd`, `ykadmin` and the PAM module
//! `libpam_ykhsm.so`, as cargo builds them from this workspace, in the
//! target directory the running test executable was built in.
//!
//! A test of another package cannot name them with
//! `env!("CARGO_BIN_EXE_…")`, and `cargo test` builds a package's binaries
//! only for that package's own integration tests, never a cdylib for
//! another package's: so `cargo test` would leave `ykhsmd` and the module
//! unbuilt, or stale from an older build. The first call here runs, once
//! per test process,
//!
//! ```text
//! cargo build --workspace --lib --bins --examples --locked
//! ```
//!
//! with the test executable's profile and target directory, and waits for
//! it. After `cargo test` of the whole workspace this compiles nothing but
//! the binaries and the module themselves: the same packages with their
//! dev-dependencies (which `--examples` brings in) resolve the same
//! features, so every library is already built. Run alone
//! (`cargo test -p ykhsm-tests`) it builds what is missing or stale, the
//! first time a little more (that command resolves features of its own).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The daemon.
pub fn ykhsmd_bin() -> PathBuf {
    built().join("ykhsmd")
}

/// The operator's tool.
pub fn ykadmin_bin() -> PathBuf {
    built().join("ykadmin")
}

/// The PAM module (PAM loads a module outside its own directory by
/// absolute path only: this is one).
pub fn pam_module() -> PathBuf {
    built().join("libpam_ykhsm.so")
}

/// The directory holding the built programs (`target/debug`), after the
/// build.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build)
}

fn build() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target dir>[/<triple>]/<profile dir>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .filter(|deps| deps.ends_with("deps"))
        .and_then(Path::parent)
        .unwrap_or_else(|| {
            panic!(
                "{}: not in a cargo target directory; run the suites with cargo test",
                exe.display()
            )
        });
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("{}: no profile directory", exe.display()),
    };
    let above = profile_dir.parent().unwrap();
    let mut cargo =
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cargo
        .args([
            "build",
            "--workspace",
            "--lib",
            "--bins",
            "--examples",
            "--locked",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .args(["--profile", profile]);
    // cargo marks the target directory's top with CACHEDIR.TAG; one level
    // further up when built with --target <triple>.
    if above.join("CACHEDIR.TAG").exists() {
        cargo.arg("--target-dir").arg(above);
    } else {
        cargo
            .arg("--target")
            .arg(above.file_name().unwrap())
            .arg("--target-dir")
            .arg(above.parent().unwrap());
    }
    let out = cargo.output().unwrap_or_else(|e| panic!("{cargo:?}: {e}"));
    assert!(
        out.status.success(),
        "{cargo:?} failed: the programs under test are not built\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.to_path_buf()
}
