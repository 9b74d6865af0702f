//! A real PostgreSQL server for the tests of PostgreSQL targets (Debian's `postgresql`
//! package, its binaries in `/usr/lib/postgresql/{version}/bin`).
//!
//! [`Postgres::start`] runs `initdb` into a fresh temporary directory as the `postgres`
//! user (the tests run as root, which PostgreSQL refuses to be), with a superuser
//! [`USER`] whose password is [`PASSWORD`] (scram over TCP, trust on the unix socket in
//! the same directory), starts it with `pg_ctl start -w` on a free loopback port (which
//! waits until it accepts connections, up to its deadline) and creates databases on
//! demand. [`Postgres::stop`] and [`Postgres::start_again`] stop and restart it on the
//! same data; `Drop` stops it (`-m immediate`) and removes the directory. Queries go
//! through `psql` ([`Postgres::query`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// The superuser the tests connect as.
pub const USER: &str = "doppel";
/// Its password (links carry it in their connection strings; it must never show).
pub const PASSWORD: &str = "pg-s3cret-9c1f";

/// A running PostgreSQL server in a temporary directory.
pub struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
    running: bool,
}

/// The newest installed server's binaries.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (Debian's postgresql package; .ci/run installs it)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().expect("a PostgreSQL version with pg_ctl")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Run `program` as the `postgres` user; panics with its output when it fails.
fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// initdb and start a server on a free loopback port.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("doppel-pg-")
            .tempdir()
            .expect("a temp dir");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown the temp dir to postgres");
        let data = dir.path().join("data");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                USER,
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        let mut pg = Postgres {
            bin,
            dir,
            port: free_port(),
            running: false,
        };
        pg.start_again();
        pg
    }

    /// Start the stopped server on the same data and port (waits until it is ready).
    pub fn start_again(&mut self) {
        assert!(!self.running, "PostgreSQL is running already");
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.running = true;
    }

    /// Stop the server (fast: connections are cut, as at a restart).
    pub fn stop(&mut self) {
        let data = self.dir.path().join("data");
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
        self.running = false;
    }

    /// A connection string for `database` with the password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Create a database (idempotent per name within a test run is the caller's care).
    pub fn create_database(&self, name: &str) {
        self.query("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// Run SQL through psql on the unix socket; its unaligned, tuples-only output
    /// (`|` between columns, a line per row). Panics when psql fails.
    pub fn query(&self, database: &str, sql: &str) -> String {
        self.try_query(database, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// As [`Self::query`], Err with psql's error output.
    pub fn try_query(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.path().join("data");
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output();
        }
    }
}
