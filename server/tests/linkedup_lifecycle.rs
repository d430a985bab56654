//! Meeting state machine and membership rules, post-call job scheduling, idempotency keys,
//! the rate limiter (exactness, retryAfterMs, and OCC conflicts under concurrency), denial
//! audit logging, feature flag administration and user linking.

mod linkedup_common;

use std::time::Duration;

use linkedup_common::*;
use linkedup_server::linkedup::{audit, LinkedUpConfig, RateLimit, RateLimitConfig};
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

async fn state_of(w: &World, m: &str) -> String {
    let v = w
        .env
        .q("meetings.get", obj! { "meetingId" => m }, Some(&w.alice))
        .await
        .unwrap();
    s(&v, "state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_transitions_and_their_error_codes() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    async fn fresh(w: &World) -> String {
        let v = w
            .env
            .m(
                "meetings.schedule",
                obj! { "title" => "t", "inviteeIds" => vec![Value::from(w.bob_id.as_str())] },
                Some(&w.alice),
            )
            .await
            .unwrap();
        v.as_str().unwrap().to_string()
    }
    async fn call(
        w: &World,
        name: &str,
        m: String,
    ) -> Result<Value, query_engine::error::FunctionError> {
        w.env
            .m(name, obj! { "meetingId" => m.as_str() }, Some(&w.alice))
            .await
    }
    // scheduled
    let m = fresh(&w).await;
    expect_code(call(&w, "meetings.end", m.clone()).await, "CONFLICT");
    expect_code(
        env.m(
            "meetings.join",
            obj! { "meetingId" => m.as_str() },
            Some(&w.bob),
        )
        .await,
        "MEETING_NOT_ACTIVE",
    );
    expect_code(
        env.m(
            "chat.send",
            obj! { "meetingId" => m.as_str(), "content" => "x" },
            Some(&w.bob),
        )
        .await,
        "MEETING_NOT_ACTIVE",
    );
    call(&w, "meetings.start", m.clone()).await.unwrap();
    assert_eq!(state_of(&w, &m).await, "active");
    // active
    call(&w, "meetings.start", m.clone()).await.unwrap(); // retry-safe no-op
    expect_code(call(&w, "meetings.cancel", m.clone()).await, "CONFLICT");
    call(&w, "meetings.end", m.clone()).await.unwrap();
    assert_eq!(state_of(&w, &m).await, "concluded");
    // concluded
    call(&w, "meetings.end", m.clone()).await.unwrap(); // no-op, schedules nothing again
    expect_code(call(&w, "meetings.start", m.clone()).await, "CONFLICT");
    expect_code(call(&w, "meetings.cancel", m.clone()).await, "CONFLICT");
    expect_code(
        env.m(
            "meetings.join",
            obj! { "meetingId" => m.as_str() },
            Some(&w.bob),
        )
        .await,
        "MEETING_NOT_ACTIVE",
    );
    let st = env
        .q(
            "meetings.getState",
            obj! { "meetingId" => m.as_str() },
            Some(&w.bob),
        )
        .await
        .unwrap();
    assert_eq!(st.get_path("active"), Some(&Value::Bool(false)));
    assert!(st.get_path("endedAt").is_some());
    // cancelled
    let c = fresh(&w).await;
    call(&w, "meetings.cancel", c.clone()).await.unwrap();
    call(&w, "meetings.cancel", c.clone()).await.unwrap();
    expect_code(call(&w, "meetings.start", c.clone()).await, "CONFLICT");
    expect_code(call(&w, "meetings.end", c.clone()).await, "CONFLICT");
    assert_eq!(state_of(&w, &c).await, "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_host_can_be_neither_removed_nor_demoted() {
    let w = world(LinkedUpConfig::default()).await;
    let (env, m) = (&w.env, w.meeting.as_str());
    let me = |u: &str, role: &str| obj! { "meetingId" => m, "userId" => u, "role" => role };
    expect_code(
        env.m(
            "meetings.setRole",
            me(&w.alice_id, "participant"),
            Some(&w.alice),
        )
        .await,
        "CONFLICT",
    );
    expect_code(
        env.m(
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => w.alice_id.as_str() },
            Some(&w.alice),
        )
        .await,
        "CONFLICT",
    );
    // With a second host, the first may step down, and then the second is the last.
    env.m("meetings.setRole", me(&w.bob_id, "host"), Some(&w.alice))
        .await
        .unwrap();
    env.m(
        "meetings.setRole",
        me(&w.alice_id, "participant"),
        Some(&w.alice),
    )
    .await
    .unwrap();
    expect_code(
        env.m("meetings.setRole", me(&w.bob_id, "host"), Some(&w.alice))
            .await,
        "FORBIDDEN",
    );
    expect_code(
        env.m(
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => w.bob_id.as_str() },
            Some(&w.bob),
        )
        .await,
        "CONFLICT",
    );
    expect_code(
        env.m(
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => w.carol_id.as_str() },
            Some(&w.bob),
        )
        .await,
        "NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_meeting_schedules_aggregation_and_insights_once() {
    let w = world(LinkedUpConfig::default()).await;
    let m = w.meeting.as_str();
    w.env
        .m(
            "flags.set",
            obj! { "key" => "insights/postcall", "environment" => "local", "value" => true, "reason" => "test" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    w.env
        .m("meetings.end", obj! { "meetingId" => m }, Some(&w.alice))
        .await
        .unwrap();
    w.env
        .m("meetings.end", obj! { "meetingId" => m }, Some(&w.alice))
        .await
        .unwrap();
    // The scheduler runs due jobs in the background; wait (bounded) until both succeeded.
    let finished = |engine: &query_engine::engine::Engine| {
        let m = m.to_string();
        let engine = engine.clone();
        async move {
            engine
                .read(move |ctx| {
                    let jobs = ctx.full_table_scan("_scheduled_jobs", 100)?;
                    Ok(Value::Array(
                        jobs.into_iter()
                            .filter(|j| {
                                j.get_path("args.meetingId").and_then(Value::as_str)
                                    == Some(m.as_str())
                            })
                            .map(|j| {
                                obj! {
                                    "function" => j.get_path("function").cloned().unwrap_or(Value::Null),
                                    "state" => j.get_path("state").cloned().unwrap_or(Value::Null),
                                }
                            })
                            .collect(),
                    ))
                })
                .await
                .unwrap()
        }
    };
    let mut jobs = Vec::new();
    for _ in 0..400 {
        jobs = finished(&w.env.engine)
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| s(j, "state") == "success")
            .map(|j| s(j, "function"))
            .collect::<Vec<_>>();
        if jobs.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    jobs.sort();
    // The room jobs: the start's creates the call, the end's ends it (see stream_rooms).
    assert_eq!(
        jobs,
        [
            "insights.generate",
            "streamRooms.endCall",
            "streamRooms.provision",
            "transcripts.aggregateSegments"
        ]
    );
    // A second end was a no-op: no further jobs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(finished(&w.env.engine).await.as_array().unwrap().len(), 4);
    // The insights job wrote one insight per participant, and audited it once.
    let mut owners: Vec<String> = w
        .env
        .all("insights")
        .await
        .iter()
        .map(|i| s(i, "userId"))
        .collect();
    owners.sort();
    let mut participants = vec![w.alice_id.clone(), w.bob_id.clone()];
    participants.sort();
    assert_eq!(owners, participants);
    let args =
        obj! { "resourceType" => "meeting", "resourceId" => m, "action" => "insights.generated" };
    let log = w.env.q("audit.query", args, Some(&w.alice)).await.unwrap();
    assert_eq!(log.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_first_result() {
    let w = world(LinkedUpConfig::default()).await;
    let args = obj! { "title" => "Retry me", "idempotencyKey" => "k-1" };
    let a = w
        .env
        .m("meetings.schedule", args.clone(), Some(&w.alice))
        .await
        .unwrap();
    let b = w
        .env
        .m("meetings.schedule", args, Some(&w.alice))
        .await
        .unwrap();
    assert_eq!(a, b);
    // The same key from another user is another scope.
    let c = w
        .env
        .m(
            "meetings.schedule",
            obj! { "title" => "Retry me", "idempotencyKey" => "k-1" },
            Some(&w.carol),
        )
        .await
        .unwrap();
    assert_ne!(a, c);
    let send =
        obj! { "meetingId" => w.meeting.as_str(), "content" => "once", "clientMessageId" => "c-1" };
    let m1 = w
        .env
        .m("chat.send", send.clone(), Some(&w.bob))
        .await
        .unwrap();
    let m2 = w.env.m("chat.send", send, Some(&w.bob)).await.unwrap();
    assert_eq!(m1, m2);
    assert_eq!(w.env.all("messages").await.len(), 1);
    // A bad key is named as the argument the caller sent.
    let m = w.meeting.as_str();
    let long = "k".repeat(300);
    for (f, args, field) in [
        (
            "chat.send",
            obj! { "meetingId" => m, "content" => "x", "clientMessageId" => "" },
            "clientMessageId",
        ),
        (
            "chat.send",
            obj! { "meetingId" => m, "content" => "x", "clientMessageId" => long.as_str() },
            "clientMessageId",
        ),
        (
            "meetings.schedule",
            obj! { "title" => "x", "idempotencyKey" => "" },
            "idempotencyKey",
        ),
    ] {
        let e = expect_code(w.env.m(f, args, Some(&w.bob)).await, "VALIDATION_ERROR");
        assert_eq!(s(&e.data, "path"), field, "{f}: {e}");
    }
    // Internal form for actions and webhooks.
    let first = w
        .env
        .m(
            "idempotency.checkAndRecord",
            obj! { "key" => "evt-9", "scope" => "stream-webhook" },
            None,
        )
        .await
        .unwrap();
    assert_eq!(first.get_path("seen"), Some(&Value::Bool(false)));
    w.env
        .m(
            "idempotency.storeResult",
            obj! { "key" => "evt-9", "scope" => "stream-webhook", "result" => "done" },
            None,
        )
        .await
        .unwrap();
    let again = w
        .env
        .m(
            "idempotency.checkAndRecord",
            obj! { "key" => "evt-9", "scope" => "stream-webhook" },
            None,
        )
        .await
        .unwrap();
    assert_eq!(again, obj! { "seen" => true, "result" => "done" });
    // An expired key is forgotten.
    let short = obj! { "key" => "evt-10", "scope" => "s", "ttlMs" => 1i64 };
    w.env
        .m("idempotency.checkAndRecord", short.clone(), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let after = w
        .env
        .m("idempotency.checkAndRecord", short, None)
        .await
        .unwrap();
    assert_eq!(after.get_path("seen"), Some(&Value::Bool(false)));
}

fn exact_chat_limit(max: i64) -> LinkedUpConfig {
    LinkedUpConfig {
        rate_limits: RateLimitConfig {
            chat_send: RateLimit {
                max,
                window_ms: 60_000,
            },
            shards: 1,
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_refuses_with_retry_after_and_writes_nothing() {
    let w = world(exact_chat_limit(5)).await;
    let send = |i: i64| obj! { "meetingId" => w.meeting.as_str(), "content" => format!("m{i}") };
    for i in 0..5 {
        w.env.m("chat.send", send(i), Some(&w.bob)).await.unwrap();
    }
    let before = w.env.commits();
    let e = expect_code(
        w.env.m("chat.send", send(5), Some(&w.bob)).await,
        "RATE_LIMITED",
    );
    let retry = e
        .data
        .get_path("retryAfterMs")
        .and_then(Value::as_i64)
        .unwrap();
    assert!((1..=60_000).contains(&retry), "retryAfterMs {retry}");
    assert_eq!(w.env.commits(), before);
    assert_eq!(w.env.all("messages").await.len(), 5);
    // Limits are per user: alice is unaffected.
    w.env.m("chat.send", send(6), Some(&w.alice)).await.unwrap();
}

/// 16 tasks send as one user at once; reports the committer's conflict count for several
/// shard counts. Sharding only spreads the counter documents; correctness (every
/// accepted send counted, nothing lost) holds either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_of_one_user_conflict_less_with_more_shards() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 20;
    let mut figures = Vec::new();
    for shards in [1i64, 8, 16, 64] {
        let config = LinkedUpConfig {
            rate_limits: RateLimitConfig {
                chat_send: RateLimit {
                    max: 1_000_000,
                    window_ms: 60_000,
                },
                shards,
                ..RateLimitConfig::default()
            },
            ..LinkedUpConfig::default()
        };
        let w = world(config).await;
        let before = w.env.conflicts();
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
        let conflicts = w.env.conflicts() - before;
        assert_eq!(w.env.all("messages").await.len(), TASKS * PER_TASK);
        let counted: i64 = w
            .env
            .all("rateLimits")
            .await
            .iter()
            .filter(|d| d.get_path("action") == Some(&Value::from("chat.send")))
            .map(|d| d.get_path("count").and_then(Value::as_i64).unwrap())
            .sum();
        assert_eq!(
            counted,
            (TASKS * PER_TASK) as i64,
            "every accepted send counted once"
        );
        figures.push((shards, conflicts));
    }
    println!(
        "rate limiter, {TASKS} concurrent tasks x {PER_TASK} chat.send of one user: conflicts {:?} (shards, conflicts)",
        figures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_reach_the_audit_log_and_admins_see_only_their_org() {
    let w = world(LinkedUpConfig::default()).await;
    let m = w.meeting.as_str();
    // A query denial and a mutation denial: neither can write in its own transaction. Carol's
    // is shown to her as a missing meeting (she takes no part in it).
    expect_code(
        w.env
            .q("meetings.get", obj! { "meetingId" => m }, Some(&w.carol))
            .await,
        "NOT_FOUND",
    );
    expect_code(
        w.env
            .m("meetings.end", obj! { "meetingId" => m }, Some(&w.bob))
            .await,
        "FORBIDDEN",
    );
    // Anonymous calls are not logged.
    expect_code(
        w.env
            .q("meetings.get", obj! { "meetingId" => m }, None)
            .await,
        "UNAUTHORIZED",
    );
    assert_eq!(w.env.config.denials.pending(), 2);
    let written = audit::flush_denials(&w.env.engine, &w.env.config.denials)
        .await
        .unwrap();
    assert_eq!(written, 2);
    let rows = w.env.all("auditLogs").await;
    let denied = |actor: &str| {
        rows.iter()
            .find(|e| s(e, "action") == "access.denied" && s(e, "actorUserId") == actor)
            .unwrap_or_else(|| panic!("no denial of {actor}: {rows:?}"))
    };
    assert_eq!(s(denied(&w.carol_id), "metadata.function"), "meetings.get");
    assert_eq!(
        denied(&w.carol_id).get_path("metadata.hidden"),
        Some(&Value::Bool(true))
    );
    assert_eq!(denied(&w.bob_id).get_path("metadata.hidden"), None);
    let env = &w.env;
    let query = |args: Value, who: &Identity| {
        let who = who.clone();
        async move { env.q("audit.query", args, Some(&who)).await }
    };
    let denials = obj! { "action" => "access.denied" };
    // The admin sees the denial; the hidden one is kept from the log's readers.
    let log = query(denials.clone(), &w.alice).await.unwrap();
    let entries = log.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(s(&entries[0], "actorUserId"), w.bob_id);
    assert_eq!(s(&entries[0], "resourceId"), m);
    assert_eq!(s(&entries[0], "metadata.function"), "meetings.end");
    // Users see their own entries only; asking for someone else's is refused.
    let own = query(obj! {}, &w.bob).await.unwrap();
    assert_eq!(own.as_array().unwrap().len(), 1);
    let own = query(obj! {}, &w.carol).await.unwrap();
    assert_eq!(own.as_array().unwrap().len(), 0);
    expect_code(
        query(obj! { "actorUserId" => w.bob_id.as_str() }, &w.carol).await,
        "FORBIDDEN",
    );
    // Another organisation's admin sees none of it.
    let theirs = query(denials.clone(), &w.dave).await.unwrap();
    assert!(theirs.as_array().unwrap().is_empty());
    // That refusal was a denial too (still queued). The background writer drains the queue
    // by itself.
    let writer = linkedup_server::linkedup::start(&w.env.engine, &w.env.config);
    expect_code(
        w.env
            .m("meetings.end", obj! { "meetingId" => m }, Some(&w.bob))
            .await,
        "FORBIDDEN",
    );
    let mut n = 0;
    for _ in 0..400 {
        let log = query(denials.clone(), &w.alice).await.unwrap();
        n = log.as_array().unwrap().len();
        if n == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    writer.abort();
    assert_eq!(n, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_org_admins_set_flags_and_changes_are_audited_with_reason() {
    let w = world(LinkedUpConfig::default()).await;
    let set = obj! { "key" => "matching", "environment" => "staging", "value" => false, "reason" => "incident 42", "rolloutPercentage" => 0.0 };
    expect_code(
        w.env.m("flags.set", set.clone(), Some(&w.bob)).await,
        "FORBIDDEN",
    );
    let f = w.env.m("flags.set", set, Some(&w.alice)).await.unwrap();
    assert_eq!(s(&f, "scope"), "org:org1");
    let log = w
        .env
        .q(
            "audit.query",
            obj! { "action" => "flag.set" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let entry = &log.as_array().unwrap()[0];
    assert_eq!(s(entry, "metadata.reason"), "incident 42");
    assert_eq!(s(entry, "metadata.operator"), w.alice_id);
    // Global default for everyone, org override wins for org1.
    w.env
        .m(
            "flags.setGlobal",
            obj! { "key" => "matching", "environment" => "staging", "value" => true, "reason" => "launch", "operatorUserId" => w.alice_id.as_str() },
            None,
        )
        .await
        .unwrap();
    let get = obj! { "key" => "matching", "environment" => "staging" };
    let org1 = w
        .env
        .q("flags.get", get.clone(), Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(org1.get_path("value"), Some(&Value::Bool(false)));
    let org2 = w.env.q("flags.get", get, Some(&w.dave)).await.unwrap();
    assert_eq!(org2.get_path("value"), Some(&Value::Bool(true)));
    assert_eq!(s(&org2, "scope"), "global");
}

/// Operators outrank organisations: a global `false` (an AI outage) turns the capability off
/// for an organisation that switched it on, and `stream/paused` cannot be overridden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_off_and_the_stream_switch_hold_over_organisation_overrides() {
    let w = world(LinkedUpConfig::default()).await;
    let global = |key: &str, value: bool| {
        obj! { "key" => key, "environment" => "local", "value" => value, "reason" => "outage", "operatorUserId" => w.alice_id.as_str() }
    };
    let org_on = obj! { "key" => "incall/ai", "environment" => "local", "value" => true, "reason" => "pilot" };
    w.env.m("flags.set", org_on, Some(&w.alice)).await.unwrap();
    let get = obj! { "key" => "incall/ai", "environment" => "local" };
    let value = |v: &Value| (s(v, "scope"), v.get_path("value").cloned());
    let on = w
        .env
        .q("flags.get", get.clone(), Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(value(&on), ("org:org1".into(), Some(Value::Bool(true))));
    w.env
        .m("flags.setGlobal", global("incall/ai", false), None)
        .await
        .unwrap();
    let off = w
        .env
        .q("flags.get", get.clone(), Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(value(&off), ("global".into(), Some(Value::Bool(false))));
    // Back on globally: the organisation's override applies again.
    w.env
        .m("flags.setGlobal", global("incall/ai", true), None)
        .await
        .unwrap();
    let on = w.env.q("flags.get", get, Some(&w.bob)).await.unwrap();
    assert_eq!(value(&on), ("org:org1".into(), Some(Value::Bool(true))));

    let unpause = obj! { "key" => "stream/paused", "environment" => "local", "value" => false, "reason" => "we need calls" };
    expect_code(
        w.env.m("flags.set", unpause, Some(&w.alice)).await,
        "FORBIDDEN",
    );
    w.env
        .m("flags.setGlobal", global("stream/paused", true), None)
        .await
        .unwrap();
    let paused = w
        .env
        .q(
            "flags.get",
            obj! { "key" => "stream/paused", "environment" => "local" },
            Some(&w.bob),
        )
        .await
        .unwrap();
    assert_eq!(value(&paused), ("global".into(), Some(Value::Bool(true))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_linked_to_their_latest_token_and_queries_never_create_them() {
    let env = open(LinkedUpConfig::default());
    let erin = ident("erin", Some("org1"), Some("member"));
    expect_code(
        env.q("users.me", obj! {}, Some(&erin)).await,
        "UNAUTHORIZED",
    );
    let id1 = env.user(&erin).await;
    // Same subject, new org and role: the same document, updated.
    let moved = ident("erin", Some("org3"), Some("admin"));
    let u = env.m("users.ensure", obj! {}, Some(&moved)).await.unwrap();
    assert_eq!(id(&u), id1);
    assert_eq!(s(&u, "orgId"), "org3");
    assert_eq!(s(&u, "orgRole"), "admin");
    // A session without an org drops the stored org.
    let personal = ident("erin", None, None);
    let u = env
        .m("users.ensure", obj! {}, Some(&personal))
        .await
        .unwrap();
    assert_eq!(u.get_path("orgId"), None);
    assert_eq!(env.all("users").await.len(), 1);
}

/// Connection transitions are audited, each party reading both sides through `audit.query`
/// by resource: a request, its acceptance, a decline, a new request after it, and the
/// acceptance a request to someone who asked first is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_changes_are_audited_for_both_parties() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let call = |f: &'static str, args: Value, who: &Identity| {
        let who = who.clone();
        async move { env.m(f, args, Some(&who)).await.unwrap() }
    };
    let log = |connection: String, who: &Identity| {
        let who = who.clone();
        async move {
            let args = obj! { "resourceType" => "connection", "resourceId" => connection };
            let rows = env.q("audit.query", args, Some(&who)).await.unwrap();
            rows.as_array()
                .unwrap()
                .iter()
                .map(|e| (s(e, "action"), s(e, "actorUserId")))
                .collect::<Vec<_>>()
        }
    };
    let request = |to: &str| obj! { "userId" => to };
    let answer = |c: &Value| obj! { "connectionId" => id(c) };
    let (alice, bob, carol) = (&w.alice_id, &w.bob_id, &w.carol_id);

    let c = call("connections.request", request(bob), &w.alice).await;
    call("connections.accept", answer(&c), &w.bob).await;
    let both = vec![
        ("connection.accepted".to_string(), bob.clone()),
        ("connection.requested".to_string(), alice.clone()),
    ];
    assert_eq!(log(id(&c), &w.alice).await, both);
    assert_eq!(log(id(&c), &w.bob).await, both);
    assert_eq!(log(id(&c), &w.carol).await, vec![], "not a party");

    let d = call("connections.request", request(carol), &w.alice).await;
    call("connections.decline", answer(&d), &w.carol).await;
    call("connections.request", request(carol), &w.alice).await;
    // Carol asks too: that accepts alice's request.
    call("connections.request", request(alice), &w.carol).await;
    assert_eq!(
        log(id(&d), &w.alice).await,
        vec![
            ("connection.accepted".to_string(), carol.clone()),
            ("connection.requested".to_string(), alice.clone()),
            ("connection.declined".to_string(), carol.clone()),
            ("connection.requested".to_string(), alice.clone()),
        ]
    );
    let rows = env.all("auditLogs").await;
    let row = |action: &str, actor: &str| {
        rows.iter()
            .filter(|e| s(e, "resourceId") == id(&d))
            .find(|e| s(e, "action") == action && s(e, "actorUserId") == actor)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        s(&row("connection.accepted", carol), "metadata.reason"),
        "mutualRequest"
    );
    let again = rows
        .iter()
        .filter(|e| s(e, "resourceId") == id(&d) && s(e, "action") == "connection.requested")
        .filter_map(|e| e.get_path("metadata.previousStatus"))
        .count();
    assert_eq!(again, 1);
}
