//! The core of a YubiHSM 1 emulator, for tests: the device's answer to each
//! request frame ([`Emulator::handle_frame`]) and the stream-level part of the
//! serial link ([`Link`]: split and merged writes, resync zeros,
//! configuration mode). The core does no I/O: [`pty::EmuPty`] serves it on a
//! pseudo-terminal from a thread (and carries out [`Misbehave`]), and the
//! `ykhsm-hsm-emu` binary runs one for manual tests and benchmarks.
//!
//! The protocol is the YubiHSM 1's as python-pyhsm speaks it (its
//! `doc/YubiHSM_if.h`, the device's C header, and `pyhsm/cmd.py`), with the
//! AEAD of `ykhsm_core::aead`, and every frame is decoded and encoded with
//! [`ykhsm_yubihsm::wire`], the driver's own codec, so the emulator and the
//! host-side driver share one definition of the bytes. The emulator answers
//! the commands ykhsm sends (the ones that codec speaks: echo, system info,
//! buffer load, buffer AEAD generate, OTP decode and the three unlocks).
//!
//! # Choices where no source says what the device does
//!
//! - **Unknown, unsupported or malformed frames** (a command the codec does
//!   not decode: one ykhsm never sends, such as `YSM_RANDOM_GENERATE` or
//!   `YSM_HMAC_SHA1_GENERATE`, `YSM_RANDOM_RESEED` or the internal-database
//!   commands; a payload of the wrong length): no answer at all. The host
//!   times out and resyncs, which is what pyhsm does after a silent device.
//! - **User nonces**: a non-zero nonce in a buffer AEAD generate needs the
//!   key handle's `YSM_USER_NONCE` flag (firmware ≥ 1.0.4); without it the
//!   answer is `YSM_FUNCTION_DISABLED`. An all-zero nonce makes the emulator
//!   choose one from its nonce counter (the one `YSM_NONCE_GET` would read).
//! - **Order of checks** for key-handle commands: locked → key handle exists →
//!   permission flag → parameters → crypto.
//! - **Locking**: see [`UnlockSecret`]. Commands that use a key handle answer
//!   `YSM_KEY_STORAGE_LOCKED` while locked; echo, system info and buffer
//!   loads work while locked.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod link;
pub mod pty;

pub use link::{CONFIG_PROMPT, Link};

use std::collections::BTreeMap;
use std::fmt;

use ykhsm_core::aead;
use ykhsm_core::{KeyHandle, KeyHandleKey, Nonce, Token, YubiKeySecrets};
use ykhsm_yubihsm::wire::{
    AeadAnswer, DATA_BUF_SIZE, OtpDecodeAnswer, PROTOCOL_VERSION, PUBLIC_ID_SIZE, Request,
    Response, SYSTEM_UID_SIZE, Status, SystemInfo, permission,
};
use zeroize::{Zeroize, Zeroizing};

/// How the emulator misbehaves on purpose, to test the host's error paths.
///
/// The core ([`Emulator::handle_frame`], [`Link::input`]) always answers
/// correctly; the pseudo-terminal server ([`pty::EmuPty`]), which owns the
/// timing and the file descriptor, carries the setting out on each answer
/// (the bytes the device sends back for one request frame; a frame that gets
/// no answer is not affected). A test switches it at run time with
/// [`pty::EmuPty::set_misbehave`]; [`Emulator::set_misbehave`] sets the value
/// an `EmuPty` starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Misbehave {
    /// Behave as the device does.
    #[default]
    None,
    /// Instead of each answer, send as many bytes of junk: the answer's
    /// length byte (so it looks plausible), then bytes from a fixed pattern
    /// whose first one (the command byte) never has the response bit `0x80`,
    /// so the host sees a wrong-command frame error and must resync. The
    /// command itself was carried out.
    Garbage,
    /// Send each answer only after this delay (counted from when the request
    /// was complete). With a delay above the host's timeout the host times
    /// out and the late answer arrives while the host may already be
    /// resyncing or sending its next request. Meanwhile the emulator reads
    /// nothing (one command at a time, as the device).
    Slow(std::time::Duration),
    /// Hang up the pseudo-terminal instead of answering (the device was
    /// unplugged): the terminal is closed, the host's reads see a hang-up
    /// and its writes fail. The `EmuPty` stays gone whatever the setting
    /// becomes afterwards; a test "replugs" by starting a new one.
    Close,
    /// Send the first half of the answer (rounded down), then forget the
    /// rest of it, the rest of the input already received (further frames,
    /// a partial frame) and the command state ([`Emulator::bus_reset`]), as
    /// a device reset by the USB bus would. The host times out (or, with a
    /// 2-byte half, gets a truncated frame and times out) and must resync.
    ResetMidCommand,
}

/// The secret that unlocks a locked emulator ([`Emulator::lock_with`]).
///
/// An emulator made with [`Emulator::new`] starts unlocked and has no
/// secret. After `lock_with`, commands that use a key handle answer
/// `YSM_KEY_STORAGE_LOCKED` until the matching unlock command arrives with the
/// right secret. A wrong secret, or an unlock command of another kind, answers
/// `YSM_MISMATCH` (for `YSM_HSM_UNLOCK` with an unknown public id,
/// `YSM_ID_NOT_FOUND`), and the emulator stays locked.
pub enum UnlockSecret {
    /// `YSM_KEY_STORAGE_UNLOCK` (0.9.x): the 16-byte password, zero padded.
    Password(Zeroizing<[u8; 16]>),
    /// `YSM_KEY_STORE_DECRYPT` (1.0+): the 32-byte master key, zero padded.
    MasterKey(Zeroizing<[u8; 32]>),
    /// `YSM_HSM_UNLOCK` (1.0+): an OTP from this admin YubiKey. A replayed
    /// OTP (counters not above the last accepted ones) answers
    /// `YSM_OTP_REPLAY`; a wrong one `YSM_OTP_INVALID`.
    AdminOtp {
        /// The admin YubiKey's public id.
        public_id: [u8; PUBLIC_ID_SIZE],
        /// Its AES key and private id.
        secrets: YubiKeySecrets,
    },
}

impl fmt::Debug for UnlockSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(<redacted>)"),
            Self::MasterKey(_) => f.write_str("MasterKey(<redacted>)"),
            Self::AdminOtp { public_id, .. } => f
                .debug_struct("AdminOtp")
                .field("public_id", public_id)
                .finish_non_exhaustive(),
        }
    }
}

/// One key handle: its AES key (16, 24 or 32 bytes; wiped on drop) and its
/// 32-bit permission flag word ([`permission`]).
#[derive(Debug)]
pub struct KeySlot {
    /// The key.
    pub key: KeyHandleKey,
    /// Permission flags.
    pub flags: u32,
}

/// The emulated device: key handles, lock state, data buffer and nonce
/// counter.
pub struct Emulator {
    keys: BTreeMap<u32, KeySlot>,
    info: SystemInfo,
    locked: bool,
    unlock: Option<UnlockSecret>,
    /// Last (counter & 0x7fff, session use) accepted by `YSM_HSM_UNLOCK`.
    admin_last: Option<(u16, u8)>,
    buffer: Zeroizing<[u8; DATA_BUF_SIZE]>,
    buffer_len: usize,
    /// Volatile part of the nonce (bytes 0–3 of `YSM_NONCE_GET`).
    nonce_ctr: u32,
    /// Power-up count (bytes 4–5).
    power_ups: u16,
    misbehave: Misbehave,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("key_handles", &self.keys.keys().collect::<Vec<_>>())
            .field("info", &self.info)
            .field("locked", &self.locked)
            .field("unlock", &self.unlock)
            .field("buffer_len", &self.buffer_len)
            .field("misbehave", &self.misbehave)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Firmware version the emulator reports by default: 1.0.4 (the first
    /// with `YSM_USER_NONCE`).
    pub const DEFAULT_VERSION: (u8, u8, u8) = (1, 0, 4);

    /// An unlocked emulator with no key handles, firmware
    /// [`Self::DEFAULT_VERSION`] and a system uid made from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut system_uid = [0u8; SYSTEM_UID_SIZE];
        system_uid[..8].copy_from_slice(&seed.to_be_bytes());
        system_uid[8..].copy_from_slice(b"EMU1");
        let (major, minor, build) = Self::DEFAULT_VERSION;
        Self {
            keys: BTreeMap::new(),
            info: SystemInfo {
                major,
                minor,
                build,
                protocol: PROTOCOL_VERSION,
                system_uid,
            },
            locked: false,
            unlock: None,
            admin_last: None,
            buffer: Zeroizing::new([0; DATA_BUF_SIZE]),
            buffer_len: 0,
            nonce_ctr: 0,
            power_ups: 1,
            misbehave: Misbehave::None,
        }
    }

    /// Replaces the system information (version, protocol, system uid).
    pub fn set_system_info(&mut self, info: SystemInfo) {
        self.info = info;
    }

    /// The system information the emulator reports.
    pub fn system_info(&self) -> SystemInfo {
        self.info
    }

    /// Adds (or replaces) key handle `handle` with `key` and `flags`.
    pub fn add_key(&mut self, handle: u32, key: KeyHandleKey, flags: u32) {
        self.keys.insert(handle, KeySlot { key, flags });
    }

    /// Removes a key handle; true if it existed.
    pub fn remove_key(&mut self, handle: u32) -> bool {
        self.keys.remove(&handle).is_some()
    }

    /// Locks the key store until `secret` is presented (see [`UnlockSecret`]).
    pub fn lock_with(&mut self, secret: UnlockSecret) {
        self.unlock = Some(secret);
        self.locked = true;
    }

    /// Whether commands that use a key handle are refused.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The misbehaviour setting ([`pty::EmuPty::start`] starts with it).
    pub fn misbehave(&self) -> Misbehave {
        self.misbehave
    }

    /// Sets the misbehaviour an [`pty::EmuPty`] starts with (carried out by
    /// the pty server; the core always answers correctly). To change it on a
    /// running one, use [`pty::EmuPty::set_misbehave`].
    pub fn set_misbehave(&mut self, m: Misbehave) {
        self.misbehave = m;
    }

    /// Forgets what a reset by the USB bus loses: the data buffer. Key
    /// handles, the lock state and the nonce counter are kept (an emulator
    /// choice: no source says what a bus reset of the device keeps).
    pub fn bus_reset(&mut self) {
        self.buffer.zeroize();
        self.buffer_len = 0;
    }

    /// Bytes held in the data buffer (`YSM_BUFFER_LOAD`).
    pub fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// Answers one whole request frame (`bcnt, cmd, payload`) with the bytes
    /// the device sends back; empty when the device sends nothing (unknown,
    /// unsupported or malformed frames, see the crate documentation).
    pub fn handle_frame(&mut self, frame: &[u8]) -> Vec<u8> {
        match Request::decode(frame) {
            Ok(request) => self.answer(&request).encode(),
            Err(_) => Vec::new(),
        }
    }

    /// The answer to a decoded request.
    pub fn answer(&mut self, request: &Request) -> Response {
        match request {
            Request::Echo { data } => Response::Echo { data: data.clone() },
            Request::SystemInfo => Response::SystemInfo(self.info),
            Request::BufferLoad { offset, data } => Response::BufferLoad {
                count: self.buffer_write(*offset, data),
            },
            Request::BufferAeadGenerate { nonce, key_handle } => {
                let data = Zeroizing::new(self.buffer[..self.buffer_len].to_vec());
                Response::BufferAeadGenerate(self.aead_generate(
                    *nonce,
                    *key_handle,
                    permission::BUFFER_AEAD_GENERATE,
                    &data,
                ))
            }
            Request::OtpDecode {
                nonce,
                key_handle,
                otp,
                aead,
            } => Response::OtpDecode(self.otp_decode(*nonce, *key_handle, otp, aead)),
            Request::KeyStorageUnlock { password } => Response::KeyStorageUnlock {
                status: self.unlock_with(|s| match s {
                    UnlockSecret::Password(p) => Some(ct_eq(&p[..], &password[..])),
                    _ => None,
                }),
            },
            Request::KeyStoreDecrypt { key } => Response::KeyStoreDecrypt {
                status: self.unlock_with(|s| match s {
                    UnlockSecret::MasterKey(k) => Some(ct_eq(&k[..], &key[..])),
                    _ => None,
                }),
            },
            Request::HsmUnlock { public_id, otp } => Response::HsmUnlock {
                status: self.hsm_unlock(public_id, otp),
            },
        }
    }

    fn current_nonce(&self) -> Nonce {
        let mut n = [0u8; 6];
        n[..4].copy_from_slice(&self.nonce_ctr.to_le_bytes());
        n[4..].copy_from_slice(&self.power_ups.to_le_bytes());
        Nonce(n)
    }

    /// Writes `data` at `offset` (offset 0 empties the buffer first); bytes
    /// past the 64-byte buffer are dropped. Returns the bytes now held.
    fn buffer_write(&mut self, offset: u8, data: &[u8]) -> u8 {
        let offset = usize::from(offset).min(DATA_BUF_SIZE);
        if offset == 0 {
            self.buffer.fill(0);
            self.buffer_len = 0;
        }
        let end = (offset + data.len()).min(DATA_BUF_SIZE);
        if let (Some(dst), Some(src)) = (
            self.buffer.get_mut(offset..end),
            data.get(..end.saturating_sub(offset)),
        ) {
            dst.copy_from_slice(src);
        }
        self.buffer_len = self.buffer_len.max(end);
        u8::try_from(self.buffer_len).unwrap_or(u8::MAX)
    }

    /// Locked → key handle exists → flag; the slot on success.
    fn check_key(&self, kh: KeyHandle, flag: u32) -> Result<&KeySlot, Status> {
        if self.locked {
            return Err(Status::KeyStorageLocked);
        }
        let slot = self.keys.get(&kh.0).ok_or(Status::KeyHandleInvalid)?;
        if slot.flags & flag != flag {
            return Err(Status::FunctionDisabled);
        }
        Ok(slot)
    }

    fn aead_generate(&mut self, nonce: Nonce, kh: KeyHandle, flag: u32, data: &[u8]) -> AeadAnswer {
        let user_nonce = nonce.0 != [0; 6];
        let needed = if user_nonce {
            flag | permission::USER_NONCE
        } else {
            flag
        };
        if let Err(status) = self.check_key(kh, needed) {
            return failed_aead(nonce, kh, status);
        }
        let nonce = if user_nonce {
            nonce
        } else {
            let n = self.current_nonce();
            self.nonce_ctr = self.nonce_ctr.wrapping_add(1);
            n
        };
        let Some(slot) = self.keys.get(&kh.0) else {
            return failed_aead(nonce, kh, Status::KeyHandleInvalid);
        };
        match aead::seal(&slot.key, kh, &nonce, data) {
            Ok(aead) => AeadAnswer {
                nonce,
                key_handle: kh,
                status: Status::Ok,
                aead,
            },
            Err(_) => failed_aead(nonce, kh, Status::InvalidParameter),
        }
    }

    fn otp_decode(
        &self,
        nonce: Nonce,
        kh: KeyHandle,
        otp: &Token,
        sealed: &ykhsm_core::YubiKeyAead,
    ) -> OtpDecodeAnswer {
        let slot = match self.check_key(kh, permission::AEAD_YUBIKEY_OTP_DECODE) {
            Ok(s) => s,
            Err(status) => return OtpDecodeAnswer::failed(nonce, kh, status),
        };
        let Ok(secrets) = sealed.open(&slot.key, kh, &nonce) else {
            return OtpDecodeAnswer::failed(nonce, kh, Status::AeadInvalid);
        };
        match secrets.decode(otp) {
            Ok(counters) => OtpDecodeAnswer::ok(nonce, kh, &counters),
            Err(_) => OtpDecodeAnswer::failed(nonce, kh, Status::OtpInvalid),
        }
    }

    /// `check` says whether the configured secret matches (`None`: the
    /// request is for another kind of secret).
    fn unlock_with(&mut self, check: impl FnOnce(&UnlockSecret) -> Option<bool>) -> Status {
        match self.unlock.as_ref().and_then(check) {
            Some(true) => {
                self.locked = false;
                Status::Ok
            }
            _ => Status::Mismatch,
        }
    }

    fn hsm_unlock(&mut self, public_id: &[u8; PUBLIC_ID_SIZE], otp: &Token) -> Status {
        let Some(UnlockSecret::AdminOtp {
            public_id: admin,
            secrets,
        }) = &self.unlock
        else {
            return Status::IdNotFound;
        };
        if admin != public_id {
            return Status::IdNotFound;
        }
        let Ok(c) = secrets.decode(otp) else {
            return Status::OtpInvalid;
        };
        let now = (c.use_counter & 0x7fff, c.session_use);
        if self.admin_last.is_some_and(|last| now <= last) {
            return Status::OtpReplay;
        }
        self.admin_last = Some(now);
        self.locked = false;
        Status::Ok
    }
}

fn failed_aead(nonce: Nonce, key_handle: KeyHandle, status: Status) -> AeadAnswer {
    AeadAnswer {
        nonce,
        key_handle,
        status,
        aead: Vec::new(),
    }
}

/// Equal length and bytes, without an early exit on the first difference.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
