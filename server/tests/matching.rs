//! Matching end to end on a real engine: the queue functions and their error codes, a cycle
//! pairing compatible users and leaving incompatible ones, concurrent shards never matching a
//! user twice, expiry and purge, outcomes in `matchingAnalytics`, and embeddings as a signal.

mod linkedup_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use linkedup_common::*;
use linkedup_server::linkedup::matching::cycle::{COMMIT, EXPIRE, PURGE, RUN_CYCLE, TICK};
use linkedup_server::linkedup::{LinkedUpConfig, MatchingConfig, RateLimit, RateLimitConfig};
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

const ENTER: &str = "matching.enterQueue";
const LEAVE: &str = "matching.leaveQueue";
const STATUS: &str = "matching.status";
const RESPOND: &str = "matching.respond";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

/// `enterQueue` arguments for [now + from_h, now + to_h) hours.
fn window(from_h: i64, to_h: i64, interests: &[&str], roles: &[&str]) -> Value {
    let now = now_ms();
    obj! {
        "availableFrom" => now + from_h * HOUR,
        "availableTo" => now + to_h * HOUR,
        "constraints" => obj! { "interests" => strings(interests), "roles" => strings(roles) },
    }
}

fn with_org_constraint(mut args: Value, c: &str) -> Value {
    let constraints = args
        .as_object_mut()
        .unwrap()
        .get_mut("constraints")
        .unwrap();
    constraints
        .as_object_mut()
        .unwrap()
        .insert("orgConstraints".into(), c.into());
    args
}

fn int(v: &Value, path: &str) -> i64 {
    v.get_path(path)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no int at {path} in {v:?}"))
}

/// An engine with the catalogue seeded and the `matching` flag on globally (environment
/// "local", the default).
async fn env_with(config: LinkedUpConfig) -> (Env, String) {
    let env = open(config);
    for key in ["rust", "ai", "cooking", "design", "solo", "go"] {
        env.m(
            "interests.upsert",
            obj! { "key" => key, "label" => key, "category" => "topics" },
            None,
        )
        .await
        .unwrap();
    }
    let operator = env.user(&ident("operator", None, None)).await;
    set_flag(&env, &operator, None, true).await;
    (env, operator)
}

async fn env() -> Env {
    env_with(LinkedUpConfig::default()).await.0
}

/// Sets the `matching` flag globally, or for `org` (through its admin).
async fn set_flag(env: &Env, operator: &str, org: Option<&str>, on: bool) {
    let args = obj! {
        "key" => "matching", "environment" => "local", "value" => on, "reason" => "test",
    };
    match org {
        None => {
            let mut args = args.into_object().unwrap();
            args.insert("operatorUserId".into(), operator.into());
            env.m("flags.setGlobal", Value::from(args), None)
                .await
                .unwrap();
        }
        Some(org) => {
            let admin = ident(&format!("admin-{org}"), Some(org), Some("admin"));
            env.m("flags.set", args, Some(&admin)).await.unwrap();
        }
    }
}

struct Person {
    who: Identity,
    id: String,
}

async fn person(env: &Env, name: &str, org: Option<&str>) -> Person {
    let who = ident(name, org, Some("member"));
    let user = env
        .m(
            "users.ensure",
            obj! { "displayName" => name.to_uppercase() },
            Some(&who),
        )
        .await
        .unwrap();
    Person { who, id: id(&user) }
}

async fn enter(env: &Env, p: &Person, args: Value) -> String {
    env.m(ENTER, args, Some(&p.who))
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(env: &Env, p: &Person) -> Value {
    env.q(STATUS, obj! {}, Some(&p.who)).await.unwrap()
}

async fn cycle(env: &Env, shard: i64, shards: i64) -> Value {
    env.engine
        .action(
            RUN_CYCLE,
            obj! { "shard" => shard, "shards" => shards },
            None,
        )
        .await
        .unwrap()
}

fn entry_status(st: &Value) -> String {
    s(st, "entry.status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enter_leave_and_status_with_their_error_codes() {
    let (env, operator) = env_with(LinkedUpConfig::default()).await;
    let ann = person(&env, "ann", Some("org1")).await;

    // Anonymous callers are refused by every public function, writing nothing.
    let before = env.commits();
    for (name, args) in [
        (ENTER, window(0, 2, &[], &[])),
        (LEAVE, obj! {}),
        (STATUS, obj! {}),
        (
            RESPOND,
            obj! { "matchId" => "a:b:000000000000001", "outcome" => "accepted" },
        ),
    ] {
        expect_code(env.call(name, args, None).await, "UNAUTHORIZED");
    }
    assert_eq!(env.commits(), before);

    // Bad arguments name their field and write nothing.
    let now = now_ms();
    let bad = [
        (window(2, 1, &[], &[]), "availableTo"),
        (window(-3, -1, &[], &[]), "availableTo"),
        (window(0, 15 * 24, &[], &[]), "availableTo"),
        (window(31 * 24, 32 * 24, &[], &[]), "availableFrom"),
        (
            obj! {
                "availableFrom" => now - HOUR,
                "availableTo" => now + 60_000,
                "constraints" => obj! { "interests" => strings(&[]), "roles" => strings(&[]) },
            },
            "availableTo",
        ),
        (
            with_org_constraint(window(0, 2, &[], &[]), "sameTeam"),
            "constraints.orgConstraints",
        ),
        (
            window(0, 2, &["rust", "knitting"], &[]),
            "constraints.interests[1]",
        ),
        (window(0, 2, &[], &["wizard"]), "constraints.roles[0]"),
        (
            window(
                0,
                2,
                &[],
                &["mentor", "mentee", "peer", "expert", "learner", "founder"],
            ),
            "constraints.roles",
        ),
        (obj! { "availableFrom" => now }, "availableTo"),
    ];
    for (args, path) in bad {
        let before = env.commits();
        let e = expect_code(env.m(ENTER, args, Some(&ann.who)).await, "VALIDATION_ERROR");
        assert_eq!(
            e.data.get_path("path").and_then(Value::as_str),
            Some(path),
            "{e}"
        );
        assert_eq!(env.commits(), before, "{path}: wrote something");
    }
    let loner = person(&env, "loner", None).await;
    let e = expect_code(
        env.m(
            ENTER,
            with_org_constraint(window(0, 2, &[], &[]), "sameOrg"),
            Some(&loner.who),
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.contains("constraints.orgConstraints"), "{e}");

    // Never entered: status is null.
    assert_eq!(status(&env, &ann).await, Value::Null);

    // Enter, then enter again while waiting: the same entry, updated.
    let first = enter(
        &env,
        &ann,
        with_org_constraint(window(0, 2, &["rust"], &["mentor"]), "otherOrgs"),
    )
    .await;
    let st = status(&env, &ann).await;
    assert_eq!(entry_status(&st), "waiting");
    assert_eq!(s(&st, "entry.constraints.orgConstraints"), "otherOrgs");
    let again = enter(&env, &ann, window(1, 5, &["ai", "ai"], &[])).await;
    assert_eq!(again, first);
    let st = status(&env, &ann).await;
    assert_eq!(
        st.get_path("entry.constraints.interests"),
        Some(&strings(&["ai"]))
    );
    assert_eq!(st.get_path("entry.constraints.orgConstraints"), None);
    assert!(int(&st, "entry.availableTo") > now + 4 * HOUR);

    // Leave: cancelled; leaving again is a conflict; entering again makes a new entry.
    let left = env.m(LEAVE, obj! {}, Some(&ann.who)).await.unwrap();
    assert_eq!(left.as_str(), Some(first.as_str()));
    assert_eq!(entry_status(&status(&env, &ann).await), "cancelled");
    expect_code(env.m(LEAVE, obj! {}, Some(&ann.who)).await, "CONFLICT");
    let second = enter(&env, &ann, window(0, 2, &[], &[])).await;
    assert_ne!(second, first);

    let actions: Vec<String> = env
        .all("auditLogs")
        .await
        .iter()
        .filter(|a| s(a, "resourceType") == "matchingQueue")
        .map(|a| s(a, "action"))
        .collect();
    assert_eq!(
        actions,
        [
            "matching.queueEntered",
            "matching.queueUpdated",
            "matching.queueLeft",
            "matching.queueEntered"
        ]
    );

    // The flag: off for org2 by its override, though on globally.
    set_flag(&env, &operator, Some("org2"), false).await;
    let bo = person(&env, "bo", Some("org2")).await;
    let before = env.commits();
    let e = expect_code(
        env.m(ENTER, window(0, 2, &[], &[]), Some(&bo.who)).await,
        "FORBIDDEN",
    );
    assert!(e.message.contains("matching"), "{e}");
    assert_eq!(env.commits(), before);
    // Off globally: refused for everyone without an override.
    set_flag(&env, &operator, None, false).await;
    expect_code(
        env.m(ENTER, window(0, 2, &[], &[]), Some(&loner.who)).await,
        "FORBIDDEN",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entering_is_rate_limited() {
    let config = LinkedUpConfig {
        matching: MatchingConfig {
            enter_rate_limit: RateLimit {
                max: 3,
                window_ms: 60_000,
            },
            ..MatchingConfig::default()
        },
        // One counter document per bucket: the limiter is exact.
        rate_limits: RateLimitConfig {
            shards: 1,
            ..RateLimitConfig::default()
        },
        ..LinkedUpConfig::default()
    };
    let (env, _) = env_with(config).await;
    let ann = person(&env, "ann", None).await;
    for _ in 0..3 {
        enter(&env, &ann, window(0, 2, &[], &[])).await;
    }
    let e = expect_code(
        env.m(ENTER, window(0, 2, &[], &[]), Some(&ann.who)).await,
        "RATE_LIMITED",
    );
    assert!(int(&e.data, "retryAfterMs") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_pairs_compatible_users_and_leaves_incompatible_ones() {
    let (env, operator) = env_with(LinkedUpConfig::default()).await;
    // Each group has an interest key of its own, so only its members score above the
    // threshold together.
    let a = person(&env, "a", Some("org1")).await;
    let b = person(&env, "b", Some("org2")).await;
    let c = person(&env, "c", None).await;
    let d = person(&env, "d", None).await;
    let e = person(&env, "e", Some("org1")).await;
    let f = person(&env, "f", Some("org2")).await;
    let g = person(&env, "g", None).await;
    let h = person(&env, "h", None).await;
    let z = person(&env, "z", None).await;
    let x = person(&env, "x", Some("org3")).await;
    let y = person(&env, "y", None).await;

    // a and b: compatible (shared interests, mentor and mentee).
    enter(&env, &a, window(0, 3, &["rust"], &["mentor"])).await;
    enter(&env, &b, window(1, 4, &["rust"], &["mentee"])).await;
    // c and d: d declined c's connection request.
    let req = env
        .m(
            "connections.request",
            obj! { "userId" => d.id.as_str() },
            Some(&c.who),
        )
        .await
        .unwrap();
    env.m(
        "connections.decline",
        obj! { "connectionId" => id(&req) },
        Some(&d.who),
    )
    .await
    .unwrap();
    enter(&env, &c, window(0, 3, &["ai"], &[])).await;
    enter(&env, &d, window(0, 3, &["ai"], &[])).await;
    // e (org1, sameOrg) and f (org2).
    enter(
        &env,
        &e,
        with_org_constraint(window(0, 3, &["cooking"], &[]), "sameOrg"),
    )
    .await;
    enter(&env, &f, window(0, 3, &["cooking"], &[])).await;
    // g and h: windows that do not overlap.
    enter(&env, &g, window(0, 1, &["design"], &[])).await;
    enter(&env, &h, window(1, 2, &["design"], &[])).await;
    // z: alone with its interest.
    enter(&env, &z, window(0, 3, &["solo"], &[])).await;
    // x and y: compatible, but org3 turns matching off after x entered.
    enter(&env, &x, window(0, 3, &["go"], &[])).await;
    enter(&env, &y, window(0, 3, &["go"], &[])).await;
    set_flag(&env, &operator, Some("org3"), false).await;

    let r = cycle(&env, 0, 1).await;
    assert_eq!(int(&r, "entries"), 11);
    assert_eq!(int(&r, "matches"), 1);
    // Every pair is compared (well under the cap) and the hard constraints filter out
    // c–d, e–f, g–h and every pair with x; the rest are compatible but mostly score 0.
    assert!(int(&r, "candidates") >= 1, "{r:?}");

    let sa = status(&env, &a).await;
    let sb = status(&env, &b).await;
    assert_eq!(entry_status(&sa), "matched");
    assert_eq!(s(&sa, "entry.matchedWith"), b.id);
    assert_eq!(s(&sb, "entry.matchedWith"), a.id);
    assert_eq!(s(&sa, "matchedUser.userId"), b.id);
    assert_eq!(s(&sa, "matchedUser.displayName"), "B");
    assert_eq!(s(&sa, "entry.match.matchId"), s(&sb, "entry.match.matchId"));
    let score = sa.get_path("entry.match.score").unwrap().as_f64().unwrap();
    assert!(score > 0.25 && score <= 1.0, "{score}");
    assert_eq!(
        sa.get_path("entry.match.features.roles")
            .and_then(Value::as_f64),
        Some(1.0)
    );
    for p in [&c, &d, &e, &f, &g, &h, &z, &x, &y] {
        let st = status(&env, p).await;
        assert_eq!(entry_status(&st), "waiting", "{}", p.id);
        assert_eq!(st.get_path("matchedUser"), None);
    }
    let matched: Vec<Value> = env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|l| s(l, "action") == "matching.matched")
        .collect();
    assert_eq!(matched.len(), 2);
    let orgs: Vec<String> = matched.iter().map(|l| s(l, "orgId")).collect();
    assert_eq!(orgs, ["org1", "org2"]);

    // A second cycle finds nothing new.
    let r = cycle(&env, 0, 1).await;
    assert_eq!((int(&r, "entries"), int(&r, "matches")), (9, 0));

    // The commit re-checks: a pair with an entry no longer waiting is refused.
    let entry_of = |st: &Value| s(st, "entry._id");
    let sc = status(&env, &c).await;
    let r = env
        .m(
            COMMIT,
            obj! { "proposals" => vec![obj! {
                "entryA" => entry_of(&sa), "entryB" => entry_of(&sc),
                "features" => obj! { "interests" => 1.0, "roles" => 1.0 },
            }] },
            None,
        )
        .await
        .unwrap();
    assert_eq!((int(&r, "committed"), int(&r, "refused")), (0, 1));
    // So is a blocked pair, even proposed directly.
    let sd = status(&env, &d).await;
    let r = env
        .m(
            COMMIT,
            obj! { "proposals" => vec![obj! {
                "entryA" => entry_of(&sc), "entryB" => entry_of(&sd),
                "features" => obj! { "interests" => 1.0, "roles" => 1.0 },
            }] },
            None,
        )
        .await
        .unwrap();
    assert_eq!((int(&r, "committed"), int(&r, "refused")), (0, 1));
    expect_code(
        env.engine
            .action(RUN_CYCLE, obj! { "shard" => 2i64, "shards" => 2i64 }, None)
            .await,
        "VALIDATION_ERROR",
    );
}

/// Checks that every matched entry's partner is matched back with it, and returns how many
/// pairs are matched.
async fn matched_pairs_are_symmetric(env: &Env) -> usize {
    let entries = env.all("matchingQueue").await;
    let matched: Vec<&Value> = entries
        .iter()
        .filter(|e| s(e, "status") == "matched")
        .collect();
    let mut match_ids = std::collections::BTreeMap::new();
    for m in &matched {
        *match_ids.entry(s(m, "match.matchId")).or_insert(0) += 1;
        let partner = s(m, "matchedWith");
        let back: Vec<&&Value> = matched
            .iter()
            .filter(|o| s(o, "userId") == partner && s(o, "match.matchId") == s(m, "match.matchId"))
            .collect();
        assert_eq!(back.len(), 1, "{m:?} has no partner entry");
        assert_eq!(s(back[0], "matchedWith"), s(m, "userId"));
    }
    assert!(match_ids.values().all(|&n| n == 2), "{match_ids:?}");
    match_ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_shards_never_match_a_user_twice() {
    let env = env().await;
    let mut people = Vec::new();
    for i in 0..24 {
        people.push(person(&env, &format!("p{i:02}"), None).await);
    }
    let mut total = 0;
    // Pairs matched in rounds so far, and in this one.
    let mut earlier = std::collections::BTreeSet::new();
    let mut this_round = std::collections::BTreeSet::new();
    for round in 0..3 {
        for p in &people {
            enter(&env, p, window(0, 3, &["rust", "ai"], &["peer"])).await;
        }
        let (r0, r1, r2) = tokio::join!(cycle(&env, 0, 3), cycle(&env, 1, 3), cycle(&env, 2, 3));
        let matches: i64 = [r0, r1, r2].iter().map(|r| int(r, "matches")).sum();
        let pairs = matched_pairs_are_symmetric(&env).await;
        total += matches as usize;
        assert_eq!(pairs, total, "round {round}");
        // Each user's entries: at most one per round, none waiting and matched at once.
        for p in &people {
            let st = status(&env, p).await;
            if entry_status(&st) == "matched" {
                assert_ne!(s(&st, "entry.matchedWith"), p.id);
            }
        }
        // Whoever is left waiting is matched by a later single-shard cycle, unless the only
        // others left are partners of an earlier round (a pair is not matched twice within the
        // cool-down): no pair was lost.
        cycle(&env, 0, 1).await;
        total = matched_pairs_are_symmetric(&env).await;
        let mut waiting = Vec::new();
        for p in &people {
            let st = status(&env, p).await;
            if entry_status(&st) == "matched" {
                let pair = ordered_pair(&p.id, &s(&st, "entry.matchedWith"));
                if !this_round.contains(&pair) {
                    assert!(earlier.insert(pair.clone()), "{pair:?} matched twice");
                    this_round.insert(pair);
                }
            } else {
                waiting.push(p.id.clone());
            }
        }
        for (i, x) in waiting.iter().enumerate() {
            for y in &waiting[i + 1..] {
                assert!(
                    earlier.contains(&ordered_pair(x, y)),
                    "round {round}: {x} and {y} left waiting"
                );
            }
        }
        this_round.clear();
    }
    assert_eq!(total, earlier.len());
    assert!(total >= 33, "only {total} pairs in three rounds of 24");
}

fn ordered_pair(x: &str, y: &str) -> (String, String) {
    if x <= y {
        (x.to_string(), y.to_string())
    } else {
        (y.to_string(), x.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_windows_expire_and_old_finished_entries_are_purged() {
    let env = env().await;
    let ann = person(&env, "ann", Some("org1")).await;
    let bob = person(&env, "bob", None).await;
    enter(&env, &bob, window(0, 3, &[], &[])).await;
    // Windows in the past cannot be entered; write them as they would stand later.
    let ann_id = ann.id.clone();
    env.engine
        .transact(move |ctx| {
            let now = ctx.now_ms();
            for (status, end) in [
                ("cancelled", now - 100 * DAY),
                ("expired", now - 10 * DAY),
                ("waiting", now - 1),
            ] {
                ctx.insert(
                    "matchingQueue",
                    obj! {
                        "userId" => ann_id.as_str(),
                        "availableFrom" => end - HOUR,
                        "availableTo" => end,
                        "constraints" => obj! { "interests" => strings(&[]), "roles" => strings(&[]) },
                        "status" => status,
                        "createdAt" => end - HOUR,
                        "updatedAt" => end - HOUR,
                    },
                )?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    // A cycle does not read it (its window has ended).
    let r = cycle(&env, 0, 1).await;
    assert_eq!(int(&r, "entries"), 1);

    let expired = env.m(EXPIRE, obj! {}, None).await.unwrap();
    assert_eq!(expired.as_i64(), Some(1));
    assert_eq!(entry_status(&status(&env, &ann).await), "expired");
    assert_eq!(entry_status(&status(&env, &bob).await), "waiting");
    let log: Vec<Value> = env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|l| s(l, "action") == "matching.expired")
        .collect();
    assert_eq!(log.len(), 1);
    assert_eq!(s(&log[0], "orgId"), "org1");
    assert_eq!(
        env.m(EXPIRE, obj! {}, None).await.unwrap().as_i64(),
        Some(0)
    );

    // Purge: only the entry whose window ended more than 90 days ago.
    assert_eq!(env.m(PURGE, obj! {}, None).await.unwrap().as_i64(), Some(1));
    let left: Vec<String> = env
        .all("matchingQueue")
        .await
        .iter()
        .map(|e| s(e, "status"))
        .collect();
    assert_eq!(left, ["waiting", "expired", "expired"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_recorded_once_per_user_and_only_for_ones_own_match() {
    let env = env().await;
    let a = person(&env, "a", None).await;
    let b = person(&env, "b", None).await;
    let c = person(&env, "c", None).await;
    enter(&env, &a, window(0, 3, &["rust"], &["mentor"])).await;
    enter(&env, &b, window(0, 3, &["rust"], &["mentee"])).await;
    assert_eq!(int(&cycle(&env, 0, 1).await, "matches"), 1);
    let sa = status(&env, &a).await;
    let match_id = s(&sa, "entry.match.matchId");
    let respond = |outcome: &str| {
        obj! { "matchId" => match_id.as_str(), "outcome" => outcome }
    };

    let accepted = env
        .m(RESPOND, respond("accepted"), Some(&a.who))
        .await
        .unwrap();
    assert_eq!(s(&accepted, "userId"), a.id);
    assert_eq!(
        accepted.get_path("features"),
        sa.get_path("entry.match.features")
    );
    assert_eq!(
        accepted.get_path("weights"),
        sa.get_path("entry.match.weights")
    );
    // Again: the same row, nothing written.
    let before = env.commits();
    let again = env
        .m(RESPOND, respond("accepted"), Some(&a.who))
        .await
        .unwrap();
    assert_eq!(id(&again), id(&accepted));
    assert_eq!(env.commits(), before);
    expect_code(
        env.m(RESPOND, respond("declined"), Some(&a.who)).await,
        "CONFLICT",
    );
    expect_code(
        env.m(RESPOND, respond("completed"), Some(&b.who)).await,
        "CONFLICT",
    );
    let mut done = respond("completed");
    done.as_object_mut().unwrap().insert(
        "feedback".into(),
        obj! { "rating" => 5i64, "comments" => "great" },
    );
    let completed = env.m(RESPOND, done, Some(&a.who)).await.unwrap();
    assert_eq!(int(&completed, "feedback.rating"), 5);
    env.m(RESPOND, respond("declined"), Some(&b.who))
        .await
        .unwrap();
    assert_eq!(
        status(&env, &a).await.get_path("myOutcomes"),
        Some(&strings(&["accepted", "completed"]))
    );

    // Someone else's match: forbidden, and the denial is logged.
    expect_code(
        env.m(RESPOND, respond("accepted"), Some(&c.who)).await,
        "FORBIDDEN",
    );
    // Malformed ids, bad feedback, and a well-formed id of no match of the caller's.
    let mut bad_rating = respond("accepted");
    bad_rating
        .as_object_mut()
        .unwrap()
        .insert("feedback".into(), obj! { "rating" => 6i64 });
    for (args, path) in [
        (
            obj! { "matchId" => "nonsense", "outcome" => "accepted" },
            "matchId",
        ),
        (
            obj! { "matchId" => match_id.as_str(), "outcome" => "maybe" },
            "outcome",
        ),
        (bad_rating, "feedback.rating"),
    ] {
        let e = expect_code(env.m(RESPOND, args, Some(&b.who)).await, "VALIDATION_ERROR");
        assert!(e.message.contains(path), "{e}");
    }
    let (low, high) = if a.id < c.id {
        (&a.id, &c.id)
    } else {
        (&c.id, &a.id)
    };
    expect_code(
        env.m(
            RESPOND,
            obj! { "matchId" => format!("{low}:{high}:001700000000000"), "outcome" => "accepted" },
            Some(&a.who),
        )
        .await,
        "NOT_FOUND",
    );
    let rows = env.all("matchingAnalytics").await;
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| (s(r, "userId"), s(r, "outcome")))
        .collect();
    assert_eq!(
        got,
        [
            (a.id.clone(), "accepted".to_string()),
            (a.id.clone(), "completed".to_string()),
            (b.id.clone(), "declined".to_string()),
        ]
    );
    assert!(rows.iter().all(|r| s(r, "matchId") == match_id));

    // b declined: the pair is kept apart, even when both wait again.
    enter(&env, &a, window(0, 3, &["rust"], &["mentor"])).await;
    enter(&env, &b, window(0, 3, &["rust"], &["mentee"])).await;
    assert_eq!(int(&cycle(&env, 0, 1).await, "matches"), 0);
    audit_flush(&env).await;
    let denials = env
        .all("auditLogs")
        .await
        .into_iter()
        .filter(|l| s(l, "action") == "access.denied" && s(l, "resourceType") == "match")
        .count();
    assert_eq!(denials, 1);
}

async fn audit_flush(env: &Env) {
    linkedup_server::linkedup::audit::flush_denials(&env.engine, &env.config.denials)
        .await
        .unwrap();
}

/// Inserts a user embedding the way the embedding action stores it.
async fn embed(env: &Env, user_id: &str, model: &str, vector: &[f64]) {
    let (user_id, model, vector) = (user_id.to_string(), model.to_string(), vector.to_vec());
    env.engine
        .transact(move |ctx| {
            let now = ctx.now_ms();
            ctx.insert(
                "embeddings",
                obj! {
                    "sourceType" => "user",
                    "sourceId" => user_id.as_str(),
                    "vector" => Value::Array(vector.iter().map(|x| Value::from(*x)).collect()),
                    "model" => model.as_str(),
                    "dimensions" => vector.len() as i64,
                    "version" => "1",
                    "metadata" => obj! {},
                    "createdAt" => now,
                },
            )?;
            Ok(Value::Null)
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_a_signal_when_both_have_comparable_ones() {
    let env = env().await;
    let p = person(&env, "p", None).await;
    let q = person(&env, "q", None).await;
    let r = person(&env, "r", None).await;
    let t = person(&env, "t", None).await;
    for x in [&p, &q, &r, &t] {
        enter(&env, x, window(0, 3, &[], &[])).await;
    }
    // Nothing in common but time: nobody scores.
    let res = cycle(&env, 0, 1).await;
    assert_eq!(int(&res, "matches"), 0);
    assert_eq!(int(&res, "candidates"), 6);

    embed(&env, &p.id, "m1", &[1.0, 0.0, 0.0]).await;
    embed(&env, &q.id, "m1", &[0.96, 0.28, 0.0]).await;
    // r: orthogonal to both; t: same direction as p but another model (no signal).
    embed(&env, &r.id, "m1", &[0.0, 0.0, 1.0]).await;
    embed(&env, &t.id, "m2", &[1.0, 0.0, 0.0]).await;
    let res = cycle(&env, 0, 1).await;
    assert_eq!(int(&res, "matches"), 1);
    let sp = status(&env, &p).await;
    assert_eq!(s(&sp, "entry.matchedWith"), q.id);
    let v = sp
        .get_path("entry.match.features.vector")
        .and_then(Value::as_f64)
        .unwrap();
    assert!((v - 0.96).abs() < 1e-9, "{v}");
    for x in [&r, &t] {
        assert_eq!(entry_status(&status(&env, x).await), "waiting");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_runs_a_cycle_per_shard() {
    assert!(linkedup_server::linkedup::crons()
        .iter()
        .any(|c| c.function == TICK));
    let env = env().await;
    let a = person(&env, "a", None).await;
    let b = person(&env, "b", None).await;
    enter(&env, &a, window(0, 3, &["rust"], &[])).await;
    enter(&env, &b, window(0, 3, &["rust"], &[])).await;
    let shards = env.m(TICK, obj! {}, None).await.unwrap();
    assert_eq!(shards.as_i64(), Some(4));
    // The scheduler runs the cycles; wait for their effect (not for a duration).
    let mut st = status(&env, &a).await;
    for _ in 0..200 {
        if entry_status(&st) == "matched" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = status(&env, &a).await;
    }
    assert_eq!(s(&st, "entry.matchedWith"), b.id);
}

/// A pair matched once is not matched again when both re-enter the queue within the
/// cool-down, whether or not they have responded yet (a match leaves no outcome until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matched_pair_is_not_matched_again_on_re_entering() {
    let env = env().await;
    let a = person(&env, "a", None).await;
    let b = person(&env, "b", None).await;
    enter(&env, &a, window(0, 3, &["rust"], &["mentor"])).await;
    enter(&env, &b, window(0, 3, &["rust"], &["mentee"])).await;
    assert_eq!(int(&cycle(&env, 0, 1).await, "matches"), 1);
    let first = s(&status(&env, &a).await, "entry.match.matchId");
    // Neither responds; both come back.
    enter(&env, &a, window(0, 3, &["rust"], &["mentor"])).await;
    enter(&env, &b, window(0, 3, &["rust"], &["mentee"])).await;
    assert_eq!(int(&cycle(&env, 0, 1).await, "matches"), 0);
    assert_eq!(entry_status(&status(&env, &a).await), "waiting");
    // Someone new is still matched.
    let c = person(&env, "c", None).await;
    enter(&env, &c, window(0, 3, &["rust"], &["mentee"])).await;
    assert_eq!(int(&cycle(&env, 0, 1).await, "matches"), 1);
    let second = status(&env, &a).await;
    assert_eq!(s(&second, "entry.matchedWith"), c.id);
    assert_ne!(s(&second, "entry.match.matchId"), first);
}
