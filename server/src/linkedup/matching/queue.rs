//! The matching queue's public side: entering (`matching.enterQueue`), leaving
//! (`matching.leaveQueue`) and reading one's own state (`matching.status`). Identity comes
//! from the token only; a user has at most one `waiting` entry, and entering again while
//! waiting updates that entry (new window and constraints, same id) rather than failing, so a
//! client changes its availability with the call that set it.
//!
//! An entry is `waiting` until a cycle matches it (`matched`, `matchedWith`), its user leaves
//! (`cancelled`) or its window ends (`expired`). A waiting entry is always its user's latest:
//! a new one is created only when the latest is not waiting.

use std::collections::BTreeSet;
use std::sync::Arc;

use linkedup_schema::api::matching::limits::{
    MAX_KEY_CHARS, MAX_LEAD_MS, MAX_QUEUE_INTERESTS, MAX_ROLES, MAX_WINDOW_MS,
};
use linkedup_schema::api::matching::{
    fns, EnterQueueArgs, MatchConstraints, MatchStatus, MatchedUser, OrgConstraint, QueueEntry,
    QueueStatus, ORG_CONSTRAINTS,
};
use linkedup_schema::api::{NoArgs, User};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{INTERESTS, MATCHING_QUEUE, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;

use super::respond::own_rows;
use super::{MatchingConfig, FLAG};
use crate::linkedup::flags::Environment;
use crate::linkedup::guards::{current_user, CurrentUser};
use crate::linkedup::rate_limit::check_and_consume;
use crate::linkedup::{
    audit, audited, blocks, check_text, decode, encode, fields, flags, LinkedUpConfig,
};

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // matching.enterQueue: puts the caller in the queue for [availableFrom, availableTo) with
    // their constraints, or updates their waiting entry. Returns the entry id.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR (naming the field), FORBIDDEN (the `matching`
    // flag is off for the caller), RATE_LIMITED.
    let cfg = config.clone();
    f.mutation(
        fns::ENTER_QUEUE,
        Visibility::Public,
        v::object([
            ("availableFrom", v::int64()),
            ("availableTo", v::int64()),
            (
                "constraints",
                v::object([
                    ("interests", v::array(v::string())),
                    ("roles", v::array(v::string())),
                    (
                        "orgConstraints",
                        v::optional(v::union(ORG_CONSTRAINTS.iter().map(|s| v::literal(*s)))),
                    ),
                ]),
            ),
        ]),
        v::id(MATCHING_QUEUE),
        audited(config, fns::ENTER_QUEUE, move |ctx, a: EnterQueueArgs| {
            enter(ctx, &cfg, a)
        }),
    );

    // matching.leaveQueue: cancels the caller's waiting entry. Returns its id.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR, CONFLICT (not waiting).
    f.mutation(
        fns::LEAVE_QUEUE,
        Visibility::Public,
        v::object([]),
        v::id(MATCHING_QUEUE),
        audited(config, fns::LEAVE_QUEUE, |ctx, _a: NoArgs| leave(ctx)),
    );

    // matching.status: the caller's latest entry, who they were matched with (if they were)
    // and the outcomes they recorded for that match; null if they never entered.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.query(
        fns::STATUS,
        Visibility::Public,
        v::object([]),
        v::any(),
        audited(config, fns::STATUS, |ctx, _a: NoArgs| status(ctx)),
    );
}

/// The user's latest queue entry.
pub fn latest_entry(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<Option<QueueEntry>> {
    ctx.query(MATCHING_QUEUE, "by_user")
        .eq("userId", user_id)
        .desc()
        .first()?
        .map(|d| decode(&d))
        .transpose()
}

/// Checks what can be checked without reading: the window and the lists' shapes.
fn check_args(a: &EnterQueueArgs, now_ms: i64, config: &MatchingConfig) -> FunctionResult<()> {
    if a.available_to <= a.available_from {
        return Err(invalid_field("availableTo", "must be after availableFrom"));
    }
    if a.available_to <= now_ms {
        return Err(invalid_field("availableTo", "must be in the future"));
    }
    // Both ends come from the client: a window too long to subtract is too long.
    let window_ms = a.available_to.checked_sub(a.available_from);
    if window_ms.is_none_or(|w| w > MAX_WINDOW_MS) {
        return Err(invalid_field(
            "availableTo",
            format!("the window may be at most {MAX_WINDOW_MS} ms long"),
        ));
    }
    if a.available_from > now_ms.saturating_add(MAX_LEAD_MS) {
        return Err(invalid_field(
            "availableFrom",
            format!("must be at most {MAX_LEAD_MS} ms from now"),
        ));
    }
    if a.available_to.saturating_sub(a.available_from.max(now_ms)) < config.min_meeting_ms {
        return Err(invalid_field(
            "availableTo",
            format!(
                "the window must leave at least {} ms from now for a meeting",
                config.min_meeting_ms
            ),
        ));
    }
    let c = &a.constraints;
    if c.interests.len() > MAX_QUEUE_INTERESTS {
        return Err(invalid_field(
            "constraints.interests",
            format!("at most {MAX_QUEUE_INTERESTS} interests"),
        ));
    }
    for (i, k) in c.interests.iter().enumerate() {
        check_text(&format!("constraints.interests[{i}]"), k, 1, MAX_KEY_CHARS)?;
    }
    if c.roles.len() > MAX_ROLES {
        return Err(invalid_field(
            "constraints.roles",
            format!("at most {MAX_ROLES} roles"),
        ));
    }
    for (i, r) in c.roles.iter().enumerate() {
        if !config.roles.knows(r) {
            return Err(invalid_field(
                &format!("constraints.roles[{i}]"),
                format!("unknown role {r:?}; known: {:?}", config.roles.roles()),
            ));
        }
    }
    Ok(())
}

fn enter(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: EnterQueueArgs,
) -> FunctionResult<String> {
    let matching = &config.matching;
    let now = ctx.now_ms();
    check_args(&a, now, matching)?;
    let me = current_user(ctx)?;
    require_flag(ctx, &config.environment, &me)?;
    if a.constraints.org_constraints == Some(OrgConstraint::SameOrg) && me.identity.org_id.is_none()
    {
        return Err(invalid_field(
            "constraints.orgConstraints",
            "sameOrg needs a token with an organisation",
        ));
    }
    for (i, k) in a.constraints.interests.iter().enumerate() {
        if ctx
            .query(INTERESTS, "by_key")
            .eq("key", k.as_str())
            .first()?
            .is_none()
        {
            return Err(invalid_field(
                &format!("constraints.interests[{i}]"),
                format!("{k:?} is not in the interest catalogue"),
            ));
        }
    }
    check_and_consume(
        ctx,
        &config.rate_limits,
        &me.id,
        fns::ENTER_QUEUE,
        matching.enter_rate_limit,
    )?;

    let dedup = |items: &[String]| -> Vec<String> {
        items
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let constraints = encode(&MatchConstraints {
        interests: dedup(&a.constraints.interests),
        roles: dedup(&a.constraints.roles),
        org_constraints: a.constraints.org_constraints,
    })?;
    let waiting = latest_entry(ctx, &me.id)?.filter(|e| e.status == QueueStatus::Waiting);
    let (id, action) = match waiting {
        Some(e) => {
            ctx.patch(
                MATCHING_QUEUE,
                &e.id,
                fields(obj! {
                    "availableFrom" => a.available_from,
                    "availableTo" => a.available_to,
                    "constraints" => constraints,
                    "updatedAt" => now,
                }),
            )?;
            (e.id, "matching.queueUpdated")
        }
        None => {
            let id = ctx.insert(
                MATCHING_QUEUE,
                obj! {
                    "userId" => me.id.as_str(),
                    "availableFrom" => a.available_from,
                    "availableTo" => a.available_to,
                    "constraints" => constraints,
                    "status" => QueueStatus::Waiting.as_str(),
                    "createdAt" => now,
                    "updatedAt" => now,
                },
            )?;
            (id, "matching.queueEntered")
        }
    };
    audit::record(
        ctx,
        Some(&me.id),
        "matchingQueue",
        &id,
        action,
        obj! { "availableFrom" => a.available_from, "availableTo" => a.available_to },
    )?;
    Ok(id)
}

/// Refuses a caller for whom the `matching` flag is off (FORBIDDEN, audited as a denial).
fn require_flag(
    ctx: &mut Ctx<'_, '_>,
    environment: &Environment,
    me: &CurrentUser,
) -> FunctionResult<()> {
    let org = me.identity.org_id.as_deref();
    if flags::is_enabled(ctx, FLAG, environment, org, &me.id)? {
        return Ok(());
    }
    Err(ErrorCode::Forbidden.err_with(
        "matching is not enabled for this user",
        obj! { "resourceType" => "featureFlag", "resourceId" => FLAG },
    ))
}

fn leave(ctx: &mut Ctx<'_, '_>) -> FunctionResult<String> {
    let me = current_user(ctx)?;
    let entry = latest_entry(ctx, &me.id)?
        .filter(|e| e.status == QueueStatus::Waiting)
        .ok_or_else(|| ErrorCode::Conflict.err("not waiting in the matching queue"))?;
    let now = ctx.now_ms();
    ctx.patch(
        MATCHING_QUEUE,
        &entry.id,
        fields(obj! { "status" => QueueStatus::Cancelled.as_str(), "updatedAt" => now }),
    )?;
    audit::record(
        ctx,
        Some(&me.id),
        "matchingQueue",
        &entry.id,
        "matching.queueLeft",
        obj! {},
    )?;
    Ok(entry.id)
}

/// The caller's latest entry. A cancelled match with someone either side blocks (the block
/// cancelled it) is shown without its counterpart — no id, name or match record — so it does not
/// tell the blocked user who blocked them. (A completed match stays: both know each other, and
/// it can still be rated.)
fn status(ctx: &mut Ctx<'_, '_>) -> FunctionResult<Option<MatchStatus>> {
    let me = current_user(ctx)?;
    let Some(mut entry) = latest_entry(ctx, &me.id)? else {
        return Ok(None);
    };
    if let (QueueStatus::Cancelled, Some(other)) = (entry.status, entry.matched_with.clone()) {
        if blocks::either_way(ctx, &me.id, &other)? {
            entry.matched_with = None;
            entry.match_record = None;
        }
    }
    let matched_user = match &entry.matched_with {
        Some(other) => {
            let user: Option<User> = ctx.get(USERS, other)?.map(|d| decode(&d)).transpose()?;
            Some(MatchedUser {
                user_id: other.clone(),
                display_name: user.and_then(|u| u.display_name),
            })
        }
        None => None,
    };
    let my_outcomes = match &entry.match_record {
        Some(m) => own_rows(ctx, &m.match_id, &me.id)?
            .into_iter()
            .map(|r| r.outcome)
            .collect(),
        None => Vec::new(),
    };
    Ok(Some(MatchStatus {
        entry,
        matched_user,
        my_outcomes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn args(from: i64, to: i64) -> EnterQueueArgs {
        EnterQueueArgs {
            available_from: from,
            available_to: to,
            constraints: MatchConstraints::default(),
        }
    }

    fn path_of(r: FunctionResult<()>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, "VALIDATION_ERROR");
        e.data
            .get_path("path")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn windows_and_lists_are_bounded() {
        let c = MatchingConfig::default();
        assert!(check_args(&args(NOW, NOW + HOUR), NOW, &c).is_ok());
        assert!(check_args(&args(NOW - HOUR, NOW + HOUR), NOW, &c).is_ok());
        for (bad, path) in [
            (args(NOW + HOUR, NOW + HOUR), "availableTo"),
            (args(NOW - 2 * HOUR, NOW - HOUR), "availableTo"),
            (args(NOW, NOW + MAX_WINDOW_MS + 1), "availableTo"),
            (
                args(NOW + MAX_LEAD_MS + HOUR, NOW + MAX_LEAD_MS + 2 * HOUR),
                "availableFrom",
            ),
            (args(NOW - HOUR, NOW + 60_000), "availableTo"),
            // Ends whose difference overflows i64.
            (args(i64::MIN, i64::MAX), "availableTo"),
            (args(i64::MIN, NOW + HOUR), "availableTo"),
        ] {
            assert_eq!(path_of(check_args(&bad, NOW, &c)), path);
        }
        let mut many = args(NOW, NOW + HOUR);
        many.constraints.interests = vec!["k".into(); MAX_QUEUE_INTERESTS + 1];
        assert_eq!(path_of(check_args(&many, NOW, &c)), "constraints.interests");
        many.constraints.interests = vec!["k".into(), "".into()];
        assert_eq!(
            path_of(check_args(&many, NOW, &c)),
            "constraints.interests[1]"
        );
        let mut roles = args(NOW, NOW + HOUR);
        roles.constraints.roles = vec!["mentor".into(), "wizard".into()];
        assert_eq!(path_of(check_args(&roles, NOW, &c)), "constraints.roles[1]");
        roles.constraints.roles = vec!["mentor".into(); MAX_ROLES + 1];
        assert_eq!(path_of(check_args(&roles, NOW, &c)), "constraints.roles");
    }
}
