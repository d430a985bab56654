//! Data retention (seed §20, "initial defaults; confirm with product/legal"): documents of the
//! append-only tables are deleted once they are older than their table's age, judged by
//! creation time through the built-in `by_creation_time` index, in bounded batches.
//!
//! `retention.purge` (internal, for an hourly cron) without a table schedules one run per
//! table of the policy; a run with a table deletes up to `PURGE_BATCH` of its documents
//! created before `now - age`, records how many in the audit log, and schedules itself again,
//! from where it stopped, while batches come back full. Its read is the range below the cutoff, so it does not
//! conflict with new writes, except that for an old transcript chunk of a meeting still active
//! it also reads the meeting and its newest chunk (see `keep_last_chunk_of_active_meeting`);
//! ingestion there meanwhile makes the committer re-run the purge. An old record of a removal
//! from a meeting is kept while the meeting may hold the removed user's data
//! (`keep_removal_while_meeting_holds_data`).
//!
//! Not here: noteOps (90 days) are compacted by `notes.compact`, which keeps the note whole;
//! live records that are updated in place (meetings, notes, users, connections, the matching
//! queue) have no age by creation, and deleting them by it could drop something still in
//! use; those wait for deletion on request (seed: "user-initiated deletion"). Finished
//! matching queue entries are purged by `matching.purge`, by the end of their window.

use std::sync::Arc;

use linkedup_schema::api::{Meeting, MeetingStatus};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{
    AUDIT_LOGS, FORMER_PARTICIPANTS, INSIGHTS, MATCHING_ANALYTICS, MEETINGS, MESSAGES, PROMPTS,
    TRANSCRIPTS, TRANSCRIPT_SEGMENTS,
};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::schema::{v, BY_CREATION_TIME};
use query_engine::value::{Object, Value};
use serde::{Deserialize, Serialize};

use super::transcripts::last_sequence;
use super::{audit, decode, encode, keep_none, purge_below, Keep, LinkedUpConfig};

/// The function's name.
pub const PURGE: &str = "retention.purge";
/// Most documents one run deletes; a run that deletes this many continues itself.
pub const PURGE_BATCH: usize = 500;

const DAY_MS: i64 = 24 * 60 * 60 * 1_000;

/// How long each table's documents are kept, by creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// (table, maximum age in ms).
    pub max_age_ms: Vec<(String, i64)>,
}

impl Default for RetentionPolicy {
    /// The seed's defaults: raw transcript chunks 90 days (the upper end of its 30–90),
    /// messages 90 days; segments, prompts, insights and audit logs a year; matching outcomes
    /// and records of removals from meetings a year.
    fn default() -> Self {
        let ages = [
            (TRANSCRIPTS, 90 * DAY_MS),
            (MESSAGES, 90 * DAY_MS),
            (TRANSCRIPT_SEGMENTS, 365 * DAY_MS),
            (PROMPTS, 365 * DAY_MS),
            (INSIGHTS, 365 * DAY_MS),
            (AUDIT_LOGS, 365 * DAY_MS),
            // Matching outcomes: the seed gives no period; a year, like prompts and insights.
            (MATCHING_ANALYTICS, 365 * DAY_MS),
            // Records of removals from meetings: a year, and past it for as long as the
            // meeting may hold data they lead erasure to
            // (`keep_removal_while_meeting_holds_data`).
            (FORMER_PARTICIPANTS, 365 * DAY_MS),
        ];
        RetentionPolicy {
            max_age_ms: ages
                .into_iter()
                .map(|(table, age)| (table.to_string(), age))
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeArgs {
    /// The table to purge; absent to schedule a run for every table of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Where the previous batch of this table's walk ended (set by the job itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeResult {
    /// Runs scheduled, one per table (without a table).
    pub scheduled: i64,
    /// Documents deleted (with a table).
    pub deleted: i64,
    /// True when the run scheduled its own continuation.
    pub continued: bool,
}

fn purge(
    ctx: &mut Ctx<'_, '_>,
    policy: &RetentionPolicy,
    a: PurgeArgs,
) -> FunctionResult<PurgeResult> {
    let Some(table) = a.table else {
        for (table, _) in &policy.max_age_ms {
            let args = encode(&PurgeArgs {
                table: Some(table.clone()),
                after: None,
            })?;
            ctx.schedule_after(0, PURGE, args)?;
        }
        return Ok(PurgeResult {
            scheduled: policy.max_age_ms.len() as i64,
            ..PurgeResult::default()
        });
    };
    let Some(&(_, age)) = policy.max_age_ms.iter().find(|(t, _)| *t == table) else {
        return Err(invalid_field(
            "table",
            format!("{table:?} has no retention period"),
        ));
    };
    let cutoff = ctx.now_ms().saturating_sub(age);
    let mut again = Object::new();
    again.insert("table".into(), table.as_str().into());
    let keep: Keep = match table.as_str() {
        TRANSCRIPTS => keep_last_chunk_of_active_meeting,
        FORMER_PARTICIPANTS => keep_removal_while_meeting_holds_data,
        _ => keep_none,
    };
    let (deleted, continued) = purge_below(
        ctx,
        (&table, BY_CREATION_TIME, "_creationTime"),
        cutoff,
        PURGE_BATCH,
        keep,
        a.after.as_deref(),
        (PURGE, again),
    )?;
    record_purged(ctx, &table, deleted as i64, ("createdBeforeMs", cutoff))?;
    Ok(PurgeResult {
        deleted: deleted as i64,
        continued,
        ..PurgeResult::default()
    })
}

/// A meeting's sequence continues from its highest stored chunk, so the newest chunk of a
/// meeting that can still take chunks (an active one) is kept however old: purging it would
/// start the sequence again at 1. Once the meeting has ended nothing is kept.
fn keep_last_chunk_of_active_meeting(ctx: &mut Ctx<'_, '_>, chunk: &Value) -> FunctionResult<bool> {
    let Some(meeting_id) = chunk.get_path("meetingId").and_then(Value::as_str) else {
        return Ok(false);
    };
    let active = ctx
        .get(MEETINGS, meeting_id)?
        .and_then(|m| {
            m.get_path("state")
                .and_then(Value::as_str)
                .map(|s| s == MeetingStatus::Active.as_str())
        })
        .unwrap_or(false);
    if !active {
        return Ok(false);
    }
    let sequence = chunk.get_path("sequence").and_then(Value::as_i64);
    Ok(sequence == Some(last_sequence(ctx, meeting_id)?))
}

/// What an erasure goes through in each meeting of the user's (`erasure::job`): the meeting's
/// documents of these tables, by these indexes (led by `meetingId`).
const MEETING_DATA: [(&str, &str); 4] = [
    (TRANSCRIPTS, "by_meeting_sequence"),
    (TRANSCRIPT_SEGMENTS, "by_meeting"),
    (INSIGHTS, "by_meeting"),
    (PROMPTS, "by_meeting_type"),
];

/// A record of a removal from a meeting (`formerParticipants`) is how the removed user's
/// erasure finds the meeting, so it is kept, however old, while the meeting is open (it may
/// still gather data naming them) or holds anything of `MEETING_DATA`: segments and insights
/// are written when the meeting ends, which may be long after the removal, and each is kept a
/// year from then. Reads the meeting and at most one document of each of those tables.
fn keep_removal_while_meeting_holds_data(
    ctx: &mut Ctx<'_, '_>,
    record: &Value,
) -> FunctionResult<bool> {
    let Some(meeting_id) = record.get_path("meetingId").and_then(Value::as_str) else {
        return Ok(false);
    };
    let open = ctx
        .get(MEETINGS, meeting_id)?
        .map(|d| decode::<Meeting>(&d))
        .transpose()?
        .is_some_and(|m| m.state.is_open());
    if open {
        return Ok(true);
    }
    for (table, index) in MEETING_DATA {
        let held = ctx
            .query(table, index)
            .eq("meetingId", meeting_id)
            .first()?;
        if held.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // retention.purge (internal, for an hourly cron): see the module comment. Returns
    // {scheduled, deleted, continued}. Errors: VALIDATION_ERROR (a table without a period).
    let policy = config.retention.clone();
    f.mutation(
        PURGE,
        Visibility::Internal,
        v::object([
            ("table", v::optional(v::string())),
            ("after", v::optional(v::string())),
        ]),
        v::object([
            ("scheduled", v::int64()),
            ("deleted", v::int64()),
            ("continued", v::boolean()),
        ]),
        move |ctx, a: PurgeArgs| purge(ctx, &policy, a),
    );
}
/// Audits a retention purge that deleted `deleted` (> 0) documents of `table`, with the
/// cutoff it applied (`(field, ms)`, e.g. `("createdBeforeMs", cutoff)`).
pub(crate) fn record_purged(
    ctx: &mut Ctx<'_, '_>,
    table: &str,
    deleted: i64,
    (cutoff_field, cutoff): (&str, i64),
) -> FunctionResult<()> {
    if deleted == 0 {
        return Ok(());
    }
    let mut detail = Object::new();
    detail.insert("deleted".into(), deleted.into());
    detail.insert(cutoff_field.into(), cutoff.into());
    audit::record_in_org(
        ctx,
        None,
        None,
        "table",
        table,
        "retention.purged",
        Value::from(detail),
    )
}
