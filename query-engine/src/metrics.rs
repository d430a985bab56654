//! Engine counters and fixed-bucket histograms, lock-free, cheap enough for the commit path.
//! The server renders them in Prometheus text format; benchmarks read them directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// A histogram with fixed upper bounds (cumulative counts are derived when rendering).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Latency buckets in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Size buckets (transactions per batch, bytes per transition, ...).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records `v` (seconds for latency histograms, a plain number for size histograms).
    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1_000_000.0) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends this histogram in Prometheus text format (`labels` like `fn="x"` or empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

impl Default for Histogram {
    /// A size histogram.
    fn default() -> Self {
        Histogram::new(SIZE_BUCKETS)
    }
}

pub struct EngineMetrics {
    pub commits: AtomicU64,
    pub batches: AtomicU64,
    pub conflicts: AtomicU64,
    pub reexecutions: AtomicU64,
    pub batch_size: Histogram,
    pub fsync_seconds: Histogram,
    /// Batches the committer held for more members (`group_commit`).
    pub group_commit_waits: AtomicU64,
    /// Client mutations refused as overloaded (`admission`).
    pub admission_refused: AtomicU64,
    /// Waits of mutations admitted after queueing.
    pub admission_wait: Histogram,
    /// Mutations queued for admission now (callers gone since are counted until their turn).
    pub admission_queued: AtomicU64,
    /// Stored documents checked against a changed schema when the engine opened.
    pub open_documents_checked: AtomicU64,
    /// Scheduled job runs by (function, outcome): background work no client sees fail.
    /// Bounded by the functions jobs name.
    jobs: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            reexecutions: AtomicU64::new(0),
            batch_size: Histogram::new(SIZE_BUCKETS),
            fsync_seconds: Histogram::new(LATENCY_BUCKETS),
            group_commit_waits: AtomicU64::new(0),
            admission_refused: AtomicU64::new(0),
            admission_wait: Histogram::new(LATENCY_BUCKETS),
            admission_queued: AtomicU64::new(0),
            open_documents_checked: AtomicU64::new(0),
            jobs: Mutex::new(BTreeMap::new()),
        }
    }
}

impl EngineMetrics {
    /// Counts a finished run of a scheduled job; `outcome` is `success` or `failed`.
    pub(crate) fn record_job(&self, function: &str, outcome: &'static str) {
        let mut jobs = self.jobs.lock();
        match jobs.get_mut(&(function.to_string(), outcome)) {
            Some(n) => *n += 1,
            None => {
                jobs.insert((function.to_string(), outcome), 1);
            }
        }
    }

    /// Finished runs of `function`'s scheduled jobs with `outcome` (tests).
    pub fn jobs(&self, function: &str, outcome: &'static str) -> u64 {
        self.jobs
            .lock()
            .get(&(function.to_string(), outcome))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn record_commit(&self, txns: usize, write_time: Duration) {
        self.commits.fetch_add(txns as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_size.observe(txns as f64);
        self.fsync_seconds.observe_duration(write_time);
    }

    /// Appends the engine's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "engine_commits_total",
                "Transactions committed",
                &self.commits,
            ),
            (
                "engine_commit_batches_total",
                "Commit batches (one fsync each)",
                &self.batches,
            ),
            (
                "engine_group_commit_waits_total",
                "Commit batches held for more members while writes arrived often",
                &self.group_commit_waits,
            ),
            (
                "engine_conflicts_total",
                "Transactions whose read set conflicted",
                &self.conflicts,
            ),
            (
                "engine_reexecutions_total",
                "Transactions re-executed by the committer",
                &self.reexecutions,
            ),
            (
                "engine_admission_refused_total",
                "Client mutations refused as overloaded at admission (queue full, or waited too long)",
                &self.admission_refused,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP engine_commit_batch_size Transactions per commit batch\n# TYPE engine_commit_batch_size histogram");
        self.batch_size.render("engine_commit_batch_size", "", out);
        let _ = writeln!(out, "# HELP engine_commit_write_seconds Time to write and fsync one batch\n# TYPE engine_commit_write_seconds histogram");
        self.fsync_seconds
            .render("engine_commit_write_seconds", "", out);
        let _ = writeln!(
            out,
            "# HELP engine_admission_queued Mutations waiting for a commit slot\n# TYPE engine_admission_queued gauge\nengine_admission_queued {}",
            self.admission_queued.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP engine_open_documents_checked Stored documents checked against a changed schema at open\n# TYPE engine_open_documents_checked gauge\nengine_open_documents_checked {}",
            self.open_documents_checked.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP engine_admission_wait_seconds Queueing of mutations admitted after waiting for a commit slot\n# TYPE engine_admission_wait_seconds histogram");
        self.admission_wait
            .render("engine_admission_wait_seconds", "", out);
        let _ = writeln!(out, "# HELP engine_scheduled_jobs_total Finished runs of scheduled jobs by function and outcome\n# TYPE engine_scheduled_jobs_total counter");
        for ((function, outcome), n) in self.jobs.lock().iter() {
            let _ = writeln!(
                out,
                "engine_scheduled_jobs_total{{function=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape_label(function)
            );
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
