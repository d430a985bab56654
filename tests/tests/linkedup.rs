//! End-to-end on the real application: the LinkedUp schema and functions served by an
//! in-process server, used through the SDK by two users on three connections.

mod common;

use std::time::Duration;

use futures::StreamExt;
use linkedup_client::{Client, Subscription};
use query_engine::value::Value;
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

async fn next(sub: &mut Subscription) -> Value {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("no result in time")
        .expect("subscription ended")
        .unwrap()
}

fn bio(profile: &Value) -> Option<&str> {
    profile.get_path("bio").and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_update_live_for_their_owner_only() {
    let dir = common::data_dir();
    let server = common::start_linkedup(dir.path()).await;
    let addr = common::addr(&server);
    let connect = |user: &str| {
        let options = common::options(&server).with_token(common::token(&server, user));
        let addr = addr.clone();
        async move { Client::connect(&addr, options).await.unwrap() }
    };
    let (alice, alice_phone, bob) = (
        connect("user_a").await,
        connect("user_a").await,
        connect("user_b").await,
    );
    for (client, name) in [(&alice, "Alice"), (&bob, "Bob")] {
        let user: Value = client
            .mutation("users.ensure", &json!({"displayName": name}))
            .await
            .unwrap();
        assert_eq!(
            user.get_path("displayName").and_then(Value::as_str),
            Some(name)
        );
    }
    let mut on_laptop = alice.subscribe("profiles.get", &json!({})).unwrap();
    let mut on_phone = alice_phone.subscribe("profiles.get", &json!({})).unwrap();
    let mut bobs = bob.subscribe("profiles.get", &json!({})).unwrap();
    assert_eq!(next(&mut on_laptop).await, Value::Null);
    assert_eq!(next(&mut on_phone).await, Value::Null);
    assert_eq!(next(&mut bobs).await, Value::Null);

    let _: Value = alice
        .mutation("profiles.update", &json!({"bio": "first"}))
        .await
        .unwrap();
    assert_eq!(bio(&next(&mut on_laptop).await), Some("first"));
    assert_eq!(bio(&next(&mut on_phone).await), Some("first"));
    let _: Value = alice_phone
        .mutation("profiles.update", &json!({"bio": "second"}))
        .await
        .unwrap();
    assert_eq!(bio(&next(&mut on_laptop).await), Some("second"));
    assert_eq!(bio(&next(&mut on_phone).await), Some("second"));

    // Bob's profile was never touched: his next result is his own first update.
    let _: Value = bob
        .mutation("profiles.update", &json!({"bio": "bob"}))
        .await
        .unwrap();
    assert_eq!(bio(&next(&mut bobs).await), Some("bob"));

    // Anonymous callers are turned away with the wire code.
    let anonymous = Client::connect(&addr, common::options(&server))
        .await
        .unwrap();
    let e = anonymous
        .query::<_, Value>("profiles.get", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    let e = alice
        .mutation::<_, Value>("profiles.update", &json!({"bio": 5}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("VALIDATION_ERROR"), "{e}");

    drop((on_laptop, on_phone, bobs));
    for c in [alice, alice_phone, bob, anonymous] {
        c.close().await;
    }
    server.shutdown().await;
}
