//! Retention of notes (seed §20: note ops 90 days, notes a year): `notes.compact` deletes a
//! meeting's oldest ops and, once the note itself has expired, the note; `notes.compactAll`
//! (for a daily cron) finds the meetings that have either.
//!
//! While the note is kept its text is materialised in `meetingNotes`, so deleting ops loses
//! nothing. Only a prefix of the log is deleted (walking in sequence order and stopping at the
//! first op still inside the retention), so the retained ops are always exactly those after
//! `minRetainedVersion`, which the note records; an edit or catch-up based on an older version
//! gets CONFLICT and resyncs.
//!
//! A note expires a year after its last edit (`updatedAt`), not after its creation: a note
//! still being worked on is kept. Only the note of a meeting that is over (or gone) expires,
//! and only once no op of it is left — every op is older than its last edit, so by then the op
//! retention has taken them all; the deletion is audited like the other retention purges.

use std::sync::Arc;

use linkedup_schema::api::Meeting;
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{MEETINGS, MEETING_NOTES, NOTE_OPS};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, BY_CREATION_TIME};
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::fns;
use super::operations::load_note;
use crate::linkedup::retention::record_purged;
use crate::linkedup::{decode, encode, fields, id_of, LinkedUpConfig};

/// How long committed ops are kept: 90 days.
pub const NOTE_OPS_RETENTION_MS: i64 = 90 * 24 * 60 * 60 * 1_000;
/// How long a note is kept after its last edit, once its meeting is over: a year.
pub const NOTE_RETENTION_MS: i64 = 365 * 24 * 60 * 60 * 1_000;
/// Most ops one `notes.compact` run deletes; a run that deletes this many continues itself.
const COMPACT_BATCH: usize = 1_000;
/// Ops read per step while looking for the first one inside the retention.
const COMPACT_STEP: usize = 100;
/// Notes one `notes.compactAll` run looks at; it continues itself over the rest.
const COMPACT_ALL_PAGE: usize = 100;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactArgs {
    pub meeting_id: String,
    /// Keep ops newer than this many ms; default 90 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_ms: Option<i64>,
    /// Keep a note edited within this many ms; default a year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_note_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactResult {
    pub deleted: i64,
    /// Ops up to this version are gone (0: none ever were).
    pub min_retained_version: i64,
    /// True when a continuation run was scheduled.
    pub continued: bool,
    /// True when the note itself expired and was deleted.
    pub note_deleted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactAllArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_note_ms: Option<i64>,
    /// Where the previous run stopped; absent to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactAllResult {
    /// `notes.compact` runs scheduled by this run.
    pub scheduled: i64,
    pub continued: bool,
}

/// `now` less the retention `given` (or `default`); `field` names the argument in errors.
fn cutoff_of(
    ctx: &mut Ctx<'_, '_>,
    field: &str,
    given: Option<i64>,
    default: i64,
) -> FunctionResult<i64> {
    let retain = given.unwrap_or(default);
    if retain < 0 {
        return Err(invalid_field(field, "must not be negative"));
    }
    Ok(ctx.now_ms().saturating_sub(retain))
}

/// Whether a note last edited at `updated_at` has expired: edited at or before `cutoff` and
/// its meeting over or gone.
fn note_expired(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    updated_at: i64,
    cutoff: i64,
) -> FunctionResult<bool> {
    if updated_at > cutoff {
        return Ok(false);
    }
    let open = ctx
        .get(MEETINGS, meeting_id)?
        .map(|d| decode::<Meeting>(&d))
        .transpose()?
        .is_some_and(|m| m.state.is_open());
    Ok(!open)
}

fn int(doc: &Value, field: &str) -> i64 {
    doc.get_path(field).and_then(Value::as_i64).unwrap_or(0)
}

fn compact(ctx: &mut Ctx<'_, '_>, a: CompactArgs) -> FunctionResult<CompactResult> {
    let cutoff = cutoff_of(ctx, "retainMs", a.retain_ms, NOTE_OPS_RETENTION_MS)?;
    let note_cutoff = cutoff_of(ctx, "retainNoteMs", a.retain_note_ms, NOTE_RETENTION_MS)?;
    let Some(note) = load_note(ctx, &a.meeting_id)? else {
        return Ok(CompactResult {
            deleted: 0,
            min_retained_version: 0,
            continued: false,
            note_deleted: false,
        });
    };
    let mut floor = note.min_retained_version.unwrap_or(0);
    let mut deleted = 0usize;
    'walk: while deleted < COMPACT_BATCH {
        let step = COMPACT_STEP.min(COMPACT_BATCH - deleted);
        let ops = ctx
            .query(NOTE_OPS, "by_meeting_sequence")
            .eq("meetingId", a.meeting_id.as_str())
            .gt("sequence", floor)
            .take(step)?;
        for op in &ops {
            if int(op, "timestamp") > cutoff {
                break 'walk;
            }
            ctx.delete(NOTE_OPS, &id_of(op)?)?;
            floor = int(op, "sequence");
            deleted += 1;
        }
        if ops.len() < step {
            break;
        }
    }
    if deleted > 0 {
        ctx.patch(
            MEETING_NOTES,
            &note.id,
            fields(obj! { "minRetainedVersion" => floor }),
        )?;
    }
    let continued = deleted >= COMPACT_BATCH;
    if continued {
        ctx.schedule_after(0, fns::COMPACT, encode(&a)?)?;
    }
    let note_deleted = !continued
        && floor >= note.version
        && note_expired(ctx, &a.meeting_id, note.updated_at, note_cutoff)?;
    if note_deleted {
        ctx.delete(MEETING_NOTES, &note.id)?;
        record_purged(ctx, MEETING_NOTES, 1, ("updatedBeforeMs", note_cutoff))?;
    }
    Ok(CompactResult {
        deleted: deleted as i64,
        min_retained_version: floor,
        continued,
        note_deleted,
    })
}

fn compact_all(ctx: &mut Ctx<'_, '_>, a: CompactAllArgs) -> FunctionResult<CompactAllResult> {
    let cutoff = cutoff_of(ctx, "retainMs", a.retain_ms, NOTE_OPS_RETENTION_MS)?;
    let note_cutoff = cutoff_of(ctx, "retainNoteMs", a.retain_note_ms, NOTE_RETENTION_MS)?;
    let page = ctx
        .query(MEETING_NOTES, BY_CREATION_TIME)
        .paginate(a.cursor.as_deref(), COMPACT_ALL_PAGE)?;
    let mut scheduled = 0;
    for note in &page.page {
        let Some(meeting_id) = note.get_path("meetingId").and_then(Value::as_str) else {
            continue;
        };
        let floor = int(note, "minRetainedVersion");
        // Only meetings whose oldest retained op is old, or whose note has expired, get a run.
        let oldest = ctx
            .query(NOTE_OPS, "by_meeting_sequence")
            .eq("meetingId", meeting_id)
            .gt("sequence", floor)
            .first()?;
        let old_ops = oldest.is_some_and(|op| int(&op, "timestamp") <= cutoff);
        if old_ops || note_expired(ctx, meeting_id, int(note, "updatedAt"), note_cutoff)? {
            let args = encode(&CompactArgs {
                meeting_id: meeting_id.to_string(),
                retain_ms: a.retain_ms,
                retain_note_ms: a.retain_note_ms,
            })?;
            ctx.schedule_after(0, fns::COMPACT, args)?;
            scheduled += 1;
        }
    }
    let continued = !page.is_done;
    if continued {
        let args = encode(&CompactAllArgs {
            retain_ms: a.retain_ms,
            retain_note_ms: a.retain_note_ms,
            cursor: page.continue_cursor,
        })?;
        ctx.schedule_after(0, fns::COMPACT_ALL, args)?;
    }
    Ok(CompactAllResult {
        scheduled,
        continued,
    })
}

pub(crate) fn register(f: &mut Functions, _config: &Arc<LinkedUpConfig>) {
    // notes.compact (internal): deletes the meeting's ops older than `retainMs` (default 90
    // days), up to 1,000 per run, continuing itself; then the note, if it has expired (last
    // edited over `retainNoteMs` ago, default a year, its meeting over, no op left). Returns
    // {deleted, minRetainedVersion, continued, noteDeleted}. Errors: VALIDATION_ERROR.
    f.mutation(
        fns::COMPACT,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("retainMs", v::optional(v::int64())),
            ("retainNoteMs", v::optional(v::int64())),
        ]),
        v::object([
            ("deleted", v::int64()),
            ("minRetainedVersion", v::int64()),
            ("continued", v::boolean()),
            ("noteDeleted", v::boolean()),
        ]),
        compact,
    );

    // notes.compactAll (internal, for a daily cron): schedules notes.compact for every
    // meeting holding ops older than `retainMs` or an expired note (`retainNoteMs`), 100
    // notes per run, continuing itself. Returns {scheduled, continued}. Errors:
    // VALIDATION_ERROR.
    f.mutation(
        fns::COMPACT_ALL,
        Visibility::Internal,
        v::object([
            ("retainMs", v::optional(v::int64())),
            ("retainNoteMs", v::optional(v::int64())),
            ("cursor", v::optional(v::string())),
        ]),
        v::object([("scheduled", v::int64()), ("continued", v::boolean())]),
        compact_all,
    );
}
