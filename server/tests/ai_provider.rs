//! The OpenAI-compatible client against a fake API on 127.0.0.1: request shape and bearer key,
//! retries (429 with Retry-After, 5xx, timeouts) and their bound, the caller's deadline, no
//! retry on 4xx, strict
//! rejection of malformed or out-of-range answers (described without quoting them), the
//! response size cap, embeddings ordered by index, and the service's fallback to the local
//! heuristics.

mod ai_common;

use std::sync::Arc;
use std::time::Duration;

use ai_common::*;
use linkedup_server::ai::{
    AiError, AiProvider, AiService, ParticipantProfile, PostCallRequest, PreCallRequest,
    TranscriptPiece,
};
use serde_json::json;
use tokio::time::Instant;

fn pre_call() -> PreCallRequest {
    PreCallRequest {
        title: "Launch review".into(),
        description: None,
        participants: vec![ParticipantProfile {
            user_id: "u1".into(),
            name: "Alice".into(),
            bio: None,
            goals: Some("ship the launch".into()),
            experience: None,
            interests: vec!["Rust".into()],
        }],
    }
}

fn post_call() -> PostCallRequest {
    PostCallRequest {
        title: "Launch review".into(),
        description: None,
        transcript: vec![TranscriptPiece {
            speaker: Some("u1".into()),
            text: "I will send the launch plan.".into(),
        }],
        notes: None,
        participants: pre_call().participants,
        for_user: "u1".into(),
    }
}

/// A deadline no call in these tests comes near.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn service(fake: &Fake) -> AiService {
    AiService::new(Arc::new(fake.provider(fake.settings())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_call_sends_the_key_as_bearer_and_asks_for_json() {
    let fake = Fake::start().await;
    let g = service(&fake)
        .pre_call_ideas(&pre_call(), deadline())
        .await
        .unwrap();
    assert_eq!(g.provider, "openai");
    assert_eq!(g.model, "gpt-4o-mini");
    assert_eq!(g.fallback_reason, None);
    assert_eq!(g.value[0].content, "Ask about the launch plan");
    assert_eq!(g.value[0].relevance, 0.9);
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    assert_eq!(r.body["model"], "gpt-4o-mini");
    assert_eq!(r.body["response_format"], json!({"type": "json_object"}));
    assert!(r.body["temperature"].is_number() && r.body["max_tokens"].is_number());
    assert_eq!(r.body["messages"][0]["role"], "system");
    let user: serde_json::Value =
        serde_json::from_str(r.body["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(user["title"], "Launch review");
    assert_eq!(user["participants"][0]["goals"], "ship the launch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after_and_then_succeeds() {
    let fake = Fake::start().await;
    fake.script([
        Reply::Json(
            429,
            json!({"error": {"code": "rate_limit_exceeded"}}),
            Some(0),
        ),
        Reply::Default,
    ]);
    let p = fake.provider(fake.settings());
    let ideas = p.pre_call_ideas(&pre_call(), deadline()).await.unwrap();
    assert_eq!(ideas.len(), 2);
    assert_eq!(fake.count("/chat/completions"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_a_bounded_number_of_times_then_reported() {
    let fake = Fake::start().await;
    fake.always(status(500));
    let mut settings = fake.settings();
    settings.max_retries = 2;
    let p = fake.provider(settings);
    let e = p.pre_call_ideas(&pre_call(), deadline()).await.unwrap_err();
    assert!(matches!(e, AiError::Status { status: 500, .. }), "{e:?}");
    assert_eq!(fake.count("/chat/completions"), 3);
    let e = e.into_function_error("openai");
    assert_eq!(e.code, "PROVIDER_ERROR");
    assert!(e.message.contains("HTTP 500"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried_and_never_echo_the_key() {
    let fake = Fake::start().await;
    fake.always(Reply::Json(
        401,
        json!({"error": {
            "message": format!("Incorrect API key provided: {KEY}"),
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }}),
        None,
    ));
    let p = fake.provider(fake.settings());
    let e = p
        .post_call_insight(&post_call(), deadline())
        .await
        .unwrap_err();
    assert_eq!(fake.count("/chat/completions"), 1);
    let text = e.to_string();
    assert!(
        text.contains("401") && text.contains("invalid_api_key"),
        "{text}"
    );
    let e = e.into_function_error("openai");
    assert!(!e.message.contains(KEY) && !format!("{:?}", e.data).contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_is_retried() {
    let fake = Fake::start().await;
    fake.script([
        Reply::Delay(Duration::from_secs(2), Box::new(Reply::Default)),
        Reply::Default,
    ]);
    let mut settings = fake.settings();
    settings.request_timeout = Duration::from_millis(300);
    let p = fake.provider(settings);
    let ideas = p.pre_call_ideas(&pre_call(), deadline()).await.unwrap();
    assert_eq!(ideas[0].content, "Ask about the launch plan");
    assert_eq!(fake.count("/chat/completions"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ends_by_its_callers_deadline() {
    let fake = Fake::start().await;
    fake.hold();
    let mut settings = fake.settings();
    settings.request_timeout = Duration::from_secs(30);
    let p = fake.provider(settings);
    let started = Instant::now();
    let e = p
        .pre_call_ideas(&pre_call(), started + Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, AiError::Transport(_)), "{e:?}");
    assert!(e.to_string().contains("out of time"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    fake.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_rejected() {
    let fake = Fake::start().await;
    let p = fake.provider(fake.settings());
    let cases = [
        Reply::Raw(200, "not json".into()),
        Reply::Json(
            200,
            json!({"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}]}),
            None,
        ),
        Reply::Json(200, json!({"choices": []}), None),
        // An unknown key: the shape asked for is exact.
        Reply::Json(
            200,
            chat(json!({"prompts": [{"content": "x", "tags": [], "relevance": 0.5}], "extra": 1})),
            None,
        ),
        // Cut off at max_tokens.
        Reply::Json(
            200,
            json!({"choices": [{"message": {"content": "{\"prompts\": []}"}, "finish_reason": "length"}]}),
            None,
        ),
        // A relevance that is not a number.
        Reply::Json(
            200,
            chat(json!({"prompts": [{"content": "x", "tags": [], "relevance": "high"}]})),
            None,
        ),
    ];
    let n = cases.len();
    fake.script(cases);
    for i in 0..n {
        let e = p.pre_call_ideas(&pre_call(), deadline()).await.unwrap_err();
        assert!(matches!(e, AiError::Malformed(_)), "case {i}: {e:?}");
    }
    assert_eq!(fake.count("/chat/completions"), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_answers_are_rejected_and_prompts_fall_back_to_the_local_heuristics() {
    let fake = Fake::start().await;
    let service = service(&fake);
    fake.script([Reply::Json(
        200,
        chat(json!({"prompts": [{"content": "x", "tags": [], "relevance": 1.5}]})),
        None,
    )]);
    let g = service
        .pre_call_ideas(&pre_call(), deadline())
        .await
        .unwrap();
    assert_eq!(g.provider, "local");
    let reason = g.fallback_reason.unwrap();
    assert!(reason.contains("relevance"), "{reason}");
    // The local ideas are about this meeting.
    assert!(g
        .value
        .iter()
        .any(|i| i.content.contains("ship the launch")));

    for bad in [
        json!({"summary": "ok", "actionItems": [], "recommendations": [
            {"type": "connection", "content": "x", "confidence": 2.0}]}),
        json!({"summary": "ok", "actionItems": [], "recommendations": [
            {"type": "spam", "content": "x", "confidence": 0.5}]}),
        json!({"summary": "", "actionItems": [], "recommendations": []}),
        json!({"summary": "ok", "actionItems": vec!["x"; 16], "recommendations": []}),
    ] {
        fake.script([Reply::Json(200, chat(bad.clone()), None)]);
        let e = service
            .try_post_call_insight(&post_call(), deadline())
            .await
            .unwrap_err();
        assert!(matches!(e, AiError::Invalid(_)), "{bad}: {e:?}");
    }
    // A provider that is down: the same fallback, saying why.
    fake.always(status(503));
    let g = service
        .pre_call_ideas(&pre_call(), deadline())
        .await
        .unwrap();
    assert_eq!(g.provider, "local");
    assert!(g.fallback_reason.unwrap().contains("HTTP 503"));
}

/// What the model wrote can be the profiles, transcripts and notes it was sent: errors (logged,
/// and stored as fallback reasons) describe a bad answer without quoting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_about_bad_answers_do_not_quote_them() {
    const SECRET: &str = "SECRET-PII Alice is moving to Berlin";
    let fake = Fake::start().await;
    let service = service(&fake);
    let p = fake.provider(fake.settings());
    let cases = [
        // A wrong-typed field of the content: serde's message quotes the whole string.
        chat(json!({ "prompts": SECRET })),
        chat(json!({"prompts": [{"content": "x", "tags": [], "relevance": SECRET}]})),
        // A key the shape does not have.
        chat(json!({ "prompts": [], SECRET: 1 })),
        // A completion of the wrong shape.
        json!({ "choices": SECRET }),
    ];
    for body in cases.clone() {
        fake.script([Reply::Json(200, body.clone(), None)]);
        let e = p.pre_call_ideas(&pre_call(), deadline()).await.unwrap_err();
        assert!(matches!(e, AiError::Malformed(_)), "{body}: {e:?}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
    for body in cases {
        fake.script([Reply::Json(200, body, None)]);
        let g = service
            .pre_call_ideas(&pre_call(), deadline())
            .await
            .unwrap();
        assert_eq!(g.provider, "local");
        let reason = g.fallback_reason.unwrap();
        assert!(
            reason.contains("not the JSON asked for") || reason.contains("not a chat completion"),
            "{reason}"
        );
        assert!(!reason.contains("SECRET"), "{reason}");
    }
    // A recommendation of a kind not offered.
    fake.script([Reply::Json(
        200,
        chat(
            json!({"summary": "ok", "actionItems": [], "recommendations": [
            {"type": SECRET, "content": "x", "confidence": 0.5}]}),
        ),
        None,
    )]);
    let e = service
        .try_post_call_insight(&post_call(), deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, AiError::Invalid(_)), "{e:?}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
    // Embeddings of the wrong shape.
    fake.script([Reply::Json(200, json!({ "data": SECRET }), None)]);
    let e = service
        .embed(None, &["rust".to_string()], deadline())
        .await
        .unwrap_err();
    assert_eq!(e.code, "PROVIDER_ERROR");
    assert!(!e.message.contains("SECRET"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_responses_are_refused_without_retry() {
    let fake = Fake::start().await;
    let mut settings = fake.settings();
    settings.max_response_bytes = 1_024;
    let p = fake.provider(settings);
    fake.always(Reply::Json(
        200,
        chat(json!({"prompts": [{"content": "x".repeat(5_000), "tags": [], "relevance": 0.5}]})),
        None,
    ));
    let e = p.pre_call_ideas(&pre_call(), deadline()).await.unwrap_err();
    assert!(matches!(e, AiError::TooLarge { max_bytes: 1_024 }), "{e:?}");
    assert_eq!(fake.count("/chat/completions"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_ordered_by_index_checked_and_normalised() {
    let fake = Fake::start().await;
    let service = service(&fake);
    let texts: Vec<String> = ["rust", "databases", "gardening"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let e = service.embed(None, &texts, deadline()).await.unwrap();
    assert_eq!(e.provider, "openai");
    assert_eq!(e.model, "text-embedding-3-small");
    assert_eq!(e.vectors.len(), 3);
    // The fake lists input k's vector as (k+1, ..., k+8), in reverse order.
    for (k, v) in e.vectors.iter().enumerate() {
        let raw: Vec<f64> = (0..8).map(|i| (k + i + 1) as f64).collect();
        let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (x, r) in v.iter().zip(&raw) {
            assert!((x - r / norm).abs() < 1e-12);
        }
    }
    let r = &fake.requests()[0];
    assert_eq!(r.path, "/v1/embeddings");
    assert_eq!(r.body["model"], "text-embedding-3-small");
    assert_eq!(r.body["input"], json!(["rust", "databases", "gardening"]));

    for bad in [
        json!({"data": [{"index": 0, "embedding": [1.0]}]}),
        json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}),
        json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 5, "embedding": [1.0]}]}),
        json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]}),
        json!({"data": [{"index": 0, "embedding": [0.0]}, {"index": 1, "embedding": [1.0]}]}),
    ] {
        fake.script([Reply::Json(200, bad.clone(), None)]);
        let e = service
            .embed(None, &texts[..2], deadline())
            .await
            .expect_err(&bad.to_string());
        assert_eq!(e.code, "PROVIDER_ERROR", "{bad}: {e}");
    }
}
