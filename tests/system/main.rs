//! The whole-system suites: the real `ykhsmd`, `ykadmin` and
//! `libpam_ykhsm.so`, built from this workspace, run as processes on a
//! temporary installation ([`ykhsm_testkit::Env`]) and talked to through
//! their socket, their command line and real PAM. One test executable,
//! one module per suite; run one suite with
//! `cargo test --test system -- pam::`, one test with its full name.
//!
//! What goes where:
//!
//! - `daemon`: the status word of every verify case, the audit trail.
//! - `exactly_once`: one OTP accepted at most once under races and crashes.
//! - `peers`: who may ask what; hostile, slow and flooding clients.
//! - `counters`: counters per public id, resets, replication between hosts.
//! - `store`: what the daemon trusts of the AEAD store and the config.
//! - `systemd`: readiness, the journal, a syslog socket that comes and goes.
//! - `yubihsm`: the daemon on the YubiHSM 1 emulator.
//! - `pam`: the PAM module through pamtester under pam_wrapper.
//! - `sshd`: a login through a real sshd with the shipped PAM lines.
//! - `ykadmin`, `ykadmin_import`: the operator's tool against the daemon.
//! - `fleet`: several daemons sharing one counter store (a real
//!   PostgreSQL): exactly once across them, outages, the reported window.
//! - `fleet_admin`: `ykadmin fleet init|status` against a real PostgreSQL.
//! - `man`: the shipped man pages say what the code does.
//!
//! A daemon behaviour goes in the suite of its concern, not here. Unit
//! tests stay next to their code; the installed Debian package has its own
//! test executable (`package.rs`). Every suite also runs on the YubiHSM
//! emulator with `YKHSM_TEST_BACKEND=yubihsm` (`scripts/test.sh` does).

mod counters;
mod daemon;
mod exactly_once;
mod fleet;
mod fleet_admin;
mod man;
mod pam;
mod peers;
mod protocol;
mod sshd;
mod store;
mod systemd;
mod ykadmin;
mod ykadmin_import;
mod yubihsm;
