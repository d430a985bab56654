//! Revocation: a participant subscribed to a meeting's chat and state is removed by the host;
//! the subscriptions end at once (NOT_FOUND: the meeting is now hidden from them), and nothing committed after the removal
//! reaches the removed user, while the host keeps receiving updates.

mod linkedup_common;

use std::collections::HashMap;
use std::time::Duration;

use linkedup_common::*;
use linkedup_server::linkedup::LinkedUpConfig;
use query_engine::diff::apply;
use query_engine::obj;
use query_engine::subscriptions::{ClientSession, QueryUpdate, SubscriptionManager, Transition};
use query_engine::value::Value;

/// The next transition, waiting at most 10 s (a bound against hanging, not a timing check).
async fn next(session: &ClientSession) -> Transition {
    tokio::time::timeout(Duration::from_secs(10), session.next_transition())
        .await
        .expect("a transition within 10 s")
        .expect("session open")
}

/// A client's view of its subscriptions: results kept up to date by applying diffs, and the
/// errors that ended subscriptions.
#[derive(Default)]
struct View {
    results: HashMap<u32, Value>,
    failed: HashMap<u32, String>,
    last_ts: u64,
}

impl View {
    fn absorb(&mut self, t: &Transition) {
        self.last_ts = t.end_ts;
        for u in &t.updates {
            match u {
                QueryUpdate::Updated { query_id, diff, .. } => {
                    let old = self.results.get(query_id).cloned().unwrap_or(Value::Null);
                    self.results.insert(*query_id, apply(&old, diff).unwrap());
                }
                QueryUpdate::Failed { query_id, error } => {
                    self.results.remove(query_id);
                    self.failed.insert(*query_id, error.code.clone());
                }
                QueryUpdate::Removed { query_id } => {
                    self.results.remove(query_id);
                }
            }
        }
    }

    fn messages(&self, q: u32) -> Vec<String> {
        self.results
            .get(&q)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|m| s(m, "content")).collect())
            .unwrap_or_default()
    }

    /// Reads transitions until `done` holds.
    async fn until(&mut self, session: &ClientSession, done: impl Fn(&View) -> bool) {
        while !done(self) {
            let t = next(session).await;
            self.absorb(&t);
        }
    }
}

const CHAT: u32 = 1;
const STATE: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_participant_loses_its_subscriptions_and_sees_nothing_after() {
    let w = world(LinkedUpConfig::default()).await;
    let m = w.meeting.as_str();
    w.env
        .m("meetings.join", obj! { "meetingId" => m }, Some(&w.bob))
        .await
        .unwrap();
    let mgr = SubscriptionManager::new(w.env.engine.clone(), Default::default());
    let bob = mgr.connect(Some(w.bob.clone())).await;
    let alice = mgr.connect(Some(w.alice.clone())).await;
    for s in [&bob, &alice] {
        s.subscribe(CHAT, "chat.recent", obj! { "meetingId" => m })
            .await
            .unwrap();
        s.subscribe(STATE, "meetings.getState", obj! { "meetingId" => m })
            .await
            .unwrap();
    }
    let (mut bv, mut av) = (View::default(), View::default());
    bv.until(&bob, |v| v.results.len() == 2).await;
    av.until(&alice, |v| v.results.len() == 2).await;
    assert_eq!(
        bv.results[&STATE].get_path("joinedCount"),
        Some(&Value::Int64(1))
    );

    // Before the removal bob sees what is sent.
    w.env
        .m(
            "chat.send",
            obj! { "meetingId" => m, "content" => "before" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    bv.until(&bob, |v| v.messages(CHAT) == ["before"]).await;

    // The host removes bob: both of his subscriptions end (NOT_FOUND, as for an outsider).
    w.env
        .m(
            "meetings.removeParticipant",
            obj! { "meetingId" => m, "userId" => w.bob_id.as_str() },
            Some(&w.alice),
        )
        .await
        .unwrap();
    bv.until(&bob, |v| v.failed.len() == 2).await;
    assert_eq!(bv.failed[&CHAT], "NOT_FOUND");
    assert_eq!(bv.failed[&STATE], "NOT_FOUND");
    assert!(bv.results.is_empty());

    // Everything committed after the removal reaches alice but not bob.
    let after = w
        .env
        .engine
        .mutation(
            "chat.send",
            obj! { "meetingId" => m, "content" => "after" },
            Some(&w.alice),
        )
        .await
        .unwrap();
    av.until(&alice, |v| {
        v.messages(CHAT).first().map(String::as_str) == Some("after")
    })
    .await;
    assert!(av.last_ts >= after.ts);
    assert_eq!(
        av.results[&STATE].get_path("joinedCount"),
        Some(&Value::Int64(0))
    );
    // Alice's transition for that commit has been pushed, so bob's would have been too.
    while let Some(t) = bob.try_next_transition() {
        for u in &t.updates {
            assert!(
                !matches!(u, QueryUpdate::Updated { .. }),
                "bob received data after his removal: {u:?}"
            );
        }
    }
    expect_code(
        w.env
            .q("chat.recent", obj! { "meetingId" => m }, Some(&w.bob))
            .await,
        "NOT_FOUND",
    );
    // Re-subscribing is refused on its first run too.
    bob.subscribe(3, "chat.recent", obj! { "meetingId" => m })
        .await
        .unwrap();
    bv.until(&bob, |v| v.failed.contains_key(&3)).await;
    assert_eq!(bv.failed[&3], "NOT_FOUND");
    assert!(bv.results.is_empty());
}
