//! Public ids made from a YubiKey's serial number (the personalisation GUI's
//! `otppage.cpp` and ykman's `--serial-public-id` conventions). These
//! are conventions of the programming tools, not rules of the OTP: ykhsm
//! treats a public id as an opaque string and never derives a serial from it.

use crate::modhex;

/// The personalisation GUI's form, seen on factory-programmed keys:
/// `cccccc` + modhex of the serial in big-endian hex (padded to an even
/// number of digits), then right-padded with `c` or cut to 12 characters
/// (`2198612` → `ccccccdbjrgf`; small and large serials come out odd, as the
/// GUI makes them).
pub fn public_id_personalization_gui(serial: u32) -> String {
    let hex = format!("{serial:x}");
    let hex = if !hex.len().is_multiple_of(2) {
        format!("0{hex}")
    } else {
        hex
    };
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    let mut id = format!("cccccc{}", modhex::encode(&bytes));
    id.truncate(12);
    while id.len() < 12 {
        id.push('c');
    }
    id
}

/// The form `ykman otp yubiotp --serial-public-id` programs: modhex of
/// `ff 00` followed by the serial as 4 big-endian bytes (`2198612` →
/// `vvccccdbjrgf`).
pub fn public_id_ykman(serial: u32) -> String {
    let mut b = vec![0xff, 0x00];
    b.extend_from_slice(&serial.to_be_bytes());
    modhex::encode(&b)
}
