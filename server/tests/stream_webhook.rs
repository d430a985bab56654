//! Stream's webhook end to end through a real in-process server's HTTP port: signed
//! deliveries change presence, the joined count and the meeting's state, presence in the order
//! Stream created the events; a retried delivery, or a captured one posted again under another
//! X-Webhook-Id, is applied once; call.ended
//! concludes the meeting once; bad signatures, malformed or oversized bodies, applied events
//! without created_at or from the future, and deliveries during shutdown are refused and write
//! nothing; ignored deliveries are counted by reason.

mod linkedup_common;

use std::sync::atomic::Ordering;

use linkedup_common::{data_dir, documents, ident, meeting_jobs, s, wait_for_room_job};
use linkedup_server::linkedup::{self, LinkedUpConfig};
use linkedup_server::stream::webhook::sign;
use linkedup_server::stream::{Secret, StreamConfig};
use linkedup_server::{RunningServer, Server, ServerConfig};
use query_engine::functions::Functions;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;
use serde_json::{json, Value as Json};

const SECRET: &str = "webhook-secret";
const API_KEY: &str = "app-key";
const PATH: &str = "/webhooks/stream";

type Headers = Vec<(&'static str, String)>;

struct Hooked {
    server: RunningServer,
    http: reqwest::Client,
    url: String,
    alice: Identity,
    bob: Identity,
    alice_id: String,
    bob_id: String,
    carol_id: String,
    /// Started by alice, bob invited, its room created.
    meeting: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Hooked {
    let dir = data_dir();
    let config = LinkedUpConfig {
        stream: StreamConfig {
            webhook_secret: Some(Secret::new(SECRET)),
            api_key: Some(API_KEY.into()),
            ..StreamConfig::default()
        },
        ..LinkedUpConfig::default()
    };
    let mut functions = Functions::new();
    linkedup::register(&mut functions, &config);
    let server = Server::start_with_routes(
        ServerConfig::for_tests(dir.path()),
        linkedup_schema::schema(),
        functions,
        linkedup::http_routes(&config),
    )
    .await
    .unwrap();
    let engine = server.engine().clone();
    let m = |name: &'static str, args: Value, who: Identity| {
        let engine = engine.clone();
        async move { engine.mutation(name, args, Some(&who)).await.unwrap().value }
    };
    let (alice, bob, carol) = (
        ident("alice", Some("org1"), Some("admin")),
        ident("bob", Some("org1"), Some("member")),
        ident("carol", Some("org1"), Some("member")),
    );
    let mut ids = Vec::new();
    for who in [&alice, &bob, &carol] {
        ids.push(s(&m("users.ensure", obj! {}, who.clone()).await, "_id"));
    }
    let meeting = m(
        "meetings.schedule",
        obj! { "title" => "Standup", "inviteeIds" => vec![Value::from(ids[1].as_str())] },
        alice.clone(),
    )
    .await;
    let meeting = meeting.as_str().unwrap().to_string();
    m(
        "meetings.start",
        obj! { "meetingId" => meeting.as_str() },
        alice.clone(),
    )
    .await;
    wait_for_room_job(&engine, &meeting).await;
    Hooked {
        url: format!("http://{}{PATH}", server.http_addr()),
        server,
        http: reqwest::Client::new(),
        alice,
        bob,
        alice_id: ids[0].clone(),
        bob_id: ids[1].clone(),
        carol_id: ids[2].clone(),
        meeting,
        _dir: dir,
    }
}

/// `at` as Stream writes times (RFC 3339, UTC).
fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A call event as Stream sends it, created now — a millisecond after the previous one at
/// least, as the order of presence events is decided at that granularity.
fn event(kind: &str, call_cid: &str, user: Option<&str>) -> Json {
    static LAST_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let previous = LAST_MS.fetch_max(now_ms, std::sync::atomic::Ordering::SeqCst);
    let ms = if previous >= now_ms {
        LAST_MS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    } else {
        now_ms
    };
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    let now = rfc3339(at);
    let mut e = json!({
        "type": kind,
        "call_cid": call_cid,
        "created_at": now,
        "session_id": "session-1",
    });
    if let Some(user) = user {
        e["participant"] = json!({
            "user": { "id": user, "name": "someone" },
            "user_session_id": "user-session-1",
            "role": "user",
            "joined_at": now,
        });
    }
    e
}

impl Hooked {
    fn cid(&self) -> String {
        format!("default:{}", self.meeting)
    }

    async fn post(&self, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Json) {
        let mut request = self.http.post(&self.url).body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Json::Null))
    }

    /// Delivers `event` signed as Stream does, with delivery id `id`.
    async fn deliver(&self, event: &Json, id: &str) -> (u16, Json) {
        let body = serde_json::to_vec(event).unwrap();
        let headers = [
            ("x-signature", sign(&Secret::new(SECRET), &body)),
            ("x-api-key", API_KEY.to_string()),
            ("x-webhook-id", id.to_string()),
            ("x-webhook-attempt", "1".to_string()),
            ("content-type", "application/json".to_string()),
        ];
        self.post(body, &headers).await
    }

    /// The meeting's `meetingState` document.
    async fn state(&self) -> Value {
        self.server
            .engine()
            .query(
                "meetings.getState",
                obj! { "meetingId" => self.meeting.as_str() },
                Some(&self.alice),
            )
            .await
            .unwrap()
            .value
    }

    async fn joined_count(&self) -> i64 {
        self.state()
            .await
            .get_path("joinedCount")
            .and_then(Value::as_i64)
            .unwrap()
    }

    /// (presence, joinedAt set, leftAt set) of a user in the meeting.
    async fn presence(&self, user_id: &str) -> (String, bool, bool) {
        let list = self
            .server
            .engine()
            .query(
                "meetings.listParticipants",
                obj! { "meetingId" => self.meeting.as_str() },
                Some(&self.bob),
            )
            .await
            .unwrap()
            .value;
        let p = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| s(p, "userId") == user_id)
            .unwrap()
            .clone();
        (
            s(&p, "presence"),
            p.get_path("joinedAt").is_some(),
            p.get_path("leftAt").is_some(),
        )
    }

    fn commits(&self) -> u64 {
        self.server
            .engine()
            .metrics()
            .commits
            .load(Ordering::Relaxed)
    }

    fn deliveries(&self, code: &str) -> u64 {
        self.server.metrics().calls(PATH, "webhook", code)
    }

    async fn webhook_keys(&self) -> Vec<String> {
        documents(self.server.engine(), "idempotencyKeys")
            .await
            .into_iter()
            .filter(|k| s(k, "scope") == "stream_webhook")
            .map(|k| s(&k, "key"))
            .collect()
    }

    /// Jobs scheduled for the meeting by `function`.
    async fn jobs(&self, function: &'static str) -> usize {
        meeting_jobs(self.server.engine(), function, &self.meeting)
            .await
            .len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_join_and_leave_events_once_each() {
    let h = start().await;
    let cid = h.cid();
    assert_eq!(h.joined_count().await, 0);

    let bob_joined = event("call.session_participant_joined", &cid, Some(&h.bob_id));
    let r = h.deliver(&bob_joined, "d-1").await;
    assert_eq!(r, (200, json!({ "status": "processed" })));
    assert_eq!(h.presence(&h.bob_id).await, ("joined".into(), true, false));
    assert_eq!(h.joined_count().await, 1);

    // Stream retries the same delivery: acknowledged, applied once.
    let before = h.commits();
    let r = h.deliver(&bob_joined, "d-1").await;
    assert_eq!(r, (200, json!({ "status": "duplicate" })));
    assert_eq!(h.commits(), before, "a duplicate writes nothing");
    assert_eq!(h.joined_count().await, 1);

    let alice_joined = event("call.session_participant_joined", &cid, Some(&h.alice_id));
    assert_eq!(h.deliver(&alice_joined, "d-2").await.0, 200);
    assert_eq!(h.joined_count().await, 2);

    let bob_left = event("call.session_participant_left", &cid, Some(&h.bob_id));
    assert_eq!(
        h.deliver(&bob_left, "d-3").await,
        (200, json!({ "status": "processed" }))
    );
    assert_eq!(h.presence(&h.bob_id).await, ("left".into(), true, true));
    assert_eq!(h.joined_count().await, 1);
    assert_eq!(h.deliver(&bob_left, "d-3").await.1["status"], "duplicate");
    assert_eq!(h.joined_count().await, 1);

    // The session ended: whoever was still in the call left.
    let ended = event("call.session_ended", &cid, None);
    assert_eq!(h.deliver(&ended, "d-4").await.1["status"], "processed");
    assert_eq!(h.presence(&h.alice_id).await.0, "left");
    assert_eq!(h.joined_count().await, 0);

    // A participant's own meetings.leave/join agree with the webhook's bookkeeping.
    let engine = h.server.engine();
    engine
        .mutation(
            "meetings.join",
            obj! { "meetingId" => h.meeting.as_str() },
            Some(&h.bob),
        )
        .await
        .unwrap();
    assert_eq!(h.joined_count().await, 1);
    let mut bob_joined_again = event("call.session_participant_joined", &cid, Some(&h.bob_id));
    // After the in-app join for certain: an event of the same millisecond is not newer.
    bob_joined_again["created_at"] = json!(rfc3339(
        time::OffsetDateTime::now_utc() + time::Duration::seconds(1)
    ));
    assert_eq!(
        h.deliver(&bob_joined_again, "d-5").await.1["status"],
        "processed"
    );
    assert_eq!(h.joined_count().await, 1, "already joined: counted once");

    // Deliveries are keyed by a digest of their signed body, not by X-Webhook-Id.
    let keys = h.webhook_keys().await;
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("sha256:")), "{keys:?}");
    assert_eq!(h.deliveries("OK"), 5);
    assert_eq!(h.deliveries("DUPLICATE"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ended_concludes_the_meeting_once() {
    let h = start().await;
    let ended = event("call.ended", &h.cid(), None);
    assert_eq!(
        h.deliver(&ended, "end-1").await,
        (200, json!({ "status": "processed" }))
    );
    let meeting = h
        .server
        .engine()
        .query(
            "meetings.get",
            obj! { "meetingId" => h.meeting.as_str() },
            Some(&h.alice),
        )
        .await
        .unwrap()
        .value;
    assert_eq!(s(&meeting, "state"), "concluded");
    let state = h
        .server
        .engine()
        .query(
            "meetings.getState",
            obj! { "meetingId" => h.meeting.as_str() },
            Some(&h.alice),
        )
        .await
        .unwrap()
        .value;
    assert_eq!(state.get_path("active"), Some(&Value::Bool(false)));
    assert!(state.get_path("endedAt").is_some());

    // The conclusion is audited as the system's, in the meeting's organisation.
    let audits: Vec<Value> = documents(h.server.engine(), "auditLogs")
        .await
        .into_iter()
        .filter(|e| s(e, "action") == "meeting.concluded")
        .collect();
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].get_path("actorUserId"), None);
    assert_eq!(s(&audits[0], "orgId"), "org1");

    // Another call.ended (a retry of this one is a duplicate), and the host ending it too,
    // change nothing: the post-call jobs are scheduled once.
    assert_eq!(
        h.deliver(&ended, "end-1").await,
        (200, json!({ "status": "duplicate" }))
    );
    let ended_again = event("call.ended", &h.cid(), None);
    assert_eq!(
        h.deliver(&ended_again, "end-2").await,
        (
            200,
            json!({ "status": "ignored", "reason": "already concluded" })
        )
    );
    h.server
        .engine()
        .mutation(
            "meetings.end",
            obj! { "meetingId" => h.meeting.as_str() },
            Some(&h.alice),
        )
        .await
        .unwrap();
    assert_eq!(h.jobs("transcripts.aggregateSegments").await, 1);
    assert_eq!(h.jobs("insights.generate").await, 1);

    // Nobody joins a concluded meeting through a webhook either.
    let joined = event("call.session_participant_joined", &h.cid(), Some(&h.bob_id));
    assert_eq!(h.deliver(&joined, "late").await.1["status"], "ignored");
    assert_eq!(h.presence(&h.bob_id).await.0, "invited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_and_write_nothing() {
    let h = start().await;
    let body = serde_json::to_vec(&event(
        "call.session_participant_joined",
        &h.cid(),
        Some(&h.bob_id),
    ))
    .unwrap();
    let good = sign(&Secret::new(SECRET), &body);
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 0x01;
    let before = h.commits();
    let cases: Vec<(Vec<u8>, Headers)> = vec![
        // No signature.
        (body.clone(), vec![("x-webhook-id", "b-1".into())]),
        // Signed with another secret.
        (
            body.clone(),
            vec![
                ("x-signature", sign(&Secret::new("not the secret"), &body)),
                ("x-webhook-id", "b-2".into()),
            ],
        ),
        // The body changed after signing.
        (
            tampered,
            vec![
                ("x-signature", good.clone()),
                ("x-webhook-id", "b-3".into()),
            ],
        ),
        // Another application's key.
        (
            body.clone(),
            vec![
                ("x-signature", good.clone()),
                ("x-api-key", "someone-else".into()),
                ("x-webhook-id", "b-4".into()),
            ],
        ),
        // No key: Stream always sends it, and this server has one configured.
        (
            body.clone(),
            vec![
                ("x-signature", good.clone()),
                ("x-webhook-id", "b-7".into()),
            ],
        ),
        // Garbage.
        (
            body.clone(),
            vec![("x-signature", "zz".into()), ("x-webhook-id", "b-5".into())],
        ),
    ];
    for (i, (body, headers)) in cases.into_iter().enumerate() {
        let (status, _) = h.post(body, &headers).await;
        assert_eq!(status, 401, "case {i}");
    }
    assert_eq!(h.commits(), before, "nothing written");
    assert!(h.webhook_keys().await.is_empty());
    assert_eq!(h.presence(&h.bob_id).await.0, "invited");
    assert_eq!(h.deliveries("UNAUTHORIZED"), 6);

    // The same body with its signature and the application's key goes through.
    let (status, _) = h
        .post(
            body,
            &[
                ("x-signature", good),
                ("x-api-key", API_KEY.into()),
                ("x-webhook-id", "b-6".into()),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(h.presence(&h.bob_id).await.0, "joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_irrelevant_deliveries() {
    let h = start().await;
    let signed = |body: &[u8]| {
        vec![
            ("x-signature", sign(&Secret::new(SECRET), body)),
            ("x-api-key", API_KEY.to_string()),
            ("x-webhook-id", "m-1".to_string()),
        ]
    };
    let before = h.commits();
    // Signed but not an event: 400.
    for body in [
        &b"not json"[..],
        br#"{"call_cid":"default:x"}"#,
        br#"{"type":"call.ended"}"#,
        br#"{"type":"call.session_participant_joined","call_cid":"default:x"}"#,
    ] {
        let (status, reply) = h.post(body.to_vec(), &signed(body)).await;
        assert_eq!(status, 400, "{}: {reply}", String::from_utf8_lossy(body));
        assert!(reply["error"].is_string());
    }
    // Over the size limit: 413, before anything is checked. The server answers without
    // reading the body and closes the connection, so the client may see the reset while still
    // sending instead of the answer; either way nothing may be written.
    let big = vec![b' '; (1 << 20) + 1];
    let mut request = h.http.post(&h.url).body(big.clone());
    for (name, value) in signed(&big) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => {
            assert_eq!(response.status().as_u16(), 413);
            // The unread body leaves the connection unusable: the client is told not to
            // reuse it (the requests below would otherwise fail on it now and then).
            assert_eq!(
                response.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..])
            );
        }
        Err(e) => assert!(
            e.is_request() || e.is_body(),
            "not a refusal while sending: {e:?}"
        ),
    }
    assert_eq!(h.commits(), before, "nothing written");

    // Verified but not about LinkedUp's meetings or members: acknowledged and ignored.
    let ignored = [
        (event("call.reaction_new", &h.cid(), None), "i-1"),
        (event("call.session_started", &h.cid(), None), "i-2"),
        (
            event("call.ended", &format!("livestream:{}", h.meeting), None),
            "i-3",
        ),
        (event("call.ended", "default:not-a-meeting", None), "i-4"),
        // A captured delivery replayed after its key has been forgotten: the signed
        // created_at is older than the replay window.
        (
            {
                let mut e = event("call.ended", &h.cid(), None);
                e["created_at"] = json!(rfc3339(
                    time::OffsetDateTime::now_utc() - time::Duration::days(2)
                ));
                e
            },
            "i-old",
        ),
        (
            event(
                "call.session_participant_joined",
                &h.cid(),
                Some(&h.carol_id),
            ),
            "i-5",
        ),
        (
            event(
                "call.session_participant_joined",
                &h.cid(),
                Some("stranger"),
            ),
            "i-6",
        ),
    ];
    for (e, id) in &ignored {
        let (status, reply) = h.deliver(e, id).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("ignored")),
            "{e}: {reply}"
        );
    }
    assert_eq!(h.joined_count().await, 0);
    assert_eq!(
        h.state().await.get_path("active"),
        Some(&Value::Bool(true)),
        "the stale call.ended was not applied"
    );
    assert_eq!(h.deliveries("IGNORED"), 7);
    // And by reason, for whoever wonders what Stream sends that is not applied.
    let mut metrics = String::new();
    h.server.metrics().render(&mut metrics);
    for (reason, n) in [
        ("event_type", 2),
        ("call_type", 1),
        ("not_linkedup_meeting", 1),
        ("stale", 1),
        ("not_participant", 2),
    ] {
        let series = format!("\nstream_webhook_ignored_total{{reason=\"{reason}\"}} {n}\n");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }

    // Without X-Webhook-Id (the key is the body's digest either way): a resend is a duplicate.
    let joined = serde_json::to_vec(&event(
        "call.session_participant_joined",
        &h.cid(),
        Some(&h.bob_id),
    ))
    .unwrap();
    let headers = [
        ("x-signature", sign(&Secret::new(SECRET), &joined)),
        ("x-api-key", API_KEY.to_string()),
    ];
    assert_eq!(
        h.post(joined.clone(), &headers).await.1["status"],
        "processed"
    );
    assert_eq!(h.post(joined, &headers).await.1["status"], "duplicate");
    assert_eq!(h.joined_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_delivery_posted_again_under_another_id_is_a_duplicate() {
    let h = start().await;
    let cid = h.cid();
    let bob_joined = event("call.session_participant_joined", &cid, Some(&h.bob_id));
    assert_eq!(h.deliver(&bob_joined, "r-1").await.1["status"], "processed");
    let bob_left = event("call.session_participant_left", &cid, Some(&h.bob_id));
    assert_eq!(h.deliver(&bob_left, "r-2").await.1["status"], "processed");
    assert_eq!(h.presence(&h.bob_id).await.0, "left");
    assert_eq!(h.joined_count().await, 0);

    // Someone who captured the signed join posts the same body with a fresh X-Webhook-Id (or
    // none): only the body is signed, so it is the same delivery.
    let before = h.commits();
    for id in ["r-1-replayed", "another-id"] {
        assert_eq!(
            h.deliver(&bob_joined, id).await,
            (200, json!({ "status": "duplicate" })),
            "{id}"
        );
    }
    assert_eq!(h.commits(), before, "a replay writes nothing");
    assert_eq!(h.presence(&h.bob_id).await.0, "left");
    assert_eq!(h.joined_count().await, 0);

    // Likewise a replayed call.session_ended does not make everyone leave again.
    let ended = event("call.session_ended", &cid, None);
    assert_eq!(h.deliver(&ended, "r-3").await.1["status"], "processed");
    let alice_joined = event("call.session_participant_joined", &cid, Some(&h.alice_id));
    assert_eq!(
        h.deliver(&alice_joined, "r-4").await.1["status"],
        "processed"
    );
    assert_eq!(h.joined_count().await, 1);
    assert_eq!(h.deliver(&ended, "r-5").await.1["status"], "duplicate");
    assert_eq!(h.presence(&h.alice_id).await.0, "joined");
    assert_eq!(h.joined_count().await, 1);
    assert_eq!(h.webhook_keys().await.len(), 4);
    assert_eq!(h.deliveries("DUPLICATE"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_events_need_a_created_at_not_in_the_future() {
    let h = start().await;
    let cid = h.cid();
    let bob_joined = event("call.session_participant_joined", &cid, Some(&h.bob_id));
    assert_eq!(h.deliver(&bob_joined, "t-1").await.1["status"], "processed");
    assert_eq!(h.joined_count().await, 1);

    let before = h.commits();
    let keys = h.webhook_keys().await.len();
    let undated = |kind: &str, user: Option<&str>| {
        let mut e = event(kind, &cid, user);
        e.as_object_mut().unwrap().remove("created_at");
        e
    };
    let ahead = |kind: &str, user: Option<&str>| {
        let mut e = event(kind, &cid, user);
        e["created_at"] = json!(rfc3339(
            time::OffsetDateTime::now_utc() + time::Duration::hours(1)
        ));
        e
    };
    let refused = [
        undated("call.session_ended", None),
        undated("call.session_participant_left", Some(&h.bob_id)),
        undated("call.session_participant_joined", Some(&h.alice_id)),
        undated("call.ended", None),
        ahead("call.session_ended", None),
        ahead("call.session_participant_joined", Some(&h.alice_id)),
    ];
    for (i, e) in refused.iter().enumerate() {
        let (status, reply) = h.deliver(e, &format!("t-bad-{i}")).await;
        assert_eq!(status, 400, "{e}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    assert!(
        h.deliver(&refused[0], "t-bad-0").await.1["error"]
            .as_str()
            .unwrap()
            .contains("created_at"),
        "the answer says what is missing"
    );
    assert_eq!(h.commits(), before, "nothing written");
    assert_eq!(h.webhook_keys().await.len(), keys);
    assert_eq!(h.presence(&h.bob_id).await.0, "joined");
    assert_eq!(h.presence(&h.alice_id).await.0, "invited");
    assert_eq!(h.joined_count().await, 1);
    assert_eq!(h.state().await.get_path("active"), Some(&Value::Bool(true)));
    assert_eq!(h.deliveries("VALIDATION_ERROR"), 7);

    // Events LinkedUp does not apply are still acknowledged without one.
    let started = undated("call.session_started", None);
    assert_eq!(h.deliver(&started, "t-2").await.1["status"], "ignored");
    // A little ahead (clocks differ) is fine.
    let mut soon = event("call.session_participant_left", &cid, Some(&h.bob_id));
    soon["created_at"] = json!(rfc3339(
        time::OffsetDateTime::now_utc() + time::Duration::seconds(30)
    ));
    assert_eq!(h.deliver(&soon, "t-3").await.1["status"], "processed");
    assert_eq!(h.joined_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_apply_in_the_order_stream_created_them() {
    let h = start().await;
    let cid = h.cid();
    let start = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let at = |kind: &str, user: Option<&str>, seconds: i64| {
        let mut e = event(kind, &cid, user);
        e["created_at"] = json!(rfc3339(start + time::Duration::seconds(seconds)));
        e
    };
    const JOINED: &str = "call.session_participant_joined";
    const LEFT: &str = "call.session_participant_left";
    let superseded = json!({
        "status": "ignored",
        "reason": "a presence event at least as recent was applied"
    });

    // Bob joins (t0) and leaves (t2); a join created at t1 (a retry Stream sends after the
    // first attempt failed) arrives after the leave: he stays left, counted nowhere.
    assert_eq!(
        h.deliver(&at(JOINED, Some(&h.bob_id), 0), "o-1").await.0,
        200
    );
    assert_eq!(h.joined_count().await, 1);
    let left = at(LEFT, Some(&h.bob_id), 2);
    assert_eq!(h.deliver(&left, "o-2").await.1["status"], "processed");
    assert_eq!(h.presence(&h.bob_id).await, ("left".into(), true, true));
    assert_eq!(h.joined_count().await, 0);
    let late_join = at(JOINED, Some(&h.bob_id), 1);
    assert_eq!(
        h.deliver(&late_join, "o-3").await,
        (200, superseded.clone())
    );
    assert_eq!(h.presence(&h.bob_id).await.0, "left");
    assert_eq!(h.joined_count().await, 0);
    // Another event created at the leave's own time is taken for it again.
    let mut same_time = at(JOINED, Some(&h.bob_id), 2);
    same_time["session_id"] = json!("session-2");
    assert_eq!(
        h.deliver(&same_time, "o-4").await,
        (200, superseded.clone())
    );
    assert_eq!(h.joined_count().await, 0);

    // A newer join applies; a leave from before it, arriving late, does not undo it.
    assert_eq!(
        h.deliver(&at(JOINED, Some(&h.bob_id), 3), "o-5").await.1["status"],
        "processed"
    );
    assert_eq!(h.joined_count().await, 1);
    let late_leave = at(LEFT, Some(&h.bob_id), 1);
    assert_eq!(
        h.deliver(&late_leave, "o-6").await,
        (200, superseded.clone())
    );
    assert_eq!(h.presence(&h.bob_id).await.0, "joined");
    assert_eq!(h.joined_count().await, 1);

    // The session ends (t5): joins created before it, arriving late, are ignored, whether the
    // participant had joined before (bob) or not (alice); later ones apply.
    let ended = at("call.session_ended", None, 5);
    assert_eq!(h.deliver(&ended, "o-7").await.1["status"], "processed");
    assert_eq!(h.joined_count().await, 0);
    for (user, id) in [(&h.bob_id, "o-8"), (&h.alice_id, "o-9")] {
        let late = at(JOINED, Some(user), 4);
        assert_eq!(
            h.deliver(&late, id).await,
            (200, superseded.clone()),
            "{id}"
        );
    }
    assert_eq!(h.presence(&h.bob_id).await.0, "left");
    assert_eq!(h.presence(&h.alice_id).await.0, "invited");
    assert_eq!(h.joined_count().await, 0);
    let rejoined = at(JOINED, Some(&h.alice_id), 6);
    assert_eq!(h.deliver(&rejoined, "o-10").await.1["status"], "processed");
    assert_eq!(h.presence(&h.alice_id).await.0, "joined");
    assert_eq!(h.joined_count().await, 1);

    // The participant record keeps the time of the last event applied to it.
    let alice_record = documents(h.server.engine(), "meetingParticipants")
        .await
        .into_iter()
        .find(|p| s(p, "userId") == h.alice_id)
        .unwrap();
    let t6 = (start + time::Duration::seconds(6)).unix_timestamp_nanos() / 1_000_000;
    assert_eq!(
        alice_record
            .get_path("presenceEventAt")
            .and_then(Value::as_i64),
        Some(t6 as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_during_shutdown_are_refused_with_503() {
    let h = start().await;
    h.server.engine().shutdown();
    let joined = event("call.session_participant_joined", &h.cid(), Some(&h.bob_id));
    let (status, _) = h.deliver(&joined, "s-1").await;
    assert_eq!(status, 503);
    assert_eq!(h.deliveries("UNAVAILABLE"), 1);
    assert!(h.webhook_keys().await.is_empty());
    h.server.shutdown().await;
}

/// An in-app join or leave counts as a presence event at the server's clock: a Stream event
/// about an earlier moment arriving later does not undo it; a later one still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_stream_event_does_not_undo_an_in_app_leave() {
    let h = start().await;
    let cid = h.cid();
    let now = time::OffsetDateTime::now_utc();
    let at = |kind: &str, offset: time::Duration| {
        let mut e = event(kind, &cid, Some(&h.bob_id));
        e["created_at"] = json!(rfc3339(now + offset));
        e
    };
    let call = |name: &'static str| {
        let engine = h.server.engine().clone();
        let (who, meeting) = (h.bob.clone(), h.meeting.clone());
        async move {
            engine
                .mutation(name, obj! { "meetingId" => meeting.as_str() }, Some(&who))
                .await
                .unwrap();
        }
    };
    call("meetings.join").await;
    call("meetings.leave").await;
    // Stream's join from a minute ago (a retry) arrives after the in-app leave.
    let stale = at(
        "call.session_participant_joined",
        -time::Duration::minutes(1),
    );
    assert_eq!(h.deliver(&stale, "late-1").await.1["status"], "ignored");
    assert_eq!(h.presence(&h.bob_id).await.0, "left");
    assert_eq!(h.joined_count().await, 0);
    // A join Stream saw after the leave applies.
    let fresh = at(
        "call.session_participant_joined",
        time::Duration::seconds(2),
    );
    assert_eq!(h.deliver(&fresh, "late-2").await.1["status"], "processed");
    assert_eq!(h.presence(&h.bob_id).await.0, "joined");
    assert_eq!(h.joined_count().await, 1);
}
