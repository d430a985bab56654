//! End to end: a real server on 127.0.0.1 whose AI configuration comes from its command-line
//! options, pointing at a fake OpenAI-compatible API, used through the SDK by a host, a
//! participant and an outsider: pre-call ideas, in-call prompts, the post-call insight
//! appearing live for its owner, and a profile embedding.

mod ai_common;

use std::time::Duration;

use ai_common::*;
use clap::Parser;
use futures::StreamExt;
use linkedup_client::{Client, ClientOptions, Subscription, Trust};
use linkedup_server::ai::AiConfig;
use linkedup_server::auth::DevClaims;
use linkedup_server::config::Cli;
use linkedup_server::linkedup::flags::Environment;
use linkedup_server::linkedup::{self, LinkedUpConfig};
use linkedup_server::{RunningServer, Server, ServerConfig};
use query_engine::functions::Functions;
use query_engine::value::Value;
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

async fn connect(server: &RunningServer, subject: &str, role: &str) -> Client {
    let mut claims = DevClaims::new(subject);
    claims.org_id = Some("org1".into());
    claims.org_role = Some(role.into());
    let mut options = ClientOptions::new(Trust::PinnedSha256(server.cert_fingerprint().0));
    options.connect_timeout = Duration::from_secs(5);
    let options = options.with_token(server.mint_dev_token(claims).unwrap());
    let client = Client::connect(&server.quic_connect_addr().to_string(), options)
        .await
        .unwrap();
    let _: Value = client
        .mutation("users.ensure", &json!({"displayName": subject}))
        .await
        .unwrap();
    client
}

async fn next(sub: &mut Subscription) -> Value {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("no result in time")
        .expect("subscription ended")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_functions_work_through_the_sdk_against_the_configured_provider() {
    let fake = Fake::start().await;
    let cli = Cli::try_parse_from([
        "linkedup-server",
        "--ai-base-url",
        &fake.base_url,
        "--ai-api-key",
        KEY,
        "--ai-max-retries",
        "0",
        "--environment",
        "staging",
    ])
    .unwrap();
    let options = cli.options.layered().unwrap();
    let config = LinkedUpConfig {
        environment: Environment::from_options(&options).unwrap(),
        ai: AiConfig::from_options(&options).unwrap(),
        ..LinkedUpConfig::default()
    };
    let mut functions = Functions::new();
    linkedup::register(&mut functions, &config);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::for_tests(dir.path()),
        linkedup_schema::schema(),
        functions,
    )
    .await
    .unwrap();

    let alice = connect(&server, "alice", "admin").await;
    let bob = connect(&server, "bob", "member").await;
    let carol = connect(&server, "carol", "member").await;
    let bob_user: Value = bob.query("users.me", &json!({})).await.unwrap();
    let bob_id = bob_user
        .get_path("_id")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    let meeting: Value = alice
        .mutation(
            "meetings.schedule",
            &json!({"title": "Launch review", "inviteeIds": [bob_id]}),
        )
        .await
        .unwrap();
    let meeting = meeting.as_str().unwrap().to_string();
    for key in ["precall/ai", "incall/ai", "insights/postcall"] {
        let _: Value = alice
            .mutation(
                "flags.set",
                &json!({"key": key, "environment": "staging", "value": true, "reason": "e2e"}),
            )
            .await
            .unwrap();
    }

    // Before the call: ideas from the provider, live in the participants' list.
    let mut listed = bob
        .subscribe("prompts.list", &json!({"meetingId": meeting}))
        .unwrap();
    assert_eq!(next(&mut listed).await, Value::Array(Vec::new()));
    let ideas: Value = bob
        .action("prompts.generatePreCall", &json!({"meetingId": meeting}))
        .await
        .unwrap();
    assert_eq!(ideas.as_array().unwrap().len(), 2);
    let live = next(&mut listed).await;
    assert_eq!(
        live.as_array().unwrap()[0]
            .get_path("content")
            .and_then(Value::as_str),
        Some("Ask about the launch plan")
    );
    let e = carol
        .action::<_, Value>("prompts.generatePreCall", &json!({"meetingId": meeting}))
        .await
        .unwrap_err();
    // Carol takes no part: the meeting is hidden from her.
    assert_eq!(e.code(), Some("NOT_FOUND"), "{e}");

    // During the call.
    let _: Value = alice
        .mutation("meetings.start", &json!({"meetingId": meeting}))
        .await
        .unwrap();
    let prompts: Value = bob
        .action(
            "prompts.generateInCall",
            &json!({"meetingId": meeting, "context": {
                "recentTranscript": "What blocks the launch?",
                "currentTopics": ["launch"],
                "lullDetected": true,
            }}),
        )
        .await
        .unwrap();
    assert_eq!(
        prompts.as_array().unwrap()[0]
            .get_path("type")
            .and_then(Value::as_str),
        Some("incall")
    );
    let _: Value = bob
        .mutation(
            "transcripts.ingestChunk",
            &json!({"meetingId": meeting, "chunkId": "c1", "speakerId": bob_id,
                    "text": "I will send the launch plan.", "confidence": 0.9,
                    "startMs": 0, "endMs": 1000}),
        )
        .await
        .unwrap();

    // After the call: Bob's insight appears in his subscription.
    let mut insight = bob
        .subscribe("insights.forMeeting", &json!({"meetingId": meeting}))
        .unwrap();
    assert_eq!(next(&mut insight).await, Value::Null);
    let _: Value = alice
        .mutation("meetings.end", &json!({"meetingId": meeting}))
        .await
        .unwrap();
    let mine = next(&mut insight).await;
    assert_eq!(
        mine.get_path("summary").and_then(Value::as_str),
        Some("The team agreed to ship the launch plan.")
    );
    assert_eq!(
        mine.get_path("userId").and_then(Value::as_str),
        Some(&*bob_id)
    );

    // A profile embedding from the provider's embeddings endpoint.
    let _: Value = bob
        .mutation("profiles.update", &json!({"bio": "Launch engineering"}))
        .await
        .unwrap();
    let embedded: Value = bob
        .action("embeddings.refreshMine", &json!({}))
        .await
        .unwrap();
    assert_eq!(embedded.get_path("dimensions"), Some(&Value::from(8i64)));

    // One provider call per generation and participant, each with the key.
    assert_eq!(fake.count("/chat/completions"), 4);
    assert_eq!(fake.count("/embeddings"), 1);
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&*format!("Bearer {KEY}"))));

    drop((listed, insight));
    for c in [alice, bob, carol] {
        c.close().await;
    }
    server.shutdown().await;
}
