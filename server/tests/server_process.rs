//! The `linkedup-server` binary as an operator runs it, on 127.0.0.1 with OS-chosen ports:
//! the durability switch layered across file and environment and reported by `/health`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

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
