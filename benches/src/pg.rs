//! A throwaway PostgreSQL cluster for benchmark peers: `initdb` into a temporary directory,
//! `pg_ctl start` listening only on a unix socket in that directory (fsync and synchronous
//! commit on), connections through tokio-postgres, `pgbench` runs, and `pg_ctl stop` when the
//! cluster is stopped or dropped (so an error or panic in a benchmark never leaks a server).
//! PostgreSQL refuses to run as root; as root the server side runs as the `postgres` user via
//! `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};

/// Longest `pg_ctl` waits for start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// The system account the server runs as when we are root.
const SERVER_USER: &str = "postgres";

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
    running: bool,
}

/// Where the PostgreSQL binaries are: `$PG_BIN_DIR`, the Debian PostgreSQL 15 directory,
/// `pg_config --bindir`, else the `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(d);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return debian;
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default()
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn check(what: &str, out: Output) -> anyhow::Result<Output> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl PgCluster {
    /// Creates and starts a cluster. `settings` are extra `-c name=value` server settings
    /// (fsync and synchronous_commit are always on).
    pub fn start(settings: &[(&str, &str)]) -> anyhow::Result<PgCluster> {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("bench-pg-")
            .tempdir()
            .context("creating the cluster directory")?;
        let run_as = running_as_root().then(|| SERVER_USER.to_string());
        if let Some(user) = &run_as {
            check(
                "chown",
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(dir.path())
                    .output()
                    .context("running chown")?,
            )?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("choosing a port")?;
        let mut cluster = PgCluster {
            dir,
            bin,
            run_as,
            port,
            running: false,
        };
        let data = cluster.data_dir();
        cluster.server_cmd(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        )?;
        let mut options = format!(
            "-c port={} -c listen_addresses='' -c unix_socket_directories='{}' \
             -c fsync=on -c synchronous_commit=on -c max_connections=300",
            cluster.port,
            cluster.socket_dir().display()
        );
        for (k, v) in settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let log = cluster.dir.path().join("server.log");
        cluster.server_cmd(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
                "start",
            ],
        )?;
        cluster.running = true;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the server's unix socket (pass as `host`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path of a PostgreSQL client or server binary.
    pub fn bin(&self, name: &str) -> PathBuf {
        if self.bin.as_os_str().is_empty() {
            PathBuf::from(name)
        } else {
            self.bin.join(name)
        }
    }

    /// Runs a server-side binary (initdb, pg_ctl) as the server user.
    fn server_cmd(&self, name: &str, args: &[&str]) -> anyhow::Result<Output> {
        let bin = self.bin(name);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args).current_dir(self.dir.path());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        check(name, out)
    }

    /// A libpq-style connection string for the `postgres` database.
    pub fn conn_string(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Connects with tokio-postgres (the connection runs on a spawned task).
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.conn_string(), tokio_postgres::NoTls)
            .await
            .context("connecting to the benchmark cluster")?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("postgres connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// A `pgbench` command already pointed at this cluster; the caller adds the run's options.
    pub fn pgbench(&self) -> Command {
        let mut c = Command::new(self.bin("pgbench"));
        c.arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"])
            .env("PGDATABASE", "postgres");
        c
    }

    /// The tail of the server log, for error reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the server (fast shutdown) and removes its directory.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_server()
    }

    fn stop_server(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let data = self.data_dir();
        self.server_cmd(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
                "stop",
            ],
        )
        .map(|_| ())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop_server() {
            eprintln!("stopping the benchmark PostgreSQL cluster: {e}");
        }
    }
}
