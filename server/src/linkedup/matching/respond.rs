//! `matching.respond`: a matched user records what became of their match, one
//! `matchingAnalytics` row per user, match and outcome, carrying the features and weights the
//! match was scored with (from the queue entry, not recomputed), so outcomes can later tune
//! the weights.
//!
//! Per user and match: none → accepted | declined; accepted → completed. Repeating an
//! outcome already recorded returns the row recorded first and writes nothing; any other
//! transition is CONFLICT. A decline keeps the pair apart for the cool-down (see `parties`).
//!
//! A match is pending until either side declines it or records it completed. A block between
//! the two (`blocks`) cancels a pending match (`cancel_pending`): both entries become
//! `cancelled`, so neither can respond to it any more.

use std::sync::Arc;

use linkedup_schema::api::matching::limits::{MAX_COMMENT_CHARS, MAX_RATING};
use linkedup_schema::api::matching::{
    fns, MatchAnalytics, MatchOutcome, QueueEntry, QueueStatus, RespondArgs, MATCH_OUTCOMES,
};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{MATCHING_ANALYTICS, MATCHING_QUEUE};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;

use super::match_id::MatchId;
use crate::linkedup::guards::current_user;
use crate::linkedup::{audit, audited, check_text, decode, encode, fields, LinkedUpConfig};

/// Most of the caller's entries searched for the one a match id names (their latest ones).
const MAX_ENTRIES_SEARCHED: usize = 32;

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // matching.respond: records the caller's outcome of one of their matches (see the module
    // comment). Returns the analytics row. Returns: UNAUTHORIZED, VALIDATION_ERROR (malformed
    // match id, rating outside 1..=5, comment too long), FORBIDDEN (another pair's match),
    // NOT_FOUND (no such match of the caller's among their latest entries), CONFLICT.
    f.mutation(
        fns::RESPOND,
        Visibility::Public,
        v::object([
            ("matchId", v::string()),
            (
                "outcome",
                v::union(MATCH_OUTCOMES.iter().map(|s| v::literal(*s))),
            ),
            (
                "feedback",
                v::optional(v::object([
                    ("rating", v::int64()),
                    ("comments", v::optional(v::string())),
                ])),
            ),
        ]),
        v::any(),
        audited(config, fns::RESPOND, respond),
    );
}

fn respond(ctx: &mut Ctx<'_, '_>, a: RespondArgs) -> FunctionResult<MatchAnalytics> {
    let match_id =
        MatchId::parse(&a.match_id).ok_or_else(|| invalid_field("matchId", "not a match id"))?;
    if let Some(fb) = &a.feedback {
        if !(1..=MAX_RATING).contains(&fb.rating) {
            return Err(invalid_field(
                "feedback.rating",
                format!("must be 1..={MAX_RATING}"),
            ));
        }
        if let Some(c) = &fb.comments {
            check_text("feedback.comments", c, 0, MAX_COMMENT_CHARS)?;
        }
    }
    let me = current_user(ctx)?;
    if !match_id.involves(&me.id) {
        return Err(ErrorCode::Forbidden.err_with(
            "this match is not yours",
            obj! { "resourceType" => "match", "resourceId" => a.match_id.as_str() },
        ));
    }
    let entry = ctx
        .query(MATCHING_QUEUE, "by_user")
        .eq("userId", me.id.as_str())
        .desc()
        .take(MAX_ENTRIES_SEARCHED)?
        .iter()
        .map(decode::<QueueEntry>)
        .collect::<FunctionResult<Vec<_>>>()?
        .into_iter()
        .find(|e| {
            e.status == QueueStatus::Matched
                && e.match_record.as_ref().map(|m| m.match_id.as_str()) == Some(a.match_id.as_str())
        })
        .ok_or_else(|| ErrorCode::NotFound.err(format!("no match {} of yours", a.match_id)))?;
    let record = entry
        .match_record
        .ok_or_else(|| ErrorCode::Internal.err("matched entry without its match"))?;

    let rows = own_rows(ctx, &a.match_id, &me.id)?;
    if let Some(first) = rows.iter().find(|r| r.outcome == a.outcome) {
        return Ok(first.clone());
    }
    let recorded: Vec<MatchOutcome> = rows.iter().map(|r| r.outcome).collect();
    let allowed = match a.outcome {
        MatchOutcome::Accepted | MatchOutcome::Declined => recorded.is_empty(),
        MatchOutcome::Completed => recorded == [MatchOutcome::Accepted],
    };
    if !allowed {
        return Err(ErrorCode::Conflict.err(format!(
            "cannot record {} after {:?}",
            a.outcome.as_str(),
            recorded.iter().map(|o| o.as_str()).collect::<Vec<_>>()
        )));
    }
    let now = ctx.now_ms();
    let mut row = fields(obj! {
        "userId" => me.id.as_str(),
        "matchId" => a.match_id.as_str(),
        "outcome" => a.outcome.as_str(),
        "features" => encode(&record.features)?,
        "weights" => encode(&record.weights)?,
        "createdAt" => now,
    });
    if let Some(fb) = &a.feedback {
        row.insert("feedback".into(), encode(fb)?);
    }
    let id = ctx.insert(MATCHING_ANALYTICS, Value::from(row))?;
    audit::record(
        ctx,
        Some(&me.id),
        "match",
        &a.match_id,
        "matching.responded",
        obj! { "outcome" => a.outcome.as_str(), "entryId" => entry.id.as_str() },
    )?;
    let doc = ctx
        .get(MATCHING_ANALYTICS, &id)?
        .ok_or_else(|| ErrorCode::Internal.err("inserted outcome not readable"))?;
    decode(&doc)
}

/// The outcome rows `user_id` recorded for `match_id` (at most one per outcome).
pub fn own_rows(
    ctx: &mut Ctx<'_, '_>,
    match_id: &str,
    user_id: &str,
) -> FunctionResult<Vec<MatchAnalytics>> {
    let mut own = rows_of(ctx, match_id)?;
    own.retain(|row| row.user_id == user_id);
    Ok(own)
}

/// Every outcome row of `match_id`.
fn rows_of(ctx: &mut Ctx<'_, '_>, match_id: &str) -> FunctionResult<Vec<MatchAnalytics>> {
    // Two users with one row per outcome each.
    let most = 2 * MATCH_OUTCOMES.len();
    ctx.query(MATCHING_ANALYTICS, "by_match")
        .eq("matchId", match_id)
        .take(most)?
        .iter()
        .map(decode)
        .collect()
}

/// Cancels the pending matches of `x` and `y` with each other: every matched entry of either,
/// among their latest (those `matching.respond` searches), that is matched with the other and
/// whose match neither declined nor completed becomes `cancelled`, keeping `matchedWith` and
/// the match record. Returns the ids of the matches cancelled.
pub(crate) fn cancel_pending(
    ctx: &mut Ctx<'_, '_>,
    x: &str,
    y: &str,
) -> FunctionResult<Vec<String>> {
    let now = ctx.now_ms();
    let mut cancelled: Vec<String> = Vec::new();
    for (user, other) in [(x, y), (y, x)] {
        let entries = ctx
            .query(MATCHING_QUEUE, "by_user")
            .eq("userId", user)
            .desc()
            .take(MAX_ENTRIES_SEARCHED)?;
        for doc in &entries {
            let entry: QueueEntry = decode(doc)?;
            let Some(record) = &entry.match_record else {
                continue;
            };
            if entry.status != QueueStatus::Matched || entry.matched_with.as_deref() != Some(other)
            {
                continue;
            }
            let concluded = rows_of(ctx, &record.match_id)?
                .iter()
                .any(|r| matches!(r.outcome, MatchOutcome::Declined | MatchOutcome::Completed));
            if concluded {
                continue;
            }
            ctx.patch(
                MATCHING_QUEUE,
                &entry.id,
                fields(obj! { "status" => QueueStatus::Cancelled.as_str(), "updatedAt" => now }),
            )?;
            if !cancelled.contains(&record.match_id) {
                cancelled.push(record.match_id.clone());
            }
        }
    }
    Ok(cancelled)
}
