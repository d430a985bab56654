//! Block lists (seed §24 do-not-match lists) on a real engine: `users.block`, `users.unblock`
//! and `users.listBlocked` with their errors, idempotency, limits and audit entries (without
//! the private reason), and a block's effect both ways on connections and on matching (the
//! pair is never proposed, a pending match between them is cancelled). Erasure of blocks is
//! in `linkedup_erasure`.

mod linkedup_common;

use std::time::{SystemTime, UNIX_EPOCH};

use linkedup_common::*;
use linkedup_server::linkedup::blocks::BlocksConfig;
use linkedup_server::linkedup::matching::cycle::{COMMIT, RUN_CYCLE, WAITING_PAGE};
use linkedup_server::linkedup::{LinkedUpConfig, RateLimit, RateLimitConfig};
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

const BLOCK: &str = "users.block";
const UNBLOCK: &str = "users.unblock";
const LIST: &str = "users.listBlocked";
const REQUEST: &str = "connections.request";
const REASON: &str = "kept sending me sales pitches";
const HOUR: i64 = 3_600_000;

async fn block(env: &Env, who: &Identity, user: &str) -> Value {
    env.m(BLOCK, obj! { "userId" => user }, Some(who))
        .await
        .unwrap()
}

async fn unblock(env: &Env, who: &Identity, user: &str) -> bool {
    let r = env
        .m(UNBLOCK, obj! { "userId" => user }, Some(who))
        .await
        .unwrap();
    r.as_bool().unwrap()
}

/// The blocked user ids of one `users.listBlocked` page, and the page.
async fn listed(env: &Env, who: &Identity, args: Value) -> (Vec<String>, Value) {
    let page = env.q(LIST, args, Some(who)).await.unwrap();
    let ids = page
        .get_path("page")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|b| s(b, "blockedId"))
        .collect();
    (ids, page)
}

fn audit_of<'a>(log: &'a [Value], action: &str) -> Vec<&'a Value> {
    log.iter().filter(|l| s(l, "action") == action).collect()
}

/// A well-formed users id that names no user.
async fn missing_user(env: &Env) -> String {
    let id = env
        .engine
        .transact(|ctx| {
            ctx.insert(
                "users",
                obj! {
                    "workosUserId" => "gone", "email" => "", "isActive" => true,
                    "createdAt" => 0i64, "updatedAt" => 0i64,
                },
            )
            .map(Value::from)
        })
        .await
        .unwrap();
    let id = id.as_str().unwrap().to_string();
    let gone = id.clone();
    env.engine
        .transact(move |ctx| ctx.delete("users", &gone).map(|_| Value::Null))
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_unblock_and_list_with_their_errors_and_audit() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let (alice, bob) = (&w.alice, &w.bob);

    let b = env
        .m(
            BLOCK,
            obj! { "userId" => w.bob_id.as_str(), "reason" => REASON },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(s(&b, "blockerId"), w.alice_id);
    assert_eq!(s(&b, "blockedId"), w.bob_id);
    assert_eq!(s(&b, "reason"), REASON);
    // Blocking twice is one block: the first is returned as it is and nothing is written.
    let before = env.commits();
    let again = env
        .m(
            BLOCK,
            obj! { "userId" => w.bob_id.as_str(), "reason" => "another note" },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(again, b);
    assert_eq!(env.commits(), before, "a repeated block wrote something");
    block(env, alice, &w.carol_id).await;
    block(env, alice, &w.dave_id).await;
    assert_eq!(env.all("userBlocks").await.len(), 3);

    // Newest first, in bounded pages.
    let (all, page) = listed(env, alice, obj! {}).await;
    assert_eq!(all, [&*w.dave_id, &w.carol_id, &w.bob_id]);
    assert_eq!(page.get_path("isDone"), Some(&Value::Bool(true)));
    let (first, page) = listed(env, alice, obj! { "numItems" => 2i64 }).await;
    assert_eq!(first, [&*w.dave_id, &w.carol_id]);
    assert_eq!(page.get_path("isDone"), Some(&Value::Bool(false)));
    let cursor = s(&page, "continueCursor");
    let (rest, page) = listed(
        env,
        alice,
        obj! { "numItems" => 2i64, "cursor" => cursor.as_str() },
    )
    .await;
    assert_eq!(rest, [&*w.bob_id]);
    assert_eq!(page.get_path("isDone"), Some(&Value::Bool(true)));
    // A list is its owner's only: bob sees none, and nothing of alice's.
    assert!(listed(env, bob, obj! {}).await.0.is_empty());
    for bad in [0i64, 101] {
        let e = expect_code(
            env.q(LIST, obj! { "numItems" => bad }, Some(alice)).await,
            "VALIDATION_ERROR",
        );
        assert_eq!(s(&e.data, "path"), "numItems");
    }

    // Errors, each writing nothing.
    let nobody = missing_user(env).await;
    let before = env.commits();
    let e = expect_code(
        env.m(BLOCK, obj! { "userId" => w.alice_id.as_str() }, Some(alice))
            .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(s(&e.data, "path"), "userId");
    for reason in [String::new(), "x".repeat(501)] {
        let e = expect_code(
            env.m(
                BLOCK,
                obj! { "userId" => w.carol_id.as_str(), "reason" => reason },
                Some(bob),
            )
            .await,
            "VALIDATION_ERROR",
        );
        assert_eq!(s(&e.data, "path"), "reason");
    }
    expect_code(
        env.m(BLOCK, obj! { "userId" => nobody.as_str() }, Some(alice))
            .await,
        "NOT_FOUND",
    );
    expect_code(
        env.m(BLOCK, obj! { "userId" => w.carol_id.as_str() }, None)
            .await,
        "UNAUTHORIZED",
    );
    let e = expect_code(
        env.m(
            UNBLOCK,
            obj! { "userId" => w.alice_id.as_str() },
            Some(alice),
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(s(&e.data, "path"), "userId");
    assert_eq!(env.commits(), before);

    // A user whose erasure was requested cannot be blocked any more.
    env.m(
        "users.requestErasure",
        obj! { "confirm" => true },
        Some(&w.dave),
    )
    .await
    .unwrap();
    let e = expect_code(
        env.m(BLOCK, obj! { "userId" => w.dave_id.as_str() }, Some(bob))
            .await,
        "NOT_FOUND",
    );
    assert_eq!(e.message, format!("no user {}", w.dave_id));

    // Unblocking: true once, then false (not an error), writing nothing.
    assert!(unblock(env, alice, &w.bob_id).await);
    let before = env.commits();
    assert!(!unblock(env, alice, &w.bob_id).await);
    assert!(!unblock(env, bob, &w.alice_id).await);
    assert_eq!(env.commits(), before);
    assert!(!listed(env, alice, obj! {}).await.0.contains(&w.bob_id));

    // Audited as the blocker's, naming the blocked user; the private reason is nowhere in the
    // log.
    let log = env.all("auditLogs").await;
    let blocked = audit_of(&log, "users.blocked");
    assert_eq!(blocked.len(), 3);
    assert_eq!(s(blocked[0], "actorUserId"), w.alice_id);
    assert_eq!(s(blocked[0], "resourceType"), "user");
    assert_eq!(s(blocked[0], "resourceId"), w.bob_id);
    assert_eq!(s(blocked[0], "metadata.blockId"), id(&b));
    let unblocked = audit_of(&log, "users.unblocked");
    assert_eq!(unblocked.len(), 1);
    assert_eq!(s(unblocked[0], "resourceId"), w.bob_id);
    assert_eq!(s(unblocked[0], "metadata.blockId"), id(&b));
    for entry in &log {
        let text = format!("{entry:?}");
        assert!(!text.contains(REASON), "the reason is in {text}");
    }
    let mine = env
        .q(
            "audit.query",
            obj! { "action" => "users.blocked" },
            Some(alice),
        )
        .await
        .unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 3);
    // The blocked user does not see that they were blocked.
    let theirs = env.q("audit.query", obj! {}, Some(bob)).await.unwrap();
    assert!(theirs
        .as_array()
        .unwrap()
        .iter()
        .all(|l| !s(l, "action").starts_with("users.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_are_bounded_per_user_and_rate_limited() {
    let config = LinkedUpConfig {
        blocks: BlocksConfig { max_per_user: 3 },
        rate_limits: RateLimitConfig {
            blocks: RateLimit {
                max: 6,
                window_ms: 60_000,
            },
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    };
    let env = open(config);
    let me = ident("me", None, None);
    env.user(&me).await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(env.user(&ident(&format!("u{i}"), None, None)).await);
    }
    for u in &others[..3] {
        block(&env, &me, u).await;
    }
    let before = env.commits();
    let e = expect_code(
        env.m(BLOCK, obj! { "userId" => others[3].as_str() }, Some(&me))
            .await,
        "CONFLICT",
    );
    assert_eq!(s(&e.data, "reason"), "blockLimit");
    assert_eq!(e.data.get_path("max"), Some(&Value::from(3i64)));
    assert_eq!(env.commits(), before);
    // At the limit a block that exists is still returned (and costs no call).
    block(&env, &me, &others[0]).await;
    // Making room lets the next one in.
    assert!(unblock(&env, &me, &others[0]).await);
    block(&env, &me, &others[3]).await;
    // Block and unblock count together: three blocks, an unblock, a block, an unblock make six.
    assert!(unblock(&env, &me, &others[1]).await);
    let e = expect_code(
        env.m(BLOCK, obj! { "userId" => others[0].as_str() }, Some(&me))
            .await,
        "RATE_LIMITED",
    );
    assert!(e.data.get_path("retryAfterMs").is_some());
    expect_code(
        env.m(UNBLOCK, obj! { "userId" => others[2].as_str() }, Some(&me))
            .await,
        "RATE_LIMITED",
    );
    // What needs no change is not limited.
    block(&env, &me, &others[2]).await;
    assert!(!unblock(&env, &me, &others[0]).await);
    let (held, _) = listed(&env, &me, obj! {}).await;
    assert_eq!(held, [&*others[3], &others[2]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_keeps_the_pair_apart_in_connections_both_ways() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    let (alice, bob, carol) = (&w.alice, &w.bob, &w.carol);
    let request = |to: &str| obj! { "userId" => to };

    // A pending request is withdrawn by the addressee's block.
    let pending = env
        .m(REQUEST, request(&w.bob_id), Some(alice))
        .await
        .unwrap();
    block(env, bob, &w.alice_id).await;
    assert!(env.all("connections").await.is_empty());
    expect_code(
        env.m(
            "connections.accept",
            obj! { "connectionId" => id(&pending) },
            Some(bob),
        )
        .await,
        "NOT_FOUND",
    );
    // The blocked side is told what a missing user gives, and nothing is written.
    let before = env.commits();
    let refused = expect_code(
        env.m(REQUEST, request(&w.bob_id), Some(alice)).await,
        "NOT_FOUND",
    );
    let nobody = missing_user(env).await;
    let missing = expect_code(
        env.m(REQUEST, request(&nobody), Some(alice)).await,
        "NOT_FOUND",
    );
    assert_eq!(refused.message, format!("no user {}", w.bob_id));
    assert_eq!(missing.message, format!("no user {nobody}"));
    assert_eq!(refused.data, missing.data);
    // The blocker is told to unblock first.
    let e = expect_code(
        env.m(REQUEST, request(&w.alice_id), Some(bob)).await,
        "CONFLICT",
    );
    assert_eq!(s(&e.data, "reason"), "blocked");
    assert_eq!(env.commits(), before + 2, "only missing_user wrote");

    // An accepted connection ends with a block by either side.
    let c = env
        .m(REQUEST, request(&w.carol_id), Some(alice))
        .await
        .unwrap();
    env.m(
        "connections.accept",
        obj! { "connectionId" => id(&c) },
        Some(carol),
    )
    .await
    .unwrap();
    block(env, carol, &w.alice_id).await;
    for who in [alice, carol] {
        let listed = env.q("connections.list", obj! {}, Some(who)).await.unwrap();
        assert!(listed.as_array().unwrap().is_empty());
    }
    let log = env.all("auditLogs").await;
    let removed: Vec<String> = audit_of(&log, "users.blocked")
        .iter()
        .map(|l| s(l, "metadata.removedConnection"))
        .collect();
    assert_eq!(removed, ["pending", "accepted"]);

    // Blocked both ways: each blocker is told they block, so the other's block stays hidden.
    block(env, alice, &w.bob_id).await;
    let e = expect_code(
        env.m(REQUEST, request(&w.bob_id), Some(alice)).await,
        "CONFLICT",
    );
    assert_eq!(s(&e.data, "reason"), "blocked");

    // Refusals are not access denials: nothing about them reaches the audit log.
    linkedup_server::linkedup::audit::flush_denials(&env.engine, &env.config.denials)
        .await
        .unwrap();
    assert!(audit_of(&env.all("auditLogs").await, "access.denied").is_empty());

    // Unblocked both ways, the pair starts from "never connected".
    assert!(unblock(env, alice, &w.bob_id).await);
    expect_code(
        env.m(REQUEST, request(&w.bob_id), Some(alice)).await,
        "NOT_FOUND",
    );
    assert!(unblock(env, bob, &w.alice_id).await);
    let again = env
        .m(REQUEST, request(&w.bob_id), Some(alice))
        .await
        .unwrap();
    assert_eq!(s(&again, "status"), "pending");

    // Meetings are organisational and not affected: a host adds a participant who blocks
    // them, and both stay in the meeting they share.
    env.m(
        "meetings.addParticipant",
        obj! { "meetingId" => w.meeting.as_str(), "userId" => w.carol_id.as_str() },
        Some(alice),
    )
    .await
    .unwrap();
    env.m(
        "chat.send",
        obj! { "meetingId" => w.meeting.as_str(), "content" => "hello" },
        Some(carol),
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Matching.

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Two compatible people for matching: shared interest, mentor and mentee, one window.
struct Pair {
    env: Env,
    a: Identity,
    b: Identity,
    a_id: String,
    b_id: String,
}

async fn matching_pair() -> Pair {
    let env = open(LinkedUpConfig::default());
    env.m(
        "interests.upsert",
        obj! { "key" => "rust", "label" => "Rust", "category" => "tech" },
        None,
    )
    .await
    .unwrap();
    let operator = env.user(&ident("operator", None, None)).await;
    env.m(
        "flags.setGlobal",
        obj! {
            "key" => "matching", "environment" => "local", "value" => true, "reason" => "test",
            "operatorUserId" => operator.as_str(),
        },
        None,
    )
    .await
    .unwrap();
    let (a, b) = (ident("a", None, None), ident("b", None, None));
    let (a_id, b_id) = (env.user(&a).await, env.user(&b).await);
    Pair {
        env,
        a,
        b,
        a_id,
        b_id,
    }
}

impl Pair {
    async fn enter_both(&self) {
        let now = now_ms();
        for (who, role) in [(&self.a, "mentor"), (&self.b, "mentee")] {
            self.env
                .m(
                    "matching.enterQueue",
                    obj! {
                        "availableFrom" => now,
                        "availableTo" => now + 3 * HOUR,
                        "constraints" => obj! {
                            "interests" => vec![Value::from("rust")],
                            "roles" => vec![Value::from(role)],
                        },
                    },
                    Some(who),
                )
                .await
                .unwrap();
        }
    }

    /// One cycle over a single shard: (candidates, matches).
    async fn cycle(&self) -> (i64, i64) {
        let r = self
            .env
            .engine
            .action(RUN_CYCLE, obj! { "shard" => 0i64, "shards" => 1i64 }, None)
            .await
            .unwrap();
        let int = |k: &str| r.get_path(k).and_then(Value::as_i64).unwrap();
        (int("candidates"), int("matches"))
    }

    async fn status(&self, who: &Identity) -> Value {
        self.env
            .q("matching.status", obj! {}, Some(who))
            .await
            .unwrap()
    }

    async fn respond(
        &self,
        who: &Identity,
        match_id: &str,
        outcome: &str,
    ) -> Result<Value, String> {
        self.env
            .m(
                "matching.respond",
                obj! { "matchId" => match_id, "outcome" => outcome },
                Some(who),
            )
            .await
            .map_err(|e| e.code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_keeps_the_pair_out_of_matching_both_ways() {
    let p = matching_pair().await;
    let env = &p.env;
    p.enter_both().await;
    block(env, &p.a, &p.b_id).await;

    // Each side's do-not-match list names the other: the blocker's (by them) and the blocked
    // user's (of them).
    let page = env.q(WAITING_PAGE, obj! {}, None).await.unwrap();
    let parties = page.get_path("parties").and_then(Value::as_array).unwrap();
    assert_eq!(parties.len(), 2);
    for party in parties {
        let other = if s(party, "userId") == p.a_id {
            &p.b_id
        } else {
            &p.a_id
        };
        assert_eq!(
            party.get_path("doNotMatch"),
            Some(&Value::Array(vec![Value::from(other.as_str())])),
            "{party:?}"
        );
    }
    // So the cycle never proposes the pair: no candidate at all, not a refused commit.
    assert_eq!(p.cycle().await, (0, 0));
    for who in [&p.a, &p.b] {
        assert_eq!(s(&p.status(who).await, "entry.status"), "waiting");
    }
    // And a commit proposing it anyway is refused by the exact check of the pair.
    let entry = |st: &Value| s(st, "entry._id");
    let (sa, sb) = (p.status(&p.a).await, p.status(&p.b).await);
    let r = env
        .m(
            COMMIT,
            obj! { "proposals" => vec![obj! {
                "entryA" => entry(&sb), "entryB" => entry(&sa),
                "features" => obj! { "interests" => 1.0, "roles" => 1.0 },
            }] },
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.get_path("refused"), Some(&Value::from(1i64)));

    // The other direction: b blocks a, a no longer does.
    block(env, &p.b, &p.a_id).await;
    assert!(unblock(env, &p.a, &p.b_id).await);
    assert_eq!(p.cycle().await, (0, 0));
    // Unblocked, they are matched.
    assert!(unblock(env, &p.b, &p.a_id).await);
    assert_eq!(p.cycle().await, (1, 1));
    assert_eq!(s(&p.status(&p.a).await, "entry.matchedWith"), p.b_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_cancels_a_pending_match_but_not_a_concluded_one() {
    let p = matching_pair().await;
    let env = &p.env;
    p.enter_both().await;
    assert_eq!(p.cycle().await.1, 1);
    let match_id = s(&p.status(&p.a).await, "entry.match.matchId");
    // One side accepted: still pending. The other side's block cancels it.
    p.respond(&p.a, &match_id, "accepted").await.unwrap();
    block(env, &p.b, &p.a_id).await;
    // Cancelled, shown without the counterpart (no id, name or match record): the blocked
    // side is not told who blocked them.
    for who in [&p.a, &p.b] {
        let st = p.status(who).await;
        assert_eq!(s(&st, "entry.status"), "cancelled");
        for hidden in ["entry.matchedWith", "entry.match", "matchedUser"] {
            assert_eq!(st.get_path(hidden), None, "{hidden} in {st:?}");
        }
        assert_eq!(st.get_path("myOutcomes"), Some(&Value::Array(vec![])));
    }
    for who in [&p.a, &p.b] {
        assert_eq!(
            p.respond(who, &match_id, "completed").await.unwrap_err(),
            "NOT_FOUND"
        );
    }
    let log = env.all("auditLogs").await;
    let blocked = audit_of(&log, "users.blocked");
    assert_eq!(
        blocked[0].get_path("metadata.cancelledMatches"),
        Some(&Value::Array(vec![Value::from(match_id.as_str())]))
    );

    // A match the two completed is history: a later block leaves it alone.
    assert!(unblock(env, &p.b, &p.a_id).await);
    p.enter_both().await;
    assert_eq!(p.cycle().await.1, 1);
    let second = s(&p.status(&p.a).await, "entry.match.matchId");
    assert_ne!(second, match_id);
    p.respond(&p.a, &second, "accepted").await.unwrap();
    p.respond(&p.a, &second, "completed").await.unwrap();
    block(env, &p.a, &p.b_id).await;
    for who in [&p.a, &p.b] {
        assert_eq!(s(&p.status(who).await, "entry.status"), "matched");
    }
    let log = env.all("auditLogs").await;
    let blocked = audit_of(&log, "users.blocked");
    assert_eq!(
        blocked[1].get_path("metadata.cancelledMatches"),
        Some(&Value::Array(vec![]))
    );
    // The completed match can still be rated by the other side.
    p.respond(&p.b, &second, "accepted").await.unwrap();
}
