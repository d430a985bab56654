//! Data retention: `retention.purge` deletes the documents of a table that are older than its
//! period, in bounded batches that continue themselves, records each batch in the audit log,
//! and leaves newer documents alone; the expiry purges of idempotency keys and rate-limit
//! counters likewise drain a backlog larger than one batch.

mod linkedup_common;

use std::time::Duration;

use linkedup_common::*;
use linkedup_server::linkedup::retention::{PURGE, PURGE_BATCH};
use linkedup_server::linkedup::{LinkedUpConfig, RetentionPolicy};
use query_engine::obj;
use query_engine::value::Value;

const EVENTUALLY: Duration = Duration::from_secs(30);

fn keep(periods: &[(&str, i64)]) -> LinkedUpConfig {
    LinkedUpConfig {
        retention: RetentionPolicy {
            max_age_ms: periods.iter().map(|(t, ms)| (t.to_string(), *ms)).collect(),
        },
        ..LinkedUpConfig::default()
    }
}

/// Runs `retention.purge` with `args` (an internal call, as the cron makes it).
async fn purge(w: &World, args: Value) -> Result<Value, query_engine::error::FunctionError> {
    w.env
        .engine
        .mutation(PURGE, args, None)
        .await
        .map(|r| r.value)
}

/// `bob` sends `content` to the world's meeting.
async fn send(w: &World, content: &str) {
    w.env
        .m(
            "chat.send",
            obj! { "meetingId" => w.meeting.as_str(), "content" => content },
            Some(&w.bob),
        )
        .await
        .unwrap();
}

fn int(v: &Value, field: &str) -> i64 {
    v.get_path(field).and_then(Value::as_i64).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_documents_are_purged_in_batches_and_audited_and_new_ones_stay() {
    const OLD: usize = PURGE_BATCH + 20;
    // Old enough: written more than the period before the purge; new: written after that
    // sleep, so they are older than the period only if the purge comes seconds later.
    let w = world(keep(&[("messages", 2_000)])).await;
    let meeting = w.meeting.clone();
    w.env
        .engine
        .transact(move |ctx| {
            let now = ctx.now_ms();
            for i in 0..OLD {
                ctx.insert(
                    "messages",
                    obj! { "meetingId" => meeting.as_str(), "content" => format!("old {i}"), "timestamp" => now },
                )?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    for i in 0..3 {
        send(&w, &format!("new {i}")).await;
    }

    let r = purge(&w, obj! { "table" => "messages" }).await.unwrap();
    assert_eq!(int(&r, "deleted"), PURGE_BATCH as i64);
    assert_eq!(r.get_path("continued"), Some(&Value::Bool(true)));
    // The continuation, run by the scheduler, takes the rest.
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    let left = loop {
        let left = w.env.all("messages").await;
        if left.len() == 3 {
            break left;
        }
        assert!(left.len() > 3, "a new message was purged");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the continuation never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut contents: Vec<String> = left.iter().map(|m| s(m, "content")).collect();
    contents.sort();
    assert_eq!(contents, ["new 0", "new 1", "new 2"]);

    // Each batch is in the audit log, with how many it deleted.
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let purges: Vec<Value> = w
            .env
            .all("auditLogs")
            .await
            .into_iter()
            .filter(|e| s(e, "action") == "retention.purged")
            .collect();
        let total: i64 = purges.iter().map(|e| int(e, "metadata.deleted")).sum();
        if total == OLD as i64 {
            assert_eq!(purges.len(), 2);
            assert!(purges.iter().all(|e| s(e, "resourceId") == "messages"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "audited {total}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cron_run_covers_every_table_of_the_policy_and_nothing_else() {
    let w = world(keep(&[("messages", 60_000), ("auditLogs", 60_000)])).await;
    send(&w, "hello").await;
    let r = purge(&w, obj! {}).await.unwrap();
    assert_eq!(int(&r, "scheduled"), 2);
    // Nothing is old enough: both runs delete nothing.
    let r = purge(&w, obj! { "table" => "messages" }).await.unwrap();
    assert_eq!(
        (int(&r, "deleted"), r.get_path("continued")),
        (0, Some(&Value::Bool(false)))
    );
    assert_eq!(w.env.all("messages").await.len(), 1);

    // A table without a period is refused, and nothing is deleted from it.
    let e = expect_code(
        purge(&w, obj! { "table" => "meetings" }).await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.contains("no retention period"), "{e}");
    assert_eq!(w.env.all("meetings").await.len(), 1);
}

#[test]
fn the_default_policy_is_the_seed_s() {
    let policy = RetentionPolicy::default();
    let days = |t: &str| {
        policy
            .max_age_ms
            .iter()
            .find(|(n, _)| n == t)
            .map(|(_, ms)| ms / 86_400_000)
    };
    assert_eq!(days("transcripts"), Some(90));
    assert_eq!(days("messages"), Some(90));
    assert_eq!(days("transcriptSegments"), Some(365));
    assert_eq!(days("prompts"), Some(365));
    assert_eq!(days("insights"), Some(365));
    assert_eq!(days("auditLogs"), Some(365));
    assert_eq!(days("meetings"), None);
}

/// Inserts `n` documents made by `doc(i)` into `table` in one transaction.
async fn insert_many(w: &World, table: &'static str, n: i64, doc: fn(i64, &str) -> Value) {
    let user = w.bob_id.clone();
    w.env
        .engine
        .transact(move |ctx| {
            for i in 0..n {
                ctx.insert(table, doc(i, &user))?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_purges_drain_a_backlog_larger_than_a_batch() {
    use linkedup_server::linkedup::{idempotency, rate_limit};
    let w = world(LinkedUpConfig::default()).await;
    // More than two batches of expired keys, and one live key.
    insert_many(&w, "idempotencyKeys", 1_100, |i, _| {
        obj! { "key" => format!("k{i}"), "scope" => "s", "createdAt" => 0i64, "expiresAt" => 1i64 }
    })
    .await;
    insert_many(&w, "idempotencyKeys", 1, |_, _| {
        obj! { "key" => "live", "scope" => "s", "createdAt" => 0i64, "expiresAt" => i64::MAX }
    })
    .await;
    // Counter documents of buckets long past.
    insert_many(&w, "rateLimits", 600, |i, user| {
        obj! {
            "userId" => user, "action" => "chat.send", "windowStartMs" => i, "shard" => 0i64,
            "count" => 1i64, "createdAt" => 0i64, "updatedAt" => 0i64,
        }
    })
    .await;

    // What each purge must leave: the live key; the world's own (current) counters.
    let expired = |table: &str, d: &Value| match table {
        "idempotencyKeys" => int(d, "expiresAt") == 1,
        _ => int(d, "windowStartMs") < 600,
    };
    for (job, table) in [
        (idempotency::PURGE_EXPIRED, "idempotencyKeys"),
        (rate_limit::PURGE, "rateLimits"),
    ] {
        let before = w.env.all(table).await;
        let live = before.iter().filter(|d| !expired(table, d)).count();
        assert!(before.len() - live > 512, "{table}");
        let deleted = w
            .env
            .engine
            .mutation(job, obj! {}, None)
            .await
            .unwrap()
            .value;
        assert_eq!(deleted, Value::Int64(512), "{job}");
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        while w.env.all(table).await.len() > live {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{job} stopped after one batch"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_meeting_keeps_its_newest_chunk_so_its_sequence_goes_on() {
    let w = world(keep(&[("transcripts", 2_000)])).await;
    let ingest = |chunk: &str| {
        obj! {
            "meetingId" => w.meeting.as_str(), "chunkId" => chunk, "text" => "hello",
            "confidence" => 0.9, "startMs" => 0i64, "endMs" => 1i64,
        }
    };
    for c in ["c1", "c2", "c3"] {
        w.env
            .m("transcripts.ingestChunk", ingest(c), Some(&w.bob))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let purge_transcripts = || purge(&w, obj! { "table" => "transcripts" });
    // All three are old; the newest stays while the meeting is active.
    assert_eq!(int(&purge_transcripts().await.unwrap(), "deleted"), 2);
    let left = w.env.all("transcripts").await;
    assert_eq!(left.len(), 1);
    assert_eq!(int(&left[0], "sequence"), 3);
    let r = w
        .env
        .m("transcripts.ingestChunk", ingest("c4"), Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(int(&r, "sequence"), 4);

    // Once the meeting has ended, nothing is kept.
    w.end_meeting().await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(int(&purge_transcripts().await.unwrap(), "deleted"), 2);
    assert!(w.env.all("transcripts").await.is_empty());
}

/// More chunks kept (the newest of active meetings) than a batch holds, at the front of the
/// range: the purge walks past them to the deletable ones after, where every run used to
/// read the same kept batch, delete nothing and stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_chunks_at_the_front_do_not_stall_the_purge() {
    const KEPT: usize = PURGE_BATCH + 10;
    const DELETABLE: i64 = 20;
    let w = world(keep(&[("transcripts", 2_000)])).await;
    let chunk = |meeting: &str, sequence: i64| {
        obj! {
            "meetingId" => meeting, "bucketMs" => 0i64, "sequence" => sequence,
            "chunkId" => format!("c{sequence}"), "text" => "hello", "confidence" => 0.9,
            "startMs" => 0i64, "endMs" => 1i64, "createdAt" => 0i64,
        }
    };
    let meeting = w.meeting.clone();
    w.env
        .engine
        .transact(move |ctx| {
            let mut active = ctx.get("meetings", &meeting)?.unwrap();
            let fields = active.as_object_mut().unwrap();
            fields.remove("_id");
            fields.remove("_creationTime");
            for _ in 0..KEPT {
                let copy = ctx.insert("meetings", active.clone())?;
                ctx.insert("transcripts", chunk(copy.as_str(), 1))?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    let meeting = w.meeting.clone();
    w.env
        .engine
        .transact(move |ctx| {
            for sequence in 1..=DELETABLE + 1 {
                ctx.insert("transcripts", chunk(&meeting, sequence))?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    let r = purge(&w, obj! { "table" => "transcripts" }).await.unwrap();
    assert_eq!(int(&r, "deleted"), 0, "the first batch is all kept");
    assert_eq!(r.get_path("continued"), Some(&Value::Bool(true)));
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let left = w.env.all("transcripts").await.len();
        if left == KEPT + 1 {
            break;
        }
        assert!(left > KEPT + 1, "a kept chunk was purged");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purge stalled with {left} chunks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
