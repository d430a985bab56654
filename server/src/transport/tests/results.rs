//! Output a client does not read, against a real server on loopback: the budgets for
//! unwritten call results stop the calls of the connection, the address or the server holding
//! them, and not others; a result not taken in time resets its stream; a fatal error the
//! control stream's writer cannot send still closes the connection with its code. The clients
//! here grant a stream a few KiB of flow-control credit, so what they do not read stays in the
//! server.

use quinn::VarInt;

use super::limits::{until, OTHER};
use super::*;
use crate::transport::stream::{CLOSE_PROTOCOL_ERROR, CLOSE_RESULT_TIMEOUT};

/// Flow-control credit a non-reading client grants each stream: far less than a result.
const STREAM_WINDOW: u32 = 8 * 1024;
const MAX_FRAME: usize = 64 * 1024;
/// A result's size: two go past a connection's budget of one frame, one does not.
const RESULT_BYTES: i64 = 40_000;

/// Connects from `local` with `STREAM_WINDOW` of credit per stream.
async fn connect_not_reading(server: &RunningServer, local: &str) -> Client {
    let mut endpoint = Endpoint::client(local.parse().unwrap()).unwrap();
    let mut config = server.pinned_client_config().unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(server.quic_connect_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    Client::handshake(endpoint, conn).await
}

fn padded(request_id: u64) -> ClientMessage {
    call_msg(
        request_id,
        CallKind::Query,
        "counter:padded",
        obj! { "name" => "r", "bytes" => RESULT_BYTES },
    )
}

/// Opens a call stream and sends the calls `ids`, all at once.
async fn send_calls(
    conn: &Connection,
    ids: impl IntoIterator<Item = u64>,
    call: fn(u64) -> ClientMessage,
) -> (SendStream, RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut frames = Vec::new();
    for id in ids {
        frames.extend(encode_frame(&encode(&call(id)).unwrap()).unwrap());
    }
    send.write_all(&frames).await.unwrap();
    (send, recv)
}

fn get(request_id: u64) -> ClientMessage {
    call_msg(
        request_id,
        CallKind::Query,
        "counter:get",
        obj! { "name" => "r" },
    )
}

fn held_back(server: &RunningServer) -> u64 {
    server
        .metrics()
        .calls_held_for_results
        .load(Ordering::SeqCst)
}

fn pending(server: &RunningServer) -> i64 {
    server.metrics().pending_result_bytes.load(Ordering::SeqCst)
}

fn padded_calls_run(server: &RunningServer) -> u64 {
    server.metrics().calls("counter:padded", "query", "OK")
}

/// A connection holding its budget of unwritten results starts no further call: of six calls
/// sent at once, the first two run (their results, less the few KiB the client took, pass the
/// budget of one frame) and the third waits unread; once the client reads, all six are
/// answered and the bytes come back. Before, every call ran while a call slot was free, and
/// their results waited in the server whatever their size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_results_stop_their_connection_starting_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.max_frame_bytes = MAX_FRAME as u32;
        c.limits.max_pending_result_bytes_per_connection = MAX_FRAME;
    })
    .await;
    let client = connect_not_reading(&server, LOCAL).await;
    let (mut send, mut recv) = send_calls(&client.conn, 1..=6, padded).await;
    until("a call is held back", || held_back(&server) == 1).await;
    assert_eq!(padded_calls_run(&server), 2);
    let held = pending(&server);
    assert!(
        held >= MAX_FRAME as i64 && held < 2 * RESULT_BYTES + 100,
        "{held} bytes of results held"
    );

    send.finish().unwrap();
    for id in 1..=6 {
        assert_eq!(next_result(&mut recv).await.0, id);
    }
    assert!(recv_msg(&mut recv).await.is_none());
    until("the results' bytes are released", || pending(&server) == 0).await;
    assert_eq!(padded_calls_run(&server), 6);
    assert!(client.conn.close_reason().is_none());
    server.shutdown().await;
}

/// One address's connections share a budget of unwritten results, and all connections the
/// server's: two non-reading connections fill their address's, so a third connection from it
/// starts nothing, while a connection from another address is served; once a non-reading
/// connection there fills the server's budget, that one waits as well; both go ahead when a
/// holder leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_results_are_held_to_their_address_and_the_server_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.max_frame_bytes = MAX_FRAME as u32;
        c.limits.max_pending_result_bytes_per_connection = MAX_FRAME;
        c.limits.max_pending_result_bytes_per_address = 2 * MAX_FRAME;
        c.limits.max_pending_result_bytes = 3 * MAX_FRAME;
    })
    .await;
    if client_endpoint(&server, OTHER).is_err() {
        println!("cannot bind {OTHER} here; skipped");
        server.shutdown().await;
        return;
    }
    // Each holds a little more than its connection's budget (two results less the credit).
    let a1 = connect_not_reading(&server, LOCAL).await;
    let _a1_stream = send_calls(&a1.conn, 1..=3, padded).await;
    until("a1 is held back", || held_back(&server) == 1).await;
    let a2 = connect_not_reading(&server, LOCAL).await;
    let _a2_stream = send_calls(&a2.conn, 1..=3, padded).await;
    until("a2 is held back", || held_back(&server) == 2).await;

    // A third connection from the address holds nothing itself, but its address is full.
    let a3 = Client::connect(&server).await;
    let (_a3_send, mut a3_recv) = send_calls(&a3.conn, [1], get).await;
    until("a3 is held back", || held_back(&server) == 3).await;
    // The server is not full: another address is served.
    let o1 = Client::connect_from(&server, OTHER).await;
    let answer = o1
        .value(CallKind::Query, "counter:get", obj! { "name" => "r" })
        .await;
    assert_eq!(answer, Value::Int64(0));

    // Now it is: a connection of the other address with nothing held waits too.
    let o2 = connect_not_reading(&server, OTHER).await;
    let _o2_stream = send_calls(&o2.conn, 1..=3, padded).await;
    until("o2 is held back", || held_back(&server) == 4).await;
    let (_o1_send, mut o1_recv) = send_calls(&o1.conn, [2], get).await;
    until("o1 is held back", || held_back(&server) == 5).await;
    assert_eq!(padded_calls_run(&server), 6);

    // a1 leaves: its results are dropped, and there is room in its address and the server.
    a1.conn.close(0u32.into(), b"leaving");
    assert_eq!(next_result(&mut a3_recv).await.0, 1);
    assert_eq!(next_result(&mut o1_recv).await.0, 2);
    drop((a2, o2));
    until("the results' bytes are released", || pending(&server) == 0).await;
    server.shutdown().await;
}

/// A result the client does not take within the result write timeout resets its stream, with
/// a code saying so, and its bytes come back; the connection goes on serving. Before, the
/// result waited as long as the connection lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_not_taken_in_time_resets_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.result_write_timeout = Duration::from_millis(300);
    })
    .await;
    let client = connect_not_reading(&server, LOCAL).await;
    let (_send, mut recv) = send_calls(&client.conn, 1..=2, padded).await;
    until("the stream is reset", || {
        server
            .metrics()
            .result_write_timeouts
            .load(Ordering::SeqCst)
            == 1
    })
    .await;
    until("the results' bytes are released", || pending(&server) == 0).await;
    let mut buf = vec![0u8; 64 * 1024];
    let reset = tokio::time::timeout(WAIT, async {
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream was finished, not reset"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the stream ended in time");
    assert!(
        matches!(reset, quinn::ReadError::Reset(code) if code == CLOSE_RESULT_TIMEOUT),
        "{reset:?}"
    );
    // Only that stream: the connection serves further calls.
    assert_eq!(
        client
            .value(CallKind::Query, "counter:get", obj! { "name" => "r" })
            .await,
        Value::Int64(0)
    );
    assert!(client.conn.close_reason().is_none());
    server.shutdown().await;
}

/// A fatal error on the control stream of a client that does not read it: the writer is
/// blocked in a transition the client takes no more of and cannot send the error, and the
/// connection is closed with code 1 (protocol error) all the same, where it was closed as a
/// normal end (0) once the writer was given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_error_closes_with_its_code_when_the_writer_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = connect_not_reading(&server, LOCAL).await;
    // A first result far larger than the stream's credit: the writer blocks in it.
    client
        .control(ClientMessage::Subscribe {
            query_id: 1,
            function: "counter:padded".into(),
            args: obj! { "name" => "w", "bytes" => i64::from(10 * STREAM_WINDOW) },
        })
        .await;
    // Its first bytes arrive: the writer is in it.
    let mut head = [0u8; 64];
    tokio::time::timeout(WAIT, client.recv.read_exact(&mut head))
        .await
        .expect("the transition started in time")
        .unwrap();
    // A second Connect is fatal.
    client
        .control(ClientMessage::Connect {
            protocol_version: PROTOCOL_VERSION,
            client_name: "again".into(),
            last_seen_ts: None,
            transition_parts: false,
        })
        .await;
    assert_eq!(close_code(&client.conn).await, CLOSE_PROTOCOL_ERROR);
    let errors = server.metrics().protocol_errors.load(Ordering::Relaxed);
    assert_eq!(errors, 1);
    server.shutdown().await;
}
