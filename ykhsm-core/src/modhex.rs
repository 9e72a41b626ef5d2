//! Modhex, the YubiKey's keyboard-layout-safe hex (yubico-c `yubikey.h`
//! `YUBIKEY_MODHEX_MAP`; each byte is two characters, high nibble first), and
//! the Dvorak repair of typed OTPs.
//!
//! Decoding folds ASCII upper case to lower case and rejects every other
//! character outside the alphabet, naming its position: yubico-c's decoder
//! silently turns unknown characters into zero nibbles, we never do.

use thiserror::Error;

/// The modhex alphabet: the character at index *i* stands for nibble *i*.
pub const ALPHABET: &[u8; 16] = b"cbdefghijklnrtuv";

/// What the modhex letters come out as when a YubiKey types on a US Dvorak
/// layout (the YubiKey types USB key positions), in alphabet order.
pub const DVORAK_ALPHABET: &[u8; 16] = b"jxe.uidchtnbpygk";

/// Why a string is not modhex.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ModhexError {
    /// A character outside the alphabet (after ASCII case folding).
    #[error("character {found:?} at position {position} is not modhex (cbdefghijklnrtuv)")]
    InvalidChar {
        /// Zero-based character position in the input.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// The input has a different number of characters than the field needs.
    #[error("modhex field has {found} characters, expected {expected}")]
    WrongLength {
        /// Characters the field needs.
        expected: usize,
        /// Characters given.
        found: usize,
    },
    /// An odd number of characters cannot be whole bytes.
    #[error("modhex has an odd length ({len} characters)")]
    OddLength {
        /// Length in characters.
        len: usize,
    },
}

/// Nibble value per byte, ASCII upper case folded; 0xff where none.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        let c = ALPHABET[i];
        // i < 16: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let v = i as u8;
        t[c as usize] = v;
        t[c.to_ascii_uppercase() as usize] = v;
        i += 1;
    }
    t
};

/// Nibble value of a modhex character, after ASCII case folding.
fn nibble(c: u8) -> Option<u8> {
    let v = NIBBLE[usize::from(c)];
    (v != 0xff).then_some(v)
}

/// Encodes bytes as modhex, high nibble first.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(ALPHABET[usize::from(b >> 4)]));
        out.push(char::from(ALPHABET[usize::from(b & 0x0f)]));
    }
    out
}

/// Checks that every character is modhex (ASCII case folded), naming the
/// first one that is not. Length is not checked.
pub fn validate(s: &str) -> Result<(), ModhexError> {
    // Fast path: every byte a modhex letter (all ASCII, so one char each).
    if s.bytes().all(|b| nibble(b).is_some()) {
        return Ok(());
    }
    for (position, found) in s.chars().enumerate() {
        let ok = u8::try_from(found).ok().and_then(nibble).is_some();
        if !ok {
            return Err(ModhexError::InvalidChar { position, found });
        }
    }
    Ok(())
}

/// Decodes modhex into bytes. ASCII upper case is folded to lower case; any
/// other character outside the alphabet, or an odd length, is an error.
pub fn decode(s: &str) -> Result<Vec<u8>, ModhexError> {
    validate(s)?;
    // validate() succeeded, so every char is one ASCII byte.
    let raw = s.as_bytes();
    if !raw.len().is_multiple_of(2) {
        return Err(ModhexError::OddLength { len: raw.len() });
    }
    let mut out = Vec::with_capacity(raw.len() / 2);
    for pair in raw.chunks_exact(2) {
        let hi = nibble(pair[0]).unwrap_or(0);
        let lo = nibble(pair[1]).unwrap_or(0);
        out.push(hi << 4 | lo);
    }
    Ok(out)
}

/// Decodes modhex into a fixed-size array; the input must be exactly `2 * N`
/// characters.
pub fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], ModhexError> {
    let v = decode(s)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| ModhexError::WrongLength {
        expected: N * 2,
        found: s.chars().count(),
    })
}

/// Lower-cases a typed OTP and repairs Dvorak input: a string that is modhex
/// (after case folding) is used as it is; only a string that is not modhex,
/// but is made entirely of the Dvorak spellings `jxe.uidchtnbpygk`, is
/// translated. Anything else is returned lower-cased for the caller's modhex
/// check to reject with a position.
///
/// YK-VAL translates every string that matches the Dvorak pattern, which
/// breaks about one valid OTP in 10⁴ (those made only of the twelve shared
/// letters); this function never changes valid modhex.
pub fn normalize_typed(input: &str) -> String {
    let lower = input.to_ascii_lowercase();
    if validate(&lower).is_ok() {
        return lower;
    }
    let all_dvorak = !lower.is_empty() && lower.bytes().all(|c| DVORAK_ALPHABET.contains(&c));
    if !all_dvorak {
        return lower;
    }
    lower
        .bytes()
        .map(|c| {
            let i = DVORAK_ALPHABET.iter().position(|&d| d == c).unwrap_or(0);
            char::from(ALPHABET[i])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_char_names_its_position() {
        assert_eq!(
            decode("cbx"),
            Err(ModhexError::InvalidChar {
                position: 2,
                found: 'x'
            })
        );
        assert_eq!(
            decode("cé"),
            Err(ModhexError::InvalidChar {
                position: 1,
                found: 'é'
            })
        );
    }

    #[test]
    fn upper_case_folds() {
        assert_eq!(decode("CBDE").unwrap(), vec![0x01, 0x23]);
    }

    #[test]
    fn odd_length_is_refused() {
        assert_eq!(decode("cbd"), Err(ModhexError::OddLength { len: 3 }));
    }

    #[test]
    fn dvorak_is_translated_only_when_not_modhex() {
        assert_eq!(normalize_typed("jx"), "cb");
        // "cb" is valid modhex and also matches the Dvorak pattern: unchanged.
        assert_eq!(normalize_typed("cb"), "cb");
        assert_eq!(normalize_typed("CB"), "cb");
    }
}
