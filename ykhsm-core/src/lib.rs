//! The verification core of ykhsm: everything that turns a typed Yubico OTP
//! and a pyhsm AEAD file into "this key, these counters", bit-compatible with
//! YK-KSM, the YubiHSM 1 and python-pyhsm.
//!
//! No socket, no database, no global state: the daemon and `ykadmin` bring
//! those. The pieces:
//!
//! - [`modhex`]: the YubiKey's hex, case folding and the Dvorak repair;
//! - [`otp`]: parsing, AES-128 decryption, CRC and uid checks, generation;
//! - [`counters`]: the freshness order of (counter, session use);
//! - [`aead`]: the YubiHSM AES-CCM AEAD and YubiKey secrets;
//! - [`keys_file`]: pyhsm's keys.json, checked and zeroized;
//! - [`aead_file`] and [`store`]: pyhsm's AEAD files and directory tree;
//! - [`ykksm`]: the YK-KSM export line format;
//! - [`backend`]: the trait the daemon calls, and the soft implementation
//!   (the YubiHSM 1 driver and its frame codec are the `ykhsm-yubihsm`
//!   crate's);
//! - [`ksm`]: a whole decrypt answered in YK-KSM's words;
//! - [`serial`]: public ids made from serial numbers;
//! - [`softkey`]: a software YubiKey for tests and the demo;
//! - [`secure_file`]: opening, checking and replacing files and directories
//!   whose owner and mode matter;
//! - [`authfile`]: pam_yubico's authfile: one parse for ykhsmd and ykadmin,
//!   the edits, the locked rewrite;
//! - [`username`]: user names with characters a reader does not see.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod account;
pub mod aead;
pub mod aead_file;
pub mod authfile;
pub mod backend;
pub mod counters;
pub mod crc;
pub mod keyhandle;
pub mod keys_file;
pub mod ksm;
pub mod modhex;
pub mod otp;
pub mod secure_file;
pub mod serial;
pub mod softkey;
pub mod store;
pub mod username;
pub mod ykksm;

pub use aead::{KeyHandleKey, Nonce, YubiKeyAead};
pub use backend::{Backend, BackendError, Purpose, SoftBackend};
pub use counters::{Counters, is_fresh};
pub use keyhandle::{KeyHandle, KeyHandleName};
pub use keys_file::KeysFile;
pub use otp::{Otp, OtpCounters, PublicId, Token, YubiKeySecrets};
pub use store::{AeadStore, StoredAead};
