//! `meetings.streamCallToken`: participants of an active meeting get a Stream token for its
//! call only, signed with the API secret; everyone else, other meeting states, the
//! `stream/paused` switch, the rate limit and a server without a secret are refused.

mod linkedup_common;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use linkedup_common::*;
use linkedup_server::linkedup::rate_limit::{RateLimit, RateLimitConfig};
use linkedup_server::linkedup::LinkedUpConfig;
use linkedup_server::stream::tokens::CallClaims;
use linkedup_server::stream::{Secret, StreamConfig};
use query_engine::obj;
use query_engine::value::Value;

const TOKEN: &str = "meetings.streamCallToken";
const SECRET: &str = "call-token-test-secret";

fn configured(max_tokens: i64) -> LinkedUpConfig {
    LinkedUpConfig {
        stream: StreamConfig {
            webhook_secret: Some(Secret::new(SECRET)),
            api_key: Some("the-key".into()),
            call_token_ttl: Duration::from_secs(600),
            ..StreamConfig::default()
        },
        rate_limits: RateLimitConfig {
            stream_call_tokens: RateLimit {
                max: max_tokens,
                window_ms: 60_000,
            },
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    }
}

fn claims(token: &str, secret: &[u8]) -> Option<CallClaims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<CallClaims>(token, &DecodingKey::from_secret(secret), &validation)
        .ok()
        .map(|d| d.claims)
}

async fn set_paused(w: &World, on: bool) {
    w.env
        .m(
            "flags.setGlobal",
            obj! {
                "key" => "stream/paused", "environment" => "local", "value" => on,
                "reason" => "Stream outage", "operatorUserId" => w.alice_id.as_str(),
            },
            None,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_gets_a_token_for_this_call_only() {
    let w = world(configured(30)).await;
    let m = w.meeting.as_str();
    let t = w
        .env
        .call(TOKEN, obj! { "meetingId" => m }, Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(s(&t, "apiKey"), "the-key");
    assert_eq!(s(&t, "callType"), "default");
    assert_eq!(s(&t, "callId"), m);
    assert_eq!(s(&t, "callCid"), format!("default:{m}"));
    assert_eq!(s(&t, "userId"), w.bob_id);
    let c = claims(&s(&t, "token"), SECRET.as_bytes()).expect("signed with the API secret");
    assert_eq!(c.user_id, w.bob_id);
    assert_eq!(c.call_cids, vec![format!("default:{m}")]);
    assert_eq!(c.exp - c.iat, 600);
    assert_eq!(
        t.get_path("expiresAt").and_then(Value::as_i64),
        Some(c.exp * 1_000)
    );
    assert!(claims(&s(&t, "token"), b"another secret").is_none());
    // The host too, each with their own user id.
    let t = w
        .env
        .call(TOKEN, obj! { "meetingId" => m }, Some(&w.alice))
        .await
        .unwrap();
    assert_eq!(
        claims(&s(&t, "token"), SECRET.as_bytes()).unwrap().user_id,
        w.alice_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_participants_of_active_meetings_get_tokens() {
    let w = world(configured(30)).await;
    let m = w.meeting.as_str();
    expect_code(
        w.env
            .call(TOKEN, obj! { "meetingId" => m }, Some(&w.carol))
            .await,
        "NOT_FOUND",
    );
    expect_code(
        w.env.call(TOKEN, obj! { "meetingId" => m }, None).await,
        "UNAUTHORIZED",
    );
    expect_code(
        w.env
            .call(
                TOKEN,
                obj! { "meetingId" => w.bob_id.as_str() },
                Some(&w.bob),
            )
            .await,
        "VALIDATION_ERROR",
    );
    let later = w.scheduled().await;
    let e = expect_code(
        w.env
            .call(TOKEN, obj! { "meetingId" => later.as_str() }, Some(&w.bob))
            .await,
        "MEETING_NOT_ACTIVE",
    );
    assert_eq!(
        e.data.get_path("state").and_then(Value::as_str),
        Some("scheduled")
    );
    w.end_meeting().await;
    expect_code(
        w.env
            .call(TOKEN, obj! { "meetingId" => m }, Some(&w.bob))
            .await,
        "MEETING_NOT_ACTIVE",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outage_switch_and_the_rate_limit_stop_minting() {
    let w = world(configured(3)).await;
    let args = || obj! { "meetingId" => w.meeting.as_str() };
    w.env.call(TOKEN, args(), Some(&w.bob)).await.unwrap();
    set_paused(&w, true).await;
    let e = expect_code(
        w.env.call(TOKEN, args(), Some(&w.bob)).await,
        "PROVIDER_ERROR",
    );
    assert_eq!(
        e.data.get_path("reason").and_then(Value::as_str),
        Some("streamPaused")
    );
    set_paused(&w, false).await;
    // A paused refusal counted nothing: two more fit the limit of three.
    w.env.call(TOKEN, args(), Some(&w.bob)).await.unwrap();
    w.env.call(TOKEN, args(), Some(&w.bob)).await.unwrap();
    expect_code(
        w.env.call(TOKEN, args(), Some(&w.bob)).await,
        "RATE_LIMITED",
    );
    // Per user: alice still gets hers.
    w.env.call(TOKEN, args(), Some(&w.alice)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_stream_secret_mints_nothing() {
    let w = world(LinkedUpConfig::default()).await;
    let e = expect_code(
        w.env
            .call(
                TOKEN,
                obj! { "meetingId" => w.meeting.as_str() },
                Some(&w.bob),
            )
            .await,
        "PROVIDER_ERROR",
    );
    assert_eq!(
        e.data.get_path("reason").and_then(Value::as_str),
        Some("notConfigured")
    );
}
