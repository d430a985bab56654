//! `transcripts.ingestChunk` / `transcripts.ingestBatch`: validate, check access and the
//! meeting's state, rate-limit per user, then store each new chunk under the meeting's next
//! sequence number.
//!
//! Sequences are gap-free and unique per meeting without any counter document: a call reads
//! the meeting's highest sequence through `by_meeting_sequence` (descending, first row). That
//! read covers only "this meeting, from its last chunk on", so it conflicts with ingestion into
//! the same meeting and nothing else; the committer re-executes a conflicting call on the
//! latest state, so concurrent producers serialise per meeting and never see `CONFLICT`.
//! A chunk's `chunkId` is looked up first (`by_meeting_chunk`): a retried chunk returns its
//! stored sequence, and a call made only of retries reads no sequence and conflicts with
//! nothing but itself.

use std::sync::Arc;

use linkedup_schema::api::{MeetingStatus, Role};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{MEETINGS, TRANSCRIPTS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;

use super::{
    chunk_input_fields, chunk_input_validator, fns, BatchResult, ChunkInput, ChunkResult,
    IngestBatchArgs, IngestChunkArgs, MAX_BATCH_CHUNKS, MAX_CHUNK_TEXT_CHARS, MAX_ID_CHARS,
};
use crate::linkedup::erasure::REDACTED;
use crate::linkedup::guards::{assert_meeting_access, being_erased, find_participant};
use crate::linkedup::rate_limit::check_and_consume_in;
use crate::linkedup::{audited, check_text, LinkedUpConfig};

/// Chunks are bucketed by the minute of their start.
pub const BUCKET_MS: i64 = 60_000;
/// The rate limiter's action name for both ingest functions.
pub const INGEST_ACTION: &str = "transcripts.ingest";
/// Checks one chunk's fields; `path` names it in errors (`chunks[3]`, or empty for
/// `ingestChunk`'s top-level fields).
fn check_chunk(path: &str, c: &ChunkInput) -> FunctionResult<()> {
    let field = |name: &str| field_path(path, name);
    check_text(&field("chunkId"), &c.chunk_id, 1, MAX_ID_CHARS)?;
    if let Some(s) = &c.speaker_id {
        check_text(&field("speakerId"), s, 1, MAX_ID_CHARS)?;
    }
    check_text(&field("text"), &c.text, 1, MAX_CHUNK_TEXT_CHARS)?;
    if !(0.0..=1.0).contains(&c.confidence) {
        return Err(invalid_field(
            &field("confidence"),
            format!("must be between 0 and 1, got {}", c.confidence),
        ));
    }
    if c.start_ms < 0 {
        return Err(invalid_field(&field("startMs"), "must not be negative"));
    }
    if c.start_ms > c.end_ms {
        return Err(invalid_field(
            &field("startMs"),
            format!("must not be after endMs ({} > {})", c.start_ms, c.end_ms),
        ));
    }
    Ok(())
}

/// A chunk's field as errors name it: `chunks[3].text` in a batch, `text` alone when `path`
/// is empty (`ingestChunk`'s top-level fields).
fn field_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Where `ingest`'s chunk `i` is in the arguments: `chunks[i]` in a batch, the top level else.
fn chunk_path(batch: bool, i: usize) -> String {
    if batch {
        format!("chunks[{i}]")
    } else {
        String::new()
    }
}

fn int_field(doc: &Value, field: &str) -> FunctionResult<i64> {
    doc.get_path(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| ErrorCode::Internal.err(format!("stored chunk without {field}")))
}

/// The highest sequence stored for `meeting_id`, 0 if none.
pub(crate) fn last_sequence(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<i64> {
    let last = ctx
        .query(TRANSCRIPTS, "by_meeting_sequence")
        .eq("meetingId", meeting_id)
        .desc()
        .first()?;
    last.map(|d| int_field(&d, "sequence"))
        .transpose()
        .map(|s| s.unwrap_or(0))
}

/// A `speakerId` is the producer's label for who spoke (a diarisation label, or a user id).
/// One that is a user id must name a participant of the meeting: segments, insights and
/// erasure take it as who said the text, so a participant cannot put words in the mouth of
/// someone outside the meeting. The caller needs no read (their access was checked).
/// Returns whether the speaker is a user whose erasure was requested: their words are then
/// not stored (the erasure job may already have passed this meeting), as the job would have
/// redacted them.
fn check_speaker(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    caller: &str,
    speaker: &str,
    field: impl Fn() -> String,
) -> FunctionResult<bool> {
    if speaker == caller || ctx.parse_id(USERS, speaker).is_err() {
        return Ok(false);
    }
    if find_participant(ctx, meeting_id, speaker)?.is_none() {
        return Err(invalid_field(
            &field(),
            "names a user who is not a participant of this meeting",
        ));
    }
    being_erased(ctx, speaker)
}

/// Guard, state check, rate limit, then stores the chunks. Returns (sequence, duplicate) per
/// chunk in argument order.
fn ingest(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    meeting_id: &str,
    chunks: &[ChunkInput],
    batch: bool,
) -> FunctionResult<Vec<(i64, bool)>> {
    let access = assert_meeting_access(ctx, meeting_id, Role::Participant)?;
    if access.meeting.state != MeetingStatus::Active {
        return Err(ErrorCode::MeetingNotActive.err_with(
            format!(
                "meeting {meeting_id} is {}, transcripts are taken only while it is active",
                access.meeting.state.as_str()
            ),
            obj! { "meetingId" => meeting_id, "state" => access.meeting.state.as_str() },
        ));
    }
    check_and_consume_in(
        ctx,
        &config.rate_limits,
        &access.user.id,
        INGEST_ACTION,
        config.rate_limits.transcripts_ingest,
        config.rate_limits.ingest_counters,
    )?;

    let path = |i: usize, name: &str| field_path(&chunk_path(batch, i), name);
    let now = ctx.now_ms();
    let mut next: Option<i64> = None;
    let mut out = Vec::with_capacity(chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        // Also finds a chunk stored earlier in this call (reads see the call's own writes).
        let existing = ctx
            .query(TRANSCRIPTS, "by_meeting_chunk")
            .eq("meetingId", meeting_id)
            .eq("chunkId", c.chunk_id.as_str())
            .first()?;
        if let Some(doc) = existing {
            // A retry answers with the stored sequence, but only to the producer that stored
            // it: another participant's chunk id is not theirs to be told "stored".
            let stored_by = doc.get_path("ingestedBy").and_then(Value::as_str);
            if stored_by.is_some_and(|by| by != access.user.id) {
                return Err(invalid_field(
                    &path(i, "chunkId"),
                    "is the id of another producer's chunk; chunk ids must be unique per meeting",
                ));
            }
            out.push((int_field(&doc, "sequence")?, true));
            continue;
        }
        let erased = match &c.speaker_id {
            Some(speaker) => check_speaker(ctx, meeting_id, &access.user.id, speaker, || {
                path(i, "speakerId")
            })?,
            None => false,
        };
        let sequence = match next {
            Some(n) => n,
            None => last_sequence(ctx, meeting_id)? + 1,
        };
        next = Some(sequence + 1);
        let mut doc = obj! {
            "meetingId" => meeting_id,
            "bucketMs" => c.start_ms - c.start_ms.rem_euclid(BUCKET_MS),
            "sequence" => sequence,
            "chunkId" => c.chunk_id.as_str(),
            "text" => if erased { REDACTED } else { c.text.as_str() },
            "confidence" => c.confidence,
            "startMs" => c.start_ms,
            "endMs" => c.end_ms,
            "createdAt" => now,
            "ingestedBy" => access.user.id.as_str(),
        };
        if let (Some(speaker), Some(o), false) = (&c.speaker_id, doc.as_object_mut(), erased) {
            o.insert("speakerId".into(), speaker.as_str().into());
        }
        ctx.insert(TRANSCRIPTS, doc)?;
        out.push((sequence, false));
    }
    Ok(out)
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // transcripts.ingestChunk: one chunk into an active meeting the caller takes part in.
    // Returns {sequence, duplicate}.
    // Errors: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN, MEETING_NOT_ACTIVE,
    // RATE_LIMITED.
    let cfg = config.clone();
    f.mutation(
        fns::INGEST_CHUNK,
        Visibility::Public,
        v::object(
            [("meetingId", v::id(MEETINGS))]
                .into_iter()
                .chain(chunk_input_fields()),
        ),
        v::object([("sequence", v::int64()), ("duplicate", v::boolean())]),
        audited(config, fns::INGEST_CHUNK, move |ctx, a: IngestChunkArgs| {
            let chunk = ChunkInput {
                chunk_id: a.chunk_id,
                speaker_id: a.speaker_id,
                text: a.text,
                confidence: a.confidence,
                start_ms: a.start_ms,
                end_ms: a.end_ms,
            };
            check_chunk(&chunk_path(false, 0), &chunk)?;
            let stored = ingest(
                ctx,
                &cfg,
                &a.meeting_id,
                std::slice::from_ref(&chunk),
                false,
            )?;
            let (sequence, duplicate) = stored
                .first()
                .copied()
                .ok_or_else(|| ErrorCode::Internal.err("ingest stored no chunk"))?;
            Ok(ChunkResult {
                sequence,
                duplicate,
            })
        }),
    );

    // transcripts.ingestBatch: 1..=50 chunks, stored in argument order. Returns
    // {sequences, duplicates}. Errors as ingestChunk; a field error names `chunks[i].field`.
    let cfg = config.clone();
    f.mutation(
        fns::INGEST_BATCH,
        Visibility::Public,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("chunks", v::array(chunk_input_validator())),
        ]),
        v::object([
            ("sequences", v::array(v::int64())),
            ("duplicates", v::int64()),
        ]),
        audited(config, fns::INGEST_BATCH, move |ctx, a: IngestBatchArgs| {
            if a.chunks.is_empty() || a.chunks.len() > MAX_BATCH_CHUNKS {
                return Err(invalid_field(
                    "chunks",
                    format!(
                        "must hold 1 to {MAX_BATCH_CHUNKS} chunks, got {}",
                        a.chunks.len()
                    ),
                ));
            }
            for (i, c) in a.chunks.iter().enumerate() {
                check_chunk(&chunk_path(true, i), c)?;
            }
            let stored = ingest(ctx, &cfg, &a.meeting_id, &a.chunks, true)?;
            Ok(BatchResult {
                duplicates: stored.iter().filter(|(_, dup)| *dup).count() as i64,
                sequences: stored.into_iter().map(|(s, _)| s).collect(),
            })
        }),
    );
}
