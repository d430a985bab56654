//! Refused note edits (`notes.applyOperation`): one whose outcome is known without the op
//! history is refused before any op is read, and every refusal counts against its editor's
//! note-edit rate limit like an applied edit, so repeating refused edits ends in
//! `RATE_LIMITED`.

mod linkedup_common;

use linkedup_common::*;
use linkedup_schema::api::notes::MAX_NOTE_CHARS;
use linkedup_schema::ot::TextOperation;
use linkedup_server::linkedup::notes::{fns, NotesConfig};
use linkedup_server::linkedup::{LinkedUpConfig, RateLimit, RateLimitConfig};
use query_engine::engine::EngineConfig;
use query_engine::identity::Identity;
use query_engine::json::to_value;
use query_engine::obj;
use query_engine::value::Value;

/// The rate limiter's action name of note edits.
const APPLY_ACTION: &str = "notes.applyOperation";

fn apply_args(meeting: &str, base: i64, op: &TextOperation, client: &str, seq: i64) -> Value {
    obj! {
        "meetingId" => meeting,
        "baseVersion" => base,
        "op" => to_value(op).unwrap(),
        "clientId" => client,
        "clientSeq" => seq,
    }
}

fn int(v: &Value, field: &str) -> i64 {
    v.get_path(field).and_then(Value::as_i64).unwrap()
}

/// `who` appends `n` one-char edits to the (empty) note of `w.meeting`.
async fn append(w: &World, who: &Identity, n: i64) {
    for i in 0..n {
        let op = TextOperation::new().retain(i as u64).insert("a");
        w.env
            .m(
                fns::APPLY_OPERATION,
                apply_args(&w.meeting, i, &op, "appender", i + 1),
                Some(who),
            )
            .await
            .unwrap();
    }
}

/// The calls of `notes.applyOperation` counted for `user_id` in the current window.
async fn counted(w: &World, user_id: &str) -> i64 {
    w.env
        .all("rateLimitWindows")
        .await
        .iter()
        .filter(|d| {
            d.get_path("action") == Some(&Value::from(APPLY_ACTION))
                && d.get_path("userId") == Some(&Value::from(user_id))
        })
        .map(|d| {
            let past: i64 = d
                .get_path("counts")
                .and_then(Value::as_array)
                .unwrap()
                .iter()
                .map(|c| c.as_i64().unwrap())
                .sum();
            past + int(d, "currentCount")
        })
        .sum()
}

/// Refused edits of every kind count once each against the limit: after `MAX - 1` of them
/// one valid edit still fits, and the next — valid too — is `RATE_LIMITED`. (Before, a
/// refused edit committed nothing, its count included, so they could be repeated without
/// end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_edits_count_against_the_rate_limit() {
    const MAX: i64 = 6;
    let w = world(LinkedUpConfig {
        rate_limits: RateLimitConfig {
            notes_apply: RateLimit {
                max: MAX,
                window_ms: 60_000,
            },
            ..RateLimitConfig::default()
        },
        // Two of alice's one-char edits weigh more than this: an edit based before them is
        // too far behind.
        notes: NotesConfig {
            max_transform_weight: 20,
        },
        ..LinkedUpConfig::default()
    })
    .await;
    append(&w, &w.alice, 3).await;
    let refusals = [
        // Behind more op weight than a transform may read.
        (0, TextOperation::new().insert("b"), "CONFLICT"),
        // Based on a version the note has not reached.
        (
            5,
            TextOperation::new().retain(3).insert("b"),
            "VALIDATION_ERROR",
        ),
        // Built for a document of another length than the note at its base.
        (
            3,
            TextOperation::new().retain(7).insert("b"),
            "VALIDATION_ERROR",
        ),
        // Would take the note past its length limit.
        (
            3,
            TextOperation::new()
                .retain(3)
                .insert(&"b".repeat(MAX_NOTE_CHARS as usize)),
            "VALIDATION_ERROR",
        ),
        // Built for a document longer than any note.
        (
            3,
            TextOperation::new().retain(MAX_NOTE_CHARS + 1),
            "VALIDATION_ERROR",
        ),
    ];
    assert_eq!(refusals.len() as i64, MAX - 1);
    for (i, (base, op, code)) in refusals.iter().enumerate() {
        let seq = i as i64 + 1;
        let e = w
            .env
            .m(
                fns::APPLY_OPERATION,
                apply_args(&w.meeting, *base, op, "bob", seq),
                Some(&w.bob),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, *code, "refusal {i}: {e}");
    }
    assert_eq!(
        counted(&w, &w.bob_id).await,
        MAX - 1,
        "one count per refusal"
    );

    let valid = |seq: i64| {
        let op = TextOperation::new().retain(3).insert("b");
        apply_args(&w.meeting, 3, &op, "bob", seq)
    };
    let r = w
        .env
        .m(fns::APPLY_OPERATION, valid(10), Some(&w.bob))
        .await
        .unwrap();
    assert_eq!(int(&r, "version"), 4);
    let e = w
        .env
        .m(fns::APPLY_OPERATION, valid(11), Some(&w.bob))
        .await
        .unwrap_err();
    assert_eq!(e.code, "RATE_LIMITED", "{e}");
    assert_eq!(
        counted(&w, &w.bob_id).await,
        MAX,
        "a RATE_LIMITED call is not counted"
    );
    // alice's own count is her three edits.
    assert_eq!(counted(&w, &w.alice_id).await, 3);
}

/// An edit that would take the note past its length limit whatever was committed since its
/// base, or one built for a longer document than a note may hold, is refused before the op
/// history is read: the note's history here is longer than a transaction may read, and each
/// gets its own refusal, not the read limit's (nor a mismatch found by the transform).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_too_long_for_the_note_is_refused_without_reading_the_ops() {
    const MAX_READS: usize = 48;
    let mut engine = EngineConfig::default();
    engine.committer.durable = false;
    engine.limits.max_documents_read = MAX_READS;
    let w = world_with(LinkedUpConfig::default(), engine).await;
    let history = MAX_READS as i64 + 8;
    append(&w, &w.alice, history).await;

    let too_long = TextOperation::new().insert(&"b".repeat(MAX_NOTE_CHARS as usize));
    let e = w
        .env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&w.meeting, 0, &too_long, "bob", 1),
            Some(&w.bob),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(
        e.message.contains("would have at least"),
        "refused after reading the ops: {e}"
    );

    let too_wide = TextOperation::new().retain(MAX_NOTE_CHARS + 1).insert("b");
    let e = w
        .env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&w.meeting, 0, &too_wide, "bob", 2),
            Some(&w.bob),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("a note has at most"), "{e}");

    // An edit from the same base that fits is transformed past the whole history, so it does
    // read it (and here runs into the read limit): the refusal above read none of it.
    let fits = TextOperation::new().insert("b");
    let e = w
        .env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&w.meeting, 0, &fits, "bob", 3),
            Some(&w.bob),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.data.get_path("limit"),
        Some(&Value::from("documentsRead")),
        "{e}"
    );
}

/// A retransmission is answered from its stored record even when the op, as resent, breaks the
/// per-op limits: the editor transforms its op in flight past remote ops, so the op it resends
/// after a reconnect may have grown past them, and the first send may have committed. (Before,
/// the limits were checked first: the resend was refused and the editor reloaded the note,
/// dropping its unconfirmed edits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmission_over_the_op_limits_is_answered_as_the_first_send() {
    let w = world(LinkedUpConfig::default()).await;
    append(&w, &w.alice, 1).await;
    let mut grown = TextOperation::new();
    for _ in 0..600 {
        grown = grown.retain(1).insert("x");
    }
    let r = w
        .env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&w.meeting, 0, &grown, "appender", 1),
            Some(&w.alice),
        )
        .await
        .unwrap();
    assert_eq!(int(&r, "version"), 1);
    // A new op over the limits is still refused.
    let e = w
        .env
        .m(
            fns::APPLY_OPERATION,
            apply_args(&w.meeting, 1, &grown, "appender", 2),
            Some(&w.alice),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR", "{e}");
}
