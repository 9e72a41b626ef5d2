//! A software YubiKey: makes OTPs the way a YubiKey in Yubico OTP mode does
//! (the 16-byte token of [`crate::otp`]; the counter goes up at each
//! plug-in and whenever the session use wraps, as [`crate::counters`]
//! expects), for tests, benchmarks and the demo. Its encoding is the one the
//! vector tests check against every published OTP.

use std::fmt;

use crate::counters::COUNTER_MAX;
use crate::otp::{Otp, OtpFields, OtpPlaintext, PublicId, YubiKeySecrets};

/// A YubiKey with its secrets and its counters.
pub struct SoftYubiKey {
    public_id: PublicId,
    secrets: YubiKeySecrets,
    use_counter: u16,
    session_use: u8,
    timestamp: u32,
    random: u16,
}

impl fmt::Debug for SoftYubiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftYubiKey")
            .field("public_id", &self.public_id)
            .field("use_counter", &self.use_counter)
            .field("session_use", &self.session_use)
            .finish_non_exhaustive()
    }
}

impl SoftYubiKey {
    /// A key that has been plugged in once: the next OTP has counter 1,
    /// session use 0.
    pub fn new(public_id: PublicId, secrets: YubiKeySecrets) -> Self {
        Self {
            public_id,
            secrets,
            use_counter: 1,
            session_use: 0,
            timestamp: 0x0012_3456,
            random: 0xbeef,
        }
    }

    /// The public id.
    pub fn public_id(&self) -> &PublicId {
        &self.public_id
    }

    /// The secrets.
    pub fn secrets(&self) -> &YubiKeySecrets {
        &self.secrets
    }

    /// Sets the counters of the next OTP.
    pub fn set_counters(&mut self, use_counter: u16, session_use: u8) {
        self.use_counter = use_counter;
        self.session_use = session_use;
    }

    /// The OTP for the given raw counters, without touching the key's own.
    pub fn otp_with(&self, use_counter: u16, session_use: u8) -> Otp {
        let plain = OtpPlaintext::from_fields(&OtpFields {
            uid: *self.secrets.uid(),
            use_counter,
            ts_low: u16::try_from(self.timestamp & 0xffff).unwrap_or(0),
            ts_high: u8::try_from(self.timestamp >> 16 & 0xff).unwrap_or(0),
            session_use,
            random: self.random,
        });
        Otp::new(self.public_id.clone(), self.secrets.encrypt(&plain))
    }

    /// The next OTP, as a touch makes it: session use goes up, and when it
    /// wraps past 0xff the usage counter goes up (it stops at 0x7fff).
    pub fn next_otp(&mut self) -> Otp {
        let otp = self.otp_with(self.use_counter, self.session_use);
        self.timestamp = (self.timestamp + 8) & 0x00ff_ffff;
        self.random = self.random.wrapping_mul(31).wrapping_add(7);
        if self.session_use == u8::MAX {
            self.session_use = 0;
            self.use_counter = (self.use_counter + 1).min(COUNTER_MAX);
        } else {
            self.session_use += 1;
        }
        otp
    }

    /// A power cycle: the next OTP has the next usage counter and session
    /// use 0.
    pub fn replug(&mut self) {
        self.use_counter = (self.use_counter + 1).min(COUNTER_MAX);
        self.session_use = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{Counters, is_fresh};

    #[test]
    fn each_otp_decodes_and_is_fresh_after_the_last() {
        let id = PublicId::parse("vvccccdbjrgf").unwrap();
        let mut key = SoftYubiKey::new(id, YubiKeySecrets::new([3; 16], [4; 6]));
        let mut last: Option<Counters> = None;
        for i in 0..600 {
            if i == 300 {
                key.replug();
            }
            let otp = key.next_otp();
            let c = key.secrets().decode(otp.token()).unwrap().counters();
            assert!(is_fresh(last, c), "{c} after {last:?}");
            last = Some(c);
        }
        assert_eq!(last, Counters::new(4, 43));
    }
}
