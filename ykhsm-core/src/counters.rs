//! The freshness rule (YK-VAL's, from yubikey-val's `ykval-synclib.php`
//! `countersHigherThanOrEqual`): an OTP is fresh iff its (counter, session
//! use) pair is strictly above the last accepted pair, compared
//! lexicographically, with "never seen" below every real pair. Unlike
//! YK-VAL, the counter is the token's 16-bit field masked with 0x7fff (bit
//! 15 is the caps-lock flag).
//!
//! `Option<Counters>` is the stored state: `None` (never seen, YK-VAL's
//! (-1, -1)) orders below every `Some`, so [`is_fresh`] is one comparison.

use std::fmt;

/// The largest value of the 15-bit usage counter; a YubiKey stops there.
pub const COUNTER_MAX: u16 = 0x7fff;

/// A (counter, session use) pair: the 15-bit non-volatile counter first,
/// then the 8-bit session use. The derived ordering is YK-VAL's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Counters {
    counter: u16,
    session_use: u8,
}

impl Counters {
    /// Builds a pair; `None` when `counter` is above 0x7fff.
    pub fn new(counter: u16, session_use: u8) -> Option<Self> {
        (counter <= COUNTER_MAX).then_some(Self {
            counter,
            session_use,
        })
    }

    /// Builds a pair from the raw 16-bit field, dropping the caps-lock bit.
    pub fn from_raw(use_counter: u16, session_use: u8) -> Self {
        Self {
            counter: use_counter & COUNTER_MAX,
            session_use,
        }
    }

    /// The 15-bit usage counter.
    pub fn counter(&self) -> u16 {
        self.counter
    }

    /// The 8-bit session use.
    pub fn session_use(&self) -> u8 {
        self.session_use
    }

    /// Whether no later OTP of this key can ever be fresh: (0x7fff, 0xff).
    /// The key must be reprogrammed with new secrets.
    pub fn is_exhausted(&self) -> bool {
        self.counter == COUNTER_MAX && self.session_use == u8::MAX
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "counter={} session_use={}",
            self.counter, self.session_use
        )
    }
}

/// Whether an OTP with `presented` counters may be accepted after `stored`
/// (`None`: this key was never seen). Equal pairs are replays.
pub fn is_fresh(stored: Option<Counters>, presented: Counters) -> bool {
    Some(presented) > stored
}

/// Where a key stands in a fleet of bastions sharing one counter store:
/// its generation (raised by each explicit reset), then the last accepted
/// pair of that generation, `None` (never seen) below every pair. The
/// derived order is the fleet's: lexicographic, generation first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The key's generation.
    pub generation: u32,
    /// The last accepted pair in that generation.
    pub last: Option<Counters>,
}

/// The fleet's rule, the one conditional write of the shared store: a
/// presented position raises the stored one (`None`: the store has no row
/// for the key) iff it is strictly higher. Equal is a replay. The store's
/// SQL statement and the model of the fleet protocol both implement this;
/// tests check each against this function.
pub fn raises(stored: Option<Position>, presented: Position) -> bool {
    Some(presented) > stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_order_is_generation_first() {
        let p = |generation, last: Option<(u16, u8)>| Position {
            generation,
            last: last.map(|(c, u)| Counters::new(c, u).unwrap()),
        };
        assert!(raises(None, p(0, None)));
        assert!(raises(Some(p(0, None)), p(0, Some((0, 0)))));
        assert!(!raises(Some(p(0, Some((3, 4)))), p(0, Some((3, 4)))));
        assert!(!raises(Some(p(0, Some((3, 4)))), p(0, Some((3, 3)))));
        assert!(raises(Some(p(0, Some((3, 4)))), p(0, Some((4, 0)))));
        // A reset (a new generation, nothing seen) is above every pair of
        // the generation before, and below nothing of its own.
        assert!(raises(Some(p(0, Some((0x7fff, 0xff)))), p(1, None)));
        assert!(!raises(Some(p(2, None)), p(1, Some((9, 9)))));
    }

    #[test]
    fn equal_pair_is_a_replay() {
        let c = Counters::new(3, 4).unwrap();
        assert!(!is_fresh(Some(c), c));
    }

    #[test]
    fn never_seen_is_below_zero() {
        assert!(is_fresh(None, Counters::new(0, 0).unwrap()));
    }

    #[test]
    fn counter_above_15_bits_is_refused() {
        assert_eq!(Counters::new(0x8000, 0), None);
        assert_eq!(Counters::from_raw(0x8001, 2), Counters::new(1, 2).unwrap());
    }
}
