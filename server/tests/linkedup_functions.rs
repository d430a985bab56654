//! Every public LinkedUp function: a happy path, an unauthenticated call (UNAUTHORIZED) and a
//! bad argument (VALIDATION_ERROR naming the field, nothing written).

mod linkedup_common;

use linkedup_common::*;
use linkedup_server::linkedup::LinkedUpConfig;
use query_engine::functions::Visibility;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

fn arr(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

/// (function, arguments that pass validation, bad arguments, field the error must name).
fn cases(w: &World) -> Vec<(&'static str, Value, Value, &'static str)> {
    let m = w.meeting.as_str();
    let carol = w.carol_id.as_str();
    let bob = w.bob_id.as_str();
    vec![
        ("users.me", obj! {}, obj! { "x" => 1i64 }, "x"),
        (
            "users.ensure",
            obj! {},
            obj! { "displayName" => 5i64 },
            "displayName",
        ),
        ("users.heartbeat", obj! {}, obj! { "x" => 1i64 }, "x"),
        ("profiles.get", obj! {}, obj! { "x" => 1i64 }, "x"),
        (
            "profiles.update",
            obj! { "bio" => "hi" },
            obj! { "languages" => "en" },
            "languages",
        ),
        (
            "interests.list",
            obj! {},
            obj! { "category" => 1i64 },
            "category",
        ),
        (
            "interests.setMine",
            obj! { "keys" => arr(&["rust"]) },
            obj! { "keys" => arr(&["rust", "knitting"]) },
            "keys[1]",
        ),
        (
            "connections.request",
            obj! { "userId" => carol },
            obj! { "userId" => "nope" },
            "userId",
        ),
        (
            "connections.accept",
            obj! { "connectionId" => "x" },
            obj! { "connectionId" => m },
            "connectionId",
        ),
        (
            "connections.decline",
            obj! { "connectionId" => "x" },
            obj! { "connectionId" => m },
            "connectionId",
        ),
        (
            "connections.list",
            obj! {},
            obj! { "status" => "maybe" },
            "status",
        ),
        (
            "meetings.schedule",
            obj! { "title" => "t" },
            obj! { "title" => "  " },
            "title",
        ),
        (
            "meetings.start",
            obj! { "meetingId" => m },
            obj! { "meetingId" => bob },
            "meetingId",
        ),
        (
            "meetings.end",
            obj! { "meetingId" => m },
            obj! { "meetingId" => 7i64 },
            "meetingId",
        ),
        (
            "meetings.cancel",
            obj! { "meetingId" => m },
            obj! {},
            "meetingId",
        ),
        (
            "meetings.join",
            obj! { "meetingId" => m },
            obj! { "meetingId" => "zz" },
            "meetingId",
        ),
        (
            "meetings.leave",
            obj! { "meetingId" => m },
            obj! { "meetingId" => m, "x" => 1i64 },
            "x",
        ),
        (
            "meetings.addParticipant",
            obj! { "meetingId" => m, "userId" => carol },
            obj! { "meetingId" => m, "userId" => carol, "role" => "boss" },
            "role",
        ),
        (
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => bob },
            obj! { "meetingId" => m, "userId" => m },
            "userId",
        ),
        (
            "meetings.setRole",
            obj! { "meetingId" => m, "userId" => bob, "role" => "host" },
            obj! { "meetingId" => m, "userId" => bob, "role" => "owner" },
            "role",
        ),
        (
            "meetings.createStreamRoom",
            obj! { "meetingId" => m },
            obj! { "meetingId" => carol },
            "meetingId",
        ),
        (
            "meetings.streamCallToken",
            obj! { "meetingId" => m },
            obj! { "meetingId" => m, "userId" => bob },
            "userId",
        ),
        (
            "meetings.get",
            obj! { "meetingId" => m },
            obj! { "meetingId" => 1i64 },
            "meetingId",
        ),
        (
            "meetings.listParticipants",
            obj! { "meetingId" => m },
            obj! { "meetingId" => true },
            "meetingId",
        ),
        (
            "meetings.getState",
            obj! { "meetingId" => m },
            obj! {},
            "meetingId",
        ),
        (
            "meetings.listMine",
            obj! {},
            obj! { "limit" => 0i64 },
            "limit",
        ),
        (
            "chat.send",
            obj! { "meetingId" => m, "content" => "hi" },
            obj! { "meetingId" => m, "content" => "" },
            "content",
        ),
        (
            "chat.list",
            obj! { "meetingId" => m, "numItems" => 10i64 },
            obj! { "meetingId" => m, "numItems" => 0i64 },
            "numItems",
        ),
        (
            "chat.recent",
            obj! { "meetingId" => m },
            obj! { "meetingId" => m, "limit" => 101i64 },
            "limit",
        ),
        (
            "flags.get",
            obj! { "key" => "matching", "environment" => "prod" },
            obj! { "key" => "teleport", "environment" => "prod" },
            "key",
        ),
        (
            "flags.set",
            obj! { "key" => "matching", "environment" => "prod", "value" => true, "reason" => "r" },
            obj! { "key" => "matching", "environment" => "prod", "value" => true, "reason" => "r", "rolloutPercentage" => 150.0 },
            "rolloutPercentage",
        ),
        ("audit.query", obj! {}, obj! { "limit" => 1000i64 }, "limit"),
        // Happy paths in linkedup_erasure.
        (
            "users.requestErasure",
            obj! { "confirm" => true },
            obj! { "confirm" => "yes" },
            "confirm",
        ),
        ("users.erasureStatus", obj! {}, obj! { "x" => 1i64 }, "x"),
        // Happy paths in linkedup_blocks.
        (
            "users.block",
            obj! { "userId" => carol },
            obj! { "userId" => carol, "reason" => "" },
            "reason",
        ),
        (
            "users.unblock",
            obj! { "userId" => carol },
            obj! { "userId" => m },
            "userId",
        ),
        (
            "users.listBlocked",
            obj! {},
            obj! { "numItems" => 0i64 },
            "numItems",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_case_table_covers_every_public_function() {
    let w = world(LinkedUpConfig::default()).await;
    let covered: Vec<&str> = cases(&w).iter().map(|c| c.0).collect();
    // The domains this suite owns; transcripts and notes have suites of their own.
    let mine = [
        "users.",
        "profiles.",
        "interests.",
        "connections.",
        "meetings.",
        "chat.",
        "flags.",
        "audit.",
    ];
    for def in w.env.engine.functions().iter() {
        if def.visibility == Visibility::Public && mine.iter().any(|p| def.name.starts_with(p)) {
            assert!(
                covered.contains(&def.name.as_str()),
                "{} has no case",
                def.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_function_refuses_anonymous_callers() {
    let w = world(LinkedUpConfig::default()).await;
    for (name, args, _, _) in cases(&w) {
        // Connection ids must at least be well-formed to get past argument validation.
        let args =
            if name.starts_with("connections.accept") || name.starts_with("connections.decline") {
                let c = w
                    .env
                    .m(
                        "connections.request",
                        obj! { "userId" => w.carol_id.as_str() },
                        Some(&w.bob),
                    )
                    .await
                    .unwrap();
                obj! { "connectionId" => id(&c) }
            } else {
                args
            };
        let before = w.env.commits();
        let e = expect_code(w.env.call(name, args, None).await, "UNAUTHORIZED");
        assert!(!e.message.is_empty(), "{name}");
        assert_eq!(w.env.commits(), before, "{name} wrote something");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_function_names_the_bad_field_and_writes_nothing() {
    let w = world(LinkedUpConfig::default()).await;
    for (name, _, bad, path) in cases(&w) {
        let before = w.env.commits();
        let e = expect_code(
            w.env.call(name, bad, Some(&w.alice)).await,
            "VALIDATION_ERROR",
        );
        assert!(e.message.contains(path), "{name}: {e} does not name {path}");
        assert_eq!(
            e.data.get_path("path").and_then(Value::as_str),
            Some(path),
            "{name}: {e:?}"
        );
        assert_eq!(w.env.commits(), before, "{name} wrote something");
    }
    // A foreign pagination cursor names the cursor.
    let e = expect_code(
        w.env
            .q(
                "chat.list",
                obj! { "meetingId" => w.meeting.as_str(), "numItems" => 5i64, "cursor" => "00000001ff" },
                Some(&w.alice),
            )
            .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(
        e.data.get_path("path").and_then(Value::as_str),
        Some("cursor")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_paths_of_every_public_function() {
    let w = world(LinkedUpConfig::default()).await;
    let (env, alice, bob, carol) = (&w.env, &w.alice, &w.bob, &w.carol);
    let m = w.meeting.as_str();

    // Users and profiles.
    let me = env.q("users.me", obj! {}, Some(alice)).await.unwrap();
    assert_eq!(s(&me, "workosUserId"), "alice");
    assert_eq!(s(&me, "orgId"), "org1");
    assert_eq!(
        env.user(alice).await,
        w.alice_id,
        "users.ensure is idempotent"
    );
    let before = env.commits();
    env.m("users.heartbeat", obj! {}, Some(alice))
        .await
        .unwrap();
    assert_eq!(env.commits(), before, "a fresh lastSeenAt is not rewritten");
    assert_eq!(
        env.q("profiles.get", obj! {}, Some(alice)).await.unwrap(),
        Value::Null
    );
    let p = env
        .m(
            "profiles.update",
            obj! { "bio" => "builder", "languages" => arr(&["en", "de"]) },
            Some(alice),
        )
        .await
        .unwrap();
    // Never the email by default: other participants and the AI provider see profiles.
    assert_eq!(s(&p, "displayName"), "");
    let p2 = env.q("profiles.get", obj! {}, Some(alice)).await.unwrap();
    assert_eq!(s(&p2, "bio"), "builder");
    let cat = env
        .q("interests.list", obj! { "category" => "tech" }, Some(alice))
        .await
        .unwrap();
    assert_eq!(cat.as_array().unwrap().len(), 2);
    let mine = env
        .m(
            "interests.setMine",
            obj! { "keys" => arr(&["rust", "ai", "rust"]) },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(mine, arr(&["ai", "rust"]));
    env.m(
        "interests.setMine",
        obj! { "keys" => arr(&["ai"]) },
        Some(alice),
    )
    .await
    .unwrap();
    assert_eq!(env.all("userInterests").await.len(), 1);

    // Connections: request, accept, decline, list.
    let c = env
        .m(
            "connections.request",
            obj! { "userId" => w.bob_id.as_str() },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&c, "status"), "pending");
    let again = env
        .m(
            "connections.request",
            obj! { "userId" => w.bob_id.as_str() },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(id(&again), id(&c), "one document per pair");
    let acc = env
        .m(
            "connections.accept",
            obj! { "connectionId" => id(&c) },
            Some(bob),
        )
        .await
        .unwrap();
    assert_eq!(s(&acc, "status"), "accepted");
    let c2 = env
        .m(
            "connections.request",
            obj! { "userId" => w.carol_id.as_str() },
            Some(alice),
        )
        .await
        .unwrap();
    let dec = env
        .m(
            "connections.decline",
            obj! { "connectionId" => id(&c2) },
            Some(carol),
        )
        .await
        .unwrap();
    assert_eq!(s(&dec, "status"), "declined");
    let listed = env
        .q(
            "connections.list",
            obj! { "status" => "accepted" },
            Some(bob),
        )
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let all = env
        .q("connections.list", obj! {}, Some(alice))
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    // Alice and bob's connection is, to carol, exactly a missing one; alice, who requested
    // it, knows it and is refused.
    let answer = |who: &Identity| {
        let (who, args) = (who.clone(), obj! { "connectionId" => id(&c) });
        async move { env.m("connections.accept", args, Some(&who)).await }
    };
    let carols = expect_code(answer(carol).await, "NOT_FOUND");
    expect_code(answer(alice).await, "FORBIDDEN");
    let gone = id(&c);
    env.engine
        .transact(move |ctx| ctx.delete("connections", &gone).map(|_| Value::Null))
        .await
        .unwrap();
    assert_eq!(expect_code(answer(bob).await, "NOT_FOUND"), carols);

    // Meetings: reads, presence, participants, roles.
    let got = env
        .q("meetings.get", obj! { "meetingId" => m }, Some(bob))
        .await
        .unwrap();
    assert_eq!(s(&got, "state"), "active");
    assert_eq!(s(&got, "orgId"), "org1");
    let joined = env
        .m("meetings.join", obj! { "meetingId" => m }, Some(bob))
        .await
        .unwrap();
    assert_eq!(s(&joined, "presence"), "joined");
    let st = env
        .q("meetings.getState", obj! { "meetingId" => m }, Some(bob))
        .await
        .unwrap();
    assert_eq!(st.get_path("joinedCount"), Some(&Value::Int64(1)));
    assert_eq!(st.get_path("active"), Some(&Value::Bool(true)));
    env.m("meetings.leave", obj! { "meetingId" => m }, Some(bob))
        .await
        .unwrap();
    let st = env
        .q("meetings.getState", obj! { "meetingId" => m }, Some(bob))
        .await
        .unwrap();
    assert_eq!(st.get_path("joinedCount"), Some(&Value::Int64(0)));
    let added = env
        .m(
            "meetings.addParticipant",
            obj! { "meetingId" => m, "userId" => w.carol_id.as_str() },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&added, "role"), "participant");
    let promoted = env
        .m(
            "meetings.setRole",
            obj! { "meetingId" => m, "userId" => w.carol_id.as_str(), "role" => "host" },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&promoted, "role"), "host");
    let parts = env
        .q(
            "meetings.listParticipants",
            obj! { "meetingId" => m },
            Some(carol),
        )
        .await
        .unwrap();
    let roles: Vec<String> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| s(p, "role"))
        .collect();
    assert_eq!(roles, ["host", "host", "participant"]);
    env.m(
        "meetings.removeParticipant",
        obj! { "meetingId" => m, "userId" => w.carol_id.as_str() },
        Some(alice),
    )
    .await
    .unwrap();
    let mine = env
        .q("meetings.listMine", obj! { "state" => "active" }, Some(bob))
        .await
        .unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 1);

    // Chat.
    for i in 0..5 {
        env.m(
            "chat.send",
            obj! { "meetingId" => m, "content" => format!("msg {i}") },
            Some(bob),
        )
        .await
        .unwrap();
    }
    let recent = env
        .q(
            "chat.recent",
            obj! { "meetingId" => m, "limit" => 3i64 },
            Some(alice),
        )
        .await
        .unwrap();
    let texts: Vec<String> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x, "content"))
        .collect();
    assert_eq!(texts, ["msg 4", "msg 3", "msg 2"]);
    let p1 = env
        .q(
            "chat.list",
            obj! { "meetingId" => m, "numItems" => 3i64 },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(p1.get_path("isDone"), Some(&Value::Bool(false)));
    let cursor = s(&p1, "continueCursor");
    let p2 = env
        .q(
            "chat.list",
            obj! { "meetingId" => m, "numItems" => 3i64, "cursor" => cursor },
            Some(alice),
        )
        .await
        .unwrap();
    let texts: Vec<String> = p2
        .get_path("page")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x, "content"))
        .collect();
    assert_eq!(texts, ["msg 1", "msg 0"]);
    assert_eq!(p2.get_path("isDone"), Some(&Value::Bool(true)));
    // Attachments describe files: a few small objects, not the files themselves.
    let link = obj! { "name" => "deck.pdf", "url" => "https://files.example/deck.pdf" };
    let refused = [
        (
            Value::Array(vec![link.clone(), "raw".into()]),
            "attachments[1]",
        ),
        (
            Value::Array(vec![obj! { "data" => "x".repeat(9_000) }]),
            "bytes together",
        ),
        (Value::Array(vec![link.clone(); 11]), "at most 10"),
    ];
    for (attachments, why) in refused {
        let e = expect_code(
            env.m(
                "chat.send",
                obj! { "meetingId" => m, "content" => "see", "attachments" => attachments },
                Some(bob),
            )
            .await,
            "VALIDATION_ERROR",
        );
        assert!(e.message.contains(why), "{e}");
    }
    env.m(
        "chat.send",
        obj! { "meetingId" => m, "content" => "see", "attachments" => Value::Array(vec![link; 10]) },
        Some(bob),
    )
    .await
    .unwrap();

    // Flags.
    assert_eq!(
        env.q(
            "flags.get",
            obj! { "key" => "incall/ai", "environment" => "prod" },
            Some(bob)
        )
        .await
        .unwrap(),
        Value::Null
    );
    env.m(
        "flags.set",
        obj! { "key" => "incall/ai", "environment" => "prod", "value" => true, "reason" => "pilot" },
        Some(alice),
    )
    .await
    .unwrap();
    let f = env
        .q(
            "flags.get",
            obj! { "key" => "incall/ai", "environment" => "prod" },
            Some(bob),
        )
        .await
        .unwrap();
    assert_eq!(f.get_path("value"), Some(&Value::Bool(true)));
    assert_eq!(s(&f, "scope"), "org:org1");

    // Lifecycle end and cancel; audit.
    env.m("meetings.end", obj! { "meetingId" => m }, Some(alice))
        .await
        .unwrap();
    let m2 = env
        .m(
            "meetings.schedule",
            obj! { "title" => "Later" },
            Some(alice),
        )
        .await
        .unwrap();
    env.m(
        "meetings.cancel",
        obj! { "meetingId" => m2.as_str().unwrap() },
        Some(alice),
    )
    .await
    .unwrap();
    let log = env
        .q(
            "audit.query",
            obj! { "resourceType" => "meeting", "resourceId" => m },
            Some(alice),
        )
        .await
        .unwrap();
    let actions: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x, "action"))
        .collect();
    for a in [
        "meeting.scheduled",
        "meeting.active",
        "participant.added",
        "participant.role_changed",
        "participant.removed",
        "meeting.concluded",
    ] {
        assert!(
            actions.contains(&a.to_string()),
            "{a} missing from {actions:?}"
        );
    }
    // Bob's only audited change: accepting alice's connection request.
    let own = env.q("audit.query", obj! {}, Some(bob)).await.unwrap();
    let own: Vec<String> = own
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x, "action"))
        .collect();
    assert_eq!(own, ["connection.accepted"]);
}

/// More connections of one status than a list holds: the newest of any status come first,
/// where the list used to be cut in status order (a user with 200 accepted connections never
/// saw a pending request), and a status filter also keeps the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_newest_first_whatever_their_status() {
    const ACCEPTED: i64 = 205;
    let w = world(LinkedUpConfig::default()).await;
    let alice = w.alice_id.clone();
    // Users created after alice have larger ids, so alice is `userA` of each pair.
    w.env
        .engine
        .transact(move |ctx| {
            for i in 0..ACCEPTED {
                let other = ctx.insert(
                    "users",
                    obj! {
                        "workosUserId" => format!("u{i}"), "email" => format!("u{i}@example.com"),
                        "isActive" => true, "createdAt" => 0i64, "updatedAt" => 0i64,
                    },
                )?;
                ctx.insert(
                    "connections",
                    obj! {
                        "userA" => alice.as_str(), "userB" => other.as_str(),
                        "requestedBy" => alice.as_str(), "status" => "accepted",
                        "createdAt" => i, "updatedAt" => 1_000 + i,
                    },
                )?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    let pending = w
        .env
        .m(
            "connections.request",
            obj! { "userId" => w.bob_id.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let listed = w
        .env
        .q("connections.list", obj! {}, Some(&w.alice))
        .await
        .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 200);
    assert_eq!(id(&listed[0]), id(&pending));
    let accepted = w
        .env
        .q(
            "connections.list",
            obj! { "status" => "accepted" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let updated: Vec<i64> = accepted
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.get_path("updatedAt").and_then(Value::as_i64).unwrap())
        .collect();
    assert_eq!(updated.len(), 200);
    assert_eq!(
        updated[0],
        1_000 + ACCEPTED - 1,
        "the newest accepted first"
    );
    assert_eq!(updated[199], 1_000 + ACCEPTED - 200);
}
