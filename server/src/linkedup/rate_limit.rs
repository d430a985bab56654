//! The durable rate limiter (seed §13): per (user, action) counts in `rateLimits`, checked and
//! incremented inside the calling mutation, so a rejected call writes nothing and an accepted
//! one is counted exactly when it commits.
//!
//! Approximate sliding window over fixed sub-windows: time is cut into buckets of
//! `bucket_ms`; a call counts the buckets that started within the last `window_ms`. Buckets
//! before the current one are counted exactly. The current bucket is split into `shards`
//! counter documents and each call reads and increments only one, picked by the
//! transaction's random generator; the current bucket's total is estimated as
//! `own shard × shards`. That estimate is unbiased (shards are picked uniformly) but noisy
//! within the current bucket; with `shards = 1` the limiter is exact to the bucket.
//!
//! Why shards: a call must read what it increments, so two concurrent calls of one user that
//! pick the same shard conflict (the committer re-executes one of them). Nothing else of the
//! current bucket is read, so calls on different shards never conflict. With c calls in flight
//! a call conflicts with probability about 1 − (1 − 1/shards)^(c−1). Measured (16 tasks × 20
//! `chat.send` of one user, `linkedup_lifecycle` test): conflicts 317 / 241 / 174 / 60 of 320
//! for 1 / 8 / 16 / 64 shards. The default of 16 suits a user's realistic concurrency (a few
//! calls).
//!
//! Why `rateLimitWindows`: summing the past buckets' counter documents costs up to
//! (window / bucket) × shards reads per call (960 with 1 s buckets and 16 shards), which
//! dominated the transcript ingest path. Instead the past buckets' sums live in one window
//! document per (user, action); the first call in a new bucket folds the buckets that ended
//! since into it (reading only their counter documents, which no call writes any more) and
//! every other call reads that one document. A check thus reads two documents (window and own
//! shard) and, once per bucket, the previous buckets' shards. Folding writes the window
//! document, so calls of the user racing the fold conflict with it once and are re-executed on
//! the folded state; past counts stay exact. Transcript ingest uses one shard
//! (`ingest_shards`): its calls conflict on the meeting's sequence anyway, and one shard makes
//! a bucket one counter document instead of one per call.

use std::sync::Arc;

use linkedup_schema::tables::names::{RATE_LIMITS, RATE_LIMIT_WINDOWS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use rand::Rng;
use serde::Deserialize;

use super::{fields, id_of, LinkedUpConfig};

/// A limit: at most `max` calls per `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max: i64,
    pub window_ms: i64,
}

/// Limits per action and the limiter's granularity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub chat_send: RateLimit,
    pub meetings_schedule: RateLimit,
    pub connections_request: RateLimit,
    /// Transcript ingest calls (each up to 50 chunks), per user.
    pub transcripts_ingest: RateLimit,
    /// Sub-window length; the window slides in steps of this.
    pub bucket_ms: i64,
    /// Counter documents per bucket (1..=64).
    pub shards: i64,
    /// Counter documents per bucket for transcript ingest (1..=64). One: a user's ingest calls
    /// into a meeting already serialise on the meeting's sequence, so more shards would not
    /// spare a conflict, and they cost a new counter document per call at a producer's rate.
    pub ingest_shards: i64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            chat_send: RateLimit {
                max: 120,
                window_ms: 60_000,
            },
            meetings_schedule: RateLimit {
                max: 60,
                window_ms: 60_000,
            },
            connections_request: RateLimit {
                max: 60,
                window_ms: 60_000,
            },
            // 20 calls a second sustained: twice the seed's 10 updates a second per meeting
            // (§21), each call carrying up to 50 chunks.
            transcripts_ingest: RateLimit {
                max: 1_200,
                window_ms: 60_000,
            },
            // Coarse enough that a user calling a few times a second folds once per several
            // calls; the window still slides in twelfths.
            bucket_ms: 5_000,
            shards: 16,
            ingest_shards: 1,
        }
    }
}

/// Most counter documents one fold may sum (bounds the read of the ended buckets).
const MAX_COUNTED_DOCS: usize = 4_096;
/// Most past buckets a window document holds (an hour of 1 s buckets).
const MAX_PAST_BUCKETS: usize = 3_600;
/// Most expired counter documents one `rateLimits.purge` call deletes.
const PURGE_BATCH: usize = 512;
/// Counter documents older than this are purged.
pub const MAX_WINDOW_MS: i64 = 3_600_000;

/// Counts one call of `action` by `user_id` against `limit`, or refuses it.
/// Returns: RATE_LIMITED with `data.retryAfterMs` (ms until the oldest counted bucket leaves
/// the window).
pub fn check_and_consume(
    ctx: &mut Ctx<'_, '_>,
    config: &RateLimitConfig,
    user_id: &str,
    action: &str,
    limit: RateLimit,
) -> FunctionResult<()> {
    check_and_consume_sharded(ctx, config, user_id, action, limit, config.shards)
}

/// `check_and_consume` with `shards` counter documents per bucket instead of `config.shards`.
pub fn check_and_consume_sharded(
    ctx: &mut Ctx<'_, '_>,
    config: &RateLimitConfig,
    user_id: &str,
    action: &str,
    limit: RateLimit,
    shards: i64,
) -> FunctionResult<()> {
    let bucket_ms = config.bucket_ms.max(1);
    let shards = shards.clamp(1, 64);
    let now = ctx.now_ms();
    let current = now - now.rem_euclid(bucket_ms);

    let past = past_buckets(ctx, user_id, action, limit, bucket_ms, current)?;
    let past_count: i64 = past.iter().sum();
    // The oldest bucket with a count: the one whose leaving the window frees a call.
    let oldest = past
        .iter()
        .rposition(|&c| c > 0)
        .map(|k| current - (k as i64 + 1) * bucket_ms);

    let shard = ctx.rng().gen_range(0..shards);
    let mine = ctx
        .query(RATE_LIMITS, "by_user_action_window")
        .eq("userId", user_id)
        .eq("action", action)
        .eq("windowStartMs", current)
        .eq("shard", shard)
        .first()?;
    let mine_count = mine.as_ref().map(|d| int(d, "count")).unwrap_or(0);

    let estimate = past_count + mine_count * shards;
    if estimate >= limit.max {
        let leaves_at = oldest.unwrap_or(current) + limit.window_ms;
        let retry_after_ms = (leaves_at - now).max(1);
        return Err(ErrorCode::RateLimited.err_with(
            format!(
                "rate limit for {action}: {} calls per {} ms",
                limit.max, limit.window_ms
            ),
            obj! { "retryAfterMs" => retry_after_ms, "action" => action },
        ));
    }
    match mine {
        Some(doc) => {
            let id = id_of(&doc)?;
            ctx.patch(
                RATE_LIMITS,
                &id,
                fields(obj! { "count" => mine_count + 1, "updatedAt" => now }),
            )?;
        }
        None => {
            ctx.insert(
                RATE_LIMITS,
                obj! {
                    "userId" => user_id,
                    "action" => action,
                    "windowStartMs" => current,
                    "shard" => shard,
                    "count" => 1i64,
                    "createdAt" => now,
                    "updatedAt" => now,
                },
            )?;
        }
    }
    Ok(())
}

/// The counts of the buckets before `current` that are still in the window, newest first
/// (`[k]` is the bucket starting `(k + 1) × bucket_ms` before `current`), from the window
/// document; folds the buckets that ended since it was last brought up to date.
fn past_buckets(
    ctx: &mut Ctx<'_, '_>,
    user_id: &str,
    action: &str,
    limit: RateLimit,
    bucket_ms: i64,
    current: i64,
) -> FunctionResult<Vec<i64>> {
    let first_counted = current - limit.window_ms + bucket_ms;
    // Buckets starting in [first_counted, current).
    let len = usize::try_from((limit.window_ms - bucket_ms).max(0) / bucket_ms)
        .unwrap_or(0)
        .min(MAX_PAST_BUCKETS);
    let window = ctx
        .query(RATE_LIMIT_WINDOWS, "by_user_action")
        .eq("userId", user_id)
        .eq("action", action)
        .first()?;
    let usable = window.as_ref().filter(|w| {
        int(w, "windowMs") == limit.window_ms
            && int(w, "bucketMs") == bucket_ms
            && int(w, "throughMs") <= current
    });
    let (mut counts, fold_from) = match usable {
        Some(w) if int(w, "throughMs") == current => return Ok(stored_counts(w, len)),
        Some(w) => {
            // Re-base the stored counts on `current`: the buckets in [through, current) come
            // first, from the counter documents.
            let through = int(w, "throughMs");
            let shift = usize::try_from((current - through) / bucket_ms).unwrap_or(usize::MAX);
            let mut counts = vec![0; shift.min(len)];
            counts.extend(stored_counts(w, len.saturating_sub(shift)));
            (counts, through.max(first_counted))
        }
        None => (vec![0; len], first_counted),
    };
    counts.resize(len, 0);
    let ended = ctx
        .query(RATE_LIMITS, "by_user_action_window")
        .eq("userId", user_id)
        .eq("action", action)
        .gte("windowStartMs", fold_from)
        .lt("windowStartMs", current)
        .take(MAX_COUNTED_DOCS)?;
    for d in &ended {
        let k = (current - int(d, "windowStartMs")) / bucket_ms - 1;
        if let Some(slot) = usize::try_from(k).ok().and_then(|k| counts.get_mut(k)) {
            *slot += int(d, "count");
        }
    }
    // Trailing empty buckets are not stored.
    let stored_len = counts.iter().rposition(|&c| c > 0).map_or(0, |k| k + 1);
    let stored: Vec<Value> = counts[..stored_len].iter().map(|&c| c.into()).collect();
    let now = ctx.now_ms();
    // No `updatedAt`: it would move an index entry on every fold, for a purge that one
    // document per (user, action) does not need.
    match window {
        Some(w) => {
            let id = id_of(&w)?;
            ctx.patch(
                RATE_LIMIT_WINDOWS,
                &id,
                fields(obj! {
                    "windowMs" => limit.window_ms,
                    "bucketMs" => bucket_ms,
                    "throughMs" => current,
                    "counts" => stored,
                }),
            )?;
        }
        None => {
            ctx.insert(
                RATE_LIMIT_WINDOWS,
                obj! {
                    "userId" => user_id,
                    "action" => action,
                    "windowMs" => limit.window_ms,
                    "bucketMs" => bucket_ms,
                    "throughMs" => current,
                    "counts" => stored,
                    "createdAt" => now,
                },
            )?;
        }
    }
    Ok(counts)
}

/// A window document's first `len` counts, zero-padded to `len`.
fn stored_counts(window: &Value, len: usize) -> Vec<i64> {
    let mut counts: Vec<i64> = window
        .get_path("counts")
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .iter()
        .take(len)
        .map(|c| c.as_i64().unwrap_or(0))
        .collect();
    counts.resize(len, 0);
    counts
}

fn int(doc: &Value, field: &str) -> i64 {
    doc.get_path(field).and_then(Value::as_i64).unwrap_or(0)
}

#[derive(Deserialize)]
struct PurgeArgs {}

pub(crate) fn register(f: &mut Functions, _config: &Arc<LinkedUpConfig>) {
    // rateLimits.purge (internal, for a cron): deletes up to 512 counter documents older than
    // the longest window; returns how many it deleted (call again while it returns 512). Window
    // documents stay: one per (user, limited action), and a stale one is rebuilt on use.
    f.mutation(
        "rateLimits.purge",
        Visibility::Internal,
        v::object([]),
        v::int64(),
        |ctx, _a: PurgeArgs| {
            let cutoff = ctx.now_ms() - MAX_WINDOW_MS;
            let old = ctx
                .query(RATE_LIMITS, "by_window")
                .lt("windowStartMs", cutoff)
                .take(PURGE_BATCH)?;
            for d in &old {
                ctx.delete(RATE_LIMITS, &id_of(d)?)?;
            }
            Ok(old.len() as i64)
        },
    );
}
