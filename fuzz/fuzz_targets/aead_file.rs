//! pyhsm AEAD files (v0, v1, CRLF marker): any bytes give a value or an
//! error; a parsed v1 file serialises back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ykhsm_core::aead_file::{AeadFile, V1_MARKER};

fuzz_target!(|data: &[u8]| {
    if let Ok(AeadFile::V1 { key_handle, nonce, aead }) = AeadFile::parse(data) {
        if data.starts_with(V1_MARKER) {
            assert_eq!(AeadFile::v1_bytes(key_handle, &nonce, &aead), data);
        }
    }
});
