//! Benchmark reporting shared by the binaries: the machine a run happened on, latency
//! summaries from hdrhistogram, plain-text and Markdown tables, and writing each run's JSON
//! and Markdown into `benches/results/<name>-<UTC timestamp>.{json,md}`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use query_engine::metrics::EngineMetrics;
use serde::Serialize;

/// Where and on what a run happened.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub git_commit: String,
    pub kernel: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_at: String,
    /// `/proc/loadavg` at the start: other work on the machine skews every figure.
    pub load_average: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let git_commit = command_output("git", &["rev-parse", "HEAD"]);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            nproc,
            cpu_model,
            git_commit,
            kernel,
            started_at: utc_timestamp(SystemTime::now(), true),
            load_average: load_average(),
        }
    }

    pub fn markdown(&self) -> String {
        format!(
            "- machine: {} cores, {}, Linux {}\n- commit: `{}`\n- started: {} (load average {})\n",
            self.nproc,
            self.cpu_model,
            self.kernel,
            self.git_commit,
            self.started_at,
            self.load_average
        )
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `t` as UTC: `2026-11-25T15:04:05Z` (`pretty`) or `20261125T150405Z` (for file names).
pub fn utc_timestamp(t: SystemTime, pretty: bool) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if pretty {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A latency histogram in microseconds, 1 µs to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// Microseconds as a short human string: `850 µs`, `1.25 ms`, `2.10 s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}

/// A rate with thousands separators: `21,345`.
pub fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table rendered both for the terminal (aligned columns) and as Markdown.
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    pub fn text(&self) -> String {
        let w = self.widths();
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut out = line(&self.headers);
        out.push('\n');
        out.push_str(
            &w.iter()
                .map(|n| "-".repeat(*n))
                .collect::<Vec<_>>()
                .join("  "),
        );
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.headers.join(" | "));
        out.push_str(&format!(
            "|{}\n",
            self.headers.iter().map(|_| "---|").collect::<String>()
        ));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out
    }
}

/// The results directory, `benches/results` (created if missing).
pub fn results_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes `<name>-<timestamp>.json` and `.md` into the results directory; returns both paths.
pub fn write_results(
    name: &str,
    json: &serde_json::Value,
    markdown: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = results_dir()?;
    let stamp = utc_timestamp(SystemTime::now(), false);
    let json_path = dir.join(format!("{name}-{stamp}.json"));
    let md_path = dir.join(format!("{name}-{stamp}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    Ok((json_path, md_path))
}

/// Committer figures over a measured window (differences of the engine's counters).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CommitterFigures {
    pub commits: u64,
    pub batches: u64,
    pub mean_batch_txns: f64,
    pub fsyncs_per_sec: f64,
    /// Mean time of one batch's redb write + fsync.
    pub mean_batch_write_us: f64,
    pub conflicts: u64,
    pub reexecutions: u64,
}

/// The engine's counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CounterSnapshot {
    commits: u64,
    batches: u64,
    conflicts: u64,
    reexecutions: u64,
    write_sum_us: f64,
}

pub fn counters(m: &EngineMetrics) -> CounterSnapshot {
    CounterSnapshot {
        commits: m.commits.load(Ordering::Relaxed),
        batches: m.batches.load(Ordering::Relaxed),
        conflicts: m.conflicts.load(Ordering::Relaxed),
        reexecutions: m.reexecutions.load(Ordering::Relaxed),
        write_sum_us: histogram_sum_us(m),
    }
}

/// The fsync histogram's running sum, read from its Prometheus rendering (the only public
/// view of it).
fn histogram_sum_us(m: &EngineMetrics) -> f64 {
    let mut s = String::new();
    m.render(&mut s);
    s.lines()
        .find_map(|l| l.strip_prefix("engine_commit_write_seconds_sum "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|secs| secs * 1e6)
        .unwrap_or(0.0)
}

impl CommitterFigures {
    pub fn between(a: CounterSnapshot, b: CounterSnapshot, secs: f64) -> Self {
        let batches = b.batches - a.batches;
        let commits = b.commits - a.commits;
        CommitterFigures {
            commits,
            batches,
            mean_batch_txns: commits as f64 / batches.max(1) as f64,
            fsyncs_per_sec: batches as f64 / secs,
            mean_batch_write_us: (b.write_sum_us - a.write_sum_us) / batches.max(1) as f64,
            conflicts: b.conflicts - a.conflicts,
            reexecutions: b.reexecutions - a.reexecutions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_618_445);
        assert_eq!(utc_timestamp(t, true), "2026-11-25T14:54:05Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH, false), "19700101T000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap, true), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rates_and_durations_format() {
        assert_eq!(fmt_rate(21_345.4), "21,345");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_rate(1_000_000.0), "1,000,000");
        assert_eq!(fmt_us(850), "850 µs");
        assert_eq!(fmt_us(1_250), "1.25 ms");
    }
}
