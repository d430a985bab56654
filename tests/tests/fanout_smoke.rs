//! The fan-out benchmark's harness, small and short so it cannot rot: 5 meetings × 3
//! subscribers over QUIC against an in-process LinkedUp server, open-loop transcript writes,
//! idle subscriptions and a reconnect storm. Asserts correctness only — every chunk delivered
//! to every subscriber once and in order, nothing stored twice — never speed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use linkedup_benches::fanout::linkedup::{FleetPlan, LinkedUpFleet};
use linkedup_benches::fanout::server::Target;
use linkedup_benches::fanout::{run_step, wait_current, FanoutSystem, StepPlan};

const MEETINGS: usize = 5;
const SUBSCRIBERS: usize = 3;
const PRODUCERS: usize = 2;

fn step(rate: f64) -> StepPlan {
    StepPlan {
        rate,
        warmup: Duration::from_millis(300),
        measure: Duration::from_millis(1_500),
        meetings: MEETINGS,
        producers: PRODUCERS,
        max_in_flight: 1_000,
        text_bytes: 64,
        drain_timeout: Duration::from_secs(30),
        // Speed is not judged here.
        p99_limit_us: u64::MAX,
    }
}

/// Every subscriber holds every acknowledged sequence, and sequences are gap-free and unique
/// (the highest equals the number of writes acknowledged as new).
fn assert_consistent(fleet: &LinkedUpFleet) {
    let r = fleet.recorder();
    for m in 0..MEETINGS {
        assert_eq!(
            r.acked_seq(m) as u64,
            r.acked_writes(m),
            "meeting {m}: sequences not gap-free"
        );
    }
    for (j, m) in fleet.subscriber_meetings().iter().enumerate() {
        assert_eq!(
            r.progress(j),
            r.acked_seq(*m),
            "subscriber {j} of meeting {m}"
        );
    }
    assert_eq!(r.anomalies().total(), 0, "{:?}", r.anomalies());
    assert_eq!(r.duplicate_writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_harness_delivers_every_chunk_once_in_order() {
    let dir = common::data_dir();
    let server = common::start_linkedup(dir.path()).await;
    let target = Target {
        addr: server.quic_connect_addr().to_string(),
        fingerprint: server.cert_fingerprint().0,
        issuer: Arc::clone(server.dev_issuer().unwrap()),
        http: Some(server.http_addr()),
    };
    let mut fleet = LinkedUpFleet::setup(
        target,
        FleetPlan {
            meetings: MEETINGS,
            subscribers: SUBSCRIBERS,
            producers: PRODUCERS,
            connections: 3,
            // A small window, so subscribers move to new windows several times.
            window: 4,
            storm_clients: 3,
            max_seq: 10_000,
        },
        None,
    )
    .await
    .unwrap();

    let first = run_step(&fleet, &step(40.0), 0, None).await;
    assert!(
        first.figures.write_errors.is_empty(),
        "{:?}",
        first.figures.write_errors
    );
    assert_eq!(first.skipped_writes, 0);
    assert_eq!(first.lagging_subscribers, 0);
    assert!(first.figures.writes_ok > 0);
    // Each measured write reaches its meeting's 3 subscribers.
    assert!(first.figures.deliveries >= first.figures.writes_ok * SUBSCRIBERS as u64);
    assert_consistent(&fleet);

    // Idle subscriptions never change while the load runs beside them.
    fleet.add_idle(30).await.unwrap();
    let second = run_step(&fleet, &step(40.0), 1_000_000, None).await;
    assert!(second.figures.write_errors.is_empty());
    assert_eq!(fleet.recorder().idle_wakeups(), 0);
    assert_consistent(&fleet);

    // Storm clients subscribe late, from each meeting's first chunk, and catch up; then every
    // one drops its connection at once, reconnects and catches up again.
    fleet.start_storm_subscribers();
    let (behind, _) = wait_current(&fleet, Duration::from_secs(60)).await;
    assert_eq!(behind, 0);
    let (_took, behind, reconnected) = fleet.reconnect_storm(Duration::from_secs(60)).await;
    assert_eq!(behind, 0);
    assert_eq!(reconnected, 3);
    let third = run_step(&fleet, &step(40.0), 2_000_000, None).await;
    assert!(third.figures.write_errors.is_empty());
    assert_consistent(&fleet);

    fleet.shutdown().await;
    server.shutdown().await;
}
