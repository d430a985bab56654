//! The durable rate limiter (seed §13): per (user, action) counts in `rateLimits`, checked and
//! incremented inside the calling mutation, so a rejected call writes nothing and an accepted
//! one is counted exactly when it commits. A function whose refused calls must count too
//! charges the limit again from its failure recorder, after the call failed
//! (`notes.applyOperation`: `notes::operations`).
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
//! the folded state; past counts stay exact.
//!
//! Transcript ingest, the hot path, counts its current bucket inline in the window document
//! (`Counters::Inline`, `ingest_counters`): a check is one read and one write of that document
//! and never touches a counter document. Its calls of one user conflict with each other, as
//! they do on the meeting's sequence anyway; the profile of the fan-out benchmark showed the
//! second read and the counter documents at about a third of an ingest call's cost.

use std::sync::Arc;

use linkedup_schema::tables::names::{RATE_LIMITS, RATE_LIMIT_WINDOWS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::Functions;
use query_engine::obj;
use query_engine::value::Value;
use rand::Rng;

use super::{fields, id_of, register_expiry_purge, LinkedUpConfig};

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
    /// `users.block` and `users.unblock` together, per user.
    pub blocks: RateLimit,
    /// Transcript ingest calls (each up to 50 chunks), per user.
    pub transcripts_ingest: RateLimit,
    /// Note edits (`notes.applyOperation`), per user. An editor keeps one op in flight and
    /// folds what is typed meanwhile into the next, so a typist sends a few a second.
    pub notes_apply: RateLimit,
    /// Stream call tokens minted (`meetings.streamCallToken`), per user.
    pub stream_call_tokens: RateLimit,
    /// Sub-window length; the window slides in steps of this.
    pub bucket_ms: i64,
    /// Counter documents per bucket (1..=64).
    pub shards: i64,
    /// Where transcript ingest counts its current bucket. Inline: a user's ingest calls into
    /// a meeting already serialise on the meeting's sequence, so shards would not spare a
    /// conflict, and counting in the window document makes a check one read and one write.
    pub ingest_counters: Counters,
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
            blocks: RateLimit {
                max: 60,
                window_ms: 60_000,
            },
            // 20 calls a second sustained: twice the seed's 10 updates a second per meeting
            // (§21), each call carrying up to 50 chunks.
            transcripts_ingest: RateLimit {
                max: 1_200,
                window_ms: 60_000,
            },
            notes_apply: RateLimit {
                max: 1_200,
                window_ms: 60_000,
            },
            // A client asks at joining and before each expiry; reconnects may ask again.
            stream_call_tokens: RateLimit {
                max: 30,
                window_ms: 60_000,
            },
            // Coarse enough that a user calling a few times a second folds once per several
            // calls; the window still slides in twelfths.
            bucket_ms: 5_000,
            shards: 16,
            ingest_counters: Counters::Inline,
        }
    }
}

/// Most counter documents one fold may sum (bounds the read of the ended buckets).
const MAX_COUNTED_DOCS: usize = 4_096;
/// Most past buckets a window document holds (an hour of 1 s buckets).
const MAX_PAST_BUCKETS: usize = 3_600;
/// The purge job's name.
pub const PURGE: &str = "rateLimits.purge";
/// Most expired counter documents one `rateLimits.purge` call deletes.
const PURGE_BATCH: usize = 512;
/// Counter documents older than this are purged.
pub const MAX_WINDOW_MS: i64 = 3_600_000;

/// Least calls a limit allows per shard: the current bucket's estimate (own shard × shards)
/// moves in steps of `shards` calls, so a limit needs several steps' room or a user's few
/// calls that happen to pick one shard are refused far below it.
const MIN_CALLS_PER_SHARD: i64 = 8;

/// Counts one call of `action` by `user_id` against `limit`, or refuses it. The current
/// bucket is counted in `config.shards` shards, fewer for a small limit (at least
/// `MIN_CALLS_PER_SHARD` calls of the limit per shard).
/// Returns: RATE_LIMITED with `data.retryAfterMs` (ms until the oldest counted bucket leaves
/// the window).
pub fn check_and_consume(
    ctx: &mut Ctx<'_, '_>,
    config: &RateLimitConfig,
    user_id: &str,
    action: &str,
    limit: RateLimit,
) -> FunctionResult<()> {
    check_and_consume_in(
        ctx,
        config,
        user_id,
        action,
        limit,
        Counters::Sharded(shards_for(limit, config.shards)),
    )
}

/// The shards a limit's current bucket is counted in: `configured`, fewer for a small limit.
fn shards_for(limit: RateLimit, configured: i64) -> i64 {
    configured.min(limit.max / MIN_CALLS_PER_SHARD).max(1)
}

/// `check_and_consume` with the current bucket counted in `counters` instead of
/// `config.shards` counter documents.
pub fn check_and_consume_in(
    ctx: &mut Ctx<'_, '_>,
    config: &RateLimitConfig,
    user_id: &str,
    action: &str,
    limit: RateLimit,
    counters: Counters,
) -> FunctionResult<()> {
    check_and_consume_on_grid(ctx, user_id, action, limit, counters, config.bucket_ms).map(|_| ())
}

/// `check_and_consume_in` with buckets of `bucket_ms` instead of `RateLimitConfig::bucket_ms`,
/// for a window too long for that grid: a window document holds at most `MAX_PAST_BUCKETS`
/// past buckets, so a day of 5 s buckets would count only its last five hours. Count such a
/// window `Counters::Inline`: counter documents are purged `MAX_WINDOW_MS` after their bucket,
/// before a longer window is over. Returns how many calls the window still allows after this
/// one (an estimate with sharded counters).
pub fn check_and_consume_on_grid(
    ctx: &mut Ctx<'_, '_>,
    user_id: &str,
    action: &str,
    limit: RateLimit,
    counters: Counters,
    bucket_ms: i64,
) -> FunctionResult<i64> {
    if counters != Counters::Inline && limit.window_ms > MAX_WINDOW_MS {
        return Err(ErrorCode::Internal.err(format!(
            "rate limit {action}: sharded counters are purged within a window of {} ms",
            limit.window_ms
        )));
    }
    let bucket_ms = bucket_ms.max(1);
    let now = ctx.now_ms();
    let current = now - now.rem_euclid(bucket_ms);

    let at = WindowAt {
        user_id,
        action,
        limit,
        bucket_ms,
        current,
    };
    let mut window = load_window(ctx, &at)?;
    let past_count: i64 = window.past.iter().sum();
    // The oldest bucket with a count: the one whose leaving the window frees a call.
    let oldest = window
        .past
        .iter()
        .rposition(|&c| c > 0)
        .map(|k| current - (k as i64 + 1) * bucket_ms);

    let shard = match counters {
        Counters::Inline => None,
        Counters::Sharded(shards) => {
            let shards = shards.clamp(1, MAX_SHARDS);
            let shard = ctx.rng().gen_range(0..shards);
            let mine = ctx
                .query(RATE_LIMITS, "by_user_action_window")
                .eq("userId", user_id)
                .eq("action", action)
                .eq("windowStartMs", current)
                .eq("shard", shard)
                .first()?;
            Some((shards, shard, mine))
        }
    };
    let current_count = window.inline
        + shard
            .as_ref()
            .map_or(0, |(shards, _, mine)| count_of(mine.as_ref()) * shards);

    if past_count + current_count >= limit.max {
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
    match shard {
        None => {
            window.inline += 1;
            store_window(ctx, &at, &window)?;
        }
        Some((_, shard, mine)) => {
            if window.stale {
                store_window(ctx, &at, &window)?;
            }
            consume_shard(ctx, user_id, action, current, shard, mine)?;
        }
    }
    Ok((limit.max - past_count - current_count - 1).max(0))
}

/// Where the current bucket's count lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counters {
    /// In the (user, action) window document itself: a call reads and writes that one
    /// document, so every call of the user conflicts with every concurrent one. Exact.
    Inline,
    /// In this many counter documents (1..=64), one picked at random per call.
    Sharded(i64),
}

/// Most counter documents per bucket.
const MAX_SHARDS: i64 = 64;

/// Which window a call counts in: the (user, action) pair, its limit and the bucket grid.
#[derive(Clone, Copy)]
struct WindowAt<'a> {
    user_id: &'a str,
    action: &'a str,
    limit: RateLimit,
    bucket_ms: i64,
    /// Start of the current bucket.
    current: i64,
}

/// A (user, action) window as of the current bucket.
struct Window {
    /// The existing window document's id.
    id: Option<String>,
    /// Counts of the buckets before the current one still in the window, newest first
    /// (`[k]` is the bucket starting `(k + 1) × bucket_ms` before the current one).
    past: Vec<i64>,
    /// Calls counted in the window document for the current bucket (`Counters::Inline`).
    inline: i64,
    /// The stored document is missing or not up to the current bucket.
    stale: bool,
}

/// Reads the window document and brings it up to the current bucket in memory: the buckets
/// that ended since it was stored are folded in from its inline count and from their counter
/// documents (which no call writes any more).
fn load_window(ctx: &mut Ctx<'_, '_>, at: &WindowAt<'_>) -> FunctionResult<Window> {
    let WindowAt {
        user_id,
        action,
        limit,
        bucket_ms,
        current,
    } = *at;
    let first_counted = current - limit.window_ms + bucket_ms;
    // Buckets starting in [first_counted, current).
    let len = usize::try_from((limit.window_ms - bucket_ms).max(0) / bucket_ms)
        .unwrap_or(0)
        .min(MAX_PAST_BUCKETS);
    let doc = ctx
        .query(RATE_LIMIT_WINDOWS, "by_user_action")
        .eq("userId", user_id)
        .eq("action", action)
        .first()?;
    let id = doc.as_ref().map(id_of).transpose()?;
    let usable = doc.as_ref().filter(|w| {
        int(w, "windowMs") == limit.window_ms
            && int(w, "bucketMs") == bucket_ms
            && int(w, "throughMs") <= current
    });
    let (mut past, fold_from) = match usable {
        Some(w) if int(w, "throughMs") == current => {
            return Ok(Window {
                id,
                past: stored_counts(w, len),
                inline: int(w, "currentCount"),
                stale: false,
            })
        }
        Some(w) => {
            // Re-base the stored counts on `current`: the buckets in [through, current) come
            // first; the one starting at `through` holds the document's inline count.
            let through = int(w, "throughMs");
            let shift = usize::try_from((current - through) / bucket_ms).unwrap_or(usize::MAX);
            let mut past = vec![0; shift.min(len)];
            if let Some(slot) = shift.checked_sub(1).and_then(|k| past.get_mut(k)) {
                *slot = int(w, "currentCount");
            }
            past.extend(stored_counts(w, len.saturating_sub(shift)));
            (past, through.max(first_counted))
        }
        None => (vec![0; len], first_counted),
    };
    past.resize(len, 0);
    let ended = ctx
        .query(RATE_LIMITS, "by_user_action_window")
        .eq("userId", user_id)
        .eq("action", action)
        .gte("windowStartMs", fold_from)
        .lt("windowStartMs", current)
        .take(MAX_COUNTED_DOCS)?;
    for d in &ended {
        let k = (current - int(d, "windowStartMs")) / bucket_ms - 1;
        if let Some(slot) = usize::try_from(k).ok().and_then(|k| past.get_mut(k)) {
            *slot += int(d, "count");
        }
    }
    Ok(Window {
        id,
        past,
        inline: 0,
        stale: true,
    })
}

/// Writes `window` as the (user, action) window document through the current bucket.
fn store_window(ctx: &mut Ctx<'_, '_>, at: &WindowAt<'_>, window: &Window) -> FunctionResult<()> {
    let WindowAt {
        user_id,
        action,
        limit,
        bucket_ms,
        current,
    } = *at;
    // Trailing empty buckets are not stored.
    let stored_len = window
        .past
        .iter()
        .rposition(|&c| c > 0)
        .map_or(0, |k| k + 1);
    let stored: Vec<Value> = window.past[..stored_len]
        .iter()
        .map(|&c| c.into())
        .collect();
    // No `updatedAt`: it would move an index entry on every write, for a purge that one
    // document per (user, action) does not need.
    match &window.id {
        Some(id) => ctx.patch(
            RATE_LIMIT_WINDOWS,
            id,
            fields(obj! {
                "windowMs" => limit.window_ms,
                "bucketMs" => bucket_ms,
                "throughMs" => current,
                "counts" => stored,
                "currentCount" => window.inline,
            }),
        ),
        None => {
            let now = ctx.now_ms();
            ctx.insert(
                RATE_LIMIT_WINDOWS,
                obj! {
                    "userId" => user_id,
                    "action" => action,
                    "windowMs" => limit.window_ms,
                    "bucketMs" => bucket_ms,
                    "throughMs" => current,
                    "counts" => stored,
                    "currentCount" => window.inline,
                    "createdAt" => now,
                },
            )
            .map(|_| ())
        }
    }
}

/// Counts one call in counter document `shard` of the bucket starting at `current`.
fn consume_shard(
    ctx: &mut Ctx<'_, '_>,
    user_id: &str,
    action: &str,
    current: i64,
    shard: i64,
    mine: Option<Value>,
) -> FunctionResult<()> {
    let now = ctx.now_ms();
    match mine {
        Some(doc) => {
            let id = id_of(&doc)?;
            let count = count_of(Some(&doc)) + 1;
            ctx.patch(
                RATE_LIMITS,
                &id,
                fields(obj! { "count" => count, "updatedAt" => now }),
            )
        }
        None => ctx
            .insert(
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
            )
            .map(|_| ()),
    }
}

fn count_of(doc: Option<&Value>) -> i64 {
    doc.map_or(0, |d| int(d, "count"))
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

pub(crate) fn register(f: &mut Functions, _config: &Arc<LinkedUpConfig>) {
    // rateLimits.purge (internal, for a cron): deletes up to 512 counter documents older than
    // the longest window, and runs again at once while it finds that many; returns how many it
    // deleted. Window documents stay: one per (user, limited action), and a stale one is
    // rebuilt on use.
    register_expiry_purge(
        f,
        PURGE,
        (RATE_LIMITS, "by_window", "windowStartMs"),
        PURGE_BATCH,
        |now| now - MAX_WINDOW_MS,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linkedup::transcripts::fns::INGEST_CHUNK;
    use crate::linkedup::transcripts::INGEST_ACTION;
    use query_engine::engine::{Engine, EngineConfig};
    use query_engine::identity::Identity;

    const MAX: i64 = 30;

    #[test]
    fn small_limits_get_fewer_shards() {
        let limit = |max| RateLimit {
            max,
            window_ms: 60_000,
        };
        assert_eq!(shards_for(limit(1_200), 16), 16);
        assert_eq!(shards_for(limit(120), 16), 15);
        assert_eq!(shards_for(limit(20), 16), 2);
        assert_eq!(shards_for(limit(5), 16), 1);
        assert_eq!(shards_for(limit(0), 16), 1);
        assert_eq!(shards_for(limit(1_200), 1), 1);
    }

    fn ident(subject: &str) -> Identity {
        Identity {
            issuer: "https://auth.test".into(),
            subject: subject.into(),
            email: Some(format!("{subject}@example.com")),
            org_id: None,
            org_role: None,
            roles: Vec::new(),
        }
    }

    async fn call(
        engine: &Engine,
        name: &str,
        args: Value,
        who: &Identity,
    ) -> FunctionResult<Value> {
        engine
            .mutation(name, args, Some(who))
            .await
            .map(|c| c.value)
    }

    async fn docs(engine: &Engine, table: &'static str) -> Vec<Value> {
        let all = engine
            .read(move |ctx| Ok(Value::Array(ctx.query(table, "by_id").take(1_000)?)))
            .await
            .unwrap();
        all.as_array().unwrap().to_vec()
    }

    /// Inline counting (transcript ingest): short buckets so calls spread over several and
    /// the window folds; every accepted call is counted exactly once in the window document,
    /// no counter document is written, and the limit holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_counts_are_exact_across_buckets_and_the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let config = LinkedUpConfig {
            rate_limits: RateLimitConfig {
                transcripts_ingest: RateLimit {
                    max: MAX,
                    window_ms: 60_000,
                },
                bucket_ms: 20,
                ..RateLimitConfig::default()
            },
            ..LinkedUpConfig::default()
        };
        assert_eq!(config.rate_limits.ingest_counters, Counters::Inline);
        let mut functions = Functions::new();
        crate::linkedup::register(&mut functions, &config);
        let mut engine_config = EngineConfig::default();
        engine_config.committer.durable = false;
        engine_config.run_scheduler = false;
        let engine = Engine::open(
            &dir.path().join("db.redb"),
            linkedup_schema::schema(),
            functions,
            engine_config,
        )
        .unwrap();
        let host = ident("host");
        call(&engine, "users.ensure", obj! {}, &host).await.unwrap();
        let meeting = call(&engine, "meetings.schedule", obj! { "title" => "t" }, &host)
            .await
            .unwrap();
        let meeting = meeting.as_str().unwrap().to_string();
        call(
            &engine,
            "meetings.start",
            obj! { "meetingId" => meeting.as_str() },
            &host,
        )
        .await
        .unwrap();
        let chunk = |i: i64| {
            obj! {
                "meetingId" => meeting.as_str(),
                "chunkId" => format!("c{i}"),
                "text" => "words",
                "confidence" => 0.9,
                "startMs" => i,
                "endMs" => i,
            }
        };
        for i in 0..MAX {
            call(&engine, INGEST_CHUNK, chunk(i), &host).await.unwrap();
            if i % 7 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        }
        let refused = call(&engine, INGEST_CHUNK, chunk(MAX), &host)
            .await
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited.as_str());

        let ingest = |d: &Value| d.get_path("action") == Some(&Value::from(INGEST_ACTION));
        let counters = docs(&engine, RATE_LIMITS).await;
        assert!(
            !counters.iter().any(ingest),
            "ingest wrote a counter document"
        );
        let windows: Vec<Value> = docs(&engine, RATE_LIMIT_WINDOWS)
            .await
            .into_iter()
            .filter(ingest)
            .collect();
        assert_eq!(windows.len(), 1);
        let folded: i64 = windows[0]
            .get_path("counts")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .map(|c| c.as_i64().unwrap())
            .sum();
        assert_eq!(folded + int(&windows[0], "currentCount"), MAX);
    }
}
