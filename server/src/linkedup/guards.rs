//! Authentication and meeting access guards (seed §3), used by every LinkedUp function: who
//! is calling (`require_identity`), which user document that is (`current_user`), and whether
//! they may act on a meeting (`assert_meeting_access`).
//!
//! Access rules, decided here once:
//! - Roles are ordered: a host holds every participant right (the seed compared roles for
//!   equality, which refused hosts the participant actions).
//! - Access requires a participant record. Leaving a meeting is presence (`left`) and keeps the
//!   record, so a participant who left can still read the meeting and rejoin; removal by a host
//!   deletes the record and with it all access.
//! - Tenant isolation: a meeting of an organisation is refused to callers whose token is for
//!   another organisation (or none), even if a participant record exists.
//! - A caller who does not take part in a meeting (including one of another organisation)
//!   gets exactly the `NOT_FOUND` of a meeting id that names no meeting — same message, same
//!   data — and the reason goes only to the audit log (`hidden`). Ids are a counter with a
//!   public checksum, so any signed-in user could otherwise enumerate them and learn which
//!   meetings exist and which belong to other tenants (the seed answers `FORBIDDEN`; this
//!   deviates on purpose). A participant refused an action (not a host, or signed in for
//!   another organisation) knows the meeting exists and gets `FORBIDDEN`.

use linkedup_schema::api::erasure::ERASURE_PENDING;
use linkedup_schema::api::{Meeting, MeetingStatus, Participant, Role, User};
use linkedup_schema::tables::names::{MEETINGS, MEETING_PARTICIPANTS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::{FunctionError, FunctionResult};
use query_engine::functions::FunctionKind;
use query_engine::obj;
use query_engine::value::Value;

use super::{decode, fields};

/// `lastSeenAt` is refreshed at most this often, so presence costs one write a minute.
pub const LAST_SEEN_RESOLUTION_MS: i64 = 60_000;

/// The verified caller, as the seed's `AuthIdentity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthIdentity {
    /// The token subject.
    pub user_id: String,
    /// The WorkOS user id (the subject).
    pub workos_user_id: String,
    pub org_id: Option<String>,
    pub org_role: Option<String>,
    pub email: Option<String>,
}

impl AuthIdentity {
    /// Whether the token makes the caller an administrator of their organisation.
    pub fn is_org_admin(&self) -> bool {
        self.org_id.is_some() && self.org_role.as_deref() == Some("admin")
    }
}

/// The caller's verified identity. Returns: UNAUTHORIZED when the call carries none.
pub fn require_identity(ctx: &Ctx<'_, '_>) -> FunctionResult<AuthIdentity> {
    let id = ctx
        .auth()
        .ok_or_else(|| ErrorCode::Unauthorized.err("authentication required"))?;
    Ok(AuthIdentity {
        user_id: id.subject.clone(),
        workos_user_id: id.subject.clone(),
        org_id: id.org_id.clone(),
        org_role: id.org_role.clone(),
        email: id.email.clone(),
    })
}

/// The caller's user document and identity.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub id: String,
    pub user: User,
    pub identity: AuthIdentity,
}

/// Resolves the caller's `users` document by WorkOS id.
///
/// In a query (which cannot write) a caller without a document gets UNAUTHORIZED ("call
/// users.ensure"). In a mutation the document is created on first call, and afterwards kept
/// linked to the token: email, organisation and role follow the latest verified token, and
/// `lastSeenAt` is refreshed when older than a minute. Nothing is written when nothing
/// changed, so repeated calls do not conflict with each other.
/// Returns: UNAUTHORIZED.
pub fn current_user(ctx: &mut Ctx<'_, '_>) -> FunctionResult<CurrentUser> {
    current_user_named(ctx, None)
}

/// `current_user`, with the display name to give a user document created by this call.
pub fn current_user_named(
    ctx: &mut Ctx<'_, '_>,
    display_name: Option<&str>,
) -> FunctionResult<CurrentUser> {
    let identity = require_identity(ctx)?;
    let existing = ctx
        .query(USERS, "by_workos_id")
        .eq("workosUserId", identity.workos_user_id.as_str())
        .first()?;
    if let Some(doc) = &existing {
        refuse_if_erasing(doc)?;
    }
    let writable = ctx.kind() == FunctionKind::Mutation;
    let now = ctx.now_ms();
    let user: User = match existing {
        Some(doc) if !writable => decode(&doc)?,
        Some(doc) => link(ctx, doc, &identity, now)?,
        None if !writable => {
            return Err(ErrorCode::Unauthorized
                .err("no user for this identity yet: call users.ensure first"))
        }
        None => {
            let email = identity.email.clone().unwrap_or_default();
            let mut new = fields(obj! {
                "workosUserId" => identity.workos_user_id.as_str(),
                "email" => email,
                "isActive" => true,
                "lastSeenAt" => now,
                "createdAt" => now,
                "updatedAt" => now,
            });
            for (k, v) in [
                ("orgId", identity.org_id.as_deref()),
                ("orgRole", identity.org_role.as_deref()),
                ("displayName", display_name),
            ] {
                if let Some(v) = v {
                    new.insert(k.into(), v.into());
                }
            }
            let id = ctx.insert(USERS, Value::from(new))?;
            let doc = ctx
                .get(USERS, &id)?
                .ok_or_else(|| ErrorCode::Internal.err("inserted user not readable"))?;
            decode(&doc)?
        }
    };
    if !user.is_active {
        return Err(ErrorCode::Forbidden.err("this user is deactivated"));
    }
    Ok(CurrentUser {
        id: user.id.clone(),
        user,
        identity,
    })
}

/// The caller's `users` document as stored, whatever its state, without creating or linking
/// it: for the erasure functions, which must see an account that is being erased.
/// Returns: UNAUTHORIZED (no identity).
pub fn account_of_caller(ctx: &mut Ctx<'_, '_>) -> FunctionResult<Option<User>> {
    let identity = require_identity(ctx)?;
    ctx.query(USERS, "by_workos_id")
        .eq("workosUserId", identity.workos_user_id.as_str())
        .first()?
        .map(|d| decode(&d))
        .transpose()
}

/// An account whose erasure was requested is locked: nothing may add to or change what is
/// being erased. Once erased, the account no longer matches its former token subject, so that
/// subject starts afresh (`users.ensure` creates a new, empty account).
/// Returns: CONFLICT with `data = {reason: "erasurePending"}`.
fn refuse_if_erasing(doc: &Value) -> FunctionResult<()> {
    if doc.get_path("erasureRequestedAt").is_some() {
        return Err(ErrorCode::Conflict.err_with(
            "this account is being erased; once that is done, signing in again starts a new, \
             empty account",
            obj! { "reason" => ERASURE_PENDING },
        ));
    }
    Ok(())
}

/// The user `user_id` as other users may refer to it (invite, connect): `None` if there is no
/// such user or their account is being, or has been, erased.
pub fn live_user(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<Option<User>> {
    let user: Option<User> = ctx.get(USERS, user_id)?.map(|d| decode(&d)).transpose()?;
    Ok(user.filter(|u| u.erasure_requested_at.is_none() && u.erased_at.is_none()))
}

/// Whether `user_id` names a user whose erasure was requested (or is done); false for a
/// string that is not a users id or names no user.
pub fn being_erased(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<bool> {
    if ctx.parse_id(USERS, user_id).is_err() {
        return Ok(false);
    }
    Ok(ctx
        .get(USERS, user_id)?
        .is_some_and(|d| erasure_requested(&d)))
}

/// Whether the stored `users` document is of an account whose erasure was requested (or is
/// done).
pub(crate) fn erasure_requested(user: &Value) -> bool {
    user.get_path("erasureRequestedAt").is_some() || user.get_path("erasedAt").is_some()
}

/// Brings an existing user document in line with the token; writes only on change. Returns
/// the user as it now stands (decoded once when nothing changed).
fn link(
    ctx: &mut Ctx<'_, '_>,
    doc: Value,
    identity: &AuthIdentity,
    now: i64,
) -> FunctionResult<User> {
    let user: User = decode(&doc)?;
    let mut changes = fields(obj! {});
    if let Some(email) = &identity.email {
        if *email != user.email {
            changes.insert("email".into(), email.as_str().into());
        }
    }
    // Absent org or role in the token means the session is not org-scoped any more.
    for (field, token, stored) in [
        ("orgId", &identity.org_id, &user.org_id),
        ("orgRole", &identity.org_role, &user.org_role),
    ] {
        if token != stored {
            changes.insert(
                field.into(),
                token.as_deref().map(Value::from).unwrap_or(Value::Null),
            );
        }
    }
    let stale = user
        .last_seen_at
        .is_none_or(|t| now.saturating_sub(t) >= LAST_SEEN_RESOLUTION_MS);
    if changes.is_empty() && !stale {
        return Ok(user);
    }
    changes.insert("lastSeenAt".into(), now.into());
    if changes.len() > 1 {
        changes.insert("updatedAt".into(), now.into());
    }
    // Null means "remove the field": rebuild the document without it.
    if changes.values().any(|v| matches!(v, Value::Null)) {
        let mut whole = doc.as_object().cloned().unwrap_or_default();
        whole.remove("_id");
        whole.remove("_creationTime");
        for (k, v) in changes {
            if matches!(v, Value::Null) {
                whole.remove(&k);
            } else {
                whole.insert(k, v);
            }
        }
        ctx.replace(USERS, &user.id, Value::from(whole))?;
    } else {
        ctx.patch(USERS, &user.id, changes)?;
    }
    let doc = ctx
        .get(USERS, &user.id)?
        .ok_or_else(|| ErrorCode::Internal.err("user vanished"))?;
    decode(&doc)
}

/// What a meeting guard established.
#[derive(Clone, Debug)]
pub struct MeetingAccess {
    pub user: CurrentUser,
    pub meeting: Meeting,
    pub participant: Participant,
}

/// Checks that the caller may act on `meeting_id` with at least `required` rights.
/// Returns: UNAUTHORIZED (no identity or user), NOT_FOUND (no such meeting, or not a
/// participant: the same error, see the module comment), FORBIDDEN (a participant lacking host
/// rights, or signed in for another organisation than the meeting's). Denials carry
/// `data = {resourceType: "meeting", resourceId}` for the audit log.
pub fn assert_meeting_access(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    required: Role,
) -> FunctionResult<MeetingAccess> {
    access_through_meeting(ctx, meeting_id, required, || meeting_not_found(meeting_id))
}

/// `assert_meeting_access` for a resource reached through its meeting (a prompt): a caller
/// who does not take part in the meeting, or a meeting that is gone, gets `missing()` — the
/// resource's own NOT_FOUND, so its id says nothing about the meeting either.
pub fn access_through_meeting(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    required: Role,
    missing: impl Fn() -> FunctionError,
) -> FunctionResult<MeetingAccess> {
    let user = current_user(ctx)?;
    let meeting: Meeting = match ctx.get(MEETINGS, meeting_id)? {
        Some(doc) => decode(&doc)?,
        None => return Err(missing()),
    };
    let denied = |why: &str| format!("{why} (meeting {meeting_id})");
    let Some(participant) = find_participant(ctx, meeting_id, &user.id)? else {
        let why = if in_tenant(&user, &meeting) {
            "not a participant of this meeting"
        } else {
            "the meeting belongs to another organisation"
        };
        return Err(hidden(missing(), denied(why), "meeting", meeting_id));
    };
    let forbidden = |why: &str| {
        ErrorCode::Forbidden.err_with(
            denied(why),
            obj! { "resourceType" => "meeting", "resourceId" => meeting_id },
        )
    };
    if !in_tenant(&user, &meeting) {
        return Err(forbidden("the meeting belongs to another organisation"));
    }
    if !participant.role.satisfies(required) {
        return Err(forbidden("this action needs the host role"));
    }
    Ok(MeetingAccess {
        user,
        meeting,
        participant,
    })
}

/// Where a `hidden` refusal carries the error its caller is shown.
const SEEN_AS: &str = "seenAs";

/// A refusal of a private resource (a meeting the caller takes no part in, another user's
/// insight or connection) that its caller cannot tell from `missing`, the error for an id
/// naming nothing: ids are guessable, so "exists but not yours" would tell which exist and
/// whose they are. It is a FORBIDDEN carrying `why` and `{resourceType, resourceId}`, which
/// `audited` records as a denial and then replaces by `missing` (`seen_by_caller`).
pub(crate) fn hidden(
    missing: FunctionError,
    why: impl Into<String>,
    resource_type: &str,
    resource_id: &str,
) -> FunctionError {
    ErrorCode::Forbidden.err_with(
        why,
        obj! {
            "resourceType" => resource_type,
            "resourceId" => resource_id,
            SEEN_AS => obj! {
                "code" => missing.code,
                "message" => missing.message,
                "data" => missing.data,
            },
        },
    )
}

/// Whether `error` is a `hidden` refusal.
pub(crate) fn is_hidden(error: &FunctionError) -> bool {
    error.data.get_path(SEEN_AS).is_some()
}

/// What the caller is shown of `error`: the `missing` error of a `hidden` refusal, else
/// `error` itself.
pub(crate) fn seen_by_caller(error: FunctionError) -> FunctionError {
    let Some(seen) = error.data.get_path(SEEN_AS) else {
        return error;
    };
    let text = |k: &str| seen.get_path(k).and_then(Value::as_str).map(String::from);
    match (text("code"), text("message")) {
        (Some(code), Some(message)) => FunctionError::new(code, message)
            .with_data(seen.get_path("data").cloned().unwrap_or(Value::Null)),
        _ => error,
    }
}

/// Whether `user` may still see what belongs to `meeting_id`: what `assert_meeting_access`
/// lets through with participant rights (the meeting exists, is not another organisation's,
/// and the user is its participant), as a yes or no for filtering a list.
pub fn may_see_meeting(
    ctx: &mut Ctx<'_, '_>,
    user: &CurrentUser,
    meeting_id: &str,
) -> FunctionResult<bool> {
    let Some(doc) = ctx.get(MEETINGS, meeting_id)? else {
        return Ok(false);
    };
    let meeting: Meeting = decode(&doc)?;
    if !in_tenant(user, &meeting) {
        return Ok(false);
    }
    Ok(find_participant(ctx, meeting_id, &user.id)?.is_some())
}

/// Whether `meeting` is open to `user`'s organisation: a meeting of an organisation only to
/// its members (tenant isolation); one of none to everyone.
pub fn in_tenant(user: &CurrentUser, meeting: &Meeting) -> bool {
    meeting.org_id.is_none() || meeting.org_id == user.identity.org_id
}

/// The meeting document. Returns: NOT_FOUND.
pub fn get_meeting(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<Meeting> {
    let doc = ctx
        .get(MEETINGS, meeting_id)?
        .ok_or_else(|| meeting_not_found(meeting_id))?;
    decode(&doc)
}

/// The error for a meeting id naming no meeting, and for one the caller takes no part in.
fn meeting_not_found(meeting_id: &str) -> FunctionError {
    ErrorCode::NotFound.err(format!("no meeting {meeting_id}"))
}

/// MEETING_NOT_ACTIVE (`data.state`) unless `meeting` is active: what only happens during a
/// meeting (chat, joining, call tokens) refuses a scheduled or finished one.
pub fn require_active(meeting: &Meeting) -> FunctionResult<()> {
    if meeting.state == MeetingStatus::Active {
        return Ok(());
    }
    Err(ErrorCode::MeetingNotActive.err_with(
        format!("the meeting is {}", meeting.state.as_str()),
        obj! { "state" => meeting.state.as_str() },
    ))
}

/// The participant record of `user_id` in `meeting_id`, if any.
pub fn find_participant(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    user_id: &str,
) -> FunctionResult<Option<Participant>> {
    let doc = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting_and_user")
        .eq("meetingId", meeting_id)
        .eq("userId", user_id)
        .first()?;
    doc.map(|d| decode(&d)).transpose()
}
