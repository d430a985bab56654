//! `transcripts.stream` and `transcripts.listSegments`: what a meeting's participants read.
//!
//! The stream is a window of at most `limit` chunks after `fromSequence`, in sequence order.
//! It depends only on the data (never on the clock: the seed's `Date.now()` bucket scan would
//! make a subscription's result change without any write), and its read set is exactly the
//! index range it returned plus the next position, so a subscriber whose window is full is not
//! re-run by later chunks, and chunks of other meetings never re-run it. A client resumes after
//! a reconnect, or moves on when its window fills, by subscribing from the last sequence it
//! holds. Both are registered as shared queries: subscribers with identical arguments share
//! one execution once each has passed the access check.

use std::sync::Arc;

use linkedup_schema::api::Role;
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{MEETINGS, TRANSCRIPTS, TRANSCRIPT_SEGMENTS};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::Functions;
use query_engine::schema::v;
use query_engine::value::Value;

use super::{
    chunk_validator, fns, segment_validator, ListSegmentsArgs, SegmentPage, StreamArgs,
    MAX_SEGMENT_PAGE, MAX_STREAM_LIMIT,
};
use crate::linkedup::guards::assert_meeting_access;
use crate::linkedup::{audited, decoded_page, limit_arg, LinkedUpConfig};

const DEFAULT_SEGMENT_PAGE: i64 = 50;

/// Returns `Vec<TranscriptChunk>` as a value: the stored chunk documents themselves. They are
/// not projected: every chunk written re-runs this on the subscription worker, over the whole
/// window, and copying each document to drop its stored-only fields took a quarter of the
/// worker's CPU (1,000 meetings × 5 subscribers at 3,000 writes/s); left shared, an unchanged
/// chunk also compares equal to the previous result's by pointer in the diff.
fn stream(ctx: &mut Ctx<'_, '_>, a: StreamArgs) -> FunctionResult<Value> {
    let from = a.from_sequence.unwrap_or(0);
    if from < 0 {
        return Err(invalid_field("fromSequence", "must not be negative"));
    }
    let limit = limit_arg("limit", a.limit, MAX_STREAM_LIMIT, MAX_STREAM_LIMIT)?;
    let chunks = ctx
        .query(TRANSCRIPTS, "by_meeting_sequence")
        .eq("meetingId", a.meeting_id.as_str())
        .gt("sequence", from)
        .take(limit)?;
    Ok(Value::Array(chunks))
}

fn list_segments(ctx: &mut Ctx<'_, '_>, a: ListSegmentsArgs) -> FunctionResult<SegmentPage> {
    let size = limit_arg(
        "pageSize",
        a.page_size,
        DEFAULT_SEGMENT_PAGE,
        MAX_SEGMENT_PAGE,
    )?;
    let query = ctx
        .query(TRANSCRIPT_SEGMENTS, "by_meeting_time")
        .eq("meetingId", a.meeting_id.as_str());
    decoded_page(query, a.cursor.as_deref(), size)
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // transcripts.stream: up to `limit` chunks after `fromSequence`, in sequence order; for
    // the meeting's participants. Errors: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND,
    // FORBIDDEN.
    f.shared_query(
        fns::STREAM,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("fromSequence", v::optional(v::int64())),
            ("limit", v::optional(v::int64())),
        ]),
        v::array(chunk_validator()),
        audited(config, fns::STREAM, |ctx, a: StreamArgs| {
            assert_meeting_access(ctx, &a.meeting_id, Role::Participant).map(|_| ())
        }),
        stream,
    );

    // transcripts.listSegments: a page of the meeting's segments in start-time order; for
    // its participants. Errors: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN.
    f.shared_query(
        fns::LIST_SEGMENTS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("cursor", v::optional(v::string())),
            ("pageSize", v::optional(v::int64())),
        ]),
        v::object([
            ("page", v::array(segment_validator())),
            ("continueCursor", v::optional(v::string())),
            ("isDone", v::boolean()),
        ]),
        audited(config, fns::LIST_SEGMENTS, |ctx, a: ListSegmentsArgs| {
            assert_meeting_access(ctx, &a.meeting_id, Role::Participant).map(|_| ())
        }),
        list_segments,
    );
}
