//! Post-call insights: written once per participant after `meetings.end` (also when the job
//! runs again), retried through the scheduler on provider failure and then written by the
//! local heuristics, read from the transcript whether or not aggregation has run, the flag,
//! reading one's own, and deleting one's own only; a generation stopped by a restart resumed
//! (without generating anything twice), and given up after `MAX_RESUMES` restarts.

mod ai_common;
mod linkedup_common;

use std::time::Duration;

use ai_common::*;
use linkedup_common::*;
use linkedup_server::linkedup::insights::{GENERATE, MAX_RESUMES, RESUME_STALLED};
use linkedup_server::linkedup::LinkedUpConfig;
use query_engine::engine::EngineConfig;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

/// Waits (bounded) until `insights` holds `n` documents; returns them.
async fn insights_when(env: &Env, n: usize) -> Vec<Value> {
    documents_when(env, "insights", n).await
}

/// The states of the scheduled runs of `function`.
async fn jobs(env: &Env, function: &str) -> Vec<String> {
    env.all("_scheduled_jobs")
        .await
        .iter()
        .filter(|j| s(j, "function") == function)
        .map(|j| s(j, "state"))
        .collect()
}

/// Waits (bounded) until every run of `function` finished; returns their states.
async fn finished_jobs(env: &Env, function: &str) -> Vec<String> {
    let mut states = Vec::new();
    for _ in 0..800 {
        states = jobs(env, function).await;
        if !states.is_empty() && states.iter().all(|s| s == "success" || s == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    states
}

/// Marks the pending runs of `function` `state`, as the scheduler would (`success` for the
/// runs the test makes itself, `failed` for one a restart interrupted), and returns their
/// arguments.
async fn take_pending(env: &Env, function: &'static str, state: &'static str) -> Vec<Value> {
    let taken = env
        .engine
        .transact(move |ctx| {
            let mut args = Vec::new();
            for job in ctx.full_table_scan("_scheduled_jobs", 1_000)? {
                let field = |f: &str| job.get_path(f).and_then(Value::as_str);
                if field("function") != Some(function) || field("state") != Some("pending") {
                    continue;
                }
                let done = obj! { "state" => state, "completedAtMs" => ctx.now_ms() };
                let id = field("_id").unwrap().to_string();
                ctx.patch("_scheduled_jobs", &id, done.into_object().unwrap())?;
                args.push(job.get_path("args").cloned().unwrap());
            }
            Ok(Value::Array(args))
        })
        .await
        .unwrap();
    taken.as_array().unwrap().to_vec()
}

/// An engine whose jobs the test runs itself, a host (alice, org1 admin) with the insights
/// flag on, and an ended meeting of hers with `guests` more participants.
async fn ended_meeting_without_scheduler(config: LinkedUpConfig, guests: usize) -> (Env, String) {
    let env = open_with(
        config,
        EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        },
    );
    let alice = ident("alice", Some("org1"), Some("admin"));
    env.user(&alice).await;
    enable(&env.engine, &alice, "insights/postcall").await;
    let mut invitees = Vec::new();
    for i in 0..guests {
        let who = ident(&format!("guest{i}"), Some("org1"), Some("member"));
        invitees.push(env.user(&who).await);
    }
    let invitees: Vec<&str> = invitees.iter().map(String::as_str).collect();
    let meeting = env.schedule(&alice, "All hands", &invitees).await;
    env.start(&alice, &meeting).await;
    env.end(&alice, &meeting).await;
    (env, meeting)
}

async fn resume(env: &Env) -> i64 {
    env.m(RESUME_STALLED, obj! {}, None)
        .await
        .unwrap()
        .as_i64()
        .unwrap()
}

async fn say(w: &World, chunk: &str, speaker: &str, text: &str, at_ms: i64) {
    w.env
        .m(
            "transcripts.ingestChunk",
            obj! {
                "meetingId" => w.meeting.as_str(),
                "chunkId" => chunk,
                "speakerId" => speaker,
                "text" => text,
                "confidence" => 0.9,
                "startMs" => at_ms,
                "endMs" => at_ms + 1_000,
            },
            Some(&w.bob),
        )
        .await
        .unwrap();
}

/// Runs the insights job for the world's meeting (as the scheduler would).
async fn generate(w: &World) {
    w.env
        .engine
        .action(
            "insights.generate",
            obj! { "meetingId" => w.meeting.as_str() },
            None,
        )
        .await
        .unwrap();
}

/// Aggregates the world's meeting's transcript into segments.
async fn aggregate(w: &World) {
    w.env
        .m(
            "transcripts.aggregateSegments",
            obj! { "meetingId" => w.meeting.as_str() },
            None,
        )
        .await
        .unwrap();
}

/// The first element of the array at `path`.
fn first(v: &Value, path: &str) -> Value {
    v.get_path(path)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no array at {path} in {v:?}"))
}

/// The users the insight at `path` of `v` recommends connecting with (their `userId`s).
fn recommended(v: &Value, path: &str) -> Vec<String> {
    let mut users: Vec<String> = v
        .get_path(path)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no recommendations at {path} in {v:?}"))
        .iter()
        .filter(|r| s(r, "type") == "connection")
        .map(|r| s(r, "userId"))
        .collect();
    users.sort();
    users
}

fn owners(insights: &[Value]) -> Vec<String> {
    let mut o: Vec<String> = insights.iter().map(|i| s(i, "userId")).collect();
    o.sort();
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_insight_per_participant_and_a_rerun_adds_none() {
    let fake = Fake::start().await;
    let w = world(fake.config()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    say(&w, "c1", &w.alice_id, "We agreed on the launch date.", 0).await;
    say(
        &w,
        "c2",
        &w.bob_id,
        "I will send the launch plan tomorrow.",
        2_000,
    )
    .await;
    w.end_meeting().await;

    let insights = insights_when(&w.env, 2).await;
    let mut expected = vec![w.alice_id.clone(), w.bob_id.clone()];
    expected.sort();
    assert_eq!(owners(&insights), expected);
    assert_eq!(fake.count("/chat/completions"), 2);
    for i in &insights {
        assert_eq!(s(i, "summary"), "The team agreed to ship the launch plan.");
        assert_eq!(s(i, "provenance.provider"), "openai");
        assert_eq!(i.get_path("provenance.fallback"), Some(&Value::Bool(false)));
        assert_eq!(s(&first(i, "links"), "type"), "meeting");
        // The summary and action item point at the passage they came from.
        assert!(i
            .get_path("links")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .any(|l| s(l, "type").starts_with("transcript")));
    }
    // Each request was for one participant and carried the transcript.
    let mut for_users: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| {
            let user: serde_json::Value =
                serde_json::from_str(r.body["messages"][1]["content"].as_str().unwrap()).unwrap();
            assert!(user["transcript"]
                .to_string()
                .contains("I will send the launch plan"));
            user["forUser"].as_str().unwrap().to_string()
        })
        .collect();
    for_users.sort();
    assert_eq!(for_users, expected);

    // The job runs again (a retry): nothing new, no provider call.
    generate(&w).await;
    assert_eq!(w.env.all("insights").await.len(), 2);
    assert_eq!(fake.count("/chat/completions"), 2);
    let log = w
        .env
        .q(
            "audit.query",
            obj! { "resourceType" => "meeting", "resourceId" => w.meeting.as_str(), "action" => "insights.generated" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].get_path("metadata.count"), Some(&Value::from(2i64)));

    // Each reads their own, nobody else's.
    let m = obj! { "meetingId" => w.meeting.as_str() };
    let mine = w
        .env
        .q("insights.forMeeting", m.clone(), Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(s(&mine, "userId"), w.bob_id);
    // Outsiders are told there is no such meeting.
    expect_code(
        w.env
            .q("insights.forMeeting", m.clone(), Some(&w.carol))
            .await,
        "NOT_FOUND",
    );
    expect_code(
        w.env
            .q("insights.forMeeting", m.clone(), Some(&w.dave))
            .await,
        "NOT_FOUND",
    );
    expect_code(
        w.env.q("insights.forMeeting", m.clone(), None).await,
        "UNAUTHORIZED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_retried_by_the_scheduler_then_replaced_by_the_local_heuristics() {
    let fake = Fake::start().await;
    fake.always(status(500));
    let w = world(fake.config()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    say(
        &w,
        "c1",
        &w.bob_id,
        "I will send the launch plan tomorrow.",
        0,
    )
    .await;
    w.end_meeting().await;

    let insights = insights_when(&w.env, 2).await;
    // Three runs (the configured attempts), each asking for both participants.
    assert_eq!(
        finished_jobs(&w.env, "insights.generate").await,
        ["success"; 3]
    );
    assert_eq!(fake.count("/chat/completions"), 6);
    for i in &insights {
        assert_eq!(s(i, "provenance.provider"), "local");
        assert_eq!(i.get_path("provenance.fallback"), Some(&Value::Bool(true)));
        assert!(s(i, "provenance.fallbackReason").contains("HTTP 500"));
        assert_eq!(
            i.get_path("provenance.features.attempt"),
            Some(&Value::from(3i64))
        );
        assert_eq!(
            first(i, "actionItems"),
            Value::from("I will send the launch plan tomorrow.")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_recovers_writes_the_insights_on_the_retry() {
    let fake = Fake::start().await;
    fake.script([status(503), status(503)]);
    let w = world(fake.config()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    w.end_meeting().await;
    let insights = insights_when(&w.env, 2).await;
    assert_eq!(fake.count("/chat/completions"), 4);
    for i in &insights {
        assert_eq!(s(i, "provenance.provider"), "openai");
        assert_eq!(
            i.get_path("provenance.features.attempt"),
            Some(&Value::from(2i64))
        );
    }
    assert_eq!(
        finished_jobs(&w.env, "insights.generate").await,
        ["success"; 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_no_insight_is_written() {
    let fake = Fake::start().await;
    let w = world(fake.config()).await;
    w.end_meeting().await;
    assert_eq!(
        finished_jobs(&w.env, "insights.generate").await,
        ["success"]
    );
    assert!(w.env.all("insights").await.is_empty());
    assert_eq!(fake.count("/chat/completions"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transcript_is_read_whether_or_not_it_was_aggregated() {
    // The local provider: deterministic, so what it read shows in what it wrote.
    let w = world(LinkedUpConfig::default()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    w.share_an_interest(&[(&w.alice, "Alice"), (&w.bob, "Bob")])
        .await;
    say(
        &w,
        "c1",
        &w.alice_id,
        "The compaction benchmark regressed badly.",
        0,
    )
    .await;
    say(
        &w,
        "c2",
        &w.bob_id,
        "I will profile the compaction benchmark.",
        2_000,
    )
    .await;
    // Aggregation of a running meeting covers the first turn and holds back the last.
    aggregate(&w).await;
    assert_eq!(w.env.all("transcriptSegments").await.len(), 1);
    generate(&w).await;
    let insights = w.env.all("insights").await;
    assert_eq!(insights.len(), 2);
    let bobs = insights
        .iter()
        .find(|i| s(i, "userId") == w.bob_id)
        .unwrap();
    assert!(s(bobs, "summary").contains("compaction benchmark regressed"));
    assert_eq!(
        bobs.get_path("actionItems"),
        Some(&Value::Array(vec![
            "I will profile the compaction benchmark.".into()
        ]))
    );
    let kinds: Vec<String> = bobs
        .get_path("links")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|l| s(l, "type"))
        .collect();
    assert_eq!(kinds, ["meeting", "transcriptSegment", "transcriptChunk"]);
    assert_eq!(
        bobs.get_path("provenance.features.unaggregatedChunks"),
        Some(&Value::from(1i64))
    );
    // Alice and Bob share an interest: each is recommended to the other.
    assert_eq!(s(bobs, "provenance.provider"), "local");
    assert_eq!(
        s(&first(bobs, "recommendations"), "content"),
        "Connect with Alice: you share an interest in Rust."
    );
    assert_eq!(s(&first(bobs, "recommendations"), "userId"), w.alice_id);
}

/// Segments of a producer's diarisation labels ("spk_0") name no user: the insights quote
/// nobody for them, where quoting the label failed the store (a quote names a user) and the
/// meeting got no insights at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_speakers_are_quoted_as_nobody() {
    let w = world(LinkedUpConfig::default()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    say(
        &w,
        "c1",
        "spk_0",
        "The compaction benchmark regressed badly.",
        0,
    )
    .await;
    say(
        &w,
        "c2",
        "spk_1",
        "I will profile the compaction benchmark.",
        2_000,
    )
    .await;
    say(&w, "c3", "spk_0", "Thanks, that settles it.", 4_000).await;
    aggregate(&w).await;
    assert!(!w.env.all("transcriptSegments").await.is_empty());
    generate(&w).await;
    let insights = w.env.all("insights").await;
    assert_eq!(insights.len(), 2);
    for i in &insights {
        assert!(s(i, "summary").contains("compaction benchmark"), "{i:?}");
        let quoted: Vec<String> = i
            .get_path("quotes")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .map(|q| s(q, "userId"))
            .collect();
        assert!(quoted.iter().all(|u| !u.starts_with("spk_")), "{quoted:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insight_stored_before_recommendations_named_their_user_still_reads() {
    let w = world(LinkedUpConfig::default()).await;
    let (bob, meeting) = (w.bob_id.clone(), w.meeting.clone());
    w.env
        .engine
        .transact(move |ctx| {
            ctx.insert(
                "insights",
                obj! {
                    "userId" => bob.as_str(), "meetingId" => meeting.as_str(),
                    "summary" => "Old.", "actionItems" => Vec::<Value>::new(),
                    "recommendations" => vec![obj! {
                        "type" => "connection", "content" => "Connect with Alice.",
                        "confidence" => 0.5,
                    }],
                    "links" => Vec::<Value>::new(), "createdAt" => 0i64,
                },
            )
            .map(Value::from)
        })
        .await
        .unwrap();
    let read = w
        .env
        .q(
            "insights.forMeeting",
            obj! { "meetingId" => w.meeting.as_str() },
            Some(&w.bob),
        )
        .await
        .unwrap();
    let rec = first(&read, "recommendations");
    assert_eq!(s(&rec, "content"), "Connect with Alice.");
    assert_eq!(rec.get_path("userId"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_of_users_blocked_either_way_are_left_out_when_written_and_read() {
    let w = world(LinkedUpConfig::default()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    w.env
        .m(
            "meetings.addParticipant",
            obj! { "meetingId" => w.meeting.as_str(), "userId" => w.carol_id.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    w.share_an_interest(&[(&w.alice, "Alice"), (&w.bob, "Bob"), (&w.carol, "Carol")])
        .await;
    let block = |who: &Identity, whom: &str, f: &'static str| {
        let env = &w.env;
        let (who, whom) = (who.clone(), whom.to_string());
        async move {
            env.m(f, obj! { "userId" => whom.as_str() }, Some(&who))
                .await
                .unwrap();
        }
    };
    // Carol blocks Bob before the meeting ends: neither is recommended to the other.
    block(&w.carol, &w.bob_id, "users.block").await;
    w.end_meeting().await;
    let insights = insights_when(&w.env, 3).await;
    let of = |user: &str| insights.iter().find(|i| s(i, "userId") == user).unwrap();
    let mut both = vec![w.bob_id.clone(), w.carol_id.clone()];
    both.sort();
    assert_eq!(recommended(of(&w.alice_id), "recommendations"), both);
    assert_eq!(
        recommended(of(&w.bob_id), "recommendations"),
        std::slice::from_ref(&w.alice_id)
    );
    assert_eq!(
        recommended(of(&w.carol_id), "recommendations"),
        std::slice::from_ref(&w.alice_id)
    );

    // Alice blocks Bob afterwards: her insight, read either way, no longer recommends him;
    // nor does Bob's recommend her. Unblocked, he is back (reading hides, it does not delete).
    let for_meeting = |who: &Identity| {
        let env = &w.env;
        let (who, m) = (who.clone(), w.meeting.clone());
        async move {
            env.q(
                "insights.forMeeting",
                obj! { "meetingId" => m.as_str() },
                Some(&who),
            )
            .await
            .unwrap()
        }
    };
    let list_mine = |who: &Identity| {
        let env = &w.env;
        let who = who.clone();
        async move {
            env.q(
                "insights.listMine",
                obj! { "numItems" => 10i64 },
                Some(&who),
            )
            .await
            .unwrap()
        }
    };
    block(&w.alice, &w.bob_id, "users.block").await;
    assert_eq!(
        recommended(&for_meeting(&w.alice).await, "recommendations"),
        std::slice::from_ref(&w.carol_id)
    );
    assert_eq!(
        recommended(
            &first(&list_mine(&w.alice).await, "page"),
            "recommendations"
        ),
        std::slice::from_ref(&w.carol_id)
    );
    assert!(recommended(&for_meeting(&w.bob).await, "recommendations").is_empty());
    assert!(recommended(&first(&list_mine(&w.bob).await, "page"), "recommendations").is_empty());
    block(&w.alice, &w.bob_id, "users.unblock").await;
    assert_eq!(
        recommended(&for_meeting(&w.alice).await, "recommendations"),
        both
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_list_and_delete_their_own_insights_which_are_not_written_again() {
    let w = world(LinkedUpConfig::default()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    w.end_meeting().await;
    let insights = insights_when(&w.env, 2).await;
    let alices = insights
        .iter()
        .find(|i| s(i, "userId") == w.alice_id)
        .map(id)
        .unwrap();
    let del = |who| {
        let env = &w.env;
        let alices = alices.clone();
        async move {
            env.m(
                "insights.delete",
                obj! { "insightId" => alices.as_str() },
                Some(who),
            )
            .await
        }
    };
    // Another's insight is, to them, exactly a missing one.
    let bobs = expect_code(del(&w.bob).await, "NOT_FOUND");
    let daves = expect_code(del(&w.dave).await, "NOT_FOUND");
    del(&w.alice).await.unwrap();
    let gone = expect_code(del(&w.alice).await, "NOT_FOUND");
    assert_eq!(bobs, gone);
    assert_eq!(daves, gone);
    let log = w
        .env
        .q(
            "audit.query",
            obj! { "resourceType" => "insight", "resourceId" => alices.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&log.as_array().unwrap()[0], "action"), "insight.deleted");
    assert_eq!(s(&log.as_array().unwrap()[0], "actorUserId"), w.alice_id);

    // A rerun of the job does not bring it back.
    generate(&w).await;
    let left = w.env.all("insights").await;
    assert_eq!(owners(&left), std::slice::from_ref(&w.bob_id));

    // A second meeting gives Bob a second insight; he pages through both.
    let m2 = w
        .env
        .m(
            "meetings.schedule",
            obj! { "title" => "Retro", "inviteeIds" => vec![Value::from(w.bob_id.as_str())] },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let m2 = m2.as_str().unwrap().to_string();
    for f in ["meetings.start", "meetings.end"] {
        w.env
            .m(f, obj! { "meetingId" => m2.as_str() }, Some(&w.alice))
            .await
            .unwrap();
    }
    insights_when(&w.env, 3).await;
    let page1 = w
        .env
        .q(
            "insights.listMine",
            obj! { "numItems" => 1i64 },
            Some(&w.bob),
        )
        .await
        .unwrap();
    assert_eq!(
        page1
            .get_path("page")
            .and_then(Value::as_array)
            .unwrap()
            .len(),
        1
    );
    let cursor = s(&page1, "continueCursor");
    let page2 = w
        .env
        .q(
            "insights.listMine",
            obj! { "numItems" => 1i64, "cursor" => cursor.as_str() },
            Some(&w.bob),
        )
        .await
        .unwrap();
    let (a, b) = (first(&page1, "page"), first(&page2, "page"));
    assert_ne!(id(&a), id(&b));
    for p in [&a, &b] {
        assert_eq!(s(p, "userId"), w.bob_id);
    }
    let alice_page = w
        .env
        .q(
            "insights.listMine",
            obj! { "numItems" => 10i64 },
            Some(&w.alice),
        )
        .await
        .unwrap();
    // Alice deleted her first insight; the second meeting's is hers.
    assert_eq!(
        alice_page
            .get_path("page")
            .and_then(Value::as_array)
            .unwrap()
            .len(),
        1
    );
    expect_code(
        w.env
            .q(
                "insights.listMine",
                obj! { "numItems" => 0i64 },
                Some(&w.bob),
            )
            .await,
        "VALIDATION_ERROR",
    );
    expect_code(
        w.env
            .q("insights.listMine", obj! { "numItems" => 5i64 }, None)
            .await,
        "UNAUTHORIZED",
    );
    // Bob leaves org1: its meetings' insights are no more his to list than to read one by one.
    let moved = ident("bob", Some("org9"), Some("member"));
    expect_code(
        w.env
            .q(
                "insights.forMeeting",
                obj! { "meetingId" => m2.as_str() },
                Some(&moved),
            )
            .await,
        "FORBIDDEN",
    );
    let listed = w
        .env
        .q(
            "insights.listMine",
            obj! { "numItems" => 10i64 },
            Some(&moved),
        )
        .await
        .unwrap();
    assert_eq!(listed.get_path("page"), Some(&Value::Array(vec![])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_meetings_are_worked_through_a_page_per_run() {
    let fake = Fake::start().await;
    let w = world(fake.config()).await;
    enable(&w.env.engine, &w.alice, "insights/postcall").await;
    let mut invitees = Vec::new();
    for i in 0..9 {
        let who = ident(&format!("guest{i}"), Some("org1"), Some("member"));
        invitees.push(Value::from(w.env.user(&who).await));
    }
    let m = w
        .env
        .m(
            "meetings.schedule",
            obj! { "title" => "All hands", "inviteeIds" => invitees },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let m = m.as_str().unwrap().to_string();
    for f in ["meetings.start", "meetings.end"] {
        w.env
            .m(f, obj! { "meetingId" => m.as_str() }, Some(&w.alice))
            .await
            .unwrap();
    }
    // Ten participants: a page of eight, then a page of two.
    let insights = insights_when(&w.env, 10).await;
    let mut owners = owners(&insights);
    owners.dedup();
    assert_eq!(owners.len(), 10);
    assert_eq!(
        finished_jobs(&w.env, "insights.generate").await,
        ["success"; 2]
    );
    assert_eq!(fake.count("/chat/completions"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_stopped_by_a_restart_is_resumed_without_generating_twice() {
    let fake = Fake::start().await;
    let mut config = fake.config();
    config.ai.insight_stall_ms = 0;
    let (env, _) = ended_meeting_without_scheduler(config, 9).await;
    let run = |args: Value| {
        let env = &env;
        async move {
            env.engine.action(GENERATE, args, None).await.unwrap();
        }
    };
    // The first run writes the first page of ten participants and schedules the second...
    let first = take_pending(&env, GENERATE, "success").await;
    assert_eq!(first.len(), 1);
    run(first[0].clone()).await;
    assert_eq!(env.all("insights").await.len(), 8);
    // ...which a restart interrupts: the engine records it failed and never runs it again.
    let interrupted = take_pending(&env, GENERATE, "failed").await;
    assert_eq!(interrupted.len(), 1);
    assert_eq!(env.all("insightRuns").await.len(), 1);

    // The resumer restarts the generation; its runs walk the pages again and ask the
    // provider only for the two participants still without an insight.
    assert_eq!(resume(&env).await, 1);
    for _ in 0..10 {
        let runs = take_pending(&env, GENERATE, "success").await;
        if runs.is_empty() {
            break;
        }
        for args in runs {
            run(args).await;
        }
    }
    assert_eq!(env.all("insights").await.len(), 10);
    assert_eq!(fake.count("/chat/completions"), 10);

    // Finished: nothing to resume, and runs of the old chain, should they turn up, do nothing.
    assert!(env.all("insightRuns").await.is_empty());
    assert_eq!(resume(&env).await, 0);
    run(interrupted[0].clone()).await;
    run(first[0].clone()).await;
    assert!(take_pending(&env, GENERATE, "success").await.is_empty());
    assert_eq!(env.all("insights").await.len(), 10);
    assert_eq!(fake.count("/chat/completions"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_that_keeps_stopping_is_given_up() {
    let mut config = LinkedUpConfig::default();
    config.ai.insight_stall_ms = 0;
    let (env, meeting) = ended_meeting_without_scheduler(config, 1).await;
    // None of its runs ever runs.
    for _ in 0..MAX_RESUMES {
        assert_eq!(resume(&env).await, 1);
    }
    assert_eq!(resume(&env).await, 0);
    assert!(env.all("insightRuns").await.is_empty());
    let log: Vec<Value> = env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|l| s(l, "action") == "insights.abandoned")
        .collect();
    assert_eq!(log.len(), 1);
    assert_eq!(s(&log[0], "resourceId"), meeting);
    assert_eq!(
        log[0].get_path("metadata.resumes"),
        Some(&Value::from(MAX_RESUMES))
    );
    assert_eq!(resume(&env).await, 0);
}
