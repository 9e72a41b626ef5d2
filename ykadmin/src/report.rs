//! The daemon's status report (`ykadmin status`) as people read it (one
//! line per item, a health word in front of what is wrong) and as programs
//! read it (`--json`, numbers as numbers).

use std::collections::BTreeMap;

use serde::Serialize;
use ykhsm_proto::StatusReport;
use ykhsm_proto::report::{Check, Health};

/// The report as text lines, `name  value`, the names aligned. The first
/// says the overall health and which parts are not ok; a part that is not
/// ok has its health word before its detail. `now` (Unix seconds) dates
/// the last commit.
pub fn text(report: &StatusReport, now: u64) -> String {
    let mut items: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| items.push((k.to_owned(), v));
    let named = |h: Health| {
        let parts: Vec<String> = report
            .checks
            .iter()
            .filter(|c| c.health == h)
            .map(label)
            .collect();
        (!parts.is_empty()).then(|| format!("{} ({})", word(h), parts.join(", ")))
    };
    let health: Vec<String> = [Health::Error, Health::Warning]
        .into_iter()
        .filter_map(named)
        .collect();
    add(
        "health",
        if health.is_empty() {
            "ok".to_owned()
        } else {
            health.join("; ")
        },
    );
    add("version", report.version.clone());
    add("uptime", format!("{} s", report.uptime_seconds));
    add("config", report.config.clone());
    add("socket", report.socket.clone());
    add(
        "backend",
        format!("{} ({})", report.backend.as_str(), report.backend_path),
    );
    for c in &report.checks {
        let value = match c.health {
            Health::Ok => c.detail.clone(),
            h => format!("{} {}", word(h), c.detail),
        };
        add(&label(c), value);
    }
    let db = &report.database;
    add(
        "database_size",
        format!(
            "{} bytes ({} the file, {} its write-ahead log)",
            db.file_bytes + db.wal_bytes,
            db.file_bytes,
            db.wal_bytes
        ),
    );
    add(
        "last_commit",
        match db.last_commit {
            Some(t) => format!("{} s ago (Unix time {t})", now.saturating_sub(t)),
            None => "none since the daemon started".to_owned(),
        },
    );
    let log = &report.log;
    add(
        "log",
        format!(
            "{} lines queued ({} KiB of {} KiB); dropped since start: {} of the daemon's own and root's audit lines, {} of unprivileged peers; {} peer uids' refusals being counted{}",
            log.queued_lines,
            log.queued_bytes.div_ceil(1024),
            log.capacity_bytes / 1024,
            log.dropped_daemon_lines,
            log.dropped_unprivileged_lines,
            log.counted_peer_uids,
            log.syslog.as_ref().map_or_else(String::new, |sys| format!(
                "; syslog at {}: {}, {} lines not sent to it since start",
                sys.path,
                match sys.away_seconds {
                    None => "connected".to_owned(),
                    Some(s) => format!("not reached for {s} s (lines go to stderr)"),
                },
                sys.missed_lines
            ))
        ),
    );
    if let Some(f) = &report.fleet {
        let ago = |t: u64| format!("{} s ago", now.saturating_sub(t));
        add(
            "fleet_store",
            if f.connected {
                "connected".to_owned()
            } else {
                format!(
                    "not reachable (last answer: {}); offline = {}",
                    f.last_contact
                        .map_or_else(|| "none since start".to_owned(), ago),
                    f.offline
                )
            },
        );
        add(
            "fleet_unsynced",
            format!(
                "{} keys{}",
                f.unsynced_rows,
                f.oldest_unsynced
                    .map_or_else(String::new, |t| format!(", the oldest accepted {}", ago(t)))
            ),
        );
        add(
            "fleet_traffic",
            format!(
                "{} round trips carried {} logins since start",
                f.round_trips, f.logins_sent
            ),
        );
        add(
            "fleet_offline",
            format!(
                "{} OTPs accepted while the store could not be reached{}",
                f.offline_accepts,
                f.last_offline_accept
                    .map_or_else(String::new, |t| format!(", the last {}", ago(t)))
            ),
        );
    }
    add(
        "answers",
        report
            .answers
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

/// `ERROR`, `WARNING` (`ok` needs no word).
fn word(h: Health) -> &'static str {
    match h {
        Health::Ok => "ok",
        Health::Warning => "WARNING",
        Health::Error => "ERROR",
    }
}

/// A check's name in the text: `aead_dir`, `key_handle 1`.
fn label(c: &Check) -> String {
    match c.part.key_handle() {
        Some(kh) => format!("{} {kh}", c.part.kind()),
        None => c.part.kind().to_owned(),
    }
}

/// `ykadmin --json status`.
#[derive(Debug, Serialize)]
pub struct Json<'a> {
    /// False when a check is an error (exit 1).
    healthy: bool,
    /// `ok`, `warning`, `error`: the worst check.
    health: &'static str,
    version: &'a str,
    uptime_seconds: u64,
    config: &'a str,
    socket: &'a str,
    backend: BackendJson<'a>,
    checks: Vec<CheckJson<'a>>,
    authfile: AuthfileJson,
    database: DatabaseJson<'a>,
    log: LogJson<'a>,
    /// Status word → answers since the daemon started.
    answers: BTreeMap<&'static str, u64>,
    /// `null` without `[fleet]`.
    fleet: Option<FleetJson<'a>>,
}

#[derive(Debug, Serialize)]
struct BackendJson<'a> {
    kind: &'static str,
    path: &'a str,
}

#[derive(Debug, Serialize)]
struct CheckJson<'a> {
    part: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_handle: Option<&'a str>,
    health: &'static str,
    detail: &'a str,
}

#[derive(Debug, Serialize)]
struct AuthfileJson {
    users: u64,
    lines_failing_closed: u64,
}

#[derive(Debug, Serialize)]
struct DatabaseJson<'a> {
    path: &'a str,
    /// `null` when the database could not be read.
    keys: Option<u64>,
    /// The file and its write-ahead log.
    size_bytes: u64,
    file_bytes: u64,
    wal_bytes: u64,
    /// Unix seconds; `null` when nothing changed counters since the
    /// daemon started.
    last_commit: Option<u64>,
}

#[derive(Debug, Serialize)]
struct LogJson<'a> {
    queued_lines: u64,
    queued_bytes: u64,
    capacity_bytes: u64,
    dropped_daemon_lines: u64,
    dropped_unprivileged_lines: u64,
    counted_peer_uids: u64,
    /// `null` when the daemon writes to no syslog.
    syslog: Option<SyslogJson<'a>>,
}

#[derive(Debug, Serialize)]
struct FleetJson<'a> {
    connected: bool,
    /// Unix seconds; `null`: not since the daemon started.
    last_contact: Option<u64>,
    offline: &'a str,
    unsynced_keys: u64,
    /// Unix seconds; `null` when nothing waits.
    oldest_unsynced: Option<u64>,
    offline_accepts: u64,
    last_offline_accept: Option<u64>,
    /// Since the daemon started: the logins' round trips to the store
    /// (one per batch) and the logins they carried.
    round_trips: u64,
    logins_sent: u64,
}

#[derive(Debug, Serialize)]
struct SyslogJson<'a> {
    path: &'a str,
    connected: bool,
    away_seconds: Option<u64>,
    missed_lines: u64,
}

impl<'a> Json<'a> {
    /// The JSON form of `report`.
    pub fn new(report: &'a StatusReport) -> Self {
        let db = &report.database;
        let log = &report.log;
        Self {
            healthy: report.health() != Health::Error,
            health: report.health().as_str(),
            version: &report.version,
            uptime_seconds: report.uptime_seconds,
            config: &report.config,
            socket: &report.socket,
            backend: BackendJson {
                kind: report.backend.as_str(),
                path: &report.backend_path,
            },
            checks: report
                .checks
                .iter()
                .map(|c| CheckJson {
                    part: c.part.kind(),
                    key_handle: c.part.key_handle(),
                    health: c.health.as_str(),
                    detail: &c.detail,
                })
                .collect(),
            authfile: AuthfileJson {
                users: report.authfile.users,
                lines_failing_closed: report.authfile.lines_failing_closed,
            },
            database: DatabaseJson {
                path: &db.path,
                keys: db.keys,
                size_bytes: db.file_bytes + db.wal_bytes,
                file_bytes: db.file_bytes,
                wal_bytes: db.wal_bytes,
                last_commit: db.last_commit,
            },
            log: LogJson {
                queued_lines: log.queued_lines,
                queued_bytes: log.queued_bytes,
                capacity_bytes: log.capacity_bytes,
                dropped_daemon_lines: log.dropped_daemon_lines,
                dropped_unprivileged_lines: log.dropped_unprivileged_lines,
                counted_peer_uids: log.counted_peer_uids,
                syslog: log.syslog.as_ref().map(|sys| SyslogJson {
                    path: &sys.path,
                    connected: sys.away_seconds.is_none(),
                    away_seconds: sys.away_seconds,
                    missed_lines: sys.missed_lines,
                }),
            },
            answers: report
                .answers
                .iter()
                .map(|(s, n)| (s.as_str(), *n))
                .collect(),
            fleet: report.fleet.as_ref().map(|f| FleetJson {
                connected: f.connected,
                last_contact: f.last_contact,
                offline: &f.offline,
                unsynced_keys: f.unsynced_rows,
                oldest_unsynced: f.oldest_unsynced,
                offline_accepts: f.offline_accepts,
                last_offline_accept: f.last_offline_accept,
                round_trips: f.round_trips,
                logins_sent: f.logins_sent,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ykhsm_proto::Status;
    use ykhsm_proto::report::Part;

    fn report() -> StatusReport {
        StatusReport {
            version: "0.1.0".into(),
            checks: vec![
                Check {
                    part: Part::KeyHandle("1".into()),
                    health: Health::Ok,
                    detail: "usable".into(),
                },
                Check {
                    part: Part::AeadDir,
                    health: Health::Error,
                    detail: "/x: No such file or directory (os error 2)".into(),
                },
            ],
            answers: vec![(Status::Ok, 3), (Status::BadOtp, 0)],
            ..StatusReport::default()
        }
    }

    #[test]
    fn text_names_what_is_wrong_first_and_marks_its_line() {
        let t = text(&report(), 100);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "health         ERROR (aead_dir)");
        let mut r = report();
        r.checks.push(Check {
            part: Part::Authfile,
            health: Health::Warning,
            detail: String::new(),
        });
        r.checks.push(Check {
            part: Part::Database,
            health: Health::Error,
            detail: String::new(),
        });
        assert!(
            text(&r, 0)
                .starts_with("health         ERROR (aead_dir, database); WARNING (authfile)\n"),
            "{}",
            text(&r, 0)
        );
        assert!(lines.contains(&"key_handle 1   usable"), "{t}");
        assert!(
            lines.contains(&"aead_dir       ERROR /x: No such file or directory (os error 2)"),
            "{t}"
        );
        assert!(lines.contains(&"answers        OK=3 BAD_OTP=0"), "{t}");
        assert!(
            lines.contains(&"last_commit    none since the daemon started"),
            "{t}"
        );
    }

    #[test]
    fn json_has_numbers_as_numbers_and_healthy_false_on_an_error() {
        let mut r = report();
        r.database.file_bytes = 4096;
        r.database.wal_bytes = 8;
        r.database.last_commit = Some(99);
        let v = serde_json::to_value(Json::new(&r)).unwrap();
        assert_eq!(v["healthy"], false);
        assert_eq!(v["health"], "error");
        assert_eq!(v["answers"]["OK"], 3);
        assert_eq!(v["database"]["size_bytes"], 4104);
        assert_eq!(v["database"]["last_commit"], 99);
        assert_eq!(v["database"]["keys"], serde_json::Value::Null);
        assert_eq!(v["checks"][0]["key_handle"], "1");
        assert!(v["checks"][1].get("key_handle").is_none());
    }
}
