//! CPU time, run-queue waiting and resident memory of a server process (and, for PostgreSQL,
//! of its children), read from `/proc/<pid>/stat`, `/proc/<pid>/task/*/schedstat` and
//! `/proc/<pid>/status`, so that a step's CPU use can be reported as cores busy over the step
//! and its CPU contention as threads kept waiting for a core.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// (utime + stime in ticks, parent pid) of a process.
fn stat(pid: u32) -> Option<(u64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it start past its ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, ppid))
}

/// Nanoseconds the threads of a process have spent runnable but waiting for a core (field 2
/// of each `/proc/<pid>/task/<tid>/schedstat`); 0 where the kernel keeps no such statistics.
fn run_queue_wait_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Memory of a process, bytes: its proportional set size (shared pages divided among the
/// processes sharing them, so PostgreSQL's shared buffers are not counted once per backend),
/// or its resident set size where `smaps_rollup` is not readable.
fn memory_bytes(pid: u32) -> u64 {
    let field = |path: String, name: &str| {
        std::fs::read_to_string(path).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
    };
    field(format!("/proc/{pid}/smaps_rollup"), "Pss:")
        .or_else(|| field(format!("/proc/{pid}/status"), "VmRSS:"))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The process and, with `children`, its direct children (PostgreSQL backends).
fn pids(root: u32, children: bool) -> Vec<u32> {
    let mut out = vec![root];
    if children {
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if stat(pid).is_some_and(|(_, ppid)| ppid == root) {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// CPU and run-queue waiting of `pids` so far.
fn mark_of(pids: &[u32]) -> ProcMark {
    ProcMark {
        ticks: pids.iter().filter_map(|p| stat(*p)).map(|(t, _)| t).sum(),
        waited_ns: pids.iter().map(|p| run_queue_wait_ns(*p)).sum(),
        at: Instant::now(),
    }
}

/// A process (tree) being watched.
#[derive(Clone, Debug)]
pub struct ProcWatch {
    pid: u32,
    children: bool,
    ticks_per_sec: f64,
}

/// CPU and memory over an interval.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcFigures {
    /// CPU time over wall time: 1.0 = one core busy.
    pub cpu_cores: f64,
    /// Run-queue waiting over wall time: the mean number of the process's threads that were
    /// ready to run but had no core (0 without contention; delivery latency grows with it).
    pub run_queue_threads: f64,
    /// Memory (proportional set size, summed over the tree) at the end of the interval, MiB.
    pub rss_mib: f64,
}

/// A reading to diff against later.
#[derive(Clone, Copy, Debug)]
pub struct ProcMark {
    ticks: u64,
    waited_ns: u64,
    at: Instant,
}

impl ProcWatch {
    /// Watches `pid`; with `children`, its direct children too (a PostgreSQL postmaster).
    pub fn new(pid: u32, children: bool) -> Self {
        ProcWatch {
            pid,
            children,
            ticks_per_sec: clock_ticks(),
        }
    }

    /// The PostgreSQL postmaster of a data directory (first line of `postmaster.pid`).
    pub fn postmaster(data_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        Some(Self::new(pid, true))
    }

    pub fn mark(&self) -> ProcMark {
        mark_of(&pids(self.pid, self.children))
    }

    /// CPU and run-queue waiting since `since` (threads and children that exited in between
    /// are not counted) and RSS now.
    pub fn since(&self, since: ProcMark) -> ProcFigures {
        // One look for the tree (for PostgreSQL a walk of /proc) serves both readings.
        let pids = pids(self.pid, self.children);
        let now = mark_of(&pids);
        let secs = now.at.duration_since(since.at).as_secs_f64().max(1e-3);
        let rss: u64 = pids.into_iter().map(memory_bytes).sum();
        ProcFigures {
            cpu_cores: now.ticks.saturating_sub(since.ticks) as f64 / self.ticks_per_sec / secs,
            run_queue_threads: now.waited_ns.saturating_sub(since.waited_ns) as f64 / 1e9 / secs,
            rss_mib: rss as f64 / (1024.0 * 1024.0),
        }
    }
}

/// This machine's UDP counters so far (/proc/net/snmp). Machine-wide: on loopback during a run
/// nearly every datagram is a QUIC packet between the server and the harness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams sent (`OutDatagrams`); on loopback each is also received once.
    pub sent: u64,
    /// Datagrams dropped because a socket's receive buffer was full (`RcvbufErrors`); each is
    /// a QUIC packet lost and retransmitted after a timeout.
    pub receive_drops: u64,
}

impl UdpCounters {
    pub fn read() -> Option<UdpCounters> {
        let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next()?, udp.next()?);
        let values: Vec<&str> = values.split_whitespace().collect();
        let field = |name: &str| -> Option<u64> {
            let at = names.split_whitespace().position(|n| n == name)?;
            values.get(at)?.parse().ok()
        };
        Some(UdpCounters {
            sent: field("OutDatagrams")?,
            receive_drops: field("RcvbufErrors")?,
        })
    }

    /// The counts from `earlier` to `self`.
    pub fn since(self, earlier: UdpCounters) -> UdpCounters {
        UdpCounters {
            sent: self.sent.saturating_sub(earlier.sent),
            receive_drops: self.receive_drops.saturating_sub(earlier.receive_drops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let w = ProcWatch::new(std::process::id(), false);
        let m = w.mark();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let f = w.since(m);
        assert!(f.rss_mib > 0.0);
        assert!(f.cpu_cores >= 0.0);
    }

    #[test]
    fn counts_threads_kept_waiting_for_a_core() {
        let me = std::process::id();
        if !std::path::Path::new(&format!("/proc/{me}/task/{me}/schedstat")).exists() {
            return; // a kernel without scheduler statistics
        }
        let w = ProcWatch::new(me, false);
        let m = w.mark();
        // Twice as many spinning threads as cores: half of them wait at any moment.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let spinners: Vec<_> = (0..cores * 2)
            .map(|_| {
                std::thread::spawn(|| {
                    let until = Instant::now() + std::time::Duration::from_millis(300);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        // Read while the spinners still exist: an exited thread's figures are gone.
        std::thread::sleep(std::time::Duration::from_millis(250));
        let f = w.since(m);
        for s in spinners {
            s.join().expect("spinner");
        }
        assert!(f.run_queue_threads > 0.0, "{f:?}");
    }

    #[test]
    fn reads_the_udp_counters() {
        let before = UdpCounters::read().expect("Udp: in /proc/net/snmp");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .send_to(b"x", socket.local_addr().expect("addr"))
            .expect("send");
        let after = UdpCounters::read().expect("read again");
        assert!(after.since(before).sent >= 1);
        assert!(after.receive_drops >= before.receive_drops);
    }
}
