//! The Stream REST client against a fake Stream API on 127.0.0.1: the request shape (path,
//! `api_key`, a server JWT verifiable with the secret, the get-or-create body), retries on
//! 429/5xx/unreachability only, the response size limit, and errors that never carry the
//! secret.

mod stream_common;

use std::time::Duration;

use linkedup_server::stream::{RoomMember, RoomProvider, RoomRequest, StreamClient, StreamError};
use serde_json::json;
use stream_common::*;

fn request(meeting: &str) -> RoomRequest {
    RoomRequest {
        meeting_id: meeting.into(),
        created_by: "alice".into(),
        members: vec![
            RoomMember {
                user_id: "alice".into(),
                name: Some("Alice".into()),
                host: true,
            },
            RoomMember {
                user_id: "bob".into(),
                name: None,
                host: false,
            },
        ],
        title: "Standup".into(),
        org_id: Some("org1".into()),
    }
}

fn provider(fake: &FakeStream) -> RoomProvider {
    RoomProvider::Stream(StreamClient::new(fake.settings()).unwrap())
}

#[tokio::test]
async fn get_or_create_sends_stream_s_request_shape() {
    let fake = FakeStream::start().await;
    let room = provider(&fake).create_room(&request("m1")).await.unwrap();
    assert_eq!(room, "default:m1");

    let requests = fake.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/api/v2/users", "/api/v2/video/call/default/m1"]);
    for r in &requests {
        assert_eq!(r.api_key.as_deref(), Some(API_KEY));
        assert_eq!(r.auth_type.as_deref(), Some("jwt"));
        // The server token: HS256 over {"server": true} with the API secret, no expiry.
        let token = r.authorization.as_deref().unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(API_SECRET.as_bytes()),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims, json!({ "server": true }));
        assert!(jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(b"another secret"),
            &validation,
        )
        .is_err());
    }
    assert_eq!(
        requests[0].body,
        json!({ "users": { "alice": { "id": "alice", "name": "Alice" }, "bob": { "id": "bob" } } })
    );
    assert_eq!(
        requests[1].body,
        json!({ "data": {
            "created_by_id": "alice",
            "members": [{ "user_id": "alice", "role": "host" }, { "user_id": "bob" }],
            "custom": { "meetingId": "m1", "title": "Standup", "orgId": "org1" },
        }})
    );
}

#[tokio::test]
async fn overload_and_server_errors_are_retried_with_backoff() {
    let fake = FakeStream::start().await;
    let mut throttled = Reply::status(429);
    throttled.retry_after_secs = Some(0);
    fake.script([throttled, Reply::status(500)]);
    let room = provider(&fake).create_room(&request("m2")).await.unwrap();
    assert_eq!(room, "default:m2");
    assert_eq!(fake.calls().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_become_provider_errors() {
    let fake = FakeStream::start().await;
    fake.script([Reply::status(400)]);
    let err = provider(&fake)
        .create_room(&request("m3"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StreamError::Api { status: 400, message } if message == "scripted 400"),
        "{err:?}"
    );
    assert_eq!(fake.calls().len(), 1);
    let e = err.to_function_error();
    assert_eq!(e.code, "PROVIDER_ERROR");
    assert_eq!(
        e.data.get_path("status").and_then(|v| v.as_i64()),
        Some(400)
    );
    assert!(!format!("{e:?}").contains(API_SECRET));

    // Unauthorized (a wrong secret at Stream) is a client error too.
    fake.script([Reply::status(401)]);
    let err = provider(&fake)
        .create_room(&request("m3"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StreamError::Api { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(fake.calls().len(), 2);
}

#[tokio::test]
async fn retries_are_bounded() {
    let fake = FakeStream::start().await;
    fake.script(vec![Reply::status(503); 5]);
    let err = provider(&fake)
        .create_room(&request("m4"))
        .await
        .unwrap_err();
    match &err {
        StreamError::GaveUp { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(matches!(**last, StreamError::Api { status: 503, .. }));
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert_eq!(fake.calls().len(), 3);
    assert_eq!(err.to_function_error().code, "PROVIDER_ERROR");
}

#[tokio::test]
async fn slow_or_unreachable_stream_is_retried_then_reported() {
    // A reply slower than the request timeout.
    let fake = FakeStream::start().await;
    let mut slow = Reply::ok("{}");
    slow.delay = Duration::from_secs(2);
    fake.script([slow]);
    let room = provider(&fake).create_room(&request("m5")).await.unwrap();
    assert_eq!(room, "default:m5", "the second attempt succeeds");
    assert_eq!(fake.calls().len(), 2);

    // Nobody listening.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut settings = fake.settings();
    settings.base_url = format!("http://{closed}");
    let err = StreamClient::new(settings)
        .unwrap()
        .get_or_create_call(&request("m5"))
        .await
        .unwrap_err();
    match &err {
        StreamError::GaveUp { attempts: 3, last } => {
            assert!(matches!(**last, StreamError::Transport(_)), "{last:?}")
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert!(!err.to_string().contains(API_KEY), "{err}");
}

#[tokio::test]
async fn oversized_or_unexpected_responses_are_refused() {
    let fake = FakeStream::start().await;
    let mut settings = fake.settings();
    settings.max_response_bytes = 1024;
    let client = StreamClient::new(settings).unwrap();
    fake.script([Reply::ok("x".repeat(4096))]);
    let err = client.get_or_create_call(&request("m6")).await.unwrap_err();
    assert!(
        matches!(err, StreamError::TooLarge { limit: 1024 }),
        "{err:?}"
    );
    assert_eq!(fake.calls().len(), 1, "not retried");

    fake.script([Reply::ok(r#"{"call":{"cid":"default:someone-else"}}"#)]);
    let err = client.get_or_create_call(&request("m6")).await.unwrap_err();
    assert!(matches!(err, StreamError::BadResponse(_)), "{err:?}");
    fake.script([Reply::ok("not json")]);
    let err = client.get_or_create_call(&request("m6")).await.unwrap_err();
    assert!(matches!(err, StreamError::BadResponse(_)), "{err:?}");
}
