//! Feature flags (seed §15, §22): one per capability (`precall/ai`, `incall/ai`,
//! `insights/postcall`, `matching`) and environment, read reactively so a change reaches every
//! subscriber at once. A flag has a global value and optional per-organisation overrides;
//! organisation admins set their organisation's override, and every change is audited with
//! the operator and their reason. Operators outrank organisations: a global `false` turns a
//! capability off everywhere, and `stream/paused` has no overrides at all.

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

/// Flags only operators set (`flags.setGlobal`): the runbooks' platform switches, which an
/// organisation must not be able to overrule (seed §23: a Stream outage disables token
/// minting for everyone).
const OPERATOR_FLAGS: [&str; 1] = [super::stream_tokens::PAUSED_FLAG];

/// The flag as it applies to a member of `org_id`. A global value of `false` is the
/// operators turning a capability off (an AI outage) and holds for everyone; otherwise the
/// organisation's override, else the global value. Operators' flags have no overrides.
fn resolve(
    ctx: &mut Ctx<'_, '_>,
    key: &str,
    environment: &str,
    org_id: Option<&str>,
) -> FunctionResult<Option<FeatureFlag>> {
    let global = find(ctx, key, environment, GLOBAL_SCOPE)?;
    let switched_off = global
        .as_ref()
        .is_some_and(|g| g.value == Value::Bool(false));
    if switched_off || OPERATOR_FLAGS.contains(&key) {
        return Ok(global);
    }
    if let Some(org) = org_id {
        if let Some(flag) = find(ctx, key, environment, &org_scope(org))? {
            return Ok(Some(flag));
        }
    }
    Ok(global)
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
    // flags.get: the flag as it applies to the caller (see `resolve`: a global false, else
    // their organisation's override, else the global value), or null when unset (capability off). Returns: UNAUTHORIZED,
    // VALIDATION_ERROR.
    f.query(
        "flags.get",
        Visibility::Public,
        v::object([("key", v::string()), ("environment", v::string())]),
        v::any(),
        audited(config, "flags.get", get),
    );

    // flags.set: organisation admins only; sets their organisation's override of a flag (not
    // of an operators' flag), with a required reason; audited with the operator and the
    // previous value. Returns the flag. Returns: UNAUTHORIZED, VALIDATION_ERROR, FORBIDDEN.
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
    if OPERATOR_FLAGS.contains(&a.key.as_str()) {
        return Err(ErrorCode::Forbidden.err_with(
            format!(
                "{} is the operators' switch; organisations cannot override it",
                a.key
            ),
            obj! { "resourceType" => "featureFlag", "resourceId" => a.key.as_str() },
        ));
    }
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

/// The environment whose flags the functions read (seed §15), `local` unless configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment(String);

impl Default for Environment {
    fn default() -> Self {
        Environment("local".into())
    }
}

impl Environment {
    /// Returns: an error naming the known environments.
    pub fn new(name: &str) -> Result<Self, String> {
        if ENVIRONMENTS.contains(&name) {
            Ok(Environment(name.to_string()))
        } else {
            Err(format!(
                "unknown environment {name:?}; known: {ENVIRONMENTS:?}"
            ))
        }
    }

    /// `--environment` (`LINKEDUP_ENVIRONMENT`), or the default.
    pub fn from_options(o: &crate::config::Options) -> Result<Self, crate::config::ConfigError> {
        match &o.environment {
            None => Ok(Environment::default()),
            Some(name) => Environment::new(name).map_err(|_| crate::config::ConfigError::Invalid {
                name: "environment",
                value: name.clone(),
                reason: "must be local, staging or prod",
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether capability `key` is on in `environment` for organisation `org` (as `resolve`
/// decides): the value must be `true`, and `unit` (what the capability acts on, e.g.
/// a meeting id) must fall within the rollout percentage. Unset is off.
pub fn is_enabled(
    ctx: &mut Ctx<'_, '_>,
    key: &str,
    environment: &Environment,
    org: Option<&str>,
    unit: &str,
) -> FunctionResult<bool> {
    let flag = resolve(ctx, key, environment.as_str(), org)?;
    Ok(flag.is_some_and(|f| {
        f.value == Value::Bool(true) && in_rollout(key, unit, f.rollout_percentage)
    }))
}

/// `is_enabled`, or FORBIDDEN with `data = {reason: "featureDisabled", flag}`.
pub fn require_enabled(
    ctx: &mut Ctx<'_, '_>,
    key: &str,
    environment: &Environment,
    org: Option<&str>,
    unit: &str,
) -> FunctionResult<()> {
    if is_enabled(ctx, key, environment, org, unit)? {
        return Ok(());
    }
    Err(ErrorCode::Forbidden.err_with(
        format!("the {key} capability is turned off"),
        obj! { "reason" => "featureDisabled", "flag" => key },
    ))
}

/// Whether `unit` is among the `percentage` of units a rollout reaches: a stable hash of the
/// flag and the unit picks one of 10,000 buckets, so a unit stays in as the rollout grows.
fn in_rollout(key: &str, unit: &str, percentage: f64) -> bool {
    let bucket = stable_hash(&[key.as_bytes(), unit.as_bytes()]) % 10_000;
    (bucket as f64) < percentage * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollouts_reach_about_their_share_and_grow_monotonically() {
        let units: Vec<String> = (0..2_000).map(|i| format!("m{i}")).collect();
        let reached = |p: f64| {
            units
                .iter()
                .filter(|u| in_rollout("incall/ai", u, p))
                .count()
        };
        assert_eq!(reached(0.0), 0);
        assert_eq!(reached(100.0), 2_000);
        let quarter = reached(25.0);
        assert!((400..600).contains(&quarter), "{quarter}");
        for u in &units {
            if in_rollout("incall/ai", u, 25.0) {
                assert!(in_rollout("incall/ai", u, 50.0));
            }
        }
    }

    #[test]
    fn environments_are_checked() {
        assert_eq!(Environment::default().as_str(), "local");
        assert!(Environment::new("prod").is_ok());
        assert!(Environment::new("qa").is_err());
    }
}
