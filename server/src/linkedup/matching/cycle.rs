//! The matching cycle and the queue's upkeep, all internal:
//!
//! - `matching.tick` (cron, every minute) schedules `matching.expire` and one
//!   `matching.runCycle` per shard.
//! - `matching.runCycle {shard, shards}` (action) reads the waiting entries that can still
//!   meet, most urgent first, as parties (`matching.waitingPage`, a bounded page per query, up
//!   to `max_entries_per_cycle`), plans pairs off the database (`pairing::plan`: this shard's
//!   users initiate, candidates come from every shard) and commits them in batches through
//!   `matching.commit`.
//! - `matching.commit` matches each proposed pair in one transaction only if both entries are
//!   still `waiting` and the hard constraints still hold on freshly read parties (plus the
//!   exact do-not-match check of the pair). Two shards proposing the same user race on that
//!   user's entry: the committer serialises the two transactions, and the later one finds the
//!   entry `matched` and skips the pair, so nobody is matched twice.
//! - `matching.expire` marks waiting entries whose window has ended `expired`;
//!   `matching.purge` (hourly) deletes finished entries whose window ended longer ago than the
//!   queue's retention.

use std::sync::Arc;

use linkedup_schema::api::matching::{MatchFeatures, MatchRecord, QueueEntry, QueueStatus};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{MATCHING_QUEUE, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::ActionCtx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::eligibility;
use super::match_id::MatchId;
use super::pairing;
use super::parties::{self, Detail, Party};
use super::scoring;
use super::MatchingConfig;
use crate::linkedup::retention::record_purged;
use crate::linkedup::{audit, decode, encode, fields, id_of, LinkedUpConfig};

pub const TICK: &str = "matching.tick";
pub const RUN_CYCLE: &str = "matching.runCycle";
pub const WAITING_PAGE: &str = "matching.waitingPage";
pub const COMMIT: &str = "matching.commit";
pub const EXPIRE: &str = "matching.expire";
pub const PURGE: &str = "matching.purge";

/// How often `matching.tick` runs.
pub const TICK_INTERVAL_MS: i64 = 60_000;
/// How often `matching.purge` runs.
pub const PURGE_INTERVAL_MS: i64 = 3_600_000;
/// Most shards a cycle may be split into.
pub const MAX_SHARDS: u32 = 64;
/// Entries per `matching.waitingPage`: each costs up to a few hundred reads (interests,
/// declined connections, recent outcomes, blocks), which keeps a page well inside a
/// transaction's read limit.
const PAGE_ENTRIES: usize = 32;
/// Pairs per `matching.commit`.
const COMMIT_BATCH: usize = 32;
/// Entries one `matching.expire` marks; a full batch schedules the next at once.
const EXPIRE_BATCH: usize = 256;
/// Entries of each finished state one `matching.purge` deletes; likewise continued.
const PURGE_BATCH: usize = 256;

#[derive(Clone, Debug, Deserialize)]
struct CycleArgs {
    shard: i64,
    shards: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
struct CycleResult {
    /// Waiting entries read.
    entries: i64,
    /// Pairs compared that passed the hard constraints.
    candidates: i64,
    /// Pairs matched.
    matches: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    /// The window-end bound of the first page, kept for the rest so the cursor stays in range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ends_after_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WaitingPage {
    parties: Vec<Party>,
    now_ms: i64,
    ends_after_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    done: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProposedPair {
    entry_a: String,
    entry_b: String,
    features: MatchFeatures,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CommitArgs {
    proposals: Vec<ProposedPair>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CommitResult {
    committed: i64,
    /// Pairs not matched: an entry no longer waiting, or a hard constraint no longer met.
    refused: i64,
}

#[derive(Deserialize)]
struct NoArgs {}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // matching.tick (cron): schedules expiry and one cycle per shard. Returns the shards.
    let cfg = config.clone();
    f.mutation(
        TICK,
        Visibility::Internal,
        v::object([]),
        v::int64(),
        move |ctx, _a: NoArgs| {
            ctx.schedule_after(0, EXPIRE, obj! {})?;
            let shards = cfg.matching.shards.clamp(1, MAX_SHARDS);
            for shard in 0..shards {
                let args = obj! { "shard" => i64::from(shard), "shards" => i64::from(shards) };
                ctx.schedule_after(0, RUN_CYCLE, args)?;
            }
            Ok(i64::from(shards))
        },
    );

    // matching.runCycle: see the module comment. Returns {entries, candidates, matches}.
    // Errors: VALIDATION_ERROR (shard outside 0..shards, shards outside 1..=64).
    let cfg = config.clone();
    f.action(
        RUN_CYCLE,
        Visibility::Internal,
        v::object([("shard", v::int64()), ("shards", v::int64())]),
        v::object([
            ("entries", v::int64()),
            ("candidates", v::int64()),
            ("matches", v::int64()),
        ]),
        move |ctx, a: CycleArgs| run_cycle(ctx, cfg.clone(), a),
    );

    // matching.waitingPage: a page of waiting entries that can still meet, as parties.
    let cfg = config.clone();
    f.query(
        WAITING_PAGE,
        Visibility::Internal,
        v::object([
            ("cursor", v::optional(v::string())),
            ("endsAfterMs", v::optional(v::int64())),
        ]),
        v::any(),
        move |ctx, a: PageArgs| waiting_page(ctx, &cfg, a),
    );

    // matching.commit: matches the proposed pairs that still qualify. Returns
    // {committed, refused}.
    let cfg = config.clone();
    f.mutation(
        COMMIT,
        Visibility::Internal,
        v::object([(
            "proposals",
            v::array(v::object([
                ("entryA", v::id(MATCHING_QUEUE)),
                ("entryB", v::id(MATCHING_QUEUE)),
                ("features", v::any()),
            ])),
        )]),
        v::object([("committed", v::int64()), ("refused", v::int64())]),
        move |ctx, a: CommitArgs| commit(ctx, &cfg, a),
    );

    // matching.expire: marks up to 256 ended waiting entries expired (continued while
    // batches come back full). Returns how many.
    f.mutation(
        EXPIRE,
        Visibility::Internal,
        v::object([]),
        v::int64(),
        |ctx, _a: NoArgs| expire(ctx),
    );

    // matching.purge (cron): deletes finished entries whose window ended longer ago than the
    // retention (continued while batches come back full). Returns how many.
    let cfg = config.clone();
    f.mutation(
        PURGE,
        Visibility::Internal,
        v::object([]),
        v::int64(),
        move |ctx, _a: NoArgs| purge(ctx, &cfg.matching),
    );
}

async fn run_cycle(
    ctx: ActionCtx,
    config: Arc<LinkedUpConfig>,
    a: CycleArgs,
) -> FunctionResult<CycleResult> {
    let shards = u32::try_from(a.shards)
        .ok()
        .filter(|s| (1..=MAX_SHARDS).contains(s))
        .ok_or_else(|| invalid_field("shards", format!("must be 1..={MAX_SHARDS}")))?;
    let shard = u32::try_from(a.shard)
        .ok()
        .filter(|s| *s < shards)
        .ok_or_else(|| invalid_field("shard", "must be 0..shards"))?;
    let matching = config.matching.clone();

    let mut parties = Vec::new();
    let mut args = PageArgs::default();
    let mut now_ms = 0;
    loop {
        let page: WaitingPage = decode(&ctx.run_query(WAITING_PAGE, encode(&args)?).await?)?;
        now_ms = now_ms.max(page.now_ms);
        parties.extend(page.parties);
        if page.done || parties.len() >= matching.max_entries_per_cycle {
            break;
        }
        args = PageArgs {
            cursor: page.cursor,
            ends_after_ms: Some(page.ends_after_ms),
        };
    }
    parties.truncate(matching.max_entries_per_cycle);

    // Scoring is CPU work bounded by entries × candidates; keep it off the async workers.
    let (plan, parties) = tokio::task::spawn_blocking(move || {
        let plan = pairing::plan(&parties, (shard, shards), now_ms, &matching);
        (plan, parties)
    })
    .await
    .map_err(|e| ErrorCode::Internal.err(format!("matching plan failed: {e}")))?;

    let proposals: Vec<ProposedPair> = plan
        .proposals
        .iter()
        .map(|p| ProposedPair {
            entry_a: parties[p.a].entry_id.clone(),
            entry_b: parties[p.b].entry_id.clone(),
            features: p.features.clone(),
        })
        .collect();
    let mut matches = 0;
    for batch in proposals.chunks(COMMIT_BATCH) {
        let args = encode(&CommitArgs {
            proposals: batch.to_vec(),
        })?;
        let r: CommitResult = decode(&ctx.run_mutation(COMMIT, args).await?)?;
        matches += r.committed;
    }
    let result = CycleResult {
        entries: parties.len() as i64,
        candidates: plan.candidates as i64,
        matches,
    };
    tracing::debug!(shard, shards, ?result, "matching cycle");
    Ok(result)
}

fn waiting_page(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: PageArgs,
) -> FunctionResult<WaitingPage> {
    let now_ms = ctx.now_ms();
    // Entries ending within a meeting's length cannot meet any more.
    let ends_after_ms = a
        .ends_after_ms
        .unwrap_or_else(|| now_ms.saturating_add(config.matching.min_meeting_ms));
    let page = ctx
        .query(MATCHING_QUEUE, "by_status_and_end")
        .eq("status", QueueStatus::Waiting.as_str())
        .gt("availableTo", ends_after_ms)
        .paginate(a.cursor.as_deref(), PAGE_ENTRIES)?;
    let mut parties = Vec::with_capacity(page.page.len());
    for doc in &page.page {
        let entry: QueueEntry = decode(doc)?;
        parties.push(parties::load(ctx, &entry, config, Detail::Full)?);
    }
    Ok(WaitingPage {
        parties,
        now_ms,
        ends_after_ms,
        cursor: page.continue_cursor,
        done: page.is_done,
    })
}

/// The entry, if it is still waiting.
fn waiting_entry(ctx: &mut Ctx<'_, '_>, id: &str) -> FunctionResult<Option<QueueEntry>> {
    let entry: Option<QueueEntry> = ctx
        .get(MATCHING_QUEUE, id)?
        .map(|d| decode(&d))
        .transpose()?;
    Ok(entry.filter(|e| e.status == QueueStatus::Waiting))
}

fn commit(
    ctx: &mut Ctx<'_, '_>,
    linkedup: &LinkedUpConfig,
    a: CommitArgs,
) -> FunctionResult<CommitResult> {
    let config = &linkedup.matching;
    if a.proposals.len() > COMMIT_BATCH {
        return Err(invalid_field(
            "proposals",
            format!("at most {COMMIT_BATCH} pairs"),
        ));
    }
    let rules = config.rules();
    let now = ctx.now_ms();
    let mut result = CommitResult::default();
    for p in &a.proposals {
        let (Some(x), Some(y)) = (
            waiting_entry(ctx, &p.entry_a)?,
            waiting_entry(ctx, &p.entry_b)?,
        ) else {
            result.refused += 1;
            continue;
        };
        let px = parties::load(ctx, &x, linkedup, Detail::Constraints)?;
        let py = parties::load(ctx, &y, linkedup, Detail::Constraints)?;
        let score = scoring::score(&p.features, &config.weights);
        if eligibility::check(&px, &py, now, &rules).is_err()
            || score < config.min_score
            || parties::pair_blocked(ctx, &x.user_id, &y.user_id, config)?
        {
            result.refused += 1;
            continue;
        }
        let match_id = MatchId::new(&x.user_id, &y.user_id, now).to_string();
        let record = encode(&MatchRecord {
            match_id: match_id.clone(),
            matched_at: now,
            score,
            features: p.features.clone(),
            weights: config.weights,
        })?;
        for (entry, party, other) in [(&x, &px, &y), (&y, &py, &x)] {
            ctx.patch(
                MATCHING_QUEUE,
                &entry.id,
                fields(obj! {
                    "status" => QueueStatus::Matched.as_str(),
                    "matchedWith" => other.user_id.as_str(),
                    "match" => record.clone(),
                    "updatedAt" => now,
                }),
            )?;
            audit::record_in_org(
                ctx,
                party.org_id.as_deref(),
                None,
                "matchingQueue",
                &entry.id,
                "matching.matched",
                obj! {
                    "matchId" => match_id.as_str(),
                    "userId" => entry.user_id.as_str(),
                    "matchedWith" => other.user_id.as_str(),
                    "score" => score,
                },
            )?;
        }
        result.committed += 1;
    }
    Ok(result)
}

fn expire(ctx: &mut Ctx<'_, '_>) -> FunctionResult<i64> {
    let now = ctx.now_ms();
    let ended = ctx
        .query(MATCHING_QUEUE, "by_status_and_end")
        .eq("status", QueueStatus::Waiting.as_str())
        .lte("availableTo", now)
        .take(EXPIRE_BATCH)?;
    for doc in &ended {
        let entry: QueueEntry = decode(doc)?;
        ctx.patch(
            MATCHING_QUEUE,
            &entry.id,
            fields(obj! { "status" => QueueStatus::Expired.as_str(), "updatedAt" => now }),
        )?;
        let org = ctx.get(USERS, &entry.user_id)?.and_then(|u| {
            u.get_path("orgId")
                .and_then(Value::as_str)
                .map(String::from)
        });
        audit::record_in_org(
            ctx,
            org.as_deref(),
            None,
            "matchingQueue",
            &entry.id,
            "matching.expired",
            obj! { "userId" => entry.user_id.as_str(), "availableTo" => entry.available_to },
        )?;
    }
    if ended.len() >= EXPIRE_BATCH {
        ctx.schedule_after(0, EXPIRE, obj! {})?;
    }
    Ok(ended.len() as i64)
}

fn purge(ctx: &mut Ctx<'_, '_>, config: &MatchingConfig) -> FunctionResult<i64> {
    let cutoff = ctx.now_ms().saturating_sub(config.queue_retention_ms);
    let mut deleted = 0;
    let mut full = false;
    for status in [
        QueueStatus::Matched,
        QueueStatus::Expired,
        QueueStatus::Cancelled,
    ] {
        let old = ctx
            .query(MATCHING_QUEUE, "by_status_and_end")
            .eq("status", status.as_str())
            .lt("availableTo", cutoff)
            .take(PURGE_BATCH)?;
        full |= old.len() >= PURGE_BATCH;
        for doc in &old {
            ctx.delete(MATCHING_QUEUE, &id_of(doc)?)?;
        }
        deleted += old.len() as i64;
    }
    if full {
        ctx.schedule_after(0, PURGE, obj! {})?;
    }
    record_purged(ctx, MATCHING_QUEUE, deleted, ("endedBeforeMs", cutoff))?;
    Ok(deleted)
}
