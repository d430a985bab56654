//! Collaborative notes against the real engine (in-process, LinkedUp schema and functions):
//! several `NoteEditor`s make random concurrent edits (emoji, combining marks, CJK) through
//! `notes.applyOperation`, learn remote ops through `notes.opsSince`, and converge on the
//! server's text; retransmissions apply once; stale bases, bad ops and outsiders are refused
//! with the seed's codes; compaction keeps the note and makes old bases resync.

use std::time::Duration;

use linkedup_client::note_editor::{NoteEditor, OutgoingOp};
use linkedup_schema::api::notes::{
    op_weight, window_may_be_cut, NoteOpEntry, MAX_NOTE_CHARS, MAX_OPS_SINCE_WEIGHT,
};
use linkedup_schema::ot::TextOperation;
use linkedup_server::linkedup::notes::{fns, MAX_OPS_BEHIND};
use query_engine::diff::apply;
use query_engine::engine::Engine;
use query_engine::error::FunctionError;
use query_engine::identity::Identity;
use query_engine::json::{from_value, to_value};
use query_engine::obj;
use query_engine::subscriptions::{QueryUpdate, SubscriptionManager};
use query_engine::value::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod live_common;
use live_common::*;

impl Env {
    async fn count(&self, table: &'static str) -> usize {
        let v = self
            .engine
            .read(move |ctx| {
                Ok(Value::Array(
                    ctx.query(table, "by_creation_time").collect(8_000)?,
                ))
            })
            .await
            .unwrap();
        v.as_array().unwrap().len()
    }

    /// `who` replaces the whole note `times` over with `chars` four-byte chars (~400 KB of op
    /// weight each at the note limit), starting from an empty note.
    async fn paste(&self, meeting: &str, who: &Identity, times: i64, chars: u64) {
        let page = "👍".repeat(chars as usize);
        let mut len = 0;
        for v in 0..times {
            let op = TextOperation::new().delete(len).insert(&page);
            self.m(
                fns::APPLY_OPERATION,
                apply_args(meeting, v, &op, "paster", v + 1),
                who,
            )
            .await
            .unwrap();
            len = chars;
        }
    }

    async fn note(&self, meeting: &str, who: &Identity) -> (String, i64) {
        let n = self
            .q(fns::GET, obj! { "meetingId" => meeting }, who)
            .await
            .unwrap();
        (
            n.get_path("content").unwrap().as_str().unwrap().to_string(),
            n.get_path("version").unwrap().as_i64().unwrap(),
        )
    }
}

fn apply_args(meeting: &str, base: i64, op: &TextOperation, client: &str, seq: i64) -> Value {
    obj! {
        "meetingId" => meeting,
        "baseVersion" => base,
        "op" => to_value(op).unwrap(),
        "clientId" => client,
        "clientSeq" => seq,
    }
}

fn expect_code(r: Result<Value, FunctionError>, code: &str) -> FunctionError {
    match r {
        Ok(v) => panic!("expected {code}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            e
        }
    }
}

fn int(v: &Value, path: &str) -> i64 {
    v.get_path(path).and_then(Value::as_i64).unwrap()
}

const ALPHABET: &[char] = &[
    'a',
    'b',
    ' ',
    '👍',
    '\u{1F3FD}',
    'e',
    '\u{301}',
    '会',
    '𠀋',
    '\n',
];

fn random_text(rng: &mut StdRng, max_chars: usize) -> String {
    let n = rng.gen_range(0..=max_chars);
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
        .collect()
}

/// A random edit of a few components against a document of `len` chars.
fn random_op(rng: &mut StdRng, len: u64) -> TextOperation {
    let mut left = len;
    let mut op = TextOperation::new();
    for _ in 0..rng.gen_range(1..4) {
        let n = rng.gen_range(0..=left.min(6));
        left -= n;
        op = match rng.gen_range(0..3) {
            0 => op.retain(n),
            1 => op.delete(n),
            _ => op.retain(n).insert(&random_text(rng, 4)),
        };
    }
    op.retain(left)
}

/// One simulated editor session.
struct Editor {
    who: Identity,
    client_id: String,
    editor: NoteEditor,
    /// Returned by `apply_local`/`server_ack`, not sent yet.
    to_send: Option<OutgoingOp>,
    /// Sent; its `(clientSeq, version)` as the server answered.
    answered: Option<(u64, i64)>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    sequence: i64,
    op: TextOperation,
    client_id: String,
    client_seq: i64,
}

impl Editor {
    /// Sends the pending op (if any); returns the server's version for it.
    async fn send(&mut self, engine: &Engine, meeting: &str) {
        let Some(out) = self.to_send.take() else {
            return;
        };
        let r = engine
            .mutation(
                fns::APPLY_OPERATION,
                apply_args(
                    meeting,
                    out.base_version as i64,
                    &out.op,
                    &self.client_id,
                    out.client_seq as i64,
                ),
                Some(&self.who),
            )
            .await
            .unwrap_or_else(|e| panic!("{} apply failed: {e}", self.client_id))
            .value;
        self.answered = Some((out.client_seq, int(&r, "version")));
    }

    /// Retransmits the op in flight (as after a lost reply); the server must answer with
    /// the version it gave the first time and apply nothing.
    async fn retransmit(&mut self, engine: &Engine, meeting: &str) {
        let (Some(out), Some((seq, version))) = (self.editor.in_flight(), self.answered) else {
            return;
        };
        assert_eq!(out.client_seq, seq);
        let r = engine
            .mutation(
                fns::APPLY_OPERATION,
                apply_args(
                    meeting,
                    out.base_version as i64,
                    &out.op,
                    &self.client_id,
                    out.client_seq as i64,
                ),
                Some(&self.who),
            )
            .await
            .unwrap()
            .value;
        assert_eq!(
            int(&r, "version"),
            version,
            "a retransmission is not applied twice"
        );
    }

    /// Catches up through `notes.opsSince`: remote ops are applied, our own is the ack.
    async fn sync(&mut self, engine: &Engine, meeting: &str) {
        loop {
            let ops = engine
                .query(
                    fns::OPS_SINCE,
                    obj! {
                        "meetingId" => meeting,
                        "version" => self.editor.version() as i64,
                        "limit" => 50i64,
                    },
                    Some(&self.who),
                )
                .await
                .unwrap()
                .value;
            let ops: Vec<Entry> = from_value(&ops).unwrap();
            if ops.is_empty() {
                return;
            }
            for e in ops {
                if e.client_id == self.client_id {
                    let (seq, version) = self.answered.take().expect("our op was answered");
                    assert_eq!((e.client_seq as u64, e.sequence), (seq, version));
                    if let Some(next) = self.editor.server_ack(e.sequence as u64).unwrap() {
                        self.to_send = Some(next);
                    }
                } else {
                    self.editor
                        .apply_remote(e.op, e.sequence as u64)
                        .unwrap_or_else(|err| panic!("{}: {err}", self.client_id));
                }
            }
        }
    }

    fn idle(&self) -> bool {
        !self.editor.has_pending() && self.to_send.is_none()
    }
}

async fn converge(seed: u64, n_editors: usize, rounds: usize) {
    let env = open();
    let mut rng = StdRng::seed_from_u64(seed);
    let people: Vec<Identity> = (0..n_editors).map(|i| ident(&format!("e{i}"))).collect();
    let others: Vec<&Identity> = people[1..].iter().collect();
    // Editor 0 is the host, which holds every participant right.
    let meeting = env.meeting(&people[0], &others, true).await;
    let mgr = SubscriptionManager::new(env.engine.clone(), Default::default());
    let watcher = mgr.connect(Some(people[1].clone())).await;
    watcher
        .subscribe(1, fns::GET, obj! { "meetingId" => meeting.as_str() })
        .await
        .unwrap();

    let mut editors: Vec<Editor> = people
        .iter()
        .enumerate()
        .map(|(i, who)| Editor {
            who: who.clone(),
            client_id: format!("client-{i}-{seed}"),
            editor: NoteEditor::new(String::new(), 0),
            to_send: None,
            answered: None,
        })
        .collect();

    for _ in 0..rounds {
        // Local edits.
        for e in editors.iter_mut() {
            for _ in 0..rng.gen_range(0..3) {
                let op = random_op(&mut rng, e.editor.text().chars().count() as u64);
                if let Some(out) = e.editor.apply_local(op).unwrap() {
                    e.to_send = Some(out);
                }
            }
        }
        // A random subset sends at the same time, racing in the committer.
        let senders: Vec<bool> = editors.iter().map(|_| rng.gen_bool(0.6)).collect();
        let retransmit: Vec<bool> = editors.iter().map(|_| rng.gen_bool(0.1)).collect();
        let syncers: Vec<bool> = editors.iter().map(|_| rng.gen_bool(0.5)).collect();
        let (senders, retransmit, syncers) = (&senders, &retransmit, &syncers);
        let engine = &env.engine;
        let meeting = meeting.as_str();
        futures::future::join_all(editors.iter_mut().enumerate().map(|(i, e)| async move {
            if senders[i] {
                e.send(engine, meeting).await;
            }
            if retransmit[i] {
                e.retransmit(engine, meeting).await;
            }
            if syncers[i] {
                e.sync(engine, meeting).await;
            }
        }))
        .await;
    }
    // Drain: send what is pending, learn everything, until every editor is idle.
    for _ in 0..100 {
        if editors.iter().all(Editor::idle) {
            break;
        }
        for e in editors.iter_mut() {
            e.send(&env.engine, &meeting).await;
            e.sync(&env.engine, &meeting).await;
        }
    }
    for e in editors.iter_mut() {
        e.sync(&env.engine, &meeting).await;
        assert!(e.idle(), "{} still has pending edits", e.client_id);
    }

    let (content, version) = env.note(&meeting, &people[0]).await;
    assert!(version > 0);
    for e in &editors {
        assert_eq!(e.editor.text(), content, "{} diverged", e.client_id);
        assert_eq!(e.editor.version() as i64, version);
    }
    // The op log replays to the materialised note.
    let mut replay = String::new();
    let mut at = 0;
    while at < version {
        let ops = env
            .q(
                fns::OPS_SINCE,
                obj! { "meetingId" => meeting.as_str(), "version" => at },
                &people[0],
            )
            .await
            .unwrap();
        for e in from_value::<Vec<Entry>>(&ops).unwrap() {
            assert_eq!(e.sequence, at + 1);
            replay = e.op.apply(&replay).unwrap();
            at = e.sequence;
        }
    }
    assert_eq!(replay, content);
    // Concurrent edits really were transformed: many ops were based on an older version.
    let rebased = env
        .engine
        .read(|ctx| {
            let ops = ctx.query("noteOps", "by_creation_time").collect(8_000)?;
            let n = ops
                .iter()
                .filter(|o| int(o, "baseVersion") < int(o, "sequence") - 1)
                .count();
            Ok(Value::from(n as i64))
        })
        .await
        .unwrap();
    println!(
        "{n_editors} editors: {version} versions, {} rebased, {} chars",
        rebased.as_i64().unwrap(),
        content.chars().count()
    );
    assert!(rebased.as_i64().unwrap() > 0);
    assert!(!content.is_ascii(), "the edits exercised non-ASCII text");
    // A subscriber of notes.get sees the same note.
    let ts = env.engine.snapshot().ts;
    watcher.sync_to(ts).await;
    let mut seen = Value::Null;
    let mut seen_ts = 0;
    while seen_ts < ts {
        let t = tokio::time::timeout(Duration::from_secs(10), watcher.next_transition())
            .await
            .unwrap()
            .unwrap();
        for u in &t.updates {
            if let QueryUpdate::Updated { diff, .. } = u {
                seen = apply(&seen, diff).unwrap();
            }
        }
        seen_ts = t.end_ts;
    }
    assert_eq!(seen.get_path("content").unwrap().as_str().unwrap(), content);
    assert_eq!(int(&seen, "version"), version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn editors_converge_on_the_server_text() {
    for (seed, editors) in [(1, 3), (2, 4), (3, 5)] {
        converge(seed, editors, 60).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ops_on_one_base_are_transformed_with_the_committed_insert_left() {
    let env = open();
    let (a, b) = (ident("a"), ident("b"));
    let meeting = env.meeting(&a, &[&b], true).await;
    let ins = |s: &str| TextOperation::new().insert(s);
    let r1 = env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 0, &ins("A"), "ca", 1),
            &a,
        )
        .await
        .unwrap();
    assert_eq!(int(&r1, "version"), 1);
    let r2 = env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 0, &ins("B"), "cb", 1),
            &b,
        )
        .await
        .unwrap();
    assert_eq!(int(&r2, "version"), 2);
    let op: TextOperation = from_value(r2.get_path("op").unwrap()).unwrap();
    assert_eq!(op, TextOperation::new().retain(1).insert("B"));
    assert_eq!(env.note(&meeting, &a).await, ("AB".to_string(), 2));
    let n = env
        .q(fns::GET, obj! { "meetingId" => meeting.as_str() }, &b)
        .await
        .unwrap();
    assert!(int(&n, "lastUpdated") > 0);
    assert_eq!(
        n.get_path("lastEditorId").unwrap().as_str().unwrap(),
        env.user(&b).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_op_is_applied_once() {
    let env = open();
    let (a, b) = (ident("a"), ident("b"));
    let meeting = env.meeting(&a, &[&b], true).await;
    let op = TextOperation::new().insert("héllo 👋🏽");
    let first = env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 0, &op, "c1", 1),
            &a,
        )
        .await
        .unwrap();
    // Someone else edits; then the first op is retransmitted rebased (as NoteEditor does
    // after a reconnect), and again with its original base.
    env.m(
        fns::APPLY_OPERATION,
        apply_args(
            &meeting,
            1,
            &TextOperation::new().retain(8).insert("!"),
            "c2",
            1,
        ),
        &b,
    )
    .await
    .unwrap();
    for base in [2, 0] {
        let rebased = if base == 2 {
            TextOperation::new().retain(9).insert("x")
        } else {
            op.clone()
        };
        let again = env
            .m(
                fns::APPLY_OPERATION,
                apply_args(&meeting, base, &rebased, "c1", 1),
                &a,
            )
            .await
            .unwrap();
        assert_eq!(again, first);
    }
    // Concurrent duplicates of a new op: one applies, all get its result.
    let op3 = TextOperation::new().retain(9).insert("?");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (engine, args, who) = (
            env.engine.clone(),
            apply_args(&meeting, 2, &op3, "c1", 2),
            a.clone(),
        );
        tasks.push(tokio::spawn(async move {
            engine
                .mutation(fns::APPLY_OPERATION, args, Some(&who))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(int(&t.await.unwrap().unwrap().value, "version"), 3);
    }
    assert_eq!(env.note(&meeting, &a).await, ("héllo 👋🏽!?".to_string(), 3));
    assert_eq!(env.count("noteOps").await, 3);
}

/// `opsSince` shows every op's client id and sequence; another participant who sends the next
/// (clientId, clientSeq) of someone's editor is refused, so the editor's own op still applies
/// instead of being answered as a retransmission of the forged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_belongs_to_the_editor_who_first_used_it() {
    let env = open();
    let (a, b) = (ident("a"), ident("b"));
    let meeting = env.meeting(&a, &[&b], true).await;
    env.m(
        fns::APPLY_OPERATION,
        apply_args(&meeting, 0, &TextOperation::new().insert("plan"), "ca", 1),
        &a,
    )
    .await
    .unwrap();
    let forged = TextOperation::new().retain(4).insert(" (forged)");
    for seq in [2, 1] {
        let e = expect_code(
            env.m(
                fns::APPLY_OPERATION,
                apply_args(&meeting, 1, &forged, "ca", seq),
                &b,
            )
            .await,
            "VALIDATION_ERROR",
        );
        assert!(e.message.contains("clientId"), "{e}");
    }
    let real = env
        .m(
            fns::APPLY_OPERATION,
            apply_args(
                &meeting,
                1,
                &TextOperation::new().retain(4).insert("!"),
                "ca",
                2,
            ),
            &a,
        )
        .await
        .unwrap();
    assert_eq!(int(&real, "version"), 2);
    assert_eq!(env.note(&meeting, &a).await, ("plan!".to_string(), 2));
    // b's own client id is b's.
    env.m(
        fns::APPLY_OPERATION,
        apply_args(
            &meeting,
            2,
            &TextOperation::new().retain(5).insert("?"),
            "cb",
            1,
        ),
        &b,
    )
    .await
    .unwrap();
    assert_eq!(env.note(&meeting, &a).await, ("plan!?".to_string(), 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ops_and_outsiders_are_refused() {
    let env = open();
    let (a, b, outsider) = (ident("a"), ident("b"), ident("outsider"));
    env.user(&outsider).await;
    let meeting = env.meeting(&a, &[&b], true).await;
    let hello = TextOperation::new().insert("hello");
    env.m(
        fns::APPLY_OPERATION,
        apply_args(&meeting, 0, &hello, "c", 1),
        &b,
    )
    .await
    .unwrap();

    let refuse = |base: i64, op: Value, seq: i64| {
        obj! {
            "meetingId" => meeting.as_str(),
            "baseVersion" => base,
            "op" => op,
            "clientId" => "c",
            "clientSeq" => seq,
        }
    };
    let path = |e: &FunctionError| {
        e.data
            .get_path("path")
            .and_then(Value::as_str)
            .map(String::from)
    };
    // Built for a 3-char document, the note at version 1 has 5.
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(
                &meeting,
                1,
                &TextOperation::new().retain(3).insert("x"),
                "c",
                2,
            ),
            &b,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(path(&e).as_deref(), Some("op"), "{e}");
    // Does not fit the document at its base either (transform checks lengths).
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 0, &TextOperation::new().retain(2), "c", 2),
            &b,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(path(&e).as_deref(), Some("op"), "{e}");
    // A negative count.
    expect_code(
        env.m(
            fns::APPLY_OPERATION,
            refuse(1, Value::Array(vec![obj! { "retain" => -1i64 }]), 2),
            &b,
        )
        .await,
        "VALIDATION_ERROR",
    );
    // Too many components.
    let many: Vec<Value> = (0..1_100)
        .flat_map(|_| [obj! { "insert" => "x" }, obj! { "retain" => 1i64 }])
        .collect();
    let e = expect_code(
        env.m(fns::APPLY_OPERATION, refuse(1, Value::Array(many), 2), &b)
            .await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.contains("components"), "{e}");
    // The note would exceed 100,000 chars.
    let big = TextOperation::new().retain(5).insert(&"é".repeat(60_000));
    env.m(
        fns::APPLY_OPERATION,
        apply_args(&meeting, 1, &big, "c", 3),
        &b,
    )
    .await
    .unwrap();
    let big2 = TextOperation::new()
        .retain(60_005)
        .insert(&"ü".repeat(50_000));
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 2, &big2, "c", 4),
            &b,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.contains("limit"), "{e}");
    // A base from the future, a bad client id.
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 9, &TextOperation::new().retain(60_005), "c", 5),
            &b,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(path(&e).as_deref(), Some("baseVersion"));
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 2, &TextOperation::new().retain(60_005), "", 5),
            &b,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(path(&e).as_deref(), Some("clientId"));

    // Outsiders can neither edit nor read, nor tell the meeting exists.
    let m = || obj! { "meetingId" => meeting.as_str() };
    expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 2, &TextOperation::new().retain(60_005), "o", 1),
            &outsider,
        )
        .await,
        "NOT_FOUND",
    );
    expect_code(env.q(fns::GET, m(), &outsider).await, "NOT_FOUND");
    expect_code(
        env.q(
            fns::OPS_SINCE,
            obj! { "meetingId" => meeting.as_str(), "version" => 0i64 },
            &outsider,
        )
        .await,
        "NOT_FOUND",
    );
    expect_code(
        env.engine.query(fns::GET, m(), None).await.map(|r| r.value),
        "UNAUTHORIZED",
    );
    // Nothing refused was applied.
    assert_eq!(env.note(&meeting, &a).await.1, 2);
    assert_eq!(env.count("noteOps").await, 2);
}

/// Whole-note pastes weigh ~400 KB each: `opsSince` stops before the op that would take its
/// result past `MAX_OPS_SINCE_WEIGHT` (500 of them would be ~200 MB), and a reader that
/// re-anchors after the last op it got gets the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_since_stops_at_its_weight_bound() {
    let env = open();
    let a = ident("a");
    let meeting = env.meeting(&a, &[], true).await;
    env.paste(&meeting, &a, 8, MAX_NOTE_CHARS).await;
    let since = |version: i64| {
        env.q(
            fns::OPS_SINCE,
            obj! { "meetingId" => meeting.as_str(), "version" => version },
            &a,
        )
    };
    let sequences = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|o| int(o, "sequence"))
            .collect()
    };
    let first = since(0).await.unwrap();
    let got = sequences(&first);
    let weight: u64 = from_value::<Vec<NoteOpEntry>>(&first)
        .unwrap()
        .iter()
        .map(|o| op_weight(&o.op))
        .sum();
    assert!(
        got.len() < 8 && weight <= MAX_OPS_SINCE_WEIGHT,
        "{got:?} {weight}"
    );
    assert!(window_may_be_cut(weight));
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>());
    let last = *got.last().unwrap();
    let rest = sequences(&since(last).await.unwrap());
    assert_eq!(rest, (last + 1..=8).collect::<Vec<_>>());
    // One op is always returned, however heavy.
    assert_eq!(sequences(&since(7).await.unwrap()), [8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_note_and_old_bases_resync() {
    let env = open();
    let (a, b) = (ident("a"), ident("b"));
    let meeting = env.meeting(&a, &[&b], true).await;
    for i in 0..6 {
        let op = TextOperation::new().retain(i).insert("x");
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, i as i64, &op, "c", i as i64 + 1),
            &a,
        )
        .await
        .unwrap();
    }
    let before = env.note(&meeting, &a).await;
    assert_eq!(before, ("xxxxxx".to_string(), 6));

    // The default retention (90 days) keeps everything.
    let r = env
        .engine
        .mutation(fns::COMPACT, obj! { "meetingId" => meeting.as_str() }, None)
        .await
        .unwrap()
        .value;
    assert_eq!(int(&r, "deleted"), 0);
    // Retain nothing older than now: every op goes, the note stays.
    let r = env
        .engine
        .mutation(
            fns::COMPACT,
            obj! { "meetingId" => meeting.as_str(), "retainMs" => 0i64 },
            None,
        )
        .await
        .unwrap()
        .value;
    assert_eq!((int(&r, "deleted"), int(&r, "minRetainedVersion")), (6, 6));
    assert_eq!(env.count("noteOps").await, 0);
    assert_eq!(env.note(&meeting, &b).await, before);

    // An edit or a catch-up from before the compaction must resync.
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(
                &meeting,
                3,
                &TextOperation::new().retain(3).insert("y"),
                "d",
                1,
            ),
            &b,
        )
        .await,
        "CONFLICT",
    );
    assert_eq!(e.data.get_path("resync"), Some(&Value::Bool(true)));
    assert_eq!(int(&e.data, "minRetainedVersion"), 6);
    assert_eq!(int(&e.data, "currentVersion"), 6);
    expect_code(
        env.q(
            fns::OPS_SINCE,
            obj! { "meetingId" => meeting.as_str(), "version" => 2i64 },
            &b,
        )
        .await,
        "CONFLICT",
    );
    // The editor resyncs and carries on.
    let mut ed = NoteEditor::new("xxx".into(), 3);
    let (text, version) = env.note(&meeting, &b).await;
    ed.resync(text, version as u64);
    let out = ed
        .apply_local(TextOperation::new().retain(6).insert("y"))
        .unwrap()
        .unwrap();
    let r = env
        .m(
            fns::APPLY_OPERATION,
            apply_args(
                &meeting,
                out.base_version as i64,
                &out.op,
                "d",
                out.client_seq as i64,
            ),
            &b,
        )
        .await
        .unwrap();
    assert_eq!(int(&r, "version"), 7);
    let ops = env
        .q(
            fns::OPS_SINCE,
            obj! { "meetingId" => meeting.as_str(), "version" => 6i64 },
            &b,
        )
        .await
        .unwrap();
    assert_eq!(ops.as_array().unwrap().len(), 1);
    assert_eq!(env.note(&meeting, &a).await, ("xxxxxxy".to_string(), 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_too_far_behind_is_refused_without_resync() {
    let env = open();
    let (a, b) = (ident("a"), ident("b"));
    let meeting = env.meeting(&a, &[&b], true).await;
    let n = MAX_OPS_BEHIND + 1;
    for i in 0..n {
        let op = TextOperation::new().retain(i as u64).insert("z");
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, i, &op, "c", i + 1),
            &a,
        )
        .await
        .unwrap();
    }
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 0, &TextOperation::new().insert("late"), "d", 1),
            &b,
        )
        .await,
        "CONFLICT",
    );
    assert_eq!(
        e.data.get_path("reason").and_then(Value::as_str),
        Some("tooFarBehind")
    );
    // The editor catches up and sends the edit again: nothing to resync.
    assert_eq!(e.data.get_path("resync"), Some(&Value::Bool(false)));
    // Exactly the limit behind is still transformed.
    let r = env
        .m(
            fns::APPLY_OPERATION,
            apply_args(
                &meeting,
                1,
                &TextOperation::new().retain(1).insert("ok"),
                "d",
                1,
            ),
            &b,
        )
        .await
        .unwrap();
    assert_eq!(int(&r, "version"), n + 1);
    // Every later committed insert at the same place stays left of "ok".
    let (content, _) = env.note(&meeting, &a).await;
    assert_eq!(content, format!("{}ok", "z".repeat(n as usize)));
}

/// An edit based before many whole-note pastes: transforming it would read past the read
/// limit (45 × 400 KB); it is refused as too far behind once the ops read pass the transform
/// budget, so its editor can catch up and send it again, instead of failing on the read limit
/// (which the SDK could only answer by dropping the edit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_behind_heavy_ops_is_refused_before_the_read_limit() {
    let env = open();
    let (a, b) = (ident("a"), ident("b"));
    let meeting = env.meeting(&a, &[&b], true).await;
    // Room for one more char after the last paste: a one-char edit fits the note whatever the
    // transform does (a longer one is refused as too long before any op is read).
    let chars = MAX_NOTE_CHARS - 1;
    env.paste(&meeting, &a, 45, chars).await;
    let e = expect_code(
        env.m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 0, &TextOperation::new().insert("!"), "d", 1),
            &b,
        )
        .await,
        "CONFLICT",
    );
    assert_eq!(
        e.data.get_path("reason").and_then(Value::as_str),
        Some("tooFarBehind"),
        "{e}"
    );
    assert_eq!(int(&e.data, "currentVersion"), 45);
    // A few pastes behind is transformed as before.
    let op = TextOperation::new().retain(chars).insert("!");
    let r = env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&meeting, 42, &op, "d", 1),
            &b,
        )
        .await
        .unwrap();
    assert_eq!(int(&r, "version"), 46);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_all_finds_the_meetings_with_old_ops() {
    let env = open_with(true);
    let (a, b) = (ident("a"), ident("b"));
    let mut meetings = Vec::new();
    for _ in 0..3 {
        let m = env.meeting(&a, &[&b], true).await;
        for i in 0..4 {
            let op = TextOperation::new().retain(i).insert("n");
            env.m(
                fns::APPLY_OPERATION,
                apply_args(&m, i as i64, &op, "c", i as i64 + 1),
                &b,
            )
            .await
            .unwrap();
        }
        meetings.push(m);
    }
    // A meeting without notes is skipped.
    env.meeting(&a, &[&b], true).await;
    let r = env
        .engine
        .mutation(fns::COMPACT_ALL, obj! { "retainMs" => 0i64 }, None)
        .await
        .unwrap()
        .value;
    assert_eq!(int(&r, "scheduled"), 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.count("noteOps").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "compaction jobs did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for m in &meetings {
        assert_eq!(env.note(m, &a).await, ("nnnn".to_string(), 4));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_expires_a_year_after_its_last_edit_once_its_meeting_is_over() {
    let env = open_with(true);
    let (a, b) = (ident("a"), ident("b"));
    let ended = env.meeting(&a, &[&b], true).await;
    let active = env.meeting(&a, &[&b], true).await;
    for m in [&ended, &active] {
        for i in 0..3 {
            let op = TextOperation::new().retain(i).insert("n");
            env.m(
                fns::APPLY_OPERATION,
                apply_args(m, i as i64, &op, "c", i as i64 + 1),
                &b,
            )
            .await
            .unwrap();
        }
    }
    env.m("meetings.end", obj! { "meetingId" => ended.as_str() }, &a)
        .await
        .unwrap();
    let notes = || async { env.count("meetingNotes").await };
    assert_eq!(notes().await, 2);

    // Within a year of its last edit the note stays, even with every op gone.
    let r = env
        .engine
        .mutation(
            fns::COMPACT,
            obj! { "meetingId" => ended.as_str(), "retainMs" => 0i64 },
            None,
        )
        .await
        .unwrap()
        .value;
    assert_eq!(int(&r, "deleted"), 3);
    assert_eq!(
        r.get_path("noteDeleted").and_then(Value::as_bool),
        Some(false)
    );
    assert_eq!(env.note(&ended, &a).await, ("nnn".to_string(), 3));

    // Past it (here: edited before now), the daily walk deletes the ended meeting's note and
    // leaves the active meeting's, whose ops go as usual.
    let r = env
        .engine
        .mutation(
            fns::COMPACT_ALL,
            obj! { "retainMs" => 0i64, "retainNoteMs" => 0i64 },
            None,
        )
        .await
        .unwrap()
        .value;
    assert_eq!(int(&r, "scheduled"), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while notes().await > 1 || env.count("noteOps").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention jobs did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.note(&active, &a).await, ("nnn".to_string(), 3));
    let (content, version) = env.note(&ended, &a).await;
    assert_eq!(
        (content.as_str(), version),
        ("", 0),
        "the ended meeting has no note left"
    );
    let audited = env
        .engine
        .read(|ctx| {
            Ok(Value::Array(
                ctx.query("auditLogs", "by_creation_time").collect(1_000)?,
            ))
        })
        .await
        .unwrap();
    let purged: Vec<&Value> = audited
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e.get_path("action").and_then(Value::as_str) == Some("retention.purged")
                && e.get_path("resourceId").and_then(Value::as_str) == Some("meetingNotes")
        })
        .collect();
    assert_eq!(purged.len(), 1);
}
