//! A live meeting over the network: the LinkedUp schema and functions on a real server
//! (127.0.0.1, QUIC, dev tokens) and separate SDK clients per person. Note editors
//! (`NoteSession`) converge on the server's text under random concurrent edits and a dropped
//! connection, refuse the edits the server would refuse, and get hundreds of edits made while
//! an op is in flight to the server in ops it takes; transcript producers (`TranscriptSender`) store every chunk once with gap-free
//! sequences, and readers (`TranscriptStream`) get every chunk exactly once, in order, across a
//! forced reconnect and across a dropped client resuming from its last sequence.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use linkedup_client::note_editor::EditRefused;
use linkedup_client::notes::{NoteSession, NoteSessionError};
use linkedup_client::transcripts::{
    NewChunk, SendReport, SenderConfig, TranscriptSender, TranscriptStream,
};
use linkedup_client::{Client, Value};
use linkedup_schema::api::notes::MAX_NOTE_CHARS;
use linkedup_schema::ot::{OtError, TextOperation};
use linkedup_server::auth::DevClaims;
use linkedup_server::RunningServer;
use query_engine::obj;

/// Guards against a hung test; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);

async fn start() -> (tempfile::TempDir, RunningServer) {
    let dir = common::data_dir();
    let server = common::start_linkedup(dir.path()).await;
    (dir, server)
}

/// A signed-in client for `subject` and its user id.
async fn person(server: &RunningServer, subject: &str) -> (Client, String) {
    let mut claims = DevClaims::new(subject);
    claims.org_id = Some("org_live".into());
    claims.org_role = Some("member".into());
    let token = server.mint_dev_token(claims).unwrap();
    let client = Client::connect(
        &common::addr(server),
        common::options(server).with_token(token),
    )
    .await
    .unwrap();
    let me: Value = client
        .mutation("users.ensure", &obj! { "displayName" => subject })
        .await
        .unwrap();
    let id = me.get_path("_id").unwrap().as_str().unwrap().to_string();
    (client, id)
}

/// An active meeting hosted by `host` with `invitees`.
async fn meeting(host: &Client, invitees: &[String]) -> String {
    let ids: Vec<Value> = invitees.iter().map(|i| Value::from(i.as_str())).collect();
    let id: String = host
        .mutation(
            "meetings.schedule",
            &obj! { "title" => "Live review", "inviteeIds" => ids },
        )
        .await
        .unwrap();
    let _: Value = host
        .mutation("meetings.start", &obj! { "meetingId" => id.as_str() })
        .await
        .unwrap();
    id
}

/// A small seeded generator (splitmix64), so runs are reproducible without extra crates.
struct StdRng(u64);

impl StdRng {
    fn seed_from_u64(seed: u64) -> Self {
        StdRng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `range` (inclusive bounds as given).
    fn gen_range<R: std::ops::RangeBounds<u64>>(&mut self, range: R) -> u64 {
        use std::ops::Bound::*;
        let lo = match range.start_bound() {
            Included(&n) => n,
            Excluded(&n) => n + 1,
            Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Included(&n) => n,
            Excluded(&n) => n - 1,
            Unbounded => u64::MAX - 1,
        };
        lo + self.next() % (hi - lo + 1)
    }
}

/// Chars that stress char counting: skin-tone emoji pairs, combining accents, CJK, a 4-byte
/// ideograph.
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

fn random_text(rng: &mut StdRng, max_chars: u64) -> String {
    let n = rng.gen_range(1..=max_chars);
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len() as u64) as usize])
        .collect()
}

/// A random edit of a document of `len` chars: a few retains, inserts and deletes.
fn random_op(rng: &mut StdRng, len: u64) -> TextOperation {
    let mut left = len;
    let mut op = TextOperation::new();
    for _ in 0..rng.gen_range(1..4) {
        let n = rng.gen_range(0..=left.min(6));
        left -= n;
        op = match rng.gen_range(0..4) {
            0 => op.retain(n),
            1 => op.delete(n.min(3)).retain(n - n.min(3)),
            _ => op.retain(n).insert(&random_text(rng, 4)),
        };
    }
    op.retain(left)
}

fn char_len(s: &str) -> u64 {
    s.chars().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn note_editors_converge_over_the_network() {
    const EDITORS: usize = 4;
    const EDITS: usize = 30;
    let (_dir, server) = start().await;
    let mut people = Vec::new();
    for i in 0..EDITORS {
        people.push(person(&server, &format!("editor_{i}")).await);
    }
    let invitees: Vec<String> = people[1..].iter().map(|(_, id)| id.clone()).collect();
    let meeting_id = meeting(&people[0].0, &invitees).await;

    let mut sessions = Vec::new();
    for (client, _) in &people {
        sessions.push(Arc::new(
            NoteSession::open(client, &meeting_id).await.unwrap(),
        ));
    }
    let mut tasks = Vec::new();
    for (i, session) in sessions.iter().enumerate() {
        let session = session.clone();
        let client = people[i].0.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0x5eed + i as u64);
            for k in 0..EDITS {
                // Random edits, built atomically against the text as it is at that moment.
                session
                    .edit_with(|text| random_op(&mut rng, char_len(text)))
                    .unwrap();
                if i == 0 && k == EDITS / 2 {
                    // Editor 0 loses its connection mid-session; its op in flight and the
                    // edits buffered behind it must still land exactly once.
                    client.force_reconnect();
                }
                let pause = rng.gen_range(0..4);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            // Then each appends a unique marker concurrently: none may be lost or doubled.
            let marker = format!("[m{i}👍🏽é]");
            session
                .edit_with(|text| TextOperation::new().retain(char_len(text)).insert(&marker))
                .unwrap();
            marker
        }));
    }
    let mut markers = Vec::new();
    for t in tasks {
        markers.push(t.await.unwrap());
    }
    for s in &sessions {
        tokio::time::timeout(PATIENCE, s.synchronized())
            .await
            .expect("editor did not synchronise")
            .unwrap();
    }
    let note: Value = people[0]
        .0
        .query("notes.get", &obj! { "meetingId" => meeting_id.as_str() })
        .await
        .unwrap();
    let content = note
        .get_path("content")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let version = note.get_path("version").unwrap().as_i64().unwrap() as u64;
    assert!(version >= EDITORS as u64, "only {version} ops committed");
    for (i, s) in sessions.iter().enumerate() {
        tokio::time::timeout(PATIENCE, s.caught_up_to(version))
            .await
            .expect("editor did not catch up")
            .unwrap();
        let snap = s.snapshot();
        assert_eq!(snap.version, version, "editor {i}");
        assert_eq!(snap.text, content, "editor {i} diverged");
        assert_eq!(snap.discarded_edits, 0, "editor {i} had to drop edits");
    }
    for m in &markers {
        assert_eq!(
            content.matches(m.as_str()).count(),
            1,
            "marker {m} in {content:?}"
        );
    }
    assert!(
        people[0].0.connection_count() >= 2,
        "editor 0 never reconnected"
    );

    for s in sessions {
        Arc::try_unwrap(s).unwrap().close().await;
    }
    for (c, _) in people {
        c.close().await;
    }
    server.shutdown().await;
}

/// Whole-note pastes are heavy enough that the server cuts `opsSince` windows short by weight;
/// an editor following along re-anchors after each cut window and still reaches every op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_editor_follows_windows_cut_short_by_weight() {
    const PASTES: u64 = 8;
    let (_dir, server) = start().await;
    let (paster, _) = person(&server, "paster").await;
    let (reader, reader_id) = person(&server, "reader").await;
    let meeting_id = meeting(&paster, &[reader_id]).await;
    let session = NoteSession::open(&reader, &meeting_id).await.unwrap();

    let page = "👍".repeat(linkedup_schema::api::notes::MAX_NOTE_CHARS as usize);
    let mut len = 0;
    for v in 0..PASTES {
        let op = TextOperation::new().delete(len).insert(&page);
        let args = obj! {
            "meetingId" => meeting_id.as_str(), "baseVersion" => v as i64,
            "op" => query_engine::json::to_value(&op).unwrap(),
            "clientId" => "paster-1", "clientSeq" => v as i64 + 1,
        };
        let _: Value = paster
            .mutation("notes.applyOperation", &args)
            .await
            .unwrap();
        len = page.chars().count() as u64;
    }
    tokio::time::timeout(PATIENCE, session.caught_up_to(PASTES))
        .await
        .expect("the reader did not catch up")
        .unwrap();
    let snap = session.snapshot();
    assert_eq!(snap.version, PASTES);
    assert_eq!(snap.text, page);
    assert_eq!(snap.discarded_edits, 0);

    session.close().await;
    paster.close().await;
    reader.close().await;
    server.shutdown().await;
}

/// Two editors typing at once, on a server that transforms nothing (a transform budget of one
/// byte): every edit that meets the other's is refused as based too far back. Each editor
/// catches up through the op log and sends its edit again, so no edit is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_refused_as_too_far_behind_are_sent_again_not_dropped() {
    const ROUNDS: usize = 20;
    let dir = common::data_dir();
    let mut config = linkedup_server::linkedup::LinkedUpConfig::default();
    config.notes.max_transform_weight = 1;
    let server = common::start_linkedup_with(dir.path(), &config).await;
    let (ann, _) = person(&server, "ann").await;
    let (bob, bob_id) = person(&server, "bob").await;
    let meeting_id = meeting(&ann, &[bob_id]).await;
    let a = NoteSession::open(&ann, &meeting_id).await.unwrap();
    let b = NoteSession::open(&bob, &meeting_id).await.unwrap();
    for _ in 0..ROUNDS {
        for (session, letter) in [(&a, "a"), (&b, "b")] {
            session
                .edit_with(|text| TextOperation::new().insert(letter).retain(char_len(text)))
                .unwrap();
        }
        for session in [&a, &b] {
            tokio::time::timeout(PATIENCE, session.synchronized())
                .await
                .expect("an edit was never confirmed")
                .unwrap();
        }
    }
    let note: Value = ann
        .query("notes.get", &obj! { "meetingId" => meeting_id.as_str() })
        .await
        .unwrap();
    let version = note.get_path("version").unwrap().as_i64().unwrap() as u64;
    let text = note
        .get_path("content")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(version, 2 * ROUNDS as u64, "every edit committed once");
    for (session, letter) in [(&a, 'a'), (&b, 'b')] {
        tokio::time::timeout(PATIENCE, session.caught_up_to(version))
            .await
            .expect("an editor did not catch up")
            .unwrap();
        let snap = session.snapshot();
        assert_eq!(snap.text, text);
        assert_eq!(snap.discarded_edits, 0, "no edit dropped");
        assert_eq!(text.chars().filter(|c| *c == letter).count(), ROUNDS);
    }
    let resent = a.snapshot().resent_edits + b.snapshot().resent_edits;
    assert!(resent > 0, "the editors never met: the test proved nothing");
    a.close().await;
    b.close().await;
    ann.close().await;
    bob.close().await;
    server.shutdown().await;
}

/// A note editor on a fresh meeting of `subject`'s, whose note holds `text` (confirmed), with
/// its client and the meeting's id.
async fn editing(
    server: &RunningServer,
    subject: &str,
    text: &str,
) -> (Client, NoteSession, String) {
    let (client, _) = person(server, subject).await;
    let meeting_id = meeting(&client, &[]).await;
    let session = NoteSession::open(&client, &meeting_id).await.unwrap();
    session.edit(TextOperation::new().insert(text)).unwrap();
    synchronized(&session).await;
    (client, session, meeting_id)
}

async fn synchronized(session: &NoteSession) {
    tokio::time::timeout(PATIENCE, session.synchronized())
        .await
        .expect("an edit was never confirmed")
        .unwrap();
}

/// The note's text and version as the server has them.
async fn server_note(client: &Client, meeting_id: &str) -> (String, u64) {
    let note: Value = client
        .query("notes.get", &obj! { "meetingId" => meeting_id })
        .await
        .unwrap();
    let text = note
        .get_path("content")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    (
        text,
        note.get_path("version").unwrap().as_i64().unwrap() as u64,
    )
}

/// Edits the server must refuse — a "replace all" over the per-op component limit, one that
/// takes the note past its maximum length — are refused by `edit`, the text unchanged, rather
/// than accepted and then lost in the reload the server's refusal brings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_the_server_would_refuse_are_refused_by_the_session() {
    const LEN: u64 = 2_000;
    let (_dir, server) = start().await;
    let text = "x".repeat(LEN as usize);
    let (client, session, meeting_id) = editing(&server, "limits", &text).await;
    // A character-wise diff replacing every other char: 3,000 components.
    let mut replace_all = TextOperation::new();
    for i in 0..LEN {
        replace_all = if i % 2 == 0 {
            replace_all.retain(1)
        } else {
            replace_all.delete(1).insert("y")
        };
    }
    let refused = session.edit(replace_all);
    assert!(
        matches!(
            refused,
            Err(NoteSessionError::Refused(EditRefused::Ot(
                OtError::TooManyComponents { .. }
            )))
        ),
        "{refused:?}"
    );
    assert_eq!(session.text(), text);
    assert!(!session.snapshot().pending);

    // Up to 10 chars short of the maximum: 11 more are refused, 10 are taken.
    let near_full = MAX_NOTE_CHARS - 10;
    session
        .edit(
            TextOperation::new()
                .retain(LEN)
                .insert(&"n".repeat((near_full - LEN) as usize)),
        )
        .unwrap();
    synchronized(&session).await;
    let append = |n: usize| {
        TextOperation::new()
            .retain(near_full)
            .insert(&"+".repeat(n))
    };
    let refused = session.edit(append(11));
    assert!(
        matches!(
            refused,
            Err(NoteSessionError::Refused(EditRefused::NoteTooLong { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(session.text().chars().count() as u64, near_full);
    session.edit(append(10)).unwrap();
    synchronized(&session).await;
    let (content, _) = server_note(&client, &meeting_id).await;
    assert_eq!(content.chars().count() as u64, MAX_NOTE_CHARS);
    assert_eq!(session.snapshot().discarded_edits, 0);

    session.close().await;
    client.close().await;
    server.shutdown().await;
}

/// 501 edits at different places made while the first is in flight (made without yielding,
/// on a single-threaded runtime, so that no ack can come between them) are more than one op
/// may carry: they reach the server in several ops within its limits, and none is dropped.
#[tokio::test]
async fn edits_made_while_an_op_is_in_flight_all_reach_the_server() {
    const LEN: usize = 2_000;
    const EDITS: usize = 501;
    let (_dir, server) = start().await;
    let (client, session, meeting_id) = editing(&server, "typist", &"x".repeat(LEN)).await;
    let base = session.version();
    for i in 0..EDITS {
        let at = 3 * i as u64;
        session
            .edit_with(|_| {
                TextOperation::new()
                    .retain(at)
                    .delete(1)
                    .insert("a")
                    .retain(LEN as u64 - at - 1)
            })
            .unwrap();
    }
    synchronized(&session).await;
    let want: String = (0..LEN)
        .map(|i| {
            if i % 3 == 0 && i / 3 < EDITS {
                'a'
            } else {
                'x'
            }
        })
        .collect();
    let (content, version) = server_note(&client, &meeting_id).await;
    assert_eq!(content, want);
    assert!(
        version >= base + 3,
        "{} ops: the edits fitted in two, the test proved nothing",
        version - base
    );
    let snap = session.snapshot();
    assert_eq!(snap.text, content);
    assert_eq!(snap.discarded_edits, 0);

    session.close().await;
    client.close().await;
    server.shutdown().await;
}

/// Reads `stream` until it has delivered sequence `until`; returns (sequence, chunk id)s.
async fn read_until(stream: &mut TranscriptStream, until: i64) -> Vec<(i64, String)> {
    let mut got = Vec::new();
    while stream.last_sequence() < until {
        let chunk = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("no chunk in time")
            .expect("stream ended")
            .unwrap();
        got.push((chunk.sequence, chunk.chunk_id));
    }
    got
}

fn assert_in_order_once(got: &[(i64, String)], from: i64, to: i64) {
    let seqs: Vec<i64> = got.iter().map(|(s, _)| *s).collect();
    let want: Vec<i64> = (from..=to).collect();
    assert_eq!(seqs, want, "chunks missing, repeated or out of order");
}

/// A reader starting far behind reads the backlog in large windows and then follows live in
/// small ones (`DEFAULT_STREAM_LIMIT`); across both switches every chunk arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reads_a_backlog_then_follows_live_once_in_order() {
    const BACKLOG: i64 = 450;
    const LIVE: i64 = 45;
    let (_dir, server) = start().await;
    let (speaker, _) = person(&server, "speaker").await;
    let (reader, reader_id) = person(&server, "reader").await;
    let meeting_id = meeting(&speaker, &[reader_id]).await;
    let write = |from: i64, to: i64| {
        let speaker = speaker.clone();
        let meeting_id = meeting_id.clone();
        async move {
            let (sender, _reports) =
                TranscriptSender::new(&speaker, &meeting_id, SenderConfig::default()).unwrap();
            for k in from..to {
                sender
                    .send(NewChunk {
                        speaker_id: Some("speaker".into()),
                        text: format!("chunk {k}"),
                        confidence: 0.9,
                        start_ms: k * 100,
                        end_ms: k * 100 + 90,
                    })
                    .await
                    .unwrap();
            }
            sender.close().await.unwrap();
        }
    };
    write(0, BACKLOG).await;
    let mut stream = reader.transcript_stream(&meeting_id, 0).unwrap();
    let mut got = read_until(&mut stream, BACKLOG).await;
    let live = tokio::spawn(write(BACKLOG, BACKLOG + LIVE));
    got.extend(read_until(&mut stream, BACKLOG + LIVE).await);
    live.await.unwrap();
    assert_in_order_once(&got, 1, BACKLOG + LIVE);
    drop(stream);
    reader.close().await;
    speaker.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_bursts_reach_every_reader_once_in_order() {
    const PRODUCERS: usize = 3;
    const BURSTS: usize = 3;
    const PER_BURST: usize = 40;
    const TOTAL: i64 = (PRODUCERS * BURSTS * PER_BURST) as i64;
    let (_dir, server) = start().await;
    let mut producers = Vec::new();
    for i in 0..PRODUCERS {
        producers.push(person(&server, &format!("speaker_{i}")).await);
    }
    let (reader, reader_id) = person(&server, "reader").await;
    let (resumer, resumer_id) = person(&server, "resumer").await;
    let mut invitees: Vec<String> = producers[1..].iter().map(|(_, id)| id.clone()).collect();
    invitees.push(reader_id);
    invitees.push(resumer_id);
    let meeting_id = meeting(&producers[0].0, &invitees).await;

    // Reader 1: small windows (many shifts), and its connection is cut mid-burst.
    let mut stream = TranscriptStream::new(&reader, &meeting_id, 0, 16).unwrap();
    let reader_task = {
        let reader = reader.clone();
        tokio::spawn(async move {
            let mut got = read_until(&mut stream, TOTAL / 4).await;
            reader.force_reconnect();
            got.extend(read_until(&mut stream, TOTAL).await);
            got
        })
    };
    // Reader 2: drops its stream and its client mid-burst, and resumes on a new client from
    // the last sequence it holds.
    let resumer_task = {
        let server_addr = common::addr(&server);
        let options = common::options(&server).with_token(
            server
                .mint_dev_token({
                    let mut c = DevClaims::new("resumer");
                    c.org_id = Some("org_live".into());
                    c
                })
                .unwrap(),
        );
        let meeting_id = meeting_id.clone();
        tokio::spawn(async move {
            let mut stream = TranscriptStream::new(&resumer, &meeting_id, 0, 64).unwrap();
            let mut got = read_until(&mut stream, TOTAL / 3).await;
            let last = stream.last_sequence();
            drop(stream);
            resumer.close().await;
            let again = Client::connect(&server_addr, options).await.unwrap();
            let mut stream = TranscriptStream::new(&again, &meeting_id, last, 64).unwrap();
            got.extend(read_until(&mut stream, TOTAL).await);
            drop(stream);
            again.close().await;
            got
        })
    };

    // Producers: bursts of concurrent batches; producer 1 loses its connection mid-burst.
    let mut producer_tasks = Vec::new();
    for (i, (client, _)) in producers.iter().enumerate() {
        let config = SenderConfig {
            window: Duration::from_millis(50),
            ..SenderConfig::default()
        };
        let (sender, mut reports) = TranscriptSender::new(client, &meeting_id, config).unwrap();
        let client = client.clone();
        let collect = tokio::spawn(async move {
            let mut acks = Vec::new();
            while let Some(report) = reports.recv().await {
                match report {
                    SendReport::Stored { acks: a, .. } => acks.extend(a),
                    SendReport::Failed { error, .. } => panic!("producer {i}: {error}"),
                }
            }
            acks
        });
        producer_tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for burst in 0..BURSTS {
                for k in 0..PER_BURST {
                    let start_ms = ((burst * PER_BURST + k) * 100) as i64;
                    let id = sender
                        .send(NewChunk {
                            speaker_id: Some(format!("speaker_{i}")),
                            text: format!("p{i} b{burst} c{k} 👍🏽"),
                            confidence: 0.9,
                            start_ms,
                            end_ms: start_ms + 90,
                        })
                        .await
                        .unwrap();
                    sent.push(id);
                    if i == 1 && burst == 1 && k == PER_BURST / 2 {
                        client.force_reconnect();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sender.close().await.unwrap();
            (sent, collect.await.unwrap())
        }));
    }
    let mut by_chunk: HashMap<String, i64> = HashMap::new();
    for t in producer_tasks {
        let (sent, acks) = t.await.unwrap();
        let acked: Vec<&str> = acks.iter().map(|a| a.chunk_id.as_str()).collect();
        let sent_ids: Vec<&str> = sent.iter().map(String::as_str).collect();
        assert_eq!(
            acked, sent_ids,
            "every chunk acknowledged once, in send order"
        );
        // One producer's chunks are stored in the order it sent them.
        assert!(acks.windows(2).all(|w| w[0].sequence < w[1].sequence));
        for a in acks {
            assert!(by_chunk.insert(a.chunk_id, a.sequence).is_none());
        }
    }
    let sequences: BTreeSet<i64> = by_chunk.values().copied().collect();
    assert_eq!(
        sequences,
        (1..=TOTAL).collect::<BTreeSet<_>>(),
        "sequences 1..N exactly"
    );

    for task in [reader_task, resumer_task] {
        let got = tokio::time::timeout(PATIENCE * 2, task)
            .await
            .expect("reader did not finish")
            .unwrap();
        assert_in_order_once(&got, 1, TOTAL);
        for (seq, chunk_id) in &got {
            assert_eq!(by_chunk.get(chunk_id), Some(seq), "chunk {chunk_id}");
        }
        let ids: HashSet<&String> = got.iter().map(|(_, id)| id).collect();
        assert_eq!(ids.len() as i64, TOTAL);
    }
    assert!(reader.connection_count() >= 2, "reader never reconnected");

    reader.close().await;
    for (c, _) in producers {
        c.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_refusals_are_reported_without_retrying() {
    let (_dir, server) = start().await;
    let (host, _) = person(&server, "host").await;
    let (outsider, _) = person(&server, "outsider").await;
    let scheduled: String = host
        .mutation("meetings.schedule", &obj! { "title" => "Later" })
        .await
        .unwrap();
    let chunk = || NewChunk {
        speaker_id: None,
        text: "too early".into(),
        confidence: 0.5,
        start_ms: 0,
        end_ms: 10,
    };
    // To the outsider the meeting does not exist.
    for (client, code) in [(&host, "MEETING_NOT_ACTIVE"), (&outsider, "NOT_FOUND")] {
        let (sender, mut reports) =
            TranscriptSender::new(client, &scheduled, SenderConfig::default()).unwrap();
        let id = sender.send(chunk()).await.unwrap();
        sender.flush().await.unwrap();
        match reports.recv().await.unwrap() {
            SendReport::Failed {
                chunks,
                error,
                attempts,
            } => {
                assert_eq!(error.code(), Some(code), "{error}");
                assert_eq!(attempts, 1, "{code} must not be retried");
                assert_eq!(chunks[0].chunk_id, id);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        sender.close().await.unwrap();
    }
    // A reader who may not read the meeting gets the refusal once, then the stream ends.
    let mut stream = outsider.transcript_stream(&scheduled, 0).unwrap();
    let first = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap();
    assert_eq!(first.unwrap().unwrap_err().code(), Some("NOT_FOUND"));
    assert!(stream.next().await.is_none());
    drop(stream);
    host.close().await;
    outsider.close().await;
    server.shutdown().await;
}
