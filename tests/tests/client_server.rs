//! End-to-end: real SDK clients against a real server on 127.0.0.1 — every kind of call,
//! errors as they cross the wire, subscriptions shared by several clients, and authentication
//! (token refresh, expired / forged / wrong-audience tokens).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use linkedup_client::{CallKind, Client, ClientError, Subscription, TokenRefresher, Trust};
use linkedup_server::auth::{AuthConfig, DevClaims, DevIssuer};
use linkedup_server::config::{DEV_AUDIENCE, DEV_ISSUER};
use query_engine::obj;
use query_engine::value::Value;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// Guards against a hung test; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);

async fn next(sub: &mut Subscription) -> Result<Value, ClientError> {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("no result in time")
        .expect("subscription ended")
}

/// Reads results until one satisfies `done`; returns every result read.
async fn until(sub: &mut Subscription, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = next(sub).await.unwrap();
        let stop = done(&v);
        seen.push(v);
        if stop {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_every_kind_and_their_errors() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let info = client.server_info().unwrap();
    assert_eq!(info.protocol_version, 1);
    assert!(!info.session_id.is_empty());

    let n: i64 = client
        .mutation("counter:add", &json!({"name": "a", "by": 2}))
        .await
        .unwrap();
    assert_eq!(n, 2);
    let n: i64 = client
        .query("counter:get", &json!({"name": "a"}))
        .await
        .unwrap();
    assert_eq!(n, 2);

    #[derive(Deserialize, Debug, PartialEq)]
    struct Echo {
        value: Vec<f64>,
        count: i64,
    }
    let echo: Echo = client
        .action("echo", &json!({"value": [1.5, 2.5]}))
        .await
        .unwrap();
    assert_eq!(
        echo,
        Echo {
            value: vec![1.5, 2.5],
            count: 1
        }
    );

    // Raw calls keep int64 and float64 apart and report the timestamp.
    let reply = client
        .call(
            CallKind::Action,
            "echo",
            obj! {"value" => obj!{"i" => 1i64, "f" => 1.0f64}},
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.value.get_path("value.i"), Some(&Value::Int64(1)));
    assert_eq!(reply.value.get_path("value.f"), Some(&Value::Float64(1.0)));
    let q = client
        .call(
            CallKind::Query,
            "counter:get",
            obj! {"name" => "echo"},
            None,
        )
        .await
        .unwrap();
    assert_eq!(q.value, Value::Int64(2));
    assert!(q.ts >= reply.ts);
    assert!(client.last_seen_ts().unwrap() >= q.ts);

    // A function's own error, with code, message and data.
    match client.mutation::<_, Value>("fail:always", &json!({})).await {
        Err(ClientError::Function {
            code,
            message,
            data,
        }) => {
            assert_eq!(code, "CONFLICT");
            assert_eq!(message, "always conflicts");
            assert_eq!(data, obj! {"reason" => "test"});
        }
        other => panic!("expected a function error, got {other:?}"),
    }
    let e = client
        .query::<_, Value>("no:such", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NOT_FOUND"), "{e}");
    let e = client
        .query::<_, Value>("counter:add", &json!({"name": "a", "by": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("VALIDATION_ERROR"), "{e}");
    let e = client
        .query::<_, Value>("counter:get", &json!({"name": 5}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("VALIDATION_ERROR"), "{e}");
    // A result that does not fit the requested type.
    let e = client
        .query::<_, String>("counter:get", &json!({"name": "a"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Decode(_)), "{e}");
    // The failed kind-mismatch query did not run the mutation.
    let n: i64 = client
        .query("counter:get", &json!({"name": "a"}))
        .await
        .unwrap();
    assert_eq!(n, 2);

    assert!(client.ping().await.is_ok());
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificate_pin_is_refused() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let mut options = common::options(&server);
    let mut pin = server.cert_fingerprint().0;
    pin[0] ^= 1;
    options.trust = Trust::PinnedSha256(pin);
    let e = Client::connect(&common::addr(&server), options)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect(_)), "{e}");
    // The dev certificate file pins to the same fingerprint the server reports.
    let pem = std::fs::read(dir.path().join("dev-cert.pem")).unwrap();
    assert_eq!(
        linkedup_client::fingerprint_from_pem(&pem).unwrap(),
        server.cert_fingerprint().0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_see_every_update_in_order() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            Client::connect(&common::addr(&server), common::options(&server))
                .await
                .unwrap(),
        );
    }
    let mut counters = Vec::new();
    let mut lists = Vec::new();
    for c in &clients {
        let mut s = c
            .subscribe("counter:get", &json!({"name": "shared"}))
            .unwrap();
        assert_eq!(next(&mut s).await.unwrap(), Value::Int64(0));
        counters.push(s);
        let mut l = c.subscribe("items:list", &json!({"list": "l"})).unwrap();
        assert_eq!(next(&mut l).await.unwrap(), Value::Array(vec![]));
        lists.push(l);
    }
    // Writes from different clients.
    for (i, c) in clients.iter().enumerate() {
        let _: i64 = c
            .mutation("counter:add", &json!({"name": "shared", "by": 1}))
            .await
            .unwrap();
        let text = format!("item {i} {}", "x".repeat(200));
        let _: String = c
            .mutation(
                "items:add",
                &json!({"list": "l", "n": i as i64, "text": text}),
            )
            .await
            .unwrap();
    }
    for s in &mut counters {
        let seen = until(s, |v| *v == Value::Int64(3)).await;
        let ns: Vec<i64> = seen.iter().map(|v| v.as_i64().unwrap()).collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "went backwards: {ns:?}");
    }
    for l in &mut lists {
        until(l, |v| v.as_array().is_some_and(|a| a.len() == 3)).await;
    }
    // Remove the middle item: every subscriber's list (kept up to date by array diffs) loses it.
    let id = {
        let v: Value = clients[0]
            .query("items:list", &json!({"list": "l"}))
            .await
            .unwrap();
        v.as_array().unwrap()[1]
            .get_path("_id")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    let _: Value = clients[1]
        .mutation("items:remove", &json!({"id": id}))
        .await
        .unwrap();
    for l in &mut lists {
        let seen = until(l, |v| v.as_array().is_some_and(|a| a.len() == 2)).await;
        let last = seen.last().unwrap().as_array().unwrap().to_vec();
        let ns: Vec<i64> = last
            .iter()
            .map(|d| d.get_path("n").unwrap().as_i64().unwrap())
            .collect();
        assert_eq!(ns, vec![0, 2]);
    }
    // A transition moves all of a client's queries together: after its own write, a client's
    // counter and list are both current.
    let _: i64 = clients[2]
        .mutation("counter:add", &json!({"name": "shared", "by": 10}))
        .await
        .unwrap();
    until(&mut counters[2], |v| *v == Value::Int64(13)).await;
    drop(lists);
    drop(counters);
    for c in clients {
        c.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscription_reports_once_and_ends() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let mut anonymous = client.subscribe("me:whoami", &json!({})).unwrap();
    let e = next(&mut anonymous).await.unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    assert!(tokio::time::timeout(PATIENCE, anonymous.next())
        .await
        .unwrap()
        .is_none());
    let mut missing = client.subscribe("no:such", &json!({})).unwrap();
    assert_eq!(
        next(&mut missing).await.unwrap_err().code(),
        Some("NOT_FOUND")
    );
    // The connection is fine afterwards.
    let mut typed = client
        .subscribe_typed::<_, i64>("counter:get", &json!({"name": "z"}))
        .unwrap();
    assert_eq!(
        tokio::time::timeout(PATIENCE, typed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        0
    );
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_keeps_subscriptions() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let options = common::options(&server).with_token(common::token(&server, "user_1"));
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some("user_1"));
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    assert_eq!(next(&mut mine).await.unwrap(), Value::Int64(0));
    let _: i64 = client
        .mutation("counter:add", &json!({"name": "user_1", "by": 1}))
        .await
        .unwrap();
    until(&mut mine, |v| *v == Value::Int64(1)).await;

    // A fresh token for the same user: the subscription carries on.
    let fresh = server
        .mint_dev_token(DevClaims {
            ttl: Duration::from_secs(7200),
            ..DevClaims::new("user_1")
        })
        .unwrap();
    assert_eq!(
        client.set_auth(Some(fresh)).await.unwrap().as_deref(),
        Some("user_1")
    );
    let _: i64 = client
        .mutation("counter:add", &json!({"name": "user_1", "by": 1}))
        .await
        .unwrap();
    until(&mut mine, |v| *v == Value::Int64(2)).await;

    // Another user's token: the same subscription now shows that user's counter.
    let other = common::token(&server, "user_2");
    assert_eq!(
        client.set_auth(Some(other)).await.unwrap().as_deref(),
        Some("user_2")
    );
    until(&mut mine, |v| *v == Value::Int64(0)).await;
    let who: String = client.query("me:whoami", &json!({})).await.unwrap();
    assert_eq!(who, "user_2");

    // Signing out: the query may no longer run, and the subscription ends with the error.
    assert_eq!(client.set_auth(None).await.unwrap(), None);
    let e = next(&mut mine).await.unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"));
    client.close().await;
    server.shutdown().await;
}

/// An RS256 token for `subject` signed with the server's dev issuer key, expiring at Unix
/// time `exp` (issued an hour before).
fn token_expiring_at(dir: &std::path::Path, kid: &str, subject: &str, exp: u64) -> String {
    let pem = std::fs::read(dir.join("dev-issuer-key.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let claims = json!({
        "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": subject,
        "iat": exp - 3600, "exp": exp,
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// An RS256 token signed with the server's dev issuer key whose `exp` is an hour ago.
fn expired_token(dir: &std::path::Path, kid: &str) -> String {
    token_expiring_at(dir, kid, "user_1", unix_now() - 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_and_wrong_audience_tokens_are_rejected() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let kid = server.dev_issuer().unwrap().kid().to_string();
    let expired = expired_token(dir.path(), &kid);
    let forged = DevIssuer::generate(DEV_ISSUER, DEV_AUDIENCE)
        .unwrap()
        .mint(DevClaims::new("user_1"));
    // Same key as the server's, other audience.
    let wrong_audience = DevIssuer::load_or_generate(dir.path(), DEV_ISSUER, "someone-else")
        .unwrap()
        .mint(DevClaims::new("user_1"));
    let wrong_issuer = DevIssuer::load_or_generate(dir.path(), "urn:other", DEV_AUDIENCE)
        .unwrap()
        .mint(DevClaims::new("user_1"));

    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let mut counter = client
        .subscribe("counter:get", &json!({"name": "c"}))
        .unwrap();
    assert_eq!(next(&mut counter).await.unwrap(), Value::Int64(0));
    for bad in [
        &expired,
        &forged,
        &wrong_audience,
        &wrong_issuer,
        &"not a token".to_string(),
    ] {
        // Valid token first, so a rejection visibly drops the identity.
        client
            .set_auth(Some(common::token(&server, "user_1")))
            .await
            .unwrap();
        let e = client.set_auth(Some(bad.clone())).await.unwrap_err();
        assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
        assert_eq!(client.subject(), None);
        let e = client
            .query::<_, String>("me:whoami", &json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    }
    // The connection and its subscriptions survived all of that.
    let _: i64 = client
        .mutation("counter:add", &json!({"name": "c", "by": 1}))
        .await
        .unwrap();
    until(&mut counter, |v| *v == Value::Int64(1)).await;

    // Connecting with a bad token fails outright rather than running anonymous.
    for bad in [expired, forged] {
        let options = common::options(&server).with_token(bad);
        let e = Client::connect(&common::addr(&server), options)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    }
    client.close().await;
    server.shutdown().await;
}

/// A refresher with no token for the first connect (so the client starts anonymous) and a
/// token for `subject` afterwards, with the count of times it was asked.
fn anonymous_at_first(
    issuer: Arc<linkedup_server::auth::DevIssuer>,
    subject: &'static str,
) -> (TokenRefresher, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let refresher: TokenRefresher = Arc::new(move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        let token = (n > 0).then(|| issuer.mint(DevClaims::new(subject)));
        Box::pin(async move { token })
    });
    (refresher, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_refresher_answers_unauthorized() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    let (refresher, calls) = anonymous_at_first(issuer, "user_9");
    let options = common::options(&server).with_token_refresher(refresher);
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(client.subject(), None);
    // UNAUTHORIZED → the refresher is asked, the client authenticates and the call is re-run.
    let who: String = client.query("me:whoami", &json!({})).await.unwrap();
    assert_eq!(who, "user_9");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(client.subject().as_deref(), Some("user_9"));
    // Reconnecting asks it again.
    client.force_reconnect();
    let who: String = client.query("me:whoami", &json!({})).await.unwrap();
    assert_eq!(who, "user_9");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_share_one_connection_and_cancelled_callers_free_their_slots() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let slots = client.server_info().unwrap().max_concurrent_calls as usize;
    // Callers that give up at every stage of a call (waiting for a slot, queued, sent), three
    // times as many as the connection has slots: none may keep one.
    let cancelled = slots * 3;
    for i in 0..cancelled {
        let caller = client.clone();
        let task = tokio::spawn(async move {
            caller
                .mutation::<_, i64>("counter:add", &json!({"name": "gave-up", "by": 1}))
                .await
        });
        for _ in 0..i % 4 {
            tokio::task::yield_now().await;
        }
        task.abort();
    }
    // Then many more calls at once than there are slots: every one completes, once.
    const CALLS: i64 = 500;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let caller = client.clone();
        tasks.spawn(async move {
            caller
                .mutation::<_, i64>("counter:add", &json!({"name": "many", "by": 1}))
                .await
        });
    }
    let results = tokio::time::timeout(PATIENCE, async {
        let mut results = std::collections::BTreeSet::new();
        while let Some(joined) = tasks.join_next().await {
            assert!(results.insert(joined.unwrap().unwrap()));
        }
        results
    })
    .await
    .expect("every call completed in time");
    assert_eq!(results, (1..=CALLS).collect());
    let gave_up: i64 = client
        .query("counter:get", &json!({"name": "gave-up"}))
        .await
        .unwrap();
    assert!(gave_up <= cancelled as i64, "{gave_up}");
    assert_eq!(client.connection_count(), 1);
    client.close().await;
    server.shutdown().await;
}

/// An action's `UNAUTHORIZED` may come from its own code after it had effects, so the client
/// does not run it again after refreshing the token (a query is, as above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_action_is_not_run_again_after_a_refresh() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    let (refresher, calls) = anonymous_at_first(issuer, "user_9");
    let options = common::options(&server).with_token_refresher(refresher);
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    let e = client
        .action::<_, String>("guarded:action", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    let runs: i64 = client
        .query("counter:get", &json!({"name": "guarded"}))
        .await
        .unwrap();
    assert_eq!(runs, 1, "the action ran again after the token refresh");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    client.close().await;
    server.shutdown().await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Past this Unix time the server has dropped an identity whose token expires by `exp`
/// (its `exp` plus the verifier's leeway, §11), with a second to spare.
fn identity_dropped_after(exp: u64) -> u64 {
    exp + AuthConfig::DEFAULT_LEEWAY_SECS + 2
}

/// With a refresher, the client renews a short-lived token ahead of its `exp` on its own: a
/// client that only subscribes keeps its identity, and a query that needs it keeps streaming,
/// well past the time the server drops an expired identity. Waits out the server's 30 s
/// leeway (bounded, never timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_outlives_its_first_token_when_a_refresher_is_set() {
    const TTL: Duration = Duration::from_secs(4);
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    let refreshes = Arc::new(AtomicUsize::new(0));
    let refresher: TokenRefresher = {
        let refreshes = refreshes.clone();
        Arc::new(move || {
            refreshes.fetch_add(1, Ordering::SeqCst);
            let token = issuer.mint(DevClaims {
                ttl: TTL,
                ..DevClaims::new("user_7")
            });
            Box::pin(async move { Some(token) })
        })
    };
    // The connect's token (from the refresher) expires by then.
    let first_exp = unix_now() + TTL.as_secs() + 1;
    let options = common::options(&server).with_token_refresher(refresher);
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some("user_7"));
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    assert_eq!(next(&mut mine).await.unwrap(), Value::Int64(0));
    // Writes keep coming while the first token, and the server's leeway on it, run out; every
    // one reaches the subscription (`until` fails on an error or an end).
    let mut n = 0;
    while unix_now() <= identity_dropped_after(first_exp) {
        n += 1;
        let _: i64 = client
            .mutation("counter:add", &json!({"name": "user_7", "by": 1}))
            .await
            .unwrap();
        until(&mut mine, |v| *v == Value::Int64(n)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _: i64 = client
        .mutation("counter:add", &json!({"name": "user_7", "by": 1}))
        .await
        .unwrap();
    until(&mut mine, |v| *v == Value::Int64(n + 1)).await;
    let who: String = client.query("me:whoami", &json!({})).await.unwrap();
    assert_eq!(who, "user_7");
    assert_eq!(client.subject().as_deref(), Some("user_7"));
    assert!(refreshes.load(Ordering::SeqCst) >= 3);
    assert_eq!(client.connection_count(), 1);
    client.close().await;
    server.shutdown().await;
}

/// Without a refresher a token left to expire is dropped by the server (§11): its notice
/// clears the client's subject, a query that needs the identity ends, and calls are refused
/// until the client authenticates again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_without_a_refresher_clears_the_subject() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let ttl = Duration::from_secs(1);
    let token = server
        .mint_dev_token(DevClaims {
            ttl,
            ..DevClaims::new("user_8")
        })
        .unwrap();
    let options = common::options(&server).with_token(token);
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some("user_8"));
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    assert_eq!(next(&mut mine).await.unwrap(), Value::Int64(0));
    let bound = Duration::from_secs(AuthConfig::DEFAULT_LEEWAY_SECS) + ttl + PATIENCE;
    let ended = tokio::time::timeout(bound, mine.next())
        .await
        .expect("the subscription went on past the token's expiry");
    let e = ended.expect("an error before the end").unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    tokio::time::timeout(PATIENCE, async {
        while client.subject().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the subject outlived the identity");
    // A call is not run anonymously: refused, marked as under an expired token.
    let e = client
        .query::<_, Value>("me:counter", &json!({}))
        .await
        .unwrap_err();
    assert!(e.is_token_expired(), "{e}");
    client.close().await;
    server.shutdown().await;
}

/// A refresher that fails is asked a bounded number of times, with backoff, and not at all
/// once the client has given up; the server's expiry notice gets it asked again, and the
/// connection signs in with its token without any call. The subscription that needs the
/// identity waits meanwhile, and then carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_expiry_notice_a_failing_refresher_is_asked_again() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    let short = server
        .mint_dev_token(DevClaims {
            ttl: Duration::from_secs(2),
            ..DevClaims::new("user_6")
        })
        .unwrap();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let refresher: TokenRefresher = {
        let (ready, failed) = (ready.clone(), failed.clone());
        Arc::new(move || {
            let token = if ready.load(Ordering::SeqCst) {
                Some(issuer.mint(DevClaims::new("user_6")))
            } else {
                failed.fetch_add(1, Ordering::SeqCst);
                None
            };
            Box::pin(async move { token })
        })
    };
    // The refresher has nothing at connect: the client signs in with `short`.
    let options = common::options(&server)
        .with_token(short)
        .with_token_refresher(refresher);
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some("user_6"));
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    assert_eq!(next(&mut mine).await.unwrap(), Value::Int64(0));
    // No refresh succeeds before the server drops the identity.
    let bound = Duration::from_secs(AuthConfig::DEFAULT_LEEWAY_SECS) + PATIENCE;
    let subject_is = |want: Option<&'static str>| {
        let client = client.clone();
        async move {
            tokio::time::timeout(bound, async {
                while client.subject().as_deref() != want {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the subject did not become {want:?}"));
        }
    };
    // The notice clears the subject; nothing can sign in again while the refresher fails.
    subject_is(None).await;
    ready.store(true, Ordering::SeqCst);
    // Connect, then at most 5 attempts ahead of expiry and 5 after the notice.
    let asked = failed.load(Ordering::SeqCst);
    assert!((2..=11).contains(&asked), "{asked}");
    // Without any call, the client signs in again once the refresher has a token.
    subject_is(Some("user_6")).await;
    let who: String = client.query("me:whoami", &json!({})).await.unwrap();
    assert_eq!(who, "user_6");
    let _: i64 = client
        .mutation("counter:add", &json!({"name": "user_6", "by": 1}))
        .await
        .unwrap();
    until(&mut mine, |v| *v == Value::Int64(1)).await;
    client.close().await;
    server.shutdown().await;
}

/// A refresher with no token until `ready` is set, then a fresh one for `subject` each time.
fn ready_later(
    issuer: Arc<linkedup_server::auth::DevIssuer>,
    subject: &'static str,
) -> (TokenRefresher, Arc<std::sync::atomic::AtomicBool>) {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ready.clone();
    let refresher: TokenRefresher = Arc::new(move || {
        let token = flag
            .load(Ordering::SeqCst)
            .then(|| issuer.mint(DevClaims::new(subject)));
        Box::pin(async move { token })
    });
    (refresher, ready)
}

/// A connection signed in with a token the server takes for two seconds more (its `exp` is
/// nearly the verifier's leeway ago), and a refresher that has no token until `ready` is set.
async fn lapsing_soon(
    server: &linkedup_server::RunningServer,
    dir: &std::path::Path,
    subject: &'static str,
) -> (Client, Arc<std::sync::atomic::AtomicBool>, Arc<AtomicUsize>) {
    let kid = server.dev_issuer().unwrap().kid().to_string();
    let exp = unix_now() + 2 - AuthConfig::DEFAULT_LEEWAY_SECS;
    let token = token_expiring_at(dir, &kid, subject, exp);
    let (refresher, ready) = ready_later(server.dev_issuer().unwrap().clone(), subject);
    let asked = Arc::new(AtomicUsize::new(0));
    let counting: TokenRefresher = {
        let asked = asked.clone();
        Arc::new(move || {
            asked.fetch_add(1, Ordering::SeqCst);
            refresher()
        })
    };
    let options = common::options(server)
        .with_token(token)
        .with_token_refresher(counting);
    let client = Client::connect(&common::addr(server), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some(subject));
    (client, ready, asked)
}

/// A token that lapses because the refresher was slow costs no subscription (§11): the query
/// that needs the identity fails on the server, marked, and the client subscribes it again
/// once the refresher's fresh token is accepted on the same connection; its stream neither
/// fails nor ends, and goes on with later changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_a_lapsed_token_once_a_fresh_one_comes() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let (client, ready, _) = lapsing_soon(&server, dir.path(), "user_9").await;
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    assert_eq!(next(&mut mine).await.unwrap(), Value::Int64(0));
    // The server drops the identity (its notice clears the subject) while the refresher has
    // nothing; only then does a fresh token come.
    tokio::time::timeout(PATIENCE, async {
        while client.subject().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the identity outlived its token");
    ready.store(true, Ordering::SeqCst);
    tokio::time::timeout(PATIENCE, async {
        while client.subject().as_deref() != Some("user_9") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no fresh token was accepted");
    let _: i64 = client
        .mutation("counter:add", &json!({"name": "user_9", "by": 1}))
        .await
        .unwrap();
    // `until` fails on an error or an end: the stream yields 1 next (0 again is no update).
    assert_eq!(
        until(&mut mine, |v| *v == Value::Int64(1)).await,
        vec![Value::Int64(1)]
    );
    assert_eq!(client.connection_count(), 1, "no reconnect was needed");
    client.close().await;
    server.shutdown().await;
}

/// Without a fresh token, a subscription that failed for the lapsed one waits only as long as
/// the refresher is asked after the expiry notice (5 times, with backoff): then it ends with
/// the server's `UNAUTHORIZED`, marked `tokenExpired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fresh_token_a_lapsed_subscription_ends_unauthorized() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let (client, _never, asked) = lapsing_soon(&server, dir.path(), "user_10").await;
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    assert_eq!(next(&mut mine).await.unwrap(), Value::Int64(0));
    // Backoff after the notice: 1 + 2 + 4 + 8 s, each at most half again.
    let bound = Duration::from_secs(23) + PATIENCE;
    let ended = tokio::time::timeout(bound, mine.next())
        .await
        .expect("the subscription waited past the refresher's last attempt");
    let e = ended.expect("an error before the end").unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    assert!(e.is_token_expired(), "{e}");
    // Once at connect, then at least the five attempts after the notice.
    let asked = asked.load(Ordering::SeqCst);
    assert!(asked >= 6, "ended after {asked} asks");
    assert!(tokio::time::timeout(PATIENCE, mine.next())
        .await
        .unwrap()
        .is_none());
    client.close().await;
    server.shutdown().await;
}

/// The server refuses a call under an expired token before running anything and marks the
/// refusal (`data.tokenExpired`), so the client refreshes the token and sends the call again —
/// even an action, which then runs exactly once. To have the server still hold the expired
/// identity when the call comes (rather than having dropped it, after which calls run
/// anonymously), a subscription whose first run waits at a gate keeps the connection's
/// control stream busy meanwhile. Waits about two seconds for the token to expire; never
/// timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_refused_for_an_expired_token_runs_once_after_a_refresh() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let kid = server.dev_issuer().unwrap().kid().to_string();
    // Accepted now, within the server's leeway; expired for it two seconds from now.
    let leeway = AuthConfig::DEFAULT_LEEWAY_SECS;
    let exp = unix_now() + 2 - leeway;
    let token = token_expiring_at(dir.path(), &kid, "user_5", exp);
    let (refresher, ready) = ready_later(server.dev_issuer().unwrap().clone(), "user_5");
    let options = common::options(&server)
        .with_token(token)
        .with_token_refresher(refresher);
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some("user_5"));

    let gate = common::hold("expired-token-call");
    let _busy = client
        .subscribe("gate:hold", &json!({"name": "expired-token-call"}))
        .unwrap();
    gate.reached().await;
    while unix_now() <= exp + leeway {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ready.store(true, Ordering::SeqCst);
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .action::<_, String>("guarded:action", &json!({}))
                .await
        }
    });
    // Refused under the expired token (before the action ran); the client then waits for the
    // server to accept its fresh token, which the busy control stream answers once let go.
    tokio::time::timeout(PATIENCE, async {
        while server
            .metrics()
            .calls("guarded:action", "action", "UNAUTHORIZED")
            == 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the call was not refused");
    gate.open();
    let who = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("no answer in time")
        .unwrap()
        .unwrap();
    assert_eq!(who, "user_5");
    let runs: i64 = client
        .query("counter:get", &json!({"name": "guarded"}))
        .await
        .unwrap();
    assert_eq!(runs, 1, "the action ran other than once");
    assert_eq!(
        server
            .metrics()
            .calls("guarded:action", "action", "UNAUTHORIZED"),
        1
    );
    client.close().await;
    server.shutdown().await;
}

/// A token refresher that never answers cannot stall reconnecting: after
/// `token_refresh_timeout` the client reconnects with the token it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_token_refresher_does_not_stall_reconnecting() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refresher: TokenRefresher = {
        let hang = hang.clone();
        Arc::new(move || {
            if hang.load(Ordering::SeqCst) {
                Box::pin(std::future::pending())
            } else {
                let token = issuer.mint(DevClaims::new("user_4"));
                Box::pin(async move { Some(token) })
            }
        })
    };
    let options = common::options(&server)
        .with_token_refresher(refresher)
        .with_token_refresh_timeout(Duration::from_millis(200));
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some("user_4"));
    hang.store(true, Ordering::SeqCst);
    client.force_reconnect();
    // Waits for the new connection at most `connect_timeout` (5 s here).
    let who: String = client.query("me:whoami", &json!({})).await.unwrap();
    assert_eq!(who, "user_4");
    assert_eq!(client.connection_count(), 2);
    client.close().await;
    server.shutdown().await;
}

/// Where a token refresher made by `answered_by_test` sends each request: the sender of its
/// answer.
type Asks = mpsc::UnboundedReceiver<oneshot::Sender<Option<String>>>;

/// A token refresher each of whose answers the test gives, whenever it likes.
fn answered_by_test() -> (TokenRefresher, Asks) {
    let (tx, asks) = mpsc::unbounded_channel();
    let refresher: TokenRefresher = Arc::new(move || {
        let (answer, token) = oneshot::channel();
        let _ = tx.send(answer);
        Box::pin(async move { token.await.ok().flatten() })
    });
    (refresher, asks)
}

/// The next request to the refresher.
async fn next_ask(asks: &mut Asks) -> oneshot::Sender<Option<String>> {
    tokio::time::timeout(PATIENCE, asks.recv())
        .await
        .expect("the refresher was not asked in time")
        .expect("the refresher is gone")
}

/// A client with `refresher`, whose first request (the connect's) is answered with `token`.
async fn connect_answering(
    server: &linkedup_server::RunningServer,
    refresher: TokenRefresher,
    asks: &mut Asks,
    token: String,
) -> Client {
    let addr = common::addr(server);
    let options = common::options(server).with_token_refresher(refresher);
    let connecting = tokio::spawn(async move { Client::connect(&addr, options).await });
    next_ask(asks).await.send(Some(token)).unwrap();
    connecting.await.unwrap().unwrap()
}

/// Once signed out, the client stays so: the subject does not come back while a refresh that
/// was under way could still act, and the next connection signs in with no token either.
async fn stays_signed_out(client: &Client) {
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(client.subject(), None, "signed in again");
    }
    let connections = client.connection_count();
    client.force_reconnect();
    client.ping().await.unwrap();
    assert_eq!(client.connection_count(), connections + 1);
    assert_eq!(client.subject(), None, "signed in again on reconnect");
}

/// A sign-out (refresher removed, then `set_auth(None)`) while the token keeper waits for the
/// refresher: its late answer is discarded, neither sent nor kept for reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_during_the_keepers_token_refresh_is_not_undone_by_it() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    // Short-lived, so that the keeper asks for the next a second or two after the connect.
    let mint = move || {
        issuer.mint(DevClaims {
            ttl: Duration::from_secs(2),
            ..DevClaims::new("user_8")
        })
    };
    let (refresher, mut asks) = answered_by_test();
    let client = connect_answering(&server, refresher, &mut asks, mint()).await;
    assert_eq!(client.subject().as_deref(), Some("user_8"));
    let keepers = next_ask(&mut asks).await;
    client.set_token_refresher(None);
    assert_eq!(client.set_auth(None).await.unwrap(), None);
    keepers.send(Some(mint())).unwrap();
    stays_signed_out(&client).await;
    client.close().await;
    server.shutdown().await;
}

/// The same for `refresh_auth`: a sign-out while it waits for the refresher discards the
/// answer, and `refresh_auth` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_during_refresh_auth_is_not_undone_by_it() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    let (refresher, mut asks) = answered_by_test();
    let first = issuer.mint(DevClaims::new("user_8"));
    let client = connect_answering(&server, refresher, &mut asks, first).await;
    let refreshing = tokio::spawn({
        let client = client.clone();
        async move { client.refresh_auth().await }
    });
    let pending = next_ask(&mut asks).await;
    client.set_token_refresher(None);
    assert_eq!(client.set_auth(None).await.unwrap(), None);
    pending
        .send(Some(issuer.mint(DevClaims::new("user_8"))))
        .unwrap();
    let refreshed = refreshing.await.unwrap();
    assert!(
        refreshed.as_ref().is_err_and(ClientError::is_unauthorized),
        "{refreshed:?}"
    );
    stays_signed_out(&client).await;
    client.close().await;
    server.shutdown().await;
}

/// A sign-out while a reconnect waits for the refresher: the reconnect signs in with no token
/// (the sign-out's), not with the refresher's late answer, and does not keep that answer for
/// the reconnects after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_during_a_reconnects_token_refresh_is_not_undone_by_it() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let issuer = server.dev_issuer().unwrap().clone();
    let (refresher, mut asks) = answered_by_test();
    let first = issuer.mint(DevClaims::new("user_8"));
    let client = connect_answering(&server, refresher, &mut asks, first).await;
    client.force_reconnect();
    let reconnects = next_ask(&mut asks).await;
    client.set_token_refresher(None);
    let signing_out = tokio::spawn({
        let client = client.clone();
        async move { client.set_auth(None).await }
    });
    // The sign-out keeps its token at once, then waits for the connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    reconnects
        .send(Some(issuer.mint(DevClaims::new("user_8"))))
        .unwrap();
    let signed_out = tokio::time::timeout(PATIENCE, signing_out)
        .await
        .expect("set_auth did not return in time")
        .unwrap();
    assert_eq!(signed_out.unwrap(), None);
    assert_eq!(client.subject(), None);
    stays_signed_out(&client).await;
    client.close().await;
    server.shutdown().await;
}

/// A query subscribed again — after its local copy drifted (protocol §7), or after a
/// reconnect (§12) — whose fresh result is the one the stream last yielded does not yield it
/// again: the stream's next item is the next change. A second subscription, changed after the
/// re-subscription was sent, shows when the fresh result has been applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribed_query_does_not_repeat_its_result() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let add = |n: i64| {
        let client = client.clone();
        async move {
            let _: String = client
                .mutation("items:add", &json!({"list": "r", "n": n, "text": "t"}))
                .await
                .unwrap();
        }
    };
    let bump = |by: i64| {
        let client = client.clone();
        async move {
            let _: i64 = client
                .mutation("counter:add", &json!({"name": "marker", "by": by}))
                .await
                .unwrap();
        }
    };
    let len = |v: &Value| match v {
        Value::Array(items) => items.len(),
        other => panic!("not a list: {other:?}"),
    };
    add(1).await;
    let mut items = client
        .subscribe("items:list", &json!({"list": "r"}))
        .unwrap();
    until(&mut items, |v| len(v) == 1).await;
    let mut marker = client
        .subscribe("counter:get", &json!({"name": "marker"}))
        .unwrap();
    until(&mut marker, |v| *v == Value::Int64(0)).await;

    items.simulate_drift();
    // The server has taken the new Subscribe once it answers a later Ping on the same stream;
    // a change after that reaches the client with or after the fresh result.
    client.ping().await.unwrap();
    bump(1).await;
    until(&mut marker, |v| *v == Value::Int64(1)).await;
    let repeated = futures::FutureExt::now_or_never(items.next());
    assert!(
        repeated.is_none(),
        "the unchanged result was yielded again after the re-subscription: {repeated:?}"
    );
    add(2).await;
    assert_eq!(len(&next(&mut items).await.unwrap()), 2);

    // A reconnect subscribes both again; results change together once both have answered.
    client.force_reconnect();
    bump(1).await;
    until(&mut marker, |v| *v == Value::Int64(2)).await;
    assert!(client.connection_count() >= 2);
    let repeated = futures::FutureExt::now_or_never(items.next());
    assert!(
        repeated.is_none(),
        "the unchanged result was yielded again after the reconnect: {repeated:?}"
    );
    add(3).await;
    assert_eq!(len(&next(&mut items).await.unwrap()), 3);
    client.close().await;
    server.shutdown().await;
}

/// What the SDK refuses itself for breaking a limit of protocol §10: `VALIDATION_ERROR`
/// naming the field (`data.path`), raised by the client (a `Function` error, not the server's
/// fatal `Error`).
fn refused_for(e: &ClientError, field: &str) -> bool {
    matches!(e, ClientError::Function { code, data, .. }
        if code == "VALIDATION_ERROR" && data.get_path("path") == Some(&Value::from(field)))
}

/// A subscription, call or token over a limit the server treats as fatal (protocol §10) is
/// refused at once by the client, before anything is sent: the connection stays up, other
/// subscriptions go on, and the identity is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_protocol_limit_are_refused_without_losing_the_connection() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let options = common::options(&server).with_token(common::token(&server, "user_9"));
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    let mut counter = client
        .subscribe("counter:get", &json!({"name": "limits"}))
        .unwrap();
    until(&mut counter, |v| *v == Value::Int64(0)).await;

    let long_name = "f".repeat(300);
    let mut deep = json!(1);
    for _ in 0..65 {
        deep = json!([deep]);
    }
    let e = client.subscribe(&long_name, &json!({})).unwrap_err();
    assert!(refused_for(&e, "function"), "{e:?}");
    let e = client.subscribe("counter:get", &deep).unwrap_err();
    assert!(refused_for(&e, "args"), "{e:?}");
    let e = client
        .query::<_, Value>(&long_name, &json!({}))
        .await
        .unwrap_err();
    assert!(refused_for(&e, "function"), "{e:?}");
    let e = client
        .action::<_, Value>("echo", &json!({ "value": deep }))
        .await
        .unwrap_err();
    assert!(refused_for(&e, "args"), "{e:?}");
    let e = client
        .mutation_with_id(
            "counter:add",
            obj! {"name" => "limits", "by" => 1i64},
            &"m".repeat(129),
        )
        .await
        .unwrap_err();
    assert!(refused_for(&e, "mutationId"), "{e:?}");
    let e = client
        .set_auth(Some("t".repeat(16 * 1024 + 1)))
        .await
        .unwrap_err();
    assert!(refused_for(&e, "token"), "{e:?}");

    // Had anything reached the server, it would have closed the connection before answering
    // this ping, which goes out after it on the control stream.
    client.ping().await.unwrap();
    let n: i64 = client
        .mutation("counter:add", &json!({"name": "limits", "by": 1}))
        .await
        .unwrap();
    assert_eq!(n, 1);
    until(&mut counter, |v| *v == Value::Int64(1)).await;
    let who: String = client.query("me:whoami", &json!({})).await.unwrap();
    assert_eq!(who, "user_9");
    assert_eq!(client.subject().as_deref(), Some("user_9"));
    assert_eq!(client.connection_count(), 1);
    client.close().await;
    server.shutdown().await;
}

/// Results that change in one commit, each below the frame limit (64 KiB here) and together
/// above it, arrive in one transition the server sends in parts: every subscription gets its
/// result, all at once, and the connection stays up. Before parts, the server closed the
/// connection on such a transition, and the client reconnected (and could again and again,
/// when its subscriptions' first results together exceeded a frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_together_larger_than_a_frame_arrive_without_losing_the_connection() {
    const SUBSCRIPTIONS: usize = 6;
    let dir = common::data_dir();
    let server = common::start_with(dir.path(), |c| c.limits.max_frame_bytes = 64 * 1024).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let add = |n: i64| {
        let client = client.clone();
        async move {
            let text = "x".repeat(20_000);
            let _: String = client
                .mutation("items:add", &json!({"list": "big", "n": n, "text": text}))
                .await
                .unwrap();
        }
    };
    let len = |v: &Value| match v {
        Value::Array(items) => items.len(),
        other => panic!("not a list: {other:?}"),
    };
    add(1).await;
    let mut subs: Vec<Subscription> = (0..SUBSCRIPTIONS)
        .map(|_| {
            client
                .subscribe("items:list", &json!({"list": "big"}))
                .unwrap()
        })
        .collect();
    for sub in &mut subs {
        until(sub, |v| len(v) == 1).await;
    }

    // One commit changes every result by 20 KB: 120 KB in one transition.
    add(2).await;
    for sub in &mut subs {
        assert_eq!(len(&next(sub).await.unwrap()), 2);
    }
    assert_eq!(client.connection_count(), 1, "the connection was lost");

    // A new connection brings every result in full again; they change together after it.
    client.force_reconnect();
    add(3).await;
    for sub in &mut subs {
        until(sub, |v| len(v) == 3).await;
    }
    assert_eq!(
        client.connection_count(),
        2,
        "a connection was lost after the reconnect"
    );
    client.close().await;
    server.shutdown().await;
}
