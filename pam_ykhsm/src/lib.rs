//! pam_ykhsm.so: asks ykhsmd whether a user may log in with a YubiKey OTP.
//!
//! `auth required pam_ykhsm.so [socket=PATH] [debug] [nullok]
//! [use_first_pass|try_first_pass] [verbose_otp] [timeout=SECONDS]
//! [token_id_length=N]` (pam_ykhsm(8)). The module holds no secret and
//! opens nothing but the daemon's socket; it keeps no state between calls.
//! Every path that is not the daemon's `OK` returns something other than
//! `PAM_SUCCESS`: the answer must come from a server running as root
//! (checked with `SO_PEERCRED` before the user name or the OTP is sent),
//! and only its `Verdict` of `OK` lets the user in.
//!
//! No log line carries the OTP's token: of the OTP only its public id is
//! logged, and a user name shaped like an OTP (typed at the login prompt)
//! is withheld, by the daemon's rule ([`ykhsm_proto::user_name`]).
#![deny(unsafe_code)]
// kanidm's list for its PAM and client crates, outside tests: a panic
// inside sshd's PAM stack is at best PAM_ABORT (pam-bindings runs every
// hook under catch_unwind), so no unwrap, expect, panic, unreachable, todo
// or unimplemented; and arguments taken the cheapest way. (kanidm's
// await_holding_lock is left out: nothing here is async.)
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::needless_pass_by_value,
        clippy::trivially_copy_pass_by_ref
    )
)]

pub mod args;
mod ffi;
pub mod verdict;

use std::ffi::CStr;

use pam::constants::{PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON, PamFlag, PamResultCode};
use pam::conv::Conv;
use pam::items::AuthTok;
use pam::module::{PamHandle, PamHooks};
use ykhsm_proto::{ClientError, Request, ServerUid, Status, Zeroizing, call, user_name};

use crate::args::{Args, FirstPass};
use crate::verdict::{loggable_public_id, pam_code, split, status_of};

/// The module, for pam-bindings' hooks.
#[derive(Debug)]
pub(crate) struct Module;

impl PamHooks for Module {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        authenticate(pamh, &args)
    }

    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }
}

const LOG_ERR: i32 = libc::LOG_ERR;
const LOG_WARNING: i32 = libc::LOG_WARNING;
const LOG_NOTICE: i32 = libc::LOG_NOTICE;
const LOG_INFO: i32 = libc::LOG_INFO;
const LOG_DEBUG: i32 = libc::LOG_DEBUG;

fn log(priority: i32, message: &str) {
    ffi::syslog(priority, &format!("pam_ykhsm: {message}"));
}

/// A user name fit for a log line: withheld if it looks like an OTP (the
/// daemon's rule), else at most 64 characters, control characters
/// replaced. Every line that names the user goes through here.
fn shown(user: &str) -> String {
    if user_name::looks_like_otp(user) {
        return user_name::WITHHELD.to_owned();
    }
    user.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn authenticate(pamh: &mut PamHandle, words: &[&CStr]) -> PamResultCode {
    let Ok(words) = words
        .iter()
        .map(|w| w.to_str())
        .collect::<Result<Vec<_>, _>>()
    else {
        log(LOG_ERR, "an argument is not UTF-8; refusing");
        return PamResultCode::PAM_AUTHINFO_UNAVAIL;
    };
    let args = match args::parse(words) {
        Ok(a) => a,
        Err(e) => {
            log(
                LOG_ERR,
                &format!("bad argument {e}; refusing every login until the PAM line is fixed"),
            );
            return PamResultCode::PAM_AUTHINFO_UNAVAIL;
        }
    };
    for i in &args.ignored {
        log(LOG_WARNING, &format!("ignored argument {i}"));
    }
    let user = match pamh.get_user(None) {
        Ok(u) => u,
        Err(code) => return not_success(code),
    };
    // 1. Does the user have a line? (No prompt for a user without one.)
    match ask(&args, &Request::HasUser { user: user.clone() }) {
        Ok(Status::Ok) => {}
        Ok(status) => {
            let code = pam_code(status, args.nullok);
            log(
                if status == Status::NoKeysForUser {
                    LOG_INFO
                } else {
                    LOG_NOTICE
                },
                &format!(
                    "user {}: {status} before the prompt: {code:?}",
                    shown(&user)
                ),
            );
            return code;
        }
        Err(e) => return unavailable(&user, &e),
    }
    // 2. The OTP: from the stack, or asked for.
    let typed = match obtain(pamh, &args, &user) {
        Ok(t) => t,
        Err(code) => return not_success(code),
    };
    let otp_len = args.token_id_length + 32;
    let (otp, password) = split(&typed, otp_len);
    if let Some(password) = password
        && let Err(code) = ffi::set_authtok(pamh, password)
    {
        log(
            LOG_ERR,
            &format!(
                "user {}: cannot pass the password on: {code:?}",
                shown(&user)
            ),
        );
        return not_success(code);
    }
    let pubid = loggable_public_id(otp).unwrap_or("-").to_owned();
    let Ok(otp) = std::str::from_utf8(otp) else {
        log(
            LOG_NOTICE,
            &format!("user {}: the OTP is not text: BAD_OTP", shown(&user)),
        );
        return PamResultCode::PAM_AUTH_ERR;
    };
    // 3. The daemon's verdict.
    let request = Request::Verify {
        user: user.clone(),
        otp: Zeroizing::new(otp.to_owned()),
    };
    drop(typed);
    match ask(&args, &request) {
        Ok(status) => {
            let code = pam_code(status, args.nullok);
            let priority = if status == Status::Ok {
                LOG_INFO
            } else {
                LOG_NOTICE
            };
            log(
                priority,
                &format!("user {} pubid={pubid}: {status}", shown(&user)),
            );
            if args.debug {
                log(LOG_DEBUG, &format!("user {}: {code:?}", shown(&user)));
            }
            code
        }
        Err(e) => unavailable(&user, &e),
    }
}

/// The typed input: `PAM_AUTHTOK` with `use_first_pass`/`try_first_pass`,
/// else one prompt through the conversation.
fn obtain(
    pamh: &mut PamHandle,
    args: &Args,
    user: &str,
) -> Result<Zeroizing<Vec<u8>>, PamResultCode> {
    if args.first_pass != FirstPass::No {
        let stacked = pamh
            .get_item::<AuthTok>()?
            .map(|t| Zeroizing::new(t.as_bytes().to_vec()));
        match (stacked, args.first_pass) {
            (Some(t), _) => return Ok(t),
            (None, FirstPass::Use) => {
                log(
                    LOG_NOTICE,
                    &format!(
                        "user {}: use_first_pass and no password on the stack",
                        shown(user)
                    ),
                );
                return Err(PamResultCode::PAM_AUTH_ERR);
            }
            (None, _) => {}
        }
    }
    let Some(conv) = pamh.get_item::<Conv>()? else {
        return Err(PamResultCode::PAM_CONV_ERR);
    };
    let style = if args.verbose_otp {
        PAM_PROMPT_ECHO_ON
    } else {
        PAM_PROMPT_ECHO_OFF
    };
    // pam_yubico's prompt, word for word.
    let prompt = format!("YubiKey for `{user}': ");
    match conv.send(style, &prompt)? {
        Some(answer) => Ok(Zeroizing::new(answer.as_bytes().to_vec())),
        None => Err(PamResultCode::PAM_AUTH_ERR),
    }
}

/// Asks the daemon — a server running as root, or nothing is sent —
/// within the timeout; the status word of its answer.
fn ask(args: &Args, request: &Request) -> Result<Status, ClientError> {
    let response = call(&args.socket, ServerUid::ROOT, request, args.timeout)?;
    Ok(status_of(&response))
}

fn unavailable(user: &str, e: &ClientError) -> PamResultCode {
    let what = match e {
        // Someone else's server on the socket path: say so, with the path
        // and its uid (in the error's text).
        ClientError::WrongServer { .. } | ClientError::PeerCredentials { .. } => {
            "refusing the server"
        }
        _ => "no answer from ykhsmd",
    };
    log(
        LOG_ERR,
        &format!("user {}: {what}: {e}: PAM_AUTHINFO_UNAVAIL", shown(user)),
    );
    PamResultCode::PAM_AUTHINFO_UNAVAIL
}

/// An error code from PAM itself, never `PAM_SUCCESS`.
fn not_success(code: PamResultCode) -> PamResultCode {
    if code == PamResultCode::PAM_SUCCESS {
        PamResultCode::PAM_AUTH_ERR
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn an_otp_typed_as_the_user_name_is_withheld() {
        let otp = "ccccccdbjrgfkljjucgrvddcgfhldbibefkvdvijhhjf";
        assert_eq!(shown(otp), "<withheld:looks-like-an-otp>");
        assert_eq!(
            shown(&otp.to_ascii_uppercase()),
            "<withheld:looks-like-an-otp>"
        );
        assert_eq!(shown("alice"), "alice");
        assert_eq!(shown("a\nb"), "a?b");
    }
}
