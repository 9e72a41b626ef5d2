//! The stream side of the YubiHSM 1's serial link: bytes arrive in any
//! pieces; zeros between frames are resync padding; whole frames go to the
//! [`Emulator`].

use ykhsm_yubihsm::wire::{self, MAX_FRAME_LEN};
use zeroize::Zeroizing;

use crate::Emulator;

/// What the configuration console prints for each carriage return: a line
/// that pyhsm's `^(NO_CFG|WSAPI|HSM).*> .*` check recognises.
pub const CONFIG_PROMPT: &[u8] = b"\r\nHSM> ";

/// The byte stream between host and emulator.
///
/// [`Link::input`] takes bytes as the host wrote them (a frame split over
/// several writes, several frames in one write, resync zeros anywhere between
/// frames) and returns everything the device sends back in answer.
///
/// Out-of-step input: a length byte that cannot start a frame (more than
/// `0x61`) is dropped one byte at a time, as a device hunting for a frame
/// would. Zeros *inside* a frame are payload: a resync sent after half a frame
/// fills that frame first. The real device also drops a partial frame after
/// an idle gap; the pty binary should call [`Link::idle`] when input has been
/// quiet for a while (pyhsm's resync waits 0.1 s).
#[derive(Debug)]
pub struct Link {
    emulator: Emulator,
    pending: Zeroizing<Vec<u8>>,
    config_mode: bool,
}

impl Link {
    /// A link to `emulator`, in frame mode.
    pub fn new(emulator: Emulator) -> Self {
        Self {
            emulator,
            pending: Zeroizing::new(Vec::with_capacity(2 * MAX_FRAME_LEN)),
            config_mode: false,
        }
    }

    /// The emulator behind the link.
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// The emulator behind the link, to change its keys or lock state.
    pub fn emulator_mut(&mut self) -> &mut Emulator {
        &mut self.emulator
    }

    /// Switches the configuration console (a device started with its button
    /// held) on or off. In configuration mode frames are not answered; every
    /// `\r` gets [`CONFIG_PROMPT`].
    pub fn set_config_mode(&mut self, on: bool) {
        self.config_mode = on;
        self.pending.clear();
    }

    /// Whether the configuration console is on.
    pub fn config_mode(&self) -> bool {
        self.config_mode
    }

    /// Bytes held for a frame not yet complete.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Input has been quiet: forget a partial frame.
    pub fn idle(&mut self) {
        self.pending.clear();
    }

    /// Takes bytes from the host; returns the bytes to send back (possibly
    /// none).
    pub fn input(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.input_with(bytes, |answer| {
            out.extend_from_slice(&answer);
            true
        });
        out
    }

    /// As [`Link::input`], but hands each answer to `each` as soon as it is
    /// made: the bytes of one answered frame, or in configuration mode the
    /// prompts for the whole of `bytes`. Frames that get no answer are not
    /// passed on. When `each` returns `false` the link stops there and drops
    /// the rest of `bytes` and any partial frame, as a device reset in the
    /// middle of a command would (the pty server's
    /// [`Misbehave::ResetMidCommand`](crate::Misbehave::ResetMidCommand)).
    pub fn input_with(&mut self, bytes: &[u8], mut each: impl FnMut(Vec<u8>) -> bool) {
        if self.config_mode {
            let mut out = Vec::new();
            for _ in bytes.iter().filter(|&&b| b == b'\r') {
                out.extend_from_slice(CONFIG_PROMPT);
            }
            if !out.is_empty() {
                each(out);
            }
            return;
        }
        // Copy into a fresh buffer so no stale copy of secrets is left by a
        // reallocation.
        let mut buf = Zeroizing::new(Vec::with_capacity(self.pending.len() + bytes.len()));
        buf.extend_from_slice(&self.pending);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            let rest = buf.get(start..).unwrap_or_default();
            let zeros = wire::resync_prefix_len(rest);
            start += zeros;
            let rest = buf.get(start..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            match wire::check_frame(rest) {
                Ok(n) => {
                    let frame = rest.get(..n).unwrap_or_default();
                    let answer = self.emulator.handle_frame(frame);
                    start += n;
                    if !answer.is_empty() && !each(answer) {
                        self.pending = Zeroizing::new(Vec::with_capacity(2 * MAX_FRAME_LEN));
                        return;
                    }
                }
                Err(e) if e.is_incomplete() => break,
                // Not a frame start: drop one byte and look again.
                Err(_) => start += 1,
            }
        }
        let mut rest = Zeroizing::new(Vec::with_capacity(2 * MAX_FRAME_LEN));
        rest.extend_from_slice(buf.get(start..).unwrap_or_default());
        self.pending = rest;
    }
}
