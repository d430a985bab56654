//! End-to-end tests of the transport against an in-process server on 127.0.0.1 port 0, with a
//! tiny counter schema and a raw quinn client that pins the server's certificate; the limits
//! that hold off hostile clients are tested in `limits`, results a client does not read in
//! `results`, the send window against a client that does not acknowledge in `send_window`,
//! transitions too large for one frame in `split`, and an update too large for one in
//! `oversized`.

mod limits;
mod oversized;
mod results;
mod send_window;
mod split;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use query_engine::context::Ctx;
use query_engine::error::{FunctionError, FunctionResult};
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::protocol::{
    decode_server, encode, encode_frame, read_frame, CallKind, CallOutcome, ClientMessage,
    Modification, ServerMessage, PROTOCOL_VERSION,
};
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::{Object, Value};
use quinn::{Connection, Endpoint, RecvStream, SendStream};

use crate::auth::DevClaims;
use crate::config::ServerConfig;
use crate::server::{RunningServer, Server};

/// Bound on any single wait in these tests, so a bug hangs nothing; never asserted on.
const WAIT: Duration = Duration::from_secs(20);

fn schema() -> SchemaDefinition {
    SchemaDefinition::new().table(
        TableDefinition::new(
            "counters",
            v::object([("name", v::string()), ("value", v::int64())]),
        )
        .index("by_name", &["name"]),
    )
}

#[derive(serde::Deserialize)]
struct Named {
    name: String,
}

/// The value of the counter `name`, 0 if there is none.
fn counter_value(ctx: &mut Ctx<'_, '_>, name: String) -> FunctionResult<i64> {
    let doc = ctx.query("counters", "by_name").eq("name", name).unique()?;
    Ok(doc
        .and_then(|d| d.get_path("value").and_then(Value::as_i64))
        .unwrap_or(0))
}

fn functions() -> Functions {
    let mut f = Functions::new();
    f.query(
        "counter:get",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| counter_value(ctx, a.name),
    );
    f.mutation(
        "counter:increment",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| {
            let doc = ctx
                .query("counters", "by_name")
                .eq("name", a.name.as_str())
                .unique()?;
            match doc {
                None => {
                    ctx.insert("counters", obj! { "name" => a.name, "value" => 1i64 })?;
                    Ok(1i64)
                }
                Some(doc) => {
                    let id = doc
                        .get_path("_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let n = doc.get_path("value").and_then(Value::as_i64).unwrap_or(0) + 1;
                    let mut changes = Object::new();
                    changes.insert("value".into(), n.into());
                    ctx.patch("counters", &id, changes)?;
                    Ok(n)
                }
            }
        },
    );
    f.query(
        "counter:padded",
        Visibility::Public,
        v::object([("name", v::string()), ("bytes", v::int64())]),
        v::any(),
        |ctx, a: Padded| {
            let value = counter_value(ctx, a.name)?;
            // Every byte changes with the value, so each change is sent whole.
            let fill = char::from(b'a' + value.rem_euclid(26) as u8);
            let pad = fill
                .to_string()
                .repeat(usize::try_from(a.bytes).unwrap_or(0));
            Ok(obj! { "value" => value, "pad" => pad })
        },
    );
    f.query(
        "counter:growing",
        Visibility::Public,
        v::object([("name", v::string()), ("bytes", v::int64())]),
        v::any(),
        |ctx, a: Padded| {
            let value = counter_value(ctx, a.name)?;
            // `bytes` of padding per unit of the counter: small at first, as large as a test
            // needs after a few increments.
            let len = usize::try_from(value.saturating_mul(a.bytes)).unwrap_or(0);
            Ok(obj! { "value" => value, "pad" => "x".repeat(len) })
        },
    );
    f.query(
        "counter:whoami",
        Visibility::Public,
        v::object([]),
        v::any(),
        |ctx, _: Value| Ok(ctx.auth().map(|i| i.subject.clone())),
    );
    f.query(
        "counter:mine",
        Visibility::Public,
        v::object([]),
        v::any(),
        |ctx, _: Value| {
            ctx.auth()
                .map(|i| Value::from(i.subject.clone()))
                .ok_or_else(|| FunctionError::unauthorized("sign in"))
        },
    );
    f.mutation(
        "counter:reset",
        Visibility::Internal,
        v::object([]),
        v::null(),
        |_ctx, _: Value| Ok(()),
    );
    f.action(
        "counter:gated",
        Visibility::Public,
        v::object([("gate", v::string())]),
        v::string(),
        |_ctx, a: Gated| async move {
            let gate = gate(&a.gate);
            gate.started.fetch_add(1, Ordering::SeqCst);
            if let Ok(permit) = gate.open.acquire().await {
                permit.forget();
            }
            Ok::<_, FunctionError>(a.gate)
        },
    );
    f.action(
        "counter:echo",
        Visibility::Public,
        v::any(),
        v::any(),
        |_ctx, args: Value| async move { Ok::<_, FunctionError>(args) },
    );
    f
}

/// A counter's value with `bytes` of padding: a result as large as a test needs.
#[derive(serde::Deserialize)]
struct Padded {
    name: String,
    bytes: i64,
}

#[derive(serde::Deserialize)]
struct Gated {
    gate: String,
}

/// Holds `counter:gated` calls until the test lets them through, one permit per call, and
/// counts the calls that started. Named, so that tests running at once never share one.
struct Gate {
    open: tokio::sync::Semaphore,
    started: AtomicUsize,
}

fn gate(name: &str) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Gate>>>> = OnceLock::new();
    GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(Gate {
                open: tokio::sync::Semaphore::new(0),
                started: AtomicUsize::new(0),
            })
        })
        .clone()
}

/// Waits until `n` calls have started behind the gate `name`.
async fn started(name: &str, n: usize) {
    let gate = gate(name);
    tokio::time::timeout(WAIT, async {
        while gate.started.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the gated calls started in time");
}

/// One development issuer key for the whole test binary: generating RSA keys is slow.
fn issuer_key_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    })
}

async fn start_with(dir: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    std::fs::write(dir.join("dev-issuer-key.pem"), issuer_key_pem()).unwrap();
    let mut config = ServerConfig::for_tests(dir);
    adjust(&mut config);
    Server::start(config, schema(), functions()).await.unwrap()
}

async fn start(dir: &Path) -> RunningServer {
    start_with(dir, |_| {}).await
}

async fn dial(server: &RunningServer) -> (Endpoint, Connection) {
    dial_from(server, LOCAL).await
}

/// The address clients bind unless a test says otherwise.
const LOCAL: &str = "127.0.0.1:0";

/// A client endpoint bound to `local` (an `ip:port`) that trusts the server.
fn client_endpoint(server: &RunningServer, local: &str) -> std::io::Result<Endpoint> {
    let mut endpoint = Endpoint::client(local.parse().unwrap())?;
    endpoint.set_default_client_config(server.pinned_client_config().unwrap());
    Ok(endpoint)
}

async fn dial_from(server: &RunningServer, local: &str) -> (Endpoint, Connection) {
    let endpoint = client_endpoint(server, local).unwrap();
    let conn = endpoint
        .connect(server.quic_connect_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

async fn send_msg(send: &mut SendStream, msg: &ClientMessage) {
    let frame = encode_frame(&encode(msg).unwrap()).unwrap();
    send.write_all(&frame).await.unwrap();
}

async fn recv_msg(recv: &mut RecvStream) -> Option<ServerMessage> {
    recv_frame(recv)
        .await
        .map(|frame| decode_server(&frame).unwrap())
}

/// The next frame's payload, undecoded.
async fn recv_frame(recv: &mut RecvStream) -> Option<Vec<u8>> {
    tokio::time::timeout(WAIT, read_frame(recv, u32::MAX))
        .await
        .expect("server answered in time")
        .ok()?
}

struct Client {
    _endpoint: Endpoint,
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

impl Client {
    async fn connect(server: &RunningServer) -> Client {
        Client::connect_from(server, LOCAL).await
    }

    /// Connects from the local address `local` (an `ip:port`).
    async fn connect_from(server: &RunningServer, local: &str) -> Client {
        let (endpoint, conn) = dial_from(server, local).await;
        Client::handshake(endpoint, conn).await
    }

    /// Connects as a client that reassembles transitions sent in parts.
    async fn connect_taking_parts(server: &RunningServer) -> Client {
        let (endpoint, conn) = dial(server).await;
        Client::handshake_as(endpoint, conn, true).await
    }

    /// Opens the control stream of `conn` and says `Connect`.
    async fn handshake(endpoint: Endpoint, conn: Connection) -> Client {
        Client::handshake_as(endpoint, conn, false).await
    }

    /// As `handshake`, announcing `transitionParts` or not.
    async fn handshake_as(endpoint: Endpoint, conn: Connection, transition_parts: bool) -> Client {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send_msg(
            &mut send,
            &ClientMessage::Connect {
                protocol_version: PROTOCOL_VERSION,
                client_name: "test".into(),
                last_seen_ts: None,
                transition_parts,
            },
        )
        .await;
        let connected = recv_msg(&mut recv).await.unwrap();
        assert!(
            matches!(
                connected,
                ServerMessage::Connected {
                    protocol_version: 1,
                    ..
                }
            ),
            "{connected:?}"
        );
        Client {
            _endpoint: endpoint,
            conn,
            send,
            recv,
        }
    }

    async fn control(&mut self, msg: ClientMessage) {
        send_msg(&mut self.send, &msg).await;
    }

    async fn next(&mut self) -> ServerMessage {
        recv_msg(&mut self.recv).await.expect("a control message")
    }

    /// `counter:increment` as a mutation carrying `mutation_id`.
    async fn increment(&self, args: &Value, mutation_id: &str) -> CallOutcome {
        self.call_with(
            CallKind::Mutation,
            "counter:increment",
            args.clone(),
            Some(mutation_id),
        )
        .await
    }

    async fn call_with(
        &self,
        kind: CallKind,
        function: &str,
        args: Value,
        mutation_id: Option<&str>,
    ) -> CallOutcome {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        send_msg(
            &mut send,
            &ClientMessage::Call {
                request_id: 7,
                kind,
                function: function.into(),
                args,
                mutation_id: mutation_id.map(str::to_string),
            },
        )
        .await;
        send.finish().unwrap();
        match recv_msg(&mut recv).await {
            Some(ServerMessage::CallResult { request_id, result }) => {
                assert_eq!(request_id, 7);
                result
            }
            other => panic!("expected a CallResult, got {other:?}"),
        }
    }

    async fn call(&self, kind: CallKind, function: &str, args: Value) -> CallOutcome {
        self.call_with(kind, function, args, None).await
    }

    async fn value(&self, kind: CallKind, function: &str, args: Value) -> Value {
        match self.call(kind, function, args).await {
            CallOutcome::Ok { value, .. } => value,
            CallOutcome::Err(e) => panic!("{function} failed: {e:?}"),
        }
    }

    /// Sends `Authenticate` with `token` and expects `AuthOk` naming `subject`.
    async fn authenticate(&mut self, token: Option<String>, subject: Option<&str>) {
        self.control(ClientMessage::Authenticate { token }).await;
        assert_eq!(
            self.next_non_transition().await,
            ServerMessage::AuthOk {
                subject: subject.map(str::to_string)
            }
        );
    }

    /// Skips transitions (subscriptions are not under test there) to the next other message.
    async fn next_non_transition(&mut self) -> ServerMessage {
        loop {
            match self.next().await {
                ServerMessage::Transition { .. } => continue,
                other => return other,
            }
        }
    }

    async fn closed(&self) {
        tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("connection closed in time");
    }
}

/// The application code the server closes `conn` with.
async fn close_code(conn: &Connection) -> quinn::VarInt {
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code,
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

fn err_code(outcome: &CallOutcome) -> &str {
    match outcome {
        CallOutcome::Err(e) => &e.code,
        CallOutcome::Ok { value, .. } => panic!("expected an error, got {value:?}"),
    }
}

fn fatal_code(msg: &ServerMessage) -> &str {
    match msg {
        ServerMessage::Error {
            code, fatal: true, ..
        } => code,
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_calls_of_each_kind() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(&server).await;
    let args = obj! { "name" => "a" };
    assert_eq!(
        client
            .value(CallKind::Query, "counter:get", args.clone())
            .await,
        Value::Int64(0)
    );
    let CallOutcome::Ok { value, ts } = client
        .call(CallKind::Mutation, "counter:increment", args.clone())
        .await
    else {
        panic!("increment failed");
    };
    assert_eq!(value, Value::Int64(1));
    let CallOutcome::Ok { value, ts: read_ts } = client
        .call(CallKind::Query, "counter:get", args.clone())
        .await
    else {
        panic!("get failed");
    };
    assert_eq!(value, Value::Int64(1));
    assert!(read_ts >= ts);
    let echoed = obj! { "x" => 1.5f64, "b" => Value::Bytes(vec![1, 2]) };
    assert_eq!(
        client
            .value(CallKind::Action, "counter:echo", echoed.clone())
            .await,
        echoed
    );
    // Unknown, internal and wrong-kind functions, and bad arguments.
    let missing = client.call(CallKind::Query, "nope", obj! {}).await;
    assert_eq!(err_code(&missing), "NOT_FOUND");
    let internal = client
        .call(CallKind::Mutation, "counter:reset", obj! {})
        .await;
    assert_eq!(err_code(&internal), "NOT_FOUND");
    let wrong_kind = client
        .call(CallKind::Query, "counter:increment", args)
        .await;
    assert_eq!(err_code(&wrong_kind), "VALIDATION_ERROR");
    let bad_args = client
        .call(CallKind::Query, "counter:get", obj! { "name" => 5i64 })
        .await;
    assert_eq!(err_code(&bad_args), "VALIDATION_ERROR");
    client.control(ClientMessage::Ping { nonce: 42 }).await;
    assert_eq!(
        client.next_non_transition().await,
        ServerMessage::Pong { nonce: 42 }
    );
    assert_eq!(
        server
            .metrics()
            .calls("counter:increment", "mutation", "OK"),
        1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version_and_non_connect_first_frames_are_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (_endpoint, conn) = dial(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send_msg(
        &mut send,
        &ClientMessage::Connect {
            protocol_version: 99,
            client_name: "future".into(),
            last_seen_ts: None,
            transition_parts: false,
        },
    )
    .await;
    let error = recv_msg(&mut recv).await.unwrap();
    assert_eq!(fatal_code(&error), "VALIDATION_ERROR");
    let ServerMessage::Error { data, .. } = &error else {
        unreachable!()
    };
    assert_eq!(
        data.get_path("supportedVersions"),
        Some(&Value::Array(vec![Value::Int64(1)]))
    );
    tokio::time::timeout(WAIT, conn.closed()).await.unwrap();

    let (_endpoint, conn) = dial(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send_msg(&mut send, &ClientMessage::Ping { nonce: 1 }).await;
    assert_eq!(
        fatal_code(&recv_msg(&mut recv).await.unwrap()),
        "VALIDATION_ERROR"
    );
    tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_unauthorized_and_a_dev_token_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(&server).await;
    client
        .control(ClientMessage::Authenticate {
            token: Some("not-a-jwt".into()),
        })
        .await;
    match client.next_non_transition().await {
        ServerMessage::Error {
            code, fatal: false, ..
        } => assert_eq!(code, "UNAUTHORIZED"),
        other => panic!("expected UNAUTHORIZED, got {other:?}"),
    }
    assert_eq!(
        client
            .value(CallKind::Query, "counter:whoami", obj! {})
            .await,
        Value::Null
    );
    let token = server.mint_dev_token(DevClaims::new("user_1")).unwrap();
    client.authenticate(Some(token), Some("user_1")).await;
    assert_eq!(
        client
            .value(CallKind::Query, "counter:whoami", obj! {})
            .await,
        Value::from("user_1")
    );
    // A bad token after a good one drops the identity.
    client
        .control(ClientMessage::Authenticate {
            token: Some("x.y.z".into()),
        })
        .await;
    assert!(matches!(
        client.next_non_transition().await,
        ServerMessage::Error { fatal: false, .. }
    ));
    assert_eq!(
        client
            .value(CallKind::Query, "counter:whoami", obj! {})
            .await,
        Value::Null
    );
    client.authenticate(None, None).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let bystander = Client::connect(&server).await;

    // Oversize on the control stream: the prefix alone is enough.
    let mut client = Client::connect(&server).await;
    client
        .send
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .unwrap();
    assert_eq!(
        fatal_code(&client.next_non_transition().await),
        "VALIDATION_ERROR"
    );
    client.closed().await;

    // Malformed MessagePack on a call stream.
    let client = Client::connect(&server).await;
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&[0xc1, 0x00]).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    assert_eq!(
        fatal_code(&recv_msg(&mut recv).await.unwrap()),
        "VALIDATION_ERROR"
    );
    client.closed().await;

    // A control message on a call stream.
    let client = Client::connect(&server).await;
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    send_msg(&mut send, &ClientMessage::Ping { nonce: 3 }).await;
    assert_eq!(
        fatal_code(&recv_msg(&mut recv).await.unwrap()),
        "VALIDATION_ERROR"
    );
    client.closed().await;

    // Trailing bytes after a valid message on the control stream.
    let mut client = Client::connect(&server).await;
    let mut payload = encode(&ClientMessage::Ping { nonce: 1 }).unwrap();
    payload.push(0);
    client
        .send
        .write_all(&encode_frame(&payload).unwrap())
        .await
        .unwrap();
    assert_eq!(
        fatal_code(&client.next_non_transition().await),
        "VALIDATION_ERROR"
    );
    client.closed().await;

    // The bystander never noticed.
    assert_eq!(
        bystander
            .value(
                CallKind::Mutation,
                "counter:increment",
                obj! { "name" => "b" }
            )
            .await,
        Value::Int64(1)
    );
    assert!(bystander.conn.close_reason().is_none());
    server.shutdown().await;
}

/// Retried mutations the server answered from their records.
fn replays(server: &RunningServer) -> u64 {
    server
        .metrics()
        .mutation_replays
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The value of a successful call and its timestamp.
fn ok_value(outcome: &CallOutcome) -> (Value, u64) {
    match outcome {
        CallOutcome::Ok { value, ts } => (value.clone(), *ts),
        other => panic!("expected a result, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_mutation_id_returns_the_first_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let args = obj! { "name" => "m" };
    let first = Client::connect(&server).await;
    let original = first.increment(&args, "m-1").await;
    let (value, ts) = ok_value(&original);
    assert_eq!(value, Value::Int64(1));
    // The retry comes on a new connection, as after a reconnect: the same value, at a
    // timestamp whose snapshot includes the original commit.
    let second = Client::connect(&server).await;
    let retried = second.increment(&args, "m-1").await;
    let (retried_value, retried_ts) = ok_value(&retried);
    assert_eq!(retried_value, value);
    assert!(retried_ts >= ts);
    // Concurrent duplicates: one runs, the other replays it.
    let (a, b) = tokio::join!(
        first.increment(&args, "m-2"),
        second.increment(&args, "m-2"),
    );
    assert_eq!(ok_value(&a).0, Value::Int64(2));
    assert_eq!(ok_value(&b).0, Value::Int64(2));
    assert_eq!(
        first
            .value(CallKind::Query, "counter:get", args.clone())
            .await,
        Value::Int64(2)
    );
    // Another identity's mutationId does not collide.
    let token = server.mint_dev_token(DevClaims::new("user_2")).unwrap();
    let mut third = Client::connect(&server).await;
    third.authenticate(Some(token), Some("user_2")).await;
    let other = third.increment(&args, "m-1").await;
    assert_eq!(ok_value(&other).0, Value::Int64(3));
    assert_eq!(replays(&server), 2);
    server.shutdown().await;
}

/// A server restart is one of the reasons a client retries (§12): the outcome is remembered
/// in the database, so the retry on the restarted server is not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_retried_after_a_restart_is_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let args = obj! { "name" => "m" };
    let server = start(dir.path()).await;
    let client = Client::connect(&server).await;
    let original = client.increment(&args, "m-1").await;
    let (value, ts) = ok_value(&original);
    assert_eq!(value, Value::Int64(1));
    drop(client);
    server.shutdown().await;

    let server = start(dir.path()).await;
    let client = Client::connect(&server).await;
    let retried = client.increment(&args, "m-1").await;
    let (retried_value, retried_ts) = ok_value(&retried);
    assert_eq!(retried_value, value);
    assert!(retried_ts >= ts);
    assert_eq!(
        client.value(CallKind::Query, "counter:get", args).await,
        Value::Int64(1)
    );
    assert_eq!(replays(&server), 1);
    server.shutdown().await;
}

/// A token that expires without a refresh stops counting (§11): the server says so with a
/// non-fatal `UNAUTHORIZED`, re-runs the subscriptions anonymously (one that needs the
/// identity fails, marked `tokenExpired`, so that the client may subscribe it again) and
/// refuses calls until the next `Authenticate`. Waits out the verifier's 30 s leeway, bounded,
/// never timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_drops_the_identity_and_subscriptions_rerun_anonymously() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(&server).await;
    let mut claims = DevClaims::new("user_1");
    claims.ttl = Duration::from_secs(1);
    let token = server.mint_dev_token(claims).unwrap();
    client.authenticate(Some(token), Some("user_1")).await;
    client
        .control(ClientMessage::Subscribe {
            query_id: 1,
            function: "counter:whoami".into(),
            args: obj! {},
        })
        .await;
    client
        .control(ClientMessage::Subscribe {
            query_id: 2,
            function: "counter:mine".into(),
            args: obj! {},
        })
        .await;
    let mine_failed = |m: &ServerMessage| match m {
        ServerMessage::Transition { modifications, .. } => {
            modifications.iter().find_map(|m| match m {
                Modification::Failed { query_id: 2, error } => Some(error.clone()),
                _ => None,
            })
        }
        _ => None,
    };
    let whoami = |m: &ServerMessage| match m {
        ServerMessage::Transition { modifications, .. } => {
            modifications.iter().find_map(|m| match m {
                Modification::Updated {
                    query_id: 1,
                    diff: query_engine::diff::ResultDiff::Replace(v),
                } => Some(v.clone()),
                _ => None,
            })
        }
        _ => None,
    };
    // Transitions without the query's result (the re-authentication's) may come first.
    let first = loop {
        if let Some(v) = whoami(&client.next().await) {
            break v;
        }
    };
    assert_eq!(first, Value::from("user_1"));
    // Pings keep the connection busy (and each read short) while the leeway runs out; the
    // notice and the anonymous re-run may arrive in either order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30 + 1 + 20);
    let (mut notice, mut anonymous, mut failed, mut nonce) = (None, None, None, 0);
    while notice.is_none() || anonymous.is_none() || failed.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no expiry notice and anonymous re-run within the bound"
        );
        nonce += 1;
        client.control(ClientMessage::Ping { nonce }).await;
        loop {
            let m = client.next().await;
            if let Some(e) = mine_failed(&m) {
                failed = Some(e);
            }
            if let Some(v) = whoami(&m) {
                anonymous = Some(v);
            } else if let ServerMessage::Error {
                code, fatal, data, ..
            } = &m
            {
                assert_eq!(data.get_path("tokenExpired"), Some(&Value::Bool(true)));
                notice = Some((code.clone(), *fatal));
            } else if matches!(m, ServerMessage::Pong { .. }) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(notice, Some(("UNAUTHORIZED".to_string(), false)));
    assert_eq!(anonymous, Some(Value::Null));
    let failed = failed.unwrap();
    assert_eq!(failed.code, "UNAUTHORIZED");
    assert_eq!(
        failed.data.get_path("tokenExpired"),
        Some(&Value::Bool(true)),
        "{failed:?}"
    );
    // Calls are not run anonymously for a client that signed in: they are refused, marked,
    // until it authenticates again (here: signs out).
    match client
        .call(CallKind::Query, "counter:whoami", obj! {})
        .await
    {
        CallOutcome::Err(e) => {
            assert_eq!(e.code, "UNAUTHORIZED");
            assert_eq!(e.data.get_path("tokenExpired"), Some(&Value::Bool(true)));
        }
        other => panic!("a call under the lapsed identity ran: {other:?}"),
    }
    client.authenticate(None, None).await;
    assert_eq!(
        client
            .value(CallKind::Query, "counter:whoami", obj! {})
            .await,
        Value::Null
    );
    server.shutdown().await;
}

/// A token whose `exp` is beyond what the clock can represent never expires; it used to
/// overflow the expiry deadline and panic the connection's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_at_the_end_of_time_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(&server).await;
    let mut claims = DevClaims::new("user_1");
    claims.ttl = Duration::from_secs(u64::MAX);
    let token = server.mint_dev_token(claims).unwrap();
    client.authenticate(Some(token), Some("user_1")).await;
    assert_eq!(
        client
            .value(CallKind::Query, "counter:whoami", obj! {})
            .await,
        Value::from("user_1")
    );
    client.control(ClientMessage::Ping { nonce: 7 }).await;
    loop {
        if let ServerMessage::Pong { nonce } = client.next().await {
            assert_eq!(nonce, 7);
            break;
        }
    }
    server.shutdown().await;
}

/// A query a write-only connection subscribes after its calls reflects its writes (§8: it
/// joins at, or is brought to, a transition ending at or after the last commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_client_subscribing_later_sees_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(&server).await;
    let args = obj! { "name" => "w" };
    let mut last = (0, Value::Int64(0));
    for _ in 0..3 {
        let CallOutcome::Ok { value, ts } = client
            .call(CallKind::Mutation, "counter:increment", args.clone())
            .await
        else {
            panic!("increment failed");
        };
        last = (ts, value);
    }
    assert_eq!(last.1, Value::Int64(3));
    client
        .control(ClientMessage::Subscribe {
            query_id: 1,
            function: "counter:get".into(),
            args,
        })
        .await;
    // Transitions until one ends at or after the last commit; the result then holds all three.
    let mut value = None;
    loop {
        let ServerMessage::Transition {
            end_ts,
            modifications,
            ..
        } = client.next().await
        else {
            panic!("expected a transition");
        };
        for m in modifications {
            match m {
                Modification::Updated {
                    query_id: 1,
                    diff: query_engine::diff::ResultDiff::Replace(v),
                } => value = Some(v),
                other => panic!("unexpected modification {other:?}"),
            }
        }
        if end_ts >= last.0 {
            break;
        }
    }
    assert_eq!(value, Some(Value::Int64(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_transitions_and_report_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(&server).await;
    let args = obj! { "name" => "s" };
    client
        .control(ClientMessage::Subscribe {
            query_id: 1,
            function: "counter:get".into(),
            args: args.clone(),
        })
        .await;
    let mut last_end = 0;
    let ServerMessage::Transition {
        start_ts,
        end_ts,
        modifications,
        ..
    } = client.next().await
    else {
        panic!("expected the first transition");
    };
    assert_eq!(start_ts, 0);
    assert!(matches!(
        &modifications[..],
        [Modification::Updated { query_id: 1, .. }]
    ));
    last_end = last_end.max(end_ts);

    // Our own write: a transition with endTs >= the commit ts follows, carrying the change.
    let CallOutcome::Ok { ts, .. } = client
        .call(CallKind::Mutation, "counter:increment", args.clone())
        .await
    else {
        panic!("increment failed");
    };
    let mut saw_update = false;
    while last_end < ts || !saw_update {
        let ServerMessage::Transition {
            start_ts,
            end_ts,
            modifications,
            ..
        } = client.next().await
        else {
            panic!("expected a transition");
        };
        assert_eq!(start_ts, last_end, "transitions are contiguous");
        last_end = end_ts;
        saw_update |= modifications
            .iter()
            .any(|m| matches!(m, Modification::Updated { query_id: 1, .. }));
    }

    // A live id again: a non-fatal error naming it.
    client
        .control(ClientMessage::Subscribe {
            query_id: 1,
            function: "counter:get".into(),
            args: args.clone(),
        })
        .await;
    match client.next_non_transition().await {
        ServerMessage::Error {
            code, fatal, data, ..
        } => {
            assert_eq!(code, "VALIDATION_ERROR");
            assert!(!fatal);
            assert_eq!(data.get_path("queryId"), Some(&Value::Int64(1)));
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // An unknown function: Failed in a transition that keeps the timestamps contiguous.
    client
        .control(ClientMessage::Subscribe {
            query_id: 2,
            function: "nope".into(),
            args: obj! {},
        })
        .await;
    loop {
        let ServerMessage::Transition {
            start_ts,
            end_ts,
            modifications,
            ..
        } = client.next().await
        else {
            panic!("expected a transition");
        };
        assert_eq!(start_ts, last_end);
        last_end = end_ts;
        if let Some(Modification::Failed { error, .. }) = modifications
            .iter()
            .find(|m| matches!(m, Modification::Failed { query_id: 2, .. }))
        {
            assert_eq!(error.code, "NOT_FOUND");
            break;
        }
    }
    client
        .control(ClientMessage::Unsubscribe { query_id: 1 })
        .await;
    loop {
        let ServerMessage::Transition { modifications, .. } = client.next().await else {
            panic!("expected a transition");
        };
        if modifications
            .iter()
            .any(|m| matches!(m, Modification::Removed { query_id: 1 }))
        {
            break;
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_jwks_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = Client::connect(&server).await;
    client
        .value(
            CallKind::Mutation,
            "counter:increment",
            obj! { "name" => "h" },
        )
        .await;
    let base = format!("http://{}", server.http_addr());
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["mode"], "development");
    assert_eq!(body["connections"], 1);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "server_connections_open 1",
        r#"server_calls_total{function="counter:increment",kind="mutation",code="OK"} 1"#,
        "server_call_duration_seconds_bucket{function=\"counter:increment\"",
        "subscriptions_active",
        "engine_commits_total",
        "engine_commit_write_seconds_count",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let jwks: serde_json::Value = http
        .get(format!("{base}{}", crate::auth::JWKS_PATH))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], server.dev_issuer().unwrap().kid());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_connected_clients_and_releases_the_http_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.drain_timeout = Duration::from_millis(200);
    })
    .await;
    let mut client = Client::connect(&server).await;
    let http_addr = server.http_addr();
    server.shutdown().await;
    let goodbye = client.next_non_transition().await;
    assert_eq!(fatal_code(&goodbye), "INTERNAL");
    client.closed().await;
    // The HTTP port is released.
    assert!(tokio::net::TcpStream::connect(http_addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = std::sync::Arc::new(Client::connect(&server).await);
    const TASKS: usize = 32;
    const CALLS_PER_TASK: usize = 25;
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let client = client.clone();
        tasks.spawn(async move {
            for _ in 0..CALLS_PER_TASK {
                let name = if t % 2 == 0 { "hot" } else { "cold" };
                client
                    .value(
                        CallKind::Mutation,
                        "counter:increment",
                        obj! { "name" => name },
                    )
                    .await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let elapsed = started.elapsed();
    let total = (TASKS * CALLS_PER_TASK) as i64;
    let hot = client
        .value(CallKind::Query, "counter:get", obj! { "name" => "hot" })
        .await;
    let cold = client
        .value(CallKind::Query, "counter:get", obj! { "name" => "cold" })
        .await;
    assert_eq!(hot, Value::Int64(total / 2));
    assert_eq!(cold, Value::Int64(total / 2));
    println!(
        "{total} mutations over {TASKS} concurrent streams in {elapsed:?} ({:.0}/s, debug build)",
        total as f64 / elapsed.as_secs_f64()
    );
    server.shutdown().await;
}

fn call_msg(request_id: u64, kind: CallKind, function: &str, args: Value) -> ClientMessage {
    ClientMessage::Call {
        request_id,
        kind,
        function: function.into(),
        args,
        mutation_id: None,
    }
}

fn gated(request_id: u64, name: &str) -> ClientMessage {
    call_msg(
        request_id,
        CallKind::Action,
        "counter:gated",
        obj! { "gate" => name },
    )
}

/// The next `CallResult` on a call stream, as (requestId, value).
async fn next_result(recv: &mut RecvStream) -> (u64, Value) {
    match recv_msg(recv).await {
        Some(ServerMessage::CallResult {
            request_id,
            result: CallOutcome::Ok { value, .. },
        }) => (request_id, value),
        other => panic!("expected a successful CallResult, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_carries_many_calls_answered_in_completion_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = Client::connect(&server).await;
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    // A call that waits, then ones that do not: theirs come back first, matched by id.
    send_msg(&mut send, &gated(1, "order")).await;
    started("order", 1).await;
    for id in 2..=21u64 {
        let msg = call_msg(
            id,
            CallKind::Mutation,
            "counter:increment",
            obj! { "name" => "multi" },
        );
        send_msg(&mut send, &msg).await;
    }
    let mut values = Vec::new();
    for _ in 2..=21 {
        let (id, value) = next_result(&mut recv).await;
        assert!(
            (2..=21).contains(&id),
            "result for {id} before the gate opened"
        );
        values.push(value.as_i64().unwrap());
    }
    values.sort_unstable();
    assert_eq!(values, (1..=20).collect::<Vec<i64>>());
    gate("order").open.add_permits(1);
    assert_eq!(next_result(&mut recv).await, (1, Value::from("order")));
    // A requestId may be used again once its result has arrived.
    send_msg(
        &mut send,
        &call_msg(
            5,
            CallKind::Query,
            "counter:get",
            obj! { "name" => "multi" },
        ),
    )
    .await;
    assert_eq!(next_result(&mut recv).await, (5, Value::Int64(20)));
    // After the client's FIN and the last result, the server finishes its side.
    send.finish().unwrap();
    assert!(recv_msg(&mut recv).await.is_none());
    assert!(client.conn.close_reason().is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_bounded_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| c.limits.max_concurrent_calls = 2).await;
    let client = Client::connect(&server).await;
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    for id in 1..=3 {
        send_msg(&mut send, &gated(id, "bound")).await;
    }
    send_msg(
        &mut send,
        &call_msg(4, CallKind::Action, "counter:echo", obj! { "e" => 1i64 }),
    )
    .await;
    // Two calls hold both slots; the third gated call and the echo behind it wait unread, so
    // the echo cannot overtake: results come gated, gated, echo, gated.
    started("bound", 2).await;
    let open = |n| gate("bound").open.add_permits(n);
    open(1);
    let (first, _) = next_result(&mut recv).await;
    assert!(first == 1 || first == 2, "{first}");
    started("bound", 3).await;
    open(1);
    let (second, _) = next_result(&mut recv).await;
    assert!((1..=3).contains(&second) && second != first, "{second}");
    assert_eq!(next_result(&mut recv).await.0, 4);
    open(1);
    let (last, _) = next_result(&mut recv).await;
    assert_eq!(first + second + last, 6);
    assert_eq!(gate("bound").started.load(Ordering::SeqCst), 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_id_in_flight_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = Client::connect(&server).await;
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    send_msg(&mut send, &gated(9, "duplicate")).await;
    started("duplicate", 1).await;
    send_msg(
        &mut send,
        &call_msg(9, CallKind::Query, "counter:get", obj! { "name" => "d" }),
    )
    .await;
    assert_eq!(
        fatal_code(&recv_msg(&mut recv).await.unwrap()),
        "VALIDATION_ERROR"
    );
    client.closed().await;
    gate("duplicate").open.add_permits(1);
    server.shutdown().await;
}

/// A call runs under the identity the connection has when its frame is read (§5.5): one sent
/// after `AuthOk` runs under the new identity, and one read before an `Authenticate` runs under
/// the old even when it starts later, waiting at the bound on calls in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_runs_under_the_identity_when_its_frame_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| c.limits.max_concurrent_calls = 1).await;
    let mut client = Client::connect(&server).await;
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    let whoami = |id| call_msg(id, CallKind::Query, "counter:whoami", obj! {});
    send_msg(&mut send, &whoami(1)).await;
    assert_eq!(next_result(&mut recv).await, (1, Value::Null));
    let token = server.mint_dev_token(DevClaims::new("user_2")).unwrap();
    client.authenticate(Some(token), Some("user_2")).await;
    send_msg(&mut send, &whoami(2)).await;
    assert_eq!(next_result(&mut recv).await, (2, Value::from("user_2")));

    // A gated call holds the one slot; the next call's frame is read (its bytes held in the
    // inbound budget) and waits for the slot while the client signs out.
    send_msg(&mut send, &gated(3, "identity")).await;
    started("identity", 1).await;
    send_msg(&mut send, &whoami(4)).await;
    let held = &server.metrics().inbound_frame_bytes;
    limits::until("the waiting call's frame is read", || {
        held.load(Ordering::Relaxed) > 0
    })
    .await;
    client.authenticate(None, None).await;
    gate("identity").open.add_permits(1);
    assert_eq!(next_result(&mut recv).await, (3, Value::from("identity")));
    assert_eq!(next_result(&mut recv).await, (4, Value::from("user_2")));

    send_msg(&mut send, &whoami(5)).await;
    send.finish().unwrap();
    assert_eq!(next_result(&mut recv).await, (5, Value::Null));
    assert!(recv_msg(&mut recv).await.is_none());
    server.shutdown().await;
}
