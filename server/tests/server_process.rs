//! The `linkedup-server` binary as an operator runs it, on 127.0.0.1 with OS-chosen ports:
//! the durability switch layered across file and environment and reported by `/health`;
//! on a signal, `/health` says draining while the ports still serve (the pre-stop window), and
//! a second signal ends the process at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A safety net against a hung test, not a timing assertion.
const HANG: Duration = Duration::from_secs(60);

/// A running server process; killed if the test ends without stopping it.
struct Process {
    child: Child,
    http: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server in `data_dir` with `args` and `env`, and waits until it prints its HTTP
/// address (it is then listening).
fn spawn(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
    let stderr = std::fs::File::create(data_dir.join("stderr.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_linkedup-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut http = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("HTTP   http://") {
            http = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            break;
        }
    }
    let Some(http) = http else {
        let log = std::fs::read_to_string(data_dir.join("stderr.log")).unwrap_or_default();
        panic!("the server did not start: {log}");
    };
    Process { child, http }
}

impl Process {
    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// The exit status, once the process has exited.
    fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET path` on the HTTP port: the status code and the JSON body.
fn get(http: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(http).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn the_environment_turns_fsync_back_on_over_the_file_and_health_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(&file, "no-fsync = true\n").unwrap();
    let config = file.to_str().unwrap();

    let server = spawn(dir.path(), &["--config", config], &[]);
    let (_, health) = get(server.http, "/health");
    assert_eq!(health["durable"], false, "{health}");
    drop(server);

    let server = spawn(
        dir.path(),
        &["--config", config],
        &[("LINKEDUP_NO_FSYNC", "false")],
    );
    let (status, health) = get(server.http, "/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["durable"], true, "{health}");
}

#[cfg(unix)]
#[test]
fn health_drains_before_the_ports_close_and_a_second_signal_exits_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // A window far longer than the test: only the second signal can end it.
    let mut server = spawn(dir.path(), &["--pre-stop-secs", "3600"], &[]);
    assert_eq!(get(server.http, "/health").0, 200);
    server.signal("TERM");
    let deadline = Instant::now() + HANG;
    let health = loop {
        let (status, health) = get(server.http, "/health");
        if status == 503 {
            break health;
        }
        assert!(Instant::now() < deadline, "/health never said draining");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(health["status"], "draining", "{health}");
    // Still serving: new connections are answered.
    assert_eq!(get(server.http, "/health").0, 503);

    server.signal("INT");
    let status = server.exited();
    assert_eq!(status.code(), Some(130), "{status:?} {:?}", status.signal());
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_linkedup-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            &http.to_string(),
        ])
        .args(["--pre-stop-secs", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    // Whoever read the banner went away before the server printed it.
    drop(child.stdout.take());
    let mut server = Process { child, http };
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            panic!("the server exited ({status}): {log}");
        }
        if TcpStream::connect(http).is_ok() && get(http, "/health").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still running once the banner has been written (a signal now drains, not a crash).
    server.signal("TERM");
    let deadline = Instant::now() + HANG;
    while get(http, "/health").0 != 503 {
        assert!(Instant::now() < deadline, "/health never said draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal("INT");
    assert_eq!(server.exited().code(), Some(130));
}
