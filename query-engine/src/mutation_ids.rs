//! Retried-mutation deduplication (protocol §12), durable and atomic with the mutation: the
//! system table `_mutation_ids` records, per (identity key, mutationId), the mutation's result
//! and an expiry. The record is read and written inside the mutation's own transaction, so it
//! commits if and only if the mutation's writes do, survives restarts, and concurrent
//! duplicates are settled by optimistic concurrency (the loser re-executes and finds the
//! winner's record). Expired records are ignored at once and deleted by a background sweep in
//! bounded batches.
//!
//! The sweep finds them by creation time: with one TTL, a record created at or before
//! `now - ttl` is exactly one that has expired, so `by_creation_time` serves as the expiry
//! index and a record carries one index of its own (`by_key`) rather than two, one entry less
//! to write and to delete per deduplicated mutation. The sweep reads only records created at
//! or before `now - ttl` (so it never conflicts with the mutations recording now) and deletes
//! those whose own expiry has passed. After the TTL is lowered, records written under the
//! longer one are swept as they expire; after it is raised, older records wait until they are
//! `ttl` old.

use std::time::Duration;

use crate::context::Ctx;
use crate::engine::Engine;
use crate::error::{FunctionError, FunctionResult};
use crate::obj;
use crate::protocol::messages::MAX_MUTATION_ID_BYTES;
use crate::schema::{v, TableDefinition, BY_CREATION_TIME};
use crate::value::{Object, Value};

pub const MUTATION_IDS: &str = "_mutation_ids";
const BY_KEY: &str = "by_key";
/// Most expired records deleted per sweep transaction.
pub(crate) const SWEEP_BATCH: usize = 500;

/// How long and how much of each mutation's outcome is remembered for retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutationDedupConfig {
    /// How long a retry with the same mutationId still finds the first run's record.
    pub ttl: Duration,
    /// Largest result (`Value::size_bytes`) stored with the record. A larger result is not
    /// stored: a retry is still never applied, but answers with an error instead of the value.
    /// The record counts toward the mutation's write limits, so keep this well below
    /// `Limits::max_document_bytes`.
    pub max_value_bytes: usize,
    /// Pause between sweeps of expired records (each sweep deletes full batches until none
    /// is left). Short, so that records expire in small steady batches: at 1,000 mutations/s
    /// a 30 s pause meant a burst of 30,000 deletes, 60 large transactions back to back.
    pub sweep_interval: Duration,
}

impl Default for MutationDedupConfig {
    fn default() -> Self {
        MutationDedupConfig {
            ttl: Duration::from_secs(600),
            max_value_bytes: 64 * 1024,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// A mutation call as run "once": its commit and whether it was a replay of a recorded run
/// (then nothing was applied and `committed.ts` is at or after the original commit).
#[derive(Clone, Debug, PartialEq)]
pub struct MutationOutcome {
    pub committed: crate::committer::Committed,
    pub replayed: bool,
}

pub(crate) fn table() -> TableDefinition {
    TableDefinition::new(
        MUTATION_IDS,
        v::object([
            // `issuer|subject` of the caller, empty when anonymous.
            ("identity", v::string()),
            ("mutationId", v::string()),
            // The mutation it ran (absent in records written before it was kept).
            ("function", v::optional(v::string())),
            ("expiresAtMs", v::int64()),
            // The result, absent when it was larger than `max_value_bytes`...
            ("value", v::optional(v::any())),
            // ...and then its size.
            ("omittedBytes", v::optional(v::int64())),
        ]),
    )
    .index(BY_KEY, &["identity", "mutationId"])
}

/// Refuses an empty or over-long mutationId.
pub(crate) fn check_id(mutation_id: &str) -> FunctionResult<()> {
    if mutation_id.is_empty() {
        return Err(FunctionError::validation("mutationId must not be empty")
            .with_data(obj! { "path" => "mutationId" }));
    }
    if mutation_id.len() > MAX_MUTATION_ID_BYTES {
        return Err(FunctionError::validation(format!(
            "mutationId is {} bytes, more than the {MAX_MUTATION_ID_BYTES} allowed",
            mutation_id.len()
        ))
        .with_data(obj! { "path" => "mutationId" }));
    }
    Ok(())
}

/// Runs `mutation` (the function `function`) in `ctx`'s transaction unless a live record for
/// (`identity`, `mutation_id`) exists; then the record's result is returned and nothing is
/// written — or, if the record is of another function, VALIDATION_ERROR: the id was reused
/// for a different mutation, which must not be dropped as a duplicate. Otherwise the record
/// is written alongside the mutation's own writes. Returns the value and whether it was a
/// replay. The lookup is in the transaction's read set, so two concurrent first runs conflict.
pub(crate) fn run_once(
    ctx: &mut Ctx<'_, '_>,
    config: &MutationDedupConfig,
    identity: &str,
    mutation_id: &str,
    function: &str,
    mutation: impl FnOnce(&mut Ctx<'_, '_>) -> FunctionResult<Value>,
) -> FunctionResult<(Value, bool)> {
    let now = ctx.now_ms();
    let existing = ctx
        .query(MUTATION_IDS, BY_KEY)
        .eq("identity", identity)
        .eq("mutationId", mutation_id)
        .first()?;
    let mut expired_id = None;
    if let Some(record) = existing {
        let expires = record
            .get_path("expiresAtMs")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MIN);
        if expires > now {
            return replay(&record, mutation_id, function).map(|v| (v, true));
        }
        // Past its expiry and not yet swept: this run replaces it.
        expired_id = record
            .get_path("_id")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    let value = mutation(ctx)?;
    let ttl_ms = i64::try_from(config.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut record = Object::new();
    record.insert("identity".into(), identity.into());
    record.insert("mutationId".into(), mutation_id.into());
    record.insert("function".into(), function.into());
    record.insert("expiresAtMs".into(), now.saturating_add(ttl_ms).into());
    if value.size_exceeds(config.max_value_bytes) {
        record.insert("omittedBytes".into(), (value.size_bytes() as i64).into());
    } else {
        record.insert("value".into(), value.clone());
    }
    let record = Value::from(record);
    // A new record rather than a replacement, which would keep the old creation time and sit
    // among the records the sweep reads as old enough to have expired.
    if let Some(id) = expired_id {
        ctx.delete(MUTATION_IDS, &id)?;
    }
    ctx.insert(MUTATION_IDS, record)?;
    Ok((value, false))
}

/// What a retry of the recorded run answers.
fn replay(record: &Value, mutation_id: &str, function: &str) -> FunctionResult<Value> {
    if let Some(recorded) = record
        .get_path("function")
        .and_then(Value::as_str)
        .filter(|f| *f != function)
    {
        return Err(FunctionError::validation(format!(
            "mutationId {mutation_id:?} was already used for {recorded}; a mutationId names one \
             mutation and is reused only to retry it"
        ))
        .with_data(obj! { "path" => "mutationId", "usedFor" => recorded }));
    }
    if let Some(bytes) = record.get_path("omittedBytes").and_then(Value::as_i64) {
        return Err(FunctionError::conflict(format!(
            "mutation {mutation_id:?} was already applied; its result of {bytes} bytes was too \
             large to keep, so it cannot be returned again"
        ))
        .with_data(obj! { "alreadyApplied" => true, "resultBytes" => bytes }));
    }
    Ok(record.get_path("value").cloned().unwrap_or(Value::Null))
}

/// Deletes up to `SWEEP_BATCH` expired records among those created at least `ttl` ago, in
/// one transaction; returns how many.
pub(crate) async fn sweep(engine: &Engine, ttl: Duration) -> FunctionResult<usize> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let deleted = engine
        .transact(move |ctx| {
            let now = ctx.now_ms();
            let old = ctx
                .query(MUTATION_IDS, BY_CREATION_TIME)
                .lte("_creationTime", now.saturating_sub(ttl_ms))
                .take(SWEEP_BATCH)?;
            let mut deleted = 0;
            for record in &old {
                let expires = record.get_path("expiresAtMs").and_then(Value::as_i64);
                if expires.is_some_and(|e| e > now) {
                    continue;
                }
                let id = record
                    .get_path("_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| FunctionError::internal("mutation id record without _id"))?;
                ctx.delete(MUTATION_IDS, id)?;
                deleted += 1;
            }
            Ok(Value::Int64(deleted))
        })
        .await?;
    Ok(deleted.as_i64().unwrap_or(0) as usize)
}

/// Sweeps expired records every `config.sweep_interval` (full batches back to back) until
/// shutdown.
pub(crate) async fn run_sweeper(engine: Engine, config: MutationDedupConfig) {
    let interval = config.sweep_interval;
    let mut shutdown = engine.shutdown_signal();
    loop {
        loop {
            if *shutdown.borrow() {
                return;
            }
            match sweep(&engine, config.ttl).await {
                Ok(SWEEP_BATCH) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "mutation id sweep failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::functions::Functions;
    use crate::schema::SchemaDefinition;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_deletes_expired_records_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        };
        let engine = Engine::open(
            &dir.path().join("db.redb"),
            SchemaDefinition::new(),
            Functions::new(),
            config,
        )
        .unwrap();
        let expired = SWEEP_BATCH + 100;
        engine
            .transact(move |ctx| {
                let now = ctx.now_ms();
                for i in 0..=expired {
                    // The last one is still live.
                    let expires = if i == expired { now + 60_000 } else { now - 1 };
                    ctx.insert(
                        MUTATION_IDS,
                        obj! {
                            "identity" => "",
                            "mutationId" => format!("m-{i}"),
                            "expiresAtMs" => expires,
                            "value" => Value::Null,
                        },
                    )?;
                }
                Ok(Value::Null)
            })
            .await
            .unwrap();
        // Under a TTL of a minute none is old enough to be looked at yet.
        assert_eq!(sweep(&engine, Duration::from_secs(60)).await.unwrap(), 0);
        let ttl = Duration::ZERO;
        assert_eq!(sweep(&engine, ttl).await.unwrap(), SWEEP_BATCH);
        assert_eq!(sweep(&engine, ttl).await.unwrap(), 100);
        assert_eq!(sweep(&engine, ttl).await.unwrap(), 0);
        let left = engine
            .read(|ctx| ctx.full_table_scan(MUTATION_IDS, 10).map(Value::Array))
            .await
            .unwrap();
        let Value::Array(left) = left else {
            panic!("not an array")
        };
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].get_path("mutationId"),
            Some(&Value::from(format!("m-{expired}")))
        );
    }
}
