//! Idempotency keys (seed §12, §20): a mutation, action or webhook that may be retried records
//! its key in `idempotencyKeys` together with its result, in the same transaction as its
//! effect, so a retry within the key's lifetime returns the first result instead of acting
//! twice. Keys expire (`expiresAt`) and are purged by `idempotency.purgeExpired`.
//!
//! Actions and webhook handlers, which have no transaction of their own, use the internal
//! mutations `idempotency.checkAndRecord` and `idempotency.storeResult`.

use std::sync::Arc;

use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::IDEMPOTENCY_KEYS;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::Deserialize;

use super::{fields, id_of, register_expiry_purge, LinkedUpConfig};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Default lifetime of a key: one day.
pub const DEFAULT_TTL_MS: i64 = 24 * 3_600_000;
/// The purge job's name.
pub const PURGE_EXPIRED: &str = "idempotency.purgeExpired";
/// Most expired keys one purge call deletes.
const PURGE_BATCH: usize = 512;

/// Checks `key` in `scope`. Returns the stored result of an earlier call with this key if it
/// has not expired (`Some(Value::Null)` when that call stored no result); otherwise records the
/// key (expiring `ttl_ms` from now) and returns `None`: the caller goes ahead and should
/// `store_result` in the same transaction.
/// Returns: VALIDATION_ERROR naming `field` (the caller's argument the key is) for an empty or
/// over-long key.
pub fn check_and_record(
    ctx: &mut Ctx<'_, '_>,
    field: &str,
    key: &str,
    scope: &str,
    ttl_ms: i64,
) -> FunctionResult<Option<Value>> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(invalid_field(
            field,
            format!("must be 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    let now = ctx.now_ms();
    if let Some(doc) = find(ctx, key, scope)? {
        if let Some(result) = unexpired_result(&doc, now) {
            return Ok(Some(result));
        }
        ctx.delete(IDEMPOTENCY_KEYS, &id_of(&doc)?)?;
    }
    ctx.insert(
        IDEMPOTENCY_KEYS,
        obj! {
            "key" => key,
            "scope" => scope,
            "createdAt" => now,
            "expiresAt" => now.saturating_add(ttl_ms.max(1)),
        },
    )?;
    Ok(None)
}

/// The stored result of a key's document if it has not expired at `now`.
fn unexpired_result(doc: &Value, now: i64) -> Option<Value> {
    let expires = doc
        .get_path("expiresAt")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    (expires > now).then(|| doc.get_path("result").cloned().unwrap_or(Value::Null))
}

/// The stored result of an unexpired earlier call with `key` in `scope`, recording nothing
/// (for a caller that checks before doing costly work and records later, in the mutation that
/// writes the result). Also usable in queries.
pub fn peek(ctx: &mut Ctx<'_, '_>, key: &str, scope: &str) -> FunctionResult<Option<Value>> {
    let now = ctx.now_ms();
    Ok(find(ctx, key, scope)?.and_then(|d| unexpired_result(&d, now)))
}

/// When an unexpired key expires, if it exists.
pub fn expires_at(ctx: &mut Ctx<'_, '_>, key: &str, scope: &str) -> FunctionResult<Option<i64>> {
    let now = ctx.now_ms();
    Ok(find(ctx, key, scope)?
        .and_then(|d| d.get_path("expiresAt").and_then(Value::as_i64))
        .filter(|&e| e > now))
}

fn find(ctx: &mut Ctx<'_, '_>, key: &str, scope: &str) -> FunctionResult<Option<Value>> {
    ctx.query(IDEMPOTENCY_KEYS, "by_key_scope")
        .eq("key", key)
        .eq("scope", scope)
        .first()
}

/// For a mutation that creates a document and returns its id: with a key, the id an earlier
/// call with this key in `scope` returned, if it has not expired; otherwise the key is recorded
/// (one day) and `None` returned, and the caller creates the document and `store_result`s its
/// id in the same transaction. Without a key, `None`. A bad key is a VALIDATION_ERROR naming
/// `field`, the caller's argument it is.
pub fn earlier_id(
    ctx: &mut Ctx<'_, '_>,
    field: &str,
    key: Option<&str>,
    scope: &str,
) -> FunctionResult<Option<String>> {
    let Some(key) = key else {
        return Ok(None);
    };
    Ok(check_and_record(ctx, field, key, scope, DEFAULT_TTL_MS)?
        .and_then(|previous| previous.as_str().map(str::to_string)))
}

/// Stores the result of the call that recorded `key` (see `check_and_record`).
pub fn store_result(
    ctx: &mut Ctx<'_, '_>,
    key: &str,
    scope: &str,
    result: Value,
) -> FunctionResult<()> {
    let doc = find(ctx, key, scope)?.ok_or_else(|| {
        query_engine::error::FunctionError::internal("idempotency key not recorded")
    })?;
    ctx.patch(
        IDEMPOTENCY_KEYS,
        &id_of(&doc)?,
        fields(obj! { "result" => result }),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CheckArgs {
    key: String,
    scope: String,
    ttl_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreArgs {
    key: String,
    scope: String,
    result: Value,
}

pub(crate) fn register(f: &mut Functions, _config: &Arc<LinkedUpConfig>) {
    // idempotency.checkAndRecord (internal): {seen: false} the first time (key recorded),
    // {seen: true, result} for a retry.
    f.mutation(
        "idempotency.checkAndRecord",
        Visibility::Internal,
        v::object([
            ("key", v::string()),
            ("scope", v::string()),
            ("ttlMs", v::optional(v::int64())),
        ]),
        v::object([("seen", v::boolean()), ("result", v::any())]),
        |ctx, a: CheckArgs| {
            let ttl = a.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
            Ok(match check_and_record(ctx, "key", &a.key, &a.scope, ttl)? {
                Some(result) => obj! { "seen" => true, "result" => result },
                None => obj! { "seen" => false, "result" => Value::Null },
            })
        },
    );
    // idempotency.storeResult (internal).
    f.mutation(
        "idempotency.storeResult",
        Visibility::Internal,
        v::object([
            ("key", v::string()),
            ("scope", v::string()),
            ("result", v::any()),
        ]),
        v::null(),
        |ctx, a: StoreArgs| store_result(ctx, &a.key, &a.scope, a.result),
    );
    // idempotency.purgeExpired (internal, for a cron): deletes up to 512 expired keys, and
    // runs again at once while it finds that many; returns how many it deleted.
    register_expiry_purge(
        f,
        PURGE_EXPIRED,
        (IDEMPOTENCY_KEYS, "by_expiry", "expiresAt"),
        PURGE_BATCH,
        |now| now,
    );
}
