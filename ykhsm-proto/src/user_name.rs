//! What of a user name may be logged. Someone who types their OTP at a
//! login prompt makes a whole, unused OTP the user name; every program that
//! logs a user name (the daemon, the PAM module) withholds such a name with
//! this one rule, so no log line carries the token.
//!
//! The rule is the OTP parser's (`ykhsm_core::otp::Otp::parse`, which this
//! crate cannot link: it brings AES into the PAM module): 32 to 48
//! characters, an even number, all modhex after ASCII case folding or all
//! of the Dvorak spellings of modhex (docs/protocol.md, check 2).
//! `ykhsmd/tests/pam.rs` checks that the two agree.

/// What a log line shows instead of a user name shaped like an OTP.
pub const WITHHELD: &str = "<withheld:looks-like-an-otp>";

/// The shortest OTP: the 32-character token alone.
const MIN_OTP_CHARS: usize = 32;
/// The longest OTP: a 16-character public id and the token.
const MAX_OTP_CHARS: usize = 48;

/// The modhex letters, either case.
fn is_modhex(c: u8) -> bool {
    b"cbdefghijklnrtuv".contains(&c.to_ascii_lowercase())
}

/// What the modhex letters come out as on a US Dvorak layout, either case.
fn is_dvorak_modhex(c: u8) -> bool {
    b"jxe.uidchtnbpygk".contains(&c.to_ascii_lowercase())
}

/// Whether `name` would be accepted as an OTP: then it must not be logged.
pub fn looks_like_otp(name: &str) -> bool {
    let b = name.as_bytes();
    (MIN_OTP_CHARS..=MAX_OTP_CHARS).contains(&b.len())
        && b.len().is_multiple_of(2)
        && (b.iter().all(|&c| is_modhex(c)) || b.iter().all(|&c| is_dvorak_modhex(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTP: &str = "ccccccdbjrgfkljjucgrvddcgfhldbibefkvdvijhhjf";

    #[test]
    fn an_otp_in_any_spelling_looks_like_one() {
        assert!(looks_like_otp(OTP));
        assert!(looks_like_otp(&OTP.to_ascii_uppercase()), "caps lock");
        assert!(looks_like_otp(&OTP[12..]), "the token alone");
        assert!(looks_like_otp(&format!("cccc{OTP}")), "a 16-character id");
        let dvorak: String = OTP
            .bytes()
            .map(|c| {
                let i = b"cbdefghijklnrtuv".iter().position(|&m| m == c).unwrap();
                char::from(b"jxe.uidchtnbpygk"[i])
            })
            .collect();
        assert!(looks_like_otp(&dvorak), "typed on Dvorak: {dvorak}");
    }

    #[test]
    fn names_that_no_otp_parser_takes_are_shown() {
        for name in [
            "alice",
            "",
            &OTP[13..],                  // 31 characters
            &format!("cccccc{OTP}"),     // a public id of 18
            &format!("c{OTP}"),          // odd
            &format!("{}x", &OTP[..43]), // one letter not modhex
            &format!("{}.", &OTP[..43]), // modhex and Dvorak mixed
            &format!("{}é", &OTP[..42]), // not ASCII
            &format!("{OTP} "),          // not an OTP as typed
        ] {
            assert!(!looks_like_otp(name), "{name:?}");
        }
    }
}
