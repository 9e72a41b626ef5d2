//! Typed OTPs, public ids and modhex: any input gives a value or an error,
//! and a parsed OTP prints back to the same OTP.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ykhsm_core::{Otp, PublicId, modhex};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = PublicId::parse(s);
    let _ = modhex::decode(s);
    if let Ok(otp) = Otp::parse(s) {
        let again = Otp::parse(&otp.to_typed_string()).expect("a parsed OTP re-parses");
        assert!(again == otp);
    }
});
