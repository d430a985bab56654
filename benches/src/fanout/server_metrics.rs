//! The server's own counters over a step, scraped from its Prometheus `/metrics` on the HTTP
//! port: commits, commit batches (fsyncs) and their mean write time, conflicts and
//! re-executions, subscription re-runs and transitions sent. They explain a step's latency
//! (e.g. slow fsyncs versus a busy subscription worker) without a profiler.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Largest `/metrics` response read.
const MAX_METRICS_BYTES: u64 = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Counter values by metric name (labelled series summed per name).
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    values: BTreeMap<String, f64>,
    at: Option<Instant>,
}

/// Parses the Prometheus text format: `name{labels} value` or `name value`.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).trim();
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// GET `/metrics` over plain HTTP/1.0.
pub fn scrape(addr: SocketAddr) -> Option<Scrape> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.take(MAX_METRICS_BYTES).read_to_string(&mut body).ok()?;
    let (_, text) = body.split_once("\r\n\r\n")?;
    Some(Scrape {
        values: parse(text),
        at: Some(Instant::now()),
    })
}

/// Differences of the server's counters between two scrapes.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ServerCounters {
    pub commits: f64,
    pub commit_batches: f64,
    pub mean_batch_txns: f64,
    pub fsyncs_per_sec: f64,
    /// Mean redb write + fsync time of one batch, ms.
    pub mean_batch_write_ms: f64,
    pub conflicts: f64,
    pub reexecutions: f64,
    pub subscription_reruns: f64,
    pub subscription_reruns_unchanged: f64,
    pub transitions_sent: f64,
    pub transition_mib_sent: f64,
}

impl ServerCounters {
    pub fn between(a: &Scrape, b: &Scrape) -> ServerCounters {
        let d = |name: &str| {
            b.values.get(name).copied().unwrap_or(0.0) - a.values.get(name).copied().unwrap_or(0.0)
        };
        let secs = match (a.at, b.at) {
            (Some(x), Some(y)) => y.duration_since(x).as_secs_f64().max(1e-3),
            _ => 1.0,
        };
        let batches = d("engine_commit_batches_total");
        let commits = d("engine_commits_total");
        ServerCounters {
            commits,
            commit_batches: batches,
            mean_batch_txns: commits / batches.max(1.0),
            fsyncs_per_sec: batches / secs,
            mean_batch_write_ms: d("engine_commit_write_seconds_sum") * 1e3 / batches.max(1.0),
            conflicts: d("engine_conflicts_total"),
            reexecutions: d("engine_reexecutions_total"),
            subscription_reruns: d("subscriptions_reruns_total"),
            subscription_reruns_unchanged: d("subscriptions_reruns_unchanged_total"),
            transitions_sent: d("server_transitions_sent_total"),
            transition_mib_sent: d("server_transition_bytes_sent_total") / (1024.0 * 1024.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_diffs_counters() {
        let a = Scrape {
            values: parse(
                "# HELP x\nengine_commits_total 10\nengine_commit_batches_total 2\n\
                 server_calls_total{kind=\"mutation\"} 3\nserver_calls_total{kind=\"query\"} 4\n",
            ),
            at: None,
        };
        assert_eq!(a.values["server_calls_total"], 7.0);
        let b = Scrape {
            values: parse("engine_commits_total 110\nengine_commit_batches_total 12\n"),
            at: None,
        };
        let c = ServerCounters::between(&a, &b);
        assert_eq!(c.commits, 100.0);
        assert_eq!(c.mean_batch_txns, 10.0);
    }
}
