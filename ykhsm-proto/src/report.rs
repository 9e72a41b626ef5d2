//! The daemon's answer to `Status`: each part it checks with its health,
//! and the numbers an operator or a monitoring system reads, as numbers.
//!
//! Typed rather than text so that `ykadmin status` can exit by the health
//! (no "does this line start with ERROR"), `ykadmin --json status` and
//! `ykadmin metrics` print numbers, and the text for people is made in one
//! place (ykadmin). docs/protocol.md has the byte layout.

use crate::codec::{DecodeError, Reader, Writer};
use crate::status::Status;

/// How a checked part is, best first: [`StatusReport::health`] is the worst
/// of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Works.
    Ok,
    /// Works, but something wants an operator's look (authfile lines that
    /// fail their user closed). Not a reason for a non-zero exit.
    Warning,
    /// Does not work: logins that need it get `BACKEND_ERROR`.
    Error,
}

impl Health {
    /// The byte on the wire.
    pub(crate) const fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Error => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [Self::Ok, Self::Warning, Self::Error]
            .into_iter()
            .find(|h| h.code() == code)
    }

    /// `ok`, `warning`, `error`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// A part of the installation the daemon checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The YubiHSM (backend = "yubihsm" only).
    Device,
    /// A configured key handle, as spelled in the config: can the backend
    /// decode OTPs with it?
    KeyHandle(String),
    /// The AEAD store's directory.
    AeadDir,
    /// The authfile.
    Authfile,
    /// The counter database.
    Database,
    /// The daemon itself (its status task failed).
    Daemon,
    /// The fleet's counter store (`[fleet]` configured only).
    Fleet,
}

impl Part {
    fn code(&self) -> u8 {
        match self {
            Self::Device => 0,
            Self::KeyHandle(_) => 1,
            Self::AeadDir => 2,
            Self::Authfile => 3,
            Self::Database => 4,
            Self::Daemon => 5,
            Self::Fleet => 6,
        }
    }

    /// The kind of part: `device`, `key_handle`, `aead_dir`, `authfile`,
    /// `database`, `daemon`, `fleet`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::KeyHandle(_) => "key_handle",
            Self::AeadDir => "aead_dir",
            Self::Authfile => "authfile",
            Self::Database => "database",
            Self::Daemon => "daemon",
            Self::Fleet => "fleet",
        }
    }

    /// The key handle's name, for [`Part::KeyHandle`].
    pub fn key_handle(&self) -> Option<&str> {
        match self {
            Self::KeyHandle(name) => Some(name),
            _ => None,
        }
    }
}

/// One part's health, and a line for people (a path, what failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub part: Part,
    /// How it is.
    pub health: Health,
    /// For people, e.g. `usable`, `/var/cache/yubikey-ksm/aeads readable`,
    /// or the error; without a health word in front.
    pub detail: String,
}

/// Which backend decodes OTPs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// keys.json.
    #[default]
    Soft,
    /// A YubiHSM 1.
    Yubihsm,
}

impl BackendKind {
    /// As in the config: `soft`, `yubihsm`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Soft => "soft",
            Self::Yubihsm => "yubihsm",
        }
    }
}

/// The authfile's numbers (0 when it cannot be read: its check says so).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthfileStats {
    /// Users with a line.
    pub users: u64,
    /// Lines that cannot be parsed and fail their user closed.
    pub lines_failing_closed: u64,
}

/// The counter database's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseStats {
    /// The file.
    pub path: String,
    /// Keys with a row; `None` when the database could not be read.
    pub keys: Option<u64>,
    /// Bytes of the file.
    pub file_bytes: u64,
    /// Bytes of its write-ahead log (`-wal`; 0 when there is none).
    pub wal_bytes: u64,
    /// When a transaction that changed counters (a login's new pair, a
    /// merge that raised something, a reset) last committed, Unix
    /// seconds; `None` if none has since the daemon started.
    pub last_commit: Option<u64>,
}

/// The log queue's numbers since the daemon started (issue 12, item 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Lines waiting for the writer.
    pub queued_lines: u64,
    /// What they cost in the queue's accounting, bytes.
    pub queued_bytes: u64,
    /// The queue's room, bytes (both shares).
    pub capacity_bytes: u64,
    /// The daemon's own and root's audit lines dropped for want of room.
    pub dropped_daemon_lines: u64,
    /// Lines about unprivileged peers dropped for want of room.
    pub dropped_unprivileged_lines: u64,
    /// Peer uids whose refusals are being counted now.
    pub counted_peer_uids: u64,
    /// The syslog socket the daemon writes to, if it has one.
    pub syslog: Option<SyslogStats>,
}

/// The daemon's connection to syslog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyslogStats {
    /// The socket (`syslog_socket`).
    pub path: String,
    /// `None` while connected; else for how long (seconds) it has not been
    /// reached (its lines go to stderr meanwhile).
    pub away_seconds: Option<u64>,
    /// Lines not sent to it since the daemon started.
    pub missed_lines: u64,
}

/// The fleet's numbers (`[fleet]` configured only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Whether the counter store answered the last call (a login's or the
    /// reconciler's).
    pub connected: bool,
    /// When it last answered, Unix seconds; `None`: not since the daemon
    /// started.
    pub last_contact: Option<u64>,
    /// `offline` of the configuration: `local` or `deny`.
    pub offline: String,
    /// Keys whose local row holds an acceptance the store may not have.
    pub unsynced_rows: u64,
    /// When the oldest of those acceptances was, Unix seconds.
    pub oldest_unsynced: Option<u64>,
    /// OTPs accepted while the store could not be reached (with `offline =
    /// "local"`), ever, on this host: the replay window that happened.
    pub offline_accepts: u64,
    /// When the last of them was, Unix seconds.
    pub last_offline_accept: Option<u64>,
    /// Round trips the logins made to the store since the daemon started
    /// (one per batch of logins committed together).
    pub round_trips: u64,
    /// Logins those round trips carried.
    pub logins_sent: u64,
}

/// The answer to `Status`. (`Default`: an empty report, for tests.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Its config file.
    pub config: String,
    /// Its socket.
    pub socket: String,
    /// Its backend.
    pub backend: BackendKind,
    /// keys.json, or the YubiHSM's device.
    pub backend_path: String,
    /// Each part, in display order.
    pub checks: Vec<Check>,
    /// The authfile's numbers.
    pub authfile: AuthfileStats,
    /// The counter database's numbers.
    pub database: DatabaseStats,
    /// The log queue's numbers.
    pub log: LogStats,
    /// How many answers of each status word (to logins, and to OTPs
    /// consumed by `enroll`) since the daemon started, in wire-code order.
    pub answers: Vec<(Status, u64)>,
    /// The fleet's numbers, when `[fleet]` is configured.
    pub fleet: Option<FleetStats>,
}

impl StatusReport {
    /// The worst health of the checks (`Ok` when there are none).
    pub fn health(&self) -> Health {
        self.checks
            .iter()
            .map(|c| c.health)
            .max()
            .unwrap_or(Health::Ok)
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.str(&self.version);
        w.u64(self.uptime_seconds);
        w.str(&self.config);
        w.str(&self.socket);
        w.u8(match self.backend {
            BackendKind::Soft => 0,
            BackendKind::Yubihsm => 1,
        });
        w.str(&self.backend_path);
        w.count(self.checks.len());
        for c in &self.checks {
            w.u8(c.part.code());
            if let Part::KeyHandle(name) = &c.part {
                w.str(name);
            }
            w.u8(c.health.code());
            w.str(&c.detail);
        }
        w.u64(self.authfile.users);
        w.u64(self.authfile.lines_failing_closed);
        let db = &self.database;
        w.str(&db.path);
        write_opt(w, db.keys);
        w.u64(db.file_bytes);
        w.u64(db.wal_bytes);
        write_opt(w, db.last_commit);
        let log = &self.log;
        for n in [
            log.queued_lines,
            log.queued_bytes,
            log.capacity_bytes,
            log.dropped_daemon_lines,
            log.dropped_unprivileged_lines,
            log.counted_peer_uids,
        ] {
            w.u64(n);
        }
        match &log.syslog {
            None => w.u8(0),
            Some(sys) => {
                w.u8(1);
                w.str(&sys.path);
                write_opt(w, sys.away_seconds);
                w.u64(sys.missed_lines);
            }
        }
        w.count(self.answers.len());
        for (status, n) in &self.answers {
            w.u8(status.code());
            w.u64(*n);
        }
        match &self.fleet {
            None => w.u8(0),
            Some(f) => {
                w.u8(1);
                w.u8(u8::from(f.connected));
                write_opt(w, f.last_contact);
                w.str(&f.offline);
                w.u64(f.unsynced_rows);
                write_opt(w, f.oldest_unsynced);
                w.u64(f.offline_accepts);
                write_opt(w, f.last_offline_accept);
                w.u64(f.round_trips);
                w.u64(f.logins_sent);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.str("version")?.to_owned();
        let uptime_seconds = r.u64("uptime_seconds")?;
        let config = r.str("config")?.to_owned();
        let socket = r.str("socket")?.to_owned();
        let backend = match r.u8("backend")? {
            0 => BackendKind::Soft,
            1 => BackendKind::Yubihsm,
            _ => return Err(DecodeError::BadValue { field: "backend" }),
        };
        let backend_path = r.str("backend_path")?.to_owned();
        let n = r.count("checks", CHECK_MIN_LEN)?;
        let mut checks = Vec::with_capacity(n);
        for _ in 0..n {
            let part = match r.u8("part")? {
                0 => Part::Device,
                1 => Part::KeyHandle(r.str("key_handle")?.to_owned()),
                2 => Part::AeadDir,
                3 => Part::Authfile,
                4 => Part::Database,
                5 => Part::Daemon,
                6 => Part::Fleet,
                _ => return Err(DecodeError::BadValue { field: "part" }),
            };
            let health = Health::from_code(r.u8("health")?)
                .ok_or(DecodeError::BadValue { field: "health" })?;
            let detail = r.str("detail")?.to_owned();
            checks.push(Check {
                part,
                health,
                detail,
            });
        }
        let authfile = AuthfileStats {
            users: r.u64("authfile users")?,
            lines_failing_closed: r.u64("authfile lines_failing_closed")?,
        };
        let database = DatabaseStats {
            path: r.str("database path")?.to_owned(),
            keys: read_opt(r, "database keys")?,
            file_bytes: r.u64("database file_bytes")?,
            wal_bytes: r.u64("database wal_bytes")?,
            last_commit: read_opt(r, "database last_commit")?,
        };
        let log = LogStats {
            queued_lines: r.u64("log queued_lines")?,
            queued_bytes: r.u64("log queued_bytes")?,
            capacity_bytes: r.u64("log capacity_bytes")?,
            dropped_daemon_lines: r.u64("log dropped_daemon_lines")?,
            dropped_unprivileged_lines: r.u64("log dropped_unprivileged_lines")?,
            counted_peer_uids: r.u64("log counted_peer_uids")?,
            syslog: match r.u8("log syslog")? {
                0 => None,
                1 => Some(SyslogStats {
                    path: r.str("syslog path")?.to_owned(),
                    away_seconds: read_opt(r, "syslog away_seconds")?,
                    missed_lines: r.u64("syslog missed_lines")?,
                }),
                _ => {
                    return Err(DecodeError::BadValue {
                        field: "log syslog",
                    });
                }
            },
        };
        let n = r.count("answers", 9)?;
        let mut answers = Vec::with_capacity(n);
        for _ in 0..n {
            let status = Status::from_code(r.u8("answers status")?)
                .ok_or(DecodeError::BadValue { field: "answers" })?;
            if answers.iter().any(|(s, _)| *s == status) {
                return Err(DecodeError::BadValue { field: "answers" });
            }
            answers.push((status, r.u64("answers count")?));
        }
        let fleet = match r.u8("fleet")? {
            0 => None,
            1 => Some(FleetStats {
                connected: match r.u8("fleet connected")? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::BadValue {
                            field: "fleet connected",
                        });
                    }
                },
                last_contact: read_opt(r, "fleet last_contact")?,
                offline: r.str("fleet offline")?.to_owned(),
                unsynced_rows: r.u64("fleet unsynced_rows")?,
                oldest_unsynced: read_opt(r, "fleet oldest_unsynced")?,
                offline_accepts: r.u64("fleet offline_accepts")?,
                last_offline_accept: read_opt(r, "fleet last_offline_accept")?,
                round_trips: r.u64("fleet round_trips")?,
                logins_sent: r.u64("fleet logins_sent")?,
            }),
            _ => return Err(DecodeError::BadValue { field: "fleet" }),
        };
        Ok(Self {
            version,
            uptime_seconds,
            config,
            socket,
            backend,
            backend_path,
            checks,
            authfile,
            database,
            log,
            answers,
            fleet,
        })
    }
}

/// part, health, an empty detail.
const CHECK_MIN_LEN: usize = 1 + 1 + 2;

/// An optional u64: a `u8` 0 (absent) or 1 followed by the `u64`.
fn write_opt(w: &mut Writer, v: Option<u64>) {
    match v {
        None => w.u8(0),
        Some(n) => {
            w.u8(1);
            w.u64(n);
        }
    }
}

fn read_opt(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u64>, DecodeError> {
    match r.u8(field)? {
        0 => Ok(None),
        1 => Ok(Some(r.u64(field)?)),
        _ => Err(DecodeError::BadValue { field }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Response;

    fn check(part: Part, health: Health) -> Check {
        Check {
            part,
            health,
            detail: String::new(),
        }
    }

    #[test]
    fn health_is_the_worst_check() {
        let mut r = StatusReport::default();
        assert_eq!(r.health(), Health::Ok);
        r.checks.push(check(Part::Authfile, Health::Warning));
        assert_eq!(r.health(), Health::Warning);
        r.checks
            .push(check(Part::KeyHandle("1".into()), Health::Error));
        r.checks.push(check(Part::Database, Health::Ok));
        assert_eq!(r.health(), Health::Error);
    }

    fn encoded(r: StatusReport) -> Vec<u8> {
        Response::StatusInfo {
            report: Box::new(r),
        }
        .encode()
    }

    #[test]
    fn a_status_word_counted_twice_does_not_decode() {
        let r = StatusReport {
            answers: vec![(Status::Ok, 1), (Status::Ok, 2)],
            ..StatusReport::default()
        };
        assert_eq!(
            Response::decode(&encoded(r)),
            Err(DecodeError::BadValue { field: "answers" })
        );
    }

    #[test]
    fn the_fleet_numbers_round_trip() {
        let r = StatusReport {
            checks: vec![check(Part::Fleet, Health::Warning)],
            fleet: Some(FleetStats {
                connected: false,
                last_contact: Some(1_700_000_000),
                offline: "local".into(),
                unsynced_rows: 3,
                oldest_unsynced: Some(1_700_000_100),
                offline_accepts: 7,
                last_offline_accept: None,
                round_trips: 5,
                logins_sent: 9,
            }),
            ..StatusReport::default()
        };
        match Response::decode(&encoded(r.clone())) {
            Ok(Response::StatusInfo { report }) => assert_eq!(*report, r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_part_or_health_does_not_decode() {
        let r = StatusReport {
            checks: vec![check(Part::AeadDir, Health::Error)],
            ..StatusReport::default()
        };
        let body = encoded(r.clone());
        assert!(Response::decode(&body).is_ok());
        // kind, version "", uptime, config "", socket "", backend,
        // backend_path "", the count: the part is at 1+2+8+2+2+1+2+4.
        let at = 22;
        assert_eq!(body[at], 2, "the part byte");
        let mut bad_part = body.clone();
        bad_part[at] = 7;
        assert_eq!(
            Response::decode(&bad_part),
            Err(DecodeError::BadValue { field: "part" })
        );
        let mut bad_health = body;
        bad_health[at + 1] = 3;
        assert_eq!(
            Response::decode(&bad_health),
            Err(DecodeError::BadValue { field: "health" })
        );
    }
}
