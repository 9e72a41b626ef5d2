//! Requests and responses (docs/protocol.md has the byte layout of each).
//!
//! Secret-bearing fields (OTPs, YubiKey secrets) are wiped on drop and never
//! shown by `Debug`.

use std::fmt;

use zeroize::Zeroizing;

use crate::codec::{DecodeError, Reader, Writer};
use crate::report::StatusReport;
use crate::status::Status;

/// Length of an AEAD fingerprint (SHA-1 over key handle ‖ nonce ‖ AEAD).
pub const FINGERPRINT_LEN: usize = 20;
/// Length of a YubiKey AEAD.
pub const AEAD_LEN: usize = 30;
/// Length of a YubiKey's secrets (AES key ‖ uid).
pub const SECRETS_LEN: usize = 22;
/// The most AEAD fingerprints one key's generation is bound to (one per key
/// handle it was imported under; a store has a handful).
pub const MAX_BOUND_AEADS: usize = 64;

/// One key's counter state — a row of the counter database, as exported
/// and merged between hosts. Counters belong to the key's **public id**,
/// whatever key handle, file format or host its AEAD is read from.
///
/// Records are ordered by (`generation`, `last`) first: a higher generation
/// wins whatever its counters, so merging stays a max-merge and a reset
/// (which starts a new generation with no counters) travels to other hosts
/// without ever lowering a counter within a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRecord {
    /// The key's public id (modhex).
    pub public_id: String,
    /// 0 until the key is first reset; each explicit reset
    /// (`ykadmin counters reset`, `import-ykksm --force` of another secret)
    /// raises it by one.
    pub generation: u32,
    /// The last accepted (15-bit counter, session use) in this generation;
    /// `None` when nothing was accepted since the generation began.
    pub last: Option<(u16, u8)>,
    /// Timestamp high byte of that OTP (0 when `last` is `None`).
    pub ts_high: u8,
    /// Timestamp low 16 bits of that OTP (0 when `last` is `None`).
    pub ts_low: u16,
    /// When the record last changed, Unix seconds.
    pub modified: u64,
    /// When this generation began, Unix seconds (0 for generation 0).
    pub reset_at: u64,
    /// The fingerprints of the AEADs this generation was started for: from
    /// generation 1 on, only an OTP decoded with one of these AEADs may
    /// raise the counters (an AEAD still holding the retired secret, on this
    /// host or another, cannot). Empty for generation 0: any AEAD of the
    /// public id. At most [`MAX_BOUND_AEADS`], sorted, no duplicates.
    pub aeads: Vec<[u8; FINGERPRINT_LEN]>,
}

impl CounterRecord {
    const MIN_LEN: usize = 2 + 4 + 1 + 2 + 1 + 1 + 2 + 8 + 8 + 4;

    fn write(&self, w: &mut Writer) {
        w.str(&self.public_id);
        w.u32(self.generation);
        let (seen, (counter, session_use)) = match self.last {
            Some(pair) => (1, pair),
            None => (0, (0, 0)),
        };
        w.u8(seen);
        w.u16(counter);
        w.u8(session_use);
        w.u8(self.ts_high);
        w.u16(self.ts_low);
        w.u64(self.modified);
        w.u64(self.reset_at);
        write_fingerprints(w, &self.aeads);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let public_id = r.str("public_id")?.to_owned();
        let generation = r.u32("generation")?;
        let seen = r.u8("seen")?;
        let pair = (r.u16("counter")?, r.u8("session_use")?);
        let last = match seen {
            0 => None,
            1 => Some(pair),
            _ => return Err(DecodeError::BadValue { field: "seen" }),
        };
        let ts_high = r.u8("ts_high")?;
        let ts_low = r.u16("ts_low")?;
        let modified = r.u64("modified")?;
        let reset_at = r.u64("reset_at")?;
        let aeads = read_fingerprints(r)?;
        Ok(Self {
            public_id,
            generation,
            last,
            ts_high,
            ts_low,
            modified,
            reset_at,
            aeads,
        })
    }
}

/// A list of AEAD fingerprints: a u32 count (at most [`MAX_BOUND_AEADS`]),
/// then 20 bytes each.
fn write_fingerprints(w: &mut Writer, fps: &[[u8; FINGERPRINT_LEN]]) {
    w.count(fps.len());
    for fp in fps {
        w.raw(fp);
    }
}

fn read_fingerprints(r: &mut Reader<'_>) -> Result<Vec<[u8; FINGERPRINT_LEN]>, DecodeError> {
    let n = r.count("aeads", FINGERPRINT_LEN)?;
    if n > MAX_BOUND_AEADS {
        return Err(DecodeError::BadValue { field: "aeads" });
    }
    (0..n).map(|_| r.array("aead fingerprint")).collect()
}

fn write_records(w: &mut Writer, records: &[CounterRecord]) {
    w.count(records.len());
    for rec in records {
        rec.write(w);
    }
}

fn read_records(r: &mut Reader<'_>) -> Result<Vec<CounterRecord>, DecodeError> {
    let n = r.count("records", CounterRecord::MIN_LEN)?;
    (0..n).map(|_| CounterRecord::read(r)).collect()
}

/// What a client asks.
#[derive(PartialEq, Eq)]
pub enum Request {
    /// May `user` log in with `otp`? Consumes the OTP on `OK`.
    Verify {
        /// The PAM user name.
        user: String,
        /// The typed OTP.
        otp: Zeroizing<String>,
    },
    /// Does `user` have a line in the authfile? (Lets the PAM module skip
    /// the prompt under `nullok`.)
    HasUser {
        /// The PAM user name.
        user: String,
    },
    /// Daemon, backend and store health. Admin.
    Status,
    /// Decrypt without consuming; YK-KSM's answer line. Admin.
    Decrypt {
        /// The typed OTP.
        otp: Zeroizing<String>,
    },
    /// Verify an OTP for enrollment, without the authfile: decodes it and
    /// records its counters (consumes it). Admin.
    ConsumeOtp {
        /// The typed OTP.
        otp: Zeroizing<String>,
    },
    /// Seal a YubiKey's secrets into an AEAD with the backend. Admin.
    WrapSecrets {
        /// Key handle number.
        key_handle: u32,
        /// The 6-byte nonce.
        nonce: [u8; 6],
        /// AES key ‖ uid.
        secrets: Zeroizing<[u8; SECRETS_LEN]>,
    },
    /// Does this AEAD open under this key handle? `OK` if it authenticates,
    /// `BAD_OTP` if it does not (tampered, or another key handle's),
    /// `Failed` with `BACKEND_ERROR` if the backend cannot tell (no such key
    /// handle). Nothing is decrypted for the caller. Admin.
    CheckAead {
        /// Key handle number.
        key_handle: u32,
        /// The 6-byte nonce.
        nonce: [u8; 6],
        /// The AEAD.
        aead: [u8; AEAD_LEN],
    },
    /// Unlock the YubiHSM's key store: the master key (firmware 1.0+) or
    /// password (0.9.x), then an admin YubiKey's OTP; either may be empty
    /// (skipped), not both. `OK`, or `Failed` naming what was refused. The
    /// daemon passes them to the device and keeps neither. Admin.
    HsmUnlock {
        /// The master key or password, raw bytes (may be empty).
        master_key: Zeroizing<Vec<u8>>,
        /// The admin YubiKey's OTP as typed (may be empty).
        otp: Zeroizing<String>,
    },
    /// Every counter record. Admin.
    CountersExport,
    /// Merge records: per public id keep the higher (generation, counters),
    /// never lower one. Admin.
    CountersMerge {
        /// The records.
        records: Vec<CounterRecord>,
    },
    /// Start a key afresh: its generation goes up by one, with no counters,
    /// bound to the AEADs named (or, with none named, to every AEAD the
    /// daemon's store holds for the public id under its configured key
    /// handles). For a reprogrammed YubiKey, which keeps its public id but
    /// restarts its counter. Logged. Admin.
    CountersReset {
        /// The key.
        public_id: String,
        /// Fingerprints of the AEADs that hold the key's new secret; empty:
        /// whatever the store holds now.
        aeads: Vec<[u8; FINGERPRINT_LEN]>,
        /// Why, for the log (e.g. `import-ykksm --force`).
        reason: String,
    },
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verify { user, .. } => write!(f, "Verify {{ user: {user:?}, otp: <redacted> }}"),
            Self::HasUser { user } => write!(f, "HasUser {{ user: {user:?} }}"),
            Self::Status => f.write_str("Status"),
            Self::Decrypt { .. } => f.write_str("Decrypt { otp: <redacted> }"),
            Self::ConsumeOtp { .. } => f.write_str("ConsumeOtp { otp: <redacted> }"),
            Self::CheckAead { key_handle, .. } => {
                write!(f, "CheckAead {{ key_handle: {key_handle}, <redacted> }}")
            }
            Self::WrapSecrets { key_handle, .. } => {
                write!(f, "WrapSecrets {{ key_handle: {key_handle}, <redacted> }}")
            }
            Self::HsmUnlock { .. } => f.write_str("HsmUnlock { <redacted> }"),
            Self::CountersExport => f.write_str("CountersExport"),
            Self::CountersMerge { records } => {
                write!(f, "CountersMerge {{ {} records }}", records.len())
            }
            Self::CountersReset {
                public_id, aeads, ..
            } => write!(
                f,
                "CountersReset {{ public_id: {public_id:?}, {} AEADs }}",
                aeads.len()
            ),
        }
    }
}

mod kind {
    pub(crate) const VERIFY: u8 = 0x01;
    pub(crate) const HAS_USER: u8 = 0x02;
    pub(crate) const STATUS: u8 = 0x10;
    pub(crate) const DECRYPT: u8 = 0x11;
    pub(crate) const CONSUME_OTP: u8 = 0x12;
    pub(crate) const WRAP_SECRETS: u8 = 0x13;
    pub(crate) const COUNTERS_EXPORT: u8 = 0x14;
    pub(crate) const COUNTERS_MERGE: u8 = 0x15;
    pub(crate) const CHECK_AEAD: u8 = 0x16;
    pub(crate) const HSM_UNLOCK: u8 = 0x17;
    pub(crate) const COUNTERS_RESET: u8 = 0x18;

    pub(crate) const VERDICT: u8 = 0x01;
    pub(crate) const FAILED: u8 = 0x02;
    pub(crate) const PROTOCOL_ERROR: u8 = 0x03;
    pub(crate) const STATUS_INFO: u8 = 0x10;
    pub(crate) const DECRYPTED: u8 = 0x11;
    pub(crate) const CONSUMED: u8 = 0x12;
    pub(crate) const WRAPPED: u8 = 0x13;
    pub(crate) const COUNTERS: u8 = 0x14;
    pub(crate) const MERGED: u8 = 0x15;
    pub(crate) const RESET: u8 = 0x16;
}

impl Request {
    /// Whether only root may send it.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Verify { .. } | Self::HasUser { .. } => false,
            Self::Status
            | Self::Decrypt { .. }
            | Self::ConsumeOtp { .. }
            | Self::WrapSecrets { .. }
            | Self::CheckAead { .. }
            | Self::HsmUnlock { .. }
            | Self::CountersExport
            | Self::CountersMerge { .. }
            | Self::CountersReset { .. } => true,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Verify { .. } => "verify",
            Self::HasUser { .. } => "has-user",
            Self::Status => "status",
            Self::Decrypt { .. } => "decrypt",
            Self::ConsumeOtp { .. } => "consume-otp",
            Self::WrapSecrets { .. } => "wrap-secrets",
            Self::CheckAead { .. } => "check-aead",
            Self::HsmUnlock { .. } => "hsm-unlock",
            Self::CountersExport => "counters-export",
            Self::CountersMerge { .. } => "counters-merge",
            Self::CountersReset { .. } => "counters-reset",
        }
    }

    /// The message body (without the frame header). Wiped on drop, as it
    /// may carry an OTP or secrets.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        match self {
            Self::Verify { user, otp } => {
                w.u8(kind::VERIFY);
                w.str(user);
                w.str(otp);
            }
            Self::HasUser { user } => {
                w.u8(kind::HAS_USER);
                w.str(user);
            }
            Self::Status => w.u8(kind::STATUS),
            Self::Decrypt { otp } => {
                w.u8(kind::DECRYPT);
                w.str(otp);
            }
            Self::ConsumeOtp { otp } => {
                w.u8(kind::CONSUME_OTP);
                w.str(otp);
            }
            Self::WrapSecrets {
                key_handle,
                nonce,
                secrets,
            } => {
                w.u8(kind::WRAP_SECRETS);
                w.u32(*key_handle);
                w.raw(nonce);
                w.raw(&secrets[..]);
            }
            Self::CheckAead {
                key_handle,
                nonce,
                aead,
            } => {
                w.u8(kind::CHECK_AEAD);
                w.u32(*key_handle);
                w.raw(nonce);
                w.raw(aead);
            }
            Self::HsmUnlock { master_key, otp } => {
                w.u8(kind::HSM_UNLOCK);
                w.bytes(master_key);
                w.str(otp);
            }
            Self::CountersExport => w.u8(kind::COUNTERS_EXPORT),
            Self::CountersMerge { records } => {
                w.u8(kind::COUNTERS_MERGE);
                write_records(&mut w, records);
            }
            Self::CountersReset {
                public_id,
                aeads,
                reason,
            } => {
                w.u8(kind::COUNTERS_RESET);
                w.str(public_id);
                write_fingerprints(&mut w, aeads);
                w.str(reason);
            }
        }
        Zeroizing::new(w.into_inner())
    }

    /// Decodes a message body. Total: any bytes give a request or an error.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let req = match r.u8("kind")? {
            kind::VERIFY => Self::Verify {
                user: r.str("user")?.to_owned(),
                otp: Zeroizing::new(r.str("otp")?.to_owned()),
            },
            kind::HAS_USER => Self::HasUser {
                user: r.str("user")?.to_owned(),
            },
            kind::STATUS => Self::Status,
            kind::DECRYPT => Self::Decrypt {
                otp: Zeroizing::new(r.str("otp")?.to_owned()),
            },
            kind::CONSUME_OTP => Self::ConsumeOtp {
                otp: Zeroizing::new(r.str("otp")?.to_owned()),
            },
            kind::WRAP_SECRETS => Self::WrapSecrets {
                key_handle: r.u32("key_handle")?,
                nonce: r.array("nonce")?,
                secrets: Zeroizing::new(r.array("secrets")?),
            },
            kind::CHECK_AEAD => Self::CheckAead {
                key_handle: r.u32("key_handle")?,
                nonce: r.array("nonce")?,
                aead: r.array("aead")?,
            },
            kind::HSM_UNLOCK => Self::HsmUnlock {
                master_key: Zeroizing::new(r.bytes("master_key")?.to_vec()),
                otp: Zeroizing::new(r.str("otp")?.to_owned()),
            },
            kind::COUNTERS_EXPORT => Self::CountersExport,
            kind::COUNTERS_MERGE => Self::CountersMerge {
                records: read_records(&mut r)?,
            },
            kind::COUNTERS_RESET => {
                let public_id = r.str("public_id")?.to_owned();
                let aeads = read_fingerprints(&mut r)?;
                Self::CountersReset {
                    public_id,
                    aeads,
                    reason: r.str("reason")?.to_owned(),
                }
            }
            other => return Err(DecodeError::UnknownKind { kind: other }),
        };
        r.finish()?;
        Ok(req)
    }
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The answer to `Verify` and `HasUser`: a status word. For `HasUser`,
    /// `OK` means "has a line".
    Verdict {
        /// The word.
        status: Status,
    },
    /// A request that failed, with a reason for the operator (never a
    /// secret). A refusal: its status is never `OK` — a `Failed` with `OK`
    /// does not decode ([`DecodeError::FailedWithOk`]), so only a
    /// `Verdict` can let a user in. Never build one with `OK`: its bytes
    /// would be refused by every client.
    Failed {
        /// The word (`DENIED`, `BACKEND_ERROR`, …), never `OK`.
        status: Status,
        /// Why.
        message: String,
    },
    /// The request could not be read (bad frame, version, size).
    ProtocolError {
        /// Why.
        message: String,
    },
    /// `Status`: each part's health and the daemon's numbers.
    StatusInfo {
        /// The report (boxed: it is the largest answer by far).
        report: Box<StatusReport>,
    },
    /// `Decrypt`: YK-KSM's answer line, and the public id if the OTP had one.
    Decrypted {
        /// `OK counter=…` or `ERR …`.
        line: String,
        /// Public id (may be empty).
        public_id: String,
    },
    /// `ConsumeOtp`.
    Consumed {
        /// `OK`, `BAD_OTP`, `REPLAYED_OTP`, `NO_SUCH_KEY`, `BACKEND_ERROR`.
        status: Status,
        /// The OTP's public id (empty if it did not parse).
        public_id: String,
        /// The counter recorded (0 unless `OK`).
        counter: u16,
        /// The session use recorded (0 unless `OK`).
        session_use: u8,
    },
    /// `WrapSecrets`: the AEAD.
    Wrapped {
        /// 30 bytes.
        aead: [u8; AEAD_LEN],
    },
    /// `CountersExport`.
    Counters {
        /// Every record.
        records: Vec<CounterRecord>,
    },
    /// `CountersMerge`.
    Merged {
        /// Records that changed what a login reads: a higher generation,
        /// higher counters, or more bound AEADs (or a new row).
        raised: u32,
        /// Records at or below what the daemon had.
        unchanged: u32,
    },
    /// `CountersReset`: the key's new generation.
    Reset {
        /// The generation now in force.
        generation: u32,
        /// How many AEADs it is bound to.
        aeads: u32,
    },
}

impl Response {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Self::Verdict { status } => {
                w.u8(kind::VERDICT);
                w.u8(status.code());
            }
            Self::Failed { status, message } => {
                w.u8(kind::FAILED);
                w.u8(status.code());
                w.str(message);
            }
            Self::ProtocolError { message } => {
                w.u8(kind::PROTOCOL_ERROR);
                w.str(message);
            }
            Self::StatusInfo { report } => {
                w.u8(kind::STATUS_INFO);
                report.write(&mut w);
            }
            Self::Decrypted { line, public_id } => {
                w.u8(kind::DECRYPTED);
                w.str(line);
                w.str(public_id);
            }
            Self::Consumed {
                status,
                public_id,
                counter,
                session_use,
            } => {
                w.u8(kind::CONSUMED);
                w.u8(status.code());
                w.str(public_id);
                w.u16(*counter);
                w.u8(*session_use);
            }
            Self::Wrapped { aead } => {
                w.u8(kind::WRAPPED);
                w.raw(aead);
            }
            Self::Counters { records } => {
                w.u8(kind::COUNTERS);
                write_records(&mut w, records);
            }
            Self::Merged { raised, unchanged } => {
                w.u8(kind::MERGED);
                w.u32(*raised);
                w.u32(*unchanged);
            }
            Self::Reset { generation, aeads } => {
                w.u8(kind::RESET);
                w.u32(*generation);
                w.u32(*aeads);
            }
        }
        w.into_inner()
    }

    /// Decodes a message body. Total.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let status = |r: &mut Reader<'_>| {
            Status::from_code(r.u8("status")?).ok_or(DecodeError::BadValue { field: "status" })
        };
        let resp = match r.u8("kind")? {
            kind::VERDICT => Self::Verdict {
                status: status(&mut r)?,
            },
            kind::FAILED => match status(&mut r)? {
                Status::Ok => return Err(DecodeError::FailedWithOk),
                status => Self::Failed {
                    status,
                    message: r.str("message")?.to_owned(),
                },
            },
            kind::PROTOCOL_ERROR => Self::ProtocolError {
                message: r.str("message")?.to_owned(),
            },
            kind::STATUS_INFO => Self::StatusInfo {
                report: Box::new(StatusReport::read(&mut r)?),
            },
            kind::DECRYPTED => Self::Decrypted {
                line: r.str("line")?.to_owned(),
                public_id: r.str("public_id")?.to_owned(),
            },
            kind::CONSUMED => Self::Consumed {
                status: status(&mut r)?,
                public_id: r.str("public_id")?.to_owned(),
                counter: r.u16("counter")?,
                session_use: r.u8("session_use")?,
            },
            kind::WRAPPED => Self::Wrapped {
                aead: r.array("aead")?,
            },
            kind::COUNTERS => Self::Counters {
                records: read_records(&mut r)?,
            },
            kind::MERGED => Self::Merged {
                raised: r.u32("raised")?,
                unchanged: r.u32("unchanged")?,
            },
            kind::RESET => Self::Reset {
                generation: r.u32("generation")?,
                aeads: r.u32("aeads")?,
            },
            other => return Err(DecodeError::UnknownKind { kind: other }),
        };
        r.finish()?;
        Ok(resp)
    }
}
