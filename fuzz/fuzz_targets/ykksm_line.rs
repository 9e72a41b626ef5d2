//! ykksm-export / `# ykksm 1` input: any bytes give records and per-line
//! errors, and every line is accounted for at most once.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ykhsm_core::ykksm;

fuzz_target!(|data: &[u8]| {
    let parsed = ykksm::parse(data);
    let lines = data.split(|&b| b == b'\n').count();
    assert!(parsed.records.len() + parsed.errors.len() <= lines);
});
