//! Start-up, `--check`, signals and process hygiene.
//!
//! Start-up refuses to run on anything it would later have to refuse
//! logins for: every problem names the file and stops the daemon with a
//! non-zero exit, before the socket exists.
//!
//! Under systemd (Type=notify) the daemon says when it is ready, what it
//! is doing, and when it reloads or stops, on `NOTIFY_SOCKET`
//! (sd_notify(3)); see [`notify`].

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use ykhsm_core::backend::{Backend, Purpose, SoftBackend};
use ykhsm_core::keys_file::{KeysFile, KeysFileError};
use ykhsm_core::secure_file::{self, FilePolicy};
use ykhsm_yubihsm::YubiHsmBackend;

use crate::authfile::Authfile;
use crate::config::{BackendConfig, Config};
use crate::db::Db;
use crate::fleet::{self, Fleet, Offline};
use crate::log::{Level, Log};
use crate::server;
use crate::service::Service;

/// How long one exchange with the YubiHSM may take (pyhsm's is 1 s).
const HSM_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds the configured backend: keys.json read and checked now (owner,
/// mode, every key); a YubiHSM is opened at its first request, and again
/// after it went away — a daemon started before the HSM is plugged in, or
/// one whose HSM was reset, recovers by itself (answering BACKEND_ERROR
/// meanwhile).
pub fn load_backend(config: &Config) -> Result<Arc<dyn Backend>, KeysFileError> {
    Ok(match &config.backend {
        BackendConfig::Soft { keys_file } => Arc::new(SoftBackend::new(KeysFile::load(keys_file)?)),
        BackendConfig::Yubihsm { device } => {
            Arc::new(YubiHsmBackend::new_lazy(device, HSM_TIMEOUT))
        }
    })
}

/// SIGHUP: forgets the cached authfile (re-read at the next use) and
/// re-reads keys.json, keeping the keys already loaded if the new file is
/// refused. A YubiHSM stays open: nothing of the device's to re-read, and
/// reopening it would only cost the start-up checks.
fn reload(service: &Service) {
    let log = service.log();
    service.authfile().invalidate();
    if service.has_device() {
        log.info("reload: authfile re-read (the YubiHSM stays open)");
        return;
    }
    match load_backend(service.config()) {
        Ok(backend) => {
            service.replace_backend(backend);
            log.info("reload: keys and authfile re-read");
        }
        Err(e) => log.error(&format!("reload: keeping the keys already loaded: {e}")),
    }
}

/// No core files (they would hold keys), and as many descriptors as the
/// hard limit allows (each client connection is one). Returns the limit
/// in force.
fn harden(log: &Log) -> u64 {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        log.warn(&format!("prctl(PR_SET_DUMPABLE, 0) failed: {e}"));
    }
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return FALLBACK_NOFILE;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => log.warn(&format!("cannot raise RLIMIT_NOFILE to {hard}: {e}")),
        }
    }
    soft
}

/// The limit assumed when `getrlimit` fails (Linux's usual soft limit).
const FALLBACK_NOFILE: u64 = 1024;

/// Descriptors kept for the daemon itself, never given to connections:
/// the database (and its WAL and shared-memory files), the authfile and
/// AEAD files being read (one per thread reading), the syslog socket, the
/// listener, the event loop's, the YubiHSM's, each acceptor's spare.
pub const OWN_FDS: u64 = 256;

/// At most this many connections of uids other than root at once,
/// whatever the descriptors would allow: screen lockers and the like,
/// `max_connections_per_user` each.
pub const MAX_OTHER_CONNECTIONS: u64 = 4096;

/// How many connections the daemon may hold with `nofile` descriptors:
/// [`OWN_FDS`] kept for its own files, a quarter of the rest at most for
/// uids other than root together (never more than
/// [`MAX_OTHER_CONNECTIONS`]), and root's `max_connections` from what is
/// left — so no peer's connections can take the descriptors a login
/// needs, and root's cannot either.
pub fn connection_limits(config: &Config, nofile: u64) -> server::Limits {
    limits_for(
        config.max_connections,
        config.max_connections_per_user,
        nofile,
    )
}

fn limits_for(max_connections: usize, per_user: usize, nofile: u64) -> server::Limits {
    let usable = nofile.saturating_sub(OWN_FDS).max(2);
    let others = (usable / 4).clamp(1, MAX_OTHER_CONNECTIONS);
    let root = (usable - others).max(1);
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let others = size(others);
    server::Limits {
        root: max_connections.min(size(root)),
        others,
        per_user: per_user.min(others),
    }
}

/// The state directory: created 0700 if missing; must be root's, with no
/// permission bit for group or others, not a link (`secure_file`'s checks,
/// as for every directory the daemon trusts).
fn state_dir(path: &Path) -> Result<()> {
    secure_file::ensure_dir(path, 0o700, FilePolicy::secret(0, 0)).map_err(|e| {
        anyhow!("state_dir {e} (it holds the counter database, which only root may read or write)")
    })?;
    Ok(())
}

/// The AEAD store as logins will read it: `aead_dir` and everything under
/// the configured key handles' directories root's, writable by nobody
/// else, no symbolic link (ykhsm-core's `AeadStore::check`). Says what it
/// found.
fn aead_store(config: &Config) -> Result<String> {
    let found = config
        .aead_store(config.key_handles.clone())
        .check()
        .with_context(|| format!("aead_dir {}", config.aead_dir.display()))?;
    let per_key_handle: Vec<String> = found
        .key_handles
        .iter()
        .map(|(kh, count)| match count {
            Some(c) => format!("key handle {}: {} files", kh.spelled(), c.files),
            None => format!("key handle {}: no directory", kh.spelled()),
        })
        .collect();
    Ok(format!(
        "{} ({}; root's, not writable by group or others, no symbolic link)",
        config.aead_dir.display(),
        per_key_handle.join(", ")
    ))
}

/// What `accept_random_nonce = true` costs, said once at start.
const RANDOM_NONCE_WARNING: &str = "accept_random_nonce = true: v1 AEAD files are read whatever their nonce, so an AEAD is not bound to the public id it is filed under; anyone who can write the AEAD store can make one key log in as another public id, and the store's ownership checks are the only defence";

/// Reads the authfile once, reporting each problem line (once: the
/// returned `Authfile` keeps the parse until the file changes).
fn authfile(config: &Config, log: &Log) -> Result<Authfile> {
    let a = Authfile::new(config.authfile.clone(), 0);
    let current = a.current().context("authfile")?;
    for p in &current.parsed.problems {
        let msg = format!(
            "authfile {} line {}: {}{}",
            config.authfile.display(),
            p.line,
            p.reason,
            if p.fails_closed {
                " (that user gets BACKEND_ERROR until it is fixed)"
            } else {
                ""
            }
        );
        if p.fails_closed {
            log.error(&msg);
        } else {
            log.warn(&msg);
        }
    }
    Ok(a)
}

/// Says what opening the database did besides opening it.
fn report_opened(db: &Db, log: &Log) {
    let opened = db.opened();
    for (file, mode) in &opened.modes_fixed {
        log.warn(&format!(
            "counter database file {} had mode {mode:04o}; now 0600",
            file.display()
        ));
    }
    if let Some(m) = &opened.migration {
        log.warn(&format!(
            "counter database {}: migrated from schema {} to {} ({} rows, now {} keys: counters follow the public id); the old file is kept at {}",
            db.path().display(),
            m.from,
            crate::db::SCHEMA_VERSION,
            m.rows,
            m.keys,
            m.backup.display()
        ));
        if !m.merged.is_empty() {
            const SHOWN: usize = 20;
            let more = m.merged.len().saturating_sub(SHOWN);
            log.warn(&format!(
                "counter database: {} keys had counters for several AEADs (key handles, or a secret replaced with --force); each now has the highest, so nothing accepted before is accepted again. A key reprogrammed since (its new OTPs refused as REPLAYED_OTP) needs `ykadmin counters reset PUBID`: {}{}",
                m.merged.len(),
                m.merged.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(" "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ));
        }
    }
}

/// Tells the service manager `states` (sd_notify(3)) on the socket named
/// by `NOTIFY_SOCKET`; does nothing when that is unset or empty (started
/// by hand, by a test, by a supervisor without the protocol). A failed
/// send is logged, never fatal.
///
/// The daemon starts no process, so `NOTIFY_SOCKET` is left in its
/// environment (unsetting it would need `unsafe`, which this crate
/// forbids, and protects no child).
pub fn notify(log: &Log, states: &[NotifyState<'_>]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return;
    };
    if let Err(e) = notify_to(&socket, states) {
        log.limited(
            "notify",
            "error",
            Level::Warning,
            &format!(
                "cannot notify the service manager at NOTIFY_SOCKET={}: {e}",
                socket.to_string_lossy()
            ),
        );
    }
}

fn notify_to(socket: &OsStr, states: &[NotifyState<'_>]) -> io::Result<()> {
    let Some(name) = socket.as_bytes().strip_prefix(b"@") else {
        // A path: systemd's own (/run/systemd/notify, the user manager's
        // under $XDG_RUNTIME_DIR).
        return sd_notify::notify(states);
    };
    // An abstract socket (`@name`), which sd_notify(3) allows and
    // sd-notify 0.5 would take for a relative path: the same message, by
    // hand.
    let sock = UnixDatagram::unbound()?;
    sock.connect_addr(&SocketAddr::from_abstract_name(name)?)?;
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    sock.send(message.as_bytes()).map(|_| ())
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<()> {
    let log = Arc::new(Log::new(&config.syslog_socket, config.debug));
    let result = serve(config, &log);
    if let Err(e) = &result {
        // What `systemctl status` shows next to "failed".
        notify(
            &log,
            &[NotifyState::Status(&format!("start-up failed: {e:#}"))],
        );
    }
    // Every line written, also on a start-up error.
    log.stop();
    result
}

/// What the backend's first answers said, for the READY=1 notification's
/// STATUS: each configured key handle usable or not and, for a YubiHSM,
/// whether the device answered at all. A YubiHSM that is absent at start
/// does not hold the daemon back (it is reopened at each login, which get
/// BACKEND_ERROR meanwhile), so the daemon is ready once the first attempt
/// is over, and says what it found.
fn backend_state(
    config: &Config,
    health: Option<Result<String, ykhsm_core::backend::BackendError>>,
    key_handles: &[String],
) -> String {
    match (&config.backend, health) {
        (BackendConfig::Yubihsm { .. }, Some(Err(e))) => format!(
            "YubiHSM not answering: {e}; logins get BACKEND_ERROR until it does (it is reopened at each login)"
        ),
        (BackendConfig::Yubihsm { device }, _) => {
            format!("YubiHSM {}: {}", device.display(), key_handles.join(", "))
        }
        (BackendConfig::Soft { keys_file }, _) => {
            format!("keys {}: {}", keys_file.display(), key_handles.join(", "))
        }
    }
}

fn serve(config: Config, log: &Arc<Log>) -> Result<()> {
    let nofile = harden(log);
    let limits = connection_limits(&config, nofile);
    let note = format!(
        "descriptors: RLIMIT_NOFILE {nofile}, {OWN_FDS} kept for the daemon's own files; connections at once: {} of root, {} of other uids together, {} per uid",
        limits.root, limits.others, limits.per_user
    );
    if limits.root < config.max_connections {
        log.warn(&format!(
            "{note} (max_connections = {} does not fit: raise LimitNOFILE)",
            config.max_connections
        ));
    } else {
        log.info(&note);
    }
    // What the daemon creates (the counter database, its copies, the lock
    // file) is root's alone unless made otherwise on purpose (the socket,
    // 0666, and its directory, 0755, are chmod'ed explicitly).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let backend = load_backend(&config)?;
    let mut key_handles = Vec::new();
    let mut all_usable = true;
    for kh in &config.key_handles {
        match backend.check_key_handle(kh.value(), Purpose::OtpDecode) {
            Ok(()) => key_handles.push(format!("key handle {} usable", kh.spelled())),
            Err(e) => {
                all_usable = false;
                log.warn(&format!("key handle {}: {e}", kh.spelled()));
                key_handles.push(format!("key handle {}: {e}", kh.spelled()));
            }
        }
    }
    // Whether a YubiHSM answers at all, asked only when a key handle
    // check failed (the checks opened it if it is there); nothing to ask
    // of keys.json.
    let health = if all_usable { None } else { backend.health() };
    let ready = format!(
        "serving on {}; {}",
        config.socket.display(),
        backend_state(&config, health, &key_handles)
    );
    let users = authfile(&config, log)?;
    aead_store(&config)?;
    if config.accept_random_nonce {
        log.warn(RANDOM_NONCE_WARNING);
    }
    state_dir(&config.state_dir)?;
    // The socket's lock first: a second daemon is told so plainly.
    let bound = server::bind(&config.socket, 0)?;
    // The commit thread (Db::open) and the YubiHSM's (Service::new) serve
    // root's logins as the acceptors do: started from here while this
    // thread runs ahead, they run ahead too. This thread then goes back:
    // it becomes the event loop, and starts the blocking pool.
    let own_nice = server::run_ahead(log);
    let db = Db::open(&config.database())?;
    report_opened(&db, log);
    let fleet = match &config.fleet {
        Some(settings) => Some(join_fleet(settings, &db, log)?),
        None => None,
    };
    // Root's logins are answered by the acceptor threads (server.rs);
    // this one event-loop thread holds everything slower: connections whose
    // request is not there yet, other uids, admin requests, signals.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ykhsmd")
        .build()
        .context("cannot start the async runtime")?;
    log.info(&format!(
        "started: socket={} backend={} key_handles={} aead_dir={} authfile={} database={}",
        config.socket.display(),
        match &config.backend {
            BackendConfig::Soft { .. } => "soft",
            BackendConfig::Yubihsm { .. } => "yubihsm",
        },
        config
            .key_handles
            .iter()
            .map(|k| k.spelled())
            .collect::<Vec<_>>()
            .join(","),
        config.aead_dir.display(),
        config.authfile.display(),
        config.database().display()
    ));
    let service = Arc::new(Service::new(
        config,
        Arc::clone(log),
        backend,
        db.clone(),
        users,
    ));
    // The reconciler pulls the counters of the keys this host serves: those
    // it has counters for and those of the authfile.
    let reconciler = fleet.map(|(fleet, background)| {
        let svc = Arc::clone(&service);
        let served: fleet::Served = Box::new(move || {
            svc.authfile()
                .current()
                .map(|c| {
                    c.parsed
                        .users()
                        .into_iter()
                        .flat_map(|(_, e)| e.keys.iter().map(ToString::to_string))
                        .collect()
                })
                .unwrap_or_default()
        });
        let stop = Arc::new(fleet::Stop::default());
        let handle = fleet::reconciler(db.clone(), fleet, background, served, Arc::clone(&stop));
        (stop, handle)
    });
    server::run_at(own_nice);
    let result: Result<()> = runtime.block_on(async {
        let listener = bound.listener.try_clone().context("socket")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        // Ready: the socket has listened since `bind` (a login that comes
        // now waits in its backlog for the acceptors, which start next),
        // the database is open, the backend has answered (or is known to
        // be absent), and SIGTERM is handled.
        notify(log, &[NotifyState::Ready, NotifyState::Status(&ready)]);
        let svc = Arc::clone(&service);
        let reload_log = Arc::clone(log);
        let serving = format!(
            "serving on {}; reloaded (the log says what was re-read)",
            svc.config().socket.display()
        );
        let reloader = tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // systemd ≥ 253 asks for the monotonic time with RELOADING=1.
                let mut reloading = vec![NotifyState::Reloading];
                reloading.extend(NotifyState::monotonic_usec_now().ok());
                notify(&reload_log, &reloading);
                let s = Arc::clone(&svc);
                let _ = tokio::task::spawn_blocking(move || reload(&s)).await;
                notify(
                    &reload_log,
                    &[NotifyState::Ready, NotifyState::Status(&serving)],
                );
            }
        });
        let stop_log = Arc::clone(log);
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            notify(
                &stop_log,
                &[
                    NotifyState::Stopping,
                    NotifyState::Status("stopping: answering the requests in flight"),
                ],
            );
        };
        let served = server::run(listener, Arc::clone(&service), limits, shutdown)
            .await
            .context("cannot start the acceptor threads");
        reloader.abort();
        served
    });
    service.drain_device(service.config().client_timeout + Duration::from_secs(1));
    log.info("stopping: in-flight requests answered; closing the database");
    drop(service);
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(bound);
    if let Some((stop, handle)) = reconciler {
        stop.stop();
        let _ = handle.join();
    }
    db.close();
    log.info("stopped");
    result
}

/// `[fleet]`: the store's client for the logins, attached to the database,
/// and a client of its own for the reconciler (started once the service
/// exists). Nothing is connected yet: a store that cannot be reached does
/// not stop the daemon (the mode decides what logins do meanwhile).
fn join_fleet(
    settings: &ykhsm_config::FleetSettings,
    db: &Db,
    log: &Arc<Log>,
) -> Result<(Arc<Fleet>, Box<dyn fleet::Store>)> {
    let client = |what: &str| {
        ykhsm_fleet::Fleet::new(settings)
            .with_context(|| format!("fleet: cannot set up the {what} client"))
    };
    let logins = client("logins'")?;
    let background = client("reconciler's")?;
    log.info(&format!(
        "fleet: counters shared through {} (offline = {}, timeout {} ms)",
        logins.store(),
        match settings.offline {
            Offline::Local => "local",
            Offline::Deny => "deny",
        },
        settings.timeout.as_millis()
    ));
    let fleet = Arc::new(Fleet::new(
        Box::new(logins),
        settings.offline,
        Arc::clone(log),
    ));
    db.attach_fleet(Arc::clone(&fleet))?;
    Ok((fleet, Box::new(background)))
}

/// `--check`: validates the whole configuration and reports each part.
/// Returns whether everything passed.
pub fn check(config: &Config) -> bool {
    let log = Log::stderr_only(false);
    let mut ok = true;
    let mut report = |what: &str, r: Result<String>| match r {
        Ok(detail) => println!("ok    {what}: {detail}"),
        Err(e) => {
            ok = false;
            println!("FAIL  {what}: {e:#}");
        }
    };
    report("config", Ok(config.path.display().to_string()));
    match load_backend(config) {
        Ok(backend) => {
            report(
                "backend",
                Ok(match &config.backend {
                    BackendConfig::Soft { keys_file } => format!("soft, {}", keys_file.display()),
                    BackendConfig::Yubihsm { device } => format!("yubihsm, {}", device.display()),
                }),
            );
            // Only one process may talk to a YubiHSM: a running daemon's
            // device is left alone (its view: `ykadmin status`).
            let device_ok = if backend.is_device() && server::daemon_running(&config.socket) {
                report(
                    "device",
                    Ok("held by the running ykhsmd; not opened (see `ykadmin status`)".into()),
                );
                false
            } else {
                match backend.health() {
                    None => true,
                    Some(health) => {
                        let ok = health.is_ok();
                        report("device", health.map_err(anyhow::Error::from));
                        ok
                    }
                }
            };
            for kh in config.key_handles.iter().filter(|_| device_ok) {
                report(
                    &format!("key handle {}", kh.spelled()),
                    backend
                        .check_key_handle(kh.value(), Purpose::OtpDecode)
                        .map(|()| format!("{} usable for OTP decode", kh.value()))
                        .map_err(anyhow::Error::from),
                );
            }
        }
        Err(e) => report("backend", Err(e.into())),
    }
    report(
        "authfile",
        authfile(config, &log).map(|_| config.authfile.display().to_string()),
    );
    report("aead_dir", aead_store(config));
    if config.accept_random_nonce {
        report("v1 nonces", Ok(format!("any ({RANDOM_NONCE_WARNING})")));
    }
    report(
        "state_dir",
        if config.state_dir.exists() {
            state_dir(&config.state_dir).map(|()| config.state_dir.display().to_string())
        } else {
            Ok(format!("{} (will be created)", config.state_dir.display()))
        },
    );
    if server::daemon_running(&config.socket) {
        report(
            "database",
            Ok(format!(
                "{} (held by the running ykhsmd; not opened)",
                config.database().display()
            )),
        );
    } else if config.database().exists() {
        report(
            "database",
            crate::db::inspect(&config.database()).map_err(anyhow::Error::from),
        );
    }
    if let Some(settings) = &config.fleet {
        // The files are checked (a failure fails the check); the store is
        // asked, but one that cannot be reached is only a warning: the
        // daemon starts anyway, and `offline` decides what logins do.
        match ykhsm_fleet::Fleet::new(settings) {
            Err(e) => report("fleet", Err(e.into())),
            Ok(mut store) => match store.status() {
                Ok(st) => report(
                    "fleet",
                    Ok(format!(
                        "{}: reachable, schema {}",
                        store.store(),
                        st.schema_version.map_or_else(
                            || "missing (run `ykadmin fleet init`)".to_owned(),
                            |v| format!("version {v}")
                        )
                    )),
                ),
                Err(e) => println!(
                    "warn  fleet: {}: {e} (logins will be decided as offline = {} says until it answers)",
                    store.store(),
                    match settings.offline {
                        Offline::Local => "\"local\"",
                        Offline::Deny => "\"deny\"",
                    }
                ),
            },
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::{MAX_OTHER_CONNECTIONS, OWN_FDS, limits_for};
    use crate::server::Limits;

    /// Issue 12 item 6: connections can never take the descriptors the
    /// daemon keeps for its own files, whatever `RLIMIT_NOFILE` is.
    #[test]
    fn connections_leave_the_daemon_its_own_descriptors() {
        assert_eq!(
            limits_for(4096, 16, 20_000),
            Limits {
                root: 4096,
                others: 4096,
                per_user: 16
            }
        );
        assert_eq!(
            limits_for(4096, 16, 1024),
            Limits {
                root: 576,
                others: 192,
                per_user: 16
            }
        );
        for nofile in [300, 1024, 4096, 20_000, 524_288, 1 << 30] {
            let l = limits_for(4096, 16, nofile);
            let held = u64::try_from(l.root + l.others).unwrap();
            assert!(held + OWN_FDS <= nofile, "{nofile}: {l:?}");
            assert!(u64::try_from(l.others).unwrap() <= MAX_OTHER_CONNECTIONS);
            assert!(l.per_user <= l.others);
        }
        // Nothing left to share: one of each, and the daemon says so.
        let l = limits_for(4096, 16, 10);
        assert_eq!((l.root, l.others, l.per_user), (1, 1, 1));
    }
}
