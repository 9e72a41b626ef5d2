//! `ykadmin status`: the daemon's typed status report
//! (`ykhsm_proto::report`) — each part's health (the device, each key
//! handle, the AEAD directory, the authfile, the database), the numbers
//! (uptime, the database's size and last commit, the log queue) and the
//! answers given per status word.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ykhsm_core::backend::Purpose;
use ykhsm_proto::report::{
    AuthfileStats, BackendKind, Check, DatabaseStats, FleetStats, Health, Part, StatusReport,
};
use ykhsm_proto::status::ALL as ALL_STATUS;
use ykhsm_proto::{Response, Status};

use crate::config::BackendConfig;
use crate::db::{DbError, FleetCounts};
use crate::fleet::{Fleet, Offline};
use crate::service::{FailClosed, Service};

/// How many answers of each word the daemon gave to verifications (each
/// one counted with its audit line).
#[derive(Debug, Default)]
pub struct Answers([AtomicU64; ALL_STATUS.len()]);

impl Answers {
    /// One more answer of `status`.
    pub fn count(&self, status: Status) {
        self.0[usize::from(status.code())].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, in wire-code order.
    fn snapshot(&self) -> Vec<(Status, u64)> {
        ALL_STATUS
            .iter()
            .map(|&s| (s, self.0[usize::from(s.code())].load(Ordering::Relaxed)))
            .collect()
    }
}

/// `Status`: the parts' health and the numbers. Backend and file checks
/// run off the event loop (on the device's thread for a YubiHSM, like
/// every exchange with it); the database is asked through its queue, so a
/// stuck database shows as an error, not a hang.
pub async fn status(service: &Arc<Service>) -> Response {
    let this = Arc::clone(service);
    let mut report = service.on_device(move || parts(&this)).await;
    let db = &service.db;
    let (health, detail) = match db.export().await {
        Ok(r) => {
            report.database.keys = Some(u64::try_from(r.len()).unwrap_or(u64::MAX));
            (
                Health::Ok,
                format!("{} ({} keys seen)", db.path().display(), r.len()),
            )
        }
        Err(e) => (Health::Error, e.to_string()),
    };
    report.checks.push(Check {
        part: Part::Database,
        health,
        detail,
    });
    if let Some(fleet) = db.fleet() {
        let (check, stats) = fleet_part(fleet, db.fleet_counts().await);
        report.checks.push(check);
        report.fleet = Some(stats);
    }
    Response::StatusInfo {
        report: Box::new(report),
    }
}

/// The fleet's check and numbers: an error while the store cannot be
/// reached and logins are refused (`offline = "deny"`), a warning while
/// they are decided on this host's counters or rows wait to be pushed.
fn fleet_part(fleet: &Fleet, counts: Result<FleetCounts, DbError>) -> (Check, FleetStats) {
    let offline = match fleet.offline {
        Offline::Local => "local",
        Offline::Deny => "deny",
    };
    let counts = counts.unwrap_or_default();
    let (round_trips, logins_sent) = fleet.traffic();
    let stats = FleetStats {
        connected: fleet.is_connected(),
        last_contact: fleet.last_contact(),
        offline: offline.to_owned(),
        unsynced_rows: counts.unsynced,
        oldest_unsynced: counts.oldest_unsynced,
        offline_accepts: counts.offline_accepts,
        last_offline_accept: counts.last_offline_accept,
        round_trips,
        logins_sent,
    };
    let (health, detail) = match (stats.connected, fleet.offline) {
        (false, Offline::Deny) => (
            Health::Error,
            "the counter store cannot be reached: logins get BACKEND_ERROR (offline = \"deny\")"
                .to_owned(),
        ),
        (false, Offline::Local) => (
            Health::Warning,
            format!(
                "the counter store cannot be reached: logins are decided on this host's counters; {} keys unsynced",
                counts.unsynced
            ),
        ),
        (true, _) if counts.unsynced > 0 => (
            Health::Warning,
            format!(
                "connected; {} keys accepted offline wait to be pushed",
                counts.unsynced
            ),
        ),
        (true, _) => (Health::Ok, "connected".to_owned()),
    };
    (
        Check {
            part: Part::Fleet,
            health,
            detail,
        },
        stats,
    )
}

/// Everything of the status report but the database's row count.
fn parts(service: &Service) -> StatusReport {
    let config = &service.config;
    let mut checks = Vec::new();
    let mut check = |part: Part, r: Result<String, String>| {
        let (health, detail) = match r {
            Ok(d) => (Health::Ok, d),
            Err(d) => (Health::Error, d),
        };
        checks.push(Check {
            part,
            health,
            detail,
        });
    };
    let (backend, backend_path) = match &config.backend {
        BackendConfig::Soft { keys_file } => (BackendKind::Soft, keys_file),
        BackendConfig::Yubihsm { device } => (BackendKind::Yubihsm, device),
    };
    let b = service.backend();
    if let Some(health) = b.health() {
        check(Part::Device, health.map_err(|e| e.to_string()));
    }
    for kh in &config.key_handles {
        let state = b
            .check_key_handle(kh.value(), Purpose::OtpDecode)
            .map(|()| "usable".to_owned())
            .map_err(|e| e.to_string());
        check(Part::KeyHandle(kh.spelled().to_owned()), state);
    }
    let dir = config.aead_dir.display();
    check(
        Part::AeadDir,
        std::fs::read_dir(&config.aead_dir)
            .map(|_| format!("{dir} readable"))
            .map_err(|e| format!("{dir}: {e}")),
    );
    let mut authfile = AuthfileStats::default();
    match service.authfile.current() {
        Ok(c) => {
            let failing = c.parsed.problems.iter().filter(|p| p.fails_closed).count();
            authfile = AuthfileStats {
                users: u64::try_from(c.parsed.users().len()).unwrap_or(u64::MAX),
                lines_failing_closed: u64::try_from(failing).unwrap_or(u64::MAX),
            };
            checks.push(Check {
                part: Part::Authfile,
                // Those users are refused until it is fixed; everyone
                // else logs in.
                health: if failing > 0 {
                    Health::Warning
                } else {
                    Health::Ok
                },
                detail: format!(
                    "{} ({} users, {failing} lines failing closed)",
                    service.authfile.path().display(),
                    authfile.users
                ),
            });
        }
        Err(e) => checks.push(Check {
            part: Part::Authfile,
            health: Health::Error,
            detail: e.to_string(),
        }),
    }
    // The file and its write-ahead log: what the counters take on disk.
    let db = &service.db;
    let size = |suffix: &str| {
        let mut path = db.path().as_os_str().to_owned();
        path.push(suffix);
        std::fs::metadata(path).map_or(0, |m| m.len())
    };
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: service.started.elapsed().as_secs(),
        config: config.path.display().to_string(),
        socket: config.socket.display().to_string(),
        backend,
        backend_path: backend_path.display().to_string(),
        checks,
        authfile,
        database: DatabaseStats {
            path: db.path().display().to_string(),
            keys: None,
            file_bytes: size(""),
            wal_bytes: size("-wal"),
            last_commit: db.last_commit(),
        },
        log: service.log.stats(),
        answers: service.answered.snapshot(),
        fleet: None,
    }
}

impl FailClosed for StatusReport {
    fn fail_closed() -> Self {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            checks: vec![Check {
                part: Part::Daemon,
                health: Health::Error,
                detail: "internal error: the status task failed".into(),
            }],
            ..StatusReport::default()
        }
    }
}
