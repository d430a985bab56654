//! `meetings.createStreamRoom` and the room job `meetings.start` schedules: host only,
//! idempotent, stored once under concurrent calls, shown to participants by `meetings.get`,
//! nothing stored when Stream fails (and the job retries later).

mod linkedup_common;
mod stream_common;

use std::time::Duration;

use linkedup_common::*;
use linkedup_server::linkedup::{audit, LinkedUpConfig};
use linkedup_server::stream::{RoomProvider, StreamClient, StreamConfig};
use query_engine::obj;
use query_engine::value::Value;
use stream_common::*;

const CREATE: &str = "meetings.createStreamRoom";

fn with_fake(fake: &FakeStream) -> LinkedUpConfig {
    let mut settings = fake.settings();
    settings.max_attempts = 1;
    LinkedUpConfig {
        stream: StreamConfig {
            provider: RoomProvider::Stream(StreamClient::new(settings).unwrap()),
            ..StreamConfig::default()
        },
        ..LinkedUpConfig::default()
    }
}

async fn room_of(w: &World, m: &str) -> Option<String> {
    let meeting = w
        .env
        .q("meetings.get", obj! { "meetingId" => m }, Some(&w.bob))
        .await
        .unwrap();
    meeting
        .get_path("streamRoomId")
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn room_audits(w: &World, m: &str) -> Vec<Value> {
    w.env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|e| s(e, "action") == "meeting.stream_room_created" && s(e, "resourceId") == m)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_meeting_creates_its_room_for_participants_to_read() {
    let w = world(LinkedUpConfig::default()).await;
    let m = w.meeting.as_str();
    // The job meetings.start scheduled (world waited for it) stored the local room.
    assert_eq!(room_of(&w, m).await, Some(format!("default:{m}")));
    let audits = room_audits(&w, m).await;
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].get_path("actorUserId"), None, "the system acted");
    assert_eq!(s(&audits[0], "orgId"), "org1");
    // Only participants see it.
    expect_code(
        w.env
            .q("meetings.get", obj! { "meetingId" => m }, Some(&w.carol))
            .await,
        "FORBIDDEN",
    );
    // Asking again returns it and changes nothing.
    let before = w.env.commits();
    let r = w
        .env
        .call(CREATE, obj! { "meetingId" => m }, Some(&w.alice))
        .await
        .unwrap();
    assert_eq!(s(&r, "roomId"), format!("default:{m}"));
    assert_eq!(w.env.commits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hosts_create_rooms_and_creating_is_idempotent() {
    let w = world(LinkedUpConfig::default()).await;
    let m = w.scheduled().await;
    let args = || obj! { "meetingId" => m.as_str() };
    assert_eq!(room_of(&w, &m).await, None);
    expect_code(w.env.call(CREATE, args(), None).await, "UNAUTHORIZED");
    for (who, label) in [
        (&w.bob, "participant"),
        (&w.carol, "non-participant"),
        (&w.dave, "other org"),
    ] {
        let before = w.env.commits();
        let e = expect_code(w.env.call(CREATE, args(), Some(who)).await, "FORBIDDEN");
        assert_eq!(w.env.commits(), before, "{label}: {e}");
    }
    assert_eq!(room_of(&w, &m).await, None, "a refused call stores nothing");

    let first = w.env.call(CREATE, args(), Some(&w.alice)).await.unwrap();
    let again = w.env.call(CREATE, args(), Some(&w.alice)).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(s(&first, "roomId"), format!("default:{m}"));
    assert_eq!(room_of(&w, &m).await, Some(format!("default:{m}")));
    let audits = room_audits(&w, &m).await;
    assert_eq!(audits.len(), 1);
    assert_eq!(s(&audits[0], "actorUserId"), w.alice_id);

    // The refusals were recorded as denials of meetings.createStreamRoom.
    let written = audit::flush_denials(&w.env.engine, &w.env.config.denials)
        .await
        .unwrap();
    assert_eq!(written, 3);
    let denied: Vec<String> = w
        .env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|e| s(e, "action") == "access.denied" && s(e, "resourceId") == m)
        .map(|e| s(&e, "metadata.function"))
        .collect();
    assert_eq!(denied, [CREATE; 3]);

    // A meeting that is over gets no room.
    let cancelled = w.scheduled().await;
    w.env
        .m(
            "meetings.cancel",
            obj! { "meetingId" => cancelled.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    expect_code(
        w.env
            .call(
                CREATE,
                obj! { "meetingId" => cancelled.as_str() },
                Some(&w.alice),
            )
            .await,
        "CONFLICT",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_store_one_room() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.scheduled().await;
    // Both calls reach Stream before either stores.
    fake.hold_calls_until(2);
    let args = obj! { "meetingId" => m.as_str() };
    let (a, b) = tokio::join!(
        w.env.call(CREATE, args.clone(), Some(&w.alice)),
        w.env.call(CREATE, args.clone(), Some(&w.alice)),
    );
    assert_eq!(a.unwrap(), b.unwrap());
    let calls: Vec<String> = fake.calls().into_iter().map(|c| c.path).collect();
    let path = format!("/api/v2/video/call/default/{m}");
    assert_eq!(calls.iter().filter(|p| **p == path).count(), 2);
    assert_eq!(room_of(&w, &m).await, Some(format!("default:{m}")));
    assert_eq!(room_audits(&w, &m).await.len(), 1, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_failure_is_a_provider_error_and_stores_nothing() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.scheduled().await;
    fake.script([Reply::status(400)]);
    let before = w.env.commits();
    let e = expect_code(
        w.env
            .call(CREATE, obj! { "meetingId" => m.as_str() }, Some(&w.alice))
            .await,
        "PROVIDER_ERROR",
    );
    assert!(e.message.contains("scripted 400"), "{e}");
    assert!(!format!("{e:?}").contains(API_SECRET));
    assert_eq!(w.env.commits(), before);
    assert_eq!(room_of(&w, &m).await, None);
    // Stream recovered: the next call creates the room.
    let r = w
        .env
        .call(CREATE, obj! { "meetingId" => m.as_str() }, Some(&w.alice))
        .await
        .unwrap();
    assert_eq!(s(&r, "roomId"), format!("default:{m}"));
}

/// (state, attempt) of the scheduled runs of room job `function` for meeting `m`, once the
/// latest run has finished (a failed run schedules its retry before it is recorded).
async fn job_runs(
    w: &World,
    function: &'static str,
    m: &str,
    expected: usize,
) -> Vec<(String, Option<i64>)> {
    let jobs = |engine: query_engine::engine::Engine, m: String| async move {
        let v = engine
            .read(move |ctx| {
                let jobs = ctx.full_table_scan("_scheduled_jobs", 1_000)?;
                Ok(Value::Array(
                    jobs.into_iter()
                        .filter(|j| {
                            j.get_path("function").and_then(Value::as_str) == Some(function)
                                && j.get_path("args.meetingId").and_then(Value::as_str)
                                    == Some(m.as_str())
                        })
                        .collect(),
                ))
            })
            .await
            .unwrap();
        v.as_array().unwrap().to_vec()
    };
    let mut found = Vec::new();
    for _ in 0..400 {
        found = jobs(w.env.engine.clone(), m.to_string()).await;
        let settled = found.iter().all(|j| {
            j.get_path("args.attempt").is_some()
                || matches!(s(j, "state").as_str(), "success" | "failed")
        });
        if found.len() == expected && settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    found
        .iter()
        .map(|j| {
            (
                s(j, "state"),
                j.get_path("args.attempt").and_then(Value::as_i64),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_job_schedules_a_retry_when_stream_fails() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.scheduled().await;
    fake.script([Reply::status(503)]);
    w.env.start(&w.alice, &m).await;
    assert_eq!(
        job_runs(&w, "streamRooms.provision", &m, 2).await,
        [
            ("failed".to_string(), None),
            ("pending".to_string(), Some(1))
        ]
    );
    assert_eq!(room_of(&w, &m).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_meeting_ends_its_call_and_retries_when_stream_fails() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.meeting.clone();
    assert_eq!(room_of(&w, &m).await, Some(format!("default:{m}")));
    w.end_meeting().await;
    assert_eq!(
        job_runs(&w, "streamRooms.endCall", &m, 1).await,
        [("success".to_string(), None)]
    );
    let ended: Vec<Recorded> = fake
        .calls()
        .into_iter()
        .filter(|r| r.path == format!("/api/v2/video/call/default/{m}/mark_ended"))
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].api_key.as_deref(), Some(API_KEY));
    assert_eq!(ended[0].auth_type.as_deref(), Some("jwt"));

    // A second meeting whose call Stream fails to end: the job runs again later.
    let m2 = w.scheduled().await;
    w.env.start(&w.alice, &m2).await;
    assert_eq!(
        job_runs(&w, "streamRooms.provision", &m2, 1).await,
        [("success".to_string(), None)]
    );
    fake.script([Reply::status(503)]);
    w.env.end(&w.alice, &m2).await;
    assert_eq!(
        job_runs(&w, "streamRooms.endCall", &m2, 2).await,
        [
            ("failed".to_string(), None),
            ("pending".to_string(), Some(1))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_ended_while_its_room_is_created_gets_its_call_ended() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.scheduled().await;
    let release = fake.hold_next_call();
    w.env.start(&w.alice, &m).await;
    // The start job's get-or-create request is at Stream, unanswered.
    let create_path = format!("/api/v2/video/call/default/{m}");
    for _ in 0..400 {
        if fake.calls().iter().any(|r| r.path == create_path) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(fake.calls().iter().any(|r| r.path == create_path));
    w.env.end(&w.alice, &m).await;
    assert_eq!(
        room_of(&w, &m).await,
        None,
        "ended before the room was stored"
    );
    release.notify_one();
    assert_eq!(
        job_runs(&w, "streamRooms.provision", &m, 1).await,
        [("success".to_string(), None)]
    );
    assert_eq!(room_of(&w, &m).await, Some(format!("default:{m}")));
    assert_eq!(
        job_runs(&w, "streamRooms.endCall", &m, 1).await,
        [("success".to_string(), None)]
    );
    let ended = fake
        .calls()
        .into_iter()
        .filter(|r| r.path == format!("{create_path}/mark_ended"))
        .count();
    assert_eq!(ended, 1);
}
