//! Transitions too large for one frame, against a real server on loopback with a 64 KiB frame
//! limit: a client that announced `transitionParts` receives one in parts, contiguous on the
//! control stream, and keeps its connection; one that did not is closed as before.

use super::*;

const MAX_FRAME: u32 = 64 * 1024;
/// Subscriptions whose results change together, each well within a frame, together not.
const SUBSCRIPTIONS: u32 = 6;
const RESULT_BYTES: i64 = 20_000;

async fn start_small_frames(dir: &Path) -> RunningServer {
    start_with(dir, |c| c.limits.max_frame_bytes = MAX_FRAME).await
}

fn subscribe(query_id: u32) -> ClientMessage {
    ClientMessage::Subscribe {
        query_id,
        function: "counter:padded".into(),
        args: obj! { "name" => "big", "bytes" => RESULT_BYTES },
    }
}

/// One transition as the client applies it: its parts put together.
struct Whole {
    start_ts: u64,
    end_ts: u64,
    modifications: Vec<Modification>,
    parts: usize,
}

/// Reads the next transition, part by part; every part must carry its timestamps, and no
/// other message may come between them.
async fn next_whole(client: &mut Client) -> Whole {
    let mut whole: Option<Whole> = None;
    loop {
        let msg = client.next().await;
        let ServerMessage::Transition {
            start_ts,
            end_ts,
            modifications,
            continued,
        } = msg
        else {
            assert!(
                whole.is_none(),
                "{msg:?} came between the parts of a transition"
            );
            continue;
        };
        let w = whole.get_or_insert(Whole {
            start_ts,
            end_ts,
            modifications: Vec::new(),
            parts: 0,
        });
        assert_eq!((start_ts, end_ts), (w.start_ts, w.end_ts), "parts disagree");
        w.modifications.extend(modifications);
        w.parts += 1;
        if !continued {
            return whole.expect("filled above");
        }
    }
}

/// The counter value each query's result shows after `modifications`.
fn values(modifications: &[Modification]) -> HashMap<u32, i64> {
    modifications
        .iter()
        .filter_map(|m| match m {
            Modification::Updated {
                query_id,
                diff: query_engine::diff::ResultDiff::Replace(v),
            } => Some((*query_id, v.get_path("value")?.as_i64()?)),
            _ => None,
        })
        .collect()
}

/// Several results that change in one commit, each below the frame limit and together above
/// it, reach a client that takes parts as one transition in several frames; the connection
/// stays open. Before parts, the server closed it with a fatal `INTERNAL`.
#[tokio::test]
async fn a_transition_over_the_frame_limit_reaches_a_client_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_small_frames(dir.path()).await;
    let mut client = Client::connect_taking_parts(&server).await;
    for q in 1..=SUBSCRIPTIONS {
        client.control(subscribe(q)).await;
    }
    let mut ts = 0;
    let mut first = HashMap::new();
    while first.len() < SUBSCRIPTIONS as usize {
        let t = next_whole(&mut client).await;
        assert_eq!(t.start_ts, ts, "transitions are contiguous");
        ts = t.end_ts;
        first.extend(values(&t.modifications));
    }
    assert!(first.values().all(|v| *v == 0), "{first:?}");

    let increment = client
        .call(
            CallKind::Mutation,
            "counter:increment",
            obj! { "name" => "big" },
        )
        .await;
    assert!(matches!(increment, CallOutcome::Ok { .. }), "{increment:?}");
    let changed = loop {
        let t = next_whole(&mut client).await;
        assert_eq!(t.start_ts, ts, "transitions are contiguous");
        ts = t.end_ts;
        if !t.modifications.is_empty() {
            break t;
        }
    };
    // One commit: every result moves in the one transition, together.
    let after = values(&changed.modifications);
    assert_eq!(after.len(), SUBSCRIPTIONS as usize, "{after:?}");
    assert!(after.values().all(|v| *v == 1), "{after:?}");
    assert!(changed.parts > 1, "sent in {} part(s)", changed.parts);
    assert!(server.metrics().split_transitions.load(Ordering::Relaxed) >= 1);

    // Still open.
    client.control(ClientMessage::Ping { nonce: 3 }).await;
    assert_eq!(
        client.next_non_transition().await,
        ServerMessage::Pong { nonce: 3 }
    );
    server.shutdown().await;
}

/// A client that did not announce `transitionParts` may not know the flag, and would apply
/// the first part as the whole transition: it is never sent parts, and a transition over
/// the limit still ends its connection with a fatal `INTERNAL`.
#[tokio::test]
async fn a_client_that_did_not_announce_parts_is_never_sent_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_small_frames(dir.path()).await;
    let mut client = Client::connect(&server).await;
    for q in 1..=SUBSCRIPTIONS {
        client.control(subscribe(q)).await;
    }
    let mut seen = 0;
    loop {
        match client.next().await {
            ServerMessage::Transition {
                modifications,
                continued,
                ..
            } => {
                assert!(!continued, "a part sent to a client that cannot take it");
                seen += modifications.len();
                if seen == SUBSCRIPTIONS as usize {
                    break;
                }
            }
            // The first results came together, over the limit.
            msg @ ServerMessage::Error { .. } => {
                assert_eq!(fatal_code(&msg), "INTERNAL");
                client.closed().await;
                server.shutdown().await;
                return;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let increment = client
        .call(
            CallKind::Mutation,
            "counter:increment",
            obj! { "name" => "big" },
        )
        .await;
    assert!(matches!(increment, CallOutcome::Ok { .. }), "{increment:?}");
    let msg = client.next_non_transition().await;
    assert_eq!(fatal_code(&msg), "INTERNAL", "{msg:?}");
    client.closed().await;
    assert_eq!(
        server.metrics().split_transitions.load(Ordering::Relaxed),
        0
    );
    server.shutdown().await;
}
