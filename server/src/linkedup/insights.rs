//! Post-call insights (seed §10): `insights.generate`, the job `meetings.end` schedules, writes
//! one insight per participant (summary, action items, recommendations, links to the
//! transcript); participants read theirs (`insights.listMine`, `insights.forMeeting`) and may
//! delete them (`insights.delete`, seed §20).
//!
//! The job works through the participants a page (`BATCH`) per run, each run scheduling the
//! next. Its input is the meeting's transcript as it stands: the segments aggregation has
//! written plus the chunks it has not reached yet (aggregation is another post-call job and
//! may still be running), bounded, with the notes and the participants' profiles. A provider
//! failure is retried by scheduling the same page again after a growing delay, up to
//! `AiConfig::insight_attempts` runs; the last run writes the local heuristics' insight
//! instead (seed §23). Idempotent per (user, meeting): `insights.store` writes an insight only
//! if none exists and none was written before (an idempotency key, so a deleted insight is
//! not written again by a retried run), so a repeated or retried job never duplicates.
//!
//! A chain of runs can stop for good: the engine records an action interrupted by a restart
//! as failed and never runs it again. So `meetings.end` also records the generation in
//! `insightRuns` (`schedule_generation`), each run's store moves its `dueAt` to the next run's
//! and the last deletes it; `insights.resumeStalled` (cron) restarts, from the first page, a
//! generation whose run is `AiConfig::insight_stall_ms` overdue, at most `MAX_RESUMES` times.
//! Runs carry the chain's `run` number: a restarted chain gets the next one and the runs of
//! the older chain do nothing, and participants who have their insight are skipped before
//! the provider is asked, so a restart never generates one twice.
//!
//! Each insight records whose words it quotes (`quotes`: a summary sentence, an action item or
//! a link's title matched to a transcript passage a participant spoke), so that when one of
//! them is erased, `Content::redact` replaces those parts with `[erased]` and drops
//! recommendations of them: in stored insights through `redact_stored` (the erasure job, per
//! meeting), and in `insights.store` for an insight made while their erasure runs. An insight
//! written before quotes were recorded cannot tell their words from others', so the erasure
//! of any participant of its meeting redacts all its text.
//!
//! Recommendations name the user they recommend (`userId`): a connection must be with another
//! participant of the meeting (one naming nobody is dropped), and one about a user who blocks
//! the owner, or whom the owner blocks, is left out when the insight is written and when it is
//! read (`without_blocked`), so a block made after the meeting hides it too.

use std::sync::Arc;

use futures::future::join_all;
use linkedup_schema::api::ai::limits::MAX_INSIGHTS_PAGE;
use linkedup_schema::api::ai::{
    fns, Insight, InsightIdArgs, InsightLink, InsightPage, ListMyInsightsArgs, Provenance, Quote,
    QuotePart, Recommendation,
};
use linkedup_schema::api::{MeetingIdArgs, Participant, Role};
use linkedup_schema::tables::names::{
    INSIGHTS, INSIGHT_RUNS, MEETINGS, MEETING_NOTES, MEETING_PARTICIPANTS, TRANSCRIPTS,
    TRANSCRIPT_SEGMENTS, USERS,
};
use linkedup_schema::tables::{insight_link, insight_quote, insight_recommendation, provenance};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::ActionCtx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::ai_context::participants_of;
use super::blocks::either_way;
use super::erasure::REDACTED;
use super::flags::is_enabled;
use super::guards::{
    assert_meeting_access, being_erased, current_user, find_participant, get_meeting, hidden,
    may_see_meeting,
};
use super::idempotency::{check_and_record, peek};
use super::transcripts::{aggregated_until, chunk_speaker};
use super::{audit, audited, decode, decoded_page, encode, fields, limit_arg, LinkedUpConfig};
use crate::ai::text::{cosine, hashed_embedding, join_sentences, sentences, truncate};
use crate::ai::{
    request_hash, AiConfig, Generated, InsightDraft, PostCallRequest, TranscriptPiece,
};

/// The job `meetings.end` schedules (through `schedule_generation`).
pub const GENERATE: &str = "insights.generate";
/// The cron that restarts stopped generations.
pub const RESUME_STALLED: &str = "insights.resumeStalled";
/// How often `insights.resumeStalled` runs.
pub const RESUME_INTERVAL_MS: i64 = 5 * 60_000;
/// Most generations one `insights.resumeStalled` run restarts or gives up.
const MAX_RESUMED: usize = 100;
/// Restarts of one meeting's generation before it is given up (audited
/// `insights.abandoned`): a chain that keeps stopping has a cause restarting will not cure.
pub const MAX_RESUMES: i64 = 5;
/// Flag key (seed §22).
pub const FLAG: &str = "insights/postcall";
const CONTEXT: &str = "insights.context";
const STORE: &str = "insights.store";
/// Idempotency scope of "an insight was written for (meeting, user)".
const WRITTEN_SCOPE: &str = "insight";
/// How long that is remembered: far beyond any retry of the job.
const WRITTEN_TTL_MS: i64 = 30 * 24 * 3_600_000;
/// Participants per run: their provider calls run concurrently, within the action time limit.
pub const BATCH: usize = 8;
/// Transcript bounds: segments and not yet aggregated chunks read, and chars passed on.
const MAX_SEGMENTS: usize = 400;
const MAX_RAW_CHUNKS: usize = 500;
const MAX_TRANSCRIPT_CHARS: usize = 60_000;
const MAX_NOTES_CHARS: usize = 20_000;
/// Most links to the transcript per insight, and how similar a passage must be to count.
const MAX_SOURCE_LINKS: usize = 4;
const MIN_LINK_SIMILARITY: f64 = 0.3;
/// Embedding size used to match insight sentences to transcript passages.
const LINK_DIMENSIONS: usize = 256;
/// Most quotes recorded per insight: a summary of `MAX_SUMMARY_CHARS` has a few hundred
/// sentences at the very most, each quoting the speakers of one passage.
const MAX_QUOTES: usize = 1_024;
/// The `type` of an insight's link to its meeting (its first), titled with the meeting's title.
const MEETING_LINK: &str = "meeting";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateArgs {
    meeting_id: String,
    /// Runs of this page so far that met a provider failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<i64>,
    /// The page of participants to work on (absent: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    /// The chain this run belongs to (its `insightRuns` record's `run`); absent on runs
    /// started by hand or scheduled before generations were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContextArgs {
    meeting_id: String,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    run: Option<i64>,
}

/// A meeting's `insightRuns` record.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunRecord {
    #[serde(rename = "_id")]
    id: String,
    meeting_id: String,
    run: i64,
    resumes: i64,
}

/// A transcript passage, where it lives and whose words it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Passage {
    piece: TranscriptPiece,
    link: InsightLink,
    /// The users who spoke it (a chunk's `chunk_speaker`, a segment's `spokenBy`).
    #[serde(default)]
    spoken_by: Vec<String>,
}

/// What a run works from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunContext {
    /// The run belongs to a chain that was restarted or has finished: it does nothing.
    #[serde(default)]
    stale: bool,
    enabled: bool,
    title: String,
    #[serde(default)]
    description: Option<String>,
    /// Participants of this page still without an insight.
    pending: Vec<String>,
    /// The next page, if there is one.
    #[serde(default)]
    next_cursor: Option<String>,
    passages: Vec<Passage>,
    #[serde(default)]
    notes: Option<String>,
    participants: Vec<crate::ai::ParticipantProfile>,
    features: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewInsight {
    user_id: String,
    summary: String,
    action_items: Vec<String>,
    recommendations: Vec<Recommendation>,
    links: Vec<InsightLink>,
    quotes: Vec<Quote>,
    provenance: Provenance,
}

/// The parts of an insight that may quote or name people.
struct Content {
    summary: String,
    action_items: Vec<String>,
    recommendations: Vec<Recommendation>,
    links: Vec<InsightLink>,
    quotes: Vec<Quote>,
}

impl Content {
    /// The parts as document fields.
    fn fields(&self) -> FunctionResult<query_engine::value::Object> {
        Ok(fields(obj! {
            "summary" => self.summary.as_str(),
            "actionItems" => encode(&self.action_items)?,
            "recommendations" => encode(&self.recommendations)?,
            "links" => encode(&self.links)?,
            "quotes" => encode(&self.quotes)?,
        }))
    }

    /// Redacts what quotes or names `user_id`: the summary sentences and action items
    /// attributed to them and the titles of links to passages they spoke become `REDACTED`
    /// (a link title of an insight written before quotes were recorded is recognised by the
    /// speaker id it starts with), recommendations of them are dropped and their quotes
    /// forgotten. The summary is rebuilt so that it still splits into as many sentences, so
    /// the indices of others' quotes stay right. Returns whether anything changed.
    fn redact(&mut self, user_id: &str) -> bool {
        let (mine, others): (Vec<Quote>, Vec<Quote>) = std::mem::take(&mut self.quotes)
            .into_iter()
            .partition(|q| q.user_id == user_id);
        self.quotes = others;
        let mut changed = !mine.is_empty();
        let mut summary = None;
        for q in &mine {
            let Ok(i) = usize::try_from(q.index) else {
                continue;
            };
            let slot = match q.part {
                QuotePart::Summary => summary
                    .get_or_insert_with(|| sentences(&self.summary))
                    .get_mut(i),
                QuotePart::ActionItem => self.action_items.get_mut(i),
                QuotePart::Link => self.links.get_mut(i).map(|l| &mut l.title),
            };
            if let Some(text) = slot {
                *text = REDACTED.to_string();
            }
        }
        if let Some(parts) = summary {
            self.summary = join_sentences(&parts);
        }
        let legacy = format!("{user_id}: ");
        for l in &mut self.links {
            if l.title.starts_with(&legacy) {
                l.title = REDACTED.to_string();
                changed = true;
            }
        }
        let before = self.recommendations.len();
        self.recommendations
            .retain(|r| r.user_id.as_deref() != Some(user_id));
        changed || self.recommendations.len() != before
    }

    /// Redacts, in an insight that does not record whose words are whose (one written before
    /// `quotes` were), what names `user_id` as `redact` does, and then every text that may
    /// hold their words: the summary, the action items, the titles of links to transcript
    /// passages and what the recommendations say all become `REDACTED` (the meeting's link
    /// keeps its title, the meeting's). None of it can be told to be someone else's, and an
    /// erasure must not leave theirs. Returns whether anything changed.
    fn redact_unattributed(&mut self, user_id: &str) -> bool {
        let mut changed = self.redact(user_id);
        let texts = std::iter::once(&mut self.summary)
            .chain(self.action_items.iter_mut())
            .chain(
                self.links
                    .iter_mut()
                    .filter(|l| l.kind != MEETING_LINK)
                    .map(|l| &mut l.title),
            )
            .chain(self.recommendations.iter_mut().map(|r| &mut r.content));
        for text in texts {
            if *text != REDACTED {
                *text = REDACTED.to_string();
                changed = true;
            }
        }
        changed
    }

    /// Redacts what quotes or names users whose erasure has been requested.
    fn redact_erased(&mut self, ctx: &mut Ctx<'_, '_>) -> FunctionResult<()> {
        let mut named: Vec<String> = self.quotes.iter().map(|q| q.user_id.clone()).collect();
        named.extend(
            self.recommendations
                .iter()
                .filter_map(|r| r.user_id.clone()),
        );
        named.sort_unstable();
        named.dedup();
        for user in named {
            if being_erased(ctx, &user)? {
                self.redact(&user);
            }
        }
        Ok(())
    }
}

/// Redacts, in the stored insight `doc` of a meeting `user_id` took part in, what quotes or
/// names them (`Content::redact`), or, in an insight without `quotes` to tell whose words are
/// whose, all its text (`Content::redact_unattributed`); writes it back if anything changed.
/// Returns whether it did.
pub(crate) fn redact_stored(
    ctx: &mut Ctx<'_, '_>,
    doc: &Value,
    user_id: &str,
) -> FunctionResult<bool> {
    // Decoded, a missing `quotes` and an empty one look alike; only the stored document tells
    // an insight from before quotes from one that quotes nobody.
    let attributed = doc.get_path("quotes").is_some();
    let i: Insight = decode(doc)?;
    let mut content = Content {
        summary: i.summary,
        action_items: i.action_items,
        recommendations: i.recommendations,
        links: i.links,
        quotes: i.quotes,
    };
    let changed = if attributed {
        content.redact(user_id)
    } else {
        content.redact_unattributed(user_id)
    };
    if !changed {
        return Ok(false);
    }
    ctx.patch(INSIGHTS, &i.id, content.fields()?)?;
    Ok(true)
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreArgs {
    meeting_id: String,
    insights: Vec<NewInsight>,
    /// The run to schedule after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<Next>,
    /// The chain of the run storing (`GenerateArgs::run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Next {
    delay_ms: i64,
    attempt: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // insights.generate (internal action, scheduled by meetings.end): see the module comment.
    let cfg = config.clone();
    f.action(
        GENERATE,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("attempt", v::optional(v::int64())),
            ("cursor", v::optional(v::string())),
            ("run", v::optional(v::int64())),
        ]),
        v::null(),
        move |ctx, a: GenerateArgs| generate(ctx, cfg.clone(), a),
    );
    let cfg = config.clone();
    f.query(
        CONTEXT,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("cursor", v::optional(v::string())),
            ("run", v::optional(v::int64())),
        ]),
        v::any(),
        move |ctx, a: ContextArgs| run_context(ctx, &cfg, a).and_then(|c| encode(&c)),
    );
    f.mutation(
        STORE,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            (
                "insights",
                v::array(v::object([
                    ("userId", v::id(USERS)),
                    ("summary", v::string()),
                    ("actionItems", v::array(v::string())),
                    ("recommendations", v::array(insight_recommendation())),
                    ("links", v::array(insight_link())),
                    ("quotes", v::array(insight_quote())),
                    ("provenance", provenance()),
                ])),
            ),
            (
                "next",
                v::optional(v::object([
                    ("delayMs", v::int64()),
                    ("attempt", v::int64()),
                    ("cursor", v::optional(v::string())),
                ])),
            ),
            ("run", v::optional(v::int64())),
        ]),
        v::int64(),
        store,
    );

    // insights.resumeStalled (internal, cron): see `resume_stalled`.
    let cfg = config.clone();
    f.mutation(
        RESUME_STALLED,
        Visibility::Internal,
        v::object([]),
        v::int64(),
        move |ctx, _a: linkedup_schema::api::NoArgs| resume_stalled(ctx, &cfg.ai),
    );

    // insights.listMine: a page of the caller's insights, newest first, of meetings they may
    // still see (`insights.forMeeting`'s access; a page may hold fewer than numItems).
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.query(
        fns::INSIGHTS_LIST_MINE,
        Visibility::Public,
        v::object([
            ("cursor", v::optional(v::string())),
            ("numItems", v::int64()),
        ]),
        v::any(),
        audited(config, fns::INSIGHTS_LIST_MINE, list_mine),
    );

    // insights.forMeeting: the caller's own insight for a meeting, or null.
    // Returns: UNAUTHORIZED, NOT_FOUND, FORBIDDEN, VALIDATION_ERROR.
    f.query(
        fns::INSIGHTS_FOR_MEETING,
        Visibility::Public,
        v::object([("meetingId", v::id(MEETINGS))]),
        v::any(),
        audited(config, fns::INSIGHTS_FOR_MEETING, for_meeting),
    );

    // insights.delete: deletes one of the caller's own insights (seed §20); audited.
    // Returns: UNAUTHORIZED, NOT_FOUND (no such insight, or someone else's: the same error),
    // VALIDATION_ERROR.
    f.mutation(
        fns::INSIGHTS_DELETE,
        Visibility::Public,
        v::object([("insightId", v::id(INSIGHTS))]),
        v::null(),
        audited(config, fns::INSIGHTS_DELETE, delete),
    );
}

/// Starts the generation of a meeting's insights (called by `meetings.end`): records it in
/// `insightRuns` and schedules the chain's first run.
pub(crate) fn schedule_generation(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<()> {
    let now = ctx.now_ms();
    let run = match run_record(ctx, meeting_id)? {
        // Not expected (a meeting ends once); a new chain supersedes the old one.
        Some(r) => {
            let run = r.run + 1;
            ctx.patch(
                INSIGHT_RUNS,
                &r.id,
                fields(obj! { "run" => run, "dueAt" => now }),
            )?;
            run
        }
        None => {
            ctx.insert(
                INSIGHT_RUNS,
                obj! {
                    "meetingId" => meeting_id, "run" => 0i64, "dueAt" => now,
                    "resumes" => 0i64, "createdAt" => now,
                },
            )?;
            0
        }
    };
    schedule_run(ctx, 0, meeting_id, run, None, None)
}

/// Schedules a run of chain `run` of the meeting's generation after `delay_ms`.
fn schedule_run(
    ctx: &mut Ctx<'_, '_>,
    delay_ms: i64,
    meeting_id: &str,
    run: i64,
    attempt: Option<i64>,
    cursor: Option<String>,
) -> FunctionResult<()> {
    let args = encode(&GenerateArgs {
        meeting_id: meeting_id.to_string(),
        attempt,
        cursor,
        run: Some(run),
    })?;
    ctx.schedule_after(delay_ms, GENERATE, args)?;
    Ok(())
}

/// The meeting's generation in progress, if any.
fn run_record(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<Option<RunRecord>> {
    ctx.query(INSIGHT_RUNS, "by_meeting")
        .eq("meetingId", meeting_id)
        .first()?
        .map(|d| decode(&d))
        .transpose()
}

/// The record of the generation chain `run` belongs to, if `run` is that chain's current one.
fn current_run(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    run: i64,
) -> FunctionResult<Option<RunRecord>> {
    Ok(run_record(ctx, meeting_id)?.filter(|r| r.run == run))
}

/// Restarts, from their first page, up to `MAX_RESUMED` generations whose latest run was due
/// `insight_stall_ms` ago or more (its chain stopped: a run interrupted by a restart, or one
/// that failed), each under a new run number; one restarted `MAX_RESUMES` times already is
/// given up and audited. Returns how many it restarted.
fn resume_stalled(ctx: &mut Ctx<'_, '_>, config: &AiConfig) -> FunctionResult<i64> {
    let now = ctx.now_ms();
    let stalled = ctx
        .query(INSIGHT_RUNS, "by_due")
        .lte("dueAt", now.saturating_sub(config.insight_stall_ms.max(0)))
        .take(MAX_RESUMED)?;
    let mut resumed = 0;
    for doc in &stalled {
        let r: RunRecord = decode(doc)?;
        if r.resumes >= MAX_RESUMES {
            ctx.delete(INSIGHT_RUNS, &r.id)?;
            tracing::warn!(meeting = %r.meeting_id, resumes = r.resumes, "post-call insights given up");
            let org = get_meeting(ctx, &r.meeting_id)?.org_id;
            audit::record_in_org(
                ctx,
                org.as_deref(),
                None,
                "meeting",
                &r.meeting_id,
                "insights.abandoned",
                obj! { "resumes" => r.resumes },
            )?;
            continue;
        }
        let run = r.run + 1;
        ctx.patch(
            INSIGHT_RUNS,
            &r.id,
            fields(obj! { "run" => run, "resumes" => r.resumes + 1, "dueAt" => now }),
        )?;
        schedule_run(ctx, 0, &r.meeting_id, run, None, None)?;
        resumed += 1;
    }
    Ok(resumed)
}

fn written_key(meeting_id: &str, user_id: &str) -> String {
    format!("{meeting_id}:{user_id}")
}

/// Whether the user has, or had, an insight for the meeting.
fn has_insight(ctx: &mut Ctx<'_, '_>, meeting_id: &str, user_id: &str) -> FunctionResult<bool> {
    let existing = ctx
        .query(INSIGHTS, "by_user_meeting")
        .eq("userId", user_id)
        .eq("meetingId", meeting_id)
        .first()?;
    Ok(
        existing.is_some()
            || peek(ctx, &written_key(meeting_id, user_id), WRITTEN_SCOPE)?.is_some(),
    )
}

fn run_context(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: ContextArgs,
) -> FunctionResult<RunContext> {
    let meeting = get_meeting(ctx, &a.meeting_id)?;
    let mut run = RunContext {
        stale: false,
        enabled: false,
        title: meeting.title.clone(),
        description: meeting.description.clone(),
        pending: Vec::new(),
        next_cursor: None,
        passages: Vec::new(),
        notes: None,
        participants: Vec::new(),
        features: Value::Null,
    };
    if let Some(r) = a.run {
        if current_run(ctx, &a.meeting_id, r)?.is_none() {
            run.stale = true;
            return Ok(run);
        }
    }
    if !is_enabled(
        ctx,
        FLAG,
        &config.environment,
        meeting.org_id.as_deref(),
        &a.meeting_id,
    )? {
        return Ok(run);
    }
    run.enabled = true;
    let page = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting")
        .eq("meetingId", a.meeting_id.as_str())
        .paginate(a.cursor.as_deref(), BATCH)?;
    for doc in &page.page {
        let p: Participant = decode(doc)?;
        // One whose erasure was requested gets none (`store` would not write it): the
        // provider is not asked, nor sent the meeting's notes and transcript for them.
        if !has_insight(ctx, &a.meeting_id, &p.user_id)? && !being_erased(ctx, &p.user_id)? {
            run.pending.push(p.user_id);
        }
    }
    if !page.is_done {
        run.next_cursor = page.continue_cursor;
    }
    if run.pending.is_empty() {
        return Ok(run);
    }
    let (passages, segments, chunks, truncated) = transcript(ctx, &a.meeting_id)?;
    run.passages = passages;
    run.notes = ctx
        .query(MEETING_NOTES, "by_meeting")
        .eq("meetingId", a.meeting_id.as_str())
        .first()?
        .and_then(|d| {
            d.get_path("content")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .map(|n| truncate(n.trim(), MAX_NOTES_CHARS))
        .filter(|n| !n.is_empty());
    run.participants = participants_of(ctx, &a.meeting_id, &run.pending)?;
    run.features = obj! {
        "segments" => segments as i64,
        "unaggregatedChunks" => chunks as i64,
        "transcriptTruncated" => truncated,
        "notesChars" => run.notes.as_deref().map_or(0, |n| n.chars().count()) as i64,
        "participants" => run.participants.len() as i64,
    };
    Ok(run)
}

/// The meeting's transcript as it stands: its segments, then the chunks aggregation has not
/// covered yet, up to `MAX_TRANSCRIPT_CHARS`. Returns the passages, how many segments and
/// chunks they came from, and whether anything was left out.
fn transcript(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
) -> FunctionResult<(Vec<Passage>, usize, usize, bool)> {
    let segments = ctx
        .query(TRANSCRIPT_SEGMENTS, "by_meeting_time")
        .eq("meetingId", meeting_id)
        .take(MAX_SEGMENTS + 1)?;
    let mut truncated = segments.len() > MAX_SEGMENTS;
    let covered = aggregated_until(ctx, meeting_id)?;
    let chunks = ctx
        .query(TRANSCRIPTS, "by_meeting_sequence")
        .eq("meetingId", meeting_id)
        .gt("sequence", covered)
        .take(MAX_RAW_CHUNKS + 1)?;
    truncated |= chunks.len() > MAX_RAW_CHUNKS;
    let str_at = |d: &Value, path: &str| d.get_path(path).and_then(Value::as_str).map(String::from);
    let mut passages = Vec::new();
    let mut chars = 0;
    let mut counts = (0, 0);
    let sources = segments
        .iter()
        .take(MAX_SEGMENTS)
        .map(|d| (true, d))
        .chain(chunks.iter().take(MAX_RAW_CHUNKS).map(|d| (false, d)));
    for (is_segment, d) in sources {
        let text = str_at(d, "text").unwrap_or_default();
        let n = text.chars().count();
        if chars + n > MAX_TRANSCRIPT_CHARS {
            truncated = true;
            break;
        }
        chars += n;
        let (speaker, spoken_by) = if is_segment {
            let names = |field: &str| -> Vec<String> {
                d.get_path(field)
                    .and_then(Value::as_array)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            };
            let speakers = names("speakers");
            // Whose words: `spokenBy`, by the chunks' rule; a segment aggregated before it
            // was recorded has only its labels, of which a diarisation label ("spk_0") names
            // nobody.
            let users = match d.get_path("spokenBy") {
                Some(_) => names("spokenBy"),
                None => speakers
                    .iter()
                    .filter(|s| ctx.parse_id(USERS, s).is_ok())
                    .cloned()
                    .collect(),
            };
            (speakers.first().cloned(), users)
        } else {
            let spoken_by = chunk_speaker(ctx, d)
                .map(String::from)
                .into_iter()
                .collect();
            (str_at(d, "speakerId"), spoken_by)
        };
        let (kind, url) = if is_segment {
            counts.0 += 1;
            let id = str_at(d, "_id").unwrap_or_default();
            (
                "transcriptSegment",
                format!("linkedup://meetings/{meeting_id}/segments/{id}"),
            )
        } else {
            counts.1 += 1;
            let seq = d.get_path("sequence").and_then(Value::as_i64).unwrap_or(0);
            (
                "transcriptChunk",
                format!("linkedup://meetings/{meeting_id}/transcript/{seq}"),
            )
        };
        let title = match &speaker {
            Some(s) => format!("{}: {}", truncate(s, 40), truncate(&text, 80)),
            None => truncate(&text, 80),
        };
        passages.push(Passage {
            piece: TranscriptPiece { speaker, text },
            link: InsightLink {
                kind: kind.into(),
                url,
                title,
            },
            spoken_by,
        });
    }
    Ok((passages, counts.0, counts.1, truncated))
}

/// The links of an insight — the meeting, then the passages its summary sentences and action
/// items are most similar to (lexically), in transcript order — and its quotes: each of those
/// sentences and items, and each link to a passage, attributed to the passage's speakers.
fn sources_for(
    meeting_id: &str,
    title: &str,
    draft: &InsightDraft,
    passages: &[Passage],
    vectors: &[Option<Vec<f64>>],
) -> (Vec<InsightLink>, Vec<Quote>) {
    let mut chosen: Vec<usize> = Vec::new();
    let mut quotes = Vec::new();
    let quote = |quotes: &mut Vec<Quote>, passage: &Passage, part, index: usize| {
        for user in &passage.spoken_by {
            quotes.push(Quote {
                user_id: user.clone(),
                part,
                index: index as i64,
            });
        }
    };
    let claims = sentences(&draft.summary)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (QuotePart::Summary, i, s))
        .chain(
            draft
                .action_items
                .iter()
                .enumerate()
                .map(|(i, a)| (QuotePart::ActionItem, i, a.clone())),
        );
    for (part, index, claim) in claims {
        let Some(c) = hashed_embedding(&claim, LINK_DIMENSIONS) else {
            continue;
        };
        let best = vectors
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, cosine(&c, v))))
            .filter(|(_, s)| *s >= MIN_LINK_SIMILARITY)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if let Some((i, _)) = best {
            quote(&mut quotes, &passages[i], part, index);
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
    }
    chosen.truncate(MAX_SOURCE_LINKS);
    chosen.sort_unstable();
    for (k, &i) in chosen.iter().enumerate() {
        // Link 0 is the meeting's.
        quote(&mut quotes, &passages[i], QuotePart::Link, k + 1);
    }
    if quotes.len() > MAX_QUOTES {
        tracing::warn!(
            quotes = quotes.len(),
            "an insight's quotes were cut to {MAX_QUOTES}"
        );
        quotes.truncate(MAX_QUOTES);
    }
    let links = std::iter::once(InsightLink {
        kind: MEETING_LINK.into(),
        url: format!("linkedup://meetings/{meeting_id}"),
        title: truncate(title, 120),
    })
    .chain(chosen.into_iter().map(|i| passages[i].link.clone()))
    .collect();
    (links, quotes)
}

async fn generate(
    ctx: ActionCtx,
    config: Arc<LinkedUpConfig>,
    a: GenerateArgs,
) -> FunctionResult<()> {
    let attempt = a.attempt.unwrap_or(0).max(0);
    let mut context_args = obj! { "meetingId" => a.meeting_id.as_str() };
    if let Some(o) = context_args.as_object_mut() {
        if let Some(cursor) = &a.cursor {
            o.insert("cursor".into(), cursor.as_str().into());
        }
        if let Some(r) = a.run {
            o.insert("run".into(), r.into());
        }
    }
    let run: RunContext = decode(&ctx.run_query(CONTEXT, context_args).await?)?;
    if run.stale {
        return Ok(());
    }
    if !run.enabled {
        tracing::info!(meeting = %a.meeting_id, "post-call insights are turned off; none generated");
        // Stored as a last run with nothing in it, which ends the chain's record.
        let args = StoreArgs {
            meeting_id: a.meeting_id,
            insights: Vec::new(),
            next: None,
            run: a.run,
        };
        ctx.run_mutation(STORE, encode(&args)?).await?;
        return Ok(());
    }
    let service = &config.ai.service;
    let base = PostCallRequest {
        title: run.title.clone(),
        description: run.description.clone(),
        transcript: run.passages.iter().map(|p| p.piece.clone()).collect(),
        notes: run.notes.clone(),
        participants: run.participants.clone(),
        for_user: String::new(),
    };
    let requests: Vec<PostCallRequest> = run
        .pending
        .iter()
        .map(|u| PostCallRequest {
            for_user: u.clone(),
            ..base.clone()
        })
        .collect();
    let deadline = config.ai.provider_deadline(&ctx);
    let answers = join_all(
        requests
            .iter()
            .map(|r| service.try_post_call_insight(r, deadline)),
    )
    .await;
    let last_attempt = attempt + 1 >= i64::from(config.ai.insight_attempts.max(1));
    let vectors: Vec<Option<Vec<f64>>> = run
        .passages
        .iter()
        .map(|p| hashed_embedding(&p.piece.text, LINK_DIMENSIONS))
        .collect();
    let mut insights = Vec::new();
    let mut failed = 0;
    for (request, answer) in requests.iter().zip(answers) {
        let generated: Generated<InsightDraft> = match answer {
            Ok(g) => g,
            Err(_) if !last_attempt => {
                failed += 1;
                continue;
            }
            Err(e) => {
                let reason = format!("{}: {e}", service.provider_name());
                service.local_post_call_insight(request, Some(reason))?
            }
        };
        let hash = request_hash(WRITTEN_SCOPE, request);
        let mut features = run.features.clone();
        if let Some(o) = features.as_object_mut() {
            o.insert("attempt".into(), (attempt + 1).into());
        }
        let (links, quotes) = sources_for(
            &a.meeting_id,
            &run.title,
            &generated.value,
            &run.passages,
            &vectors,
        );
        insights.push(NewInsight {
            user_id: request.for_user.clone(),
            links,
            quotes,
            provenance: generated.provenance(&hash, features),
            summary: generated.value.summary,
            action_items: generated.value.action_items,
            recommendations: about_participants(generated.value.recommendations, request),
        });
    }
    let next = if failed > 0 {
        let delay = config
            .ai
            .insight_retry_delay_ms
            .saturating_mul(1 << attempt.min(16));
        Some(Next {
            delay_ms: delay,
            attempt: attempt + 1,
            cursor: a.cursor.clone(),
        })
    } else {
        run.next_cursor.map(|cursor| Next {
            delay_ms: 0,
            attempt: 0,
            cursor: Some(cursor),
        })
    };
    // Stored even when empty: the last run of a chain ends its record.
    let args = StoreArgs {
        meeting_id: a.meeting_id,
        insights,
        next,
        run: a.run,
    };
    ctx.run_mutation(STORE, encode(&args)?).await?;
    Ok(())
}

/// Writes the insights of participants who still have none and never had one, audits the
/// batch, and schedules the next run — unless the run's chain was superseded (its insights,
/// already paid for, are written all the same) — moving the chain's `dueAt` to it, or ends
/// the chain's record after its last run. Returns how many it wrote.
fn store(ctx: &mut Ctx<'_, '_>, a: StoreArgs) -> FunctionResult<i64> {
    let meeting = get_meeting(ctx, &a.meeting_id)?;
    let now = ctx.now_ms();
    let chain = match a.run {
        Some(r) => Some(current_run(ctx, &a.meeting_id, r)?),
        None => None,
    };
    let mut written = 0i64;
    let mut fallbacks = 0i64;
    let mut made_by = None;
    for i in &a.insights {
        // A participant removed since the run began, or whose erasure was requested since,
        // gets nothing.
        if find_participant(ctx, &a.meeting_id, &i.user_id)?.is_none()
            || being_erased(ctx, &i.user_id)?
            || has_insight(ctx, &a.meeting_id, &i.user_id)?
        {
            continue;
        }
        let key = written_key(&a.meeting_id, &i.user_id);
        // Made of two ids, so never a key the check refuses.
        check_and_record(ctx, "meetingId", &key, WRITTEN_SCOPE, WRITTEN_TTL_MS)?;
        let mut content = Content {
            summary: i.summary.clone(),
            action_items: i.action_items.clone(),
            recommendations: without_blocked(ctx, &i.user_id, i.recommendations.clone())?,
            links: i.links.clone(),
            quotes: i.quotes.clone(),
        };
        // The erasure job may have passed this meeting's insights while this run was working.
        content.redact_erased(ctx)?;
        let mut doc = content.fields()?;
        doc.insert("userId".into(), i.user_id.as_str().into());
        doc.insert("meetingId".into(), a.meeting_id.as_str().into());
        doc.insert("createdAt".into(), now.into());
        doc.insert("provenance".into(), encode(&i.provenance)?);
        ctx.insert(INSIGHTS, Value::from(doc))?;
        written += 1;
        fallbacks += i64::from(i.provenance.fallback);
        made_by.get_or_insert(&i.provenance);
    }
    if let Some(first) = made_by {
        audit::record_in_org(
            ctx,
            meeting.org_id.as_deref(),
            None,
            "meeting",
            &a.meeting_id,
            "insights.generated",
            obj! {
                "count" => written,
                "fallbacks" => fallbacks,
                "provider" => first.provider.as_str(),
                "model" => first.model.as_str(),
            },
        )?;
    }
    match (chain, a.next) {
        // A superseded chain goes no further.
        (Some(None), _) => {}
        (Some(Some(record)), Some(next)) => {
            let due = now.saturating_add(next.delay_ms.max(0));
            ctx.patch(INSIGHT_RUNS, &record.id, fields(obj! { "dueAt" => due }))?;
            let (attempt, cursor) = (Some(next.attempt), next.cursor);
            schedule_run(
                ctx,
                next.delay_ms,
                &a.meeting_id,
                record.run,
                attempt,
                cursor,
            )?;
        }
        (Some(Some(record)), None) => ctx.delete(INSIGHT_RUNS, &record.id)?,
        (None, Some(next)) => {
            let args = encode(&GenerateArgs {
                meeting_id: a.meeting_id.clone(),
                attempt: Some(next.attempt),
                cursor: next.cursor,
                run: None,
            })?;
            ctx.schedule_after(next.delay_ms, GENERATE, args)?;
        }
        (None, None) => {}
    }
    Ok(written)
}

fn list_mine(ctx: &mut Ctx<'_, '_>, a: ListMyInsightsArgs) -> FunctionResult<InsightPage> {
    let n = limit_arg("numItems", Some(a.num_items), 20, MAX_INSIGHTS_PAGE)?;
    let me = current_user(ctx)?;
    let query = ctx
        .query(INSIGHTS, "by_user")
        .eq("userId", me.id.as_str())
        .desc();
    let mut page: InsightPage = decoded_page(query, a.cursor.as_deref(), n)?;
    // As `insights.forMeeting` would: not a meeting the caller was removed from, or of an
    // organisation they no longer belong to (a page may then hold fewer than `numItems`).
    let mut visible = Vec::with_capacity(page.page.len());
    for insight in page.page {
        if may_see_meeting(ctx, &me, &insight.meeting_id)? {
            visible.push(as_read(ctx, insight)?);
        }
    }
    page.page = visible;
    Ok(page)
}

fn for_meeting(ctx: &mut Ctx<'_, '_>, a: MeetingIdArgs) -> FunctionResult<Option<Insight>> {
    let access = assert_meeting_access(ctx, &a.meeting_id, Role::Participant)?;
    let doc = ctx
        .query(INSIGHTS, "by_user_meeting")
        .eq("userId", access.user.id.as_str())
        .eq("meetingId", a.meeting_id.as_str())
        .first()?;
    doc.map(|d| as_read(ctx, decode(&d)?)).transpose()
}

/// An insight as its owner reads it: without recommendations of users blocked either way.
fn as_read(ctx: &mut Ctx<'_, '_>, mut insight: Insight) -> FunctionResult<Insight> {
    let recommendations = std::mem::take(&mut insight.recommendations);
    insight.recommendations = without_blocked(ctx, &insight.user_id, recommendations)?;
    Ok(insight)
}

/// `recs` without those about a user whom `owner` blocks or who blocks `owner` (two point
/// reads each, so a reading query is invalidated by a block made later).
fn without_blocked(
    ctx: &mut Ctx<'_, '_>,
    owner: &str,
    recs: Vec<Recommendation>,
) -> FunctionResult<Vec<Recommendation>> {
    let mut kept = Vec::with_capacity(recs.len());
    for r in recs {
        match &r.user_id {
            Some(other) if either_way(ctx, owner, other)? => {}
            _ => kept.push(r),
        }
    }
    Ok(kept)
}

/// The recommendations of a draft that can be honoured: one about a user only if that user is
/// another participant the request described, and a connection only with such a user (one
/// naming nobody could not be checked against blocks).
fn about_participants(recs: Vec<Recommendation>, r: &PostCallRequest) -> Vec<Recommendation> {
    recs.into_iter()
        .filter(|rec| match &rec.user_id {
            Some(u) => *u != r.for_user && r.participants.iter().any(|p| p.user_id == *u),
            None => rec.kind != "connection",
        })
        .collect()
}

fn delete(ctx: &mut Ctx<'_, '_>, a: InsightIdArgs) -> FunctionResult<()> {
    let me = current_user(ctx)?;
    let missing = || ErrorCode::NotFound.err(format!("no insight {}", a.insight_id));
    let doc = ctx.get(INSIGHTS, &a.insight_id)?.ok_or_else(missing)?;
    let insight: Insight = decode(&doc)?;
    if insight.user_id != me.id {
        // Insights are private to their owner: another's is as good as missing.
        return Err(hidden(
            missing(),
            "only the insight's owner may delete it",
            "insight",
            &a.insight_id,
        ));
    }
    ctx.delete(INSIGHTS, &a.insight_id)?;
    audit::record(
        ctx,
        Some(&me.id),
        "insight",
        &a.insight_id,
        "insight.deleted",
        obj! { "meetingId" => insight.meeting_id.as_str() },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::ParticipantProfile;

    fn rec(kind: &str, user: Option<&str>) -> Recommendation {
        Recommendation {
            kind: kind.into(),
            content: "c".into(),
            confidence: 0.5,
            user_id: user.map(String::from),
        }
    }

    fn person(id: &str) -> ParticipantProfile {
        ParticipantProfile {
            user_id: id.into(),
            name: id.into(),
            bio: None,
            goals: None,
            experience: None,
            interests: Vec::new(),
        }
    }

    fn quote(user: &str, part: QuotePart, index: i64) -> Quote {
        Quote {
            user_id: user.into(),
            part,
            index,
        }
    }

    fn link(title: &str) -> InsightLink {
        InsightLink {
            kind: "transcriptChunk".into(),
            url: "linkedup://x".into(),
            title: title.into(),
        }
    }

    #[test]
    fn redaction_replaces_what_one_user_said_and_leaves_the_others_quotes_in_place() {
        let mut c = Content {
            summary: "Ann opened.\nBob agreed\nAnn closed! Bob left?".into(),
            action_items: vec!["Ann will write".into(), "Bob will test".into()],
            recommendations: vec![rec("connection", Some("bob")), rec("topic", None)],
            links: vec![
                link("Standup"),
                link("ann: Ann opened."),
                link("bob: Bob left?"),
            ],
            quotes: vec![
                quote("ann", QuotePart::Summary, 0),
                quote("bob", QuotePart::Summary, 1),
                quote("ann", QuotePart::Summary, 2),
                quote("bob", QuotePart::Summary, 3),
                quote("bob", QuotePart::ActionItem, 1),
                quote("ann", QuotePart::Link, 1),
            ],
        };
        assert!(c.redact("bob"));
        assert_eq!(c.summary, "Ann opened. [erased]\nAnn closed! [erased]");
        assert_eq!(c.action_items, ["Ann will write", "[erased]"]);
        assert_eq!(c.recommendations, [rec("topic", None)]);
        // Bob's link had no quote (an insight from before quotes): known by its title.
        assert_eq!(c.links[2].title, "[erased]");
        assert_eq!(c.quotes.len(), 3);
        assert!(!c.redact("bob"), "nothing of bob is left");
        // Ann's quotes still point at her sentences.
        assert!(c.redact("ann"));
        assert_eq!(c.summary, "[erased]\n[erased]\n[erased]\n[erased]");
        assert_eq!(c.action_items, ["Ann will write", "[erased]"]);
        assert_eq!(c.links[1].title, "[erased]");
        assert!(c.quotes.is_empty());
    }

    #[test]
    fn an_insight_without_quotes_keeps_no_text_but_its_meetings_title() {
        let mut c = Content {
            summary: "Bob is moving. Ann stays.".into(),
            action_items: vec!["Ann will write".into()],
            recommendations: vec![rec("connection", Some("bob")), rec("topic", None)],
            links: vec![
                InsightLink {
                    kind: MEETING_LINK.into(),
                    ..link("Standup")
                },
                link("spk_0: I am moving"),
            ],
            quotes: Vec::new(),
        };
        assert!(c.redact_unattributed("bob"));
        assert_eq!(c.summary, REDACTED);
        assert_eq!(c.action_items, [REDACTED]);
        assert_eq!(c.links[0].title, "Standup");
        assert_eq!(c.links[1].title, REDACTED);
        let mut topic = rec("topic", None);
        topic.content = REDACTED.into();
        assert_eq!(c.recommendations, [topic]);
        assert!(!c.redact_unattributed("ann"), "nothing is left to redact");
    }

    #[test]
    fn only_recommendations_about_other_participants_are_kept() {
        let request = PostCallRequest {
            title: "t".into(),
            description: None,
            transcript: Vec::new(),
            notes: None,
            participants: vec![person("me"), person("you")],
            for_user: "me".into(),
        };
        let kept = about_participants(
            vec![
                rec("connection", Some("you")),
                rec("connection", Some("me")),
                rec("connection", Some("stranger")),
                rec("connection", None),
                rec("topic", None),
                rec("followUp", Some("stranger")),
            ],
            &request,
        );
        assert_eq!(
            kept,
            vec![rec("connection", Some("you")), rec("topic", None)]
        );
    }
}
