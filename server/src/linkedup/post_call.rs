//! The post-call jobs `meetings.end` schedules: transcript aggregation (the real one, in
//! `transcripts`) and `insights.generate` (an internal action). Insight generation (AI
//! providers, per-user insights) is not built yet: until it is, the job records in `auditLogs`
//! that it ran for the meeting, which is what the lifecycle tests check.

use std::sync::Arc;

use linkedup_schema::api::MeetingIdArgs;
use linkedup_schema::tables::names::MEETINGS;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use serde::Deserialize;

use super::guards::get_meeting;
use super::{audit, LinkedUpConfig};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;

pub use super::transcripts::fns::AGGREGATE_SEGMENTS as TRANSCRIPTS_AGGREGATE;
pub const INSIGHTS_GENERATE: &str = "insights.generate";
const RECORD_RUN: &str = "postCall.recordRun";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordRunArgs {
    meeting_id: String,
    job: String,
}

/// Audits that `job` ran for the meeting, in the meeting's organisation.
fn record_run(ctx: &mut Ctx<'_, '_>, meeting_id: &str, job: &str) -> FunctionResult<()> {
    let meeting = get_meeting(ctx, meeting_id)?;
    audit::record_in_org(
        ctx,
        meeting.org_id.as_deref(),
        None,
        "meeting",
        meeting_id,
        "job.ran",
        obj! { "job" => job },
    )
}

pub(crate) fn register(f: &mut Functions, _config: &Arc<LinkedUpConfig>) {
    f.mutation(
        RECORD_RUN,
        Visibility::Internal,
        v::object([("meetingId", v::id(MEETINGS)), ("job", v::string())]),
        v::null(),
        |ctx, a: RecordRunArgs| record_run(ctx, &a.meeting_id, &a.job),
    );
    f.action(
        INSIGHTS_GENERATE,
        Visibility::Internal,
        v::object([("meetingId", v::id(MEETINGS))]),
        v::null(),
        |ctx, a: MeetingIdArgs| async move {
            ctx.run_mutation(
                RECORD_RUN,
                obj! { "meetingId" => a.meeting_id, "job" => INSIGHTS_GENERATE },
            )
            .await?;
            Ok(())
        },
    );
}
