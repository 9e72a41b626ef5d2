//! CRC-16/ISO-13239 (X.25 polynomial, LSB first) as the YubiKey uses it
//! (yubico-c `ykcrc.c`; a valid token's CRC over all 16 bytes is
//! [`CRC_OK_RESIDUE`]). Not authentication: it tells a wrong key or a
//! corrupted token from a good one.

/// The CRC over a whole valid 16-byte plaintext, stored CRC included.
pub const CRC_OK_RESIDUE: u16 = 0xf0b8;

/// CRC-16 with initial value 0xffff and reflected polynomial 0x8408, without
/// the final inversion.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb != 0 {
                crc ^= 0x8408;
            }
        }
    }
    crc
}
