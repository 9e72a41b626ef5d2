//! The status words of the daemon's answer (docs/protocol.md, "Status
//! words"), spelled exactly as operators and logs see them.

use std::fmt;
use std::str::FromStr;

/// The daemon's verdict. Only [`Status::Ok`] means "log in".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// All checks passed; the new counters are durable.
    Ok,
    /// Not an OTP, or it does not decrypt for its key (CRC, uid, AEAD).
    BadOtp,
    /// The OTP's counters are not above the last accepted pair.
    ReplayedOtp,
    /// No AEAD for the public id under any configured key handle.
    NoSuchKey,
    /// The public id is not on the user's line of the authfile.
    NotAuthorized,
    /// The user has no line in the authfile.
    NoKeysForUser,
    /// The daemon cannot decide (authfile, AEAD file, backend, database).
    BackendError,
    /// The asking process may not ask this.
    Denied,
    /// The system does not know the user name (NSS has no such user) and
    /// the authfile has no line for it either. Not "a user without keys":
    /// `nullok` never skips it.
    UnknownUser,
}

/// Every status, in wire-code order.
pub const ALL: [Status; 9] = [
    Status::Ok,
    Status::BadOtp,
    Status::ReplayedOtp,
    Status::NoSuchKey,
    Status::NotAuthorized,
    Status::NoKeysForUser,
    Status::BackendError,
    Status::Denied,
    Status::UnknownUser,
];

impl Status {
    /// The word, as operators, logs and docs/protocol.md spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::BadOtp => "BAD_OTP",
            Self::ReplayedOtp => "REPLAYED_OTP",
            Self::NoSuchKey => "NO_SUCH_KEY",
            Self::NotAuthorized => "NOT_AUTHORIZED",
            Self::NoKeysForUser => "NO_KEYS_FOR_USER",
            Self::BackendError => "BACKEND_ERROR",
            Self::Denied => "DENIED",
            Self::UnknownUser => "UNKNOWN_USER",
        }
    }

    /// The byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::BadOtp => 1,
            Self::ReplayedOtp => 2,
            Self::NoSuchKey => 3,
            Self::NotAuthorized => 4,
            Self::NoKeysForUser => 5,
            Self::BackendError => 6,
            Self::Denied => 7,
            Self::UnknownUser => 8,
        }
    }

    /// The status of a wire byte.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a status word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a status word")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of docs/protocol.md, word for word and code for code.
    #[test]
    fn words_are_those_of_the_protocol_document() {
        let words: Vec<&str> = ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            words,
            [
                "OK",
                "BAD_OTP",
                "REPLAYED_OTP",
                "NO_SUCH_KEY",
                "NOT_AUTHORIZED",
                "NO_KEYS_FOR_USER",
                "BACKEND_ERROR",
                "DENIED",
                "UNKNOWN_USER"
            ]
        );
        for s in ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(9), None);
        assert!("ok".parse::<Status>().is_err());
    }
}
