//! End-to-end: many SDK clients sharing one QUIC endpoint (one UDP socket) against a real
//! server on 127.0.0.1 — each keeps its own connection, subscriptions and reconnects, and
//! closing one leaves the others working.

mod common;

use std::time::Duration;

use futures::StreamExt;
use linkedup_client::client::shared_endpoint;
use linkedup_client::{Client, ClientError, Subscription};
use query_engine::value::Value;
use serde_json::json;

/// Guards against a hung test; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);

async fn next(sub: &mut Subscription) -> Result<Value, ClientError> {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("no result in time")
        .expect("subscription ended")
}

async fn until(sub: &mut Subscription, want: i64) {
    loop {
        if next(sub).await.unwrap() == Value::Int64(want) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_one_endpoint_are_independent() {
    const CLIENTS: usize = 8;
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let endpoint = shared_endpoint(server.quic_connect_addr()).unwrap();
    let local = endpoint.local_addr().unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let options = common::options(&server).with_endpoint(endpoint.clone());
        clients.push(
            Client::connect(&common::addr(&server), options)
                .await
                .unwrap(),
        );
    }
    let mut subs = Vec::new();
    for c in &clients {
        let mut s = c.subscribe("counter:get", &json!({"name": "e"})).unwrap();
        assert_eq!(next(&mut s).await.unwrap(), Value::Int64(0));
        subs.push(s);
    }
    for c in &clients {
        let _: i64 = c
            .mutation("counter:add", &json!({"name": "e", "by": 1}))
            .await
            .unwrap();
    }
    for s in &mut subs {
        until(s, CLIENTS as i64).await;
    }

    // One client reconnects: only its connection is replaced, and it catches up.
    clients[1].force_reconnect();
    let _: i64 = clients[0]
        .mutation("counter:add", &json!({"name": "e", "by": 1}))
        .await
        .unwrap();
    for s in &mut subs {
        until(s, CLIENTS as i64 + 1).await;
    }
    assert!(clients[1].connection_count() >= 2);
    assert_eq!(clients[2].connection_count(), 1);

    // Closing one client leaves the endpoint and the others working.
    let closed = clients.remove(0);
    subs.remove(0);
    closed.close().await;
    let _: i64 = clients[0]
        .mutation("counter:add", &json!({"name": "e", "by": 1}))
        .await
        .unwrap();
    for s in &mut subs {
        until(s, CLIENTS as i64 + 2).await;
    }
    assert_eq!(
        endpoint.local_addr().unwrap(),
        local,
        "one socket throughout"
    );

    drop(subs);
    for c in clients {
        c.close().await;
    }
    server.shutdown().await;
}
