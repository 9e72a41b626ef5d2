//! ykadmin's library: the pieces the subcommands are made of.
#![forbid(unsafe_code)]

pub mod counters_text;
pub mod digest;
pub mod generate;
pub mod import;
pub mod json;
pub mod man;
pub mod metrics;
pub mod otp_input;
pub mod report;
