//! The YubiHSM 1 (as python-pyhsm drives it): its serial frame codec, a
//! driver over its serial port, and a [`Backend`](ykhsm_core::Backend) on
//! top of it. docs/architecture.md ("ykhsm-yubihsm") gives the overview.
//!
//! - [`wire`]: the frames as bytes, both directions (no I/O); the emulator
//!   (`ykhsm-hsm-emu`) uses it too, so both sides share one definition.
//! - [`YubiHsm`] owns the open device: the serial line (raw mode, 115200
//!   baud, exclusive: `TIOCEXCL` and `flock`), pyhsm's start-up checks
//!   (resync, configuration mode, system info, protocol version, the
//!   raw-line echo test), and one request/response exchange at a time with
//!   a deadline.
//! - [`YubiHsmBackend`] serialises requests through a mutex, maps the
//!   device's statuses to [`BackendError`](ykhsm_core::BackendError) (0x82
//!   and 0x83 are `BAD_OTP`, every other status `BACKEND_ERROR`), and
//!   reopens the device on the next request after it disappeared.
//!
//! Every error is an [`HsmError`] naming the device path (and the command,
//! for an exchange); the backend hands it on whole, as the cause of a
//! `BackendError`.

#![forbid(unsafe_code)]

mod backend;
mod device;
mod error;
pub mod wire;

pub use backend::YubiHsmBackend;
pub use device::YubiHsm;
pub use error::{Command, HsmError};
