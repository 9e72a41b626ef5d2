//! pam_ykhsm.so: the PAM module that asks ykhsmd to verify a YubiKey OTP.
//! The hooks land with the PAM issue; this crate exists so the workspace has
//! its final shape (and its dependency boundary can be checked) from the start.
#![forbid(unsafe_code)]
