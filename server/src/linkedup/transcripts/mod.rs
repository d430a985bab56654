//! Transcripts (seed §7): ingestion of speech-to-text chunks with gap-free per-meeting
//! sequences and idempotent retries (`ingestion`), the resumable sequence-ordered stream and
//! segment listing (`stream`), and aggregation of chunks into segments (`aggregation`).

mod aggregation;
mod ingestion;
mod stream;

use std::sync::Arc;

use query_engine::context::Ctx;
use query_engine::functions::Functions;
use query_engine::schema::{v, Validator};
use query_engine::value::Value;

use linkedup_schema::tables::names::{TRANSCRIPT_SEGMENTS, USERS};

use super::LinkedUpConfig;

pub(crate) use aggregation::aggregated_until;
pub use aggregation::{
    AggregateArgs, AggregateResult, AGGREGATE_BATCH_CHUNKS, SEGMENT_MAX_SPAN_MS,
};
pub(crate) use ingestion::last_sequence;
pub use ingestion::INGEST_ACTION;
pub use linkedup_schema::api::transcripts::{
    BatchResult, ChunkInput, ChunkResult, IngestBatchArgs, IngestChunkArgs, ListSegmentsArgs,
    SegmentPage, StreamArgs, TranscriptChunk, TranscriptSegment, MAX_BATCH_CHUNKS,
    MAX_CHUNK_TEXT_CHARS, MAX_ID_CHARS, MAX_SEGMENT_PAGE, MAX_STREAM_LIMIT,
};

/// Function names: the public ones (from the API contract) and the internal one.
pub mod fns {
    pub use linkedup_schema::api::transcripts::fns::*;
    /// Internal: what `meetings.end` should schedule.
    pub const AGGREGATE_SEGMENTS: &str = "transcripts.aggregateSegments";
}

/// Whose words a stored chunk is: its speaker when that is a user; else (no speaker, or a label
/// of the producer's diarisation, which may be them) the user who stored it. A chunk stored by
/// one participant naming another as its speaker is that other's. Erasure redacts a user's
/// chunks by this, and insights record whom they quote by it.
pub(crate) fn chunk_speaker<'d>(ctx: &Ctx<'_, '_>, chunk: &'d Value) -> Option<&'d str> {
    match chunk.get_path("speakerId").and_then(Value::as_str) {
        Some(s) if ctx.parse_id(USERS, s).is_ok() => Some(s),
        _ => chunk.get_path("ingestedBy").and_then(Value::as_str),
    }
}

/// The fields of one chunk as a producer sends it (`ChunkInput`).
pub(crate) fn chunk_input_fields() -> [(&'static str, Validator); 6] {
    [
        ("chunkId", v::string()),
        ("speakerId", v::optional(v::string())),
        ("text", v::string()),
        ("confidence", v::float64()),
        ("startMs", v::int64()),
        ("endMs", v::int64()),
    ]
}

pub(crate) fn chunk_input_validator() -> Validator {
    v::object(chunk_input_fields())
}

/// A chunk as `transcripts.stream` returns it: the stored document.
pub(crate) fn chunk_validator() -> Validator {
    linkedup_schema::tables::transcripts().stored_document()
}

pub(crate) fn segment_validator() -> Validator {
    v::object([
        ("_id", v::id(TRANSCRIPT_SEGMENTS)),
        ("startMs", v::int64()),
        ("endMs", v::int64()),
        ("speakers", v::array(v::string())),
        ("text", v::string()),
        ("topics", v::array(v::string())),
        ("sentiment", v::optional(v::float64())),
        ("firstSequence", v::optional(v::int64())),
        ("lastSequence", v::optional(v::int64())),
        ("spokenBy", v::optional(v::array(v::id(USERS)))),
    ])
}

/// Registers the transcript functions.
pub fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    ingestion::register(f, config);
    stream::register(f, config);
    aggregation::register(f, config);
}
