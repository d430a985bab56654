//! Feature flags (seed §15, §22): one per capability (`precall/ai`, `incall/ai`,
//! `insights/postcall`, `matching`) and environment, read reactively so a change reaches every
//! subscriber at once. A flag has a global value and optional per-organisation overrides;
//! organisation admins set their organisation's override, and every change is audited with
//! the operator and their reason.

use std::sync::Arc;

use linkedup_schema::api::{
    FeatureFlag, FlagValue, GetFlagArgs, SetFlagArgs, ENVIRONMENTS, FLAG_KEYS,
};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{FEATURE_FLAGS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::Deserialize;

use super::guards::current_user;
use super::{audit, audited, check_text, decode, fields, stable_hash, LinkedUpConfig};

/// The scope of the platform-wide value.
pub const GLOBAL_SCOPE: &str = "global";
/// Longest reason, in chars.
const MAX_REASON_CHARS: usize = 1_000;

/// The scope of an organisation's override.
pub fn org_scope(org_id: &str) -> String {
    format!("org:{org_id}")
}

fn check_key_env(key: &str, environment: &str) -> FunctionResult<()> {
    if !FLAG_KEYS.contains(&key) {
        return Err(invalid_field(
            "key",
            format!("unknown flag; known: {FLAG_KEYS:?}"),
        ));
    }
    if !ENVIRONMENTS.contains(&environment) {
        return Err(invalid_field(
            "environment",
            format!("unknown environment; known: {ENVIRONMENTS:?}"),
        ));
    }
    Ok(())
}

fn find(
    ctx: &mut Ctx<'_, '_>,
    key: &str,
    environment: &str,
    scope: &str,
) -> FunctionResult<Option<FeatureFlag>> {
    ctx.query(FEATURE_FLAGS, "by_key_env_scope")
        .eq("key", key)
        .eq("environment", environment)
        .eq("scope", scope)
        .first()?
        .map(|d| decode(&d))
        .transpose()
}

/// The flag as it applies to a member of `org_id`: the organisation's override, else the
/// global value.
fn resolve(
    ctx: &mut Ctx<'_, '_>,
    key: &str,
    environment: &str,
    org_id: Option<&str>,
) -> FunctionResult<Option<FeatureFlag>> {
    if let Some(org) = org_id {
        if let Some(flag) = find(ctx, key, environment, &org_scope(org))? {
            return Ok(Some(flag));
        }
    }
    find(ctx, key, environment, GLOBAL_SCOPE)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetGlobalArgs {
    key: String,
    environment: String,
    value: Value,
    rollout_percentage: Option<f64>,
    reason: String,
    operator_user_id: String,
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // flags.get: the flag as it applies to the caller (their organisation's override, else the
    // global value), or null when unset (capability off). Returns: UNAUTHORIZED,
    // VALIDATION_ERROR.
    f.query(
        "flags.get",
        Visibility::Public,
        v::object([("key", v::string()), ("environment", v::string())]),
        v::any(),
        audited(config, "flags.get", get),
    );

    // flags.set: organisation admins only; sets their organisation's override of a flag, with
    // a required reason; audited with the operator and the previous value. Returns the flag.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR, FORBIDDEN.
    f.mutation(
        "flags.set",
        Visibility::Public,
        v::object([
            ("key", v::string()),
            ("environment", v::string()),
            ("value", v::any()),
            ("rolloutPercentage", v::optional(v::float64())),
            ("reason", v::string()),
        ]),
        v::any(),
        audited(config, "flags.set", set),
    );

    // flags.setGlobal (internal, for operators' tooling): sets the platform-wide value.
    f.mutation(
        "flags.setGlobal",
        Visibility::Internal,
        v::object([
            ("key", v::string()),
            ("environment", v::string()),
            ("value", v::any()),
            ("rolloutPercentage", v::optional(v::float64())),
            ("reason", v::string()),
            ("operatorUserId", v::id(USERS)),
        ]),
        v::any(),
        |ctx, a: SetGlobalArgs| {
            let args = SetFlagArgs {
                key: a.key,
                environment: a.environment,
                value: a.value,
                rollout_percentage: a.rollout_percentage,
                reason: a.reason,
            };
            write(ctx, &args, GLOBAL_SCOPE, &a.operator_user_id)
        },
    );
}

fn get(ctx: &mut Ctx<'_, '_>, a: GetFlagArgs) -> FunctionResult<Option<FlagValue>> {
    check_key_env(&a.key, &a.environment)?;
    let me = current_user(ctx)?;
    let flag = resolve(ctx, &a.key, &a.environment, me.identity.org_id.as_deref())?;
    Ok(flag.map(|f| FlagValue {
        key: f.key,
        environment: f.environment,
        value: f.value,
        rollout_percentage: f.rollout_percentage,
        scope: f.scope,
        updated_at: f.updated_at,
    }))
}

fn check_set_args(a: &SetFlagArgs) -> FunctionResult<()> {
    check_key_env(&a.key, &a.environment)?;
    check_text("reason", a.reason.trim(), 1, MAX_REASON_CHARS)?;
    if let Some(p) = a.rollout_percentage {
        if !(0.0..=100.0).contains(&p) {
            return Err(invalid_field("rolloutPercentage", "must be 0.0..=100.0"));
        }
    }
    Ok(())
}

fn set(ctx: &mut Ctx<'_, '_>, a: SetFlagArgs) -> FunctionResult<FeatureFlag> {
    check_set_args(&a)?;
    let me = current_user(ctx)?;
    let org = match (&me.identity.org_id, me.identity.is_org_admin()) {
        (Some(org), true) => org.clone(),
        _ => {
            return Err(ErrorCode::Forbidden.err_with(
                "only organisation admins may change feature flags",
                obj! { "resourceType" => "featureFlag", "resourceId" => a.key.as_str() },
            ))
        }
    };
    write(ctx, &a, &org_scope(&org), &me.id)
}

fn write(
    ctx: &mut Ctx<'_, '_>,
    a: &SetFlagArgs,
    scope: &str,
    operator: &str,
) -> FunctionResult<FeatureFlag> {
    check_set_args(a)?;
    let now = ctx.now_ms();
    let rollout = a.rollout_percentage.unwrap_or(100.0);
    let previous = find(ctx, &a.key, &a.environment, scope)?;
    let id = match &previous {
        Some(p) => {
            ctx.patch(
                FEATURE_FLAGS,
                &p.id,
                fields(obj! {
                    "value" => a.value.clone(),
                    "rolloutPercentage" => rollout,
                    "updatedBy" => operator,
                    "reason" => a.reason.trim(),
                    "updatedAt" => now,
                }),
            )?;
            p.id.clone()
        }
        None => ctx.insert(
            FEATURE_FLAGS,
            obj! {
                "key" => a.key.as_str(),
                "value" => a.value.clone(),
                "environment" => a.environment.as_str(),
                "scope" => scope,
                "rolloutPercentage" => rollout,
                "updatedBy" => operator,
                "reason" => a.reason.trim(),
                "createdAt" => now,
                "updatedAt" => now,
            },
        )?,
    };
    audit::record(
        ctx,
        Some(operator),
        "featureFlag",
        &format!("{}@{}/{}", a.key, a.environment, scope),
        "flag.set",
        obj! {
            "operator" => operator,
            "reason" => a.reason.trim(),
            "value" => a.value.clone(),
            "rolloutPercentage" => rollout,
            "previous" => previous.map(|p| p.value).unwrap_or(Value::Null),
        },
    )?;
    let doc = ctx
        .get(FEATURE_FLAGS, &id)?
        .ok_or_else(|| ErrorCode::Internal.err("flag vanished"))?;
    decode(&doc)
}

/// Whether capability `key` is on in `environment` for user `user_id` of organisation
/// `org_id`, for the functions a flag gates: the organisation's override if there is one,
/// else the global value, as `flags.get` resolves it. On means the value `true` and the user's
/// rollout bucket below `rolloutPercentage`; an unset flag is off. The bucket is a stable hash
/// of (key, user), so a user stays on one side while the percentage holds still and only
/// users joining move when it grows.
pub fn enabled(
    ctx: &mut Ctx<'_, '_>,
    key: &str,
    environment: &str,
    org_id: Option<&str>,
    user_id: &str,
) -> FunctionResult<bool> {
    let flag = resolve(ctx, key, environment, org_id)?;
    Ok(flag.is_some_and(|f| {
        f.value == Value::Bool(true) && rollout_bucket(key, user_id) < f.rollout_percentage
    }))
}

/// The user's rollout position for `key`, in [0, 100) with two decimals.
fn rollout_bucket(key: &str, user_id: &str) -> f64 {
    (stable_hash(&[key.as_bytes(), user_id.as_bytes()]) % 10_000) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::rollout_bucket;

    #[test]
    fn rollout_buckets_are_stable_bounded_and_spread() {
        assert_eq!(
            rollout_bucket("matching", "u1"),
            rollout_bucket("matching", "u1")
        );
        let buckets: Vec<f64> = (0..2_000)
            .map(|i| rollout_bucket("matching", &format!("user{i}")))
            .collect();
        assert!(buckets.iter().all(|b| (0.0..100.0).contains(b)));
        let below_half = buckets.iter().filter(|b| **b < 50.0).count();
        assert!((800..1_200).contains(&below_half), "{below_half}");
    }
}
