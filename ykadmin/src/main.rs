//! ykadmin, the operator's tool; its subcommands are documented in
//! ykadmin(8), made from the clap definition below (`ykadmin man`).
//!
//! Exit codes (also in `ykadmin --help`):
//! - 0: done, and the answer was yes (`verify`: `OK`; `decrypt`: an `OK`
//!   line; `aeads check`: every file good; imports: nothing failed;
//!   `status`: no part is an error; `metrics`: written from the daemon's
//!   answer);
//! - 1: done, and the answer was no (a status word other than `OK`, a
//!   failed line, a bad file, a conflict, a part of `status` that is an
//!   error);
//! - 2: the command line is wrong (also `--json` for a subcommand whose
//!   output has a format of its own);
//! - 3: ykadmin could not do its job: configuration unreadable, daemon not
//!   reachable (`metrics` still writes `ykhsm_up 0`), a file that cannot be
//!   read or written.
//!
//! With `--json` a subcommand prints exactly one JSON document on standard
//! output, from the serde types of [`ykadmin::json`], and nothing else
//! there; warnings and progress go to standard error.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use ykadmin::counters_text;
use ykadmin::digest;
use ykadmin::generate;
use ykadmin::import;
use ykadmin::json;
use ykadmin::metrics;
use ykadmin::otp_input;
use ykadmin::report;
use ykhsm_config::Config;
use ykhsm_core::account::Account;
use ykhsm_core::authfile;
use ykhsm_core::keyhandle::KeyHandleName;
use ykhsm_core::otp::Otp;
use ykhsm_core::otp::PublicId;
use ykhsm_core::serial;
use ykhsm_proto::report::Health;
use ykhsm_proto::{Request, Response, ServerUid, Status, StatusReport, Zeroizing, call};

/// How long ykadmin waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "ykadmin",
    version,
    about = "The operator's tool of ykhsm: import, enroll, revoke, verify, decrypt, generate keys, replicate counters",
    after_help = "Exit codes: 0 done and yes; 1 done and no (a status other than OK, a bad line, \
                  a conflict, a status check that is an error); 2 bad command line; 3 could not do \
                  the job (configuration, daemon unreachable, file error)."
)]
struct Cli {
    /// The daemon's configuration (for the socket, the authfile and the AEAD store).
    #[arg(long, default_value = "/etc/ykhsm/ykhsmd.toml", global = true)]
    config: PathBuf,
    /// Machine-readable output: one JSON document on standard output and
    /// nothing else there. Not for `man`, `completions`, `counters export`
    /// and `metrics`, whose output has a format of its own.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Imports YubiKey secrets from `ykksm-export` output (with or without
    /// the `# ykksm 1` header): for each key and key handle the daemon's
    /// backend wraps them into an AEAD, written in pyhsm's layout. Keys
    /// already there with the same secret are skipped; a different secret is
    /// a conflict unless --force. Bad lines are named; the good ones are
    /// still imported. The input holds AES keys: treat it like them.
    ImportYkksm {
        /// A key handle to import under (repeatable); default: every
        /// configured one.
        #[arg(long = "key-handle")]
        key_handles: Vec<String>,
        /// Replace an AEAD that holds a different secret.
        #[arg(long)]
        force: bool,
        /// The export (default: standard input).
        file: Option<PathBuf>,
    },
    /// Add a key to USER's line of the authfile. KEY is a public id (2–16
    /// modhex characters) or a whole OTP touched from the key: an OTP is
    /// verified by the daemon first and its counter recorded, so it cannot
    /// be used again. KEY `-` reads it from standard input (one line);
    /// without KEY a terminal prompts for it (no echo).
    ///
    /// An OTP given as an argument is visible to every local user (ps)
    /// until used, and stays in the shell's history.
    Enroll {
        user: String,
        /// A public id or an OTP; `-`: read from standard input; left out:
        /// prompted for.
        key: Option<String>,
    },
    /// Remove a key (or all of USER's keys) from the authfile: from every
    /// line ykhsmd counts for USER, including lines written under a name
    /// the system's user database resolves to the same account (`ALICE`,
    /// `alice@corp` with sssd). USER's line stays, empty — USER then needs
    /// a key and is refused, also under `nullok` — unless --purge removes
    /// it.
    Revoke {
        user: String,
        pubid: Option<String>,
        /// Remove USER's line(s) altogether (under `nullok` USER then logs
        /// in without a second factor).
        #[arg(long)]
        purge: bool,
    },
    /// New YubiKey secrets from the OS's random source, sealed into AEADs by
    /// the daemon's backend. The `ykman` and `ykpersonalize` lines that
    /// program the keys (they carry the AES keys) go to --out, created 0600,
    /// never to the terminal.
    Generate {
        /// Public ids from serial numbers N, N+1, … (the `vv…` form of
        /// `pubid-from-serial --ykman`).
        #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
        serial: Option<u32>,
        /// Public ids of a modhex prefix and a running number (12 characters).
        #[arg(long)]
        prefix: Option<String>,
        /// How many keys.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The key handle to seal them under (default: the first configured).
        #[arg(long = "key-handle")]
        key_handle: Option<String>,
        /// Where the programming lines go (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Users, their keys, each key's last counter and when it was last used.
    List { user: Option<String> },
    /// The check a login makes (consumes the OTP); prints the status word.
    /// OTP `-` reads it from standard input (one line); without OTP a
    /// terminal prompts for it (no echo).
    ///
    /// Given as an argument the OTP is visible to every local user (ps)
    /// until used, and stays in the shell's history.
    Verify {
        user: String,
        /// The OTP; `-`: read from standard input; left out: prompted for.
        otp: Option<String>,
    },
    /// What yubikey-ksm would answer for OTP, byte for byte; consumes nothing.
    /// OTP `-` reads it from standard input (one line); without OTP a
    /// terminal prompts for it (no echo).
    ///
    /// Given as an argument the OTP is visible to every local user (ps), and
    /// stays in the shell's history: decrypt does not consume it, so it
    /// would still log in.
    Decrypt {
        /// The OTP; `-`: read from standard input; left out: prompted for.
        otp: Option<String>,
    },
    /// Daemon, backend and store health: one line per part, with ERROR or
    /// WARNING in front of what is wrong, and the daemon's counts. Exit 1
    /// if any part is an error, 3 if the daemon cannot be asked.
    Status,
    /// The daemon's health and counts in Prometheus's text format, for
    /// node_exporter's textfile collector (run it from a timer: see
    /// /usr/share/doc/ykhsm/examples/ykhsm-metrics.timer). With --out the
    /// file is replaced atomically (mode 0644); when the daemon cannot be
    /// asked it still says `ykhsm_up 0`, and ykadmin exits 3.
    Metrics {
        /// The file to replace, e.g.
        /// /var/lib/prometheus/node-exporter/ykhsm.prom (its directory must
        /// exist); default: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The public id of a key programmed from its serial number.
    PubidFromSerial {
        serial: u32,
        /// The form `ykman otp yubiotp --serial-public-id` programs (vv…)
        /// instead of the personalisation GUI's (cccccc…).
        #[arg(long)]
        ykman: bool,
    },
    /// Counter replication between bastions.
    #[command(subcommand)]
    Counters(CountersCommand),
    /// Writes the man page ykadmin.8 (roff) to standard output.
    Man,
    /// Writes shell completions to standard output (bash, zsh, fish, …).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The AEAD store.
    #[command(subcommand)]
    Aeads(AeadsCommand),
    /// The counter store several bastions share (the [fleet] table of
    /// ykhsmd.toml): a PostgreSQL database. ykadmin connects to it itself,
    /// with the daemon's settings, waiting up to timeout_ms or 5 s,
    /// whichever is longer.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The YubiHSM (backend = "yubihsm").
    #[command(subcommand)]
    Hsm(HsmCommand),
}

#[derive(Subcommand, Debug)]
enum HsmCommand {
    /// Unlocks the YubiHSM's key store: prompts (without echo) for the
    /// master key in hex (64 digits on firmware 1.0+, 32 on 0.9.x) and then
    /// for an OTP of the HSM's admin YubiKey; an empty answer skips either.
    /// Both go to the running daemon, which hands them to the device and
    /// keeps neither. Without a terminal, reads the same two lines from
    /// standard input. Needed after every power cycle of a locked HSM.
    Unlock {
        /// Only the admin OTP (no master key prompt).
        #[arg(long, conflicts_with = "no_otp")]
        otp_only: bool,
        /// Only the master key (no OTP prompt).
        #[arg(long)]
        no_otp: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AeadsCommand {
    /// Walks the store: per key handle, how many AEADs, and each file that
    /// is unreadable, malformed or does not authenticate (the daemon's
    /// backend opens each one), by name. Exit 0 only if all are good.
    Check,
    /// SHA-1 over the store's files (sorted relative paths and bytes), one
    /// line: equal on two hosts means the same store.
    Digest {
        /// One line per public id instead.
        #[arg(long)]
        per_key: bool,
    },
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Creates the store's schema (the tables ykhsm_schema and
    /// ykhsm_counters), or migrates one an older ykhsm made; prints which.
    /// Safe to run again (then it does nothing) and from several hosts at
    /// once. A schema a newer ykhsm made is refused (exit 1): it is never
    /// downgraded. The role needs to own the database, or to be allowed to
    /// create tables in it.
    Init,
    /// Whether the store answers, its PostgreSQL version, its schema
    /// version and how many keys it holds. Exit 0 when it answers with the
    /// schema this ykhsm knows; 1 when there is no [fleet] table, the store
    /// cannot be reached or refuses, or its schema is missing, older or
    /// newer (the message says what to do).
    Status,
}

#[derive(Subcommand, Debug)]
enum CountersCommand {
    /// Every key's generation and last accepted counters, in ykhsm's text
    /// format (`# ykhsm-counters 2`), to FILE or standard output.
    Export { file: Option<PathBuf> },
    /// Merges an export (version 2 or 1) into the running daemon: per key
    /// the higher generation wins, then the higher counters; nothing is
    /// lowered; safe while it verifies.
    Merge { file: Option<PathBuf> },
    /// Reads `ykval-export` output so every key starts at the counters
    /// YK-VAL last accepted (an OTP YK-VAL accepted is then a replay here).
    /// Counters belong to the public id: the keys may be imported before
    /// or after.
    ImportYkval { file: Option<PathBuf> },
    /// Starts a key afresh, for a YubiKey reprogrammed with a new secret
    /// (it keeps its public id but its counter starts again): the key's
    /// generation goes up by one, its counters are forgotten, and the new
    /// generation is bound to the AEAD files the store holds for it now —
    /// so replace the AEAD first (`import-ykksm --force` does both). Every
    /// OTP the key's current secret ever made can be accepted once more:
    /// run it only for a new secret. Logged by the daemon; shown by `list`;
    /// carried to other hosts by `counters export | counters merge`, where
    /// an AEAD still holding the old secret is refused.
    Reset { public_id: String },
}

/// A failure, with the exit code it means.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Could not do the job (exit 3).
fn trouble(message: impl Into<String>) -> Failure {
    fail(3, message)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("ykadmin: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| trouble(e.to_string()))
}

fn ask(config: &Config, request: &Request) -> Result<Response, Failure> {
    match call(&config.socket, ServerUid::ROOT, request, TIMEOUT) {
        Ok(Response::Failed { status, message }) => {
            let code = if status == Status::BackendError { 3 } else { 1 };
            Err(fail(code, format!("{status}: {message}")))
        }
        Ok(Response::ProtocolError { message }) => {
            Err(trouble(format!("the daemon did not understand: {message}")))
        }
        Ok(r) => Ok(r),
        Err(e) => Err(trouble(format!(
            "ykhsmd at {}: {e} (is it running? `ykhsmd --config {} --check`)",
            config.socket.display(),
            config.path.display()
        ))),
    }
}

/// The daemon's status report.
fn status_report(config: &Config) -> Result<StatusReport, Failure> {
    match ask(config, &Request::Status)? {
        Response::StatusInfo { report } => Ok(*report),
        other => Err(unexpected(&other)),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `metrics`: the exposition text to `out` (replaced atomically) or
/// standard output. When the daemon cannot be asked — or its config read
/// — the text still says `ykhsm_up 0`, so an alert fires, and the reason
/// is the error (exit 3).
fn metrics(cli: &Cli, out: Option<&Path>) -> Result<u8, Failure> {
    let answer = load_config(&cli.config).and_then(|config| status_report(&config));
    let text = metrics::exposition(answer.as_ref().ok());
    match out {
        Some(path) => {
            metrics::write_atomically(path, text.as_bytes()).map_err(|e| trouble(e.to_string()))?
        }
        None => write_out(None, text.as_bytes())?,
    }
    answer.map(|_| 0)
}

fn unexpected(r: &Response) -> Failure {
    trouble(format!("unexpected answer from the daemon: {r:?}"))
}

/// Prints `value` as one JSON document and a newline on standard output.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| trouble(format!("JSON: {e}")))?;
    let mut out = io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| trouble(format!("standard output: {e}")))
}

/// `--json` for a subcommand whose output has a format of its own: a
/// usage error (exit 2), so a program never gets something else than it
/// asked for.
fn refuse_json(command: &Command) -> Result<(), Failure> {
    let what = match command {
        Command::Man => "`man` writes a man page (roff)",
        Command::Completions { .. } => "`completions` writes a shell script",
        Command::Counters(CountersCommand::Export { .. }) => {
            "`counters export` writes ykhsm's export format, which `counters merge` reads"
        }
        Command::Metrics { .. } => "`metrics` writes Prometheus's text format",
        _ => return Ok(()),
    };
    Err(fail(2, format!("--json: {what}, not JSON")))
}

fn run(cli: &Cli) -> Result<u8, Failure> {
    if cli.json {
        refuse_json(&cli.command)?;
    }
    match &cli.command {
        Command::PubidFromSerial { serial: n, ykman } => {
            let id = if *ykman {
                serial::public_id_ykman(*n)
            } else {
                serial::public_id_personalization_gui(*n)
            };
            if cli.json {
                print_json(&json::PublicIdOfSerial {
                    serial: *n,
                    public_id: &id,
                })?;
            } else {
                println!("{id}");
            }
            Ok(0)
        }
        Command::Status => {
            let config = load_config(&cli.config)?;
            let report = status_report(&config)?;
            if cli.json {
                print_json(&report::Json::new(&report))?;
            } else {
                print!("{}", report::text(&report, unix_now()));
            }
            Ok(u8::from(report.health() == Health::Error))
        }
        Command::Metrics { out } => metrics(cli, out.as_deref()),
        Command::Verify { user, otp } => {
            let config = load_config(&cli.config)?;
            let request = Request::Verify {
                user: user.clone(),
                otp: otp_from(otp.as_deref(), "OTP", OTP_PROMPT)?,
            };
            let status = match call(&config.socket, ServerUid::ROOT, &request, TIMEOUT) {
                Ok(Response::Verdict { status } | Response::Failed { status, .. }) => status,
                Ok(other) => return Err(unexpected(&other)),
                Err(e) => {
                    return Err(trouble(format!(
                        "ykhsmd at {}: {e}",
                        config.socket.display()
                    )));
                }
            };
            if cli.json {
                print_json(&json::Verified {
                    user,
                    status: status.as_str(),
                })?;
            } else {
                println!("{status}");
            }
            Ok(u8::from(status != Status::Ok))
        }
        Command::Decrypt { otp } => {
            let config = load_config(&cli.config)?;
            let request = Request::Decrypt {
                otp: otp_from(otp.as_deref(), "OTP", OTP_PROMPT)?,
            };
            match ask(&config, &request)? {
                Response::Decrypted { line, public_id } => {
                    if cli.json {
                        print_json(&json::Decrypted {
                            public_id: &public_id,
                            answer: &line,
                        })?;
                    } else {
                        // yubikey-ksm's answer, byte for byte.
                        let mut out = io::stdout().lock();
                        let _ = out.write_all(line.as_bytes());
                        if !line.ends_with('\n') {
                            let _ = out.write_all(b"\n");
                        }
                    }
                    Ok(u8::from(!line.starts_with("OK")))
                }
                other => Err(unexpected(&other)),
            }
        }
        Command::Counters(CountersCommand::Export { file }) => {
            let config = load_config(&cli.config)?;
            let records = match ask(&config, &Request::CountersExport)? {
                Response::Counters { records } => records,
                other => return Err(unexpected(&other)),
            };
            let mut text = Vec::new();
            counters_text::write_export(&records, &mut text).map_err(|e| trouble(e.to_string()))?;
            write_out(file.as_deref(), &text)?;
            eprintln!("ykadmin: exported {} keys", records.len());
            Ok(0)
        }
        Command::Counters(CountersCommand::Merge { file }) => {
            let config = load_config(&cli.config)?;
            let text = read_in(file.as_deref())?;
            let records = counters_text::parse_export(&text).map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                fail(
                    1,
                    format!("{}: {}", shown(file.as_deref()), lines.join("; ")),
                )
            })?;
            let n = records.len();
            match ask(&config, &Request::CountersMerge { records })? {
                Response::Merged { raised, unchanged } => {
                    if cli.json {
                        print_json(&json::Merged {
                            records: n,
                            raised,
                            unchanged,
                        })?;
                    } else {
                        println!("merged {n} records: raised {raised}, unchanged {unchanged}");
                    }
                    Ok(0)
                }
                other => Err(unexpected(&other)),
            }
        }
        Command::Counters(CountersCommand::ImportYkval { file }) => {
            import_ykval(cli, file.as_deref())
        }
        Command::Counters(CountersCommand::Reset { public_id }) => {
            let config = load_config(&cli.config)?;
            let id = PublicId::parse(public_id)
                .ok()
                .filter(|id| !id.is_empty())
                .ok_or_else(|| fail(2, format!("{public_id:?} is not a public id")))?;
            let request = Request::CountersReset {
                public_id: id.to_string(),
                aeads: Vec::new(),
                reason: "ykadmin counters reset".into(),
            };
            match ask(&config, &request)? {
                Response::Reset { generation, aeads } => {
                    if cli.json {
                        print_json(&json::Reset {
                            public_id: id.as_str(),
                            generation,
                            aeads,
                        })?;
                    } else {
                        println!(
                            "{id}: counters reset; generation {generation}, bound to {aeads} AEAD file{}",
                            if aeads == 1 { "" } else { "s" }
                        );
                    }
                    Ok(0)
                }
                other => Err(unexpected(&other)),
            }
        }
        Command::Aeads(AeadsCommand::Check) => aeads_check(cli),
        Command::Fleet(FleetCommand::Init) => fleet_init(cli),
        Command::Fleet(FleetCommand::Status) => fleet_status(cli),
        Command::Hsm(HsmCommand::Unlock { otp_only, no_otp }) => {
            hsm_unlock(cli, !*otp_only, !*no_otp)
        }
        Command::Aeads(AeadsCommand::Digest { per_key }) => {
            let config = load_config(&cli.config)?;
            let files = digest::files(&config.aead_dir).map_err(|e| trouble(e.to_string()))?;
            if *per_key {
                let keys = digest::per_key(&files);
                if cli.json {
                    print_json(&keys)?;
                } else {
                    for (id, d) in keys {
                        println!("{id} {d}");
                    }
                }
            } else if cli.json {
                print_json(&json::Digest {
                    digest: &digest::digest(&files),
                    files: files.len(),
                })?;
            } else {
                println!("{}  {} files", digest::digest(&files), files.len());
            }
            Ok(0)
        }
        Command::ImportYkksm {
            key_handles,
            force,
            file,
        } => import_ykksm(cli, key_handles, *force, file.as_deref()),
        Command::Generate {
            serial,
            prefix,
            count,
            key_handle,
            out,
        } => {
            let config = load_config(&cli.config)?;
            let kh = match key_handle {
                Some(n) => n
                    .parse::<KeyHandleName>()
                    .map_err(|e| fail(2, format!("--key-handle {n}: {e}")))?,
                None => config
                    .key_handles
                    .first()
                    .cloned()
                    .ok_or_else(|| trouble("no key handle configured"))?,
            };
            let how = match (serial, prefix) {
                (Some(n), _) => generate::Ids::Serial(*n),
                (None, Some(p)) => generate::Ids::Prefix(p.clone()),
                (None, None) => return Err(fail(2, "give --serial or --prefix")),
            };
            let store = config.aead_store(config.key_handles.clone());
            let made = generate::generate(&config.socket, &store, &kh, &how, *count, out)
                .map_err(|e| fail(1, e.to_string()))?;
            if cli.json {
                print_json(&json::Generated {
                    key_handle: kh.spelled(),
                    public_ids: &made.public_ids,
                    out: out.display().to_string(),
                })?;
                return Ok(0);
            }
            println!(
                "generated {} keys under key handle {}: {}",
                made.public_ids.len(),
                kh.spelled(),
                made.public_ids.join(" ")
            );
            println!(
                "programming lines in {} (mode 0600; they hold the AES keys: shred it once the keys are programmed)",
                out.display()
            );
            Ok(0)
        }
        Command::Man => {
            let out = ykadmin::man::render(<Cli as clap::CommandFactory>::command())
                .map_err(|e| trouble(e.to_string()))?;
            write_out(None, &out)?;
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "ykadmin", &mut io::stdout());
            Ok(0)
        }
        Command::Enroll { user, key } => enroll(cli, user, key.as_deref()),
        Command::Revoke { user, pubid, purge } => {
            let config = load_config(&cli.config)?;
            let edit = authfile::rewrite(&config.authfile, |text| {
                authfile::revoke(text, user, pubid.as_deref(), *purge, &Account::lookup)
            })
            .map_err(|e| fail(1, e.to_string()))?;
            if cli.json {
                print_json(&json::Revoked {
                    user,
                    removed: &edit.removed,
                    purged: *purge,
                    authfile: config.authfile.display().to_string(),
                })?;
                return Ok(0);
            }
            let removed = if edit.removed.is_empty() {
                "nothing".to_owned()
            } else {
                edit.removed.join(", ")
            };
            if *purge {
                println!("revoked {removed} of {user}; {user}'s line removed");
            } else {
                println!(
                    "revoked {removed} of {user} in {} ({user} keeps a line: refused until a key is enrolled)",
                    config.authfile.display()
                );
            }
            Ok(0)
        }
        Command::List { user } => list(cli, user.as_deref()),
    }
}

/// The prompt of `verify` and `decrypt` without their OTP argument.
/// The least ykadmin waits for the fleet store: it is not a login.
const FLEET_MIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The store of the configuration's [fleet] table, not yet connected;
/// `code` is the exit code when there is no such table.
fn fleet_store(config: &Config, code: u8) -> Result<ykhsm_fleet::Fleet, Failure> {
    let Some(settings) = &config.fleet else {
        return Err(fail(
            code,
            format!(
                "{}: no [fleet] table: this host's counters are its own (ykhsmd.toml(5), FLEET)",
                config.path.display()
            ),
        ));
    };
    let mut settings = settings.clone();
    settings.timeout = settings.timeout.max(FLEET_MIN_TIMEOUT);
    ykhsm_fleet::Fleet::new(&settings).map_err(|e| trouble(e.to_string()))
}

fn fleet_init(cli: &Cli) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let mut fleet = fleet_store(&config, 3)?;
    let outcome = fleet.init().map_err(|e| match e.class() {
        ykhsm_fleet::ErrorClass::Schema => fail(1, e.to_string()),
        _ => trouble(e.to_string()),
    })?;
    if cli.json {
        print_json(&json::FleetInit::new(fleet.store(), outcome))?;
    } else {
        println!("fleet store {}: {outcome}", fleet.store());
    }
    Ok(0)
}

fn fleet_status(cli: &Cli) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let mut fleet = fleet_store(&config, 1)?;
    let store = fleet.store().to_owned();
    let answer = fleet.status();
    let doc = json::FleetStatus::new(&store, &answer);
    if cli.json {
        print_json(&doc)?;
    } else if let Ok(s) = &answer {
        println!(
            "fleet store {store}: connected (PostgreSQL {})",
            s.server_version
        );
        match s.schema_version {
            Some(v) => println!("schema version {v} (this ykhsm: {})", s.known_version),
            None => println!("no schema"),
        }
        if let Some(rows) = s.rows {
            println!("keys: {rows}");
        }
    } else {
        println!("fleet store {store}: not connected");
    }
    match (answer, doc.problem) {
        (Err(e), _) => Err(fail(1, e.to_string())),
        (Ok(_), Some(problem)) => Err(fail(1, format!("fleet store {store}: {problem}"))),
        (Ok(_), None) => Ok(0),
    }
}

const OTP_PROMPT: &str = "YubiKey OTP (touch the key): ";

/// An OTP argument as [`otp_input::get`] reads it, its errors with their
/// exit codes.
fn otp_from(
    arg: Option<&str>,
    what: &'static str,
    prompt: &str,
) -> Result<Zeroizing<String>, Failure> {
    otp_input::get(arg, what, prompt).map_err(|e| fail(e.exit_code(), e.to_string()))
}

fn enroll(cli: &Cli, user: &str, key: Option<&str>) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let key = otp_from(
        key,
        "public id or OTP",
        "Public id, or an OTP (touch the key): ",
    )?;
    let mut verified = None;
    let public_id = if key.len() > 16 {
        // A whole OTP: the daemon checks it and records its counter.
        let parsed =
            Otp::parse(&key).map_err(|e| fail(1, format!("not a public id, nor an OTP: {e}")))?;
        let request = Request::ConsumeOtp { otp: key };
        match ask(&config, &request)? {
            Response::Consumed {
                status: Status::Ok,
                public_id,
                counter,
                session_use,
            } => {
                if !cli.json {
                    println!(
                        "OTP of {public_id} verified (counter {counter}, session use {session_use})"
                    );
                }
                verified = Some(json::Counters {
                    counter,
                    session_use,
                });
                public_id
            }
            Response::Consumed { status, .. } => {
                return Err(fail(
                    1,
                    format!("the OTP of {} was refused: {status}", parsed.public_id()),
                ));
            }
            other => return Err(unexpected(&other)),
        }
    } else {
        key.as_str().to_owned()
    };
    if public_id.len() != 12 {
        eprintln!(
            "ykadmin: warning: {public_id} is {} characters; pam_yubico's token_id_length is 12 unless set",
            public_id.len()
        );
    }
    let edit = authfile::rewrite(&config.authfile, |text| {
        authfile::enroll(text, user, &public_id, &Account::lookup)
    })
    .map_err(|e| fail(1, e.to_string()))?;
    if cli.json {
        print_json(&json::Enrolled {
            user,
            public_id: &public_id,
            changed: edit.changed,
            authfile: config.authfile.display().to_string(),
            verified,
        })?;
    } else if edit.changed {
        println!(
            "enrolled {public_id} for {user} in {}",
            config.authfile.display()
        );
    } else {
        println!("{public_id} was already enrolled for {user}");
    }
    Ok(0)
}

fn list(cli: &Cli, only: Option<&str>) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let (_, text) = authfile::read(&config.authfile).map_err(|e| trouble(e.to_string()))?;
    let users = authfile::list(&text);
    // Counters, if the daemon is there (listing works without it).
    let records = match call(
        &config.socket,
        ServerUid::ROOT,
        &Request::CountersExport,
        TIMEOUT,
    ) {
        Ok(Response::Counters { records }) => Some(records),
        _ => None,
    };
    let last = |id: &str| {
        records
            .as_ref()
            .and_then(|r| r.iter().find(|c| c.public_id == id))
    };
    let mut listed = Vec::new();
    let wanted =
        |u: &str| only.is_none_or(|o| o == u || ykhsm_core::username::visible_part(u) == o);
    for (user, ids) in users.iter().filter(|(u, _)| wanted(u)) {
        // A name that is not what it looks like (`\u{feff}alice`): ykhsmd
        // refuses the line and fails closed the user it meant.
        if let Some((at, c)) = ykhsm_core::username::first_invisible(user) {
            let meant = ykhsm_core::username::visible_part(user);
            if !cli.json {
                println!(
                    "{user:?}  (refused: an invisible or control character in the name, {}; ykhsmd fails {meant:?} closed)",
                    ykhsm_core::username::describe(at, c)
                );
            }
            listed.push(json::ListedUser {
                user: user.clone(),
                fails_closed_for: Some(meant),
                keys: Vec::new(),
            });
            continue;
        }
        if ids.is_empty() && !cli.json {
            println!("{user}  (no key: refused)");
        }
        let mut keys = Vec::new();
        for id in ids {
            let mut key = json::ListedKey {
                public_id: id.clone(),
                generation: None,
                counter: None,
                session_use: None,
                last_used: None,
                reset_at: None,
                bound_aeads: None,
            };
            let Some(c) = last(id) else {
                if !cli.json {
                    println!(
                        "{user}  {id}  never used{}",
                        if records.is_none() {
                            " (daemon not reachable)"
                        } else {
                            ""
                        }
                    );
                }
                keys.push(key);
                continue;
            };
            key.generation = Some(c.generation);
            // A reset key says so, with when, and how many AEADs its
            // generation is bound to.
            if c.generation > 0 {
                key.reset_at = Some(c.reset_at);
                key.bound_aeads = Some(c.aeads.len());
            }
            let reset = (c.generation > 0).then(|| {
                format!(
                    "  generation={} reset_at={} bound_aeads={}",
                    c.generation,
                    c.reset_at,
                    c.aeads.len()
                )
            });
            match c.last {
                Some((counter, session_use)) => {
                    if !cli.json {
                        println!(
                            "{user}  {id}  counter={counter} session_use={session_use} last_used={}{}",
                            c.modified,
                            reset.unwrap_or_default()
                        );
                    }
                    key.counter = Some(counter);
                    key.session_use = Some(session_use);
                    key.last_used = Some(c.modified);
                }
                None => {
                    if !cli.json {
                        println!(
                            "{user}  {id}  never used since the reset{}",
                            reset.unwrap_or_default()
                        );
                    }
                }
            }
            keys.push(key);
        }
        listed.push(json::ListedUser {
            user: user.clone(),
            fails_closed_for: None,
            keys,
        });
    }
    if cli.json {
        print_json(&listed)?;
    }
    Ok(0)
}

fn import_ykksm(
    cli: &Cli,
    names: &[String],
    force: bool,
    file: Option<&Path>,
) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let key_handles = if names.is_empty() {
        config.key_handles.clone()
    } else {
        names
            .iter()
            .map(|n| {
                n.parse::<KeyHandleName>()
                    .map_err(|e| fail(2, format!("--key-handle {n}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let input = Zeroizing::new(read_bytes(file)?);
    let progress = io::stderr().is_terminal();
    let report = import::import_ykksm(&config, &input, &key_handles, force, progress)
        .map_err(|e| trouble(e.to_string()))?;
    if cli.json {
        print_json(&json::Imported::new(&report))?;
        return Ok(u8::from(!report.is_success()));
    }
    for note in &report.replacements {
        eprintln!("ykadmin: replaced: {note}");
    }
    for note in &report.resets {
        eprintln!("ykadmin: reset: {note}");
    }
    for note in &report.failures {
        eprintln!("ykadmin: {}: {note}", shown(file));
    }
    println!("{}", report.summary());
    Ok(u8::from(!report.is_success()))
}

/// `hsm unlock`: the secrets from the terminal (no echo) or standard input,
/// to the daemon. Nothing is printed that was typed.
fn hsm_unlock(cli: &Cli, want_key: bool, want_otp: bool) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let interactive = io::stdin().is_terminal();
    let mut lines = io::stdin().lock();
    let mut answer = |prompt: &str| -> Result<Zeroizing<String>, Failure> {
        let text = if interactive {
            rpassword::prompt_password(prompt)
                .map(Zeroizing::new)
                .map_err(|e| trouble(format!("the terminal: {e}")))?
        } else {
            let mut line = Zeroizing::new(String::new());
            io::BufRead::read_line(&mut lines, &mut line)
                .map_err(|e| trouble(format!("standard input: {e}")))?;
            line
        };
        Ok(Zeroizing::new(text.trim().to_owned()))
    };
    let master_key = if want_key {
        let typed = answer("YubiHSM master key (hex; empty to skip): ")?;
        let digits: Zeroizing<String> =
            Zeroizing::new(typed.chars().filter(|c| !c.is_whitespace()).collect());
        Zeroizing::new(hex::decode(digits.as_bytes()).map_err(|_| {
            fail(
                1,
                "the master key must be hex digits (64 for firmware 1.0+, 32 for 0.9.x)",
            )
        })?)
    } else {
        Zeroizing::new(Vec::new())
    };
    let otp = if want_otp {
        answer("OTP of the HSM's admin YubiKey (touch it; empty to skip): ")?
    } else {
        Zeroizing::new(String::new())
    };
    if master_key.is_empty() && otp.is_empty() {
        return Err(fail(1, "nothing given: no master key and no admin OTP"));
    }
    match ask(&config, &Request::HsmUnlock { master_key, otp })? {
        Response::Verdict { status: Status::Ok } => {
            if cli.json {
                print_json(&json::Unlocked { unlocked: true })?;
            } else {
                println!("unlocked");
            }
            Ok(0)
        }
        other => Err(unexpected(&other)),
    }
}

fn read_bytes(file: Option<&Path>) -> Result<Vec<u8>, Failure> {
    match file {
        None => {
            let mut b = Vec::new();
            io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| trouble(format!("standard input: {e}")))?;
            Ok(b)
        }
        Some(p) if p == Path::new("-") => read_bytes(None),
        Some(p) => fs::read(p).map_err(|e| trouble(format!("{}: {e}", p.display()))),
    }
}

fn aeads_check(cli: &Cli) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let mut bad_total = 0usize;
    let mut checked = Vec::new();
    for kh in &config.key_handles {
        let dir = config.aead_dir.join(kh.spelled());
        if !dir.is_dir() {
            if !cli.json {
                println!(
                    "key handle {}: no directory {}",
                    kh.spelled(),
                    dir.display()
                );
            }
            checked.push(json::AeadsChecked {
                key_handle: kh.spelled().to_owned(),
                path: dir.display().to_string(),
                directory: "missing",
                aeads: 0,
                good: 0,
                bad: Vec::new(),
            });
            continue;
        }
        // Names only: the store's lookup reads each file once.
        let files = digest::relative_paths(&dir).map_err(|e| trouble(e.to_string()))?;
        let store = config.aead_store(vec![kh.clone()]);
        let mut bad = Vec::new();
        for rel in &files {
            let rel = String::from_utf8_lossy(rel).into_owned();
            let path = dir.join(&rel);
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            let found = match PublicId::parse(name) {
                Err(e) => Err(format!("the file name is not a public id: {e}")),
                Ok(id) => match store.lookup(&id) {
                    Ok(Some(found)) if found.path == path => Ok(found),
                    Ok(_) => Err("not where pyhsm's layout puts this public id".to_owned()),
                    Err(e) => Err(e.to_string()),
                },
            };
            let verdict = found.and_then(|found| {
                let request = Request::CheckAead {
                    key_handle: found.key_handle.0,
                    nonce: found.nonce.0,
                    aead: found.aead.0,
                };
                match call(&config.socket, ServerUid::ROOT, &request, TIMEOUT) {
                    Ok(Response::Verdict { status: Status::Ok }) => Ok(()),
                    Ok(Response::Verdict { .. }) => Err(format!(
                        "does not authenticate under key handle {}",
                        found.key_handle.0
                    )),
                    Ok(Response::Failed { message, .. }) => Err(message),
                    Ok(other) => Err(format!("unexpected answer: {other:?}")),
                    Err(e) => Err(format!("ykhsmd at {}: {e}", config.socket.display())),
                }
            });
            if let Err(reason) = verdict {
                bad.push(json::BadAead {
                    file: path.display().to_string(),
                    reason,
                });
            }
        }
        if !cli.json {
            println!(
                "key handle {}: {} AEADs, {} good, {} bad",
                kh.spelled(),
                files.len(),
                files.len() - bad.len(),
                bad.len()
            );
            for b in &bad {
                println!("  BAD {}: {}", b.file, b.reason);
            }
        }
        bad_total += bad.len();
        checked.push(json::AeadsChecked {
            key_handle: kh.spelled().to_owned(),
            path: dir.display().to_string(),
            directory: "present",
            aeads: files.len(),
            good: files.len() - bad.len(),
            bad,
        });
    }
    if cli.json {
        print_json(&checked)?;
    }
    Ok(u8::from(bad_total > 0))
}

fn import_ykval(cli: &Cli, file: Option<&Path>) -> Result<u8, Failure> {
    let config = load_config(&cli.config)?;
    let text = read_in(file)?;
    let import = counters_text::parse_ykval(&text);
    // Counters belong to the public id, whichever key handles its AEADs
    // are under (or whether they are imported yet).
    let records: Vec<_> = import.keys.iter().map(|k| k.to_record()).collect();
    let n = records.len();
    let (raised, unchanged) = if records.is_empty() {
        (0, 0)
    } else {
        match ask(&config, &Request::CountersMerge { records })? {
            Response::Merged { raised, unchanged } => (raised, unchanged),
            other => return Err(unexpected(&other)),
        }
    };
    let inactive = import.inactive_public_ids();
    for p in &import.errors {
        eprintln!("ykadmin: {}: {p}", shown(file));
    }
    if cli.json {
        print_json(&json::YkvalImported {
            keys: n,
            raised,
            unchanged,
            skipped_never_used: import.skipped_never_used.len(),
            inactive,
            errors: import
                .errors
                .iter()
                .map(|e| json::LineError {
                    line: e.line,
                    reason: e.reason.clone(),
                })
                .collect(),
        })?;
        return Ok(u8::from(!import.errors.is_empty()));
    }
    println!(
        "counters of {n} keys merged: raised {raised}, unchanged {unchanged}; {} never used (skipped)",
        import.skipped_never_used.len()
    );
    if !inactive.is_empty() {
        println!(
            "YK-VAL had {} keys marked inactive; revoke them if they should stay disabled: {}",
            inactive.len(),
            inactive.join(" ")
        );
    }
    Ok(u8::from(!import.errors.is_empty()))
}

fn shown(file: Option<&Path>) -> String {
    file.map_or_else(|| "standard input".to_owned(), |p| p.display().to_string())
}

/// FILE (or standard input for none or `-`) as text.
fn read_in(file: Option<&Path>) -> Result<String, Failure> {
    String::from_utf8(read_bytes(file)?)
        .map_err(|_| trouble(format!("{}: not UTF-8 text", shown(file))))
}

fn write_out(file: Option<&Path>, bytes: &[u8]) -> Result<(), Failure> {
    match file {
        None => io::stdout()
            .write_all(bytes)
            .map_err(|e| trouble(format!("standard output: {e}"))),
        Some(p) if p == Path::new("-") => write_out(None, bytes),
        Some(p) => fs::write(p, bytes).map_err(|e| trouble(format!("{}: {e}", p.display()))),
    }
}
