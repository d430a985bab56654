//! The wire contract of the transcript functions (seed §7): names, arguments, results and
//! limits, shared by the server, which decodes and enforces them, and the client SDK.

use serde::{Deserialize, Serialize};

/// Function names.
pub mod fns {
    pub const INGEST_CHUNK: &str = "transcripts.ingestChunk";
    pub const INGEST_BATCH: &str = "transcripts.ingestBatch";
    pub const STREAM: &str = "transcripts.stream";
    pub const LIST_SEGMENTS: &str = "transcripts.listSegments";
}

/// Most chunks one `transcripts.ingestBatch` call may carry (seed §13: batches ≤ 50).
pub const MAX_BATCH_CHUNKS: usize = 50;
/// Longest chunk text, in chars.
pub const MAX_CHUNK_TEXT_CHARS: usize = 2_000;
/// Longest `chunkId` and `speakerId`, in chars.
pub const MAX_ID_CHARS: usize = 128;
/// Largest stream window.
pub const MAX_STREAM_LIMIT: i64 = 200;
/// Largest page of segments.
pub const MAX_SEGMENT_PAGE: i64 = 100;

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

/// A stored chunk as `transcripts.stream` returns it: the document as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptChunk {
    #[serde(rename = "_id")]
    pub id: String,
    /// When the document was inserted, ms since the epoch (the engine's clock).
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub meeting_id: String,
    /// `startMs` rounded down to its minute (the bucket segments are aggregated by).
    pub bucket_ms: i64,
    pub sequence: i64,
    pub chunk_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_id: Option<String>,
    pub text: String,
    pub confidence: f64,
    pub start_ms: i64,
    pub end_ms: i64,
    /// When the server stored it, ms since the epoch (the function's clock).
    pub created_at: i64,
    /// The participant whose call stored it (absent on chunks stored before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested_by: Option<String>,
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
    /// The users whose words it holds (absent on segments aggregated before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoken_by: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestChunkArgs {
    pub meeting_id: String,
    pub chunk_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_id: Option<String>,
    pub text: String,
    pub confidence: f64,
    pub start_ms: i64,
    pub end_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestBatchArgs {
    pub meeting_id: String,
    pub chunks: Vec<ChunkInput>,
}

/// What `transcripts.ingestChunk` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkResult {
    pub sequence: i64,
    /// True when the chunk id was already stored (a retry); nothing was written for it.
    pub duplicate: bool,
}

/// What `transcripts.ingestBatch` returns: the stored sequence of every chunk, in argument
/// order (a retried chunk's original sequence), and how many were retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    pub sequences: Vec<i64>,
    pub duplicates: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamArgs {
    pub meeting_id: String,
    /// Chunks with a larger sequence are returned; default 0 (from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sequence: Option<i64>,
    /// 1..=200, default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSegmentsArgs {
    pub meeting_id: String,
    /// A previous page's `continueCursor`; absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1..=100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<i64>,
}

/// A page of segments in start-time order.
pub type SegmentPage = super::Page<TranscriptSegment>;
