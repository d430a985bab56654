//! The limits that keep hostile clients from exhausting the server, against a real server on
//! loopback: byte budgets for frames not yet complete, the QUIC receive window bounding what
//! waits unread, the deadline for finishing a frame, the bound on what a frame decodes to, and
//! who may connect (a cap per source address, Retry under load, the server-wide limit).

use std::sync::atomic::{AtomicBool, AtomicI64};

use query_engine::protocol::DEFAULT_MAX_FRAME_BYTES;
use quinn::{ConnectionError, TransportErrorCode};

use super::*;
use crate::transport::stream::{CLOSE_PROTOCOL_ERROR, CLOSE_TOO_MANY_CONNECTIONS};

/// A second source address: on Linux all of 127.0.0.0/8 is loopback. Tests that need it skip
/// their other-address part where it cannot be bound.
pub(super) const OTHER: &str = "127.0.0.2:0";

/// A whole `counter:echo` call frame, prefix included, padded to a little over `pad` bytes.
fn padded_call(request_id: u64, pad: usize) -> Vec<u8> {
    let msg = call_msg(
        request_id,
        CallKind::Action,
        "counter:echo",
        obj! { "pad" => "x".repeat(pad) },
    );
    encode_frame(&encode(&msg).unwrap()).unwrap()
}

/// Waits until `condition` holds (bounded by `WAIT`).
pub(super) async fn until(what: &str, condition: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

fn buffered(server: &RunningServer) -> i64 {
    server.metrics().inbound_frame_bytes.load(Ordering::Relaxed)
}

/// Records the highest value of the buffered-bytes gauge until stopped.
struct PeakWatch {
    peak: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
}

impl PeakWatch {
    fn start(server: &RunningServer) -> PeakWatch {
        let metrics = server.metrics().clone();
        let (peak, stop) = (
            Arc::new(AtomicI64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (seen, stopped) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                seen.fetch_max(
                    metrics.inbound_frame_bytes.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        PeakWatch { peak, stop }
    }

    fn stop(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// Opens a call stream and sends all of `frame` but its last byte.
async fn almost(conn: &Connection, frame: &[u8]) -> (SendStream, RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame[..frame.len() - 1]).await.unwrap();
    (send, recv)
}

/// Sends the last byte of each stream's frame, then expects every call's result. All the last
/// bytes go first: which of the frames got room in the budget is the server's choice.
async fn finish_calls(streams: Vec<(SendStream, RecvStream)>, frames: &[Vec<u8>], first_id: u64) {
    let mut recvs = Vec::new();
    for ((mut send, recv), frame) in streams.into_iter().zip(frames) {
        send.write_all(&frame[frame.len() - 1..]).await.unwrap();
        send.finish().unwrap();
        recvs.push(recv);
    }
    for (mut recv, id) in recvs.into_iter().zip(first_id..) {
        assert_eq!(next_result(&mut recv).await.0, id);
    }
}

/// Frames still arriving are held to the per-connection and the server-wide byte budgets: the
/// ones that do not fit wait unread, and are served once earlier ones complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_frames_are_held_to_the_connection_and_server_budgets() {
    const MAX_FRAME: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.max_frame_bytes = MAX_FRAME as u32;
        c.limits.max_inbound_frame_bytes_per_connection = 2 * MAX_FRAME;
        c.limits.max_inbound_frame_bytes = 3 * MAX_FRAME;
    })
    .await;
    // Two fit in a connection's budget, three in the server's.
    let frames: Vec<Vec<u8>> = (1..=5).map(|id| padded_call(id, 60_000)).collect();
    let frame_bytes = (frames[0].len() - 4) as i64;
    let watch = PeakWatch::start(&server);
    let a = Client::connect(&server).await;
    let b = Client::connect(&server).await;

    let mut a_streams = Vec::new();
    for frame in &frames[..3] {
        a_streams.push(almost(&a.conn, frame).await);
    }
    until("a holds its budget", || {
        buffered(&server) >= 2 * frame_bytes
    })
    .await;
    let mut b_streams = Vec::new();
    for frame in &frames[3..] {
        b_streams.push(almost(&b.conn, frame).await);
    }
    until("the server's budget is taken", || {
        buffered(&server) >= 3 * frame_bytes
    })
    .await;
    // a's third frame waits for a's own budget, so b got the server's last room: b's calls are
    // served while all of a's frames are still incomplete.
    finish_calls(b_streams, &frames[3..], 4).await;
    finish_calls(a_streams, &frames[..3], 1).await;
    until("every frame's bytes are released", || {
        buffered(&server) == 0
    })
    .await;
    let peak = watch.stop();
    assert!(
        peak <= 3 * frame_bytes,
        "{peak} bytes buffered, over the server's budget"
    );
    assert!(a.conn.close_reason().is_none() && b.conn.close_reason().is_none());
    server.shutdown().await;
}

/// One source address's connections share a byte budget: once frames left half-sent on one
/// connection hold it, a frame from another connection of that address waits, holding none of
/// the server's budget meanwhile, so a frame from another address still gets the server's last
/// room; the waiting frame goes ahead once the holder is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_frames_are_held_to_their_address_budget() {
    const MAX_FRAME: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.max_frame_bytes = MAX_FRAME as u32;
        c.limits.max_inbound_frame_bytes_per_connection = 2 * MAX_FRAME;
        c.limits.max_inbound_frame_bytes_per_address = 2 * MAX_FRAME;
        c.limits.max_inbound_frame_bytes = 3 * MAX_FRAME;
    })
    .await;
    if client_endpoint(&server, OTHER).is_err() {
        println!("cannot bind {OTHER} here; skipped");
        server.shutdown().await;
        return;
    }
    // Two fit in the address's budget, three in the server's.
    let frames: Vec<Vec<u8>> = (1..=4).map(|id| padded_call(id, 60_000)).collect();
    let frame_bytes = (frames[0].len() - 4) as i64;
    let holder = Client::connect(&server).await;
    let mut held = Vec::new();
    for frame in &frames[..2] {
        held.push(almost(&holder.conn, frame).await);
    }
    until("the holder takes its address's budget", || {
        buffered(&server) >= 2 * frame_bytes
    })
    .await;
    let neighbour = Client::connect(&server).await;
    let waiting = almost(&neighbour.conn, &frames[2]).await;
    // Meanwhile (a handshake and `Connect`) the server reads the waiting frame's prefix; had
    // that frame taken the server's last room, this call would wait for it.
    let other = Client::connect_from(&server, OTHER).await;
    let (mut send, mut recv) = other.conn.open_bi().await.unwrap();
    send.write_all(&frames[3]).await.unwrap();
    send.finish().unwrap();
    assert_eq!(next_result(&mut recv).await.0, 4);
    assert_eq!(
        buffered(&server),
        2 * frame_bytes,
        "only the holder's bytes"
    );

    holder.conn.close(0u32.into(), b"leaving");
    finish_calls(vec![waiting], &frames[2..3], 3).await;
    until("every frame's bytes are released", || {
        buffered(&server) == 0
    })
    .await;
    assert!(neighbour.conn.close_reason().is_none() && other.conn.close_reason().is_none());
    drop(held);
    server.shutdown().await;
}

/// Writes as much of `data` as the server's flow control lets in, stopping once a write has been
/// blocked for a while (the server reads nothing more, so no more credit comes); returns how
/// much went in.
async fn write_until_blocked(send: &mut SendStream, data: &[u8]) -> usize {
    let mut written = 0;
    while written < data.len() {
        match tokio::time::timeout(Duration::from_millis(300), send.write(&data[written..])).await {
            Ok(wrote) => written += wrote.unwrap(),
            Err(_) => break,
        }
    }
    written
}

/// What a connection's frames waiting for room can make the server hold unread is its receive
/// window, and on one stream half of it: three streams behind a frame holding the connection's
/// budget get no more than the window in between them, where quinn's defaults took each
/// stream's frame whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_bytes_are_held_to_the_connection_receive_window() {
    const WINDOW: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.max_frame_bytes = WINDOW as u32;
        c.limits.max_inbound_frame_bytes_per_connection = WINDOW;
        c.limits.connection_receive_window_bytes = WINDOW as u32;
    })
    .await;
    // One fits in the connection's budget.
    let frames: Vec<Vec<u8>> = (1..=4).map(|id| padded_call(id, 60_000)).collect();
    let client = Client::connect(&server).await;
    let (mut holder, _holder_recv) = client.conn.open_bi().await.unwrap();
    holder.write_all(&frames[0][..100]).await.unwrap();
    until("the first frame takes the budget", || buffered(&server) > 0).await;
    let mut unread = 0;
    let mut waiting = Vec::new();
    for frame in &frames[1..] {
        let (mut send, recv) = client.conn.open_bi().await.unwrap();
        let sent = write_until_blocked(&mut send, frame).await;
        assert!(sent <= WINDOW / 2, "{sent} bytes in on one stream");
        unread += sent;
        waiting.push((send, recv));
    }
    assert!(
        (WINDOW / 2..=WINDOW).contains(&unread),
        "{unread} bytes in for frames waiting"
    );
    client.conn.close(0u32.into(), b"leaving");
    until("the first frame's bytes are released", || {
        buffered(&server) == 0
    })
    .await;
    drop(waiting);
    server.shutdown().await;
}

/// A frame far larger than the receive window flows through it, since the server reads a
/// frame's bytes as they come once it has room for the frame; and a frame waiting for room on
/// another stream, itself larger than the window, holds at most half of it unread, so it does
/// not stall the frame being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_larger_than_the_receive_window_arrives() {
    const WINDOW: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        // The large frame alone fills the connection's budget, so the other one waits.
        c.limits.max_inbound_frame_bytes_per_connection = c.limits.max_frame_bytes as usize;
        c.limits.connection_receive_window_bytes = WINDOW as u32;
    })
    .await;
    // A whole frame but a few hundred bytes (its result too).
    let large = padded_call(1, DEFAULT_MAX_FRAME_BYTES as usize - 1024);
    let waiting = padded_call(2, 2 * WINDOW);
    let client = Client::connect(&server).await;
    let (mut large_send, mut large_recv) = client.conn.open_bi().await.unwrap();
    large_send.write_all(&large[..100]).await.unwrap();
    until("the large frame takes the budget", || buffered(&server) > 0).await;
    let (mut waiting_send, mut waiting_recv) = client.conn.open_bi().await.unwrap();
    let sent = write_until_blocked(&mut waiting_send, &waiting).await;
    assert!(sent <= WINDOW / 2, "{sent} bytes in for the waiting frame");

    large_send.write_all(&large[100..]).await.unwrap();
    large_send.finish().unwrap();
    assert_eq!(next_result(&mut large_recv).await.0, 1);
    waiting_send.write_all(&waiting[sent..]).await.unwrap();
    waiting_send.finish().unwrap();
    assert_eq!(next_result(&mut waiting_recv).await.0, 2);
    assert!(client.conn.close_reason().is_none());
    server.shutdown().await;
}

/// A frame whose bytes were reserved but that never completes closes its connection with a
/// fatal error, on a call stream and on the control stream alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_left_incomplete_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.inbound_frame_timeout = Duration::from_millis(300);
    })
    .await;
    let frame = padded_call(1, 1000);
    let expect_stalled = |msg: &ServerMessage| {
        assert_eq!(fatal_code(msg), "VALIDATION_ERROR");
        let ServerMessage::Error { data, .. } = msg else {
            unreachable!()
        };
        assert_eq!(data.get_path("limit"), Some(&Value::from("frameTimeoutMs")));
    };

    let client = Client::connect(&server).await;
    let (_send, mut recv) = almost(&client.conn, &frame).await;
    expect_stalled(&recv_msg(&mut recv).await.unwrap());
    client.closed().await;

    let mut client = Client::connect(&server).await;
    client.send.write_all(&frame[..100]).await.unwrap();
    expect_stalled(&client.next_non_transition().await);
    client.closed().await;

    let timeouts = &server.metrics().inbound_frame_timeouts;
    assert_eq!(timeouts.load(Ordering::Relaxed), 2);
    until("the frames' bytes are released", || buffered(&server) == 0).await;
    server.shutdown().await;
}

/// A message whose values would take more memory decoded than the protocol's bound (§10) is
/// refused as a malformed one is, once the estimate passes the bound: a fatal
/// `VALIDATION_ERROR` on its stream and the connection closed with code 1, for a `Call` on its
/// stream and a `Subscribe` on the control stream alike; other connections go on, and new ones
/// are served. The frames are 8 MiB of empty maps, a byte each on the wire and about 80 bytes
/// each decoded (700 MB, which the server used to build and run the call with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_decoded_bound_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let bystander = Client::connect(&server).await;
    let empty_maps = || {
        let n = DEFAULT_MAX_FRAME_BYTES as usize - 100;
        let mut raw = vec![0xdd];
        raw.extend(u32::try_from(n).unwrap().to_be_bytes());
        raw.extend(vec![0x80; n]);
        raw
    };
    let expect_refused = |msg: &ServerMessage| {
        assert_eq!(fatal_code(msg), "VALIDATION_ERROR");
        let ServerMessage::Error { message, .. } = msg else {
            unreachable!()
        };
        assert!(message.contains("decoded"), "{message}");
    };

    // A Call whose args, its last field, are the maps.
    let client = Client::connect(&server).await;
    let mut call = rmp_serde::to_vec_named(&obj! {
        "type" => "Call",
        "requestId" => 1i64,
        "kind" => "action",
        "function" => "counter:echo",
    })
    .unwrap();
    call[0] += 1;
    call.extend(b"\xa4args");
    call.extend(empty_maps());
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&call).unwrap()).await.unwrap();
    expect_refused(&recv_msg(&mut recv).await.unwrap());
    assert_eq!(close_code(&client.conn).await, CLOSE_PROTOCOL_ERROR);

    // A Subscribe, on the control stream.
    let mut client = Client::connect(&server).await;
    let mut subscribe = encode(&ClientMessage::Subscribe {
        query_id: 1,
        function: "counter:get".into(),
        args: Value::Null,
    })
    .unwrap();
    assert_eq!(subscribe.pop(), Some(0xc0), "args is the last field");
    subscribe.extend(empty_maps());
    client
        .send
        .write_all(&encode_frame(&subscribe).unwrap())
        .await
        .unwrap();
    expect_refused(&client.next_non_transition().await);
    assert_eq!(close_code(&client.conn).await, CLOSE_PROTOCOL_ERROR);

    let args = obj! { "name" => "d" };
    assert_eq!(
        bystander
            .value(CallKind::Mutation, "counter:increment", args.clone())
            .await,
        Value::Int64(1)
    );
    assert!(bystander.conn.close_reason().is_none());
    let client = Client::connect(&server).await;
    assert_eq!(
        client.value(CallKind::Query, "counter:get", args).await,
        Value::Int64(1)
    );
    until("the frames' bytes are released", || buffered(&server) == 0).await;
    server.shutdown().await;
}

/// Before `Connect` a client may send a frame of a few KiB only: one that announces a large
/// first frame is refused at its length prefix and reserves nothing, where it held a whole
/// frame's bytes of the budgets for the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_first_frame_is_refused_before_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (_endpoint, conn) = dial_from(&server, LOCAL).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    send.write_all(&[0u8; 1024]).await.unwrap();
    let refused = recv_msg(&mut recv).await.unwrap();
    assert_eq!(fatal_code(&refused), "VALIDATION_ERROR", "{refused:?}");
    assert_eq!(buffered(&server), 0);
    // An ordinary client connects and calls as before.
    let client = Client::connect(&server).await;
    assert_eq!(
        client
            .value(CallKind::Action, "counter:echo", obj! { "e" => 1i64 })
            .await,
        obj! { "e" => 1i64 }
    );
    server.shutdown().await;
}

/// A client that opens its control stream but sends no whole `Connect` within the connect
/// timeout is told so, with a fatal `VALIDATION_ERROR` naming the limit, and closed with
/// code 1 (it was closed without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_connect_in_time_is_told_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.connect_timeout = Duration::from_millis(300);
    })
    .await;
    let (_endpoint, conn) = dial(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Half a length prefix: the stream is open, and no frame comes.
    send.write_all(&[0, 0]).await.unwrap();
    let refused = recv_msg(&mut recv).await.unwrap();
    assert_eq!(fatal_code(&refused), "VALIDATION_ERROR", "{refused:?}");
    let ServerMessage::Error { data, .. } = &refused else {
        unreachable!()
    };
    assert_eq!(
        data.get_path("limit"),
        Some(&Value::from("connectTimeoutMs"))
    );
    assert_eq!(data.get_path("max"), Some(&Value::Int64(300)));
    assert_eq!(close_code(&conn).await, CLOSE_PROTOCOL_ERROR);
    assert_eq!(buffered(&server), 0);
    server.shutdown().await;
}

/// How an attempt to connect from `local` ends: refused during the handshake, or closed right
/// after it.
async fn refusal(server: &RunningServer, local: &str) -> ConnectionError {
    let endpoint = client_endpoint(server, local).unwrap();
    let connecting = endpoint
        .connect(server.quic_connect_addr(), "localhost")
        .unwrap();
    match tokio::time::timeout(WAIT, connecting).await.unwrap() {
        Err(e) => e,
        Ok(conn) => tokio::time::timeout(WAIT, conn.closed()).await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.max_connections = 8;
        c.limits.max_connections_per_address = 4;
    })
    .await;
    let metrics = server.metrics().clone();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(&server).await);
    }
    // A fifth from the same address: closed after its handshake, with a code saying why.
    match refusal(&server, LOCAL).await {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_TOO_MANY_CONNECTIONS);
        }
        other => panic!("expected a close for too many connections, got {other:?}"),
    }
    assert_eq!(
        metrics
            .connections_refused_per_address
            .load(Ordering::Relaxed),
        1
    );
    // Half the slots were taken, so it had to prove its address with a Retry first.
    assert!(metrics.connection_retries.load(Ordering::Relaxed) >= 1);

    // Another address has slots of its own.
    if client_endpoint(&server, OTHER).is_err() {
        println!("cannot bind {OTHER} here; the other-address half is skipped");
        server.shutdown().await;
        return;
    }
    for _ in 0..4 {
        let client = Client::connect_from(&server, OTHER).await;
        assert_eq!(
            client
                .value(CallKind::Query, "counter:get", obj! { "name" => "n" })
                .await,
            Value::Int64(0)
        );
        clients.push(client);
    }
    // The server is full: a handshake is refused outright, whatever its address.
    match refusal(&server, OTHER).await {
        ConnectionError::ConnectionClosed(close) => {
            assert_eq!(close.error_code, TransportErrorCode::CONNECTION_REFUSED);
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    drop(clients);
    server.shutdown().await;
}
