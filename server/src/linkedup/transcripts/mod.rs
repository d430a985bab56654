//! Transcripts (seed §7): ingestion of speech-to-text chunks with gap-free per-meeting
//! sequences and idempotent retries (`ingestion`), the resumable sequence-ordered stream and
//! segment listing (`stream`), and aggregation of chunks into segments (`aggregation`).

mod aggregation;
mod ingestion;
mod stream;

use std::sync::Arc;

use query_engine::functions::Functions;
use query_engine::schema::{v, Validator};
use serde::{Deserialize, Serialize};

use linkedup_schema::tables::names::{TRANSCRIPTS, TRANSCRIPT_SEGMENTS};

use super::LinkedUpConfig;

pub use aggregation::{
    AggregateArgs, AggregateResult, AGGREGATE_BATCH_CHUNKS, SEGMENT_MAX_SPAN_MS,
};
pub use ingestion::{
    BatchResult, ChunkResult, IngestBatchArgs, IngestChunkArgs, INGEST_ACTION, MAX_BATCH_CHUNKS,
    MAX_CHUNK_TEXT_CHARS,
};
pub use stream::{ListSegmentsArgs, SegmentPage, StreamArgs, MAX_SEGMENT_PAGE, MAX_STREAM_LIMIT};

/// Function names.
pub mod fns {
    pub const INGEST_CHUNK: &str = "transcripts.ingestChunk";
    pub const INGEST_BATCH: &str = "transcripts.ingestBatch";
    pub const STREAM: &str = "transcripts.stream";
    pub const LIST_SEGMENTS: &str = "transcripts.listSegments";
    /// Internal: what `meetings.end` should schedule.
    pub const AGGREGATE_SEGMENTS: &str = "transcripts.aggregateSegments";
}

/// One chunk as a producer sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkInput {
    /// The producer's id for the chunk; a retry with the same id stores nothing twice.
    pub chunk_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_id: Option<String>,
    pub text: String,
    /// 0.0..=1.0.
    pub confidence: f64,
    /// Offset of the chunk's start in the meeting, ms, non-negative.
    pub start_ms: i64,
    /// Offset of the chunk's end, ms, at least `start_ms`.
    pub end_ms: i64,
}

/// A stored chunk as `transcripts.stream` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptChunk {
    #[serde(rename = "_id")]
    pub id: String,
    pub sequence: i64,
    pub chunk_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_id: Option<String>,
    pub text: String,
    pub confidence: f64,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A stored segment as `transcripts.listSegments` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptSegment {
    #[serde(rename = "_id")]
    pub id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub speakers: Vec<String>,
    pub text: String,
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentiment: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sequence: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<i64>,
}

pub(crate) fn chunk_input_validator() -> Validator {
    v::object([
        ("chunkId", v::string()),
        ("speakerId", v::optional(v::string())),
        ("text", v::string()),
        ("confidence", v::float64()),
        ("startMs", v::int64()),
        ("endMs", v::int64()),
    ])
}

pub(crate) fn chunk_validator() -> Validator {
    v::object([
        ("_id", v::id(TRANSCRIPTS)),
        ("sequence", v::int64()),
        ("chunkId", v::string()),
        ("speakerId", v::optional(v::string())),
        ("text", v::string()),
        ("confidence", v::float64()),
        ("startMs", v::int64()),
        ("endMs", v::int64()),
    ])
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
    ])
}

/// Registers the transcript functions.
pub fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    ingestion::register(f, config);
    stream::register(f, config);
    aggregation::register(f, config);
}
