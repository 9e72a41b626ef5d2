//! The Yubico OTP: what a YubiKey types, how it splits into a public id and a
//! token, and how a token decrypts and checks (yubico-c's `yubikey.h` and
//! `yktoken.c` define the token; docs/protocol.md, check 2, the accepted
//! form).
//!
//! Nothing here prints a token, an AES key or a uid: the types that hold them
//! have redacting `Debug` implementations and are wiped on drop. A public id
//! is not secret and may be logged.

use std::fmt;

use aes::Aes128;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::counters::Counters;
use crate::crc::{CRC_OK_RESIDUE, crc16};
use crate::modhex::{self, ModhexError};

/// Characters in the token part of an OTP (16 bytes of ciphertext).
pub const TOKEN_CHARS: usize = 32;
/// The longest public id YK-KSM, YK-VAL and pam_yubico accept, in characters.
pub const MAX_PUBLIC_ID_CHARS: usize = 16;
/// The longest OTP ykhsm accepts, in characters.
pub const MAX_OTP_CHARS: usize = MAX_PUBLIC_ID_CHARS + TOKEN_CHARS;
/// Length of a YubiKey's AES key.
pub const KEY_LEN: usize = 16;
/// Length of a YubiKey's private id (uid).
pub const UID_LEN: usize = 6;

/// Why a public id is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PublicIdError {
    /// Not modhex.
    #[error("public id: {0}")]
    NotModhex(ModhexError),
    /// Longer than 16 characters.
    #[error("public id has {len} characters, at most {MAX_PUBLIC_ID_CHARS} are allowed")]
    TooLong {
        /// Length in characters.
        len: usize,
    },
    /// An odd number of characters (not whole bytes).
    #[error("public id has an odd number of characters ({len})")]
    OddLength {
        /// Length in characters.
        len: usize,
    },
    /// Empty where a key's id is needed ([`PublicId::parse_canonical`]).
    #[error("the public id is empty")]
    Empty,
    /// An upper-case modhex letter where ids are written in lower case
    /// ([`PublicId::parse_canonical`]).
    #[error(
        "public id: character {found:?} at position {position} is upper case; write it in lower case"
    )]
    UpperCase {
        /// Zero-based character position.
        position: usize,
        /// The character.
        found: char,
    },
}

/// A YubiKey's public id: 0 to 16 lower-case modhex characters, even length.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicId(String);

impl PublicId {
    /// Parses a public id, folding ASCII upper case: 0 to 16 modhex
    /// characters of even length (whole bytes).
    pub fn parse(s: &str) -> Result<Self, PublicIdError> {
        let len = s.chars().count();
        if len > MAX_PUBLIC_ID_CHARS {
            return Err(PublicIdError::TooLong { len });
        }
        modhex::validate(s).map_err(PublicIdError::NotModhex)?;
        if !len.is_multiple_of(2) {
            return Err(PublicIdError::OddLength { len });
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// Parses a public id as ykhsm writes one (`ykadmin enroll` into the
    /// authfile): 2 to 16 lower-case modhex characters, an even number of
    /// them. [`PublicId::parse`] reads what others wrote, folding upper
    /// case and taking the empty id of a bare token; this one refuses both,
    /// the first bad character named by position.
    pub fn parse_canonical(s: &str) -> Result<Self, PublicIdError> {
        if s.is_empty() {
            return Err(PublicIdError::Empty);
        }
        let lower = |c: char| u8::try_from(c).is_ok_and(|b| modhex::ALPHABET.contains(&b));
        if let Some((position, found)) = s.chars().enumerate().find(|&(_, c)| !lower(c)) {
            return Err(if lower(found.to_ascii_lowercase()) {
                PublicIdError::UpperCase { position, found }
            } else {
                PublicIdError::NotModhex(ModhexError::InvalidChar { position, found })
            });
        }
        Self::parse(s)
    }

    /// The id as modhex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's raw bytes (0 to 8).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Validated at construction: cannot fail.
        modhex::decode(&self.0).unwrap_or_default()
    }

    /// Length in characters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the id is empty (an OTP of the bare 32-character token).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicId({:?})", self.0)
    }
}

/// Why a typed string is not an OTP. Messages never contain the OTP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OtpError {
    /// Nothing was typed.
    #[error("the OTP is empty")]
    Empty,
    /// Shorter than the 32-character token.
    #[error("the OTP is {len} bytes long, shorter than the {TOKEN_CHARS}-character token")]
    TooShort {
        /// Length in bytes of the input.
        len: usize,
    },
    /// Longer than a 16-character public id plus the token.
    #[error("the OTP is {len} bytes long, longer than the {MAX_OTP_CHARS} characters allowed")]
    TooLong {
        /// Length in bytes of the input.
        len: usize,
    },
    /// A character that is neither modhex nor (for the whole string) Dvorak.
    #[error("the OTP has a character at position {position} that is not modhex")]
    NotModhex {
        /// Zero-based character position.
        position: usize,
    },
    /// The part before the token has an odd number of characters.
    #[error("the OTP's public id has an odd number of characters ({len})")]
    OddPublicId {
        /// Length of the public id in characters.
        len: usize,
    },
}

/// The 16-byte ciphertext of an OTP: one AES-128 block. Wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Token([u8; 16]);

impl Token {
    /// Wraps 16 ciphertext bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The ciphertext bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The token as 32 modhex characters.
    pub fn to_modhex(&self) -> Zeroizing<String> {
        Zeroizing::new(modhex::encode(&self.0))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A parsed OTP: public id and token.
#[derive(Clone, PartialEq, Eq)]
pub struct Otp {
    public_id: PublicId,
    token: Token,
}

impl Otp {
    /// Parses what a YubiKey typed: ASCII case is folded and Dvorak input
    /// repaired (only when the input is not already modhex), then the last
    /// 32 characters are the token and the rest, 0 to 16 characters of even
    /// length, the public id (docs/protocol.md, check 2).
    ///
    /// Lengths are checked before anything is copied, so input of any size
    /// costs at most 48 bytes of work.
    pub fn parse(typed: &str) -> Result<Self, OtpError> {
        let len = typed.len();
        if len == 0 {
            return Err(OtpError::Empty);
        }
        if len < TOKEN_CHARS {
            return Err(OtpError::TooShort { len });
        }
        if len > MAX_OTP_CHARS {
            return Err(OtpError::TooLong { len });
        }
        let text = Zeroizing::new(modhex::normalize_typed(typed));
        if let Err(e) = modhex::validate(&text) {
            let position = match e {
                ModhexError::InvalidChar { position, .. } => position,
                _ => 0,
            };
            return Err(OtpError::NotModhex { position });
        }
        // All ASCII now: byte and character positions agree.
        let split = text.len() - TOKEN_CHARS;
        let (id, token) = text.split_at(split);
        // Modhex and at most 16 characters by now: only the parity can fail.
        let public_id = PublicId::parse(id).map_err(|_| OtpError::OddPublicId { len: id.len() })?;
        let token = modhex::decode_array::<16>(token)
            .map(Token)
            .map_err(|_| OtpError::NotModhex { position: split })?;
        Ok(Self { public_id, token })
    }

    /// Builds an OTP from its parts.
    pub fn new(public_id: PublicId, token: Token) -> Self {
        Self { public_id, token }
    }

    /// The public id (may be logged).
    pub fn public_id(&self) -> &PublicId {
        &self.public_id
    }

    /// The token (never log it).
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The OTP as the YubiKey types it. This is the whole secret: never log it.
    pub fn to_typed_string(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(MAX_OTP_CHARS));
        s.push_str(self.public_id.as_str());
        s.push_str(&self.token.to_modhex());
        s
    }
}

impl fmt::Debug for Otp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otp")
            .field("public_id", &self.public_id)
            .field("token", &self.token)
            .finish()
    }
}

/// A YubiKey's secrets: its AES-128 key and its 6-byte private id. This is
/// the 22-byte plaintext inside a YubiKey AEAD, key then uid (python-pyhsm's
/// `doc/YubiHSM_if.h` `YSM_YUBIKEY_SECRETS`).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct YubiKeySecrets {
    key: [u8; KEY_LEN],
    uid: [u8; UID_LEN],
}

impl YubiKeySecrets {
    /// Length of the AEAD plaintext: key then uid.
    pub const PLAINTEXT_LEN: usize = KEY_LEN + UID_LEN;

    /// Builds the secrets from a key and a uid.
    pub fn new(key: [u8; KEY_LEN], uid: [u8; UID_LEN]) -> Self {
        Self { key, uid }
    }

    /// Reads the 22-byte AEAD plaintext (key || uid).
    pub fn from_plaintext(plaintext: &[u8; Self::PLAINTEXT_LEN]) -> Self {
        // Filled in place: no array outside the wiped struct holds them.
        let mut s = Self {
            key: [0u8; KEY_LEN],
            uid: [0u8; UID_LEN],
        };
        s.key.copy_from_slice(&plaintext[..KEY_LEN]);
        s.uid.copy_from_slice(&plaintext[KEY_LEN..]);
        s
    }

    /// The 22-byte AEAD plaintext (key || uid).
    pub fn to_plaintext(&self) -> Zeroizing<[u8; Self::PLAINTEXT_LEN]> {
        let mut p = Zeroizing::new([0u8; Self::PLAINTEXT_LEN]);
        p[..KEY_LEN].copy_from_slice(&self.key);
        p[KEY_LEN..].copy_from_slice(&self.uid);
        p
    }

    /// The AES key.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The private id.
    pub fn uid(&self) -> &[u8; UID_LEN] {
        &self.uid
    }

    /// Whether both hold the same key and uid, compared in constant time.
    pub fn ct_eq(&self, other: &Self) -> bool {
        bool::from(self.key.ct_eq(&other.key) & self.uid.ct_eq(&other.uid))
    }

    /// Decrypts a token and checks it the way a YubiHSM's OTP-decode command
    /// does: CRC residue 0xf0b8 and uid equal (constant time). Only the
    /// counters leave; the plaintext is wiped.
    pub fn decode(&self, token: &Token) -> Result<OtpCounters, OtpInvalid> {
        let plain = self.decrypt(token);
        let uid_ok = plain.0[..UID_LEN].ct_eq(&self.uid);
        let crc_ok = plain.crc_ok();
        if bool::from(uid_ok) && crc_ok {
            Ok(plain.counters())
        } else {
            Err(OtpInvalid)
        }
    }

    /// Decrypts a token without checking it (diagnostics and tests).
    pub fn decrypt(&self, token: &Token) -> OtpPlaintext {
        aes128_ecb_decrypt(&self.key, token.as_bytes())
    }

    /// Encrypts a plaintext block into a token (the YubiKey's side; used by
    /// test generators and the emulator).
    pub fn encrypt(&self, plaintext: &OtpPlaintext) -> Token {
        Token(aes128_ecb_encrypt(&self.key, &plaintext.0))
    }
}

impl fmt::Debug for YubiKeySecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("YubiKeySecrets(<redacted>)")
    }
}

/// The token did not decrypt to a valid OTP for this key: CRC or uid wrong
/// (the YubiHSM's `YSM_OTP_INVALID`; YK-KSM's `ERR Corrupt OTP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the OTP does not decrypt to a valid token for this key (CRC or private id mismatch)")]
pub struct OtpInvalid;

/// Decrypts one AES-128 block in ECB mode, no IV, no padding (the token is
/// one block).
///
/// Built so that nothing secret is left behind: the key reaches the cipher
/// by reference (no temporary copy of it), the cipher's key schedule is
/// wiped when it drops (`aes`'s `zeroize` feature), and the ciphertext is
/// copied into the [`OtpPlaintext`] that is returned and decrypted there,
/// so the plaintext never exists outside a type wiped on drop.
pub fn aes128_ecb_decrypt(key: &[u8; KEY_LEN], block: &[u8; 16]) -> OtpPlaintext {
    let cipher = Aes128::new(key.into());
    let mut plain = OtpPlaintext(*block);
    cipher.decrypt_block((&mut plain.0).into());
    plain
}

/// Encrypts one AES-128 block in ECB mode. The key reaches the cipher by
/// reference and the block is encrypted in place in the array returned, so
/// no copy of the key or of the plaintext is left behind.
pub fn aes128_ecb_encrypt(key: &[u8; KEY_LEN], block: &[u8; 16]) -> [u8; 16] {
    let cipher = Aes128::new(key.into());
    let mut out = *block;
    cipher.encrypt_block((&mut out).into());
    out
}

/// A decrypted token, 16 bytes, fields little-endian (yubico-c `yubikey.h`):
/// uid (bytes 0–5), usage counter (6–7), timestamp low (8–9) and high (10),
/// session use (11), random (12–13), CRC (14–15).
/// Wiped on drop; `Debug` shows the counters only.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct OtpPlaintext([u8; 16]);

/// The fields a YubiKey puts in a token, for building one.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct OtpFields {
    /// Private id.
    pub uid: [u8; UID_LEN],
    /// Raw 16-bit usage counter (bit 15 = caps-lock flag).
    pub use_counter: u16,
    /// Timestamp, low 16 bits.
    pub ts_low: u16,
    /// Timestamp, high 8 bits.
    pub ts_high: u8,
    /// Session use counter.
    pub session_use: u8,
    /// Random bytes.
    pub random: u16,
}

impl fmt::Debug for OtpFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpFields")
            .field("uid", &"<redacted>")
            .field("use_counter", &self.use_counter)
            .field("ts_low", &self.ts_low)
            .field("ts_high", &self.ts_high)
            .field("session_use", &self.session_use)
            .field("random", &self.random)
            .finish()
    }
}

impl OtpPlaintext {
    /// Wraps 16 decrypted bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Builds a plaintext with its CRC: the stored value is the ones'
    /// complement of the CRC over bytes 0..14, little-endian (so the CRC
    /// over all 16 bytes gives [`CRC_OK_RESIDUE`]).
    pub fn from_fields(f: &OtpFields) -> Self {
        // Built in place: no unwiped array holds the uid.
        let mut p = Self([0u8; 16]);
        let b = &mut p.0;
        b[..6].copy_from_slice(&f.uid);
        b[6..8].copy_from_slice(&f.use_counter.to_le_bytes());
        b[8..10].copy_from_slice(&f.ts_low.to_le_bytes());
        b[10] = f.ts_high;
        b[11] = f.session_use;
        b[12..14].copy_from_slice(&f.random.to_le_bytes());
        let crc = !crc16(&b[..14]);
        b[14..16].copy_from_slice(&crc.to_le_bytes());
        p
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Private id, bytes 0..6.
    pub fn uid(&self) -> &[u8] {
        &self.0[..UID_LEN]
    }

    /// Raw usage counter, bytes 6..8 LE, caps-lock bit included.
    pub fn use_counter(&self) -> u16 {
        u16::from_le_bytes([self.0[6], self.0[7]])
    }

    /// Timestamp low 16 bits, bytes 8..10 LE.
    pub fn ts_low(&self) -> u16 {
        u16::from_le_bytes([self.0[8], self.0[9]])
    }

    /// Timestamp high 8 bits, byte 10.
    pub fn ts_high(&self) -> u8 {
        self.0[10]
    }

    /// Session use, byte 11.
    pub fn session_use(&self) -> u8 {
        self.0[11]
    }

    /// Random, bytes 12..14 LE.
    pub fn random(&self) -> u16 {
        u16::from_le_bytes([self.0[12], self.0[13]])
    }

    /// Stored CRC, bytes 14..16 LE.
    pub fn crc(&self) -> u16 {
        u16::from_le_bytes([self.0[14], self.0[15]])
    }

    /// Whether the CRC over all 16 bytes leaves the residue 0xf0b8.
    pub fn crc_ok(&self) -> bool {
        crc16(&self.0) == CRC_OK_RESIDUE
    }

    /// The counter fields, as an OTP-decode answer carries them.
    pub fn counters(&self) -> OtpCounters {
        OtpCounters {
            use_counter: self.use_counter(),
            session_use: self.session_use(),
            ts_high: self.ts_high(),
            ts_low: self.ts_low(),
        }
    }
}

impl fmt::Debug for OtpPlaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpPlaintext")
            .field("counters", &self.counters())
            .field("crc_ok", &self.crc_ok())
            .finish_non_exhaustive()
    }
}

/// What a decoded OTP tells the verifier: the fields a YubiHSM 1 returns from
/// OTP decode (`YSM_AEAD_YUBIKEY_OTP_DECODE`, command 0x06). No key, no uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OtpCounters {
    /// Raw 16-bit usage counter; bit 15 is the caps-lock flag.
    pub use_counter: u16,
    /// 8-bit session use counter.
    pub session_use: u8,
    /// Timestamp, high 8 bits.
    pub ts_high: u8,
    /// Timestamp, low 16 bits.
    pub ts_low: u16,
}

impl OtpCounters {
    /// The pair compared for freshness: `use_counter & 0x7fff`, session use.
    pub fn counters(&self) -> Counters {
        Counters::from_raw(self.use_counter, self.session_use)
    }

    /// Whether the OTP was triggered by caps lock (bit 15). Reported, never
    /// compared.
    pub fn capslock(&self) -> bool {
        self.use_counter & 0x8000 != 0
    }

    /// The 24-bit timestamp.
    pub fn timestamp(&self) -> u32 {
        u32::from(self.ts_high) << 16 | u32::from(self.ts_low)
    }

    /// YK-KSM's success line, without the newline:
    /// `OK counter=%04x low=%04x high=%02x use=%02x`, counter raw (bit 15 kept).
    pub fn ksm_answer(&self) -> String {
        format!(
            "OK counter={:04x} low={:04x} high={:02x} use={:02x}",
            self.use_counter, self.ts_low, self.ts_high, self.session_use
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_public_ids_are_lower_case_and_not_empty() {
        for id in ["cb", "ccccccdbjrgf", "vvvvvvvvvvvvvvvv"] {
            assert_eq!(PublicId::parse_canonical(id).unwrap().as_str(), id);
        }
        let refused = |id: &str| PublicId::parse_canonical(id).unwrap_err();
        assert_eq!(refused(""), PublicIdError::Empty);
        assert_eq!(
            refused("ccccccDbjrgf"),
            PublicIdError::UpperCase {
                position: 6,
                found: 'D'
            }
        );
        assert!(refused("CCCCCCCCCCCB").to_string().contains("lower case"));
        assert!(matches!(
            refused("ccccccccccc0"),
            PublicIdError::NotModhex(ModhexError::InvalidChar {
                position: 11,
                found: '0'
            })
        ));
        assert_eq!(refused("ccc"), PublicIdError::OddLength { len: 3 });
        assert_eq!(refused(&"c".repeat(18)), PublicIdError::TooLong { len: 18 });
        // What others wrote is still read as before.
        assert_eq!(
            PublicId::parse("CCCCCCCCCCCB").unwrap().as_str(),
            "cccccccccccb"
        );
        assert!(PublicId::parse("").unwrap().is_empty());
    }

    #[test]
    fn lengths_are_checked_before_copying() {
        assert_eq!(Otp::parse(""), Err(OtpError::Empty));
        assert_eq!(Otp::parse("c"), Err(OtpError::TooShort { len: 1 }));
        let huge = "c".repeat(1 << 20);
        assert_eq!(Otp::parse(&huge), Err(OtpError::TooLong { len: 1 << 20 }));
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::from_bytes([0xab; 16]);
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        let s = YubiKeySecrets::new([1; 16], [2; 6]);
        assert!(!format!("{s:?}").contains('1'));
    }

    /// Compiles only if `T` wipes itself when dropped.
    fn wiped_on_drop<T: ZeroizeOnDrop>() {}

    /// Compiles only if `f` hands back a type that wipes itself on drop.
    fn returns_wiped<T: ZeroizeOnDrop>(_f: fn(&[u8; KEY_LEN], &[u8; 16]) -> T) {}

    /// Issue 12, item 9: ECB decryption leaves no unwiped copy behind. The
    /// key goes to the cipher by reference (no temporary holds it), the
    /// cipher's key schedule is wiped on drop (`aes`'s `zeroize` feature),
    /// and the plaintext is decrypted in place inside the wiped type it is
    /// returned in, so no plain array of it ever exists. Before the fix
    /// this did not compile: the result was a `[u8; 16]`.
    #[test]
    fn ecb_decryption_leaves_only_wiped_values() {
        wiped_on_drop::<Aes128>();
        returns_wiped(aes128_ecb_decrypt);
        let key = [7u8; KEY_LEN];
        let block = [9u8; 16];
        let plain = aes128_ecb_decrypt(&key, &block);
        assert_eq!(aes128_ecb_encrypt(&key, plain.as_bytes()), block);
    }

    #[test]
    fn generated_plaintext_has_a_good_crc() {
        let p = OtpPlaintext::from_fields(&OtpFields {
            uid: [1, 2, 3, 4, 5, 6],
            use_counter: 7,
            ..OtpFields::default()
        });
        assert!(p.crc_ok());
    }
}
