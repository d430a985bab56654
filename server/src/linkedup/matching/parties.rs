//! A waiting queue entry with everything matching needs about its user (`Party`), read from
//! the database in bounded reads: organisation, whether they may be matched (active, flag on),
//! interests, roles, languages, embedding and do-not-match list. Also the exact do-not-match
//! check of one pair that a match's commit makes.
//!
//! A party's do-not-match list holds, bounded per source, its declined connections, its
//! recently declined matches and its blocks either way (`blocks`), so the cycle does not
//! propose those pairs; `pair_blocked` checks the pair exactly when the match commits, so a
//! pair beyond those bounds (a user blocking more than `MAX_BLOCKS_READ` users) is still
//! never matched.

use std::collections::BTreeSet;

use linkedup_schema::api::limits::MAX_INTERESTS;
use linkedup_schema::api::matching::{MatchOutcome, OrgConstraint, QueueEntry};
use linkedup_schema::api::{ConnectionStatus, User};
use linkedup_schema::tables::names::{
    CONNECTIONS, EMBEDDINGS, MATCHING_ANALYTICS, MATCHING_QUEUE, PROFILES, USERS, USER_INTERESTS,
};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::match_id::MatchId;
use super::{MatchingConfig, FLAG};
use crate::linkedup::{blocks, decode, flags, LinkedUpConfig};

/// Most declined connections read per side of a user for their do-not-match list.
const MAX_DECLINED_CONNECTIONS: usize = 64;
/// Most of a user's newest blocks read per direction (by them, of them) for their
/// do-not-match list.
const MAX_BLOCKS_READ: usize = 64;
/// Most of a user's latest match outcomes read for their recent declines.
const MAX_RECENT_OUTCOMES: usize = 64;
/// Most outcomes of one pair read by the commit's exact check.
const MAX_PAIR_OUTCOMES: usize = 32;
/// Most of a user's newest queue entries looked through for an earlier match with the other.
const MAX_RECENT_ENTRIES: usize = 32;
/// Embeddings longer than this are not shipped to the cycle (no vector signal).
pub const MAX_VECTOR_DIMENSIONS: usize = 4_096;

/// A user's embedding as stored by the embedding action (`embeddings`, sourceType "user").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Embedding {
    pub model: String,
    pub dimensions: i64,
    pub vector: Vec<f64>,
}

/// One side of a prospective match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    pub entry_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// The user exists, is active and has the `matching` flag on.
    pub can_match: bool,
    pub available_from: i64,
    pub available_to: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_constraint: Option<OrgConstraint>,
    /// The entry's interest keys and the user's own.
    pub interests: BTreeSet<String>,
    pub roles: BTreeSet<String>,
    /// The profile's languages, trimmed and lower-cased.
    pub languages: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Embedding>,
    /// Users never to be matched with: declined connections either way, matches either side
    /// declined within the cool-down, and blocks either way.
    pub do_not_match: BTreeSet<String>,
}

/// How much of a party to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Everything, for scoring.
    Full,
    /// Only what the hard constraints need (user, flag, window, languages); the commit checks
    /// do-not-match exactly per pair with `pair_blocked`.
    Constraints,
}

/// Reads the party of a queue entry as of now.
pub fn load(
    ctx: &mut Ctx<'_, '_>,
    entry: &QueueEntry,
    config: &LinkedUpConfig,
    detail: Detail,
) -> FunctionResult<Party> {
    let user: Option<User> = ctx
        .get(USERS, &entry.user_id)?
        .map(|d| decode(&d))
        .transpose()?;
    let org_id = user.as_ref().and_then(|u| u.org_id.clone());
    let can_match = match &user {
        Some(u) if u.is_active => {
            flags::is_enabled(ctx, FLAG, &config.environment, org_id.as_deref(), &u.id)?
        }
        _ => false,
    };
    let mut party = Party {
        entry_id: entry.id.clone(),
        user_id: entry.user_id.clone(),
        org_id,
        can_match,
        available_from: entry.available_from,
        available_to: entry.available_to,
        org_constraint: entry.constraints.org_constraints,
        languages: languages(ctx, &entry.user_id)?,
        ..Party::default()
    };
    if detail == Detail::Full {
        party.interests = entry.constraints.interests.iter().cloned().collect();
        for doc in ctx
            .query(USER_INTERESTS, "by_user")
            .eq("userId", entry.user_id.as_str())
            .take(MAX_INTERESTS)?
        {
            if let Some(k) = doc.get_path("interestKey").and_then(Value::as_str) {
                party.interests.insert(k.to_string());
            }
        }
        party.roles = entry.constraints.roles.iter().cloned().collect();
        party.embedding = embedding(ctx, &entry.user_id)?;
        party.do_not_match = do_not_match(ctx, &entry.user_id, &config.matching)?;
    }
    Ok(party)
}

fn languages(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<BTreeSet<String>> {
    let profile = ctx
        .query(PROFILES, "by_user")
        .eq("userId", user_id)
        .first()?;
    let listed = profile
        .as_ref()
        .and_then(|p| p.get_path("languages"))
        .and_then(Value::as_array)
        .unwrap_or(&[]);
    Ok(listed
        .iter()
        .filter_map(Value::as_str)
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The user's newest embedding, if it is well-formed and small enough to ship; anything else
/// is "no vector signal", never an error (the embedding writer is another component).
fn embedding(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<Option<Embedding>> {
    let Some(doc) = ctx
        .query(EMBEDDINGS, "by_source")
        .eq("sourceType", "user")
        .eq("sourceId", user_id)
        .desc()
        .first()?
    else {
        return Ok(None);
    };
    let model = doc.get_path("model").and_then(Value::as_str);
    let dimensions = doc.get_path("dimensions").and_then(Value::as_i64);
    let vector = doc.get_path("vector").and_then(Value::as_array);
    let (Some(model), Some(dimensions), Some(vector)) = (model, dimensions, vector) else {
        return Ok(None);
    };
    if vector.len() > MAX_VECTOR_DIMENSIONS || usize::try_from(dimensions) != Ok(vector.len()) {
        return Ok(None);
    }
    let vector: Option<Vec<f64>> = vector
        .iter()
        .map(|x| x.as_f64().filter(|x| x.is_finite()))
        .collect();
    Ok(vector.map(|vector| Embedding {
        model: model.to_string(),
        dimensions,
        vector,
    }))
}

fn do_not_match(
    ctx: &mut Ctx<'_, '_>,
    user_id: &str,
    config: &MatchingConfig,
) -> FunctionResult<BTreeSet<String>> {
    let mut out = blocks::newest_either_way(ctx, user_id, MAX_BLOCKS_READ)?;
    for (index, mine, other) in [
        ("by_user_a", "userA", "userB"),
        ("by_user_b", "userB", "userA"),
    ] {
        for doc in ctx
            .query(CONNECTIONS, index)
            .eq(mine, user_id)
            .eq("status", ConnectionStatus::Declined.as_str())
            .take(MAX_DECLINED_CONNECTIONS)?
        {
            if let Some(o) = doc.get_path(other).and_then(Value::as_str) {
                out.insert(o.to_string());
            }
        }
    }
    let cutoff = ctx.now_ms().saturating_sub(config.decline_cooldown_ms);
    out.extend(recent_partners(ctx, user_id, cutoff)?);
    for doc in ctx
        .query(MATCHING_ANALYTICS, "by_user")
        .eq("userId", user_id)
        .desc()
        .take(MAX_RECENT_OUTCOMES)?
    {
        if !recent_decline(&doc, cutoff) {
            continue;
        }
        let id = doc.get_path("matchId").and_then(Value::as_str);
        if let Some(partner) = id
            .and_then(MatchId::parse)
            .as_ref()
            .and_then(|m| m.partner_of(user_id).map(str::to_string))
        {
            out.insert(partner);
        }
    }
    Ok(out)
}

/// Whom `user_id` was matched with since `cutoff_ms`, among their newest queue entries
/// (`MAX_RECENT_ENTRIES`): a pending, accepted or completed match (status `matched`; one a
/// block cancelled does not count), which leaves no outcome until someone responds. Re-entering the queue must not make the same pair again under a new
/// match id.
fn recent_partners(
    ctx: &mut Ctx<'_, '_>,
    user_id: &str,
    cutoff_ms: i64,
) -> FunctionResult<BTreeSet<String>> {
    let entries = ctx
        .query(MATCHING_QUEUE, "by_user")
        .eq("userId", user_id)
        .desc()
        .take(MAX_RECENT_ENTRIES)?;
    Ok(entries
        .iter()
        .filter(|e| {
            // A match a block cancelled never happened; after an unblock they may meet.
            e.get_path("status").and_then(Value::as_str) == Some("matched")
                && e.get_path("match.matchedAt")
                    .and_then(Value::as_i64)
                    .is_some_and(|at| at >= cutoff_ms)
        })
        .filter_map(|e| e.get_path("matchedWith").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

fn recent_decline(outcome_row: &Value, cutoff_ms: i64) -> bool {
    let declined = outcome_row.get_path("outcome").and_then(Value::as_str)
        == Some(MatchOutcome::Declined.as_str());
    let at = outcome_row.get_path("createdAt").and_then(Value::as_i64);
    declined && at.is_some_and(|t| t >= cutoff_ms)
}

/// Whether `x` and `y` must not be matched: a block either way, a declined connection between
/// them, a match of theirs within the cool-down (among `x`'s newest entries), or one that
/// either declined within it. Exact (index lookups
/// of the pair), where `Party::do_not_match` is bounded per user.
pub fn pair_blocked(
    ctx: &mut Ctx<'_, '_>,
    x: &str,
    y: &str,
    config: &MatchingConfig,
) -> FunctionResult<bool> {
    if blocks::either_way(ctx, x, y)? {
        return Ok(true);
    }
    let (a, b) = if x <= y { (x, y) } else { (y, x) };
    let connection = ctx
        .query(CONNECTIONS, "by_pair")
        .eq("userA", a)
        .eq("userB", b)
        .first()?;
    let declined = connection.as_ref().and_then(|c| c.get_path("status"))
        == Some(&Value::from(ConnectionStatus::Declined.as_str()));
    if declined {
        return Ok(true);
    }
    let cutoff = ctx.now_ms().saturating_sub(config.decline_cooldown_ms);
    if recent_partners(ctx, x, cutoff)?.contains(y) {
        return Ok(true);
    }
    let (start, end) = MatchId::pair_range(a, b);
    let outcomes = ctx
        .query(MATCHING_ANALYTICS, "by_match")
        .gte("matchId", start)
        .lt("matchId", end)
        .desc()
        .take(MAX_PAIR_OUTCOMES)?;
    Ok(outcomes.iter().any(|o| recent_decline(o, cutoff)))
}
