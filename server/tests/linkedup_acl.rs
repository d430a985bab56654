//! The meeting ACL matrix: for every meeting-scoped function, non-participants and users of
//! another organisation get the NOT_FOUND of a missing meeting (the reason goes to the audit
//! log only), participants are refused host actions (FORBIDDEN), hosts may do everything; and
//! another organisation's user sees nothing of this one's meetings.

mod linkedup_common;

use linkedup_common::*;
use linkedup_server::linkedup::LinkedUpConfig;
use query_engine::error::FunctionError;
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

/// Every meeting function refuses `who` with `code` and writes nothing; returns the errors.
async fn refused_everywhere(
    w: &World,
    who: &Identity,
    code: &str,
    label: &str,
) -> Vec<FunctionError> {
    let mut errors = Vec::new();
    for (name, args) in host_actions(w).into_iter().chain(participant_actions(w)) {
        let before = w.env.commits();
        let e = w.env.call(name, args, Some(who)).await.unwrap_err();
        assert_eq!(e.code, code, "{label} {name}: {e}");
        assert_eq!(w.env.commits(), before, "{label} {name} wrote something");
        errors.push(e);
    }
    errors
}

/// Refused as a participant: FORBIDDEN naming the meeting (they know it exists).
async fn forbidden_everywhere(w: &World, who: &Identity, label: &str) {
    for e in refused_everywhere(w, who, "FORBIDDEN", label).await {
        assert_eq!(
            e.data.get_path("resourceId").and_then(Value::as_str),
            Some(w.meeting.as_str()),
            "{label}: {e}"
        );
    }
}

/// Refused as an outsider: exactly the error of a meeting id naming no meeting.
async fn hidden_everywhere(w: &World, who: &Identity, label: &str) {
    for e in refused_everywhere(w, who, "NOT_FOUND", label).await {
        assert_eq!(e.message, format!("no meeting {}", w.meeting), "{label}");
        assert_eq!(e.data, Value::Null, "{label}: {e}");
    }
}

/// A meeting id of the right form that names no meeting.
async fn missing_meeting(w: &World) -> String {
    let gone = w.env.schedule(&w.alice, "gone", &[]).await;
    let g = gone.clone();
    w.env
        .engine
        .transact(move |ctx| ctx.delete("meetings", &g).map(|_| Value::Null))
        .await
        .unwrap();
    gone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_participants_and_other_orgs_are_refused_everything() {
    let w = world(LinkedUpConfig::default()).await;
    hidden_everywhere(&w, &w.carol, "non-participant").await;
    hidden_everywhere(&w, &w.dave, "other org").await;
    // Bob's own account, but with a token for another organisation: he is a participant.
    let bob_elsewhere = ident("bob", Some("org2"), Some("member"));
    forbidden_everywhere(&w, &bob_elsewhere, "participant with another org's token").await;
}

/// Meeting ids are guessable (a counter and a public checksum): another organisation's user
/// cannot tell one of this organisation's meetings from an id naming nothing, while the
/// audit log keeps why they were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_meeting_looks_missing_to_an_outsider() {
    let w = world(LinkedUpConfig::default()).await;
    let missing = missing_meeting(&w).await;
    let get = |meeting: &str| {
        w.env.q(
            "meetings.get",
            obj! { "meetingId" => meeting },
            Some(&w.dave),
        )
    };
    let theirs = get(&w.meeting).await.unwrap_err();
    let none = get(&missing).await.unwrap_err();
    // The message echoes the id asked for, and nothing else differs.
    let seen = |e: &FunctionError, id: &str| {
        (
            e.code.clone(),
            e.message.replace(id, "<id>"),
            e.data.clone(),
        )
    };
    assert_eq!(seen(&theirs, &w.meeting), seen(&none, &missing));
    assert_eq!(theirs.code, "NOT_FOUND");

    linkedup_server::linkedup::audit::flush_denials(&w.env.engine, &w.env.config.denials)
        .await
        .unwrap();
    let denials: Vec<Value> = w
        .env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|e| s(e, "action") == "access.denied")
        .collect();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(s(&denials[0], "resourceId"), w.meeting);
    assert_eq!(s(&denials[0], "actorUserId"), w.dave_id);
    assert!(
        s(&denials[0], "metadata.message").contains("another organisation"),
        "{denials:?}"
    );
    // Not to dave, nor to his organisation's admins (he is one): the row itself would tell.
    let log = w
        .env
        .q("audit.query", obj! {}, Some(&w.dave))
        .await
        .unwrap();
    assert_eq!(log, Value::Array(vec![]));
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

/// Adding or inviting another organisation's user is refused exactly as a user that does not
/// exist: user ids are guessable, so another answer would tell which exist and in which
/// organisation (before: FORBIDDEN "belongs to another organisation").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_user_looks_missing_to_a_host() {
    let w = world(LinkedUpConfig::default()).await;
    let attempts = || async {
        let add = w
            .env
            .m(
                "meetings.addParticipant",
                obj! { "meetingId" => w.meeting.as_str(), "userId" => w.dave_id.as_str() },
                Some(&w.alice),
            )
            .await
            .unwrap_err();
        let invite = w
            .env
            .m(
                "meetings.schedule",
                obj! { "title" => "x", "inviteeIds" => vec![Value::from(w.dave_id.as_str())] },
                Some(&w.alice),
            )
            .await
            .unwrap_err();
        [add, invite].map(|e| (e.code, e.message, e.data))
    };
    let dave_elsewhere = attempts().await;
    assert_eq!(dave_elsewhere[0].0, "NOT_FOUND");
    assert_eq!(dave_elsewhere[1].0, "VALIDATION_ERROR");
    assert!(
        dave_elsewhere[1].1.contains("inviteeIds[0]"),
        "{:?}",
        dave_elsewhere[1]
    );
    let d = w.dave_id.clone();
    w.env
        .engine
        .transact(move |ctx| ctx.delete("users", &d).map(|_| Value::Null))
        .await
        .unwrap();
    assert_eq!(attempts().await, dave_elsewhere, "dave's account gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_user_sees_nothing_even_with_a_participant_record() {
    let w = world(LinkedUpConfig::default()).await;
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
    // A record makes him a participant, who knows the meeting: FORBIDDEN.
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
    let g = missing_meeting(&w).await;
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
    // Removal ends access: the meeting is hidden from him like from any outsider.
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
        "NOT_FOUND",
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
