//! A real PostgreSQL for tests: `PgServer::start()` makes a cluster in a temporary directory
//! with Debian's `initdb` (found on PATH or under `/usr/lib/postgresql/*/bin`), password
//! authentication (scram-sha-256, a random password in a file the tests' configs name), a
//! free 127.0.0.1 port and its socket directory inside the temporary directory, and starts it
//! with `pg_ctl -w`. When the tests run as root (CI does), every server command runs as the
//! `postgres` system user (Debian's package creates it) through `setpriv`, with the directory
//! handed to that user: PostgreSQL refuses to run as root.
//!
//! One server per test binary; [`PgServer::create_database`] gives each test a fresh
//! database. `stop`, `restart` and `start_again` serve the failure tests; dropping the value
//! stops this server only (immediate mode) and removes its directory.
//!
//! Self-contained (no `super::`), so a test binary may include it with `#[path]`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The role `initdb` makes (`-U`).
pub const SUPERUSER: &str = "postgres";

/// One PostgreSQL server of this test process.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    /// `Some((uid, gid))` when server commands run as the `postgres` user.
    run_as: Option<(u32, u32)>,
    running: bool,
    databases: AtomicUsize,
}

impl PgServer {
    /// Makes and starts a server; panics with the reason when it cannot.
    pub fn start() -> PgServer {
        let bin = find_bin_dir().expect(
            "PostgreSQL's initdb was not found on PATH or under /usr/lib/postgresql/*/bin: \
             run scripts/install-deps.sh",
        );
        let dir = tempfile::Builder::new()
            .prefix("p11kms-pg-")
            .tempdir()
            .expect("tempdir");
        let run_as = if running_as_root() {
            Some(postgres_user().expect("running as root needs the `postgres` system user"))
        } else {
            None
        };
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let server = PgServer {
            port: free_port(),
            dir,
            bin,
            password,
            run_as,
            running: false,
            databases: AtomicUsize::new(0),
        };
        server.init();
        let mut server = server;
        server.start_again();
        server
    }

    fn init(&self) {
        std::fs::create_dir_all(self.socket_dir()).expect("socket dir");
        std::fs::write(self.password_file(), format!("{}\n", self.password)).expect("pwfile");
        set_mode(&self.password_file(), 0o600);
        if let Some((uid, gid)) = self.run_as {
            for p in [
                self.dir.path().to_path_buf(),
                self.socket_dir(),
                self.password_file(),
            ] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
            }
        }
        let data = self.data_dir();
        let pwfile = self.password_file();
        self.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "--auth=scram-sha-256".as_ref(),
                format!("--pwfile={}", pwfile.display()).as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.socket_dir().display()
        );
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
        self.running = true;
    }

    /// Stops the server (fast mode: clients are disconnected, as in a maintenance stop).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops and starts the server (a restart under load).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                mode.as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        self.running = false;
    }

    /// Creates a fresh, empty database and returns its name.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("p11kms_test_{n}");
        let port = self.port.to_string();
        let out = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER, &name])
            .output()
            .expect("createdb");
        assert_ok("createdb", &out);
        name
    }

    /// Runs SQL in `database` with psql (stops at the first error).
    pub fn psql(&self, database: &str, sql: &str) {
        let port = self.port.to_string();
        let out = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .output()
            .expect("psql");
        assert_ok("psql", &out);
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>` (no password: see
    /// [`PgServer::password_file`]).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The file holding the superuser's password (what `[store] password_file` names).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("pwfile")
    }

    /// The port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// A server command, as the `postgres` user when running as root, with a clean
    /// environment (only PATH, LANG and the password for client tools).
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut c = match self.run_as {
            Some(_) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C")
            .env("PGPASSWORD", &self.password)
            .current_dir(self.dir.path());
        c
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self.command(program).args(args).output().expect(program);
        if !out.status.success() {
            panic!(
                "{program} failed: {}\n{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let _ = self
                .command("pg_ctl")
                .args(["-D".as_ref(), data.as_os_str()])
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory holding initdb and pg_ctl: PATH first, then Debian's versioned directories
/// (newest first).
fn find_bin_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
            return Some(
                std::fs::canonicalize(d.join("initdb"))
                    .ok()?
                    .parent()?
                    .to_path_buf(),
            );
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop()
}

/// Whether this process runs as root (from /proc, no `unsafe`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The `postgres` user's (uid, gid), from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

/// A free 127.0.0.1 port (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
