//! A subscription whose one update is too large for a frame, against a real server on
//! loopback with a 64 KiB frame limit: that subscription alone ends with `Failed`
//! (`INTERNAL`), the rest of its transition is delivered, and the connection stays open.

use super::*;

const MAX_FRAME: u32 = 64 * 1024;
/// Padding per unit of the counter: the first increment takes the result over the limit.
const BYTES_PER_STEP: i64 = 100_000;
/// Grows past the frame limit.
const BIG: u32 = 1;
/// Reads the same counter, small.
const SMALL: u32 = 2;

/// Transitions as the client sees them, checked for contiguity; parts are put together.
struct Stream {
    client: Client,
    ts: u64,
}

impl Stream {
    /// The modifications of the next transition, reading all of its parts.
    async fn next(&mut self) -> Vec<Modification> {
        let mut all = Vec::new();
        loop {
            let msg = self.client.next().await;
            let ServerMessage::Transition {
                start_ts,
                end_ts,
                modifications,
                continued,
            } = msg
            else {
                panic!("expected a transition, got {msg:?}");
            };
            assert_eq!(start_ts, self.ts, "transitions are contiguous");
            all.extend(modifications);
            if !continued {
                self.ts = end_ts;
                return all;
            }
        }
    }

    /// The modifications of the next transition that has any.
    async fn next_changes(&mut self) -> Vec<Modification> {
        loop {
            let m = self.next().await;
            if !m.is_empty() {
                return m;
            }
        }
    }

    async fn increment(&self) {
        let outcome = self
            .client
            .call(
                CallKind::Mutation,
                "counter:increment",
                obj! { "name" => "big" },
            )
            .await;
        assert!(matches!(outcome, CallOutcome::Ok { .. }), "{outcome:?}");
    }
}

/// The small query's value in `modifications`, if it changed.
fn small_value(modifications: &[Modification]) -> Option<i64> {
    modifications.iter().find_map(|m| match m {
        Modification::Updated {
            query_id: SMALL,
            diff: query_engine::diff::ResultDiff::Replace(v),
        } => v.as_i64(),
        _ => None,
    })
}

/// Before, the update of `BIG` closed the whole connection with a fatal `INTERNAL` (and a
/// client reconnecting and subscribing again was closed again).
async fn an_update_over_the_frame_limit_fails_its_subscription_alone(taking_parts: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| c.limits.max_frame_bytes = MAX_FRAME).await;
    let client = if taking_parts {
        Client::connect_taking_parts(&server).await
    } else {
        Client::connect(&server).await
    };
    let mut stream = Stream { client, ts: 0 };
    stream
        .client
        .control(ClientMessage::Subscribe {
            query_id: BIG,
            function: "counter:growing".into(),
            args: obj! { "name" => "big", "bytes" => BYTES_PER_STEP },
        })
        .await;
    stream
        .client
        .control(ClientMessage::Subscribe {
            query_id: SMALL,
            function: "counter:get".into(),
            args: obj! { "name" => "big" },
        })
        .await;
    let mut first = Vec::new();
    while first.len() < 2 {
        first.extend(stream.next().await);
    }
    assert!(
        first
            .iter()
            .all(|m| matches!(m, Modification::Updated { .. })),
        "{first:?}"
    );

    // One commit changes both: the big one's update is replaced by its failure, the small
    // one's is delivered in the same transition.
    stream.increment().await;
    let changed = stream.next_changes().await;
    assert_eq!(changed.len(), 2, "{changed:?}");
    let failure = changed
        .iter()
        .find_map(|m| match m {
            Modification::Failed {
                query_id: BIG,
                error,
            } => Some(error),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the big query failed: {changed:?}"));
    assert_eq!(failure.code, "INTERNAL");
    assert!(
        failure.message.contains(&MAX_FRAME.to_string()),
        "{}",
        failure.message
    );
    assert_eq!(small_value(&changed), Some(1), "{changed:?}");
    assert_eq!(
        server.metrics().oversized_updates.load(Ordering::Relaxed),
        1
    );

    // The big one has ended: a commit that changes it sends nothing more for it, while the
    // small one goes on.
    stream.increment().await;
    let changed = stream.next_changes().await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(small_value(&changed), Some(2), "{changed:?}");
    assert_eq!(
        server.metrics().oversized_updates.load(Ordering::Relaxed),
        1,
        "the ended query was not re-run"
    );

    // Still open.
    stream
        .client
        .control(ClientMessage::Ping { nonce: 5 })
        .await;
    assert_eq!(stream.client.next().await, ServerMessage::Pong { nonce: 5 });
    server.shutdown().await;
}

#[tokio::test]
async fn an_update_over_the_frame_limit_fails_alone_for_a_client_taking_parts() {
    an_update_over_the_frame_limit_fails_its_subscription_alone(true).await;
}

/// The same failure applies to a client that does not take parts: the rest of its transition
/// fits in a frame here.
#[tokio::test]
async fn an_update_over_the_frame_limit_fails_alone_for_a_client_not_taking_parts() {
    an_update_over_the_frame_limit_fails_its_subscription_alone(false).await;
}
