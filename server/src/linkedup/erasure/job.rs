//! The erasure job, `erasure.step`: one run erases the next page of an account's personal
//! data — at most `ErasureConfig::page_documents` documents read or written — records where
//! it stopped in the request and schedules the next run, until the last phase turns the
//! `users` document into a tombstone and marks the request done.
//!
//! A run carries the request's `run` number and does nothing unless it matches, then
//! advances it: a run repeated or overtaken (by `erasure.resumeStalled`) is a no-op, and
//! every phase resumes from the state stored with the request, never from its arguments.
//!
//! What happens to each table, phase by phase (the per-table decisions are in
//! docs/architecture.md): the user's own documents are deleted (profile, interests, `user`
//! embeddings, own insights, connections either side, blocks either way (theirs and others'
//! of them), matching queue and outcomes, rate-limit counters); chat messages they wrote are
//! redacted (text replaced, attachments dropped, the message stays so a thread keeps its
//! shape); then, per meeting they took part in, transcript chunks they spoke and the
//! segments holding them are redacted the same way (a meeting's sequence stays gap-free), so
//! is what other participants' insights quote of them (`insights::redact_stored`; all the
//! text of an insight too old to record whose words it quotes), the meeting's AI prompts
//! (made from every participant's profile) are deleted, their presence becomes `left`,
//! where they were the only host of an open meeting another participant becomes its host, and
//! an open meeting left with nobody to run it is closed (`hosting`);
//! then the same, but for presence and hosting, in the meetings they were removed from
//! (found through `formerParticipants`, whose records are deleted after).
//! Meetings, notes and note history, participant records, audit entries and other users'
//! documents keep the user's id, which names a tombstone.

use std::sync::Arc;

use linkedup_schema::api::erasure::ErasureStatus;
use linkedup_schema::api::{Meeting, Participant, Presence};
use linkedup_schema::tables::names::{
    AUDIT_LOGS, CONNECTIONS, EMBEDDINGS, ERASURE_REQUESTS, FORMER_PARTICIPANTS, INSIGHTS,
    MATCHING_ANALYTICS, MATCHING_QUEUE, MEETINGS, MEETING_PARTICIPANTS, MESSAGES, PROFILES,
    PROMPTS, RATE_LIMITS, RATE_LIMIT_WINDOWS, TRANSCRIPTS, TRANSCRIPT_SEGMENTS, USERS, USER_BLOCKS,
    USER_INTERESTS,
};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::{Object, Value};
use serde::{Deserialize, Serialize};

use super::hosting::{settle, SETTLE_DOCS};
use super::{ErasureConfig, Request};
use crate::linkedup::guards::find_participant;
use crate::linkedup::insights::redact_stored;
use crate::linkedup::meetings::mark_left;
use crate::linkedup::stream_rooms::schedule_member_sync;
use crate::linkedup::transcripts::chunk_speaker;
use crate::linkedup::{audit, decode, encode, id_of, LinkedUpConfig};

/// The job's name.
pub const STEP: &str = "erasure.step";
/// What erased text is replaced with.
pub const REDACTED: &str = "[erased]";

/// The phases in order. Deleting the profile, interests and embeddings first stops the
/// account's data from flowing into anything generated while the rest is erased.
const PHASES: [&str; 18] = [
    "profiles",
    "userInterests",
    "embeddings",
    "insights",
    "connectionsA",
    "connectionsB",
    "blocksByUser",
    "blocksOfUser",
    "matchingQueue",
    "matchingAnalytics",
    "rateLimits",
    "rateLimitWindows",
    "messages",
    "meetings",
    "formerMeetings",
    "formerParticipants",
    "auditSubjects",
    "account",
];
pub(super) const FIRST_PHASE: &str = PHASES[0];
/// Per meeting the user took part in, in order.
const MEETING_PHASES: [&str; 5] = ["transcripts", "segments", "insights", "prompts", "hosting"];
/// Most documents the `hosting` phase reads or writes: the two reads before `hosting::settle`,
/// its own, then the job that takes the user out of the call.
const HANDOVER_DOCS: usize = 2 + SETTLE_DOCS + 1;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StepArgs {
    request_id: String,
    run: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StepResult {
    /// Documents this run read or wrote.
    documents: i64,
    done: bool,
}

/// What one run may still touch, and what it did, by table.
struct Budget {
    left: usize,
    used: usize,
}

impl Budget {
    fn spend(&mut self, request: &mut Request, table: &str, n: usize) {
        debug_assert!(n <= self.left, "a phase read past its budget");
        self.left -= n;
        self.used += n;
        if n > 0 {
            *request.counts.entry(table.to_string()).or_default() += n as i64;
        }
    }

    /// Ends this run here: what comes next needs more room than is left.
    fn close(&mut self) {
        self.left = 0;
    }
}

pub(super) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // erasure.step (internal, scheduled): see the module comment. Returns {documents, done}.
    // Returns: NOT_FOUND (no such request).
    let erasure = config.erasure;
    f.mutation(
        STEP,
        Visibility::Internal,
        v::object([("requestId", v::id(ERASURE_REQUESTS)), ("run", v::int64())]),
        v::object([("documents", v::int64()), ("done", v::boolean())]),
        move |ctx, a: StepArgs| step(ctx, &erasure, a),
    );
}

fn step(ctx: &mut Ctx<'_, '_>, config: &ErasureConfig, a: StepArgs) -> FunctionResult<StepResult> {
    let doc = ctx
        .get(ERASURE_REQUESTS, &a.request_id)?
        .ok_or_else(|| ErrorCode::NotFound.err(format!("no erasure request {}", a.request_id)))?;
    let mut r: Request = decode(&doc)?;
    if r.status == ErasureStatus::Done || r.run != a.run {
        return Ok(StepResult {
            documents: 0,
            done: r.status == ErasureStatus::Done,
        });
    }
    let mut budget = Budget {
        left: config.page(),
        used: 0,
    };
    while budget.left > 0 && r.status != ErasureStatus::Done {
        let finished = run_phase(ctx, &mut r, &mut budget)?;
        if finished {
            advance(&mut r)?;
        }
    }
    r.steps += 1;
    if r.status == ErasureStatus::Done {
        r.updated_at = ctx.now_ms();
    } else {
        r.status = ErasureStatus::Running;
        r.schedule_next(ctx)?;
    }
    r.save(ctx)?;
    Ok(StepResult {
        documents: budget.used as i64,
        done: r.status == ErasureStatus::Done,
    })
}

/// Moves to the phase after the current one.
fn advance(r: &mut Request) -> FunctionResult<()> {
    let i = PHASES
        .iter()
        .position(|p| *p == r.phase)
        .ok_or_else(|| ErrorCode::Internal.err(format!("unknown erasure phase {:?}", r.phase)))?;
    r.cursor = None;
    if let Some(next) = PHASES.get(i + 1) {
        r.phase = next.to_string();
    }
    Ok(())
}

/// Works on the current phase within the budget; true when the phase is finished.
fn run_phase(ctx: &mut Ctx<'_, '_>, r: &mut Request, budget: &mut Budget) -> FunctionResult<bool> {
    let user = r.user_id.clone();
    let user = user.as_str();
    let by_user = |table: &'static str, index: &'static str, field: &'static str| {
        (table, index, vec![(field, Value::from(user))])
    };
    let target = match r.phase.as_str() {
        "profiles" => return erase_profiles(ctx, r, budget),
        "messages" => return redact_messages(ctx, r, budget),
        "meetings" => return erase_meetings(ctx, r, budget, MEETING_PARTICIPANTS),
        "formerMeetings" => return erase_meetings(ctx, r, budget, FORMER_PARTICIPANTS),
        "formerParticipants" => by_user(FORMER_PARTICIPANTS, "by_user", "userId"),
        "auditSubjects" => return strip_audit_subjects(ctx, r, budget),
        "account" => return erase_account(ctx, r, budget),
        "userInterests" => by_user(USER_INTERESTS, "by_user", "userId"),
        "embeddings" => (
            EMBEDDINGS,
            "by_source",
            vec![("sourceType", "user".into()), ("sourceId", user.into())],
        ),
        "insights" => by_user(INSIGHTS, "by_user", "userId"),
        "connectionsA" => by_user(CONNECTIONS, "by_user_a", "userA"),
        "connectionsB" => by_user(CONNECTIONS, "by_user_b", "userB"),
        "blocksByUser" => by_user(USER_BLOCKS, "by_blocker", "blockerId"),
        "blocksOfUser" => by_user(USER_BLOCKS, "by_blocked", "blockedId"),
        "matchingQueue" => by_user(MATCHING_QUEUE, "by_user", "userId"),
        "matchingAnalytics" => by_user(MATCHING_ANALYTICS, "by_user", "userId"),
        "rateLimits" => by_user(RATE_LIMITS, "by_user_action_window", "userId"),
        "rateLimitWindows" => by_user(RATE_LIMIT_WINDOWS, "by_user_action", "userId"),
        other => {
            return Err(ErrorCode::Internal.err(format!("unknown erasure phase {other:?}")));
        }
    };
    delete_page(ctx, r, budget, target)
}

/// Deletes up to the budget of the documents `eqs` selects through `index`; true when none
/// are left.
fn delete_page(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    (table, index, eqs): (&str, &str, Vec<(&str, Value)>),
) -> FunctionResult<bool> {
    let want = budget.left;
    let mut q = ctx.query(table, index);
    for (field, value) in eqs {
        q = q.eq(field, value);
    }
    let rows = q.take(want)?;
    for d in &rows {
        ctx.delete(table, &id_of(d)?)?;
    }
    budget.spend(r, table, rows.len());
    Ok(rows.len() < want)
}

/// The profile, after any embeddings made of it (source `profile`).
fn erase_profiles(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
) -> FunctionResult<bool> {
    while budget.left > 0 {
        let Some(profile) = ctx
            .query(PROFILES, "by_user")
            .eq("userId", r.user_id.as_str())
            .first()?
        else {
            return Ok(true);
        };
        let id = id_of(&profile)?;
        let source = vec![
            ("sourceType", Value::from("profile")),
            ("sourceId", Value::from(id.as_str())),
        ];
        if !delete_page(ctx, r, budget, (EMBEDDINGS, "by_source", source))? || budget.left == 0 {
            return Ok(false);
        }
        ctx.delete(PROFILES, &id)?;
        budget.spend(r, PROFILES, 1);
    }
    Ok(false)
}

/// The fields of a stored document without its system fields, to be written back changed.
fn stored_fields(doc: &Value) -> Object {
    let mut o = doc.as_object().cloned().unwrap_or_default();
    o.remove("_id");
    o.remove("_creationTime");
    o
}

/// Which of the request's cursors a paged pass continues from.
#[derive(Clone, Copy)]
enum Cursor {
    /// The phase's (`cursor`).
    Phase,
    /// The current meeting's (`meetingCursor`).
    Meeting,
}

/// Hands `visit` the next page (up to `limit`, at most the budget) of the documents of
/// `table` whose `field` is `value` (through `index`), continuing from and advancing the
/// `cursor` given. True when none are left.
fn visit_page(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    cursor: Cursor,
    limit: usize,
    (table, index, field, value): (&str, &str, &str, &str),
    mut visit: impl FnMut(&mut Ctx<'_, '_>, &Value) -> FunctionResult<()>,
) -> FunctionResult<bool> {
    let at = match cursor {
        Cursor::Phase => &mut r.cursor,
        Cursor::Meeting => &mut r.meeting_cursor,
    };
    let page = ctx
        .query(table, index)
        .eq(field, value)
        .paginate(at.as_deref(), limit.min(budget.left))?;
    *at = page.continue_cursor;
    for d in &page.page {
        visit(ctx, d)?;
    }
    budget.spend(r, table, page.page.len());
    Ok(page.is_done)
}

/// Rewrites, a page at a time, the documents of `table` that name the user in `field`
/// (through `index`): `edit` changes a document's stored fields and says whether it changed
/// anything; only those are written.
fn rewrite_page(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    (table, index, field): (&str, &str, &str),
    edit: impl Fn(&mut Object) -> bool,
) -> FunctionResult<bool> {
    let user = r.user_id.clone();
    let target = (table, index, field, user.as_str());
    let limit = budget.left;
    visit_page(ctx, r, budget, Cursor::Phase, limit, target, |ctx, d| {
        let mut o = stored_fields(d);
        if edit(&mut o) {
            ctx.replace(table, &id_of(d)?, Value::from(o))?;
        }
        Ok(())
    })
}

/// Replaces the text of every message the user wrote and drops its attachments.
fn redact_messages(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
) -> FunctionResult<bool> {
    rewrite_page(ctx, r, budget, (MESSAGES, "by_user", "userId"), |o| {
        o.insert("content".into(), REDACTED.into());
        o.remove("attachments");
        true
    })
}

/// Removes the token subject (`metadata.subject`, the identity provider's id of the person)
/// from the access denials recorded of the user: the entries stay, as the security record,
/// naming the user by id only. Those written from the request on never had it
/// (`audit.recordDenials`).
fn strip_audit_subjects(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
) -> FunctionResult<bool> {
    rewrite_page(
        ctx,
        r,
        budget,
        (AUDIT_LOGS, "by_actor", "actorUserId"),
        |o| match o.get_mut("metadata") {
            Some(Value::Object(metadata)) if metadata.contains_key("subject") => {
                std::sync::Arc::make_mut(metadata).remove("subject");
                true
            }
            _ => false,
        },
    )
}

/// The meetings the user took part in, one at a time through `source`'s records of them
/// (`cursor`): their participant records, then the records of their removals from meetings
/// (`formerParticipants`), each meeting through `MEETING_PHASES` (`meetingId`,
/// `meetingPhase`, `meetingCursor`). A meeting they were removed from and added to again is
/// gone through twice; redaction finds nothing left the second time.
fn erase_meetings(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    source: &'static str,
) -> FunctionResult<bool> {
    while budget.left > 0 {
        if let Some(meeting) = r.meeting_id.clone() {
            if !erase_in_meeting(ctx, r, budget, &meeting)? {
                return Ok(false);
            }
            r.meeting_id = None;
            r.meeting_phase = None;
            r.meeting_cursor = None;
            continue;
        }
        let page = ctx
            .query(source, "by_user")
            .eq("userId", r.user_id.as_str())
            .paginate(r.cursor.as_deref(), 1)?;
        let Some(doc) = page.page.first() else {
            return Ok(true);
        };
        budget.spend(r, source, 1);
        r.cursor = page.continue_cursor;
        let meeting_id = if source == MEETING_PARTICIPANTS {
            let p: Participant = decode(doc)?;
            if p.presence == Presence::Joined {
                mark_left(ctx, &p.meeting_id, &p)?;
            }
            p.meeting_id
        } else {
            doc.get_path("meetingId")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    ErrorCode::Internal.err(format!("a {source} record without meetingId"))
                })?
        };
        r.meeting_id = Some(meeting_id);
        r.meeting_phase = Some(MEETING_PHASES[0].to_string());
    }
    Ok(false)
}

/// If the user is the only host of this open meeting, another participant becomes its host,
/// and if nobody is left to run it, it is closed (`hosting::settle`); and the user leaves the
/// meeting's call (blocked, no longer a member: `stream_rooms::schedule_member_sync`). Waits
/// for a run with room for it, unless the whole page is smaller (then a run may touch up to
/// `HANDOVER_DOCS` more than its page).
fn hand_over(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    meeting: &str,
) -> FunctionResult<bool> {
    if budget.left < HANDOVER_DOCS && budget.used > 0 {
        budget.close();
        return Ok(false);
    }
    budget.spend(r, MEETING_PARTICIPANTS, HANDOVER_DOCS.min(budget.left));
    let Some(p) = find_participant(ctx, meeting, &r.user_id)? else {
        return Ok(true);
    };
    let Some(m) = ctx
        .get(MEETINGS, meeting)?
        .map(|d| decode::<Meeting>(&d))
        .transpose()?
    else {
        return Ok(true);
    };
    settle(ctx, &m, &p)?;
    // Out of the meeting's call: their account is going, their call token must not outlive it.
    schedule_member_sync(ctx, &m, &r.user_id)?;
    Ok(true)
}

/// One meeting's phases from where the request stands; true when they are all finished.
fn erase_in_meeting(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    meeting: &str,
) -> FunctionResult<bool> {
    while budget.left > 0 {
        let phase = r.meeting_phase.clone().unwrap_or_default();
        let finished = match phase.as_str() {
            "transcripts" => redact_chunks(ctx, r, budget, meeting)?,
            "segments" => redact_segments(ctx, r, budget, meeting)?,
            "insights" => redact_quotes(ctx, r, budget, meeting)?,
            "prompts" => {
                let eqs = vec![("meetingId", Value::from(meeting))];
                delete_page(ctx, r, budget, (PROMPTS, "by_meeting_type", eqs))?
            }
            // A meeting the user was removed from has nothing to hand over (had they been
            // added again, the pass over their participant records did it).
            "hosting" if r.phase == "formerMeetings" => true,
            "hosting" => hand_over(ctx, r, budget, meeting)?,
            other => {
                return Err(ErrorCode::Internal.err(format!("unknown meeting phase {other:?}")));
            }
        };
        if !finished {
            return Ok(false);
        }
        r.meeting_cursor = None;
        let next = MEETING_PHASES
            .iter()
            .position(|p| *p == phase)
            .map(|i| i + 1);
        match next.and_then(|i| MEETING_PHASES.get(i)) {
            Some(p) => r.meeting_phase = Some(p.to_string()),
            None => return Ok(true),
        }
    }
    Ok(false)
}

/// Redacts, among a page of the meeting's transcript chunks, those the user spoke
/// (`chunk_speaker`): text replaced, `speakerId` removed; and the segment covering each
/// (`redact_segment`), whoever it names — segments aggregated before they recorded `spokenBy`
/// named only a chunk's raw `speakerId`, so the user's unlabelled words could sit in a segment
/// naming nobody or someone else. Each chunk may cost a second read (its segment), so a page
/// holds half the budget's chunks. True when the meeting has no more.
fn redact_chunks(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    meeting: &str,
) -> FunctionResult<bool> {
    if budget.left < 2 && budget.used > 0 {
        budget.close();
        return Ok(false);
    }
    let user = r.user_id.clone();
    let mut segment_reads = 0;
    let target = (TRANSCRIPTS, "by_meeting_sequence", "meetingId", meeting);
    let limit = (budget.left / 2).max(1);
    let finished = visit_page(ctx, r, budget, Cursor::Meeting, limit, target, |ctx, d| {
        if chunk_speaker(ctx, d) != Some(user.as_str()) {
            return Ok(());
        }
        let mut o = stored_fields(d);
        o.insert("text".into(), REDACTED.into());
        o.remove("speakerId");
        ctx.replace(TRANSCRIPTS, &id_of(d)?, Value::from(o))?;
        let Some(sequence) = d.get_path("sequence").and_then(Value::as_i64) else {
            return Ok(());
        };
        segment_reads += 1;
        // Segments do not overlap: the first ending at or after the chunk is the only one
        // that can hold it.
        let segment = ctx
            .query(TRANSCRIPT_SEGMENTS, "by_meeting_last_sequence")
            .eq("meetingId", meeting)
            .gte("lastSequence", sequence)
            .first()?;
        let Some(segment) = segment else {
            return Ok(());
        };
        let covers = segment
            .get_path("firstSequence")
            .and_then(Value::as_i64)
            .is_some_and(|first| first <= sequence);
        let redacted = segment.get_path("text").and_then(Value::as_str) == Some(REDACTED);
        if covers && !redacted {
            redact_segment(ctx, &segment, &user)?;
        }
        Ok(())
    })?;
    // A page of one chunk (a budget of one) may read its segment beyond the budget.
    budget.spend(r, TRANSCRIPT_SEGMENTS, segment_reads.min(budget.left));
    Ok(finished)
}

/// Redacts, among a page of the meeting's segments, those naming the user as a speaker
/// (`spokenBy`, or `speakers` on segments aggregated before `spokenBy`); most were redacted
/// with their chunks already, this finds those whose chunks are gone or were never stored
/// with a sequence. True when the meeting has no more.
fn redact_segments(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    meeting: &str,
) -> FunctionResult<bool> {
    let user = r.user_id.clone();
    let named = Value::from(user.as_str());
    let target = (TRANSCRIPT_SEGMENTS, "by_meeting", "meetingId", meeting);
    let limit = budget.left;
    visit_page(ctx, r, budget, Cursor::Meeting, limit, target, |ctx, d| {
        let spoke = ["spokenBy", "speakers"].iter().any(|field| {
            d.get_path(field)
                .and_then(Value::as_array)
                .is_some_and(|s| s.contains(&named))
        });
        if spoke {
            redact_segment(ctx, d, &user)?;
        }
        Ok(())
    })
}

/// Rewrites a segment holding the user's words: text replaced, the user no longer named as
/// speaker, and its topics and sentiment (read from the text) dropped.
fn redact_segment(ctx: &mut Ctx<'_, '_>, d: &Value, user: &str) -> FunctionResult<()> {
    let mut o = stored_fields(d);
    o.insert("text".into(), REDACTED.into());
    for field in ["speakers", "spokenBy"] {
        if let Some(names) = d.get_path(field).and_then(Value::as_array) {
            let others = names.iter().filter(|n| n.as_str() != Some(user));
            o.insert(field.into(), Value::Array(others.cloned().collect()));
        }
    }
    o.insert("topics".into(), Value::Array(Vec::new()));
    o.remove("sentiment");
    ctx.replace(TRANSCRIPT_SEGMENTS, &id_of(d)?, Value::from(o))?;
    Ok(())
}

/// Redacts, among a page of the meeting's insights (the user's own were deleted before, so
/// these are other participants'), what quotes or names the user, or all the text of one that
/// does not record whose words it quotes (`insights::redact_stored`). True when the meeting
/// has no more.
fn redact_quotes(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
    meeting: &str,
) -> FunctionResult<bool> {
    let user_id = r.user_id.clone();
    let target = (INSIGHTS, "by_meeting", "meetingId", meeting);
    let limit = budget.left;
    visit_page(ctx, r, budget, Cursor::Meeting, limit, target, |ctx, d| {
        redact_stored(ctx, d, &user_id).map(|_| ())
    })
}

/// The last phase: the `users` document becomes a tombstone no token subject resolves to,
/// the request is done, and the audit log says so with counts only.
fn erase_account(
    ctx: &mut Ctx<'_, '_>,
    r: &mut Request,
    budget: &mut Budget,
) -> FunctionResult<bool> {
    let now = ctx.now_ms();
    if let Some(doc) = ctx.get(USERS, &r.user_id)? {
        let field = |k: &str| doc.get_path(k).cloned().unwrap_or(Value::from(now));
        ctx.replace(
            USERS,
            &r.user_id,
            obj! {
                "workosUserId" => "",
                "email" => "",
                "isActive" => false,
                "createdAt" => field("createdAt"),
                "updatedAt" => now,
                "erasureRequestedAt" => field("erasureRequestedAt"),
                "erasedAt" => now,
            },
        )?;
    }
    budget.spend(r, USERS, 1);
    r.status = ErasureStatus::Done;
    r.completed_at = Some(now);
    let documents: i64 = r.counts.values().sum();
    let counts = encode(&r.counts)?;
    audit::record_in_org(
        ctx,
        r.org_id.as_deref(),
        None,
        "user",
        &r.user_id,
        "users.erased",
        obj! {
            "requestId" => r.id.as_str(),
            "documents" => documents,
            "counts" => counts,
            "steps" => r.steps + 1,
        },
    )?;
    Ok(true)
}
