//! The rate limiter's window documents: past buckets folded into one document per (user,
//! action) keep the count exact across many buckets, and a check's reads stay small however
//! many counter documents the window holds.

mod linkedup_common;

use linkedup_common::*;
use linkedup_schema::ot::TextOperation;
use linkedup_server::linkedup::{LinkedUpConfig, RateLimit, RateLimitConfig};
use query_engine::json::to_value;
use query_engine::obj;
use query_engine::value::Value;

/// Exact (one shard) chat limit with short buckets, so sequential calls spread over many
/// buckets and the limiter must fold ended buckets to count them.
fn short_buckets(max: i64) -> LinkedUpConfig {
    LinkedUpConfig {
        rate_limits: RateLimitConfig {
            chat_send: RateLimit {
                max,
                window_ms: 60_000,
            },
            bucket_ms: 20,
            shards: 1,
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    }
}

fn int(v: &Value, field: &str) -> i64 {
    v.get_path(field).and_then(Value::as_i64).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folded_buckets_count_exactly_and_the_limit_holds() {
    const MAX: i64 = 40;
    let w = world(short_buckets(MAX)).await;
    let send = |i: i64| obj! { "meetingId" => w.meeting.as_str(), "content" => format!("m{i}") };
    for i in 0..MAX {
        w.env.m("chat.send", send(i), Some(&w.bob)).await.unwrap();
        if i % 8 == 0 {
            // Let a bucket or two end, so later checks fold.
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    let before = w.env.commits();
    let e = expect_code(
        w.env.m("chat.send", send(MAX), Some(&w.bob)).await,
        "RATE_LIMITED",
    );
    let retry = int(&e.data, "retryAfterMs");
    assert!((1..=60_000).contains(&retry), "retryAfterMs {retry}");
    assert_eq!(w.env.commits(), before, "a refused call writes nothing");

    // Every accepted call sits in exactly one counter document.
    let counters = w.env.all("rateLimits").await;
    let counted: i64 = counters
        .iter()
        .filter(|d| d.get_path("action") == Some(&Value::from("chat.send")))
        .map(|d| int(d, "count"))
        .sum();
    assert_eq!(counted, MAX);
    // One window document for bob's chat.send; what it folded never exceeds what was counted.
    let windows: Vec<Value> = w
        .env
        .all("rateLimitWindows")
        .await
        .into_iter()
        .filter(|d| d.get_path("action") == Some(&Value::from("chat.send")))
        .collect();
    assert_eq!(windows.len(), 1);
    let folded: i64 = windows[0]
        .get_path("counts")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .sum();
    assert!(folded <= MAX, "folded {folded}");
    assert_eq!(int(&windows[0], "bucketMs"), 20);
    // Another user is not limited.
    w.env
        .m("chat.send", send(MAX + 1), Some(&w.alice))
        .await
        .unwrap();
}

/// With 16 shards, a limit of 20 was refused as soon as two earlier calls of the bucket had
/// picked the caller's shard (estimate 2 × 16 = 32): a user's third call a minute could fail.
/// Small limits get fewer shards, so calls below the limit always pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_limit_is_not_refused_below_it() {
    const MAX: i64 = 20;
    let w = world(LinkedUpConfig {
        rate_limits: RateLimitConfig {
            chat_send: RateLimit {
                max: MAX,
                window_ms: 60_000,
            },
            shards: 16,
            bucket_ms: 60_000,
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    })
    .await;
    let send = |i: i64| obj! { "meetingId" => w.meeting.as_str(), "content" => format!("m{i}") };
    // 10 calls each in one bucket: with 2 shards the estimate is at most 2 × 9 = 18 < 20.
    // (With 16, one of the two users is refused in about 7 runs of 10.)
    for user in [&w.bob, &w.alice] {
        for i in 0..10 {
            w.env.m("chat.send", send(i), Some(user)).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_across_buckets_are_all_counted() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 15;
    let w = world(LinkedUpConfig {
        rate_limits: RateLimitConfig {
            chat_send: RateLimit {
                max: 1_000_000,
                window_ms: 60_000,
            },
            bucket_ms: 5,
            shards: 4,
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    })
    .await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let engine = w.env.engine.clone();
        let (bob, m) = (w.bob.clone(), w.meeting.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                engine
                    .mutation(
                        "chat.send",
                        obj! { "meetingId" => m.as_str(), "content" => format!("{t}/{i}") },
                        Some(&bob),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // One more call folds everything before its bucket: the window document plus the
    // current bucket's counters must account for every call exactly once.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    w.env
        .m(
            "chat.send",
            obj! { "meetingId" => w.meeting.as_str(), "content" => "last" },
            Some(&w.bob),
        )
        .await
        .unwrap();
    let windows = w.env.all("rateLimitWindows").await;
    let window = windows
        .iter()
        .find(|d| d.get_path("action") == Some(&Value::from("chat.send")))
        .unwrap();
    let through = int(window, "throughMs");
    let folded: i64 = window
        .get_path("counts")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .sum();
    let unfolded: i64 = w
        .env
        .all("rateLimits")
        .await
        .iter()
        .filter(|d| {
            d.get_path("action") == Some(&Value::from("chat.send"))
                && int(d, "windowStartMs") >= through
        })
        .map(|d| int(d, "count"))
        .sum();
    assert_eq!(folded + unfolded, (TASKS * PER_TASK) as i64 + 1);
}

/// Note edits are limited per user like chat; a retransmission of a committed op is answered
/// from its record and not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn note_edits_are_rate_limited_and_retransmissions_are_free() {
    const MAX: i64 = 3;
    let w = world(LinkedUpConfig {
        rate_limits: RateLimitConfig {
            notes_apply: RateLimit {
                max: MAX,
                window_ms: 60_000,
            },
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    })
    .await;
    let insert = |at: i64, text: &str| {
        to_value(&TextOperation::new().retain(at as u64).insert(text)).unwrap()
    };
    let op = |base: i64, seq: i64| {
        obj! {
            "meetingId" => w.meeting.as_str(), "baseVersion" => base, "op" => insert(base, "a"),
            "clientId" => "bob-1", "clientSeq" => seq,
        }
    };
    for i in 0..MAX {
        let r = w
            .env
            .m("notes.applyOperation", op(i, i + 1), Some(&w.bob))
            .await
            .unwrap();
        assert_eq!(int(&r, "version"), i + 1);
    }
    let again = w
        .env
        .m("notes.applyOperation", op(MAX - 1, MAX), Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(int(&again, "version"), MAX);
    let before = w.env.commits();
    let e = expect_code(
        w.env
            .m("notes.applyOperation", op(MAX, MAX + 1), Some(&w.bob))
            .await,
        "RATE_LIMITED",
    );
    assert!(int(&e.data, "retryAfterMs") > 0);
    assert_eq!(w.env.commits(), before, "a refused edit writes nothing");
    // alice is not limited by bob's edits.
    let r = w
        .env
        .m(
            "notes.applyOperation",
            obj! {
                "meetingId" => w.meeting.as_str(), "baseVersion" => MAX,
                "op" => insert(MAX, "b"),
                "clientId" => "alice-1", "clientSeq" => 1i64,
            },
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(int(&r, "version"), MAX + 1);
}
