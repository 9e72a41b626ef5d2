//! From the daemon's answer to a PAM code, and the OTP out of what the user
//! typed. No I/O here.

use pam::constants::PamResultCode;
use ykhsm_proto::{Response, Status};

/// The status word of the daemon's answer to `HasUser` or `Verify`. One
/// exhaustive match: only a `Verdict` carries the daemon's decision, so
/// only `Verdict{OK}` gives [`Status::Ok`]; a refusal (`Failed`) keeps its
/// word but never `OK` (the decoder already refuses `Failed{OK}`; this
/// refuses it again), and any other answer means the daemon did not decide.
pub(crate) fn status_of(response: &Response) -> Status {
    match response {
        Response::Verdict { status } => *status,
        Response::Failed {
            status: Status::Ok, ..
        } => Status::BackendError,
        Response::Failed { status, .. } => *status,
        Response::ProtocolError { .. }
        | Response::StatusInfo { .. }
        | Response::Decrypted { .. }
        | Response::Consumed { .. }
        | Response::Wrapped { .. }
        | Response::Counters { .. }
        | Response::Merged { .. }
        | Response::Reset { .. } => Status::BackendError,
    }
}

/// The PAM code for a status word (the table of docs/protocol.md, "The
/// order of the checks"; pam_ykhsm(8), STATUS WORDS). One exhaustive
/// match: only `OK` is `PAM_SUCCESS`, and a new status word cannot be
/// added without deciding its code here.
pub fn pam_code(status: Status, nullok: bool) -> PamResultCode {
    match status {
        Status::Ok => PamResultCode::PAM_SUCCESS,
        Status::NoKeysForUser if nullok => PamResultCode::PAM_IGNORE,
        Status::NoKeysForUser => PamResultCode::PAM_USER_UNKNOWN,
        // A name the system does not know is never "a user without keys":
        // nullok does not skip it.
        Status::UnknownUser => PamResultCode::PAM_USER_UNKNOWN,
        Status::BadOtp
        | Status::ReplayedOtp
        | Status::NoSuchKey
        | Status::NotAuthorized
        | Status::Denied => PamResultCode::PAM_AUTH_ERR,
        Status::BackendError => PamResultCode::PAM_AUTHINFO_UNAVAIL,
    }
}

/// Splits typed input (at the prompt or on the stack) as pam_yubico does:
/// with more than `otp_len` bytes, the OTP is the last `otp_len` and the
/// rest is a password for the next module; otherwise all of it is the
/// OTP. Returns (OTP, password).
pub fn split(input: &[u8], otp_len: usize) -> (&[u8], Option<&[u8]>) {
    if input.len() > otp_len {
        let (password, otp) = input.split_at(input.len() - otp_len);
        (otp, Some(password))
    } else {
        (input, None)
    }
}

/// The characters of a public id, either case.
fn is_modhex(c: u8) -> bool {
    b"cbdefghijklnrtuvCBDEFGHIJKLNRTUV".contains(&c)
}

/// What of an OTP may be logged: its public id (all but the last 32
/// characters), and only if it looks like one — 2 to 16 modhex characters,
/// even length. Anything else (a password typed at the OTP prompt, half an
/// OTP) logs nothing.
pub(crate) fn loggable_public_id(otp: &[u8]) -> Option<&str> {
    let id = otp.get(..otp.len().checked_sub(32)?)?;
    let fits = (2..=16).contains(&id.len()) && id.len().is_multiple_of(2);
    if fits && id.iter().all(|&c| is_modhex(c)) {
        std::str::from_utf8(id).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ykhsm_proto::status::ALL;

    #[test]
    fn only_ok_is_success_with_or_without_nullok() {
        for nullok in [false, true] {
            for s in ALL {
                let code = pam_code(s, nullok);
                assert_eq!(
                    code == PamResultCode::PAM_SUCCESS,
                    s == Status::Ok,
                    "{s} nullok={nullok} -> {code:?}"
                );
            }
        }
    }

    /// Every answer the daemon could give, with every word where it has one.
    fn every_response() -> Vec<Response> {
        let mut all = Vec::new();
        for status in ALL {
            all.push(Response::Verdict { status });
            all.push(Response::Failed {
                status,
                message: String::new(),
            });
            all.push(Response::Consumed {
                status,
                public_id: String::new(),
                counter: 0,
                session_use: 0,
            });
        }
        all.extend([
            Response::ProtocolError {
                message: String::new(),
            },
            Response::StatusInfo {
                report: Box::default(),
            },
            Response::Decrypted {
                line: "OK counter=0001 low=8d40 high=0f use=00".into(),
                public_id: String::new(),
            },
            Response::Wrapped { aead: [0; 30] },
            Response::Counters {
                records: Vec::new(),
            },
            Response::Merged {
                raised: 0,
                unchanged: 0,
            },
        ]);
        all
    }

    #[test]
    fn only_a_verdict_of_ok_is_success() {
        for r in every_response() {
            for nullok in [false, true] {
                let code = pam_code(status_of(&r), nullok);
                assert_eq!(
                    code == PamResultCode::PAM_SUCCESS,
                    r == Response::Verdict { status: Status::Ok },
                    "{r:?} nullok={nullok} -> {code:?}"
                );
            }
        }
        let failed_ok = Response::Failed {
            status: Status::Ok,
            message: String::new(),
        };
        assert_eq!(status_of(&failed_ok), Status::BackendError);
    }

    #[test]
    fn codes_are_those_of_the_check_table() {
        use PamResultCode::*;
        let table = [
            (Status::Denied, PAM_AUTH_ERR),
            (Status::NoKeysForUser, PAM_USER_UNKNOWN),
            (Status::BadOtp, PAM_AUTH_ERR),
            (Status::NotAuthorized, PAM_AUTH_ERR),
            (Status::NoSuchKey, PAM_AUTH_ERR),
            (Status::ReplayedOtp, PAM_AUTH_ERR),
            (Status::BackendError, PAM_AUTHINFO_UNAVAIL),
            (Status::Ok, PAM_SUCCESS),
            (Status::UnknownUser, PAM_USER_UNKNOWN),
        ];
        for (s, code) in table {
            assert_eq!(pam_code(s, false), code, "{s}");
        }
        assert_eq!(pam_code(Status::NoKeysForUser, true), PAM_IGNORE);
        // Only a known user without a line is skipped under nullok.
        for s in ALL.into_iter().filter(|&s| s != Status::NoKeysForUser) {
            assert_ne!(pam_code(s, true), PAM_IGNORE, "{s} under nullok");
        }
    }

    #[test]
    fn split_takes_the_otp_off_the_end() {
        let otp = b"ccccccdbjrgfcccccccccccccccccccccccccccccccc";
        assert_eq!(split(otp, 44), (&otp[..], None));
        let mut both = b"hunter2".to_vec();
        both.extend_from_slice(otp);
        assert_eq!(split(&both, 44), (&otp[..], Some(&b"hunter2"[..])));
        assert_eq!(split(b"short", 44), (&b"short"[..], None));
        assert_eq!(split(b"", 44), (&b""[..], None));
    }

    #[test]
    fn only_a_modhex_public_id_is_loggable() {
        let t = "c".repeat(32);
        assert_eq!(
            loggable_public_id(format!("ccccccdbjrgf{t}").as_bytes()),
            Some("ccccccdbjrgf")
        );
        assert_eq!(loggable_public_id(t.as_bytes()), None, "no id");
        assert_eq!(loggable_public_id(b"short"), None);
        assert_eq!(
            loggable_public_id(format!("hunter2!{t}").as_bytes()),
            None,
            "a password"
        );
        assert_eq!(
            loggable_public_id(format!("ccccccccccccccccccccdbjrgf{t}").as_bytes()),
            None,
            "too long"
        );
        assert_eq!(
            loggable_public_id(format!("ccc{t}").as_bytes()),
            None,
            "odd"
        );
    }
}
