//! `transcripts.aggregateSegments` (internal): turns a meeting's chunks into
//! `transcriptSegments` for search and summaries (seed §7), one segment per speaker turn cut
//! to at most a minute. A turn is one producer label (`speakerId`) spoken by one user — the
//! chunk's `chunk_speaker` — and the segment records that user in `spokenBy`, so erasure and
//! insights attribute a segment by the same rule as its chunks.
//!
//! Idempotent and resumable: every segment records the first and last chunk sequence it
//! covers, and a run starts after the highest `lastSequence` stored, so running twice creates
//! nothing twice (two concurrent runs conflict on that read and the committer serialises
//! them). Bounded: a run reads at most `AGGREGATE_BATCH_CHUNKS` chunks and, when it filled its
//! batch, schedules its own continuation. While a meeting is active the last, possibly still
//! growing, turn is held back for a later run.

use std::sync::Arc;

use linkedup_schema::api::MeetingStatus;
use linkedup_schema::tables::names::{MEETINGS, TRANSCRIPTS, TRANSCRIPT_SEGMENTS};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::{chunk_speaker, fns};
use crate::linkedup::guards::get_meeting;
use crate::linkedup::{decode, encode, LinkedUpConfig};

/// Most chunks one run reads.
pub const AGGREGATE_BATCH_CHUNKS: usize = 500;
/// A segment spans at most this much meeting time; a longer turn is cut.
pub const SEGMENT_MAX_SPAN_MS: i64 = 60_000;
/// Longest segment text in chars; a turn with more is cut (bounds the document size).
const SEGMENT_MAX_TEXT_CHARS: usize = 20_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregateArgs {
    pub meeting_id: String,
    /// Start after this sequence if it is beyond what is already aggregated (a continuation
    /// passes its progress; the stored progress wins when it is further).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_sequence: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregateResult {
    pub segments_created: i64,
    /// The last chunk sequence now covered by a segment (0 if none).
    pub last_sequence: i64,
    /// True when a continuation run was scheduled.
    pub continued: bool,
}

/// The fields of a stored chunk aggregation needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    sequence: i64,
    #[serde(default)]
    speaker_id: Option<String>,
    text: String,
    start_ms: i64,
    end_ms: i64,
    /// Whose words it is (`chunk_speaker`), filled in after decoding.
    #[serde(skip)]
    spoken_by: Option<String>,
}

impl Chunk {
    fn read(ctx: &Ctx<'_, '_>, doc: &Value) -> FunctionResult<Self> {
        let mut c: Chunk = decode(doc)?;
        c.spoken_by = chunk_speaker(ctx, doc).map(String::from);
        Ok(c)
    }
}

/// A segment being built.
struct Group {
    speaker: Option<String>,
    spoken_by: Option<String>,
    start_ms: i64,
    end_ms: i64,
    text: String,
    text_chars: usize,
    first_sequence: i64,
    last_sequence: i64,
}

impl Group {
    fn new(c: Chunk) -> Self {
        Group {
            text_chars: c.text.chars().count(),
            speaker: c.speaker_id,
            spoken_by: c.spoken_by,
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            text: c.text,
            first_sequence: c.sequence,
            last_sequence: c.sequence,
        }
    }

    /// Whether `c` continues this turn: same label and same user speaking (two people's
    /// unlabelled chunks are two turns), within the span, within the text bound.
    fn takes(&self, c: &Chunk) -> bool {
        let start = self.start_ms.min(c.start_ms);
        let end = self.end_ms.max(c.end_ms);
        self.speaker == c.speaker_id
            && self.spoken_by == c.spoken_by
            && end - start <= SEGMENT_MAX_SPAN_MS
            && self.text_chars + 1 + c.text.chars().count() <= SEGMENT_MAX_TEXT_CHARS
    }

    fn push(&mut self, c: Chunk) {
        self.start_ms = self.start_ms.min(c.start_ms);
        self.end_ms = self.end_ms.max(c.end_ms);
        self.text_chars += 1 + c.text.chars().count();
        self.text.push(' ');
        self.text.push_str(&c.text);
        self.last_sequence = c.sequence;
    }
}

/// Groups chunks (in sequence order) into turns.
fn group(chunks: Vec<Chunk>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for c in chunks {
        match groups.last_mut() {
            Some(g) if g.takes(&c) => g.push(c),
            _ => groups.push(Group::new(c)),
        }
    }
    groups
}

/// The highest chunk sequence already covered by a segment of `meeting_id`, 0 if none.
pub(crate) fn aggregated_until(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<i64> {
    let last = ctx
        .query(TRANSCRIPT_SEGMENTS, "by_meeting_last_sequence")
        .eq("meetingId", meeting_id)
        .desc()
        .first()?;
    Ok(last
        .and_then(|d| d.get_path("lastSequence").and_then(Value::as_i64))
        .unwrap_or(0))
}

fn aggregate(ctx: &mut Ctx<'_, '_>, a: AggregateArgs) -> FunctionResult<AggregateResult> {
    let meeting = get_meeting(ctx, &a.meeting_id)?;
    let done = aggregated_until(ctx, &a.meeting_id)?;
    let start = done.max(a.after_sequence.unwrap_or(0));
    let rows = ctx
        .query(TRANSCRIPTS, "by_meeting_sequence")
        .eq("meetingId", a.meeting_id.as_str())
        .gt("sequence", start)
        .take(AGGREGATE_BATCH_CHUNKS)?;
    let full = rows.len() >= AGGREGATE_BATCH_CHUNKS;
    let chunks = rows
        .iter()
        .map(|d| Chunk::read(ctx, d))
        .collect::<FunctionResult<Vec<_>>>()?;
    let mut groups = group(chunks);
    // The last turn may continue in chunks not read yet (more in this meeting beyond the batch,
    // or still to be spoken); hold it back unless it is all this run has.
    let more_may_follow = full || meeting.state == MeetingStatus::Active;
    if more_may_follow && !(full && groups.len() == 1) {
        groups.pop();
    }

    let now = ctx.now_ms();
    let mut last_sequence = start;
    for g in &groups {
        let mut doc = obj! {
            "meetingId" => a.meeting_id.as_str(),
            "startMs" => g.start_ms,
            "endMs" => g.end_ms,
            "speakers" => Value::Array(g.speaker.iter().map(|s| Value::from(s.as_str())).collect()),
            "spokenBy" => Value::Array(g.spoken_by.iter().map(|s| Value::from(s.as_str())).collect()),
            "text" => g.text.as_str(),
            "topics" => Value::Array(Vec::new()),
            "createdAt" => now,
            "firstSequence" => g.first_sequence,
            "lastSequence" => g.last_sequence,
        };
        if let Some(o) = doc.as_object_mut() {
            o.retain(|_, v| !matches!(v, Value::Null));
        }
        ctx.insert(TRANSCRIPT_SEGMENTS, doc)?;
        last_sequence = g.last_sequence;
    }
    let continued = full;
    if continued {
        let args = encode(&AggregateArgs {
            meeting_id: a.meeting_id.clone(),
            after_sequence: Some(last_sequence),
        })?;
        ctx.schedule_after(0, fns::AGGREGATE_SEGMENTS, args)?;
    }
    Ok(AggregateResult {
        segments_created: groups.len() as i64,
        last_sequence,
        continued,
    })
}

pub(crate) fn register(f: &mut Functions, _config: &Arc<LinkedUpConfig>) {
    // transcripts.aggregateSegments (internal): see the module comment. Returns
    // {segmentsCreated, lastSequence, continued}. Errors: NOT_FOUND.
    f.mutation(
        fns::AGGREGATE_SEGMENTS,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("afterSequence", v::optional(v::int64())),
        ]),
        v::object([
            ("segmentsCreated", v::int64()),
            ("lastSequence", v::int64()),
            ("continued", v::boolean()),
        ]),
        aggregate,
    );
}
