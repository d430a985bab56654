//! Erasure of a user's personal data on request (seed §20): `users.requestErasure` locks the
//! account and the paged `erasure.step` job deletes or redacts the user's documents in every
//! table, leaving other users' data alone; a run never touches more than a page of documents,
//! a repeated or overtaken run does nothing, and afterwards the same identity starts a new,
//! empty account (blocks included, either way). Also: a profile change schedules the user's
//! embedding refresh.

mod ai_common;
mod erasure_common;
mod linkedup_common;

use std::time::Duration;

use erasure_common::*;
use linkedup_common::*;
use linkedup_server::linkedup::embeddings::REFRESH_USER;
use linkedup_server::linkedup::erasure::{ErasureConfig, REDACTED, RESUME_STALLED, STEP};
use linkedup_server::linkedup::{LinkedUpConfig, RateLimit};
use query_engine::engine::EngineConfig;
use query_engine::functions::FunctionKind;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

const STATUS: &str = "users.erasureStatus";
const BIO: &str = "Bob builds storage engines in Rust";

async fn send(env: &Env, who: &Identity, meeting: &str, content: &str) -> String {
    let attachments = vec![obj! { "name" => "cv.pdf" }];
    let v = env
        .m(
            "chat.send",
            obj! { "meetingId" => meeting, "content" => content, "attachments" => attachments },
            Some(who),
        )
        .await
        .unwrap();
    v.as_str().unwrap().to_string()
}

/// Personal data of `user` in the tables written by providers, flags or matching.
async fn derived_data(env: &Env, user: &str, meeting: &str, now: i64) {
    insert(
        env,
        "insights",
        obj! {
            "userId" => user, "meetingId" => meeting, "summary" => format!("summary for {user}"),
            "actionItems" => Vec::<Value>::new(), "recommendations" => Vec::<Value>::new(),
            "links" => Vec::<Value>::new(), "createdAt" => now,
        },
    )
    .await;
    insert(
        env,
        "transcriptSegments",
        obj! {
            "meetingId" => meeting, "startMs" => 0i64, "endMs" => 1_000i64,
            "speakers" => vec![Value::from(user)], "text" => format!("{user} spoke"),
            "topics" => vec![Value::from("rust")], "sentiment" => 0.5, "createdAt" => now,
        },
    )
    .await;
    insert(
        env,
        "matchingQueue",
        obj! {
            "userId" => user, "availableFrom" => now, "availableTo" => now + 3_600_000,
            "constraints" => obj! {
                "interests" => Vec::<Value>::new(), "roles" => Vec::<Value>::new(),
            },
            "status" => "waiting", "createdAt" => now, "updatedAt" => now,
        },
    )
    .await;
    insert(
        env,
        "matchingAnalytics",
        obj! {
            "userId" => user, "matchId" => format!("m-{user}"), "outcome" => "accepted",
            "features" => obj! {}, "weights" => obj! {}, "createdAt" => now,
        },
    )
    .await;
}

async fn prompt(env: &Env, meeting: &str, now: i64) {
    insert(
        env,
        "prompts",
        obj! {
            "meetingId" => meeting, "type" => "precall", "content" => "Ask Bob about Rust",
            "tags" => Vec::<Value>::new(), "relevance" => 0.5, "createdAt" => now,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_clears_the_users_data_in_every_table_and_leaves_others_alone() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let (bob, alice) = (w.bob_id.as_str(), w.alice_id.as_str());
    let now = query_engine::committer::now_millis();
    // A second meeting bob has nothing to do with.
    let other = env
        .m(
            "meetings.schedule",
            obj! { "title" => "1:1", "inviteeIds" => vec![Value::from(w.carol_id.as_str())] },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let other = other.as_str().unwrap().to_string();
    env.m(
        "meetings.start",
        obj! { "meetingId" => other.as_str() },
        Some(&w.alice),
    )
    .await
    .unwrap();
    wait_for_room_job(&env.engine, &other).await;

    for (who, bio) in [(&w.bob, BIO), (&w.alice, "Alice plans launches")] {
        env.m("profiles.update", obj! { "bio" => bio }, Some(who))
            .await
            .unwrap();
        env.m(
            "interests.setMine",
            obj! { "keys" => vec![Value::from("rust")] },
            Some(who),
        )
        .await
        .unwrap();
        env.call("embeddings.refreshMine", obj! {}, Some(who))
            .await
            .unwrap();
    }
    let bob_profile = id(&with(env, "profiles", "userId", bob).await[0]);
    env.engine
        .action(
            "embeddings.generate",
            obj! {
                "sourceType" => "profile", "sourceId" => bob_profile.as_str(),
                "content" => "storage engines",
            },
            None,
        )
        .await
        .unwrap();
    env.m(
        "meetings.join",
        obj! { "meetingId" => w.meeting.as_str() },
        Some(&w.bob),
    )
    .await
    .unwrap();
    for (who, speaker) in [(&w.bob, bob), (&w.alice, alice)] {
        send(env, who, &w.meeting, &format!("hello from {speaker}")).await;
        say(env, who, &w.meeting, &format!("c-{speaker}"), speaker).await;
        derived_data(env, speaker, &w.meeting, now).await;
    }
    say(env, &w.alice, &other, "o1", alice).await;
    send(env, &w.alice, &other, "private to carol").await;
    prompt(env, &w.meeting, now).await;
    prompt(env, &other, now).await;
    for (from, to) in [
        (&w.bob, &w.carol_id),
        (&w.alice, &w.bob_id),
        (&w.alice, &w.carol_id),
    ] {
        env.m(
            "connections.request",
            obj! { "userId" => to.as_str() },
            Some(from),
        )
        .await
        .unwrap();
    }
    // Blocks either way: bob's, and others' of bob; alice's of dave is none of bob's.
    for (who, of) in [
        (&w.bob, &w.dave_id),
        (&w.dave, &w.bob_id),
        (&w.alice, &w.dave_id),
    ] {
        env.m(
            "users.block",
            obj! { "userId" => of.as_str(), "reason" => "private" },
            Some(who),
        )
        .await
        .unwrap();
    }
    assert!(!with(env, "rateLimitWindows", "userId", bob)
        .await
        .is_empty());
    let alice_before: Vec<(&'static str, usize)> = {
        let mut v = Vec::new();
        for t in [
            "profiles",
            "userInterests",
            "insights",
            "matchingQueue",
            "matchingAnalytics",
            "rateLimits",
            "rateLimitWindows",
        ] {
            v.push((t, with(env, t, "userId", alice).await.len()));
        }
        v
    };
    let chunks_before = env.all("transcripts").await.len();

    let r = request(env, &w.bob).await;
    let done = wait_done(env, &s(&r, "requestId")).await;
    assert!(done.get_path("completedAt").is_some());

    // The account is a tombstone.
    let user = env
        .all("users")
        .await
        .into_iter()
        .find(|u| id(u) == bob)
        .unwrap();
    assert_eq!(s(&user, "workosUserId"), "");
    assert_eq!(s(&user, "email"), "");
    assert_eq!(user.get_path("isActive"), Some(&Value::Bool(false)));
    assert!(user.get_path("displayName").is_none() && user.get_path("orgId").is_none());
    assert!(user.get_path("erasedAt").is_some());

    // Deleted.
    for (table, field) in [
        ("profiles", "userId"),
        ("userInterests", "userId"),
        ("insights", "userId"),
        ("matchingQueue", "userId"),
        ("matchingAnalytics", "userId"),
        ("rateLimits", "userId"),
        ("rateLimitWindows", "userId"),
        ("connections", "userA"),
        ("connections", "userB"),
        ("userBlocks", "blockerId"),
        ("userBlocks", "blockedId"),
        ("embeddings", "sourceId"),
    ] {
        assert!(
            with(env, table, field, bob).await.is_empty(),
            "{table}.{field}"
        );
    }
    assert!(with(env, "embeddings", "sourceId", &bob_profile)
        .await
        .is_empty());
    assert!(with(env, "prompts", "meetingId", &w.meeting)
        .await
        .is_empty());

    // Redacted, in place.
    let messages = with(env, "messages", "userId", bob).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(s(&messages[0], "content"), REDACTED);
    assert!(messages[0].get_path("attachments").is_none());
    let chunks = env.all("transcripts").await;
    assert_eq!(chunks.len(), chunks_before);
    let bobs: Vec<&Value> = chunks
        .iter()
        .filter(|c| s(c, "chunkId") == format!("c-{bob}"))
        .collect();
    assert_eq!(s(bobs[0], "text"), REDACTED);
    assert!(bobs[0].get_path("speakerId").is_none());
    let segments = with(env, "transcriptSegments", "meetingId", &w.meeting).await;
    let redacted: Vec<&Value> = segments
        .iter()
        .filter(|g| s(g, "text") == REDACTED)
        .collect();
    assert_eq!(redacted.len(), 1);
    assert_eq!(
        redacted[0].get_path("speakers"),
        Some(&Value::Array(vec![]))
    );
    assert!(redacted[0].get_path("sentiment").is_none());

    // Kept: the participant record (no longer present) names the tombstone.
    let member = with(env, "meetingParticipants", "userId", bob).await;
    assert_eq!(member.len(), 1);
    assert_eq!(s(&member[0], "presence"), "left");
    let state = with(env, "meetingState", "meetingId", &w.meeting).await;
    assert_eq!(state[0].get_path("joinedCount"), Some(&Value::from(0i64)));

    // Others' data untouched.
    for (table, n) in alice_before {
        assert_eq!(with(env, table, "userId", alice).await.len(), n, "{table}");
    }
    assert_eq!(with(env, "embeddings", "sourceId", alice).await.len(), 1);
    let alices = with(env, "messages", "userId", alice).await;
    assert!(alices
        .iter()
        .all(|m| s(m, "content") != REDACTED && m.get_path("attachments").is_some()));
    assert!(chunks
        .iter()
        .filter(|c| c.get_path("speakerId").and_then(Value::as_str) == Some(alice))
        .all(|c| s(c, "text") != REDACTED));
    assert_eq!(segments.len(), 2);
    assert_eq!(with(env, "prompts", "meetingId", &other).await.len(), 1);
    let connections = env.all("connections").await;
    assert_eq!(connections.len(), 1);
    let blocks = env.all("userBlocks").await;
    assert_eq!(blocks.len(), 1);
    assert_eq!(s(&blocks[0], "blockerId"), alice);
    assert_eq!(done.get_path("counts.userBlocks"), Some(&Value::from(2i64)));
    env.q("users.me", obj! {}, Some(&w.alice)).await.unwrap();

    // The audit log records the request and the erasure, with ids and counts only.
    let audit = env.all("auditLogs").await;
    let entries: Vec<&Value> = audit
        .iter()
        .filter(|a| s(a, "action").starts_with("users.eras"))
        .collect();
    assert_eq!(entries.len(), 2);
    let erased = entries
        .iter()
        .find(|a| s(a, "action") == "users.erased")
        .unwrap();
    assert_eq!(s(erased, "resourceId"), bob);
    assert!(
        erased
            .get_path("metadata.documents")
            .and_then(Value::as_i64)
            .unwrap()
            >= 15
    );
    for e in entries {
        let text = format!("{e:?}");
        for pii in ["bob@example.com", BIO, "hello from"] {
            assert!(!text.contains(pii), "{pii} in {text}");
        }
    }

    // Nobody can invite or connect to the erased account any more.
    let to_bob = obj! { "userId" => bob };
    expect_code(
        env.m("connections.request", to_bob, Some(&w.carol)).await,
        "NOT_FOUND",
    );

    // The same identity signs in again: a new, empty account.
    assert_eq!(
        env.q(STATUS, obj! {}, Some(&w.bob)).await.unwrap(),
        Value::Null
    );
    expect_code(
        env.q("users.me", obj! {}, Some(&w.bob)).await,
        "UNAUTHORIZED",
    );
    let fresh = env.user(&w.bob).await;
    assert_ne!(fresh, bob);
    assert_eq!(
        env.q("profiles.get", obj! {}, Some(&w.bob)).await.unwrap(),
        Value::Null
    );
    assert_eq!(
        env.q(STATUS, obj! {}, Some(&w.bob)).await.unwrap(),
        Value::Null
    );
}

/// The newest pending run of the erasure job: its arguments.
async fn pending_step(env: &Env) -> Option<Value> {
    env.all("_scheduled_jobs")
        .await
        .into_iter()
        .filter(|j| s(j, "function") == STEP && s(j, "state") == "pending")
        .map(|j| j.get_path("args").cloned().unwrap())
        .max_by_key(|a| a.get_path("run").and_then(Value::as_i64))
}

async fn run_step(env: &Env, args: Value) -> (i64, bool) {
    let r = env.engine.mutation(STEP, args, None).await.unwrap().value;
    (
        r.get_path("documents").and_then(Value::as_i64).unwrap(),
        r.get_path("done") == Some(&Value::Bool(true)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_works_in_bounded_pages_and_a_repeated_run_does_nothing() {
    const PAGE: usize = 5;
    const MESSAGES: usize = 12;
    let config = LinkedUpConfig {
        erasure: ErasureConfig {
            page_documents: PAGE,
            stall_ms: 0,
        },
        ..LinkedUpConfig::default()
    };
    // This test runs the jobs itself.
    let env = open_with(
        config,
        EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        },
    );
    let alice = ident("alice", None, None);
    let bob = ident("bob", None, None);
    env.user(&alice).await;
    let bob_id = env.user(&bob).await;
    let meeting = env.schedule(&alice, "Sync", &[&bob_id]).await;
    env.start(&alice, &meeting).await;
    for i in 0..MESSAGES {
        send(&env, &bob, &meeting, &format!("message {i}")).await;
    }
    send(&env, &alice, &meeting, "from alice").await;
    // More blocks of bob than a page holds, and one of his.
    for i in 0..PAGE + 2 {
        let who = ident(&format!("blocker{i}"), None, None);
        env.user(&who).await;
        env.m(
            "users.block",
            obj! { "userId" => bob_id.as_str() },
            Some(&who),
        )
        .await
        .unwrap();
    }
    env.m(
        "users.block",
        obj! { "userId" => env.user(&alice).await.as_str() },
        Some(&bob),
    )
    .await
    .unwrap();

    let r = request(&env, &bob).await;
    assert_eq!(s(&r, "status"), "pending");
    // Asking again is the same request.
    assert_eq!(request(&env, &bob).await, r);
    let status = env.q(STATUS, obj! {}, Some(&bob)).await.unwrap();
    assert_eq!(s(&status, "requestId"), s(&r, "requestId"));
    // The account is locked while it is erased.
    for f in ["users.ensure", "users.heartbeat"] {
        let e = expect_code(env.m(f, obj! {}, Some(&bob)).await, "CONFLICT");
        assert_eq!(s(&e.data, "reason"), "erasurePending");
    }
    let e = expect_code(
        env.m(
            "chat.send",
            obj! { "meetingId" => meeting.as_str(), "content" => "more" },
            Some(&bob),
        )
        .await,
        "CONFLICT",
    );
    assert_eq!(s(&e.data, "reason"), "erasurePending");

    // A stalled request is restarted with a new run number: the old run is then a no-op.
    let first = pending_step(&env).await.unwrap();
    let resumed = env
        .engine
        .mutation(RESUME_STALLED, obj! {}, None)
        .await
        .unwrap();
    assert_eq!(resumed.value, Value::from(1i64));
    assert_eq!(run_step(&env, first.clone()).await, (0, false));

    let mut runs = 0;
    let mut total = 0;
    let mut last;
    loop {
        let args = pending_step(&env).await.expect("a next run is scheduled");
        let (documents, done) = run_step(&env, args.clone()).await;
        assert!(
            documents as usize <= PAGE,
            "a run touched {documents} documents"
        );
        runs += 1;
        total += documents;
        last = args;
        if done {
            break;
        }
        assert!(runs < 100, "the job does not finish");
        if runs == 1 {
            let status = env.q(STATUS, obj! {}, Some(&bob)).await.unwrap();
            assert_eq!(s(&status, "status"), "running");
        }
    }
    assert!(total as usize > MESSAGES);
    assert!(
        runs * PAGE as i64 >= total,
        "{runs} runs for {total} documents"
    );
    // A finished run repeated does nothing.
    assert_eq!(run_step(&env, last).await, (0, true));
    assert_eq!(run_step(&env, first).await, (0, true));

    let messages = env.all("messages").await;
    assert_eq!(messages.len(), MESSAGES + 1);
    let redacted = messages
        .iter()
        .filter(|m| s(m, "content") == REDACTED)
        .count();
    assert_eq!(redacted, MESSAGES);
    let done = env.all("erasureRequests").await;
    assert_eq!(done.len(), 1);
    assert_eq!(s(&done[0], "status"), "done");
    assert_eq!(
        done[0].get_path("counts.messages"),
        Some(&Value::from(MESSAGES as i64))
    );
    assert_eq!(
        done[0].get_path("counts.userBlocks"),
        Some(&Value::from(PAGE as i64 + 3))
    );
    assert!(env.all("userBlocks").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_can_erase_only_their_own_account() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    // No way to name another account.
    expect_code(
        env.m(
            REQUEST,
            obj! { "confirm" => true, "userId" => w.alice_id.as_str() },
            Some(&w.bob),
        )
        .await,
        "VALIDATION_ERROR",
    );
    let e = expect_code(
        env.m(REQUEST, obj! { "confirm" => false }, Some(&w.bob))
            .await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.starts_with("confirm"), "{}", e.message);
    expect_code(
        env.m(REQUEST, obj! { "confirm" => true }, None).await,
        "UNAUTHORIZED",
    );
    // The operators' and the job's functions are not callable by clients.
    for f in ["erasure.eraseAccount", STEP, RESUME_STALLED] {
        match env.engine.public_function(f, FunctionKind::Mutation) {
            Err(e) => assert_eq!(e.code, "NOT_FOUND", "{f}"),
            Ok(_) => panic!("{f} is public"),
        }
    }
    assert!(env.all("erasureRequests").await.is_empty());

    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let requests = env.all("erasureRequests").await;
    assert_eq!(requests.len(), 1);
    assert_eq!(s(&requests[0], "userId"), w.bob_id);
    // Alice's account is as it was.
    let me = env.q("users.me", obj! {}, Some(&w.alice)).await.unwrap();
    assert_eq!(id(&me), w.alice_id);
    assert_eq!(s(&me, "email"), "alice@example.com");
    expect_code(
        env.m(
            "meetings.addParticipant",
            obj! { "meetingId" => w.meeting.as_str(), "userId" => w.bob_id.as_str() },
            Some(&w.alice),
        )
        .await,
        "NOT_FOUND",
    );
}

/// The `embeddings.refreshUser` jobs scheduled for `user`'s profile, once they have all
/// finished.
async fn refresh_jobs(env: &Env, user: &str) -> Vec<Value> {
    for _ in 0..800 {
        let jobs: Vec<Value> = env
            .all("_scheduled_jobs")
            .await
            .into_iter()
            .filter(|j| s(j, "function") == REFRESH_USER && s(j, "args.userId") == user)
            .collect();
        if jobs
            .iter()
            .all(|j| matches!(s(j, "state").as_str(), "success" | "failed"))
        {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the embedding refreshes did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_change_refreshes_the_embedding_when_its_text_changed() {
    let env = open(LinkedUpConfig::default());
    let bob = ident("bob", None, None);
    let bob_id = env.user(&bob).await;
    env.m(
        "interests.upsert",
        obj! { "key" => "rust", "label" => "Rust", "category" => "tech" },
        None,
    )
    .await
    .unwrap();
    let update = |args: Value| env.m("profiles.update", args, Some(&bob));

    update(obj! { "bio" => BIO }).await.unwrap();
    let jobs = refresh_jobs(&env, &bob_id).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(s(&jobs[0], "state"), "success");
    let embedding = with(&env, "embeddings", "sourceId", &bob_id).await;
    assert_eq!(embedding.len(), 1);
    assert_eq!(
        s(&embedding[0], "metadata.contentSha256"),
        linkedup_server::hex::sha256_hex(BIO.as_bytes()),
        "made of the profile text as it was when the job ran"
    );

    // Nothing the embedding is made of changed: no refresh.
    update(obj! { "displayName" => "Bobby" }).await.unwrap();
    update(obj! { "bio" => BIO }).await.unwrap();
    assert_eq!(refresh_jobs(&env, &bob_id).await.len(), 1);

    // Interests are part of it.
    env.m(
        "interests.setMine",
        obj! { "keys" => vec![Value::from("rust")] },
        Some(&bob),
    )
    .await
    .unwrap();
    let jobs = refresh_jobs(&env, &bob_id).await;
    assert_eq!(jobs.len(), 2);
    let after = with(&env, "embeddings", "sourceId", &bob_id).await;
    assert_eq!(after.len(), 1);
    assert_ne!(
        after[0].get_path("metadata.contentSha256"),
        embedding[0].get_path("metadata.contentSha256")
    );
    // Back to a text the stored vector is already made of: no refresh either. (The profile
    // is changed behind the functions' back, so that the stored vector is of the new text.)
    let profile = id(&with(&env, "profiles", "userId", &bob_id).await[0]);
    env.m(
        "interests.setMine",
        obj! { "keys" => Vec::<Value>::new() },
        Some(&bob),
    )
    .await
    .unwrap();
    assert_eq!(refresh_jobs(&env, &bob_id).await.len(), 3);
    env.engine
        .transact(move |ctx| {
            let mut bio = query_engine::value::Object::new();
            bio.insert("bio".into(), "Bob grows tomatoes".into());
            ctx.patch("profiles", &profile, bio)?;
            Ok(Value::Null)
        })
        .await
        .unwrap();
    update(obj! { "bio" => BIO }).await.unwrap();
    assert_eq!(refresh_jobs(&env, &bob_id).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_refreshes_keep_to_the_refresh_limit() {
    let mut config = LinkedUpConfig::default();
    config.ai.refresh_limit = RateLimit {
        max: 1,
        window_ms: 600_000,
    };
    config.rate_limits.shards = 1;
    let env = open(config);
    let bob = ident("bob", None, None);
    let bob_id = env.user(&bob).await;
    env.m("profiles.update", obj! { "bio" => BIO }, Some(&bob))
        .await
        .unwrap();
    // Over the limit the change is saved, and no refresh is scheduled.
    let p = env
        .m(
            "profiles.update",
            obj! { "bio" => "Bob now grows tomatoes" },
            Some(&bob),
        )
        .await
        .unwrap();
    assert_eq!(s(&p, "bio"), "Bob now grows tomatoes");
    assert_eq!(refresh_jobs(&env, &bob_id).await.len(), 1);
    // The user's own refresh is counted apart and still allowed.
    env.call("embeddings.refreshMine", obj! {}, Some(&bob))
        .await
        .unwrap();
}

/// The erased user was the only host: the earliest-added other participant of each open
/// meeting becomes its host (audited, no actor); a meeting with another host, or one that is
/// over, is left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_only_host_hands_open_meetings_over() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let role = |meeting: String, user: String| async move {
        let p = with(env, "meetingParticipants", "meetingId", &meeting)
            .await
            .into_iter()
            .find(|p| s(p, "userId") == user)
            .unwrap();
        s(&p, "role")
    };
    // w.meeting (active): alice hosts, bob takes part. Another active one with bob and carol
    // (added after bob); a scheduled one with carol; one alice co-hosts with carol; one over.
    let two = env
        .schedule(&w.alice, "Two", &[&w.bob_id, &w.carol_id])
        .await;
    env.start(&w.alice, &two).await;
    let later = env.schedule(&w.alice, "Later", &[&w.carol_id]).await;
    let cohosted = env
        .schedule(&w.alice, "Co-hosted", &[&w.bob_id, &w.carol_id])
        .await;
    env.m(
        "meetings.setRole",
        obj! { "meetingId" => cohosted.as_str(), "userId" => w.carol_id.as_str(), "role" => "host" },
        Some(&w.alice),
    )
    .await
    .unwrap();
    let over = env.schedule(&w.alice, "Over", &[&w.carol_id]).await;
    env.start(&w.alice, &over).await;
    env.end(&w.alice, &over).await;

    let r = request(env, &w.alice).await;
    wait_done(env, &s(&r, "requestId")).await;

    assert_eq!(role(w.meeting.clone(), w.bob_id.clone()).await, "host");
    assert_eq!(role(two.clone(), w.bob_id.clone()).await, "host");
    assert_eq!(role(two.clone(), w.carol_id.clone()).await, "participant");
    assert_eq!(role(later.clone(), w.carol_id.clone()).await, "host");
    assert_eq!(role(cohosted.clone(), w.carol_id.clone()).await, "host");
    assert_eq!(
        role(cohosted.clone(), w.bob_id.clone()).await,
        "participant"
    );
    assert_eq!(role(over.clone(), w.carol_id.clone()).await, "participant");
    // The new hosts can run their meetings.
    env.end(&w.bob, &two).await;
    let handed: Vec<Value> = env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|e| {
            s(e, "action") == "participant.role_changed"
                && e.get_path("metadata.reason").and_then(Value::as_str) == Some("hostErased")
        })
        .collect();
    assert_eq!(handed.len(), 3);
    assert!(handed.iter().all(|e| e.get_path("actorUserId").is_none()));
    // w.meeting has a Stream room (the local provider's): the new host's call role follows,
    // and alice is out of the call (blocked, no longer a member).
    let calls = env.config.stream.provider.local_calls().unwrap().clone();
    for _ in 0..400 {
        let call = calls.call(&w.meeting).unwrap_or_default();
        if call.members.get(&w.bob_id).map(String::as_str) == Some("host")
            && call.blocked.contains(&w.alice_id)
            && !call.members.contains_key(&w.alice_id)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("bob's call role did not become host, or alice is still in the call");
}

/// Marks `user`'s erasure as requested, as `users.requestErasure` does, without scheduling the
/// job: the state between the request and the job's runs.
async fn erasure_requested(env: &Env, user: &str) {
    let user = user.to_string();
    env.engine
        .transact(move |ctx| {
            ctx.patch(
                "users",
                &user,
                obj! { "erasureRequestedAt" => 1i64 }.into_object().unwrap(),
            )?;
            Ok(Value::Null)
        })
        .await
        .unwrap();
}

/// Bob has asked for erasure and his job has not reached his profile yet: prompts generated
/// for a meeting of his tell the provider nothing of him.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_being_erased_is_left_out_of_what_the_ai_provider_is_told() {
    let fake = ai_common::Fake::start().await;
    let w = world(fake.config()).await;
    let env = &w.env;
    for key in ["precall/ai", "incall/ai"] {
        ai_common::enable(&env.engine, &w.alice, key).await;
    }
    env.m(
        "profiles.update",
        obj! { "displayName" => "Bobby Tables", "bio" => BIO },
        Some(&w.bob),
    )
    .await
    .unwrap();
    erasure_requested(env, &w.bob_id).await;
    let meeting = w.meeting.as_str();
    env.call(
        "prompts.generatePreCall",
        obj! { "meetingId" => meeting },
        Some(&w.alice),
    )
    .await
    .unwrap();
    let context = obj! {
        "recentTranscript" => "What ships next?", "currentTopics" => vec![Value::from("launch")],
        "lullDetected" => false,
    };
    env.call(
        "prompts.generateInCall",
        obj! { "meetingId" => meeting, "context" => context },
        Some(&w.alice),
    )
    .await
    .unwrap();
    let asked = fake.requests();
    assert_eq!(asked.len(), 2);
    for r in &asked {
        let told = r.body["messages"][1]["content"].as_str().unwrap();
        assert!(
            told.contains("Standup") && told.contains(&w.alice_id),
            "{told}"
        );
        for bobs in ["Bobby", BIO, &w.bob_id] {
            assert!(!told.contains(bobs), "{told}");
        }
    }
}

/// The race `prompts.store` closes, for pre-call and in-call prompts: Alice's generation has
/// read Bob's profile and is at the provider when Bob asks for erasure and his job runs to the
/// end, passing the meeting's prompts while none are stored; the provider then answers with
/// prompts made of his name and bio. Those are not stored: the local heuristics' made without
/// him are, and returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_made_of_a_profile_erased_meanwhile_are_not_stored() {
    let in_call = obj! {
        "recentTranscript" => "What ships next?", "currentTopics" => vec![Value::from("launch")],
        "lullDetected" => false,
    };
    for (function, flag, context) in [
        ("prompts.generatePreCall", "precall/ai", None),
        ("prompts.generateInCall", "incall/ai", Some(in_call)),
    ] {
        let fake = ai_common::Fake::start().await;
        let w = world(fake.config()).await;
        let env = &w.env;
        ai_common::enable(&env.engine, &w.alice, flag).await;
        env.m(
            "profiles.update",
            obj! { "displayName" => "Bobby Tables", "bio" => BIO },
            Some(&w.bob),
        )
        .await
        .unwrap();
        let bobs = serde_json::json!({"prompts": [
            {"content": format!("Ask Bobby Tables about this: {BIO}"), "tags": ["bio"], "relevance": 0.9},
        ]});
        fake.script([ai_common::Reply::Json(200, ai_common::chat(bobs), None)]);
        fake.hold();
        let mut args = obj! { "meetingId" => w.meeting.as_str() };
        if let Some(c) = context {
            args.as_object_mut().unwrap().insert("context".into(), c);
        }
        let generating = env.call(function, args, Some(&w.alice));
        let erasing = async {
            for _ in 0..800 {
                if fake.count("/chat/completions") > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let asked = fake.requests();
            let told = asked[0].body["messages"][1]["content"].as_str().unwrap();
            assert!(told.contains(BIO), "{told}");
            let r = request(env, &w.bob).await;
            wait_done(env, &s(&r, "requestId")).await;
            fake.release();
        };
        let (returned, ()) = tokio::time::timeout(
            Duration::from_secs(30),
            futures::future::join(generating, erasing),
        )
        .await
        .expect("the generation returns once released");
        let returned = returned.unwrap();
        let returned = returned.as_array().unwrap();
        let stored = with(env, "prompts", "meetingId", &w.meeting).await;
        assert!(!stored.is_empty(), "{function}");
        assert_eq!(stored.len(), returned.len(), "{function}");
        for p in stored.iter().chain(returned) {
            let text = format!("{p:?}");
            assert!(!text.contains("Bobby") && !text.contains(BIO), "{text}");
            assert_eq!(s(p, "provenance.provider"), "local");
            assert!(
                s(p, "provenance.fallbackReason").contains("erasure"),
                "{text}"
            );
        }
        assert_eq!(fake.count("/chat/completions"), 1, "{function}");
    }
}

/// The earliest-added participant is being erased too: hosting passes over them to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosting_passes_over_a_participant_who_is_being_erased() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let meeting = env
        .schedule(&w.alice, "Handover", &[&w.bob_id, &w.carol_id])
        .await;
    // bob (added first) has asked for erasure; his job has not run yet.
    erasure_requested(env, &w.bob_id).await;
    let r = request(env, &w.alice).await;
    wait_done(env, &s(&r, "requestId")).await;
    let roles: Vec<(String, String)> = with(env, "meetingParticipants", "meetingId", &meeting)
        .await
        .iter()
        .map(|p| (s(p, "userId"), s(p, "role")))
        .collect();
    assert!(
        roles.contains(&(w.carol_id.clone(), "host".to_string())),
        "{roles:?}"
    );
    assert!(
        roles.contains(&(w.bob_id.clone(), "participant".to_string())),
        "{roles:?}"
    );
}

/// A meeting alice hosts with bob as co-host and carol as participant.
async fn co_hosted(w: &World) -> String {
    let meeting = w
        .env
        .schedule(&w.alice, "Co-hosted", &[&w.bob_id, &w.carol_id])
        .await;
    w.env
        .m(
            "meetings.setRole",
            obj! { "meetingId" => meeting.as_str(), "userId" => w.bob_id.as_str(), "role" => "host" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    meeting
}

/// A co-host erased earlier keeps the host role but runs nothing: when the other host is
/// erased, hosting still passes to a live participant. (Before, the erased co-host counted as
/// a second host, so nobody was made host and the meeting had no one who could run it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_co_host_does_not_keep_hosting_from_being_handed_over() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let meeting = co_hosted(&w).await;
    for who in [&w.bob, &w.alice] {
        let r = request(env, who).await;
        wait_done(env, &s(&r, "requestId")).await;
    }
    let roles: Vec<(String, String)> = with(env, "meetingParticipants", "meetingId", &meeting)
        .await
        .iter()
        .map(|p| (s(p, "userId"), s(p, "role")))
        .collect();
    assert!(
        roles.contains(&(w.carol_id.clone(), "host".to_string())),
        "{roles:?}"
    );
}

/// Beside an erased co-host (who keeps the role), the live host is the last one who can run
/// the meeting: they may not demote or remove themselves, and may remove the erased one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_co_host_does_not_count_as_a_host_to_step_down_for() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let meeting = co_hosted(&w).await;
    let call = |f: &'static str, args: Value| env.m(f, args, Some(&w.alice));
    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let alice_down = obj! { "meetingId" => meeting.as_str(), "userId" => w.alice_id.as_str(), "role" => "participant" };
    let e = call("meetings.setRole", alice_down).await.unwrap_err();
    assert_eq!(e.code, "CONFLICT", "{e}");
    let alice_out = obj! { "meetingId" => meeting.as_str(), "userId" => w.alice_id.as_str() };
    let e = call("meetings.removeParticipant", alice_out)
        .await
        .unwrap_err();
    assert_eq!(e.code, "CONFLICT", "{e}");
    let bob_out = obj! { "meetingId" => meeting.as_str(), "userId" => w.bob_id.as_str() };
    call("meetings.removeParticipant", bob_out).await.unwrap();
}

/// What the user's device stored is theirs unless it names another participant as speaker:
/// chunks bob stored without a speaker or with a diarisation label are redacted with his
/// account; the one he attributed to alice stays hers, and alice's own words stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_redacts_chunks_the_user_stored_unless_another_participant_spoke_them() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let alice = w.alice_id.as_str();
    say(env, &w.bob, &w.meeting, "bob-label", "Speaker 2").await;
    say(env, &w.bob, &w.meeting, "bob-for-alice", alice).await;
    say(env, &w.alice, &w.meeting, "alice-label", "Speaker 1").await;
    env.m(
        "transcripts.ingestChunk",
        obj! {
            "meetingId" => w.meeting.as_str(), "chunkId" => "bob-bare", "text" => "bob's aside",
            "confidence" => 0.9, "startMs" => 0i64, "endMs" => 1_000i64,
        },
        Some(&w.bob),
    )
    .await
    .unwrap();

    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let text = |chunks: &[Value], id: &str| {
        let c = chunks.iter().find(|c| s(c, "chunkId") == id).unwrap();
        s(c, "text")
    };
    let chunks = with(env, "transcripts", "meetingId", &w.meeting).await;
    assert_eq!(text(&chunks, "bob-label"), REDACTED);
    assert_eq!(text(&chunks, "bob-bare"), REDACTED);
    assert_eq!(
        text(&chunks, "bob-for-alice"),
        format!("{alice} says something personal")
    );
    assert_eq!(
        text(&chunks, "alice-label"),
        "Speaker 1 says something personal"
    );
}

/// `who` stores a chunk with no speaker: by the chunk rule, their own words.
async fn say_unlabelled(env: &Env, who: &Identity, meeting: &str, chunk: &str, text: &str) {
    env.m(
        "transcripts.ingestChunk",
        obj! {
            "meetingId" => meeting, "chunkId" => chunk, "text" => text, "confidence" => 0.9,
            "startMs" => 0i64, "endMs" => 1_000i64,
        },
        Some(who),
    )
    .await
    .unwrap();
}

/// Aggregates the meeting's transcript into segments (as `meetings.end` schedules).
async fn aggregate(env: &Env, meeting: &str) {
    env.m(
        "transcripts.aggregateSegments",
        obj! { "meetingId" => meeting },
        None,
    )
    .await
    .unwrap();
}

/// Segments are attributed as their chunks are: bob's and alice's unlabelled words are two
/// segments, bob's (`spokenBy` him, `speakers` empty) redacted with his account, hers kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_redacts_segments_of_words_the_user_stored_without_a_speaker() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    say_unlabelled(env, &w.bob, &w.meeting, "bob-bare", "bob's aside").await;
    say_unlabelled(env, &w.alice, &w.meeting, "alice-bare", "alice's aside").await;
    w.end_meeting().await;
    aggregate(env, &w.meeting).await;
    let segments = with(env, "transcriptSegments", "meetingId", &w.meeting).await;
    let spoken_by = |text: &str| {
        let seg = segments.iter().find(|g| s(g, "text") == text).unwrap();
        seg.get_path("spokenBy").cloned()
    };
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert_eq!(
        spoken_by("bob's aside"),
        Some(Value::Array(vec![w.bob_id.as_str().into()]))
    );
    assert_eq!(
        spoken_by("alice's aside"),
        Some(Value::Array(vec![w.alice_id.as_str().into()]))
    );

    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let segments = with(env, "transcriptSegments", "meetingId", &w.meeting).await;
    let texts: Vec<String> = segments.iter().map(|g| s(g, "text")).collect();
    assert_eq!(texts, [REDACTED, "alice's aside"], "{segments:?}");
    assert_eq!(
        segments[0].get_path("spokenBy"),
        Some(&Value::Array(vec![]))
    );
}

/// A segment aggregated before segments recorded `spokenBy` names only its chunks' labels; one
/// holding a chunk the user spoke is redacted whatever it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_redacts_older_segments_covering_a_chunk_the_user_spoke() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let now = query_engine::committer::now_millis();
    say_unlabelled(env, &w.alice, &w.meeting, "alice-bare", "alice's aside").await;
    say(env, &w.bob, &w.meeting, "bob-label", "Speaker 2").await;
    say(env, &w.alice, &w.meeting, "alice-label", "Speaker 2").await;
    let segment = |text: &str, first: i64, last: i64| {
        obj! {
            "meetingId" => w.meeting.as_str(), "startMs" => 0i64, "endMs" => 1_000i64,
            "speakers" => Vec::<Value>::new(), "text" => text, "topics" => Vec::<Value>::new(),
            "createdAt" => now, "firstSequence" => first, "lastSequence" => last,
        }
    };
    // As aggregation used to write them: alice's and bob's words in one segment naming nobody.
    let merged = insert(
        env,
        "transcriptSegments",
        segment("alice's and bob's", 1, 2),
    )
    .await;
    let hers = insert(env, "transcriptSegments", segment("alice again", 3, 3)).await;

    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let segments = with(env, "transcriptSegments", "meetingId", &w.meeting).await;
    let text = |segment_id: &str| {
        s(
            segments.iter().find(|g| id(g) == segment_id).unwrap(),
            "text",
        )
    };
    assert_eq!(text(&merged), REDACTED);
    assert_eq!(text(&hers), "alice again");
}

/// What others' insights quote of a segment of the user's unlabelled words is theirs to erase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_redacts_insight_quotes_of_unlabelled_segments() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    ai_common::enable(&env.engine, &w.alice, "insights/postcall").await;
    w.share_an_interest(&[(&w.alice, "Alice"), (&w.bob, "Bob")])
        .await;
    const HIS: &str = "I will profile the compaction benchmark on my laptop tomorrow.";
    const HERS: &str = "The compaction benchmark regressed badly after the merge.";
    say_unlabelled(env, &w.bob, &w.meeting, "bob-bare", HIS).await;
    say(env, &w.alice, &w.meeting, "alice", w.alice_id.as_str()).await;
    env.m(
        "transcripts.ingestChunk",
        obj! {
            "meetingId" => w.meeting.as_str(), "chunkId" => "alice-2", "text" => HERS,
            "speakerId" => w.alice_id.as_str(), "confidence" => 0.9,
            "startMs" => 2_000i64, "endMs" => 3_000i64,
        },
        Some(&w.alice),
    )
    .await
    .unwrap();
    // While the meeting is active the last turn (alice's) is held back: bob's is a segment,
    // which the insights read rather than his chunk.
    aggregate(env, &w.meeting).await;
    let segments = with(env, "transcriptSegments", "meetingId", &w.meeting).await;
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert_eq!(s(&segments[0], "text"), HIS);
    w.end_meeting().await;
    documents_when(env, "insights", 2).await;
    let alices = || async { with(env, "insights", "userId", &w.alice_id).await[0].clone() };
    let before = alices().await;
    assert!(
        format!("{before:?}").contains("profile the compaction benchmark"),
        "{before:?}"
    );

    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let after = alices().await;
    assert!(
        !format!("{after:?}").contains("profile the compaction benchmark"),
        "{after:?}"
    );
    assert!(s(&after, "summary").contains(HERS), "{after:?}");
}

#[tokio::test]
async fn erasure_redacts_what_the_user_said_in_meetings_they_were_removed_from() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let (bob, alice) = (w.bob_id.as_str(), w.alice_id.as_str());
    // bob speaks in alice's meeting, is removed from it, and alice speaks on.
    say(env, &w.bob, &w.meeting, "bob-1", bob).await;
    say(env, &w.bob, &w.meeting, "bob-2", bob).await;
    env.m(
        "meetings.removeParticipant",
        obj! { "meetingId" => w.meeting.as_str(), "userId" => bob },
        Some(&w.alice),
    )
    .await
    .unwrap();
    say(env, &w.alice, &w.meeting, "alice-1", alice).await;
    let removals = with(env, "formerParticipants", "userId", bob).await;
    assert_eq!(removals.len(), 1);
    assert_eq!(s(&removals[0], "meetingId"), w.meeting);
    assert_eq!(s(&removals[0], "removedBy"), alice);
    assert_eq!(s(&removals[0], "role"), "participant");
    // Nothing links bob to the meeting any more but that record.
    assert!(with(env, "meetingParticipants", "userId", bob)
        .await
        .is_empty());

    let r = request(env, &w.bob).await;
    let done = wait_done(env, &s(&r, "requestId")).await;

    let chunks = with(env, "transcripts", "meetingId", &w.meeting).await;
    assert_eq!(
        chunks.len(),
        3,
        "redacted, not deleted: the sequence stays gap-free"
    );
    for c in &chunks {
        if s(c, "chunkId").starts_with("bob-") {
            assert_eq!(s(c, "text"), REDACTED);
            assert!(c.get_path("speakerId").is_none());
        } else {
            assert_eq!(s(c, "text"), format!("{alice} says something personal"));
            assert_eq!(s(c, "speakerId"), alice);
        }
    }
    assert!(with(env, "formerParticipants", "userId", bob)
        .await
        .is_empty());
    assert_eq!(
        done.get_path("counts.formerParticipants")
            .and_then(Value::as_i64),
        Some(2),
        "read once to find the meeting, then deleted"
    );
}

/// Words another participant's device attributes to a user after the user's erasure (the job
/// has passed the meeting) are not stored: the chunk keeps its place in the sequence, redacted.
#[tokio::test]
async fn chunks_spoken_by_an_erased_user_are_stored_redacted() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let (bob, alice) = (w.bob_id.as_str(), w.alice_id.as_str());
    say(env, &w.bob, &w.meeting, "bob-before", bob).await;
    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    say(env, &w.alice, &w.meeting, "bob-after", bob).await;
    say(env, &w.alice, &w.meeting, "alice-after", alice).await;

    let chunks = with(env, "transcripts", "meetingId", &w.meeting).await;
    let chunk = |id: &str| chunks.iter().find(|c| s(c, "chunkId") == id).unwrap();
    for id in ["bob-before", "bob-after"] {
        assert_eq!(s(chunk(id), "text"), REDACTED, "{id}");
        assert!(chunk(id).get_path("speakerId").is_none(), "{id}");
    }
    assert_eq!(
        s(chunk("alice-after"), "text"),
        format!("{alice} says something personal")
    );
    assert_eq!(s(chunk("alice-after"), "speakerId"), alice);
}

/// The access denials recorded of an erased user stay in the audit log, the security record,
/// without the token subject that identified the person; others' denials keep theirs.
#[tokio::test]
async fn erasure_strips_the_token_subject_from_the_users_denials() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    for who in [&w.dave, &w.carol] {
        let r = env
            .q(
                "meetings.get",
                obj! { "meetingId" => w.meeting.as_str() },
                Some(who),
            )
            .await;
        // Shown as a missing meeting, recorded as a denial.
        assert_eq!(r.unwrap_err().code, "NOT_FOUND");
    }
    linkedup_server::linkedup::audit::flush_denials(&env.engine, &env.config.denials)
        .await
        .unwrap();
    let r = request(env, &w.dave).await;
    wait_done(env, &s(&r, "requestId")).await;

    let denials = |actor: String| async move {
        with(env, "auditLogs", "actorUserId", &actor)
            .await
            .into_iter()
            .filter(|e| s(e, "action") == "access.denied")
            .collect::<Vec<_>>()
    };
    let dave = denials(w.dave_id.clone()).await;
    assert_eq!(dave.len(), 1, "the entry stays");
    assert_eq!(s(&dave[0], "metadata.function"), "meetings.get");
    assert!(dave[0].get_path("metadata.subject").is_none());
    let carol = denials(w.carol_id.clone()).await;
    assert_eq!(carol.len(), 1);
    assert_eq!(s(&carol[0], "metadata.subject"), "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_redacts_what_others_insights_quote_of_the_user() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let (alice, bob) = (w.alice_id.as_str(), w.bob_id.as_str());
    ai_common::enable(&env.engine, &w.alice, "insights/postcall").await;
    w.share_an_interest(&[(&w.alice, "Alice"), (&w.bob, "Bob")])
        .await;
    const HERS: &str = "The compaction benchmark regressed badly after the merge.";
    const HIS: &str = "I will profile the compaction benchmark on my laptop tomorrow.";
    for (i, (speaker, text)) in [(alice, HERS), (bob, HIS)].into_iter().enumerate() {
        env.m(
            "transcripts.ingestChunk",
            obj! {
                "meetingId" => w.meeting.as_str(), "chunkId" => format!("c{i}"),
                "speakerId" => speaker, "text" => text, "confidence" => 0.9,
                "startMs" => i as i64 * 2_000, "endMs" => i as i64 * 2_000 + 1_000,
            },
            Some(&w.alice),
        )
        .await
        .unwrap();
    }
    w.end_meeting().await;
    documents_when(env, "insights", 2).await;
    let alices = || async {
        let all = with(env, "insights", "userId", alice).await;
        assert_eq!(all.len(), 1);
        all[0].clone()
    };
    // What Alice's insight says of Bob: his words, a link to them, a recommendation of him.
    let text = |i: &Value| {
        format!(
            "{:?}",
            (
                i.get_path("summary"),
                i.get_path("actionItems"),
                i.get_path("links"),
                i.get_path("recommendations")
            )
        )
    };
    let before = alices().await;
    assert!(
        text(&before).contains("profile the compaction benchmark"),
        "{before:?}"
    );
    assert!(text(&before).contains(HERS), "{before:?}");
    assert!(text(&before).contains(bob), "{before:?}");

    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let after = alices().await;
    let said = text(&after);
    assert!(
        !said.contains("profile the compaction benchmark"),
        "{after:?}"
    );
    assert!(!said.contains(bob), "{after:?}");
    assert!(said.contains(REDACTED), "{after:?}");
    // What Alice said herself stays, and so does her link to it.
    assert!(s(&after, "summary").contains(HERS), "{after:?}");
    assert!(
        said.contains(&format!("{alice}: The compaction")),
        "{after:?}"
    );
    let quotes = after.get_path("quotes").and_then(Value::as_array).unwrap();
    assert!(quotes.iter().all(|q| s(q, "userId") == alice), "{quotes:?}");
    assert!(!quotes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insight_stored_while_a_user_it_quotes_is_erased_is_redacted() {
    let w = world(LinkedUpConfig::default()).await;
    let (alice, bob) = (w.alice_id.as_str(), w.bob_id.as_str());
    // The erasure job may pass the meeting before a generation that read Bob's words stores.
    request(&w.env, &w.bob).await;
    let quote = |part: &str, index: i64| obj! { "userId" => bob, "part" => part, "index" => index };
    let insight = obj! {
        "userId" => alice, "summary" => "Alice opened. Bob said something personal.",
        "actionItems" => vec![Value::from("Bob will send his CV")],
        "recommendations" => vec![obj! {
            "type" => "connection", "content" => "Connect with Bob", "confidence" => 0.5,
            "userId" => bob,
        }],
        "links" => Vec::<Value>::new(),
        "quotes" => vec![quote("summary", 1), quote("actionItem", 0)],
        "provenance" => obj! {
            "provider" => "local", "model" => "m", "requestHash" => "h", "fallback" => false,
            "features" => obj! {},
        },
    };
    w.env
        .m(
            "insights.store",
            obj! { "meetingId" => w.meeting.as_str(), "insights" => vec![insight] },
            None,
        )
        .await
        .unwrap();
    let stored = with(&w.env, "insights", "userId", alice).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        s(&stored[0], "summary"),
        format!("Alice opened. {REDACTED}")
    );
    assert_eq!(
        stored[0].get_path("actionItems"),
        Some(&Value::Array(vec![REDACTED.into()]))
    );
    assert_eq!(
        stored[0].get_path("recommendations"),
        Some(&Value::Array(vec![]))
    );
    assert_eq!(stored[0].get_path("quotes"), Some(&Value::Array(vec![])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insights_that_do_not_say_whose_words_they_quote_are_redacted_whole() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let (alice, bob, carol) = (w.alice_id.as_str(), w.bob_id.as_str(), w.carol_id.as_str());
    let now = query_engine::committer::now_millis();
    let with_bob = env.schedule(&w.alice, "Retro", &[bob, carol]).await;
    let without_bob = env.schedule(&w.alice, "1:1", &[carol]).await;
    // An insight as written before insights recorded their quotes: no `quotes` field, so
    // nothing tells Bob's words from Alice's or Carol's.
    let unattributed = |owner: &str, meeting: &str| {
        obj! {
            "userId" => owner, "meetingId" => meeting,
            "summary" => "Bob is moving to Berlin in May. The team will miss him.",
            "actionItems" => vec![Value::from("Send Bob the Berlin contacts")],
            "recommendations" => vec![obj! {
                "type" => "connection", "content" => "Ask Carol about Bob's move",
                "confidence" => 0.5, "userId" => carol,
            }],
            "links" => vec![
                obj! { "type" => "meeting", "url" => "linkedup://m", "title" => "Retro" },
                obj! {
                    "type" => "transcriptChunk", "url" => "linkedup://m/transcript/0",
                    "title" => "spk_0: I am moving to Berlin",
                },
            ],
            "createdAt" => now,
        }
    };
    let legacy = insert(env, "insights", unattributed(alice, &with_bob)).await;
    let elsewhere = insert(env, "insights", unattributed(alice, &without_bob)).await;
    // One that records its quotes: only what it attributes to Bob goes.
    let quote =
        |user: &str, index: i64| obj! { "userId" => user, "part" => "summary", "index" => index };
    let quoted = insert(
        env,
        "insights",
        obj! {
            "userId" => carol, "meetingId" => with_bob.as_str(),
            "summary" => "Carol opened the retro. Bob is moving to Berlin.",
            "actionItems" => vec![Value::from("Carol books the room")],
            "recommendations" => Vec::<Value>::new(), "links" => Vec::<Value>::new(),
            "quotes" => vec![quote(carol, 0), quote(bob, 1)],
            "createdAt" => now,
        },
    )
    .await;
    let by_id = |id: String| async move {
        env.all("insights")
            .await
            .into_iter()
            .find(|i| self::id(i) == id)
            .unwrap()
    };
    let untouched = by_id(elsewhere.clone()).await;

    let r = request(env, &w.bob).await;
    let done = wait_done(env, &s(&r, "requestId")).await;

    let after = by_id(legacy).await;
    assert_eq!(s(&after, "summary"), REDACTED, "{after:?}");
    assert_eq!(
        after.get_path("actionItems"),
        Some(&Value::Array(vec![REDACTED.into()]))
    );
    let nth =
        |field: &str, i: usize| after.get_path(field).and_then(Value::as_array).unwrap()[i].clone();
    assert_eq!(s(&nth("recommendations", 0), "content"), REDACTED);
    assert_eq!(s(&nth("recommendations", 0), "userId"), carol);
    // The meeting's own link keeps its title (the meeting's); the transcript's does not.
    assert_eq!(s(&nth("links", 0), "title"), "Retro");
    assert_eq!(s(&nth("links", 1), "title"), REDACTED);
    assert_eq!(after.get_path("quotes"), Some(&Value::Array(vec![])));
    assert!(!format!("{after:?}").contains("Berlin"), "{after:?}");

    // A meeting Bob was not in: nothing of his can be in it.
    assert_eq!(by_id(elsewhere).await, untouched);

    let quoted = by_id(quoted).await;
    assert_eq!(
        s(&quoted, "summary"),
        format!("Carol opened the retro. {REDACTED}")
    );
    assert_eq!(
        quoted.get_path("actionItems"),
        Some(&Value::Array(vec!["Carol books the room".into()]))
    );
    assert_eq!(
        quoted.get_path("quotes"),
        Some(&Value::Array(vec![quote(carol, 0)]))
    );
    // Both insights of Bob's meeting were gone through, the other meeting's not.
    assert_eq!(done.get_path("counts.insights"), Some(&Value::from(2i64)));
}
