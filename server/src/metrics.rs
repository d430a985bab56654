//! The server's own metrics — connections, byte budgets, calls by function and outcome with
//! latency histograms, auth results, protocol errors, transitions sent, and the counters the
//! application defines (`LabelledCounter`) — and the Prometheus text rendering of them
//! together with the engine's and the subscription manager's.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use query_engine::metrics::{escape_label, Histogram, LATENCY_BUCKETS};

/// Distinct outcome codes tracked per function; further codes count as `OTHER`, so a function
/// inventing error codes cannot grow the metrics without bound.
const MAX_CODES_PER_SERIES: usize = 32;
/// Label used for calls naming a function that is not registered (names are client input).
pub const UNKNOWN_FUNCTION: &str = "<unknown>";

/// A counter the application defines (e.g. a route's events by kind), with one label; one
/// `static` per name. Its label values are `&'static str`, so only code can add series.
pub struct LabelledCounter {
    /// The metric's name, ending in `_total`.
    pub name: &'static str,
    pub help: &'static str,
    /// The label's name.
    pub label: &'static str,
}

struct CallSeries {
    latency: Histogram,
    outcomes: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct ServerMetrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Connections closed after the handshake because their source address had as many as
    /// it may (also counted in `connections_refused`).
    pub connections_refused_per_address: AtomicU64,
    /// Handshakes answered with a QUIC Retry to validate the client's address first.
    pub connection_retries: AtomicU64,
    /// Bytes reserved for inbound frames being received or waiting for a call slot, over all
    /// connections.
    pub inbound_frame_bytes: AtomicI64,
    /// Connections closed because a frame did not arrive in full in time.
    pub inbound_frame_timeouts: AtomicU64,
    /// Bytes of call results encoded and not yet written, over all connections.
    pub pending_result_bytes: AtomicI64,
    /// Calls read whose start waited because their connection, address or the server held
    /// its budget of unwritten results.
    pub calls_held_for_results: AtomicU64,
    /// Call streams reset because a result was not written in time.
    pub result_write_timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub auth_ok: AtomicU64,
    pub auth_failed: AtomicU64,
    pub transitions_sent: AtomicU64,
    pub transition_bytes_sent: AtomicU64,
    /// Transitions too large for one frame, sent in parts (each also counted once in
    /// `transitions_sent`, its parts' bytes in `transition_bytes_sent`).
    pub split_transitions: AtomicU64,
    /// Subscriptions ended with `INTERNAL` because one update was too large for a frame.
    pub oversized_updates: AtomicU64,
    pub mutation_replays: AtomicU64,
    /// function -> (kind, series). Keys are registered function names (or `<unknown>`), so
    /// the map is bounded by the function registry. Keyed by the name alone so that recording
    /// a call (on every call's path) looks it up without allocating.
    calls: Mutex<BTreeMap<String, Vec<(&'static str, CallSeries)>>>,
    /// `LabelledCounter`s by name: the counter and its count by label value.
    labelled: Mutex<LabelledCounts>,
}

type LabelledCounts =
    BTreeMap<&'static str, (&'static LabelledCounter, BTreeMap<&'static str, u64>)>;

impl ServerMetrics {
    /// Records one finished call; `code` is `OK` or the error code.
    pub fn record_call(&self, function: &str, kind: &'static str, code: &str, elapsed: Duration) {
        let mut calls = self.calls.lock();
        let kinds = match calls.get_mut(function) {
            Some(kinds) => kinds,
            None => calls.entry(function.to_string()).or_default(),
        };
        let at = match kinds.iter().position(|(k, _)| *k == kind) {
            Some(at) => at,
            None => {
                kinds.push((
                    kind,
                    CallSeries {
                        latency: Histogram::new(LATENCY_BUCKETS),
                        outcomes: BTreeMap::new(),
                    },
                ));
                kinds.len() - 1
            }
        };
        let series = &mut kinds[at].1;
        series.latency.observe_duration(elapsed);
        let full = series.outcomes.len() >= MAX_CODES_PER_SERIES;
        match series.outcomes.get_mut(code) {
            Some(n) => *n += 1,
            None if full => *series.outcomes.entry("OTHER".to_string()).or_default() += 1,
            None => {
                series.outcomes.insert(code.to_string(), 1);
            }
        }
    }

    /// Adds one to `counter`'s series with label value `value`.
    pub fn count(&self, counter: &'static LabelledCounter, value: &'static str) {
        let mut labelled = self.labelled.lock();
        let (_, counts) = labelled
            .entry(counter.name)
            .or_insert((counter, BTreeMap::new()));
        *counts.entry(value).or_default() += 1;
    }

    /// Every (function, kind) series, in function order.
    fn series<'a>(
        calls: &'a BTreeMap<String, Vec<(&'static str, CallSeries)>>,
    ) -> impl Iterator<Item = (&'a str, &'static str, &'a CallSeries)> {
        calls
            .iter()
            .flat_map(|(f, kinds)| kinds.iter().map(move |(k, s)| (f.as_str(), *k, s)))
    }

    /// Calls recorded for `function` with outcome `code` (tests and benchmarks).
    pub fn calls(&self, function: &str, kind: &'static str, code: &str) -> u64 {
        let calls = self.calls.lock();
        let n = Self::series(&calls)
            .find(|(f, k, _)| *f == function && *k == kind)
            .and_then(|(_, _, s)| s.outcomes.get(code).copied())
            .unwrap_or(0);
        n
    }

    /// Appends the server metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP server_connections_open QUIC connections open\n# TYPE server_connections_open gauge\nserver_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP server_inbound_frame_bytes Bytes reserved for inbound frames being received or waiting for a call slot\n# TYPE server_inbound_frame_bytes gauge\nserver_inbound_frame_bytes {}",
            self.inbound_frame_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP server_pending_result_bytes Bytes of call results encoded and not yet written\n# TYPE server_pending_result_bytes gauge\nserver_pending_result_bytes {}",
            self.pending_result_bytes.load(Ordering::Relaxed)
        );
        for (name, help, v) in [
            (
                "server_connections_total",
                "QUIC connections accepted",
                &self.connections_total,
            ),
            (
                "server_connections_refused_total",
                "Connections refused (server or per-address limit, or shutdown)",
                &self.connections_refused,
            ),
            (
                "server_connections_refused_per_address_total",
                "Connections closed after the handshake: too many from their source address",
                &self.connections_refused_per_address,
            ),
            (
                "server_connection_retries_total",
                "Handshakes answered with a QUIC Retry (address validation)",
                &self.connection_retries,
            ),
            (
                "server_inbound_frame_timeouts_total",
                "Connections closed because a frame did not arrive in full in time",
                &self.inbound_frame_timeouts,
            ),
            (
                "server_calls_held_for_results_total",
                "Calls whose start waited for unwritten results to drain (connection, address or server budget)",
                &self.calls_held_for_results,
            ),
            (
                "server_result_write_timeouts_total",
                "Call streams reset because a result was not written in time",
                &self.result_write_timeouts,
            ),
            (
                "server_protocol_errors_total",
                "Fatal protocol errors sent",
                &self.protocol_errors,
            ),
            (
                "server_auth_ok_total",
                "Accepted Authenticate messages",
                &self.auth_ok,
            ),
            (
                "server_auth_failed_total",
                "Rejected Authenticate messages",
                &self.auth_failed,
            ),
            (
                "server_transitions_sent_total",
                "Transitions written to control streams",
                &self.transitions_sent,
            ),
            (
                "server_transition_bytes_sent_total",
                "Bytes of transitions written",
                &self.transition_bytes_sent,
            ),
            (
                "server_split_transitions_total",
                "Transitions too large for one frame, written in parts",
                &self.split_transitions,
            ),
            (
                "server_oversized_updates_total",
                "Subscriptions ended because one update was too large for a frame",
                &self.oversized_updates,
            ),
            (
                "server_mutation_replays_total",
                "Retried mutations answered from the mutationId cache",
                &self.mutation_replays,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let calls = self.calls.lock();
        let _ = writeln!(
            out,
            "# HELP server_calls_total Function calls by function, kind and outcome code\n# TYPE server_calls_total counter"
        );
        for (function, kind, series) in Self::series(&calls) {
            for (code, n) in &series.outcomes {
                let _ = writeln!(
                    out,
                    "server_calls_total{{function=\"{}\",kind=\"{kind}\",code=\"{}\"}} {n}",
                    escape_label(function),
                    escape_label(code)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP server_call_duration_seconds Call latency from stream accepted to result written\n# TYPE server_call_duration_seconds histogram"
        );
        for (function, kind, series) in Self::series(&calls) {
            let labels = format!("function=\"{}\",kind=\"{kind}\"", escape_label(function));
            series
                .latency
                .render("server_call_duration_seconds", &labels, out);
        }
        drop(calls);
        for (counter, counts) in self.labelled.lock().values() {
            let LabelledCounter { name, help, label } = counter;
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, n) in counts {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape_label(value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_render_with_escaped_labels_and_bounded_codes() {
        let m = ServerMetrics::default();
        m.record_call("a:\"b\"", "query", "OK", Duration::from_millis(2));
        for i in 0..100 {
            m.record_call(
                "f",
                "mutation",
                &format!("CODE_{i}"),
                Duration::from_micros(50),
            );
        }
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(r#"server_calls_total{function="a:\"b\"",kind="query",code="OK"} 1"#));
        assert_eq!(
            m.calls("f", "mutation", "OTHER"),
            100 - MAX_CODES_PER_SERIES as u64
        );
        assert!(
            out.contains(r#"server_call_duration_seconds_count{function="f",kind="mutation"} 100"#)
        );
    }

    #[test]
    fn labelled_counters_render_one_series_per_value() {
        static EVENTS: LabelledCounter = LabelledCounter {
            name: "app_events_total",
            help: "Events by kind",
            label: "kind",
        };
        let m = ServerMetrics::default();
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains("app_events_total"), "nothing counted yet");
        m.count(&EVENTS, "b");
        m.count(&EVENTS, "a");
        m.count(&EVENTS, "b");
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains(
                "# HELP app_events_total Events by kind\n# TYPE app_events_total counter\n\
                 app_events_total{kind=\"a\"} 1\napp_events_total{kind=\"b\"} 2\n"
            ),
            "{out}"
        );
    }
}
