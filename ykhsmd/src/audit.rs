//! The audit trail: exactly one line per verification (a login, `ykadmin
//! verify`, an OTP consumed by `ykadmin enroll`), in a fixed key order,
//! written once its answer is on the way:
//!
//! ```text
//! verify user=alice pubid=ccccccdbjrgf status=OK counter=12 session_use=3 peer_uid=0 peer_pid=4242 duration_us=180
//! ```
//!
//! With `[fleet]`, a login's line ends in `fleet=ok` (the fleet's store
//! raised the key's row), `fleet=offline` (the store could not be reached:
//! decided on this host's counters, counted), `fleet=replayed` (the store
//! held the OTP or a later one) or `fleet=down` (unreachable, `offline =
//! "deny"`).
//!
//! The line names the user (escaped, withheld if it looks like an OTP) and
//! the key's public id, never the OTP's token. Root's lines are written as
//! they come; an unprivileged peer's accepted OTPs go to its own share of
//! the log queue, and its refusals are counted per uid ([`crate::log`]).

use std::time::Duration;

use ykhsm_core::otp::PublicId;
use ykhsm_proto::Status;

use crate::log::{self, Level, Log};
use crate::login::Outcome;
use crate::service::Peer;

/// What is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audited {
    /// `Verify`: a login, or `ykadmin verify`.
    Verify,
    /// `ConsumeOtp`: an OTP `ykadmin enroll` consumed (no user).
    Consume,
}

impl Audited {
    /// The line's first word.
    fn word(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Consume => "consume",
        }
    }
}

/// An audit line, held until its answer is sent.
#[derive(Debug)]
pub struct Audit {
    status: Status,
    line: String,
}

impl Audit {
    /// The line for `outcome`, answered to `peer` for `user` (`-`: none)
    /// `took` after the request was read.
    pub fn new(what: Audited, user: &str, o: &Outcome, peer: &Peer, took: Duration) -> Self {
        let pubid = o
            .public_id
            .as_ref()
            .map_or_else(|| "-".to_owned(), PublicId::to_string);
        let counters = o.counters.map_or_else(
            || "counter=- session_use=-".to_owned(),
            |c| format!("counter={} session_use={}", c.counter(), c.session_use()),
        );
        let mut line = format!(
            "{} user={} pubid={pubid} status={} {counters} peer_uid={} peer_pid={} duration_us={}",
            what.word(),
            log::user(user),
            o.status,
            peer.uid,
            pid(peer),
            took.as_micros()
        );
        if let Some(word) = o.fleet {
            line.push_str(" fleet=");
            line.push_str(word.as_str());
        }
        Self {
            status: o.status,
            line,
        }
    }

    /// Writes it: root's as it is; an unprivileged peer's accepted OTP in
    /// that peer's share of the log, its refusals counted per uid (the
    /// first one written).
    pub fn write(&self, log: &Log, peer: &Peer) {
        if peer.uid == 0 {
            log.info(&self.line);
        } else if self.status == Status::Ok {
            log.peer_line(peer.uid, Level::Info, &self.line);
        } else {
            log.refusal(peer.uid, self.status.as_str(), Level::Info, &self.line);
        }
    }
}

/// The peer's pid for a log line, `-` when the kernel gave none.
pub fn pid(peer: &Peer) -> String {
    peer.pid.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ykhsm_core::counters::Counters;

    /// The key order and spelling operators' log searches rely on.
    #[test]
    fn audit_lines_keep_their_key_order() {
        let peer = Peer {
            uid: 0,
            pid: Some(4242),
        };
        let ok = Outcome {
            status: Status::Ok,
            public_id: Some(PublicId::parse("ccccccdbjrgf").unwrap()),
            counters: Counters::new(12, 3),
            fleet: None,
        };
        let took = Duration::from_micros(180);
        assert_eq!(
            Audit::new(Audited::Verify, "alice", &ok, &peer, took).line,
            "verify user=alice pubid=ccccccdbjrgf status=OK counter=12 session_use=3 peer_uid=0 peer_pid=4242 duration_us=180"
        );
        let refused = Outcome {
            status: Status::Denied,
            public_id: None,
            counters: None,
            fleet: None,
        };
        let nobody = Peer {
            uid: 65534,
            pid: None,
        };
        assert_eq!(
            Audit::new(Audited::Consume, "-", &refused, &nobody, took).line,
            "consume user=- pubid=- status=DENIED counter=- session_use=- peer_uid=65534 peer_pid=- duration_us=180"
        );
        // With a fleet, what its store said comes last.
        let offline = Outcome {
            fleet: Some(crate::login::FleetWord::Offline),
            ..ok
        };
        assert_eq!(
            Audit::new(Audited::Verify, "alice", &offline, &peer, took).line,
            "verify user=alice pubid=ccccccdbjrgf status=OK counter=12 session_use=3 peer_uid=0 peer_pid=4242 duration_us=180 fleet=offline"
        );
    }
}
