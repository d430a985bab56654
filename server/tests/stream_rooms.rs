//! `meetings.createStreamRoom` and the room job `meetings.start` schedules: host only,
//! idempotent, stored once under concurrent calls, shown to participants by `meetings.get`,
//! nothing stored when Stream fails (and the job retries later). The call's members follow
//! the participants: removing one blocks them from the call and removes them from its members,
//! changing a role changes their call role (through Stream's API, and recorded by the local
//! provider); nothing is sent for a meeting without a room or one that is over; a removed
//! participant gets no new call token.

mod linkedup_common;
mod stream_common;

use std::time::Duration;

use linkedup_common::*;
use linkedup_server::linkedup::{audit, LinkedUpConfig};
use linkedup_server::stream::provider::{HOST_CALL_ROLE, MEMBER_CALL_ROLE};
use linkedup_server::stream::{
    LocalCall, MemberChange, RoomMember, RoomProvider, Secret, StreamClient, StreamConfig,
};
use query_engine::error::FunctionError;
use query_engine::obj;
use query_engine::value::Value;
use serde_json::json;
use stream_common::*;

const CREATE: &str = "meetings.createStreamRoom";
const SYNC: &str = "streamRooms.syncMember";

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
    // Only participants see it (to others there is no such meeting).
    expect_code(
        w.env
            .q("meetings.get", obj! { "meetingId" => m }, Some(&w.carol))
            .await,
        "NOT_FOUND",
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
    for (who, label, code) in [
        (&w.bob, "participant", "FORBIDDEN"),
        (&w.carol, "non-participant", "NOT_FOUND"),
        (&w.dave, "other org", "NOT_FOUND"),
    ] {
        let before = w.env.commits();
        let e = expect_code(w.env.call(CREATE, args(), Some(who)).await, code);
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
    let mut found = Vec::new();
    for _ in 0..400 {
        found = meeting_jobs(&w.env.engine, function, m).await;
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

    // Stream refusing the request (a 4xx) is not retried: it would only be refused again.
    let m2 = w.scheduled().await;
    fake.script([Reply::status(400)]);
    w.env.start(&w.alice, &m2).await;
    assert_eq!(
        job_runs(&w, "streamRooms.provision", &m2, 1).await,
        [("failed".to_string(), None)]
    );
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

/// `alice` (a host of `m`) makes `user` a `role` of it.
async fn set_role(w: &World, m: &str, user: &str, role: &str) -> Result<Value, FunctionError> {
    w.env
        .m(
            "meetings.setRole",
            obj! { "meetingId" => m, "userId" => user, "role" => role },
            Some(&w.alice),
        )
        .await
}

/// `alice` removes `user` from `m`.
async fn remove(w: &World, m: &str, user: &str) -> Result<Value, FunctionError> {
    w.env
        .m(
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => user },
            Some(&w.alice),
        )
        .await
}

/// `alice` adds `user` to `m` as a participant.
async fn add(w: &World, m: &str, user: &str) -> Result<Value, FunctionError> {
    w.env
        .m(
            "meetings.addParticipant",
            obj! { "meetingId" => m, "userId" => user },
            Some(&w.alice),
        )
        .await
}

fn succeeded(n: usize) -> Vec<(String, Option<i64>)> {
    vec![("success".to_string(), None); n]
}

/// The bodies of the requests the fake received at `path`.
fn bodies(fake: &FakeStream, path: &str) -> Vec<serde_json::Value> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| r.body)
        .collect()
}

/// The local provider's call of meeting `m`.
fn local_call(w: &World, m: &str) -> Option<LocalCall> {
    w.env.config.stream.provider.local_calls().unwrap().call(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_and_removals_reach_the_stream_call() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.meeting.clone();
    let bob = w.bob_id.as_str();
    let call = format!("/api/v2/video/call/default/{m}");
    let created = fake.requests().len();

    // participant → host: bob's call role becomes host.
    set_role(&w, &m, bob, "host").await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 1).await, succeeded(1));
    assert_eq!(
        bodies(&fake, &format!("{call}/members")),
        [json!({ "update_members": [{ "user_id": bob, "role": "host" }] })]
    );
    // As at room creation, the user is upserted first (with their name, if any).
    let upserted = fake.requests()[created].clone();
    assert_eq!(upserted.path, "/api/v2/users");
    assert_eq!(upserted.body, json!({ "users": { bob: { "id": bob } } }));

    // host → participant: back to the member role.
    set_role(&w, &m, bob, "participant").await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 2).await, succeeded(2));
    assert_eq!(
        bodies(&fake, &format!("{call}/members"))[1],
        json!({ "update_members": [{ "user_id": bob, "role": MEMBER_CALL_ROLE }] })
    );

    // Removal: blocked from the call (first), then no longer a member.
    let before = fake.requests().len();
    remove(&w, &m, bob).await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 3).await, succeeded(3));
    let sent: Vec<Recorded> = fake.requests()[before..].to_vec();
    let paths: Vec<&str> = sent.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [format!("{call}/block"), format!("{call}/members")]);
    assert_eq!(sent[0].body, json!({ "user_id": bob }));
    assert_eq!(sent[1].body, json!({ "remove_members": [bob] }));
    for r in &sent {
        assert_eq!(r.api_key.as_deref(), Some(API_KEY));
        assert_eq!(r.auth_type.as_deref(), Some("jwt"));
        assert!(r.authorization.is_some());
    }

    // Re-added: unblocked, and a member again.
    let before = fake.requests().len();
    add(&w, &m, bob).await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 4).await, succeeded(4));
    let paths: Vec<String> = fake.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v2/users".to_string(),
            format!("{call}/unblock"),
            format!("{call}/members")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_records_the_call_membership() {
    let w = world(LinkedUpConfig::default()).await;
    let m = w.meeting.clone();
    let bob = w.bob_id.as_str();
    let call = local_call(&w, &m).expect("the start job created the call");
    assert_eq!(call.members[&w.alice_id], HOST_CALL_ROLE);
    assert_eq!(call.members[bob], MEMBER_CALL_ROLE);

    set_role(&w, &m, bob, "host").await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 1).await, succeeded(1));
    assert_eq!(local_call(&w, &m).unwrap().members[bob], HOST_CALL_ROLE);

    set_role(&w, &m, bob, "participant").await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 2).await, succeeded(2));
    assert_eq!(local_call(&w, &m).unwrap().members[bob], MEMBER_CALL_ROLE);

    remove(&w, &m, bob).await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 3).await, succeeded(3));
    let call = local_call(&w, &m).unwrap();
    assert!(!call.members.contains_key(bob), "{call:?}");
    assert!(call.blocked.contains(bob), "{call:?}");

    add(&w, &m, bob).await.unwrap();
    assert_eq!(job_runs(&w, SYNC, &m, 4).await, succeeded(4));
    let call = local_call(&w, &m).unwrap();
    assert_eq!(call.members[bob], MEMBER_CALL_ROLE);
    assert!(call.blocked.is_empty(), "{call:?}");
    let member = |host| RoomMember {
        user_id: bob.to_string(),
        name: None,
        host,
    };
    assert_eq!(
        call.changes,
        [
            MemberChange::Set {
                member: member(true),
                unblock: false
            },
            MemberChange::Set {
                member: member(false),
                unblock: false
            },
            MemberChange::Remove {
                user_id: bob.to_string()
            },
            MemberChange::Set {
                member: member(false),
                unblock: true
            },
        ]
    );
}

/// The `streamRooms.syncMember` jobs scheduled for meeting `m`, as they are now.
async fn sync_jobs(w: &World, m: &str) -> usize {
    meeting_jobs(&w.env.engine, SYNC, m).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_open_meetings_with_a_room_change_their_call() {
    let w = world(LinkedUpConfig::default()).await;
    let bob = w.bob_id.as_str();

    // A meeting without a room: its participants change, nothing is scheduled.
    let later = w.scheduled().await;
    set_role(&w, &later, bob, "host").await.unwrap();
    remove(&w, &later, bob).await.unwrap();
    add(&w, &later, bob).await.unwrap();
    assert_eq!(sync_jobs(&w, &later).await, 0);
    assert!(local_call(&w, &later).is_none());

    // The meeting with a room: the same change is scheduled, in the same mutation.
    let m = w.meeting.clone();
    set_role(&w, &m, bob, "host").await.unwrap();
    assert_eq!(sync_jobs(&w, &m).await, 1);
    assert_eq!(job_runs(&w, SYNC, &m, 1).await, succeeded(1));

    // Once it is over, participants no longer change, and nothing is scheduled.
    w.end_meeting().await;
    let call = local_call(&w, &m).unwrap();
    expect_code(set_role(&w, &m, bob, "participant").await, "CONFLICT");
    expect_code(remove(&w, &m, bob).await, "CONFLICT");
    assert_eq!(sync_jobs(&w, &m).await, 1);
    assert_eq!(local_call(&w, &m).unwrap().changes, call.changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_participant_gets_no_new_call_token() {
    let w = world(LinkedUpConfig {
        stream: StreamConfig {
            webhook_secret: Some(Secret::new("call-token-secret")),
            ..StreamConfig::default()
        },
        ..LinkedUpConfig::default()
    })
    .await;
    let m = w.meeting.clone();
    let token = |who| {
        w.env.call(
            "meetings.streamCallToken",
            obj! { "meetingId" => m.as_str() },
            Some(who),
        )
    };
    let granted = token(&w.bob).await.unwrap();
    assert_eq!(s(&granted, "userId"), w.bob_id);
    remove(&w, &m, &w.bob_id).await.unwrap();
    expect_code(token(&w.bob).await, "NOT_FOUND");
    // And the token bob already has no longer admits him: he is blocked from the call.
    assert_eq!(job_runs(&w, SYNC, &m, 1).await, succeeded(1));
    assert!(local_call(&w, &m).unwrap().blocked.contains(&w.bob_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_audited_and_a_transient_one_retried() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.meeting.clone();
    let failures = || async {
        w.env
            .all("auditLogs")
            .await
            .into_iter()
            .filter(|e| s(e, "action") == "meeting.stream_member_sync_failed")
            .collect::<Vec<_>>()
    };

    // Stream refuses the block: no retry, an audit entry.
    fake.script([Reply::status(400)]);
    remove(&w, &m, &w.bob_id).await.unwrap();
    assert_eq!(
        job_runs(&w, SYNC, &m, 1).await,
        [("failed".to_string(), None)]
    );
    let audited = failures().await;
    assert_eq!(audited.len(), 1);
    let e = &audited[0];
    assert_eq!(s(e, "resourceId"), m);
    assert_eq!(s(e, "orgId"), "org1");
    assert_eq!(e.get_path("actorUserId"), None);
    assert_eq!(s(e, "metadata.userId"), w.bob_id);
    assert_eq!(s(e, "metadata.membership"), "removed");
    assert_eq!(
        e.get_path("metadata.status").and_then(Value::as_i64),
        Some(400)
    );
    assert_eq!(
        e.get_path("metadata.attempts").and_then(Value::as_i64),
        Some(1)
    );
    assert!(s(e, "metadata.error").contains("scripted 400"), "{e:?}");

    // Stream is unavailable when carol is added: the job runs again later, nothing audited.
    fake.script([Reply::status(503)]);
    add(&w, &m, &w.carol_id).await.unwrap();
    assert_eq!(
        job_runs(&w, SYNC, &m, 3).await,
        [
            ("failed".to_string(), None),
            ("failed".to_string(), None),
            ("pending".to_string(), Some(1))
        ]
    );
    assert_eq!(failures().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_changed_while_the_room_is_created_are_caught_up() {
    let fake = FakeStream::start().await;
    let w = world(with_fake(&fake)).await;
    let m = w.scheduled().await;
    let release = fake.hold_next_call();
    w.env.start(&w.alice, &m).await;
    // The start job's get-or-create request (with bob a member) is at Stream, unanswered.
    let call = format!("/api/v2/video/call/default/{m}");
    for _ in 0..400 {
        if fake.calls().iter().any(|r| r.path == call) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let created = bodies(&fake, &call);
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0]["data"]["members"],
        json!([{ "user_id": w.alice_id, "role": "host" }, { "user_id": w.bob_id }])
    );
    // No room yet: these changes schedule nothing themselves.
    remove(&w, &m, &w.bob_id).await.unwrap();
    w.env
        .m(
            "meetings.addParticipant",
            obj! { "meetingId" => m.as_str(), "userId" => w.carol_id.as_str(), "role" => "host" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(sync_jobs(&w, &m).await, 0);
    release.notify_one();
    // Storing the room schedules them: bob (removed) and carol (a host the room lacks).
    assert_eq!(job_runs(&w, SYNC, &m, 2).await, succeeded(2));
    assert_eq!(
        bodies(&fake, &format!("{call}/block")),
        [json!({ "user_id": w.bob_id })]
    );
    let mut members = bodies(&fake, &format!("{call}/members"));
    members.sort_by_key(|b| b.to_string());
    assert_eq!(
        members,
        [
            json!({ "remove_members": [w.bob_id] }),
            json!({ "update_members": [{ "user_id": w.carol_id, "role": "host" }] }),
        ]
    );
}
