//! pam_ykhsm.so: asks ykhsmd whether a user may log in with a YubiKey OTP.
//!
//! `auth required pam_ykhsm.so [socket=PATH] [debug] [nullok]
//! [use_first_pass|try_first_pass] [verbose_otp] [timeout=SECONDS]
//! [token_id_length=N]` (interface.md). The module holds no secret and
//! opens nothing but the daemon's socket; it keeps no state between calls.
//! Every path that is not the daemon's `OK` returns something other than
//! `PAM_SUCCESS`.
#![deny(unsafe_code)]

pub mod args;
mod ffi;
pub mod verdict;

use std::ffi::CStr;

use pam::constants::{PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON, PamFlag, PamResultCode};
use pam::conv::Conv;
use pam::items::AuthTok;
use pam::module::{PamHandle, PamHooks};
use ykhsm_proto::{ClientError, Request, Response, Status, Zeroizing, call};

use crate::args::{Args, FirstPass};
use crate::verdict::{loggable_public_id, pam_code, split};

/// The module, for pam-bindings' hooks.
#[derive(Debug)]
pub struct Module;

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

/// A user name fit for a log line.
fn shown(user: &str) -> String {
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
    match ask(&args, Request::HasUser { user: user.clone() }) {
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
    match ask(&args, request) {
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

/// Asks the daemon, within the timeout; the status word of its answer.
fn ask(args: &Args, request: Request) -> Result<Status, ClientError> {
    let response = call(&args.socket, &request, args.timeout)?;
    Ok(match response {
        Response::Verdict { status } | Response::Failed { status, .. } => status,
        // An answer that is no verdict: the daemon cannot decide.
        _ => Status::BackendError,
    })
}

fn unavailable(user: &str, e: &ClientError) -> PamResultCode {
    log(
        LOG_ERR,
        &format!(
            "user {}: no answer from ykhsmd: {e}: PAM_AUTHINFO_UNAVAIL",
            shown(user)
        ),
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
