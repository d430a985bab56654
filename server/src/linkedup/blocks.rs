//! Block lists (seed §24, "do-not-match lists"): the signed-in user blocks another user
//! (`users.block`), unblocks them (`users.unblock`) and lists whom they block
//! (`users.listBlocked`), one `userBlocks` document per (blocker, blocked). Also the lookups
//! the other domains make to honour a block.
//!
//! A block keeps the two apart both ways, whoever blocked whom:
//! - Connections: `connections.request` between them is refused. The blocker gets CONFLICT
//!   (`data.reason: "blocked"`: unblock first); the blocked user gets the very NOT_FOUND a
//!   user that does not exist gives, so a block is not revealed to them (as mainstream social
//!   products do: a blocked member's invitation finds nobody). The block deletes the pair's
//!   connection document, whatever its state: an accepted connection ends, a pending request
//!   is withdrawn, and after an unblock the pair starts from "never connected".
//! - Matching: the pair is a hard do-not-match constraint (`matching::parties`), and the block
//!   cancels a pending match between them (`matching::respond::cancel_pending`).
//! - Meetings are not affected. A meeting belongs to its organiser (and organisation), who
//!   decides whom to invite; a block between two colleagues must not take either out of their
//!   work meetings, and refusing an invitation would tell the host about the block.
//!
//! Blocking, with its effects and its audit entry, is one mutation. It is idempotent: a
//! block that exists is returned as it is (its reason unchanged) and nothing is written.
//! The reason is the blocker's private note: it is returned to them only and never audited.

use std::collections::BTreeSet;
use std::sync::Arc;

use linkedup_schema::api::blocks::limits::{DEFAULT_LIST_PAGE, MAX_LIST_PAGE, MAX_REASON_CHARS};
use linkedup_schema::api::blocks::{fns, Block, BlockArgs, ListBlockedArgs, BLOCK_LIMIT};
use linkedup_schema::api::{Page, UserIdArgs};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{USERS, USER_BLOCKS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;

use super::guards::{current_user, live_user};
use super::matching::respond::cancel_pending;
use super::rate_limit::check_and_consume;
use super::{
    audit, audited, check_text, connections, decode, decoded_page, fields, id_of, limit_arg,
    LinkedUpConfig,
};
use crate::config::{ConfigError, Options};

/// The rate-limited action: blocking and unblocking count together, so toggling a block on
/// and off (each block deleting a connection and cancelling matches) is bounded too.
const RATE_LIMIT_ACTION: &str = "users.block";
/// Highest configurable `BlocksConfig::max_per_user`: a block counts the caller's blocks in
/// one bounded read of this many.
pub const MAX_BLOCKS_PER_USER: usize = 5_000;
const _: () = assert!(MAX_BLOCKS_PER_USER <= query_engine::context::MAX_TAKE);

/// Block list settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlocksConfig {
    /// Most users one user may block (1..=`MAX_BLOCKS_PER_USER`).
    pub max_per_user: usize,
}

impl Default for BlocksConfig {
    fn default() -> Self {
        BlocksConfig {
            max_per_user: 1_000,
        }
    }
}

impl BlocksConfig {
    /// The settings the options select (`--max-blocks-per-user`); unset ones keep their
    /// defaults.
    pub fn from_options(o: &Options) -> Result<BlocksConfig, ConfigError> {
        let mut config = BlocksConfig::default();
        if let Some(n) = o.max_blocks_per_user {
            if !(1..=MAX_BLOCKS_PER_USER).contains(&n) {
                return Err(ConfigError::Invalid {
                    name: "max-blocks-per-user",
                    value: n.to_string(),
                    reason: "must be 1..=5000",
                });
            }
            config.max_per_user = n;
        }
        Ok(config)
    }
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // users.block: the caller blocks `userId` (see the module comment for the effects).
    // Returns the block. Returns: UNAUTHORIZED, VALIDATION_ERROR (self, reason length),
    // NOT_FOUND (no such user, or one being erased), CONFLICT (`data.reason: "blockLimit"`,
    // `data.max`), RATE_LIMITED.
    let cfg = config.clone();
    f.mutation(
        fns::BLOCK,
        Visibility::Public,
        v::object([
            ("userId", v::id(USERS)),
            ("reason", v::optional(v::string())),
        ]),
        v::any(),
        audited(config, fns::BLOCK, move |ctx, a: BlockArgs| {
            block(ctx, &cfg, a)
        }),
    );

    // users.unblock: the caller lifts their block of `userId`. Returns whether there was one
    // (unblocking a user one does not block is not an error). Returns: UNAUTHORIZED,
    // VALIDATION_ERROR (self), RATE_LIMITED.
    let cfg = config.clone();
    f.mutation(
        fns::UNBLOCK,
        Visibility::Public,
        v::object([("userId", v::id(USERS))]),
        v::boolean(),
        audited(config, fns::UNBLOCK, move |ctx, a: UserIdArgs| {
            unblock(ctx, &cfg, a)
        }),
    );

    // users.listBlocked: a page of the caller's blocks, newest first (`numItems` 1..=100,
    // default 50). Returns: UNAUTHORIZED, VALIDATION_ERROR (numItems, a foreign cursor).
    f.query(
        fns::LIST_BLOCKED,
        Visibility::Public,
        v::object([
            ("cursor", v::optional(v::string())),
            ("numItems", v::optional(v::int64())),
        ]),
        v::any(),
        audited(config, fns::LIST_BLOCKED, list),
    );
}

/// The block of `blocked` by `blocker`, if any (one point read).
fn find(ctx: &mut Ctx<'_, '_>, blocker: &str, blocked: &str) -> FunctionResult<Option<Value>> {
    ctx.query(USER_BLOCKS, "by_pair")
        .eq("blockerId", blocker)
        .eq("blockedId", blocked)
        .first()
}

/// Whether `blocker` blocks `blocked`.
pub fn blocks(ctx: &mut Ctx<'_, '_>, blocker: &str, blocked: &str) -> FunctionResult<bool> {
    Ok(find(ctx, blocker, blocked)?.is_some())
}

/// Whether either of `x` and `y` blocks the other (two point reads).
pub fn either_way(ctx: &mut Ctx<'_, '_>, x: &str, y: &str) -> FunctionResult<bool> {
    Ok(blocks(ctx, x, y)? || blocks(ctx, y, x)?)
}

/// The users `user_id` blocks and the users who block `user_id`: the newest `max_each` of
/// each direction.
pub fn newest_either_way(
    ctx: &mut Ctx<'_, '_>,
    user_id: &str,
    max_each: usize,
) -> FunctionResult<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (index, mine, other) in [
        ("by_blocker", "blockerId", "blockedId"),
        ("by_blocked", "blockedId", "blockerId"),
    ] {
        for doc in ctx
            .query(USER_BLOCKS, index)
            .eq(mine, user_id)
            .desc()
            .take(max_each)?
        {
            if let Some(o) = doc.get_path(other).and_then(Value::as_str) {
                out.insert(o.to_string());
            }
        }
    }
    Ok(out)
}

/// Counts a block or unblock that changes something against the caller's one limit for both.
fn consume_change(ctx: &mut Ctx<'_, '_>, config: &LinkedUpConfig, me: &str) -> FunctionResult<()> {
    check_and_consume(
        ctx,
        &config.rate_limits,
        me,
        RATE_LIMIT_ACTION,
        config.rate_limits.blocks,
    )
}

fn block(ctx: &mut Ctx<'_, '_>, config: &LinkedUpConfig, a: BlockArgs) -> FunctionResult<Block> {
    if let Some(reason) = &a.reason {
        check_text("reason", reason, 1, MAX_REASON_CHARS)?;
    }
    let me = current_user(ctx)?;
    if a.user_id == me.id {
        return Err(invalid_field("userId", "cannot block yourself"));
    }
    if live_user(ctx, &a.user_id)?.is_none() {
        return Err(ErrorCode::NotFound.err(format!("no user {}", a.user_id)));
    }
    if let Some(existing) = find(ctx, &me.id, &a.user_id)? {
        return decode(&existing);
    }
    let max = config.blocks.max_per_user.clamp(1, MAX_BLOCKS_PER_USER);
    let held = ctx
        .query(USER_BLOCKS, "by_blocker")
        .eq("blockerId", me.id.as_str())
        .take(max)?
        .len();
    if held >= max {
        return Err(ErrorCode::Conflict.err_with(
            format!("you already block {max} users, the most one may; unblock someone first"),
            obj! { "reason" => BLOCK_LIMIT, "max" => max as i64 },
        ));
    }
    consume_change(ctx, config, &me.id)?;

    let now = ctx.now_ms();
    let mut doc = fields(obj! {
        "blockerId" => me.id.as_str(),
        "blockedId" => a.user_id.as_str(),
        "createdAt" => now,
    });
    if let Some(reason) = &a.reason {
        doc.insert("reason".into(), reason.as_str().into());
    }
    let id = ctx.insert(USER_BLOCKS, Value::from(doc))?;
    let removed = connections::remove_between(ctx, &me.id, &a.user_id)?;
    let cancelled = cancel_pending(ctx, &me.id, &a.user_id)?;

    let mut metadata = fields(obj! {
        "blockId" => id.as_str(),
        "cancelledMatches" => Value::Array(cancelled.into_iter().map(Value::from).collect()),
    });
    if let Some(status) = removed {
        metadata.insert("removedConnection".into(), status.as_str().into());
    }
    audit::record(
        ctx,
        Some(&me.id),
        "user",
        &a.user_id,
        "users.blocked",
        Value::from(metadata),
    )?;
    let doc = ctx
        .get(USER_BLOCKS, &id)?
        .ok_or_else(|| ErrorCode::Internal.err("inserted block not readable"))?;
    decode(&doc)
}

fn unblock(ctx: &mut Ctx<'_, '_>, config: &LinkedUpConfig, a: UserIdArgs) -> FunctionResult<bool> {
    let me = current_user(ctx)?;
    if a.user_id == me.id {
        return Err(invalid_field("userId", "cannot unblock yourself"));
    }
    let Some(existing) = find(ctx, &me.id, &a.user_id)? else {
        return Ok(false);
    };
    consume_change(ctx, config, &me.id)?;
    let id = id_of(&existing)?;
    ctx.delete(USER_BLOCKS, &id)?;
    audit::record(
        ctx,
        Some(&me.id),
        "user",
        &a.user_id,
        "users.unblocked",
        obj! { "blockId" => id.as_str() },
    )?;
    Ok(true)
}

fn list(ctx: &mut Ctx<'_, '_>, a: ListBlockedArgs) -> FunctionResult<Page<Block>> {
    let page_size = limit_arg("numItems", a.num_items, DEFAULT_LIST_PAGE, MAX_LIST_PAGE)?;
    let me = current_user(ctx)?;
    let query = ctx
        .query(USER_BLOCKS, "by_blocker")
        .eq("blockerId", me.id.as_str())
        .desc();
    decoded_page(query, a.cursor.as_deref(), page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_limit_option_is_checked() {
        let with = |n| Options {
            max_blocks_per_user: n,
            ..Options::default()
        };
        assert_eq!(
            BlocksConfig::from_options(&with(None)).unwrap(),
            BlocksConfig::default()
        );
        assert_eq!(
            BlocksConfig::from_options(&with(Some(25)))
                .unwrap()
                .max_per_user,
            25
        );
        for bad in [0, MAX_BLOCKS_PER_USER + 1] {
            assert!(
                BlocksConfig::from_options(&with(Some(bad))).is_err(),
                "{bad}"
            );
        }
    }
}
