//! pam_yubico's authfile, as ykhsmd and ykadmin read it: any bytes give one
//! parsed line per line, every byte in one of them; an enrollment that
//! succeeds can be revoked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ykhsm_core::account::Account;
use ykhsm_core::authfile;

/// No user database: every name is only itself.
fn as_written(_: &str) -> Account {
    Account::Unknown
}

fuzz_target!(|data: &[u8]| {
    let lines = authfile::parse(data);
    let kept: usize = lines.iter().map(|l| l.raw.content.len() + l.raw.end.len()).sum();
    assert_eq!(kept, data.len());
    for line in &lines {
        let _ = line.names();
    }
    if let Ok(edit) = authfile::enroll(data, "bob", "cccccccccccb", &as_written) {
        assert_eq!(edit.changed, edit.text != data);
        // Enrolled: bob's lines now hold the id, and all of them are plain.
        assert!(authfile::revoke(&edit.text, "bob", Some("cccccccccccb"), false, &as_written).is_ok());
    }
});
