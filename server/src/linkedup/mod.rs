//! LinkedUp's domain functions on the query engine, one module per domain (users, connections,
//! meetings, chat, flags, audit, AI prompts, insights, embeddings) plus the cross-cutting guards, rate limiter, idempotency
//! keys and data retention. `register` adds them all to a `Functions` registry; `start` runs
//! their background work.
//!
//! Each function follows the same order: validators (engine-checked), guard, logic, audit.

mod ai_budget;
mod ai_context;
pub mod audit;
pub mod blocks;
pub mod chat;
pub mod connections;
pub mod embeddings;
pub mod erasure;
pub mod flags;
pub mod guards;
pub mod idempotency;
pub mod insights;
pub mod matching;
pub mod meetings;
pub mod notes;
pub mod post_call;
pub mod prompts;
pub mod rate_limit;
pub mod retention;
pub mod stream_rooms;
pub mod stream_tokens;
pub mod stream_webhook;
pub mod transcripts;
pub mod users;

use std::sync::Arc;

use linkedup_schema::api::Page;
use linkedup_schema::errors::invalid_field;
use linkedup_schema::ErrorCode;
use query_engine::context::{Ctx, IndexQuery};
use query_engine::engine::Engine;
use query_engine::error::{FunctionError, FunctionResult};
use query_engine::functions::{Functions, Visibility};
use query_engine::json::{from_value, to_value};
use query_engine::scheduler::Cron;
use query_engine::schema::v;
use query_engine::value::{Object, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use audit::DenialLog;
pub use matching::MatchingConfig;
pub use rate_limit::{Counters, RateLimit, RateLimitConfig};
pub use retention::RetentionPolicy;

use crate::http::AppRoutes;
use crate::stream::StreamConfig;

/// Settings of the LinkedUp functions.
#[derive(Clone, Debug, Default)]
pub struct LinkedUpConfig {
    pub rate_limits: RateLimitConfig,
    /// How long the append-only tables keep their documents (see `retention`).
    pub retention: RetentionPolicy,
    /// Where access denials wait to be written to `auditLogs` (see `audit`); shared by every
    /// function registered with this config and drained by `start`.
    pub denials: DenialLog,
    /// Meeting rooms and webhooks (`stream_rooms`, `stream_webhook`): the local provider by
    /// default.
    pub stream: StreamConfig,
    /// Matching queue, scoring and cycles (see `matching`).
    pub matching: MatchingConfig,
    /// The environment whose feature flags apply (seed §15).
    pub environment: flags::Environment,
    /// The AI provider and its limits (`prompts`, `insights`, `embeddings`).
    pub ai: crate::ai::AiConfig,
    /// How the erasure of a user's personal data paces itself (`erasure`).
    pub erasure: erasure::ErasureConfig,
    /// Block lists (`blocks`).
    pub blocks: blocks::BlocksConfig,
    /// Note editing (`notes`).
    pub notes: notes::NotesConfig,
}

/// Registers every LinkedUp function.
pub fn register(functions: &mut Functions, config: &LinkedUpConfig) {
    let config = Arc::new(config.clone());
    users::register(functions, &config);
    connections::register(functions, &config);
    meetings::register(functions, &config);
    chat::register(functions, &config);
    flags::register(functions, &config);
    audit::register(functions, &config);
    idempotency::register(functions, &config);
    rate_limit::register(functions, &config);
    transcripts::register(functions, &config);
    notes::register(functions, &config);
    retention::register(functions, &config);
    stream_rooms::register(functions, &config);
    stream_tokens::register(functions, &config);
    stream_webhook::register(functions, &config);
    matching::register(functions, &config);
    prompts::register(functions, &config);
    insights::register(functions, &config);
    embeddings::register(functions, &config);
    erasure::register(functions, &config);
    blocks::register(functions, &config);
}

/// LinkedUp's routes on the server's HTTP port (`Server::start_with_routes`): Stream's webhook.
pub fn http_routes(config: &LinkedUpConfig) -> AppRoutes {
    stream_webhook::routes(config)
}

/// Recurring maintenance, for `EngineConfig::crons`: note-op compaction (seed §20: noteOps
/// kept 90 days), the other tables' retention (`retention`), expired idempotency keys and old
/// rate-limit counters. Each job deletes a bounded batch per transaction and runs again at
/// once while batches come back full. Also the matching tick (expiry and one cycle per shard,
/// every minute) and the purge of finished queue entries; and the restart of stalled
/// erasures (`erasure`) and of stopped post-call insight generations (`insights`).
pub fn crons() -> Vec<Cron> {
    const HOUR_MS: i64 = 3_600_000;
    [
        ("notes.compactAll", 24 * HOUR_MS),
        (retention::PURGE, HOUR_MS),
        (idempotency::PURGE_EXPIRED, HOUR_MS),
        (rate_limit::PURGE, HOUR_MS),
        (matching::cycle::TICK, matching::cycle::TICK_INTERVAL_MS),
        (matching::cycle::PURGE, matching::cycle::PURGE_INTERVAL_MS),
        (erasure::RESUME_STALLED, erasure::RESUME_INTERVAL_MS),
        (insights::RESUME_STALLED, insights::RESUME_INTERVAL_MS),
    ]
    .into_iter()
    .map(|(function, interval_ms)| Cron {
        name: function.to_string(),
        interval_ms,
        function: function.to_string(),
        args: Value::Object(Default::default()),
    })
    .collect()
}

/// Starts LinkedUp's background work on a running engine: the task that writes recorded
/// access denials to `auditLogs`. Abort the returned handle on shutdown (pending denials are
/// bounded in memory and lost with the process).
pub fn start(engine: &Engine, config: &LinkedUpConfig) -> tokio::task::JoinHandle<()> {
    audit::spawn_denial_writer(engine.clone(), config.denials.clone())
}

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the domain modules.

/// What a purge must not delete although it is old enough (`purge_below`).
pub(crate) type Keep = fn(&mut Ctx<'_, '_>, &Value) -> FunctionResult<bool>;

/// Keeps nothing.
pub(crate) fn keep_none(_: &mut Ctx<'_, '_>, _: &Value) -> FunctionResult<bool> {
    Ok(false)
}

/// Deletes, of the next `batch` documents of `table` whose `field` (the first field of
/// `index`) is below `cutoff` (from `after`, a cursor of this walk, or the start), those
/// `keep` does not keep. While more may follow it schedules `again` (a function and its
/// arguments: the calling purge job) to run at once with `after` set to where this batch
/// ended, so a backlog drains in bounded transactions rather than one batch per cron run, and
/// documents kept at the front of the range (however many) are walked past instead of read
/// again by every run, which stalled the purge once a batch's worth of them had gathered.
/// Returns how many it deleted and whether it scheduled `again`.
pub(crate) fn purge_below(
    ctx: &mut Ctx<'_, '_>,
    (table, index, field): (&str, &str, &str),
    cutoff: i64,
    batch: usize,
    keep: Keep,
    after: Option<&str>,
    (again, mut again_args): (&str, Object),
) -> FunctionResult<(usize, bool)> {
    let old = ctx
        .query(table, index)
        .lt(field, cutoff)
        .paginate(after, batch)?;
    let mut deleted = 0;
    for d in &old.page {
        if !keep(ctx, d)? {
            ctx.delete(table, &id_of(d)?)?;
            deleted += 1;
        }
    }
    let next = old.continue_cursor.filter(|_| !old.is_done);
    let continued = next.is_some();
    if let Some(cursor) = next {
        again_args.insert(PURGE_AFTER.into(), cursor.into());
        ctx.schedule_after(0, again, Value::from(again_args))?;
    }
    Ok((deleted, continued))
}

/// The argument a purge job's continuation carries: where the previous batch ended.
pub(crate) const PURGE_AFTER: &str = "after";

#[derive(serde::Deserialize)]
struct PurgeAfter {
    after: Option<String>,
}

/// Registers the internal mutation `name`, for a cron: it deletes up to `batch` documents of
/// `target` (table, index, field) whose field is below `cutoff(now_ms)`, and runs again at once
/// while batches come back full (`purge_below`); returns how many it deleted.
pub(crate) fn register_expiry_purge(
    f: &mut Functions,
    name: &'static str,
    target: (&'static str, &'static str, &'static str),
    batch: usize,
    cutoff: fn(i64) -> i64,
) {
    f.mutation(
        name,
        Visibility::Internal,
        v::object([(PURGE_AFTER, v::optional(v::string()))]),
        v::int64(),
        move |ctx, a: PurgeAfter| {
            let below = cutoff(ctx.now_ms());
            let again = (name, Object::new());
            purge_below(
                ctx,
                target,
                below,
                batch,
                keep_none,
                a.after.as_deref(),
                again,
            )
            .map(|(deleted, _)| deleted as i64)
        },
    );
}

/// Wraps a handler so that a `FORBIDDEN` outcome is recorded as an access denial (see `audit`),
/// and a refusal that must look like a missing resource is shown as that
/// (`guards::hidden`). Every public LinkedUp handler is registered through this.
pub(crate) fn audited<A, R>(
    config: &Arc<LinkedUpConfig>,
    function: &'static str,
    f: impl Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<R> + Send + Sync + 'static,
) -> impl Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<R> + Send + Sync + 'static {
    let denials = config.denials.clone();
    move |ctx, args| {
        f(ctx, args).map_err(|e| {
            if e.code == ErrorCode::Forbidden.as_str() {
                denials.record(ctx, function, &e);
            }
            guards::seen_by_caller(e)
        })
    }
}

/// Decodes a stored document into its typed form.
pub(crate) fn decode<T: DeserializeOwned>(doc: &Value) -> FunctionResult<T> {
    from_value(doc).map_err(|e| {
        tracing::error!(error = %e, "stored document does not decode");
        FunctionError::internal("stored document does not decode")
    })
}

/// One page of `query`'s documents decoded as `T`. A cursor that is not one of this query's
/// is a VALIDATION_ERROR on the `cursor` argument.
pub(crate) fn decoded_page<T: DeserializeOwned>(
    query: IndexQuery<'_, '_, '_>,
    cursor: Option<&str>,
    page_size: usize,
) -> FunctionResult<Page<T>> {
    let page = query.paginate(cursor, page_size).map_err(|e| {
        if e.code == ErrorCode::ValidationError.as_str() {
            invalid_field("cursor", e.message)
        } else {
            e
        }
    })?;
    Ok(Page {
        page: page
            .page
            .iter()
            .map(decode)
            .collect::<FunctionResult<_>>()?,
        continue_cursor: page.continue_cursor,
        is_done: page.is_done,
    })
}

/// Encodes a typed value as a document or result.
pub(crate) fn encode<T: Serialize>(v: &T) -> FunctionResult<Value> {
    to_value(v).map_err(|e| FunctionError::internal(format!("cannot encode value: {e}")))
}

/// The fields of an object value, for `ctx.patch`.
pub(crate) fn fields(v: Value) -> Object {
    v.into_object().unwrap_or_default()
}

/// The `_id` of a document.
pub(crate) fn id_of(doc: &Value) -> FunctionResult<String> {
    doc.get_path("_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| FunctionError::internal("document without _id"))
}

/// Checks a free-text argument's length in chars.
pub(crate) fn check_text(
    path: &str,
    s: &str,
    min_chars: usize,
    max_chars: usize,
) -> FunctionResult<()> {
    let n = s.chars().count();
    if n < min_chars {
        return Err(invalid_field(
            path,
            format!("must have at least {min_chars} characters"),
        ));
    }
    if n > max_chars {
        return Err(invalid_field(
            path,
            format!("must have at most {max_chars} characters, got {n}"),
        ));
    }
    Ok(())
}

/// A hash of `parts` that never changes between runs, processes or versions (the first 8
/// bytes of their SHA-256, parts separated by a zero byte), for assignments that must hold
/// still: flag rollout buckets, matching shards.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Checks an optional limit argument and returns it or its default.
pub(crate) fn limit_arg(
    path: &str,
    limit: Option<i64>,
    default: i64,
    max: i64,
) -> FunctionResult<usize> {
    let n = limit.unwrap_or(default);
    if !(1..=max).contains(&n) {
        return Err(invalid_field(path, format!("must be between 1 and {max}")));
    }
    Ok(n as usize)
}
