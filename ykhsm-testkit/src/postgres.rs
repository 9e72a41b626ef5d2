//! A PostgreSQL server of the test's own: Debian's `postgresql-15`
//! binaries (`scripts/install-deps.sh` installs them), a new cluster in a
//! temporary directory, on a Unix socket in that directory and on
//! 127.0.0.1 at a free port. It never touches a cluster the package may
//! have started (port 5432, /var/run/postgresql).
//!
//! Authentication: `trust` on the Unix socket (the superuser `postgres`,
//! for [`Postgres::sql`]), `scram-sha-256` over TCP. The role `ykhsm` has a
//! random password ([`Postgres::password`]) and owns the database `ykhsm`.
//!
//! As root the binaries run as the `postgres` user (`runuser -u postgres
//! --`; initdb refuses root), and the temporary directory is handed to it;
//! as another user they run as that user. Readiness is `pg_ctl -w` (it
//! polls the server) with a deadline, never a fixed sleep. Dropping a
//! [`Postgres`] stops the server and removes the directory.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// How long `pg_ctl` may wait for the server to start or stop, seconds.
const PG_CTL_WAIT_S: u32 = 60;

/// The role and database the tests use.
pub const ROLE: &str = "ykhsm";

/// Where Debian's PostgreSQL binaries are: `YKHSM_TEST_PG_BIN`, or the
/// newest `/usr/lib/postgresql/*/bin` that has `initdb`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("YKHSM_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: \
             apt-get install postgresql-15 (scripts/install-deps.sh), or set YKHSM_TEST_PG_BIN"
        )
    })
}

/// A running (or stopped) PostgreSQL server in a temporary directory.
pub struct Postgres {
    /// Owned by the server's user; removed on drop.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    /// Run the binaries as `postgres` (we are root).
    as_postgres: bool,
    running: bool,
    /// TLS on, with a certificate for `localhost` from this CA (PEM).
    ca: Option<PathBuf>,
    /// Started inside this network namespace, listening on this address
    /// (its certificate is for that address).
    netns: Option<(String, String)>,
}

impl Postgres {
    /// A new cluster, started, with the role and database `ykhsm`.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// As [`Postgres::start`], with TLS on TCP: the server's certificate
    /// is for `localhost` only (no IP address), issued by a CA made for it
    /// ([`Postgres::ca_file`]). Plain connections are still accepted.
    pub fn start_with_tls() -> Self {
        Self::start_with(true)
    }

    /// A server inside the network namespace `ns` (the test's own: see
    /// [`crate::netns::Netns`]), listening on `ns.inner_ip` with TLS only
    /// over TCP there: its certificate is for that IP address, issued by
    /// [`Postgres::ca_file`]. [`Postgres::url_tls`] names the address.
    pub fn start_in(ns: &crate::netns::Netns) -> Self {
        Self::start_full(true, Some((ns.name().to_owned(), ns.inner_ip.clone())))
    }

    fn start_with(tls: bool) -> Self {
        Self::start_full(tls, None)
    }

    fn start_full(tls: bool, netns: Option<(String, String)>) -> Self {
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("ykhsm-pg.")
            .tempdir_in(traversable_tmp())
            .expect("a temporary directory for PostgreSQL");
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .expect("the user database")
                .expect("a `postgres` user (apt-get install postgresql-15)");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .expect("chown the temporary directory to postgres");
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let password = hex::encode(crate::random::<16>());
        let mut pg = Self {
            dir,
            bin: bin_dir(),
            port: 0,
            password,
            as_postgres,
            running: false,
            ca: None,
            netns,
        };
        pg.initdb();
        if tls {
            pg.make_certificates();
        }
        // Another process may take the free port between our look and the
        // server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => break,
                Err(e) => last = e,
            }
        }
        assert!(pg.running, "PostgreSQL did not start: {last}");
        let pw = pg.password.clone();
        pg.sql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{pw}'"),
        );
        // (Not in the same -c: CREATE DATABASE refuses a transaction block.)
        pg.sql("postgres", &format!("CREATE DATABASE {ROLE} OWNER {ROLE}"));
        pg
    }

    fn initdb(&self) {
        let pwfile = self.dir.path().join("superuser.pw");
        // The superuser gets a password too (never used: the socket trusts).
        self.write_owned(&pwfile, &hex::encode(crate::random::<16>()));
        let out = self.pg_cmd(
            "initdb",
            &[
                "-D",
                &self.data().display().to_string(),
                "-U",
                "postgres",
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if self.netns.is_some() {
            // Reached only through the namespace's veth pair: TLS and a
            // password from whatever address is on the other side.
            let hba = self.data().join("pg_hba.conf");
            let mut text = fs::read_to_string(&hba).unwrap();
            text.push_str("hostssl ykhsm ykhsm 0.0.0.0/0 scram-sha-256\n");
            fs::write(&hba, text).unwrap();
        }
        fs::create_dir_all(self.socket_dir()).unwrap();
        if self.as_postgres {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&self.socket_dir(), Some(user.uid), Some(user.gid)).unwrap();
        }
    }

    /// A CA, and a certificate and key for `localhost` that it issued, for
    /// the server (openssl's command line; Debian's `openssl`).
    fn make_certificates(&mut self) {
        let tls = self.dir.path().join("tls");
        let ca = make_ca(&tls, "ykhsm test CA");
        fs::write(
            tls.join("server.ext"),
            format!(
                "subjectAltName = {}\nbasicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
                match &self.netns {
                    Some((_, ip)) => format!("IP:{ip}"),
                    None => "DNS:localhost".to_owned(),
                }
            ),
        )
        .unwrap();
        openssl(
            &tls,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            &tls,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        for f in ["server.key", "server.crt"] {
            let text = fs::read_to_string(tls.join(f)).unwrap();
            self.write_owned(&self.data().join(f), &text);
        }
        self.ca = Some(ca);
    }

    /// The CA (PEM) the server's certificate chains to, with TLS
    /// ([`Postgres::start_with_tls`]); a root-owned 0644 file when the
    /// test runs as root, as `ca_file` requires.
    pub fn ca_file(&self) -> &Path {
        self.ca.as_deref().expect("started with TLS")
    }

    /// `postgresql://ykhsm@localhost:<port>/ykhsm`: the name the
    /// certificate is for ([`Postgres::start_with_tls`]).
    pub fn url_tls(&self) -> String {
        let host = self
            .netns
            .as_ref()
            .map_or("localhost", |(_, ip)| ip.as_str());
        format!("postgresql://{ROLE}@{host}:{}/{ROLE}", self.port)
    }

    /// A file the server's user can read.
    fn write_owned(&self, path: &Path, text: &str) {
        fs::write(path, text).unwrap();
        if self.as_postgres {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the role `ykhsm`.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgresql://ykhsm@127.0.0.1:<port>/ykhsm` (password authentication).
    pub fn url_tcp(&self) -> String {
        format!("postgresql://{ROLE}@127.0.0.1:{}/{ROLE}", self.port)
    }

    /// `host=<socket dir> port=<port> user=ykhsm dbname=ykhsm` (trusted).
    pub fn url_socket(&self) -> String {
        format!(
            "host={} port={} user={ROLE} dbname={ROLE}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Writes the role's password to `path`, mode 0600, owned by whoever
    /// runs the test (root in the suites: what `password_file` requires).
    pub fn write_password_file(&self, path: &Path) {
        fs::write(path, format!("{}\n", self.password)).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn try_start(&mut self) -> Result<(), String> {
        let listen = self
            .netns
            .as_ref()
            .map_or("127.0.0.1", |(_, ip)| ip.as_str());
        let mut options = format!(
            "-p {} -k {} -h {listen} -c fsync=off -c max_connections=50",
            self.port,
            self.socket_dir().display()
        );
        if self.ca.is_some() {
            // Relative to the data directory.
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let out = self.pg_cmd(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.path().join("server.log").display().to_string(),
                "-w",
                "-t",
                &PG_CTL_WAIT_S.to_string(),
                "-o",
                &options,
                "start",
            ],
        );
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ))
        }
    }

    /// Starts the server again on the same data, port and socket (after
    /// [`Postgres::stop`] or [`Postgres::crash`]).
    pub fn start_again(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, the
    /// data is kept); waits until it is down.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops the server the way a crash would (`-m immediate`: no
    /// checkpoint, recovery at the next start).
    pub fn crash(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let out = self.pg_cmd(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                mode,
                "-w",
                "-t",
                &PG_CTL_WAIT_S.to_string(),
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Whether the server is running (as far as this harness knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs SQL as the superuser on database `db` (psql, stop at the first
    /// error); panics on an error; returns what psql printed (unaligned,
    /// tuples only).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.try_sql(db, sql);
        assert!(
            out.status.success(),
            "psql: {}\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As [`Postgres::sql`], returning psql's output, success or not.
    pub fn try_sql(&self, db: &str, sql: &str) -> Output {
        self.pg_cmd(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.socket_dir().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ],
        )
    }

    /// One of the server's programs, as its user, from inside the
    /// temporary directory (so it never lacks a working directory).
    fn pg_cmd(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = match (&self.netns, self.as_postgres) {
            // The server (pg_ctl starts it) inside the namespace; psql and
            // initdb use the Unix socket and files, which it does not hide.
            (Some((ns, _)), true) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"])
                    .arg(&exe);
                c
            }
            (Some((ns, _)), false) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            (None, true) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&exe);
                c
            }
            (None, false) => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_cmd(
                "pg_ctl",
                &[
                    "-D",
                    &self.data().display().to_string(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}

/// Makes a CA in `dir` (created): `ca.key` and `ca.pem`, self-signed, for
/// two days; returns the certificate's path (mode 0644).
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let pem = dir.join("ca.pem");
    fs::set_permissions(&pem, fs::Permissions::from_mode(0o644)).unwrap();
    pem
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The temporary directory, if every directory above it lets others
/// through (the server's user must reach its data); else /tmp.
fn traversable_tmp() -> PathBuf {
    let tmp = std::env::temp_dir();
    let ok = tmp
        .ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if ok { tmp } else { PathBuf::from("/tmp") }
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}
