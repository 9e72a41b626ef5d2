//! pyhsm keys.json contents: any bytes give keys or an error naming the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ykhsm_core::KeysFile;

fuzz_target!(|data: &[u8]| {
    let _ = KeysFile::parse(std::path::Path::new("fuzz/keys.json"), data);
});
