//! Connections between users: one document per unordered pair (`userA` < `userB`), requested
//! by one side and accepted or declined by the other.
//!
//! Transitions: none → pending (request); pending → accepted / declined (by the side that did
//! not request); declined → pending (a new request, by either side). Requesting a pending pair
//! again is a no-op for the requester and an acceptance for the other side (both want it);
//! requesting an accepted pair is CONFLICT.
//!
//! A block between the two (`blocks`) deletes their document and refuses requests either way.
//!
//! Every transition is audited (`connection.requested`, `connection.accepted`,
//! `connection.declined`; the block's own entry records a connection it ended), with both
//! users as `parties`, so each can read the other's side through `audit.query`.

use std::sync::Arc;

use linkedup_schema::api::blocks::BLOCKED;
use linkedup_schema::api::limits::MAX_CONNECTIONS_LISTED;
use linkedup_schema::api::{
    Connection, ConnectionIdArgs, ConnectionStatus, ListConnectionsArgs, UserIdArgs,
};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{CONNECTIONS, USERS};
use linkedup_schema::tables::CONNECTION_STATUSES;
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::{FunctionError, FunctionResult};
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;

use super::guards::{current_user, hidden, live_user};
use super::rate_limit::check_and_consume;
use super::{audit, audited, blocks, decode, fields, id_of, LinkedUpConfig};

fn status_validator() -> query_engine::schema::Validator {
    v::union(CONNECTION_STATUSES.iter().map(|s| v::literal(*s)))
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // connections.request: asks `userId` to connect (see the module comment for the states).
    // Returns the connection. Returns: UNAUTHORIZED, VALIDATION_ERROR (self), NOT_FOUND (no
    // such user, or one who blocks the caller: the same error, so a block is not revealed),
    // CONFLICT (already connected; or the caller blocks the user, `data.reason: "blocked"`),
    // RATE_LIMITED.
    let cfg = config.clone();
    f.mutation(
        "connections.request",
        Visibility::Public,
        v::object([("userId", v::id(USERS))]),
        v::any(),
        audited(config, "connections.request", move |ctx, a: UserIdArgs| {
            request(ctx, &cfg, a)
        }),
    );

    // connections.accept / connections.decline: the side that did not request answers a
    // pending request. Returns the connection. Returns: UNAUTHORIZED, VALIDATION_ERROR,
    // NOT_FOUND (no such connection, or not the caller's: the same error), FORBIDDEN (the
    // requester answering their own request), CONFLICT (not pending).
    for (name, status) in [
        ("connections.accept", ConnectionStatus::Accepted),
        ("connections.decline", ConnectionStatus::Declined),
    ] {
        f.mutation(
            name,
            Visibility::Public,
            v::object([("connectionId", v::id(CONNECTIONS))]),
            v::any(),
            audited(config, name, move |ctx, a: ConnectionIdArgs| {
                respond(ctx, &a.connection_id, status)
            }),
        );
    }

    // connections.list: the caller's connections, optionally of one status, newest first (at
    // most 200). Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.query(
        "connections.list",
        Visibility::Public,
        v::object([("status", v::optional(status_validator()))]),
        v::array(v::any()),
        audited(config, "connections.list", list),
    );
}

/// The pair in stored order.
fn ordered<'a>(x: &'a str, y: &'a str) -> (&'a str, &'a str) {
    if x <= y {
        (x, y)
    } else {
        (y, x)
    }
}

fn request(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: UserIdArgs,
) -> FunctionResult<Connection> {
    let me = current_user(ctx)?;
    if a.user_id == me.id {
        return Err(invalid_field("userId", "cannot connect to yourself"));
    }
    if live_user(ctx, &a.user_id)?.is_none() {
        return Err(no_such_user(&a.user_id));
    }
    // The caller's own block first: a caller who blocks the user is told so whether or not
    // the user blocks them too, which therefore stays hidden.
    if blocks::blocks(ctx, &me.id, &a.user_id)? {
        return Err(ErrorCode::Conflict.err_with(
            "you block this user: unblock them first",
            obj! { "reason" => BLOCKED },
        ));
    }
    if blocks::blocks(ctx, &a.user_id, &me.id)? {
        return Err(no_such_user(&a.user_id));
    }
    let (ua, ub) = ordered(&me.id, &a.user_id);
    let existing = ctx
        .query(CONNECTIONS, "by_pair")
        .eq("userA", ua)
        .eq("userB", ub)
        .first()?;
    let now = ctx.now_ms();
    let id = match existing {
        None => {
            check_and_consume(
                ctx,
                &config.rate_limits,
                &me.id,
                "connections.request",
                config.rate_limits.connections_request,
            )?;
            let id = ctx.insert(
                CONNECTIONS,
                obj! {
                    "userA" => ua, "userB" => ub, "requestedBy" => me.id.as_str(),
                    "status" => "pending", "createdAt" => now, "updatedAt" => now,
                },
            )?;
            audit_change(ctx, &me.id, &id, (ua, ub), "connection.requested", None)?;
            id
        }
        Some(doc) => {
            let c: Connection = decode(&doc)?;
            match c.status {
                ConnectionStatus::Accepted => {
                    return Err(ErrorCode::Conflict.err("already connected"));
                }
                ConnectionStatus::Pending if c.requested_by == me.id => c.id,
                ConnectionStatus::Pending => {
                    ctx.patch(
                        CONNECTIONS,
                        &c.id,
                        fields(obj! {
                            "status" => "accepted", "respondedAt" => now, "updatedAt" => now,
                        }),
                    )?;
                    let why = Some(("reason", "mutualRequest"));
                    audit_change(ctx, &me.id, &c.id, (ua, ub), "connection.accepted", why)?;
                    c.id
                }
                ConnectionStatus::Declined => {
                    check_and_consume(
                        ctx,
                        &config.rate_limits,
                        &me.id,
                        "connections.request",
                        config.rate_limits.connections_request,
                    )?;
                    ctx.patch(
                        CONNECTIONS,
                        &c.id,
                        fields(obj! {
                            "status" => "pending", "requestedBy" => me.id.as_str(),
                            "updatedAt" => now,
                        }),
                    )?;
                    let after = Some(("previousStatus", "declined"));
                    audit_change(ctx, &me.id, &c.id, (ua, ub), "connection.requested", after)?;
                    c.id
                }
            }
        }
    };
    get(ctx, &id)
}

/// Audits `action` on connection `id` of the pair `(ua, ub)` by `actor`, readable by both
/// (`audit::PARTIES`); `detail` adds one metadata field.
fn audit_change(
    ctx: &mut Ctx<'_, '_>,
    actor: &str,
    id: &str,
    (ua, ub): (&str, &str),
    action: &str,
    detail: Option<(&str, &str)>,
) -> FunctionResult<()> {
    let mut metadata = fields(obj! { audit::PARTIES => vec![Value::from(ua), Value::from(ub)] });
    if let Some((k, v)) = detail {
        metadata.insert(k.into(), v.into());
    }
    audit::record(
        ctx,
        Some(actor),
        "connection",
        id,
        action,
        Value::from(metadata),
    )
}

/// What a request to a user who does not exist, is being erased, or blocks the caller gets:
/// one error for all three, so that a block cannot be told from a missing user.
fn no_such_user(user_id: &str) -> FunctionError {
    ErrorCode::NotFound.err(format!("no user {user_id}"))
}

/// Deletes the connection document of `x` and `y`, whatever its state (a block ends it);
/// returns the state it had, `None` if they had none.
pub(crate) fn remove_between(
    ctx: &mut Ctx<'_, '_>,
    x: &str,
    y: &str,
) -> FunctionResult<Option<ConnectionStatus>> {
    let (ua, ub) = ordered(x, y);
    let Some(doc) = ctx
        .query(CONNECTIONS, "by_pair")
        .eq("userA", ua)
        .eq("userB", ub)
        .first()?
    else {
        return Ok(None);
    };
    let c: Connection = decode(&doc)?;
    ctx.delete(CONNECTIONS, &id_of(&doc)?)?;
    Ok(Some(c.status))
}

fn get(ctx: &mut Ctx<'_, '_>, id: &str) -> FunctionResult<Connection> {
    let doc = ctx.get(CONNECTIONS, id)?.ok_or_else(|| no_connection(id))?;
    decode(&doc)
}

fn no_connection(id: &str) -> FunctionError {
    ErrorCode::NotFound.err(format!("no connection {id}"))
}

fn respond(
    ctx: &mut Ctx<'_, '_>,
    connection_id: &str,
    status: ConnectionStatus,
) -> FunctionResult<Connection> {
    let me = current_user(ctx)?;
    let c = get(ctx, connection_id)?;
    if c.user_a != me.id && c.user_b != me.id {
        // A connection is its two users' business: to anyone else it is as good as missing.
        return Err(hidden(
            no_connection(connection_id),
            "not a party to this connection",
            "connection",
            connection_id,
        ));
    }
    if c.requested_by == me.id {
        return Err(ErrorCode::Forbidden.err_with(
            "only the addressee of a connection request may answer it",
            obj! { "resourceType" => "connection", "resourceId" => connection_id },
        ));
    }
    if c.status != ConnectionStatus::Pending {
        return Err(
            ErrorCode::Conflict.err(format!("the request is {}, not pending", c.status.as_str()))
        );
    }
    let now = ctx.now_ms();
    ctx.patch(
        CONNECTIONS,
        connection_id,
        fields(obj! { "status" => status.as_str(), "respondedAt" => now, "updatedAt" => now }),
    )?;
    let action = format!("connection.{}", status.as_str());
    let pair = (c.user_a.as_str(), c.user_b.as_str());
    audit_change(ctx, &me.id, connection_id, pair, &action, None)?;
    get(ctx, connection_id)
}

fn list(ctx: &mut Ctx<'_, '_>, a: ListConnectionsArgs) -> FunctionResult<Vec<Connection>> {
    let me = current_user(ctx)?;
    let mut out = Vec::new();
    // Each side's newest `MAX_CONNECTIONS_LISTED` (of the status, if given): the newest of
    // both sides together are among them.
    let sides = match a.status {
        Some(_) => [("by_user_a", "userA"), ("by_user_b", "userB")],
        None => [
            ("by_user_a_updated", "userA"),
            ("by_user_b_updated", "userB"),
        ],
    };
    for (index, field) in sides {
        let mut q = ctx.query(CONNECTIONS, index).eq(field, me.id.as_str());
        if let Some(s) = a.status {
            q = q.eq("status", s.as_str());
        }
        for doc in q.desc().take(MAX_CONNECTIONS_LISTED)? {
            out.push(decode::<Connection>(&doc)?);
        }
    }
    out.sort_by(|x, y| y.updated_at.cmp(&x.updated_at).then(y.id.cmp(&x.id)));
    out.truncate(MAX_CONNECTIONS_LISTED);
    Ok(out)
}
