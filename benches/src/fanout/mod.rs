//! The reactive fan-out benchmark harness (issue 8): M meetings × S subscribers fed by
//! open-loop transcript writes, run against LinkedUp over QUIC (`linkedup`) and against a
//! PostgreSQL LISTEN/NOTIFY peer (`postgres`), measured per step by the same recorder and
//! judged by the same rule. The `fanout` binary and the `fanout_smoke` test both use it.

pub mod checker;
pub mod driver;
pub mod linkedup;
pub mod postgres;
pub mod procstat;
pub mod ramp;
pub mod recorder;
pub mod server;
pub mod server_metrics;
pub mod stalled;

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;

use checker::Anomalies;
use driver::{Drive, DriveOutcome, WriteFn};
use procstat::{ProcFigures, ProcWatch, UdpCounters};
use recorder::{now_us, Recorder, StepFigures};
use server_metrics::ServerCounters;

/// A system under test, set up with its meetings and subscribers.
pub trait FanoutSystem {
    fn name(&self) -> &str;
    fn recorder(&self) -> &Arc<Recorder>;
    /// Sends one write and records its outcome in the recorder.
    fn writer(&self) -> WriteFn;
    /// The meeting each load subscriber (by index) follows.
    fn subscriber_meetings(&self) -> &[usize];
    /// The server process(es) whose CPU and memory to report, if known.
    fn proc_watch(&self) -> Option<&ProcWatch>;
    /// Where the server's Prometheus `/metrics` is, if it has one.
    fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

/// How one step runs and is judged.
#[derive(Clone, Debug)]
pub struct StepPlan {
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    pub meetings: usize,
    pub producers: usize,
    pub max_in_flight: usize,
    pub text_bytes: usize,
    /// Longest wait after the last write for every subscriber to be current.
    pub drain_timeout: Duration,
    /// Commit→delivery p99 at or under this passes.
    pub p99_limit_us: u64,
}

/// One step's figures and verdict.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub system: String,
    pub target_rate: f64,
    /// Writes acknowledged per second over the measured window.
    pub achieved_rate: f64,
    pub deliveries_per_sec: f64,
    #[serde(flatten)]
    pub figures: StepFigures,
    pub skipped_writes: u64,
    pub unfinished_writes: u64,
    pub max_send_lag_us: u64,
    /// Time from the last write's answer until every subscriber was current; `None` if some
    /// were still behind at the drain timeout.
    pub catch_up_ms: Option<u64>,
    pub lagging_subscribers: u64,
    /// Anomalies seen during this step (missed, duplicate, out of order).
    pub anomalies: Anomalies,
    pub server: Option<ProcFigures>,
    /// The harness process itself (clients, subscribers, driver): if it is saturated, the
    /// figures measure the client side, not the server.
    pub harness: ProcFigures,
    /// The server's own counters over the step (LinkedUp only).
    pub server_counters: Option<ServerCounters>,
    /// UDP datagrams the machine dropped for a full receive buffer during the step (writes
    /// and drain); `None` where /proc/net/snmp cannot be read.
    pub udp_drops: Option<u64>,
    /// UDP datagrams sent on the machine while the writes were driven, per write sent: the
    /// QUIC packets of calls, results, deliveries and their acknowledgements (≈ 0 for the
    /// PostgreSQL peer, which uses TCP). `None` where /proc/net/snmp cannot be read.
    pub udp_datagrams_per_write: Option<f64>,
    pub sustainable: bool,
    /// Why not, when not.
    pub verdict: String,
}

fn anomalies_minus(a: Anomalies, b: Anomalies) -> Anomalies {
    Anomalies {
        missed: a.missed.saturating_sub(b.missed),
        duplicates: a.duplicates.saturating_sub(b.duplicates),
        out_of_order: a.out_of_order.saturating_sub(b.out_of_order),
    }
}

/// Longest extra wait, after a step whose subscribers were still behind at the drain
/// timeout, for them to catch up before the next step.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until every load subscriber has every acknowledged sequence of its meeting; returns
/// how many are still behind at `timeout`.
pub async fn wait_current(system: &dyn FanoutSystem, timeout: Duration) -> (u64, Duration) {
    let started = Instant::now();
    let r = system.recorder();
    loop {
        let behind = system
            .subscriber_meetings()
            .iter()
            .enumerate()
            .filter(|(j, m)| r.progress(*j) < r.acked_seq(**m))
            .count() as u64;
        if behind == 0 || started.elapsed() >= timeout {
            return (behind, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// CPU below which a server counts as idle between steps, in cores. Not zero: the fleet keeps
/// ~2,000 client connections open, and after the stalled-reader scenario a first run never got
/// under 0.05 within a minute.
const IDLE_CORES: f64 = 0.1;
/// How long each look at an idle server's CPU lasts.
const IDLE_SAMPLE: Duration = Duration::from_millis(500);

/// Waits until the server (the whole PostgreSQL cluster for the peer) has been idle for two
/// consecutive looks, or `timeout` has passed; returns whether it went idle, how long it took
/// and the CPU of the last look, in cores. A step at an overloaded rate leaves work behind that
/// no subscriber waits for — the applier's backlog of batches to write into redb, memtables to
/// free, PostgreSQL's checkpoints — and a step started on top of it measures the leftovers as
/// well as its own rate.
pub async fn settle(system: &dyn FanoutSystem, timeout: Duration) -> (bool, Duration, f64) {
    let started = Instant::now();
    let Some(watch) = system.proc_watch() else {
        return (true, Duration::ZERO, 0.0);
    };
    let (mut quiet, mut cores) = (0, 0.0);
    while started.elapsed() < timeout {
        let mark = watch.mark();
        tokio::time::sleep(IDLE_SAMPLE).await;
        cores = watch.since(mark).cpu_cores;
        quiet = if cores < IDLE_CORES { quiet + 1 } else { 0 };
        if quiet == 2 {
            return (true, started.elapsed(), cores);
        }
    }
    (false, started.elapsed(), cores)
}

/// Runs one step: `warmup` of writes not measured, then `measure` of measured writes at the
/// same rate (one continuous schedule), then waits for every subscriber to be current.
pub async fn run_step(
    system: &dyn FanoutSystem,
    plan: &StepPlan,
    first_write: u64,
    bar: Option<&ProgressBar>,
) -> StepResult {
    let r = system.recorder();
    let anomalies_before = r.anomalies();
    let _ = r.take_step();
    let total = plan.warmup + plan.measure;
    let start_us = now_us();
    r.open_window(
        start_us + plan.warmup.as_micros() as u64,
        start_us + total.as_micros() as u64,
    );
    let drive = Drive {
        rate: plan.rate,
        duration: total,
        meetings: plan.meetings,
        producers: plan.producers,
        max_in_flight: plan.max_in_flight,
        text_bytes: plan.text_bytes,
    };
    if let Some(b) = bar {
        b.set_length((plan.rate * total.as_secs_f64()) as u64);
        b.set_position(0);
    }
    let proc_mark = system.proc_watch().map(|w| w.mark());
    let harness_watch = ProcWatch::new(std::process::id(), false);
    let harness_mark = harness_watch.mark();
    let metrics_addr = system.metrics_addr();
    let scrape_before = match metrics_addr {
        Some(a) => tokio::task::spawn_blocking(move || server_metrics::scrape(a))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let udp_before = UdpCounters::read();
    let DriveOutcome {
        scheduled,
        skipped,
        max_send_lag_us,
        unfinished,
        ..
    } = driver::drive(&drive, first_write, system.writer(), bar).await;
    let server = match (system.proc_watch(), proc_mark) {
        (Some(w), Some(m)) => Some(w.since(m)),
        _ => None,
    };
    let harness = harness_watch.since(harness_mark);
    let udp_while_driven = udp_before.zip(UdpCounters::read()).map(|(a, b)| b.since(a));
    let server_counters = match (metrics_addr, scrape_before) {
        (Some(a), Some(before)) => tokio::task::spawn_blocking(move || server_metrics::scrape(a))
            .await
            .ok()
            .flatten()
            .map(|after| ServerCounters::between(&before, &after)),
        _ => None,
    };
    let (lagging, waited) = wait_current(system, plan.drain_timeout).await;
    let udp_drops = udp_before
        .zip(UdpCounters::read())
        .map(|(a, b)| b.since(a).receive_drops);
    let sent_writes = scheduled.saturating_sub(skipped);
    let udp_datagrams_per_write = udp_while_driven
        .filter(|_| sent_writes > 0)
        .map(|u| u.sent as f64 / sent_writes as f64);
    let figures = r.take_step();
    let anomalies = anomalies_minus(r.anomalies(), anomalies_before);
    let secs = plan.measure.as_secs_f64().max(1e-3);
    let achieved = figures.writes_ok as f64 / secs;
    let expected = plan.rate * secs;
    let mut why = Vec::new();
    if (figures.writes_ok as f64) < 0.95 * expected {
        why.push(format!(
            "{} of {} writes acknowledged",
            figures.writes_ok, expected as u64
        ));
    }
    let errors: u64 = figures.write_errors.values().sum();
    if errors > 0 {
        let by_code: Vec<String> = figures
            .write_errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        why.push(format!("{errors} errors ({})", by_code.join(", ")));
    }
    if skipped > 0 {
        why.push(format!("{skipped} writes skipped (in-flight bound)"));
    }
    if unfinished > 0 {
        why.push(format!("{unfinished} writes unanswered"));
    }
    if lagging > 0 {
        why.push(format!("{lagging} subscribers behind after drain"));
    }
    if anomalies.total() > 0 {
        why.push(format!("anomalies {anomalies:?}"));
    }
    if figures.deliveries == 0 {
        why.push("no deliveries".into());
    }
    if figures.commit_to_delivery.p99_us > plan.p99_limit_us {
        why.push(format!(
            "commit→delivery p99 {} µs > {} µs",
            figures.commit_to_delivery.p99_us, plan.p99_limit_us
        ));
    }
    if lagging > 0 {
        // The step has failed already; let the backlog it left clear before the next step
        // starts, so that step measures its own rate and not this one's leftovers.
        wait_current(system, SETTLE_TIMEOUT).await;
    }
    StepResult {
        system: system.name().to_string(),
        target_rate: plan.rate,
        achieved_rate: achieved,
        deliveries_per_sec: figures.deliveries as f64 / secs,
        figures,
        skipped_writes: skipped,
        unfinished_writes: unfinished,
        max_send_lag_us,
        catch_up_ms: (lagging == 0).then_some(waited.as_millis() as u64),
        lagging_subscribers: lagging,
        anomalies,
        server,
        harness,
        server_counters,
        udp_drops,
        udp_datagrams_per_write,
        sustainable: why.is_empty(),
        verdict: if why.is_empty() {
            "sustainable".into()
        } else {
            why.join("; ")
        },
    }
}
