//! Decoding cost of what the fan-out decodes most: a `Transition` of transcript chunks (every
//! client, per delivered frame) and a stored transcript chunk (the server, per document read
//! from redb), each read directly (`msgpack_reader`, `decode_transition`) and through serde's
//! generic path (`decode_server`, `rmp_serde::from_slice`). Prints ns per message (fastest of
//! rounds); run with `cargo run --release -p linkedup-benches --bin codec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use query_engine::diff::{ArrayEdit, ResultDiff};
use query_engine::msgpack_reader::value_from_slice;
use query_engine::obj;
use query_engine::protocol::{
    decode_server, decode_transition, encode, Modification, ServerMessage,
};
use query_engine::value::Value;

// Measured with the allocator the server and the fan-out harness use (set in the library).
use linkedup_benches as _;

const ROUNDS: usize = 9;
const ROUND_TIME: Duration = Duration::from_millis(300);

/// A stored `transcripts` document as a live meeting writes them.
fn chunk(sequence: i64) -> Value {
    let start_ms = 1_764_000_000_000 + sequence * 1_500;
    obj! {
        "_id" => format!("k57c2x9a1bq8r4t6m0n3p5w7y{sequence:05}"),
        "_creationTime" => start_ms as f64 + 0.125,
        "meetingId" => "j97d4h2k8s6f0a3l5q1w9e7r2t",
        "bucketMs" => start_ms - start_ms % 60_000,
        "sequence" => sequence,
        "chunkId" => format!("chunk-{sequence:08}"),
        "speakerId" => "user_2pQk8sLr4Tz0",
        "text" => "so the plan for the next sprint is to finish the export and then look at latency",
        "confidence" => 0.9375,
        "startMs" => start_ms,
        "endMs" => start_ms + 1_400,
        "createdAt" => start_ms + 1_450,
    }
}

/// A transition moving `subscriptions` windows, each by `diff(first sequence)`.
fn transition(subscriptions: u32, diff: impl Fn(i64) -> ResultDiff) -> Vec<u8> {
    let msg = ServerMessage::Transition {
        start_ts: 1_000,
        end_ts: 1_001,
        modifications: (0..subscriptions)
            .map(|q| Modification::Updated {
                query_id: q,
                diff: diff(i64::from(q) * 100),
            })
            .collect(),
        continued: false,
    };
    encode(&msg).expect("a transition encodes")
}

fn inserts(first: i64, count: i64) -> ResultDiff {
    ResultDiff::Array(
        (0..count)
            .map(|i| ArrayEdit::Insert {
                index: i as u32,
                value: chunk(first + i),
            })
            .collect(),
    )
}

/// ns per call of `direct` and of `serde`, each the fastest of `ROUNDS` rounds of about
/// `ROUND_TIME`, the two alternating so that both see the same machine (the fastest round is
/// the one least disturbed by other work on a shared machine).
fn ns_per_call(direct: &dyn Fn() -> bool, serde: &dyn Fn() -> bool) -> (f64, f64) {
    let calls_per_round = |decode: &dyn Fn() -> bool| {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < ROUND_TIME / 10 {
            assert!(decode());
            calls += 1;
        }
        calls * 10
    };
    let round = |decode: &dyn Fn() -> bool, calls: u64| {
        let start = Instant::now();
        for _ in 0..calls {
            assert!(black_box(decode()));
        }
        start.elapsed().as_nanos() as f64 / calls as f64
    };
    let (direct_calls, serde_calls) = (calls_per_round(direct), calls_per_round(serde));
    (0..ROUNDS).fold((f64::MAX, f64::MAX), |(d, s), _| {
        (
            d.min(round(direct, direct_calls)),
            s.min(round(serde, serde_calls)),
        )
    })
}

fn compare(
    label: &str,
    bytes: &[u8],
    direct: &dyn Fn(&[u8]) -> bool,
    serde: &dyn Fn(&[u8]) -> bool,
) {
    let (new, old) = ns_per_call(&|| direct(black_box(bytes)), &|| serde(black_box(bytes)));
    println!(
        "{label:<40} {:>6} B  direct {new:>9.0} ns  serde {old:>9.0} ns  ({:.2}x)",
        bytes.len(),
        old / new
    );
}

fn main() {
    let messages = [
        (
            "Transition, 5 x 20 chunk inserts",
            transition(5, |q| inserts(q, 20)),
        ),
        (
            "Transition, 5 x replace of 20 chunks",
            transition(5, |q| {
                ResultDiff::Replace(Value::Array((q..q + 20).map(chunk).collect()))
            }),
        ),
        (
            "Transition, 1 x 1 chunk insert (live)",
            transition(1, |q| inserts(q, 1)),
        ),
    ];
    let is_transition =
        |r: Result<ServerMessage, _>| matches!(r, Ok(ServerMessage::Transition { .. }));
    for (label, bytes) in &messages {
        // Both paths give the same message before either is timed.
        assert_eq!(decode_transition(bytes).ok(), decode_server(bytes).ok());
        compare(
            label,
            bytes,
            &|b| is_transition(decode_transition(b)),
            &|b| is_transition(decode_server(b)),
        );
    }
    let doc = rmp_serde::to_vec_named(&chunk(42)).expect("a document encodes");
    assert_eq!(
        value_from_slice(&doc).ok(),
        rmp_serde::from_slice::<Value>(&doc).ok()
    );
    compare(
        "stored transcript chunk document",
        &doc,
        &|b| value_from_slice(b).is_ok(),
        &|b| rmp_serde::from_slice::<Value>(b).is_ok(),
    );
}
