//! Transcript ingest into different meetings by different producers never conflicts: its read
//! set is the producer's own rate-limit documents and the meeting's own chunk ranges, so the
//! committer never re-executes such calls however many run at once.

mod live_common;

use std::sync::atomic::Ordering;

use live_common::*;
use query_engine::obj;
use query_engine::value::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_into_different_meetings_does_not_conflict() {
    const MEETINGS: usize = 8;
    const PER_MEETING: usize = 25;
    let env = open();
    let mut setups = Vec::new();
    for m in 0..MEETINGS {
        let (host, producer) = (ident(&format!("h{m}")), ident(&format!("p{m}")));
        let meeting = env.meeting(&host, &[&producer], true).await;
        setups.push((producer, meeting));
    }
    let before = env.engine.metrics().conflicts.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for (m, (producer, meeting)) in setups.into_iter().enumerate() {
        let engine = env.engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_MEETING {
                let args = obj! {
                    "meetingId" => meeting.as_str(),
                    "chunkId" => format!("c{m}-{i}"),
                    "text" => "words",
                    "confidence" => 0.9,
                    "startMs" => (i as i64) * 1_000,
                    "endMs" => (i as i64) * 1_000 + 900,
                };
                let v = engine
                    .mutation("transcripts.ingestChunk", args, Some(&producer))
                    .await
                    .unwrap()
                    .value;
                assert_eq!(
                    v.get_path("sequence").and_then(Value::as_i64),
                    Some(i as i64 + 1)
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conflicts = env.engine.metrics().conflicts.load(Ordering::Relaxed) - before;
    assert_eq!(conflicts, 0, "ingest into separate meetings conflicted");
}
