//! ykhsmd, the local verifier: one root daemon per bastion that owns the
//! backend, the AEAD store, the counter database and the authfile, and
//! answers "may USER log in with this OTP?" over a Unix socket.
//!
//! - [`config`]: the TOML file, validated;
//! - [`authfile`]: pam_yubico's `/etc/yubikeys`, re-read on change;
//! - [`db`]: counters in SQLite, exactly-once, durable, group commit;
//! - [`fleet`]: several bastions, one counter store (PostgreSQL), the
//!   reconciler;
//! - [`service`]: every request dispatched, and the daemon's state;
//! - [`login`]: the login pipeline — the checks of a login, in order;
//! - [`error`]: every refusal, and the one table from each to its status word;
//! - [`admin`]: root's admin requests;
//! - [`report`]: the status report (`ykadmin status`);
//! - [`audit`]: the audit line of each verification;
//! - [`device`]: the YubiHSM's own thread, so nothing waits behind it;
//! - [`server`]: the socket, peer credentials, limits, deadlines, shutdown;
//! - [`daemon`]: start-up, `--check`, signals, process hygiene;
//! - [`log`]: the audit and diagnostic lines;
//! - [`manual`]: `--help`'s reference and the man page ykhsmd(8).
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod authfile;
pub use ykhsm_config as config;
pub mod daemon;
pub mod db;
pub mod device;
pub mod error;
pub mod fleet;
pub mod log;
pub mod login;
pub mod manual;
pub mod report;
pub mod server;
pub mod service;
