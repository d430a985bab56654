//! Pre-call and in-call prompts through the engine with the provider faked on 127.0.0.1:
//! access checks, feature flags, idempotency (counted at the fake), the per-meeting
//! throttle, racing generations asking the provider once (a call the same as one in flight
//! waits for its answer, a dead call's claim is taken over, within the action time limit even
//! when the provider never answers), fallback with provenance (whose
//! reason, like the log, never quotes the model's answer), listing and feedback.

mod ai_common;
mod linkedup_common;

use std::sync::Arc;
use std::time::Duration;

use ai_common::*;
use linkedup_common::*;
use linkedup_server::ai::AiService;
use linkedup_server::linkedup::LinkedUpConfig;
use query_engine::engine::EngineConfig;
use query_engine::error::FunctionError;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

const PRE: &str = "prompts.generatePreCall";
const IN: &str = "prompts.generateInCall";
/// Bound on waits that only a bug would exhaust.
const PATIENCE: Duration = Duration::from_secs(30);

async fn pre(w: &World, who: Option<&Identity>) -> Result<Value, FunctionError> {
    w.env
        .call(PRE, obj! { "meetingId" => w.meeting.as_str() }, who)
        .await
}

fn context(transcript: &str, topics: &[&str], lull: bool) -> Value {
    obj! {
        "recentTranscript" => transcript,
        "currentTopics" => Value::Array(topics.iter().map(|t| Value::from(*t)).collect()),
        "lullDetected" => lull,
    }
}

async fn in_call(w: &World, who: &Identity, ctx: Value) -> Result<Value, FunctionError> {
    w.env
        .call(
            IN,
            obj! { "meetingId" => w.meeting.as_str(), "context" => ctx },
            Some(who),
        )
        .await
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(id).collect()
}

fn config(fake: &Fake, in_call_interval_ms: i64) -> LinkedUpConfig {
    let mut c = fake.config();
    c.ai.in_call_interval_ms = in_call_interval_ms;
    c
}

/// Waits (bounded) until the fake has received `n` chat requests.
async fn chat_requests(fake: &Fake, n: usize) {
    for _ in 0..1_200 {
        if fake.count("/chat/completions") >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the provider did not receive {n} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_call_ideas_are_generated_once_per_meeting_for_participants_only() {
    let fake = Fake::start().await;
    let w = world(config(&fake, 0)).await;
    // Flag off: refused before the provider is asked.
    let e = expect_code(pre(&w, Some(&w.alice)).await, "FORBIDDEN");
    assert_eq!(
        e.data.get_path("reason").and_then(Value::as_str),
        Some("featureDisabled")
    );
    assert_eq!(fake.count("/chat/completions"), 0);
    enable(&w.env.engine, &w.alice, "precall/ai").await;

    let first = pre(&w, Some(&w.alice)).await.unwrap();
    let prompts = first.as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    assert_eq!(s(&prompts[0], "content"), "Ask about the launch plan");
    assert_eq!(s(&prompts[0], "type"), "precall");
    assert_eq!(s(&prompts[0], "provenance.provider"), "openai");
    assert_eq!(s(&prompts[0], "provenance.model"), "gpt-4o-mini");
    assert_eq!(
        prompts[0].get_path("provenance.fallback"),
        Some(&Value::Bool(false))
    );
    assert_eq!(s(&prompts[0], "provenance.requestHash").len(), 64);
    assert_eq!(fake.count("/chat/completions"), 1);

    // Bob asks too: the stored ideas, no second provider call.
    let again = pre(&w, Some(&w.bob)).await.unwrap();
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(fake.count("/chat/completions"), 1);

    // Outsiders are told there is no such meeting.
    expect_code(pre(&w, Some(&w.carol)).await, "NOT_FOUND");
    expect_code(pre(&w, Some(&w.dave)).await, "NOT_FOUND");
    expect_code(pre(&w, None).await, "UNAUTHORIZED");
    assert_eq!(fake.count("/chat/completions"), 1);
    assert_eq!(w.env.all("prompts").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_replaced_by_the_local_heuristics_and_recorded() {
    let fake = Fake::start().await;
    fake.always(status(500));
    let w = world(config(&fake, 0)).await;
    enable(&w.env.engine, &w.alice, "precall/ai").await;
    w.env
        .m(
            "profiles.update",
            obj! { "displayName" => "Alice", "goals" => "hire two engineers" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let prompts = pre(&w, Some(&w.alice)).await.unwrap();
    let prompts = prompts.as_array().unwrap();
    assert!(!prompts.is_empty());
    for p in prompts {
        assert_eq!(s(p, "provenance.provider"), "local");
        assert_eq!(p.get_path("provenance.fallback"), Some(&Value::Bool(true)));
        assert!(s(p, "provenance.fallbackReason").contains("HTTP 500"));
    }
    assert!(prompts
        .iter()
        .any(|p| s(p, "content").contains("hire two engineers")));
    assert_eq!(fake.count("/chat/completions"), 1);
}

/// What this thread logs while the guard `capture` returns lives.
#[derive(Clone, Default)]
struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

/// A model answer of the wrong shape is neither logged nor stored as the fallback reason: it
/// may be made of the participants' profiles.
#[tokio::test]
async fn a_malformed_answer_is_not_logged_or_stored() {
    let fake = Fake::start().await;
    fake.always(Reply::Json(
        200,
        chat(serde_json::json!({"prompts": "SECRET-PII Alice is moving to Berlin"})),
        None,
    ));
    let w = world(config(&fake, 0)).await;
    enable(&w.env.engine, &w.alice, "precall/ai").await;
    let logs = Logs::default();
    let prompts = {
        let _guard = logs.capture();
        pre(&w, Some(&w.bob)).await.unwrap()
    };
    let logged = logs.text();
    assert!(logged.contains("AI provider failed"), "{logged}");
    assert!(!logged.contains("SECRET-PII"), "{logged}");
    for p in prompts.as_array().unwrap() {
        assert_eq!(s(p, "provenance.provider"), "local");
        let reason = s(p, "provenance.fallbackReason");
        assert!(reason.contains("not the JSON asked for"), "{reason}");
        assert!(!reason.contains("SECRET-PII"), "{reason}");
    }
    assert_eq!(fake.count("/chat/completions"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_call_prompts_are_idempotent_by_request_and_throttled_per_meeting() {
    let fake = Fake::start().await;
    let w = world(config(&fake, 60_000)).await;
    let ctx = context(
        "We should launch in May. What blocks the launch?",
        &["launch"],
        false,
    );
    let e = expect_code(in_call(&w, &w.bob, ctx.clone()).await, "FORBIDDEN");
    assert!(e.message.contains("incall/ai"));
    enable(&w.env.engine, &w.alice, "incall/ai").await;

    let first = in_call(&w, &w.bob, ctx.clone()).await.unwrap();
    assert_eq!(first.as_array().unwrap().len(), 2);
    assert_eq!(s(&first.as_array().unwrap()[0], "type"), "incall");
    assert_eq!(fake.count("/chat/completions"), 1);
    // The provider saw the client's context.
    let user = fake.requests()[0].body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(user.contains("What blocks the launch?") && user.contains("\"lullDetected\":false"));

    // The same request again (even from Alice): the first answer, no provider call.
    let again = in_call(&w, &w.alice, ctx.clone()).await.unwrap();
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(fake.count("/chat/completions"), 1);

    // Another request within the interval: throttled, nothing asked.
    let e = expect_code(
        in_call(&w, &w.bob, context("", &["pricing"], true)).await,
        "RATE_LIMITED",
    );
    let data = e.data;
    assert_eq!(
        data.get_path("reason").and_then(Value::as_str),
        Some("meetingThrottle")
    );
    let retry = data
        .get_path("retryAfterMs")
        .and_then(Value::as_i64)
        .unwrap();
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    assert_eq!(fake.count("/chat/completions"), 1);

    expect_code(in_call(&w, &w.carol, ctx.clone()).await, "NOT_FOUND");
    expect_code(in_call(&w, &w.dave, ctx.clone()).await, "NOT_FOUND");
    expect_code(
        w.env
            .call(
                IN,
                obj! { "meetingId" => w.meeting.as_str(), "context" => ctx.clone() },
                None,
            )
            .await,
        "UNAUTHORIZED",
    );
    // Bounded input, named field.
    let topics: Vec<&str> = vec!["t"; 21];
    let e = expect_code(
        in_call(&w, &w.bob, context("", &topics, false)).await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.contains("context.currentTopics"), "{}", e.message);
    let e = expect_code(
        in_call(&w, &w.bob, context(&"x".repeat(8_001), &[], false)).await,
        "VALIDATION_ERROR",
    );
    assert!(
        e.message.contains("context.recentTranscript"),
        "{}",
        e.message
    );

    // Once the meeting is over there is nothing to prompt.
    w.end_meeting().await;
    expect_code(
        in_call(&w, &w.bob, context("later", &[], true)).await,
        "MEETING_NOT_ACTIVE",
    );
    assert_eq!(fake.count("/chat/completions"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_call_request_the_same_as_one_in_flight_is_not_throttled() {
    let fake = Fake::start().await;
    let mut c = config(&fake, 60_000);
    // Not waiting: a call that would wait for the one in flight says so at once.
    c.ai.generation_wait_ms = 0;
    let w = world(c).await;
    enable(&w.env.engine, &w.alice, "incall/ai").await;
    let same = context("the launch", &["launch"], false);
    fake.hold();
    let first = in_call(&w, &w.alice, same.clone());
    let meanwhile = async {
        // Alice's call has claimed the request and counted the throttle: it is at the provider.
        chat_requests(&fake, 1).await;
        for who in [&w.alice, &w.bob] {
            let e = expect_code(in_call(&w, who, same.clone()).await, "CONFLICT");
            assert_eq!(s(&e.data, "reason"), "generationInProgress");
            let retry = e.data.get_path("retryAfterMs").and_then(Value::as_i64);
            assert!(retry.is_some_and(|ms| ms > 0), "{:?}", e.data);
        }
        // The same request from someone without access to the meeting is refused.
        expect_code(in_call(&w, &w.carol, same.clone()).await, "NOT_FOUND");
        // Another request is throttled as before.
        let e = expect_code(
            in_call(&w, &w.bob, context("pricing", &["pricing"], true)).await,
            "RATE_LIMITED",
        );
        assert_eq!(s(&e.data, "reason"), "meetingThrottle");
        fake.release();
    };
    let (first, ()) = tokio::time::timeout(PATIENCE, futures::future::join(first, meanwhile))
        .await
        .expect("the first call returns once released");
    let first = first.unwrap();
    assert_eq!(fake.count("/chat/completions"), 1);
    // Answered: the same request now gets the answer; another is still throttled.
    assert_eq!(ids(&in_call(&w, &w.bob, same).await.unwrap()), ids(&first));
    let e = expect_code(
        in_call(&w, &w.bob, context("pricing", &["pricing"], true)).await,
        "RATE_LIMITED",
    );
    assert_eq!(s(&e.data, "reason"), "meetingThrottle");
    assert_eq!(fake.count("/chat/completions"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_call_requests_the_same_as_one_in_flight_get_its_answer() {
    let fake = Fake::start().await;
    let w = world(config(&fake, 60_000)).await;
    enable(&w.env.engine, &w.alice, "incall/ai").await;
    let same = context("the launch", &["launch"], false);
    fake.hold();
    let first = in_call(&w, &w.alice, same.clone());
    let joined = async {
        chat_requests(&fake, 1).await;
        // Sent while Alice's call is at the provider: they wait for its answer.
        let again = futures::future::join(
            in_call(&w, &w.alice, same.clone()),
            in_call(&w, &w.bob, same.clone()),
        );
        let release = async {
            // A different request meanwhile is throttled, and nobody else is asked.
            let e = expect_code(
                in_call(&w, &w.bob, context("pricing", &["pricing"], true)).await,
                "RATE_LIMITED",
            );
            assert_eq!(s(&e.data, "reason"), "meetingThrottle");
            fake.release();
        };
        futures::future::join(again, release).await.0
    };
    let (first, (again, bobs)) =
        tokio::time::timeout(PATIENCE, futures::future::join(first, joined))
            .await
            .expect("every call returns once released");
    let first = ids(&first.unwrap());
    assert_eq!(ids(&again.unwrap()), first);
    assert_eq!(ids(&bobs.unwrap()), first);
    assert_eq!(fake.count("/chat/completions"), 1);
    assert_eq!(w.env.all("prompts").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_provider_calls_are_limited_by_their_daily_budget() {
    let fake = Fake::start().await;
    let mut c = config(&fake, 0);
    c.ai.user_daily_calls = 2;
    let w = world(c).await;
    for key in ["precall/ai", "incall/ai"] {
        enable(&w.env.engine, &w.alice, key).await;
    }
    let asked = || fake.count("/chat/completions");
    // Alice's two calls: the pre-call ideas she generates and one in-call request.
    pre(&w, Some(&w.alice)).await.unwrap();
    let answered = context("the launch", &["launch"], false);
    in_call(&w, &w.alice, answered.clone()).await.unwrap();
    assert_eq!(asked(), 2);
    // Her budget is spent: a new request is refused before the provider is asked.
    let e = expect_code(
        in_call(&w, &w.alice, context("pricing", &["pricing"], true)).await,
        "RATE_LIMITED",
    );
    assert_eq!(s(&e.data, "reason"), "aiBudget");
    assert_eq!(e.data.get_path("limit"), Some(&Value::from(2i64)));
    let retry = e
        .data
        .get_path("retryAfterMs")
        .and_then(Value::as_i64)
        .unwrap();
    assert!((1..=24 * 3_600_000).contains(&retry), "{retry}");
    assert_eq!(asked(), 2);
    // So is a profile embedding she asks for.
    w.env
        .m(
            "profiles.update",
            obj! { "displayName" => "Alice", "bio" => "Builds databases" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let embedded = fake.count("/embeddings");
    let e = expect_code(
        w.env
            .call("embeddings.refreshMine", obj! {}, Some(&w.alice))
            .await,
        "RATE_LIMITED",
    );
    assert_eq!(s(&e.data, "reason"), "aiBudget");
    assert_eq!(fake.count("/embeddings"), embedded);
    // What costs no provider call still works: the stored ideas, an answered request.
    pre(&w, Some(&w.alice)).await.unwrap();
    in_call(&w, &w.alice, answered).await.unwrap();
    assert_eq!(asked(), 2);
    // Bob's budget is his own.
    in_call(&w, &w.bob, context("hiring", &["hiring"], false))
        .await
        .unwrap();
    assert_eq!(asked(), 3);
    // The call that spent Alice's last one is on record, once.
    let log = w
        .env
        .q(
            "audit.query",
            obj! { "resourceType" => "user", "resourceId" => w.alice_id.as_str(), "action" => "ai.budgetExhausted" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(s(&log[0], "metadata.function"), "prompts.generateInCall");
    assert_eq!(s(&log[0], "actorUserId"), w.alice_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pre_call_generations_ask_the_provider_once() {
    let fake = Fake::start().await;
    // The first answer is slow, so the second call arrives while the first is generating.
    fake.script([Reply::Delay(
        Duration::from_secs(1),
        Box::new(Reply::Default),
    )]);
    let w = world(config(&fake, 0)).await;
    enable(&w.env.engine, &w.alice, "precall/ai").await;
    let first = pre(&w, Some(&w.alice));
    let second = async {
        chat_requests(&fake, 1).await;
        pre(&w, Some(&w.bob)).await
    };
    let (a, b) = tokio::time::timeout(PATIENCE, futures::future::join(first, second))
        .await
        .expect("both calls return");
    assert_eq!(ids(&a.unwrap()), ids(&b.unwrap()));
    assert_eq!(fake.count("/chat/completions"), 1);
    assert_eq!(w.env.all("prompts").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_of_a_call_that_died_is_taken_over_once_it_expires() {
    let fake = Fake::start().await;
    let mut c = config(&fake, 0);
    c.ai.generation_lease_ms = 300;
    c.ai.generation_wait_ms = 0;
    let w = world(c).await;
    enable(&w.env.engine, &w.alice, "precall/ai").await;
    // Alice's call claims the generation and dies before asking the provider.
    let claimed = w
        .env
        .m(
            "prompts.beginPreCall",
            obj! { "meetingId" => w.meeting.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&claimed, "kind"), "claimed");
    // Bob, not waiting: told it is in progress, and for how long at most.
    let e = expect_code(pre(&w, Some(&w.bob)).await, "CONFLICT");
    assert_eq!(s(&e.data, "reason"), "generationInProgress");
    let retry = e
        .data
        .get_path("retryAfterMs")
        .and_then(Value::as_i64)
        .unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert_eq!(fake.count("/chat/completions"), 0);
    // Once the claim has lapsed, Bob's call takes it over and generates.
    let mut got = None;
    for _ in 0..1_200 {
        match pre(&w, Some(&w.bob)).await {
            Ok(v) => {
                got = Some(v);
                break;
            }
            Err(e) => {
                assert_eq!(s(&e.data, "reason"), "generationInProgress");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    let got = got.expect("the lapsed claim is taken over");
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert_eq!(fake.count("/chat/completions"), 1);
    // Alice's own call now gets the stored ideas.
    assert_eq!(ids(&pre(&w, Some(&w.alice)).await.unwrap()), ids(&got));
    assert_eq!(fake.count("/chat/completions"), 1);
}

/// A call that takes over a lapsed claim after waiting, and whose provider never answers, still
/// ends within the action time limit with the local heuristics' ideas: the provider call ends
/// `store_margin_ms` before the limit, whatever is left of its own time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_falls_back_within_the_action_limit() {
    let fake = Fake::start().await;
    let mut settings = fake.settings();
    // Longer than the action may run: only the action's deadline ends the call.
    settings.request_timeout = Duration::from_secs(30);
    settings.max_retries = 0;
    let mut c = config(&fake, 0);
    c.ai.service = AiService::new(Arc::new(fake.provider(settings)));
    c.ai.generation_lease_ms = 1_500;
    c.ai.generation_wait_ms = 3_000;
    c.ai.store_margin_ms = 1_000;
    let engine = EngineConfig {
        max_action_time: Duration::from_secs(4),
        ..EngineConfig::default()
    };
    let w = world_with(c, engine).await;
    enable(&w.env.engine, &w.alice, "precall/ai").await;
    // Alice's call claims the generation and dies before asking the provider.
    let claimed = w
        .env
        .m(
            "prompts.beginPreCall",
            obj! { "meetingId" => w.meeting.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&claimed, "kind"), "claimed");
    fake.hold();
    // Bob's call waits for the claim to lapse (1.5 s), takes it over and asks the provider,
    // which holds the request: 4 s in all would pass before a 30 s request timed out.
    let started = std::time::Instant::now();
    let prompts = pre(&w, Some(&w.bob)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.count("/chat/completions"), 1);
    let prompts = prompts.as_array().unwrap();
    assert!(!prompts.is_empty());
    for p in prompts {
        assert_eq!(s(p, "provenance.provider"), "local");
        assert!(s(p, "provenance.fallbackReason").contains("out of time"));
    }
    fake.release();
    // Stored: the next call gets them without asking.
    assert_eq!(
        ids(&pre(&w, Some(&w.alice)).await.unwrap()),
        ids(&Value::Array(prompts.to_vec()))
    );
    assert_eq!(fake.count("/chat/completions"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_are_listed_by_relevance_and_take_feedback_from_participants() {
    let w = world(LinkedUpConfig::default()).await;
    for key in ["precall/ai", "incall/ai"] {
        enable(&w.env.engine, &w.alice, key).await;
    }
    pre(&w, Some(&w.alice)).await.unwrap();
    let incall = in_call(&w, &w.bob, context("", &["roadmap"], true))
        .await
        .unwrap();
    // The local provider (the default) made them.
    assert_eq!(
        s(&incall.as_array().unwrap()[0], "provenance.provider"),
        "local"
    );

    let list = |who: Identity, t: Option<&'static str>| {
        let m = w.meeting.clone();
        let env = &w.env;
        async move {
            let mut args = obj! { "meetingId" => m.as_str() };
            if let Some(t) = t {
                args.as_object_mut()
                    .unwrap()
                    .insert("type".into(), t.into());
            }
            env.q("prompts.list", args, Some(&who)).await
        }
    };
    let all = list(w.bob.clone(), None).await.unwrap();
    let all = all.as_array().unwrap().to_vec();
    let relevances: Vec<f64> = all
        .iter()
        .map(|p| p.get_path("relevance").and_then(Value::as_f64).unwrap())
        .collect();
    assert!(
        relevances.windows(2).all(|r| r[0] >= r[1]),
        "{relevances:?}"
    );
    let only_in = list(w.bob.clone(), Some("incall")).await.unwrap();
    assert!(only_in
        .as_array()
        .unwrap()
        .iter()
        .all(|p| s(p, "type") == "incall"));
    assert_eq!(
        only_in.as_array().unwrap().len()
            + list(w.bob.clone(), Some("precall"))
                .await
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
        all.len()
    );
    expect_code(list(w.carol.clone(), None).await, "NOT_FOUND");
    expect_code(list(w.dave.clone(), None).await, "NOT_FOUND");

    let prompt = id(&all[0]);
    let used = w
        .env
        .m(
            "prompts.recordFeedback",
            obj! { "promptId" => prompt.as_str(), "feedback" => "used" },
            Some(&w.bob),
        )
        .await
        .unwrap();
    assert_eq!(s(&used, "feedback"), "used");
    let used_at = used.get_path("usedAt").and_then(Value::as_i64).unwrap();
    let upvoted = w
        .env
        .m(
            "prompts.recordFeedback",
            obj! { "promptId" => prompt.as_str(), "feedback" => "upvoted" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&upvoted, "feedback"), "upvoted");
    assert_eq!(
        upvoted.get_path("usedAt").and_then(Value::as_i64),
        Some(used_at)
    );
    let env = &w.env;
    let dismiss = |who: &Identity| {
        let (who, args) = (
            who.clone(),
            obj! { "promptId" => prompt.as_str(), "feedback" => "dismissed" },
        );
        async move { env.m("prompts.recordFeedback", args, Some(&who)).await }
    };
    // To an outsider the prompt is missing, exactly as a deleted one is to anyone.
    let carols = expect_code(dismiss(&w.carol).await, "NOT_FOUND");
    expect_code(
        w.env
            .m(
                "prompts.recordFeedback",
                obj! { "promptId" => prompt.as_str(), "feedback" => "loved" },
                Some(&w.bob),
            )
            .await,
        "VALIDATION_ERROR",
    );
    let p = prompt.clone();
    w.env
        .engine
        .transact(move |ctx| ctx.delete("prompts", &p).map(|_| Value::Null))
        .await
        .unwrap();
    let gone = expect_code(dismiss(&w.bob).await, "NOT_FOUND");
    assert_eq!(carols, gone);
}
