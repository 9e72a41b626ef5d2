//! `ykadmin metrics`: the daemon's status report in Prometheus's text
//! exposition format, for node_exporter's textfile collector, so a bastion
//! is monitored without opening a port (the daemon listens on its Unix
//! socket only).
//!
//! A subcommand rather than a daemon option: run from a systemd timer or
//! cron (contrib/systemd/ykhsm-metrics.timer), it writes the file even when
//! the daemon is down or hung — `ykhsm_up 0`, which is what alerting needs
//! — and the daemon gains no file to write outside `state_dir`, no timer
//! and no knowledge of node_exporter.
//!
//! The collector reads every `*.prom` file in its directory at each scrape,
//! so the file is replaced, never rewritten in place: written to a hidden
//! temporary file in the same directory (not matching `*.prom`), fsynced,
//! made 0644 (node_exporter runs as another user), renamed over the old
//! one, and the directory fsynced (`secure_file::replace`). The collector
//! does not accept timestamps on samples; it exports each file's
//! modification time itself (`node_textfile_mtime_seconds`), which says how
//! fresh this one is.

use std::fmt::Write as _;
use std::path::Path;

use ykhsm_core::secure_file::{self, NewFile, SecureFileError};
use ykhsm_proto::StatusReport;
use ykhsm_proto::report::Health;

/// The exposition text: the daemon's numbers when it answered, only
/// `ykhsm_up 0` when it could not be asked.
pub fn exposition(report: Option<&StatusReport>) -> String {
    let mut out = Exposition::default();
    out.family(
        "ykhsm_up",
        "gauge",
        "Whether ykhsmd answered ykadmin's status request (1) or could not be asked (0).",
    );
    out.sample("ykhsm_up", &[], u64::from(report.is_some()));
    let Some(r) = report else {
        return out.text;
    };
    out.family(
        "ykhsm_build_info",
        "gauge",
        "Always 1; the daemon's version and backend are its labels.",
    );
    out.sample(
        "ykhsm_build_info",
        &[("version", &r.version), ("backend", r.backend.as_str())],
        1,
    );
    out.family(
        "ykhsm_uptime_seconds",
        "gauge",
        "Seconds since ykhsmd started.",
    );
    out.sample("ykhsm_uptime_seconds", &[], r.uptime_seconds);
    out.family(
        "ykhsm_healthy",
        "gauge",
        "1 if the part works, 0 if logins that need it are refused with BACKEND_ERROR (part: device, key_handle, aead_dir, authfile, database, daemon).",
    );
    for c in &r.checks {
        let mut labels = vec![("part", c.part.kind())];
        if let Some(kh) = c.part.key_handle() {
            labels.push(("key_handle", kh));
        }
        out.sample(
            "ykhsm_healthy",
            &labels,
            u64::from(c.health != Health::Error),
        );
    }
    out.family(
        "ykhsm_answers_total",
        "counter",
        "Answers to logins and to OTPs consumed by enrollment, by status word, since ykhsmd started.",
    );
    for (status, n) in &r.answers {
        out.sample("ykhsm_answers_total", &[("status", status.as_str())], *n);
    }
    out.family(
        "ykhsm_authfile_users",
        "gauge",
        "Users with a line in the authfile.",
    );
    out.sample("ykhsm_authfile_users", &[], r.authfile.users);
    out.family(
        "ykhsm_authfile_lines_failing_closed",
        "gauge",
        "Authfile lines that cannot be parsed; the users they name are refused until they are fixed.",
    );
    out.sample(
        "ykhsm_authfile_lines_failing_closed",
        &[],
        r.authfile.lines_failing_closed,
    );
    let db = &r.database;
    if let Some(keys) = db.keys {
        out.family(
            "ykhsm_database_keys",
            "gauge",
            "Keys with a row in the counter database.",
        );
        out.sample("ykhsm_database_keys", &[], keys);
    }
    out.family(
        "ykhsm_database_size_bytes",
        "gauge",
        "Bytes of the counter database: the file and its write-ahead log.",
    );
    out.sample(
        "ykhsm_database_size_bytes",
        &[],
        db.file_bytes.saturating_add(db.wal_bytes),
    );
    if let Some(t) = db.last_commit {
        out.family(
            "ykhsm_database_last_commit_timestamp_seconds",
            "gauge",
            "Unix time of the last commit that changed counters (a login, a merge that raised one, a reset); absent until the first since ykhsmd started.",
        );
        out.sample("ykhsm_database_last_commit_timestamp_seconds", &[], t);
    }
    out.family(
        "ykhsm_log_queued_bytes",
        "gauge",
        "Bytes of log lines waiting for syslog and stderr.",
    );
    out.sample("ykhsm_log_queued_bytes", &[], r.log.queued_bytes);
    out.family(
        "ykhsm_log_queue_capacity_bytes",
        "gauge",
        "Bytes the log queue may hold before it drops lines.",
    );
    out.sample("ykhsm_log_queue_capacity_bytes", &[], r.log.capacity_bytes);
    out.family(
        "ykhsm_log_dropped_lines_total",
        "counter",
        "Log lines dropped because the queue was full, since ykhsmd started (source daemon: its own and root's audit lines; unprivileged: about other users' requests).",
    );
    out.sample(
        "ykhsm_log_dropped_lines_total",
        &[("source", "daemon")],
        r.log.dropped_daemon_lines,
    );
    out.sample(
        "ykhsm_log_dropped_lines_total",
        &[("source", "unprivileged")],
        r.log.dropped_unprivileged_lines,
    );
    if let Some(sys) = &r.log.syslog {
        out.family(
            "ykhsm_log_syslog_connected",
            "gauge",
            "1 if ykhsmd reaches its syslog socket, 0 while it does not (its lines go to stderr meanwhile).",
        );
        out.sample(
            "ykhsm_log_syslog_connected",
            &[],
            u64::from(sys.away_seconds.is_none()),
        );
        out.family(
            "ykhsm_log_syslog_missed_lines_total",
            "counter",
            "Log lines not sent to syslog since ykhsmd started (syslog away; they went to stderr).",
        );
        out.sample("ykhsm_log_syslog_missed_lines_total", &[], sys.missed_lines);
    }
    if let Some(f) = &r.fleet {
        out.family(
            "ykhsm_fleet_connected",
            "gauge",
            "1 if the fleet's counter store answered ykhsmd's last call, 0 while it does not.",
        );
        out.sample("ykhsm_fleet_connected", &[], u64::from(f.connected));
        out.family(
            "ykhsm_fleet_unsynced_keys",
            "gauge",
            "Keys whose counters on this host hold an acceptance the fleet's store may not have.",
        );
        out.sample("ykhsm_fleet_unsynced_keys", &[], f.unsynced_rows);
        if let Some(t) = f.oldest_unsynced {
            out.family(
                "ykhsm_fleet_oldest_unsynced_timestamp_seconds",
                "gauge",
                "Unix time of the oldest acceptance the fleet's store may not have; absent when none.",
            );
            out.sample("ykhsm_fleet_oldest_unsynced_timestamp_seconds", &[], t);
        }
        out.family(
            "ykhsm_fleet_offline_accepts_total",
            "counter",
            "OTPs accepted on this host while the fleet's store could not be reached (offline = \"local\"): the replay window that happened. Kept in the counter database.",
        );
        out.sample("ykhsm_fleet_offline_accepts_total", &[], f.offline_accepts);
        out.family(
            "ykhsm_fleet_round_trips_total",
            "counter",
            "Round trips ykhsmd's logins made to the fleet's store since it started (one per batch of logins committed together).",
        );
        out.sample("ykhsm_fleet_round_trips_total", &[], f.round_trips);
        out.family(
            "ykhsm_fleet_logins_sent_total",
            "counter",
            "Logins those round trips carried.",
        );
        out.sample("ykhsm_fleet_logins_sent_total", &[], f.logins_sent);
    }
    out.text
}

/// Exposition text being built.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// A family's `# HELP` and `# TYPE` lines, before its samples.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A sample: `name{label="value",…} n`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A label value as the format quotes it: `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces `path` with `text` atomically: a reader sees the old file or
/// the new one, whole, never a part; nothing is left behind on failure.
/// The file is 0644 whatever the umask (node_exporter runs as another
/// user); the temporary file is hidden and ends in `.tmp`, and
/// node_exporter reads only `*.prom`. The directory must exist.
pub fn write_atomically(path: &Path, text: &[u8]) -> Result<(), SecureFileError> {
    secure_file::replace(path, text, NewFile::with_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ykhsm_proto::Status;
    use ykhsm_proto::report::{Check, Part};

    #[test]
    fn down_is_only_ykhsm_up_0() {
        assert_eq!(
            exposition(None),
            "# HELP ykhsm_up Whether ykhsmd answered ykadmin's status request (1) or could not be asked (0).\n\
             # TYPE ykhsm_up gauge\n\
             ykhsm_up 0\n"
        );
    }

    #[test]
    fn labels_are_escaped_and_health_is_one_or_zero() {
        let r = StatusReport {
            version: "0.1\"\\\n".into(),
            checks: vec![
                Check {
                    part: Part::KeyHandle("0x2000".into()),
                    health: Health::Warning,
                    detail: String::new(),
                },
                Check {
                    part: Part::Database,
                    health: Health::Error,
                    detail: String::new(),
                },
            ],
            answers: vec![(Status::Ok, 7)],
            ..StatusReport::default()
        };
        let t = exposition(Some(&r));
        assert!(
            t.contains("ykhsm_build_info{version=\"0.1\\\"\\\\\\n\",backend=\"soft\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("ykhsm_healthy{part=\"key_handle\",key_handle=\"0x2000\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("ykhsm_healthy{part=\"database\"} 0\n"), "{t}");
        assert!(t.contains("ykhsm_answers_total{status=\"OK\"} 7\n"), "{t}");
        assert!(!t.contains("last_commit"), "{t}");
    }
}
