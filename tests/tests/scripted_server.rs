//! End-to-end against a scripted server: a QUIC endpoint that speaks just enough of the
//! protocol to put the SDK where a real server puts it only when something else went wrong
//! (here, a fatal `Error` on a call stream, a lower frame limit after a reconnect, a
//! transition's parts that break the protocol, or a connection lost under a mutation whose
//! retry is refused before the server looks its id up), so that what the SDK does then is
//! tested deterministically.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use linkedup_client::{CallKind, Client, ClientError, ClientOptions, Subscription};
use linkedup_server::transport::tls::CertifiedKey;
use query_engine::diff::ResultDiff;
use query_engine::obj;
use query_engine::protocol::{
    decode_call, decode_client, encode, read_frame, write_frame, CallOutcome, ClientMessage,
    ErrorPayload, Modification, ServerMessage, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
    TOKEN_EXPIRED,
};
use query_engine::value::Value;
use tokio::sync::mpsc;

/// Guards against a hung test; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);
/// On the first connection, a call to this function is answered with a fatal `Error` on its
/// call stream, as a server answers a call it cannot read.
const FATAL: &str = "scripted:fatal";
/// On the first connection, a call to this function is never answered (nor is an
/// `Authenticate`).
const UNANSWERED: &str = "scripted:unanswered";
/// On the first connection, a subscription to this function is answered with a transition's
/// first part, then a last part of another transition (other `endTs`).
const MISMATCHED_PARTS: &str = "scripted:mismatchedParts";
/// On the first connection, a subscription to this function is answered with parts of one
/// transition that never ends (`ENDLESS_PARTS_MAX` at most, `PART_PAD_BYTES` each).
const ENDLESS_PARTS: &str = "scripted:endlessParts";
const ENDLESS_PARTS_MAX: usize = 1_000;
const PART_PAD_BYTES: usize = 1_000;
/// On the first connection, a call to this function closes the connection unanswered; on the
/// next ones it is shed as overloaded (`RATE_LIMITED`, `reason: "overloaded"`), as a server
/// sheds a call before looking its mutation id up.
const CUT_THEN_SHED: &str = "scripted:cutThenShed";
/// As `CUT_THEN_SHED`, but refused later for an expired token (`UNAUTHORIZED`,
/// `tokenExpired`), which a server also answers before looking the mutation id up.
const CUT_THEN_EXPIRED: &str = "scripted:cutThenExpired";
/// The subject of every token the scripted server accepts.
const SUBJECT: &str = "scripted-user";

/// The frame limit a scripted server announces on connection `n` (1 for the first).
type FrameLimits = fn(usize) -> u32;

/// A call as the scripted server read it.
#[derive(Debug)]
struct Seen {
    /// 1 for the first connection.
    connection: usize,
    /// Which call stream of its connection it came on, 1 for the first.
    stream: usize,
    function: String,
    mutation_id: Option<String>,
}

struct Scripted {
    addr: SocketAddr,
    fingerprint: [u8; 32],
    seen: mpsc::UnboundedReceiver<Seen>,
    _dir: tempfile::TempDir,
}

impl Scripted {
    async fn start() -> Scripted {
        Scripted::start_with(|_| DEFAULT_MAX_FRAME_BYTES).await
    }

    async fn start_with(frame_limits: FrameLimits) -> Scripted {
        let dir = tempfile::tempdir().unwrap();
        let key = CertifiedKey::load_or_generate_dev(dir.path()).unwrap();
        let config = quinn::ServerConfig::with_crypto(key.quic_server_crypto().unwrap());
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let addr = endpoint.local_addr().unwrap();
        tokio::spawn(serve(endpoint, tx, frame_limits));
        Scripted {
            addr,
            fingerprint: key.fingerprint().0,
            seen,
            _dir: dir,
        }
    }

    fn options(&self) -> ClientOptions {
        common::pinned_options(self.fingerprint)
    }

    async fn next_call(&mut self) -> Seen {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("no call in time")
            .expect("the scripted server ended")
    }
}

/// Serves one connection after another.
async fn serve(
    endpoint: quinn::Endpoint,
    seen: mpsc::UnboundedSender<Seen>,
    frame_limits: FrameLimits,
) {
    let mut connection = 0;
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else {
            continue;
        };
        connection += 1;
        serve_connection(conn, connection, frame_limits(connection), &seen).await;
    }
}

/// Answers `Connect`, then serves call streams until the connection ends.
async fn serve_connection(
    conn: quinn::Connection,
    connection: usize,
    max_frame_bytes: u32,
    seen: &mpsc::UnboundedSender<Seen>,
) {
    let Ok((mut control_send, mut control_recv)) = conn.accept_bi().await else {
        return;
    };
    let Ok(Some(frame)) = read_frame(&mut control_recv, DEFAULT_MAX_FRAME_BYTES).await else {
        return;
    };
    assert!(matches!(
        decode_client(&frame),
        Ok(ClientMessage::Connect { .. })
    ));
    let connected = ServerMessage::Connected {
        protocol_version: PROTOCOL_VERSION,
        server_version: "scripted".into(),
        session_id: format!("scripted-{connection}"),
        max_frame_bytes,
        max_subscriptions: 16,
        max_concurrent_calls: 16,
    };
    write(&mut control_send, &connected).await;
    tokio::spawn(serve_control(connection, control_send, control_recv));
    let mut stream = 0;
    while let Ok((send, recv)) = conn.accept_bi().await {
        stream += 1;
        tokio::spawn(serve_calls(
            conn.clone(),
            connection,
            stream,
            send,
            recv,
            seen.clone(),
        ));
    }
}

/// Answers `Authenticate` (with any token, but not on the first connection), `Ping`, and
/// `Subscribe` with a first result: the connection's number.
async fn serve_control(
    connection: usize,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut ts = 0;
    while let Ok(Some(frame)) = read_frame(&mut recv, DEFAULT_MAX_FRAME_BYTES).await {
        let reply = match decode_client(&frame) {
            Ok(ClientMessage::Authenticate { .. }) if connection == 1 => continue,
            Ok(ClientMessage::Authenticate { token }) => ServerMessage::AuthOk {
                subject: token.map(|_| SUBJECT.to_string()),
            },
            Ok(ClientMessage::Ping { nonce }) => ServerMessage::Pong { nonce },
            Ok(ClientMessage::Subscribe {
                query_id, function, ..
            }) if connection == 1 && [MISMATCHED_PARTS, ENDLESS_PARTS].contains(&&*function) => {
                let part = |end_ts, continued, value: Value| ServerMessage::Transition {
                    start_ts: ts,
                    end_ts,
                    modifications: vec![Modification::Updated {
                        query_id,
                        diff: ResultDiff::Replace(value),
                    }],
                    continued,
                };
                if function == MISMATCHED_PARTS {
                    write(&mut send, &part(ts + 1, true, Value::Int64(-1))).await;
                    part(ts + 2, false, Value::Int64(-2))
                } else {
                    let pad = Value::from("x".repeat(PART_PAD_BYTES));
                    for _ in 0..ENDLESS_PARTS_MAX {
                        let frame = encode(&part(ts + 1, true, pad.clone())).unwrap();
                        if write_frame(&mut send, &frame).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
            }
            Ok(ClientMessage::Subscribe { query_id, .. }) => {
                ts += 1;
                ServerMessage::Transition {
                    start_ts: ts - 1,
                    end_ts: ts,
                    modifications: vec![Modification::Updated {
                        query_id,
                        diff: ResultDiff::Replace(Value::Int64(connection as i64)),
                    }],
                    continued: false,
                }
            }
            _ => continue,
        };
        write(&mut send, &reply).await;
    }
}

async fn serve_calls(
    conn: quinn::Connection,
    connection: usize,
    stream: usize,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    seen: mpsc::UnboundedSender<Seen>,
) {
    while let Ok(Some(frame)) = read_frame(&mut recv, DEFAULT_MAX_FRAME_BYTES).await {
        let Ok(ClientMessage::Call {
            request_id,
            function,
            mutation_id,
            ..
        }) = decode_call(&frame)
        else {
            return;
        };
        let _ = seen.send(Seen {
            connection,
            stream,
            function: function.clone(),
            mutation_id: mutation_id.clone(),
        });
        let reply = match (connection, function.as_str()) {
            (1, FATAL) => {
                // What a server sends for a call stream it cannot go on reading; the
                // connection stays up here, as it may for a moment on a real server.
                let error = ServerMessage::Error {
                    code: "VALIDATION_ERROR".into(),
                    message: "scripted protocol error".into(),
                    data: Value::Null,
                    fatal: true,
                };
                write(&mut send, &error).await;
                let _ = send.finish();
                return;
            }
            (1, UNANSWERED) => continue,
            (1, CUT_THEN_SHED | CUT_THEN_EXPIRED) => {
                conn.close(0u8.into(), b"scripted cut");
                return;
            }
            (_, CUT_THEN_SHED) => refusal(
                request_id,
                "RATE_LIMITED",
                obj! { "reason" => query_engine::admission::OVERLOADED, "retryAfterMs" => 1i64 },
            ),
            (_, CUT_THEN_EXPIRED) => {
                refusal(request_id, "UNAUTHORIZED", obj! { TOKEN_EXPIRED => true })
            }
            // Answers with the mutation id, or the function's name.
            _ => ServerMessage::CallResult {
                request_id,
                result: CallOutcome::Ok {
                    value: Value::from(mutation_id.unwrap_or(function)),
                    ts: 1,
                },
            },
        };
        write(&mut send, &reply).await;
    }
}

/// A `CallResult` with the error `code` and `data`.
fn refusal(request_id: u64, code: &str, data: Value) -> ServerMessage {
    ServerMessage::CallResult {
        request_id,
        result: CallOutcome::Err(ErrorPayload {
            code: code.into(),
            message: "scripted refusal".into(),
            data,
        }),
    }
}

async fn write(send: &mut quinn::SendStream, msg: &ServerMessage) {
    let _ = write_frame(send, &encode(msg).unwrap()).await;
}

/// A fatal `Error` on a call stream says nothing about which call it was for (the server
/// sends no `requestId` with it) and ends the connection: every call waiting on that stream
/// is handled as cut off by a lost connection, not failed with that error. Here a mutation
/// under an id is retried on the next connection and answered, and the action the error came
/// with fails as `Disconnected` (it may have run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_on_a_call_stream_is_not_the_answer_of_every_call_on_it() {
    let mut server = Scripted::start().await;
    let client = Client::connect(&server.addr.to_string(), server.options())
        .await
        .unwrap();
    let mutation = tokio::spawn({
        let client = client.clone();
        async move { client.mutation_with_id(UNANSWERED, obj! {}, "m-1").await }
    });
    let waiting = server.next_call().await;
    assert_eq!(waiting.function, UNANSWERED);
    // The SDK spreads calls over its call streams; the one after next shares the mutation's.
    let reply = client
        .call(CallKind::Query, "scripted:other", obj! {}, None)
        .await
        .unwrap();
    assert_eq!(reply.value, Value::from("scripted:other"));
    assert_eq!(server.next_call().await.function, "scripted:other");
    let fatal = client.call(CallKind::Action, FATAL, obj! {}, None);
    let fatal = tokio::time::timeout(PATIENCE, fatal)
        .await
        .expect("no answer in time");
    let culprit = server.next_call().await;
    assert_eq!(culprit.function, FATAL);
    assert_eq!(
        (culprit.connection, culprit.stream),
        (waiting.connection, waiting.stream),
        "precondition: both calls on one call stream"
    );

    let reply = tokio::time::timeout(PATIENCE, mutation)
        .await
        .expect("no answer in time")
        .unwrap();
    assert_eq!(reply.unwrap().value, Value::from("m-1"));
    assert!(matches!(fatal, Err(ClientError::Disconnected)), "{fatal:?}");
    let retried = server.next_call().await;
    assert_eq!(retried.connection, 2);
    assert_eq!(retried.mutation_id.as_deref(), Some("m-1"));
    assert_eq!(client.connection_count(), 2);
    client.close().await;
}

/// A mutation whose connection was lost may have committed; its retry under the same id is
/// refused before the server looks the id up — shed as overloaded, or for an expired token
/// (no refresher here) — so that refusal says nothing of the first attempt. It comes back
/// `MutationUnconfirmed` with the id, not as an error that reads "nothing was applied" (for a
/// shed one, after which `mutation` would otherwise retry it and report it overloaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mutation_whose_retry_is_refused_before_its_id_is_looked_up_is_unconfirmed() {
    for function in [CUT_THEN_SHED, CUT_THEN_EXPIRED] {
        let mut server = Scripted::start().await;
        let client = Client::connect(&server.addr.to_string(), server.options())
            .await
            .unwrap();
        let outcome =
            tokio::time::timeout(PATIENCE, client.mutation::<_, Value>(function, &obj! {}))
                .await
                .expect("no answer in time");
        let first = server.next_call().await;
        let retry = server.next_call().await;
        assert_eq!((first.connection, retry.connection), (1, 2), "{function}");
        let id = first.mutation_id.expect("mutation() sends an id");
        assert_eq!(
            retry.mutation_id.as_deref(),
            Some(id.as_str()),
            "{function}"
        );
        match outcome {
            Err(ClientError::MutationUnconfirmed { mutation_id }) => {
                assert_eq!(mutation_id, id, "{function}")
            }
            other => panic!("{function}: expected MutationUnconfirmed, got {other:?}"),
        }
        client.close().await;
    }
}

/// A mutation whose connection was lost, and whose retry cannot be sent on the next one (its
/// frame is over that connection's lower limit), may have committed all the same: it comes
/// back `MutationUnconfirmed`, not as the encoding error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mutation_whose_retry_cannot_be_sent_is_unconfirmed() {
    let mut server = Scripted::start_with(|connection| match connection {
        1 => DEFAULT_MAX_FRAME_BYTES,
        _ => SMALL_FRAME_BYTES,
    })
    .await;
    let client = Client::connect(&server.addr.to_string(), server.options())
        .await
        .unwrap();
    let pad = "x".repeat(2 * SMALL_FRAME_BYTES as usize);
    let outcome = tokio::time::timeout(
        PATIENCE,
        client.mutation::<_, Value>(CUT_THEN_SHED, &obj! {"pad" => pad}),
    )
    .await
    .expect("no answer in time");
    let id = server.next_call().await.mutation_id.expect("an id");
    match outcome {
        Err(ClientError::MutationUnconfirmed { mutation_id }) => assert_eq!(mutation_id, id),
        other => panic!("expected MutationUnconfirmed, got {other:?}"),
    }
    assert_eq!(client.connection_count(), 2);
    client.close().await;
}

/// Every `Authenticate` is answered (protocol §5.2); one that is not within `connect_timeout`
/// leaves the answers unmatched, so `set_auth` gives up with `Disconnected` and drops the
/// connection, and the next one signs in with the token in its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_auth_without_an_answer_gives_up_and_the_next_connection_signs_in() {
    let server = Scripted::start().await;
    let mut options = server.options();
    // What set_auth waits at most; a bound, not a measurement.
    options.connect_timeout = Duration::from_millis(500);
    let client = Client::connect(&server.addr.to_string(), options)
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, client.set_auth(Some("token".into())))
        .await
        .expect("set_auth waited for ever");
    assert!(
        matches!(answer, Err(ClientError::Disconnected)),
        "{answer:?}"
    );
    // A ping needs a live connection: the next one, signed in during its handshake.
    client.ping().await.unwrap();
    assert_eq!(client.connection_count(), 2);
    assert_eq!(client.subject().as_deref(), Some(SUBJECT));
    client.close().await;
}

/// An `Authenticate` that cannot be sent on this connection (its frame is over the limit) is
/// an error for `set_auth`, returned at once, not a message dropped while `set_auth` waits;
/// the token is not kept, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_auth_with_a_token_over_the_frame_limit_fails_at_once() {
    let server = Scripted::start().await;
    let mut options = server.options();
    options.max_frame_bytes = 512;
    let client = Client::connect(&server.addr.to_string(), options)
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, client.set_auth(Some("t".repeat(1000))))
        .await
        .expect("set_auth waited for ever");
    assert!(matches!(answer, Err(ClientError::Encode(_))), "{answer:?}");
    client.ping().await.unwrap();
    client.force_reconnect();
    // The next connection signs in with no token: the refused one was not kept.
    client.ping().await.unwrap();
    assert_eq!(client.connection_count(), 2);
    assert_eq!(client.subject(), None);
    client.close().await;
}

/// A frame limit that a `Subscribe` with a padded argument does not fit in.
const SMALL_FRAME_BYTES: u32 = 1024;

async fn next(sub: &mut Subscription) -> Option<Result<Value, ClientError>> {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("no result in time")
}

/// After a reconnect to a server that announces a lower frame limit, a subscription whose
/// `Subscribe` no longer fits ends with `ClientError::Encode`, rather than being dropped
/// unanswered: the other subscriptions, whose results after a reconnect wait until every
/// re-subscription has answered, go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscription_over_a_lower_frame_limit_ends_alone() {
    let server = Scripted::start_with(|connection| match connection {
        1 => DEFAULT_MAX_FRAME_BYTES,
        _ => SMALL_FRAME_BYTES,
    })
    .await;
    let client = Client::connect(&server.addr.to_string(), server.options())
        .await
        .unwrap();
    let mut small = client.subscribe("scripted:small", &obj! {}).unwrap();
    let pad = "x".repeat(2 * SMALL_FRAME_BYTES as usize);
    let mut big = client
        .subscribe("scripted:big", &obj! {"pad" => pad})
        .unwrap();
    assert_eq!(next(&mut small).await.unwrap().unwrap(), Value::Int64(1));
    assert_eq!(next(&mut big).await.unwrap().unwrap(), Value::Int64(1));

    client.force_reconnect();
    let e = next(&mut big).await.expect("an error first").unwrap_err();
    assert!(matches!(e, ClientError::Encode(_)), "{e}");
    assert!(next(&mut big).await.is_none());
    assert_eq!(next(&mut small).await.unwrap().unwrap(), Value::Int64(2));
    assert_eq!(client.connection_count(), 2);
    client.close().await;
}

/// A transition's parts that break the protocol — a part of another transition (other
/// `endTs`), or parts beyond the client's bound (`max_transition_bytes`) — drop the
/// connection as any protocol violation does; nothing of them reaches the subscription, and
/// the next connection brings its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_transition_parts_drop_the_connection_and_show_nothing() {
    for function in [MISMATCHED_PARTS, ENDLESS_PARTS] {
        let server = Scripted::start().await;
        let mut options = server.options();
        options.max_transition_bytes = 10 * PART_PAD_BYTES as u64;
        let client = Client::connect(&server.addr.to_string(), options)
            .await
            .unwrap();
        let mut sub = client.subscribe(function, &obj! {}).unwrap();
        // The second connection's answer, and nothing of the first's parts before it.
        assert_eq!(
            next(&mut sub).await.unwrap().unwrap(),
            Value::Int64(2),
            "{function}"
        );
        assert_eq!(client.connection_count(), 2, "{function}");
        client.close().await;
    }
}
