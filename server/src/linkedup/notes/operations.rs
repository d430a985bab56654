//! `notes.applyOperation`, `notes.get` and `notes.opsSince`.
//!
//! The server side of the ot.js protocol `linkedup_client::note_editor` speaks: a client sends
//! `(baseVersion, op)`; the server transforms `op` past every op committed after `baseVersion`
//! in sequence order with `transform(committed, op).1` (the committed insert stays left, as the
//! client assumes), applies it to the materialised text, and appends it to `noteOps` as the next
//! version. Every edit of one meeting reads and writes the same `meetingNotes` document, so
//! concurrent edits conflict and the committer re-executes them one after another on the
//! latest state: the transform loop always sees every op committed before it.
//! A retransmitted `(clientId, clientSeq)` returns the first result and applies nothing; a
//! client id belongs to the editor whose op first used it. The per-op limits are checked after
//! that lookup, so an op resent after a reconnect (grown as it was transformed in flight) is
//! still answered as the first send.
//!
//! Refusals are cheap and counted. An edit whose outcome is known without the op history is
//! refused before any op is read: one built for a longer document than a note may hold, one
//! based too far back (`MAX_OPS_BEHIND`, against the stored version), and one that would take
//! the note past `MAX_NOTE_CHARS` whatever was committed since its base. And every refused
//! edit (`VALIDATION_ERROR`, `CONFLICT`) counts against its editor's note-edit rate limit like
//! an applied one: the edit's own transaction commits nothing when it fails, so
//! `count_refusal` charges the limit from the mutation's failure recorder (a small transaction
//! of its own, run before the caller gets the error; see `Functions::
//! mutation_recording_failures`). A client repeating a refused edit — up to 1,000 ops and
//! 8 MiB of reads each when it is refused after the transform — is thus `RATE_LIMITED` once
//! the limit is used up, as one sending valid edits is. (Refused edits in flight together are
//! checked before any of them is counted, so a burst can pass the limit by the calls it has
//! in flight at once; every later call is refused by the limit before it reads the note.)

use std::sync::Arc;

use linkedup_schema::api::notes::{op_weight, MAX_OPS_SINCE_WEIGHT, MAX_OP_WEIGHT};
use linkedup_schema::api::Role;
use linkedup_schema::errors::invalid_field;
use linkedup_schema::ot::{OpLimits, OtError, TextOperation};
use linkedup_schema::tables::names::{MEETINGS, MEETING_NOTES, NOTE_OPS, USERS};
use linkedup_schema::tables::ot_operation;
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::{FunctionError, FunctionResult};
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use serde::{Deserialize, Serialize};

use super::{
    fns, ApplyOperationArgs, ApplyResult, NoteOpEntry, NoteState, OpsSinceArgs, MAX_NOTE_CHARS,
    MAX_OPS_BEHIND, MAX_OPS_SINCE,
};
use crate::linkedup::guards::{account_of_caller, assert_meeting_access};
use crate::linkedup::rate_limit::{check_and_consume_in, Counters};
use crate::linkedup::{audited, check_text, decode, encode, fields, limit_arg, LinkedUpConfig};

/// Longest `clientId`, in chars.
const MAX_CLIENT_ID_CHARS: usize = 128;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeetingIdOnly {
    meeting_id: String,
}

/// A stored `noteOps` document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredOp {
    #[serde(rename = "_id")]
    id: String,
    sequence: i64,
    operation: TextOperation,
    author_id: String,
    client_id: String,
    client_seq: i64,
}

impl StoredOp {
    fn entry(self) -> NoteOpEntry {
        NoteOpEntry {
            id: self.id,
            sequence: self.sequence,
            op: self.operation,
            author_id: self.author_id,
            client_id: self.client_id,
            client_seq: self.client_seq,
        }
    }
}

/// The stored `meetingNotes` document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StoredNote {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) content: String,
    pub(super) version: i64,
    pub(super) updated_at: i64,
    #[serde(default)]
    pub(super) last_editor_id: Option<String>,
    #[serde(default)]
    pub(super) min_retained_version: Option<i64>,
}

pub(super) fn load_note(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
) -> FunctionResult<Option<StoredNote>> {
    ctx.query(MEETING_NOTES, "by_meeting")
        .eq("meetingId", meeting_id)
        .unique()?
        .map(|d| decode(&d))
        .transpose()
}

fn invalid_op(e: impl std::fmt::Display) -> FunctionError {
    invalid_field("op", e)
}

fn char_count(s: &str) -> u64 {
    s.chars().count() as u64
}

/// Rate limiter action name of `notes.applyOperation`.
pub const APPLY_ACTION: &str = "notes.applyOperation";

/// Ops read per page while transforming an edit: eight whole-note pastes stay far below the
/// read limit, and an edit a few versions behind (the usual case) is one read.
const TRANSFORM_PAGE: usize = 8;

/// CONFLICT telling the client to fetch the note (`notes.get`) and start over from its version.
fn resync(reason: &str, message: String, current: i64, min_retained: i64) -> FunctionError {
    conflict(reason, true, message, current, min_retained)
}

/// CONFLICT telling the client its edit is based too far back to transform here: its editor
/// can follow `notes.opsSince` up to `currentVersion` (its op transformed locally on the way)
/// and send the edit again from there, keeping it. Not a resync: nothing is lost.
fn too_far_behind(message: String, current: i64, min_retained: i64) -> FunctionError {
    conflict("tooFarBehind", false, message, current, min_retained)
}

fn conflict(
    reason: &str,
    resync: bool,
    message: String,
    current: i64,
    min_retained: i64,
) -> FunctionError {
    ErrorCode::Conflict.err_with(
        message,
        obj! {
            "reason" => reason,
            "resync" => resync,
            "currentVersion" => current,
            "minRetainedVersion" => min_retained,
        },
    )
}

fn apply_operation(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: ApplyOperationArgs,
) -> FunctionResult<ApplyResult> {
    // Validate.
    if a.base_version < 0 {
        return Err(invalid_field("baseVersion", "must not be negative"));
    }
    if a.client_seq < 0 {
        return Err(invalid_field("clientSeq", "must not be negative"));
    }
    check_text("clientId", &a.client_id, 1, MAX_CLIENT_ID_CHARS)?;
    let mut op = TextOperation::from_components(a.op).map_err(invalid_op)?;

    // Guard.
    let access = assert_meeting_access(ctx, &a.meeting_id, Role::Participant)?;

    // A client id belongs to the editor whose op first used it. `opsSince` shows every op's
    // client id and sequence, so without this another participant could send the next
    // (clientId, clientSeq) of someone else's editor: that editor would take the forged op
    // as the confirmation of its own, and its real op would be answered as a retransmission
    // and dropped.
    let first_use = ctx
        .query(NOTE_OPS, "by_meeting_client")
        .eq("meetingId", a.meeting_id.as_str())
        .eq("clientId", a.client_id.as_str())
        .first()?;
    if let Some(doc) = first_use {
        let first: StoredOp = decode(&doc)?;
        if first.author_id != access.user.id {
            return Err(invalid_field(
                "clientId",
                "is used by another editor of this note; generate a fresh client id",
            ));
        }
        // A retransmission: answer as the first time.
        let seen = if first.client_seq == a.client_seq {
            Some(first)
        } else {
            ctx.query(NOTE_OPS, "by_meeting_client")
                .eq("meetingId", a.meeting_id.as_str())
                .eq("clientId", a.client_id.as_str())
                .eq("clientSeq", a.client_seq)
                .first()?
                .map(|doc| decode::<StoredOp>(&doc))
                .transpose()?
        };
        if let Some(stored) = seen {
            return Ok(ApplyResult {
                version: stored.sequence,
                op: stored.operation,
            });
        }
    }

    // After the retransmission check: an op the editor resends after a reconnect may have
    // grown past the limits as it transformed past remote ops while in flight, and one that
    // was committed must still be answered as such, not refused.
    op.check_limits(&OpLimits::DEFAULT).map_err(invalid_op)?;
    if op.base_len() > MAX_NOTE_CHARS {
        return Err(invalid_op(format!(
            "built for a document of {} chars, but a note has at most {MAX_NOTE_CHARS}",
            op.base_len()
        )));
    }

    // Edits of one meeting serialise on its note document anyway, so the count is kept
    // inline (one read and write of the user's window document).
    check_and_consume_in(
        ctx,
        &config.rate_limits,
        &access.user.id,
        APPLY_ACTION,
        config.rate_limits.notes_apply,
        Counters::Inline,
    )?;
    let note = load_note(ctx, &a.meeting_id)?;
    let (content, version, min_retained) = match &note {
        Some(n) => (
            n.content.as_str(),
            n.version,
            n.min_retained_version.unwrap_or(0),
        ),
        None => ("", 0, 0),
    };
    if a.base_version > version {
        return Err(invalid_field(
            "baseVersion",
            format!(
                "is {} but the note is only at version {version}",
                a.base_version
            ),
        ));
    }
    if a.base_version < min_retained {
        return Err(resync(
            "historyCompacted",
            format!(
                "operations up to version {min_retained} were compacted; base version {} is too old, fetch the note and resync",
                a.base_version
            ),
            version,
            min_retained,
        ));
    }
    if version - a.base_version > MAX_OPS_BEHIND {
        return Err(too_far_behind(
            format!(
                "base version {} is more than {MAX_OPS_BEHIND} versions behind {version}; catch up and send the edit again",
                a.base_version
            ),
            version,
            min_retained,
        ));
    }

    // Transforming keeps every char the edit inserts and can only spare chars it deletes
    // (a committed op may have deleted them first), so the edit leaves the note at least its
    // net growth longer than it is now, whatever was committed since its base.
    let least_len = (char_count(content) + op.target_len()).saturating_sub(op.base_len());
    if least_len > MAX_NOTE_CHARS {
        return Err(invalid_op(format!(
            "the note would have at least {least_len} chars, the limit is {MAX_NOTE_CHARS}"
        )));
    }

    // Transform past every op committed since the base, in order, a page at a time so that
    // the reads stop at the weight budget instead of at the read limit.
    let mut next = a.base_version + 1;
    let mut weight = 0u64;
    while next <= version {
        let page = ctx
            .query(NOTE_OPS, "by_meeting_sequence")
            .eq("meetingId", a.meeting_id.as_str())
            .gte("sequence", next)
            .lte("sequence", version)
            .take(TRANSFORM_PAGE)?;
        if page.is_empty() {
            break;
        }
        for doc in &page {
            let c: StoredOp = decode(doc)?;
            if c.sequence != next {
                return Err(resync(
                    "historyCompacted",
                    format!("operation {next} is no longer retained; fetch the note and resync"),
                    version,
                    min_retained,
                ));
            }
            weight += op_weight(&c.operation);
            if weight > config.notes.max_transform_weight {
                return Err(too_far_behind(
                    format!(
                        "the ops after base version {} weigh more than {} bytes; catch up and send the edit again",
                        a.base_version, config.notes.max_transform_weight
                    ),
                    version,
                    min_retained,
                ));
            }
            next += 1;
            op = match TextOperation::transform(&c.operation, &op) {
                Ok((_, transformed)) => transformed,
                Err(OtError::TransformLengthMismatch { a_base_len, b_base_len }) => {
                    return Err(invalid_op(format!(
                        "built for a document of {b_base_len} chars, but the note at version {} has {a_base_len}",
                        c.sequence - 1
                    )))
                }
                Err(e) => return Err(invalid_op(e)),
            };
        }
    }
    if next <= version {
        return Err(resync(
            "historyCompacted",
            "operations after the base version are no longer retained; fetch the note and resync"
                .into(),
            version,
            min_retained,
        ));
    }

    // Apply.
    if op_weight(&op) > MAX_OP_WEIGHT {
        return Err(invalid_op(format!(
            "the op (as transformed) weighs {} bytes; at most {MAX_OP_WEIGHT}",
            op_weight(&op)
        )));
    }
    if op.target_len() > MAX_NOTE_CHARS {
        return Err(invalid_op(format!(
            "the note would have {} chars, the limit is {MAX_NOTE_CHARS}",
            op.target_len()
        )));
    }
    let new_content = op.apply(content).map_err(|e| match e {
        OtError::BaseLengthMismatch { expected, actual } => invalid_op(format!(
            "built for a document of {expected} chars, but the note at version {} has {actual}",
            a.base_version
        )),
        e => invalid_op(e),
    })?;
    let new_version = version + 1;
    let now = ctx.now_ms();
    let op_value = encode(&op)?;
    ctx.insert(
        NOTE_OPS,
        obj! {
            "meetingId" => a.meeting_id.as_str(),
            "sequence" => new_version,
            "authorId" => access.user.id.as_str(),
            "clientId" => a.client_id.as_str(),
            "clientSeq" => a.client_seq,
            "baseVersion" => a.base_version,
            "operation" => op_value,
            "timestamp" => now,
            "applied" => true,
        },
    )?;
    match &note {
        Some(n) => {
            let mut changes = fields(obj! {
                "content" => new_content,
                "version" => new_version,
                "updatedAt" => now,
                "lastEditorId" => access.user.id.as_str(),
            });
            if a.base_version < version {
                changes.insert("lastRebasedAt".into(), now.into());
            }
            ctx.patch(MEETING_NOTES, &n.id, changes)?;
        }
        None => {
            ctx.insert(
                MEETING_NOTES,
                obj! {
                    "meetingId" => a.meeting_id.as_str(),
                    "content" => new_content,
                    "version" => new_version,
                    "lastRebasedAt" => now,
                    "updatedAt" => now,
                    "lastEditorId" => access.user.id.as_str(),
                },
            )?;
        }
    }
    Ok(ApplyResult {
        version: new_version,
        op,
    })
}

/// `notes.applyOperation`'s failure recorder: a refused edit (`VALIDATION_ERROR`,
/// `CONFLICT`) of a known user counts against their note-edit limit as an applied one does.
/// Other failures are not counted: `RATE_LIMITED` was refused by the limit itself, and
/// `UNAUTHORIZED`, `FORBIDDEN` and `NOT_FOUND` come from the access check, before any note is
/// read (denials are audited and bounded there).
fn count_refusal(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    error: &FunctionError,
) -> FunctionResult<()> {
    let refused = [ErrorCode::ValidationError, ErrorCode::Conflict]
        .iter()
        .any(|code| error.code == code.as_str());
    if !refused || ctx.auth().is_none() {
        return Ok(());
    }
    let Some(user) = account_of_caller(ctx)? else {
        return Ok(());
    };
    check_and_consume_in(
        ctx,
        &config.rate_limits,
        &user.id,
        APPLY_ACTION,
        config.rate_limits.notes_apply,
        Counters::Inline,
    )
}

fn get_note(ctx: &mut Ctx<'_, '_>, a: MeetingIdOnly) -> FunctionResult<NoteState> {
    Ok(match load_note(ctx, &a.meeting_id)? {
        Some(n) => NoteState {
            content: n.content,
            version: n.version,
            last_updated: n.updated_at,
            last_editor_id: n.last_editor_id,
        },
        None => NoteState {
            content: String::new(),
            version: 0,
            last_updated: 0,
            last_editor_id: None,
        },
    })
}

fn ops_since(ctx: &mut Ctx<'_, '_>, a: OpsSinceArgs) -> FunctionResult<Vec<NoteOpEntry>> {
    if a.version < 0 {
        return Err(invalid_field("version", "must not be negative"));
    }
    let limit = limit_arg("limit", a.limit, MAX_OPS_SINCE, MAX_OPS_SINCE)?;
    let ops = ops_window(ctx, &a.meeting_id, a.version, limit)?;
    if ops
        .first()
        .is_some_and(|first| first.sequence == a.version + 1)
    {
        return Ok(ops);
    }
    // No op follows `version`: caught up, compacted away, or ahead; only the note can tell.
    // (Read only then, so a subscriber with a full window does not depend on the note.)
    let (version, min_retained) = match load_note(ctx, &a.meeting_id)? {
        Some(n) => (n.version, n.min_retained_version.unwrap_or(0)),
        None => (0, 0),
    };
    if a.version > version {
        Err(invalid_field(
            "version",
            format!("is {} but the note is only at version {version}", a.version),
        ))
    } else if a.version < version {
        Err(resync(
            "historyCompacted",
            format!(
                "operations up to version {min_retained} were compacted; fetch the note and resync"
            ),
            version,
            min_retained,
        ))
    } else {
        Ok(ops)
    }
}

/// Up to `limit` ops after `version`, in order, stopping before the op that would take their
/// weight past `MAX_OPS_SINCE_WEIGHT` (the first always comes). Read a page at a time, so a
/// window cut short reads no more than one page past its end.
fn ops_window(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    version: i64,
    limit: usize,
) -> FunctionResult<Vec<NoteOpEntry>> {
    const PAGE: usize = 16;
    let mut ops: Vec<NoteOpEntry> = Vec::new();
    let mut weight = 0;
    let mut after = version;
    while ops.len() < limit {
        let page = ctx
            .query(NOTE_OPS, "by_meeting_sequence")
            .eq("meetingId", meeting_id)
            .gt("sequence", after)
            .take(PAGE.min(limit - ops.len()))?;
        let full = page.len() == PAGE.min(limit - ops.len());
        for d in &page {
            let entry = decode::<StoredOp>(d)?.entry();
            weight += op_weight(&entry.op);
            if weight > MAX_OPS_SINCE_WEIGHT && !ops.is_empty() {
                return Ok(ops);
            }
            after = entry.sequence;
            ops.push(entry);
        }
        if !full {
            break;
        }
    }
    Ok(ops)
}

fn note_state_validator() -> query_engine::schema::Validator {
    v::object([
        ("content", v::string()),
        ("version", v::int64()),
        ("lastUpdated", v::int64()),
        ("lastEditorId", v::optional(v::id(USERS))),
    ])
}

fn op_entry_validator() -> query_engine::schema::Validator {
    v::object([
        ("_id", v::id(NOTE_OPS)),
        ("sequence", v::int64()),
        ("op", ot_operation()),
        ("authorId", v::id(USERS)),
        ("clientId", v::string()),
        ("clientSeq", v::int64()),
    ])
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // notes.applyOperation: a participant's (or host's) edit. Returns {version, op}.
    // Errors: UNAUTHORIZED, VALIDATION_ERROR (bad op, op that does not fit the note at
    // baseVersion, note too long, a clientId another editor uses), NOT_FOUND, FORBIDDEN,
    // CONFLICT (base version compacted or too far behind: `data.resync`, fetch the note and
    // start over), RATE_LIMITED (`data.retryAfterMs`; refused edits count, a retransmission
    // does not).
    f.mutation_recording_failures(
        fns::APPLY_OPERATION,
        Visibility::Public,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("baseVersion", v::int64()),
            ("op", ot_operation()),
            ("clientId", v::string()),
            ("clientSeq", v::int64()),
        ]),
        v::object([("version", v::int64()), ("op", ot_operation())]),
        {
            let cfg = config.clone();
            audited(config, fns::APPLY_OPERATION, move |ctx, a| {
                apply_operation(ctx, &cfg, a)
            })
        },
        {
            let cfg = config.clone();
            move |ctx, e| count_refusal(ctx, &cfg, e)
        },
    );

    // notes.get: the note's text and version, for the meeting's participants.
    // Errors: UNAUTHORIZED, NOT_FOUND, FORBIDDEN.
    f.shared_query(
        fns::GET,
        v::object([("meetingId", v::id(MEETINGS))]),
        note_state_validator(),
        audited(config, fns::GET, |ctx, a: MeetingIdOnly| {
            assert_meeting_access(ctx, &a.meeting_id, Role::Participant).map(|_| ())
        }),
        get_note,
    );

    // notes.opsSince: up to `limit` committed ops after `version`, in order, for catching up
    // by ops; fewer when they would weigh more than MAX_OPS_SINCE_WEIGHT (`window_may_be_cut`
    // tells a reader to ask again after the last one). Errors: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN, CONFLICT (ops
    // after `version` were compacted: resync from notes.get).
    f.shared_query(
        fns::OPS_SINCE,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("version", v::int64()),
            ("limit", v::optional(v::int64())),
        ]),
        v::array(op_entry_validator()),
        audited(config, fns::OPS_SINCE, |ctx, a: OpsSinceArgs| {
            assert_meeting_access(ctx, &a.meeting_id, Role::Participant).map(|_| ())
        }),
        ops_since,
    );
}
