//! The protocol between `pam_ykhsm.so`, `ykadmin` and `ykhsmd`: versioned,
//! length-framed messages with a hard size limit, the status words of the
//! interface, a blocking client with one deadline that talks only to a
//! server of the expected uid, and the rule for user names in log lines.
//!
//! This crate is shared by the PAM module, so it stays small: no crypto, no
//! async runtime, no global state. docs/protocol.md describes the bytes well
//! enough for another program to speak them; change both together.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod frame;
pub mod message;
pub mod report;
pub mod status;
pub mod user_name;

pub use client::{ClientError, ServerUid, call};
pub use message::{CounterRecord, Request, Response};
pub use report::StatusReport;
pub use status::Status;
/// The wrapper the requests keep OTPs in (wiped on drop), for callers that
/// build them.
pub use zeroize::Zeroizing;
