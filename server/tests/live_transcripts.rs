//! Transcript ingestion, the resumable stream and segment aggregation against the real engine
//! (in-process, LinkedUp schema and functions): gap-free sequences under concurrent producers
//! with no CONFLICT, idempotent retries, the error taxonomy, a subscriber that disconnects and
//! resumes receiving every chunk exactly once, per-meeting invalidation, and aggregation.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use linkedup_server::linkedup::transcripts::{
    fns, TranscriptChunk, AGGREGATE_BATCH_CHUNKS, SEGMENT_MAX_SPAN_MS,
};
use query_engine::diff::apply;
use query_engine::error::FunctionError;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::subscriptions::{ClientSession, QueryUpdate, SubscriptionManager};
use query_engine::value::Value;

mod live_common;
use live_common::*;

impl Env {
    async fn internal(&self, name: &str, args: Value) -> Value {
        self.engine.mutation(name, args, None).await.unwrap().value
    }

    /// Commits something no test subscription reads; returns its timestamp.
    async fn settle(&self) -> u64 {
        let who = ident("settle");
        self.engine
            .mutation("users.ensure", obj! {}, Some(&who))
            .await
            .unwrap()
            .ts
    }

    async fn all(&self, table: &'static str) -> Vec<Value> {
        let v = self
            .engine
            .read(move |ctx| {
                Ok(Value::Array(
                    ctx.query(table, "by_creation_time").collect(8_000)?,
                ))
            })
            .await
            .unwrap();
        v.as_array().unwrap().to_vec()
    }
}

fn chunk(chunk_id: &str, speaker: &str, start_ms: i64) -> Value {
    obj! {
        "chunkId" => chunk_id,
        "speakerId" => speaker,
        "text" => format!("words of {chunk_id} 👍🏽"),
        "confidence" => 0.9,
        "startMs" => start_ms,
        "endMs" => start_ms + 900,
    }
}

fn batch(meeting: &str, chunks: Vec<Value>) -> Value {
    obj! { "meetingId" => meeting, "chunks" => chunks }
}

fn ints(v: &Value, path: &str) -> Vec<i64> {
    v.get_path(path)
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn int(v: &Value, path: &str) -> i64 {
    v.get_path(path).and_then(Value::as_i64).unwrap()
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

/// Every stored sequence of a meeting, read through the stream in pages.
async fn stored_sequences(env: &Env, meeting: &str, who: &Identity) -> Vec<i64> {
    let mut out = Vec::new();
    loop {
        let from = out.last().copied().unwrap_or(0);
        let page = env
            .q(
                fns::STREAM,
                obj! { "meetingId" => meeting, "fromSequence" => from, "limit" => 200i64 },
                who,
            )
            .await
            .unwrap();
        let page = page.as_array().unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page.iter().map(|c| int(c, "sequence")));
    }
}

/// Producers send `batches` batches each of 1..=50 chunks, all at once. Returns every sequence
/// the calls returned, and the number of chunks sent.
async fn burst(
    env: &Env,
    meeting: &str,
    producers: &[Identity],
    batches: usize,
    tag: &str,
) -> (Vec<i64>, usize) {
    let mut tasks = Vec::new();
    let mut sent = 0;
    for (p, who) in producers.iter().enumerate() {
        for b in 0..batches {
            let n = 1 + (p * 7 + b * 13) % 50;
            sent += n;
            let chunks = (0..n)
                .map(|i| {
                    chunk(
                        &format!("{tag}-{p}-{b}-{i}"),
                        &who.subject,
                        (b * 1000) as i64,
                    )
                })
                .collect();
            let engine = env.engine.clone();
            let who = who.clone();
            let args = batch(meeting, chunks);
            tasks.push(tokio::spawn(async move {
                engine.mutation(fns::INGEST_BATCH, args, Some(&who)).await
            }));
        }
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let r = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("ingest failed: {e}"));
        seqs.extend(ints(&r.value, "sequences"));
    }
    (seqs, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_get_gap_free_sequences_without_conflict_errors() {
    let env = open();
    let host = ident("host");
    let others: Vec<Identity> = (0..4).map(|i| ident(&format!("p{i}"))).collect();
    let refs: Vec<&Identity> = others.iter().collect();
    let meeting = env.meeting(&host, &refs, true).await;
    let mut producers = vec![host.clone()];
    producers.extend(others.iter().cloned());

    let mut all = Vec::new();
    let mut total = 0;
    for round in 0..3 {
        let (seqs, sent) = burst(&env, &meeting, &producers, 8, &format!("r{round}")).await;
        all.extend(seqs);
        total += sent;
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=total as i64).collect::<Vec<_>>(),
        "returned sequences are 1..N"
    );
    assert_eq!(
        stored_sequences(&env, &meeting, &host).await,
        (1..=total as i64).collect::<Vec<_>>(),
        "stored sequences are 1..N"
    );
    // The bursts did contend (the committer re-executed), yet no caller saw CONFLICT.
    let m = env.engine.metrics();
    println!(
        "{total} chunks in {} batches; committer conflicts {} re-executions {}",
        3 * 8 * producers.len(),
        m.conflicts.load(Ordering::Relaxed),
        m.reexecutions.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_meetings_ingest_concurrently_with_independent_sequences() {
    let env = open();
    let (a_host, a_p) = (ident("a-host"), ident("a-p"));
    let (b_host, b_p) = (ident("b-host"), ident("b-p"));
    let a = env.meeting(&a_host, &[&a_p], true).await;
    let b = env.meeting(&b_host, &[&b_p], true).await;
    let a_producers = [a_host.clone(), a_p.clone()];
    let b_producers = [b_host.clone(), b_p.clone()];
    let ((mut sa, na), (mut sb, nb)) = tokio::join!(
        burst(&env, &a, &a_producers, 10, "a"),
        burst(&env, &b, &b_producers, 10, "b"),
    );
    sa.sort_unstable();
    sb.sort_unstable();
    assert_eq!(sa, (1..=na as i64).collect::<Vec<_>>());
    assert_eq!(sb, (1..=nb as i64).collect::<Vec<_>>());
    assert_eq!(stored_sequences(&env, &a, &a_host).await.len(), na);
    assert_eq!(stored_sequences(&env, &b, &b_host).await.len(), nb);
    // A participant of one meeting cannot read the other's stream (nor tell it exists).
    expect_code(
        env.q(fns::STREAM, obj! { "meetingId" => b.as_str() }, &a_p)
            .await,
        "NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_chunk_ids_store_nothing_twice() {
    let env = open();
    let (host, p) = (ident("host"), ident("p"));
    let meeting = env.meeting(&host, &[&p], true).await;
    let first: Vec<Value> = (0..10)
        .map(|i| chunk(&format!("c{i}"), "p", i * 1000))
        .collect();
    let r1 = env
        .m(fns::INGEST_BATCH, batch(&meeting, first.clone()), &p)
        .await
        .unwrap();
    assert_eq!(ints(&r1, "sequences"), (1..=10).collect::<Vec<_>>());
    assert_eq!(int(&r1, "duplicates"), 0);

    // The same batch again: the original sequences, nothing stored.
    let r2 = env
        .m(fns::INGEST_BATCH, batch(&meeting, first.clone()), &p)
        .await
        .unwrap();
    assert_eq!(ints(&r2, "sequences"), ints(&r1, "sequences"));
    assert_eq!(int(&r2, "duplicates"), 10);

    // Half retried, half new, and a chunk id repeated inside one batch.
    let mut mixed: Vec<Value> = first[5..].to_vec();
    mixed.extend((10..15).map(|i| chunk(&format!("c{i}"), "p", i * 1000)));
    mixed.push(chunk("c12", "p", 0));
    let r3 = env
        .m(fns::INGEST_BATCH, batch(&meeting, mixed), &p)
        .await
        .unwrap();
    assert_eq!(
        ints(&r3, "sequences"),
        vec![6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 13]
    );
    assert_eq!(int(&r3, "duplicates"), 6);

    // Single-chunk retries, including several at once.
    let single = |id: &str| {
        let mut c = chunk(id, "host", 20_000);
        if let Some(o) = c.as_object_mut() {
            o.insert("meetingId".into(), meeting.as_str().into());
        }
        c
    };
    let r4 = env.m(fns::INGEST_CHUNK, single("s1"), &host).await.unwrap();
    assert_eq!(r4, obj! { "sequence" => 16i64, "duplicate" => false });
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (engine, args, who) = (env.engine.clone(), single("s1"), host.clone());
        tasks.push(tokio::spawn(async move {
            engine.mutation(fns::INGEST_CHUNK, args, Some(&who)).await
        }));
    }
    for t in tasks {
        let v = t.await.unwrap().unwrap().value;
        assert_eq!(v, obj! { "sequence" => 16i64, "duplicate" => true });
    }
    // Concurrent retries of one new batch store it once.
    let fresh: Vec<Value> = (0..20).map(|i| chunk(&format!("f{i}"), "p", i)).collect();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (engine, args, who) = (
            env.engine.clone(),
            batch(&meeting, fresh.clone()),
            p.clone(),
        );
        tasks.push(tokio::spawn(async move {
            engine.mutation(fns::INGEST_BATCH, args, Some(&who)).await
        }));
    }
    let mut results = BTreeSet::new();
    for t in tasks {
        results.insert(ints(&t.await.unwrap().unwrap().value, "sequences"));
    }
    assert_eq!(results.len(), 1, "every retry got the same sequences");
    assert_eq!(
        results.into_iter().next().unwrap(),
        (17..=36).collect::<Vec<_>>()
    );
    assert_eq!(env.all("transcripts").await.len(), 36);
    assert_eq!(
        stored_sequences(&env, &meeting, &p).await,
        (1..=36).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refusals_use_the_error_taxonomy() {
    let env = open();
    let (host, p, outsider) = (ident("host"), ident("p"), ident("outsider"));
    env.user(&outsider).await;
    let meeting = env.meeting(&host, &[&p], false).await;
    let ok = || batch(&meeting, vec![chunk("x", "p", 0)]);

    // Scheduled, not started yet.
    expect_code(
        env.m(fns::INGEST_BATCH, ok(), &p).await,
        "MEETING_NOT_ACTIVE",
    );
    env.m(
        "meetings.start",
        obj! { "meetingId" => meeting.as_str() },
        &host,
    )
    .await
    .unwrap();
    expect_code(env.m(fns::INGEST_BATCH, ok(), &outsider).await, "NOT_FOUND");
    expect_code(
        env.engine
            .mutation(fns::INGEST_BATCH, ok(), None)
            .await
            .map(|c| c.value),
        "UNAUTHORIZED",
    );

    let e = expect_code(
        env.m(
            fns::INGEST_BATCH,
            batch(
                &meeting,
                (0..51).map(|i| chunk(&format!("b{i}"), "p", 0)).collect(),
            ),
            &p,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.starts_with("chunks:"), "{e}");
    let bad = |field: &str, value: Value| {
        let mut c = chunk("bad", "p", 1_000);
        if let Some(o) = c.as_object_mut() {
            o.insert(field.into(), value);
        }
        batch(&meeting, vec![chunk("good", "p", 0), c])
    };
    for (field, value, path) in [
        ("confidence", Value::from(1.5), "chunks[1].confidence"),
        ("confidence", Value::from(-0.1), "chunks[1].confidence"),
        ("endMs", Value::from(999i64), "chunks[1].startMs"),
        ("startMs", Value::from(-5i64), "chunks[1].startMs"),
        ("text", Value::from(""), "chunks[1].text"),
        ("text", Value::from("x".repeat(2_001)), "chunks[1].text"),
        ("chunkId", Value::from(""), "chunks[1].chunkId"),
    ] {
        let e = expect_code(
            env.m(fns::INGEST_BATCH, bad(field, value), &p).await,
            "VALIDATION_ERROR",
        );
        assert_eq!(e.data, obj! { "path" => path }, "{e}");
    }
    // An int where a float is due is refused by the argument validator.
    expect_code(
        env.m(fns::INGEST_BATCH, bad("confidence", Value::from(1i64)), &p)
            .await,
        "VALIDATION_ERROR",
    );
    assert!(
        env.all("transcripts").await.is_empty(),
        "nothing was stored"
    );

    // After the meeting ends, ingestion is refused again.
    env.m(
        "meetings.end",
        obj! { "meetingId" => meeting.as_str() },
        &host,
    )
    .await
    .unwrap();
    expect_code(
        env.m(fns::INGEST_BATCH, ok(), &p).await,
        "MEETING_NOT_ACTIVE",
    );
}

/// A `speakerId` is a free label unless it is a user id: then it must name a participant,
/// since segments, insights and erasure take it as who spoke. Every chunk records who stored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_named_by_user_id_must_be_a_participant() {
    let env = open();
    let (host, p, outsider) = (ident("host"), ident("p"), ident("outsider"));
    let outsider_id = env.user(&outsider).await;
    let meeting = env.meeting(&host, &[&p], true).await;
    let (host_id, p_id) = (env.user(&host).await, env.user(&p).await);

    let e = expect_code(
        env.m(
            fns::INGEST_BATCH,
            batch(
                &meeting,
                vec![chunk("a", "Speaker 1", 0), chunk("b", &outsider_id, 10)],
            ),
            &p,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(e.data, obj! { "path" => "chunks[1].speakerId" }, "{e}");
    let mut single = chunk("c", &outsider_id, 20);
    single
        .as_object_mut()
        .unwrap()
        .insert("meetingId".into(), meeting.as_str().into());
    let e = expect_code(
        env.m(fns::INGEST_CHUNK, single, &p).await,
        "VALIDATION_ERROR",
    );
    assert_eq!(e.data, obj! { "path" => "speakerId" }, "{e}");
    assert!(
        env.all("transcripts").await.is_empty(),
        "nothing was stored"
    );

    env.m(
        fns::INGEST_BATCH,
        batch(
            &meeting,
            vec![
                chunk("a", "Speaker 1", 0),
                chunk("b", &host_id, 10),
                chunk("c", &p_id, 20),
            ],
        ),
        &p,
    )
    .await
    .unwrap();
    let stored = env.all("transcripts").await;
    assert_eq!(stored.len(), 3);
    for c in &stored {
        assert_eq!(c.get_path("ingestedBy"), Some(&Value::from(p_id.as_str())));
    }
    // Another producer reusing p's chunk id is told so, not handed p's sequence as a
    // "duplicate" of a chunk it never sent.
    let e = expect_code(
        env.m(
            fns::INGEST_BATCH,
            batch(
                &meeting,
                vec![chunk("z", "Speaker 9", 30), chunk("b", "Speaker 9", 40)],
            ),
            &host,
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert_eq!(e.data, obj! { "path" => "chunks[1].chunkId" }, "{e}");
    assert_eq!(env.all("transcripts").await.len(), 3);
    let again = env
        .m(
            fns::INGEST_BATCH,
            batch(&meeting, vec![chunk("b", &host_id, 10)]),
            &p,
        )
        .await
        .unwrap();
    assert_eq!(int(&again, "duplicates"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_rate_limited_per_user() {
    let env = open();
    let (host, p) = (ident("host"), ident("p"));
    let meeting = env.meeting(&host, &[&p], true).await;
    let max_calls = 2 * linkedup_server::linkedup::RateLimitConfig::default()
        .transcripts_ingest
        .max as usize
        + 10;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..max_calls {
        let args = batch(&meeting, vec![chunk(&format!("r{i}"), "p", 0)]);
        match env.m(fns::INGEST_BATCH, args, &p).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the limiter refused within twice its limit");
    assert_eq!(e.code, "RATE_LIMITED", "{e}");
    assert!(int(&e.data, "retryAfterMs") > 0);
    assert!(
        accepted
            >= linkedup_server::linkedup::RateLimitConfig::default()
                .transcripts_ingest
                .max as usize
                / 2,
        "accepted {accepted}"
    );
    // The refused call stored nothing; another user is not limited.
    assert_eq!(env.all("transcripts").await.len(), accepted);
    env.m(
        fns::INGEST_BATCH,
        batch(&meeting, vec![chunk("host-1", "host", 0)]),
        &host,
    )
    .await
    .unwrap();
}

/// A subscriber's copy of one stream window.
struct StreamReader {
    session: ClientSession,
    query_id: u32,
    from: i64,
    window: Value,
    delivered: Vec<i64>,
    texts: HashMap<i64, String>,
}

const WINDOW: i64 = 25;

impl StreamReader {
    async fn subscribe(&mut self, meeting: &str) {
        self.query_id += 1;
        self.from = self.delivered.last().copied().unwrap_or(0);
        self.window = Value::Null;
        self.session
            .subscribe(
                self.query_id,
                fns::STREAM,
                obj! { "meetingId" => meeting, "fromSequence" => self.from, "limit" => WINDOW },
            )
            .await
            .unwrap();
    }

    /// Applies one transition; delivers new chunks; moves the window on when it is full.
    async fn step(&mut self, meeting: &str) {
        let t = tokio::time::timeout(Duration::from_secs(10), self.session.next_transition())
            .await
            .expect("a transition within 10 s")
            .expect("session open");
        let mut full = false;
        for u in &t.updates {
            match u {
                QueryUpdate::Updated { query_id, diff, .. } if *query_id == self.query_id => {
                    let new = apply(&self.window, diff).unwrap();
                    let old = self.window.as_array().unwrap_or(&[]).to_vec();
                    let rows = new.as_array().unwrap();
                    assert!(rows.len() >= old.len(), "a window only grows");
                    assert_eq!(
                        &rows[..old.len()],
                        &old[..],
                        "a window's prefix never changes"
                    );
                    for c in &rows[old.len()..] {
                        let seq = int(c, "sequence");
                        assert!(seq > self.from);
                        let expected = self.delivered.last().copied().unwrap_or(0) + 1;
                        assert_eq!(seq, expected, "delivered in order, exactly once");
                        self.delivered.push(seq);
                        self.texts
                            .insert(seq, c.get_path("text").unwrap().as_str().unwrap().into());
                    }
                    full = rows.len() as i64 == WINDOW;
                    self.window = new;
                }
                QueryUpdate::Updated { .. } | QueryUpdate::Removed { .. } => {}
                QueryUpdate::Failed { error, .. } => panic!("stream failed: {error}"),
            }
        }
        if full {
            self.session.unsubscribe(self.query_id).await;
            self.subscribe(meeting).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_disconnects_resumes_and_gets_every_chunk_once_in_order() {
    let env = open();
    let host = ident("host");
    let others: Vec<Identity> = (0..3).map(|i| ident(&format!("p{i}"))).collect();
    let reader = ident("reader");
    let mut refs: Vec<&Identity> = others.iter().collect();
    refs.push(&reader);
    let meeting = env.meeting(&host, &refs, true).await;
    let mgr = SubscriptionManager::new(env.engine.clone(), Default::default());

    let mut producers = vec![host.clone()];
    producers.extend(others.iter().cloned());
    let engine = env.engine.clone();
    let m2 = meeting.clone();
    // Bursts of small batches from four producers, racing the reader.
    let producer = tokio::spawn(async move {
        let mut sent = 0usize;
        for round in 0..6 {
            let mut tasks = Vec::new();
            for (p, who) in producers.iter().enumerate() {
                for b in 0..4 {
                    let n = 1 + (p + b + round) % 9;
                    sent += n;
                    let chunks = (0..n)
                        .map(|i| chunk(&format!("{round}-{p}-{b}-{i}"), &who.subject, 0))
                        .collect();
                    let (engine, who, args) = (engine.clone(), who.clone(), batch(&m2, chunks));
                    tasks.push(tokio::spawn(async move {
                        engine.mutation(fns::INGEST_BATCH, args, Some(&who)).await
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    });

    let mut r = StreamReader {
        session: mgr.connect(Some(reader.clone())).await,
        query_id: 0,
        from: 0,
        window: Value::Null,
        delivered: Vec::new(),
        texts: HashMap::new(),
    };
    r.subscribe(&meeting).await;
    while r.delivered.len() < 60 {
        r.step(&meeting).await;
    }
    // Disconnect mid-burst: the session (and its subscriptions) go away; a new session
    // resumes from the last delivered sequence.
    let fresh = mgr.connect(Some(reader.clone())).await;
    drop(std::mem::replace(&mut r.session, fresh));
    r.query_id = 0;
    r.subscribe(&meeting).await;
    let total = producer.await.unwrap();
    assert!(total > 60);
    while r.delivered.len() < total {
        r.step(&meeting).await;
    }
    assert_eq!(r.delivered, (1..=total as i64).collect::<Vec<_>>());
    // What was delivered is what is stored.
    let stored = env
        .q(
            fns::STREAM,
            obj! { "meetingId" => meeting.as_str(), "fromSequence" => 0i64, "limit" => 200i64 },
            &reader,
        )
        .await
        .unwrap();
    for c in stored.as_array().unwrap() {
        let seq = int(c, "sequence");
        assert_eq!(r.texts[&seq], c.get_path("text").unwrap().as_str().unwrap());
    }
}

/// One session with one subscription (query id 1), tracking its value and timestamp.
struct Watcher {
    session: ClientSession,
    window: Value,
    ts: u64,
}

impl Watcher {
    async fn new(mgr: &SubscriptionManager, who: &Identity, args: Value) -> Watcher {
        let session = mgr.connect(Some(who.clone())).await;
        session.subscribe(1, fns::STREAM, args).await.unwrap();
        Watcher {
            session,
            window: Value::Null,
            ts: 0,
        }
    }

    /// Applies transitions until the session is at `ts`; returns how many updates arrived.
    async fn catch_up(&mut self, ts: u64) -> usize {
        self.session.sync_to(ts).await;
        let mut updates = 0;
        while self.ts < ts {
            let t = tokio::time::timeout(Duration::from_secs(10), self.session.next_transition())
                .await
                .expect("a transition within 10 s")
                .expect("session open");
            assert_eq!(t.start_ts, self.ts, "transitions are contiguous");
            for u in &t.updates {
                match u {
                    QueryUpdate::Updated { diff, .. } => {
                        self.window = apply(&self.window, diff).unwrap();
                        updates += 1;
                    }
                    QueryUpdate::Failed { error, .. } => panic!("failed: {error}"),
                    QueryUpdate::Removed { .. } => {}
                }
            }
            self.ts = t.end_ts;
        }
        updates
    }

    fn len(&self) -> usize {
        self.window.as_array().map_or(0, |a| a.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_one_meeting_rerun_no_subscription_of_another() {
    let env = open();
    let (a_host, a_p, a_q) = (ident("a-host"), ident("a-p"), ident("a-q"));
    let (b_host, b_p) = (ident("b-host"), ident("b-p"));
    let outsider = ident("outsider");
    env.user(&outsider).await;
    let a = env.meeting(&a_host, &[&a_p, &a_q], true).await;
    let b = env.meeting(&b_host, &[&b_p], true).await;
    let mgr = SubscriptionManager::new(env.engine.clone(), Default::default());
    let stream_args =
        |m: &str| obj! { "meetingId" => m, "fromSequence" => 0i64, "limit" => 200i64 };

    // Three subscribers of meeting A with identical arguments, one of meeting B.
    let mut a_watchers = Vec::new();
    for who in [&a_p, &a_q, &a_q] {
        a_watchers.push(Watcher::new(&mgr, who, stream_args(&a)).await);
    }
    let mut b_watcher = Watcher::new(&mgr, &b_p, stream_args(&b)).await;
    // One body execution of A's stream plus one access check per distinct caller; B: 1 + 1.
    assert_eq!(mgr.metrics().executions.load(Ordering::Relaxed), 3 + 2);

    // A non-participant's subscription fails its access check and never shares the body.
    let o = mgr.connect(Some(outsider.clone())).await;
    o.subscribe(1, fns::STREAM, stream_args(&a)).await.unwrap();
    let t = o.next_transition().await.unwrap();
    assert!(
        matches!(&t.updates[..], [QueryUpdate::Failed { error, .. }] if error.code == "NOT_FOUND")
    );

    let ts0 = env.settle().await;
    for w in &mut a_watchers {
        w.catch_up(ts0).await;
    }
    b_watcher.catch_up(ts0).await;
    let before = mgr.metrics().reruns.load(Ordering::Relaxed);
    let mut last_ts = 0;
    for i in 0..20 {
        let c = env
            .engine
            .mutation(
                fns::INGEST_BATCH,
                batch(&a, vec![chunk(&format!("a{i}"), "a-host", 0)]),
                Some(&a_host),
            )
            .await
            .unwrap();
        last_ts = c.ts;
    }
    for w in &mut a_watchers {
        w.catch_up(last_ts).await;
        assert_eq!(w.len(), 20);
    }
    assert_eq!(b_watcher.catch_up(last_ts).await, 0);
    let reruns = mgr.metrics().reruns.load(Ordering::Relaxed) - before;
    // Each commit re-ran A's one shared body at most once (commits may merge into one pass),
    // and nothing of meeting B.
    assert!((1..=20).contains(&reruns), "reruns {reruns}");
    assert_eq!(b_watcher.len(), 0);

    // A chunk in B re-runs only B.
    let before = mgr.metrics().reruns.load(Ordering::Relaxed);
    let c = env
        .engine
        .mutation(
            fns::INGEST_BATCH,
            batch(&b, vec![chunk("b0", "b-host", 0)]),
            Some(&b_host),
        )
        .await
        .unwrap();
    assert_eq!(b_watcher.catch_up(c.ts).await, 1);
    for w in &mut a_watchers {
        assert_eq!(w.catch_up(c.ts).await, 0);
    }
    assert_eq!(mgr.metrics().reruns.load(Ordering::Relaxed) - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_is_not_rerun_by_later_chunks() {
    let env = open();
    let (host, p) = (ident("host"), ident("p"));
    let meeting = env.meeting(&host, &[&p], true).await;
    let r = env
        .m(
            fns::INGEST_BATCH,
            batch(
                &meeting,
                (0..10).map(|i| chunk(&format!("c{i}"), "p", 0)).collect(),
            ),
            &p,
        )
        .await
        .unwrap();
    assert_eq!(ints(&r, "sequences").len(), 10);
    let mgr = SubscriptionManager::new(env.engine.clone(), Default::default());
    let args = obj! { "meetingId" => meeting.as_str(), "fromSequence" => 2i64, "limit" => 5i64 };
    let mut w = Watcher::new(&mgr, &p, args).await;
    // A commit made before the manager existed may still be announced to it (and re-run the
    // new subscription, unchanged); an unrelated commit after it flushes that out.
    let ts = env.settle().await;
    w.catch_up(ts).await;
    let seqs: Vec<i64> = w
        .window
        .as_array()
        .unwrap()
        .iter()
        .map(|c| int(c, "sequence"))
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6, 7]);
    // The stream returns the stored documents; every field decodes as the API's chunk type.
    let chunks: Vec<TranscriptChunk> = query_engine::json::from_value(&w.window).unwrap();
    assert_eq!(chunks[0].chunk_id, "c2");
    for c in &chunks {
        assert_eq!(c.meeting_id, meeting);
        assert_eq!(c.bucket_ms, c.start_ms - c.start_ms.rem_euclid(60_000));
        assert!(c.creation_time > 0 && c.created_at > 0);
    }
    let before = mgr.metrics().reruns.load(Ordering::Relaxed);
    let c = env
        .engine
        .mutation(
            fns::INGEST_BATCH,
            batch(&meeting, vec![chunk("late", "p", 0)]),
            Some(&p),
        )
        .await
        .unwrap();
    assert_eq!(w.catch_up(c.ts).await, 0);
    assert_eq!(mgr.metrics().reruns.load(Ordering::Relaxed), before);
}

/// Ingests `n` chunks in batches of 50: speakers take turns of `turn` chunks, one chunk per
/// second of meeting time, except every fifth turn is a two-minute monologue.
async fn ingest_talk(env: &Env, meeting: &str, who: &Identity, n: usize, turn: usize) {
    let mut chunks = Vec::new();
    let mut t = 0i64;
    let mut turn_no = 0;
    let mut left_in_turn = turn;
    for i in 0..n {
        if left_in_turn == 0 {
            turn_no += 1;
            left_in_turn = if turn_no % 5 == 0 { 120 } else { turn };
        }
        left_in_turn -= 1;
        chunks.push(chunk(&format!("t{i}"), &format!("s{}", turn_no % 3), t));
        t += 1_000;
        if chunks.len() == 50 {
            env.m(
                fns::INGEST_BATCH,
                batch(meeting, std::mem::take(&mut chunks)),
                who,
            )
            .await
            .unwrap();
        }
    }
    if !chunks.is_empty() {
        env.m(fns::INGEST_BATCH, batch(meeting, chunks), who)
            .await
            .unwrap();
    }
}

/// The meeting's segments, checked: contiguous cover of 1..=n, one speaker each, bounded span.
async fn check_segments(env: &Env, meeting: &str, who: &Identity, n: i64) -> usize {
    let mut segments = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = obj! { "meetingId" => meeting, "pageSize" => 7i64 };
        if let (Some(c), Some(o)) = (&cursor, args.as_object_mut()) {
            o.insert("cursor".into(), c.as_str().into());
        }
        let page = env.q(fns::LIST_SEGMENTS, args, who).await.unwrap();
        segments.extend(page.get_path("page").unwrap().as_array().unwrap().to_vec());
        if page.get_path("isDone").unwrap().as_bool().unwrap() {
            break;
        }
        cursor = page
            .get_path("continueCursor")
            .and_then(Value::as_str)
            .map(String::from);
    }
    segments.sort_by_key(|s| int(s, "firstSequence"));
    let mut next = 1;
    for s in &segments {
        assert_eq!(int(s, "firstSequence"), next, "segments are contiguous");
        assert!(int(s, "lastSequence") >= next);
        next = int(s, "lastSequence") + 1;
        assert!(int(s, "endMs") - int(s, "startMs") <= SEGMENT_MAX_SPAN_MS);
        assert_eq!(s.get_path("speakers").unwrap().as_array().unwrap().len(), 1);
    }
    assert_eq!(next, n + 1, "segments cover every chunk");
    segments.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_is_bounded_resumable_and_idempotent() {
    let env = open();
    let (host, p, outsider) = (ident("host"), ident("p"), ident("outsider"));
    env.user(&outsider).await;
    let meeting = env.meeting(&host, &[&p], true).await;
    let n = 1_234;
    ingest_talk(&env, &meeting, &p, n, 7).await;

    // While the meeting is active the last (possibly growing) turn is held back.
    let args = obj! { "meetingId" => meeting.as_str() };
    env.m("meetings.end", args.clone(), &host).await.unwrap();

    // Drive the continuation chain by hand: each run reads at most one batch.
    let mut runs = 0;
    let mut after = 0;
    loop {
        let r = env
            .internal(
                fns::AGGREGATE_SEGMENTS,
                obj! { "meetingId" => meeting.as_str(), "afterSequence" => after },
            )
            .await;
        runs += 1;
        assert!(int(&r, "lastSequence") - after <= AGGREGATE_BATCH_CHUNKS as i64);
        after = int(&r, "lastSequence");
        if !r.get_path("continued").unwrap().as_bool().unwrap() {
            break;
        }
        assert!(runs < 10);
    }
    assert!(runs >= n.div_ceil(AGGREGATE_BATCH_CHUNKS), "runs {runs}");
    assert_eq!(after, n as i64);
    let count = check_segments(&env, &meeting, &p, n as i64).await;
    assert!(count > n / 120, "{count} segments");

    // Running again, from scratch or from anywhere, creates nothing.
    for after in [None, Some(0i64), Some(700)] {
        let mut a = args.clone();
        if let (Some(x), Some(o)) = (after, a.as_object_mut()) {
            o.insert("afterSequence".into(), x.into());
        }
        let r = env.internal(fns::AGGREGATE_SEGMENTS, a).await;
        assert_eq!(int(&r, "segmentsCreated"), 0);
    }
    assert_eq!(env.all("transcriptSegments").await.len(), count);
    expect_code(
        env.q(fns::LIST_SEGMENTS, args.clone(), &outsider).await,
        "NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_holds_the_open_turn_and_continues_itself_through_the_scheduler() {
    let env = open_with(true);
    let (host, p) = (ident("host"), ident("p"));
    let meeting = env.meeting(&host, &[&p], true).await;
    let args = obj! { "meetingId" => meeting.as_str() };

    // One speaker, 30 s: one open turn, held while the meeting is active.
    ingest_talk(&env, &meeting, &p, 30, 1_000).await;
    let r = env.internal(fns::AGGREGATE_SEGMENTS, args.clone()).await;
    assert_eq!(int(&r, "segmentsCreated"), 0);

    ingest_talk_more(&env, &meeting, &p, 30, 1_200).await;
    env.m("meetings.end", args.clone(), &host).await.unwrap();
    let r = env.internal(fns::AGGREGATE_SEGMENTS, args.clone()).await;
    assert!(r.get_path("continued").unwrap().as_bool().unwrap());

    // The scheduler runs the continuations until every chunk is covered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let covered = env
            .all("transcriptSegments")
            .await
            .iter()
            .map(|s| int(s, "lastSequence"))
            .max()
            .unwrap_or(0);
        if covered == 1_230 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "covered {covered}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check_segments(&env, &meeting, &p, 1_230).await;
}

/// Like `ingest_talk`, with chunk ids and times after the first `offset` chunks.
async fn ingest_talk_more(env: &Env, meeting: &str, who: &Identity, offset: usize, n: usize) {
    let mut chunks = Vec::new();
    for i in offset..offset + n {
        let speaker = format!("s{}", (i / 9) % 3);
        chunks.push(chunk(&format!("t{i}"), &speaker, i as i64 * 1_000));
        if chunks.len() == 50 {
            env.m(
                fns::INGEST_BATCH,
                batch(meeting, std::mem::take(&mut chunks)),
                who,
            )
            .await
            .unwrap();
        }
    }
    if !chunks.is_empty() {
        env.m(fns::INGEST_BATCH, batch(meeting, chunks), who)
            .await
            .unwrap();
    }
}
