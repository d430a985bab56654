//! The meeting ACL matrix: for every meeting-scoped function, non-participants and users of
//! another organisation are refused (FORBIDDEN), participants are refused host actions, hosts
//! may do everything; and another organisation's user sees nothing of this one's meetings.

mod linkedup_common;

use linkedup_common::*;
use linkedup_server::linkedup::LinkedUpConfig;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

/// Host-only functions, with arguments that would succeed for a host.
fn host_actions(w: &World) -> Vec<(&'static str, Value)> {
    let m = w.meeting.as_str();
    vec![
        ("meetings.start", obj! { "meetingId" => m }),
        ("meetings.end", obj! { "meetingId" => m }),
        ("meetings.cancel", obj! { "meetingId" => m }),
        (
            "meetings.addParticipant",
            obj! { "meetingId" => m, "userId" => w.carol_id.as_str() },
        ),
        (
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => w.bob_id.as_str() },
        ),
        (
            "meetings.setRole",
            obj! { "meetingId" => m, "userId" => w.bob_id.as_str(), "role" => "host" },
        ),
    ]
}

/// Functions any participant may call.
fn participant_actions(w: &World) -> Vec<(&'static str, Value)> {
    let m = w.meeting.as_str();
    vec![
        ("meetings.get", obj! { "meetingId" => m }),
        ("meetings.listParticipants", obj! { "meetingId" => m }),
        ("meetings.getState", obj! { "meetingId" => m }),
        ("meetings.join", obj! { "meetingId" => m }),
        ("meetings.leave", obj! { "meetingId" => m }),
        ("chat.send", obj! { "meetingId" => m, "content" => "hello" }),
        ("chat.list", obj! { "meetingId" => m, "numItems" => 10i64 }),
        ("chat.recent", obj! { "meetingId" => m }),
    ]
}

async fn forbidden_everywhere(w: &World, who: &Identity, label: &str) {
    for (name, args) in host_actions(w).into_iter().chain(participant_actions(w)) {
        let before = w.env.commits();
        let e = expect_code(w.env.call(name, args, Some(who)).await, "FORBIDDEN");
        assert_eq!(
            e.data.get_path("resourceId").and_then(Value::as_str),
            Some(w.meeting.as_str()),
            "{label} {name}"
        );
        assert_eq!(w.env.commits(), before, "{label} {name} wrote something");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_participants_and_other_orgs_are_refused_everything() {
    let w = world(LinkedUpConfig::default()).await;
    forbidden_everywhere(&w, &w.carol, "non-participant").await;
    forbidden_everywhere(&w, &w.dave, "other org").await;
    // Bob's own account, but with a token for another organisation.
    let bob_elsewhere = ident("bob", Some("org2"), Some("member"));
    forbidden_everywhere(&w, &bob_elsewhere, "participant with another org's token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_refused_host_actions_but_not_participant_ones() {
    let w = world(LinkedUpConfig::default()).await;
    for (name, args) in host_actions(&w) {
        let e = expect_code(w.env.call(name, args, Some(&w.bob)).await, "FORBIDDEN");
        assert!(e.message.contains("host"), "{name}: {e}");
    }
    for (name, args) in participant_actions(&w) {
        w.env
            .call(name, args, Some(&w.bob))
            .await
            .unwrap_or_else(|e| panic!("participant {name}: {e}"));
    }
    // Hosts hold every participant right (the seed's strict role equality refused them).
    for (name, args) in participant_actions(&w) {
        w.env
            .call(name, args, Some(&w.alice))
            .await
            .unwrap_or_else(|e| panic!("host {name}: {e}"));
    }
    for (name, args) in host_actions(&w) {
        // Order matters: end before cancel (CONFLICT, not FORBIDDEN) and after start.
        let r = w.env.call(name, args, Some(&w.alice)).await;
        match (name, r) {
            ("meetings.cancel", Err(e)) => assert_eq!(e.code, "CONFLICT", "{e}"),
            (
                "meetings.addParticipant" | "meetings.removeParticipant" | "meetings.setRole",
                Err(e),
            ) => {
                assert_eq!(e.code, "CONFLICT", "meeting is over: {e}")
            }
            (_, r) => {
                r.unwrap_or_else(|e| panic!("host {name}: {e}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_user_sees_nothing_even_with_a_participant_record() {
    let w = world(LinkedUpConfig::default()).await;
    // Adding dave is refused: he belongs to another organisation.
    let e = expect_code(
        w.env
            .m(
                "meetings.addParticipant",
                obj! { "meetingId" => w.meeting.as_str(), "userId" => w.dave_id.as_str() },
                Some(&w.alice),
            )
            .await,
        "FORBIDDEN",
    );
    assert!(e.message.contains("organisation"), "{e}");
    let e = expect_code(
        w.env
            .m(
                "meetings.schedule",
                obj! { "title" => "x", "inviteeIds" => vec![Value::from(w.dave_id.as_str())] },
                Some(&w.alice),
            )
            .await,
        "FORBIDDEN",
    );
    assert!(e.message.contains("inviteeIds[0]"), "{e}");
    // Even a participant record written behind the guards' back grants nothing.
    let (m, d) = (w.meeting.clone(), w.dave_id.clone());
    w.env
        .engine
        .transact(move |ctx| {
            ctx.insert(
                "meetingParticipants",
                obj! {
                    "meetingId" => m.as_str(), "userId" => d.as_str(), "role" => "host",
                    "presence" => "invited", "createdAt" => 0i64,
                },
            )
            .map(Value::from)
        })
        .await
        .unwrap();
    forbidden_everywhere(&w, &w.dave, "other org with a record").await;
    let mine = w
        .env
        .q("meetings.listMine", obj! {}, Some(&w.dave))
        .await
        .unwrap();
    assert_eq!(mine, Value::Array(vec![]));
    let log = w
        .env
        .q("audit.query", obj! {}, Some(&w.dave))
        .await
        .unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e.get_path("orgId") != Some(&Value::from("org1"))),
        "dave's admin view shows nothing of org1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_meetings_are_not_found_and_left_participants_keep_read_access() {
    let w = world(LinkedUpConfig::default()).await;
    let gone = w
        .env
        .m(
            "meetings.schedule",
            obj! { "title" => "gone" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    let g = gone.as_str().unwrap().to_string();
    let g2 = g.clone();
    w.env
        .engine
        .transact(move |ctx| ctx.delete("meetings", &g2).map(|_| Value::Null))
        .await
        .unwrap();
    expect_code(
        w.env
            .q(
                "meetings.get",
                obj! { "meetingId" => g.as_str() },
                Some(&w.alice),
            )
            .await,
        "NOT_FOUND",
    );
    let m = w.meeting.as_str();
    w.env
        .m("meetings.join", obj! { "meetingId" => m }, Some(&w.bob))
        .await
        .unwrap();
    w.env
        .m("meetings.leave", obj! { "meetingId" => m }, Some(&w.bob))
        .await
        .unwrap();
    // Leaving is presence: bob still reads the meeting and may rejoin.
    w.env
        .q("chat.recent", obj! { "meetingId" => m }, Some(&w.bob))
        .await
        .unwrap();
    w.env
        .m("meetings.join", obj! { "meetingId" => m }, Some(&w.bob))
        .await
        .unwrap();
    // Removal ends access.
    w.env
        .m(
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => w.bob_id.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    expect_code(
        w.env
            .q("chat.recent", obj! { "meetingId" => m }, Some(&w.bob))
            .await,
        "FORBIDDEN",
    );
    let st = w
        .env
        .q(
            "meetings.getState",
            obj! { "meetingId" => m },
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(
        st.get_path("joinedCount"),
        Some(&Value::Int64(0)),
        "removal clears presence"
    );
}
