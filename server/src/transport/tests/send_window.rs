//! The QUIC send window against a client that does not acknowledge what the server sends, on a
//! real server over loopback: a UDP relay in front of the client stops passing the server's
//! packets on, so the client acknowledges nothing while its own packets still arrive.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;

use query_engine::diff::ResultDiff;
use tokio::net::UdpSocket;

use super::*;

/// Passes datagrams between one client and the server, dropping the server's while cut.
struct Relay {
    /// Where the client connects.
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let outer = UdpSocket::bind(LOCAL).await.unwrap();
        let inner = UdpSocket::bind(LOCAL).await.unwrap();
        inner.connect(server).await.unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        Relay {
            addr: outer.local_addr().unwrap(),
            cut: cut.clone(),
            task: tokio::spawn(relay(outer, inner, cut)),
        }
    }

    fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(outer: UdpSocket, inner: UdpSocket, cut: Arc<AtomicBool>) {
    // Room for any UDP datagram.
    let mut from_client = vec![0u8; 1 << 16];
    let mut from_server = vec![0u8; 1 << 16];
    let mut client = None;
    loop {
        tokio::select! {
            received = outer.recv_from(&mut from_client) => {
                if let Ok((n, addr)) = received {
                    client = Some(addr);
                    let _ = inner.send(&from_client[..n]).await;
                }
            }
            received = inner.recv(&mut from_server) => {
                if let (Ok(n), Some(addr)) = (received, client) {
                    if !cut.load(Ordering::SeqCst) {
                        let _ = outer.send_to(&from_server[..n], addr).await;
                    }
                }
            }
        }
    }
}

/// The next message on `recv`, which must be a transition: its end, its modifications, and the
/// length of its payload (what `transition_bytes_sent` counts).
async fn next_transition(recv: &mut RecvStream) -> (u64, Vec<Modification>, usize) {
    let frame = recv_frame(recv).await.expect("a transition");
    match decode_server(&frame).unwrap() {
        ServerMessage::Transition {
            end_ts,
            modifications,
            ..
        } => (end_ts, modifications, frame.len()),
        other => panic!("expected a transition, got {other:?}"),
    }
}

/// The counter value in query 1's new result, if the transition carries one.
fn padded_value(modifications: &[Modification]) -> Option<i64> {
    modifications.iter().find_map(|m| match m {
        Modification::Updated {
            query_id: 1,
            diff: ResultDiff::Replace(result),
        } => result.get_path("value").and_then(Value::as_i64),
        _ => None,
    })
}

fn transition_bytes_sent(server: &RunningServer) -> u64 {
    server
        .metrics()
        .transition_bytes_sent
        .load(Ordering::SeqCst)
}

/// A client that stops acknowledging makes the server hold no more than the connection's send
/// window of output: with the server's packets cut off, sixteen changes of a 16 KiB result get
/// at most the 64 KiB window of transitions written into quinn (no acknowledgement frees any of
/// it), the rest merged in the subscription's outbox, while another connection's mutations are
/// answered; once packets pass again, the latest value arrives on the same connection in a few
/// transitions. Under quinn's default window, about 10 MB, every change was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_output_is_held_to_the_connection_send_window() {
    const WINDOW: usize = 64 * 1024;
    const PAD: usize = 16 * 1024;
    const CHANGES: i64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| {
        c.limits.connection_send_window_bytes = WINDOW as u32;
    })
    .await;
    let relay = Relay::start(server.quic_connect_addr()).await;
    let endpoint = client_endpoint(&server, LOCAL).unwrap();
    let conn = endpoint
        .connect(relay.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let mut subscriber = Client::handshake(endpoint, conn).await;
    subscriber
        .control(ClientMessage::Subscribe {
            query_id: 1,
            function: "counter:padded".into(),
            args: obj! { "name" => "big", "bytes" => PAD as i64 },
        })
        .await;
    let (_, first, _) = next_transition(&mut subscriber.recv).await;
    assert_eq!(padded_value(&first), Some(0));
    // Subscribed to a counter it leaves alone, the writer gets a transition reaching each of
    // its commits (protocol §8); by then the worker has handed the commit's change to the
    // subscriber's outbox too.
    let mut writer = Client::connect(&server).await;
    writer
        .control(ClientMessage::Subscribe {
            query_id: 1,
            function: "counter:get".into(),
            args: obj! { "name" => "other" },
        })
        .await;
    next_transition(&mut writer.recv).await;

    relay.cut(true);
    let before = transition_bytes_sent(&server);
    let mut writer_bytes = 0;
    for _ in 0..CHANGES {
        let CallOutcome::Ok { ts, .. } = writer
            .call(
                CallKind::Mutation,
                "counter:increment",
                obj! { "name" => "big" },
            )
            .await
        else {
            panic!("increment failed");
        };
        loop {
            let (end_ts, _, bytes) = next_transition(&mut writer.recv).await;
            writer_bytes += bytes as u64;
            if end_ts >= ts {
                break;
            }
        }
    }
    let unacknowledged = transition_bytes_sent(&server) - before - writer_bytes;
    assert!(
        unacknowledged <= WINDOW as u64,
        "{unacknowledged} bytes of transitions written while nothing was acknowledged"
    );

    relay.cut(false);
    let mut transitions = 0;
    loop {
        let (_, modifications, _) = next_transition(&mut subscriber.recv).await;
        transitions += 1;
        if padded_value(&modifications) == Some(CHANGES) {
            break;
        }
    }
    // The whole transitions written while cut off (at most a window's worth), the one being
    // written, and every later change merged into one.
    assert!(
        transitions <= WINDOW / PAD + 2,
        "{transitions} transitions for {CHANGES} changes"
    );
    assert!(subscriber.conn.close_reason().is_none());
    server.shutdown().await;
}
