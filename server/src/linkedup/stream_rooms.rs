//! A meeting's Stream room (seed §6): its video call, created through the configured provider
//! (`crate::stream`) and remembered as `meetings.streamRoomId`, which `meetings.get` shows to
//! the meeting's participants.
//!
//! `meetings.createStreamRoom` (hosts) and the job `meetings.start` schedules both get or
//! create the room; the job `meetings.end` schedules ends its call (or, when the meeting ended
//! while its room was being created, the job storing the room does). Idempotent at every
//! step: the call id is the meeting id, so the provider
//! finds the same call however often it is asked; a stored room id is returned without asking
//! it; and the id is stored by a mutation that re-reads the meeting, so of two racing calls
//! one stores it, the other returns what was stored. An action cannot hold a transaction open
//! across the network call, hence read (plan), call, then store.
//!
//! The call's members follow the meeting's participants (seed §3, "revoke or adjust streams
//! immediately"): adding, removing a participant or changing their role in an open meeting
//! with a room schedules `SYNC_MEMBER` for that user in the same mutation
//! (`schedule_member_sync`). The job reads what the user's membership should be now (host,
//! member, or removed: blocked and no longer a member), applies it through the provider, then
//! re-reads: if it changed meanwhile (so a newer job's request may have reached Stream before
//! this one's), it schedules itself again, so the call ends up as the participants are however
//! the jobs interleave. Participants changed while the room was being created are caught by
//! the mutation storing it.

use std::sync::Arc;

use linkedup_schema::api::{Meeting, MeetingIdArgs, Participant, Role, StreamRoom, User};
use linkedup_schema::tables::names::{FORMER_PARTICIPANTS, MEETINGS, MEETING_PARTICIPANTS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::ActionCtx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::guards::{assert_meeting_access, being_erased, find_participant, get_meeting};
use super::meetings::list_participants;
use super::{audit, audited, decode, encode, fields, LinkedUpConfig};
use crate::stream::provider::MAX_ROOM_MEMBERS;
use crate::stream::{MemberChange, RoomMember, RoomProvider, RoomRequest, StreamError};

pub use linkedup_schema::api::fns::MEETINGS_CREATE_STREAM_ROOM as CREATE;
/// The job `meetings.start` schedules (internal action, no caller): creates the room.
pub const PROVISION: &str = "streamRooms.provision";
/// What a room needs, read without an access check (for `PROVISION`).
const PLAN: &str = "streamRooms.plan";
/// The same after checking that the caller hosts the meeting (for `CREATE`).
const PLAN_AS_HOST: &str = "streamRooms.planAsHost";
const STORE: &str = "streamRooms.store";
/// The job `meetings.end` schedules for a meeting with a room (internal action, no caller):
/// ends the call for everyone still in it.
pub const END_CALL: &str = "streamRooms.endCall";
/// The job a change of participants schedules for an open meeting with a room (internal
/// action, no caller): brings one user's call membership in line with their participation.
pub const SYNC_MEMBER: &str = "streamRooms.syncMember";
/// What `SYNC_MEMBER` should make of the user's membership.
const MEMBER_PLAN: &str = "streamRooms.memberPlan";
/// After `SYNC_MEMBER` applied a membership: schedules it again if the membership changed.
const MEMBER_SYNCED: &str = "streamRooms.memberSynced";
/// `SYNC_MEMBER` gave up: the audit entry.
const MEMBER_SYNC_FAILED: &str = "streamRooms.memberSyncFailed";
const RETRY: &str = "streamRooms.retryLater";
/// When a room job fails with a transient `PROVIDER_ERROR` (Stream overloaded, failing or
/// unreachable), it runs again after each of these waits in turn, then gives up (a host can
/// still call `meetings.createStreamRoom`; an unended call ends when its participants leave).
/// When `SYNC_MEMBER` gives up, or Stream refuses it, it is logged and audited
/// (`meeting.stream_member_sync_failed`).
const RETRY_DELAYS_MS: [i64; 2] = [30_000, 300_000];
const RETRIED_JOBS: [&str; 3] = [PROVISION, END_CALL, SYNC_MEMBER];

/// A room's creation, as read from the meeting: either the room it already has, or what to
/// create it with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Plan {
    meeting_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room_id: Option<String>,
    organizer_id: String,
    title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org_id: Option<String>,
    members: Vec<PlanMember>,
    /// The host asking, for the audit log; absent for the scheduled job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanMember {
    user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    host: bool,
}

impl Plan {
    fn request(&self) -> RoomRequest {
        RoomRequest {
            meeting_id: self.meeting_id.clone(),
            created_by: self.organizer_id.clone(),
            members: self
                .members
                .iter()
                .map(|m| RoomMember {
                    user_id: m.user_id.clone(),
                    name: m.name.clone(),
                    host: m.host,
                })
                .collect(),
            title: self.title.clone(),
            org_id: self.org_id.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreArgs {
    meeting_id: String,
    room_id: String,
    actor_id: Option<String>,
    /// Whom the room was created with (the plan's members).
    #[serde(default)]
    members: Vec<CreatedMember>,
}

/// One member the room was created with, as `STORE` gets it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatedMember {
    user_id: String,
    host: bool,
}

/// What a user's membership of a meeting's call should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum CallMembership {
    /// A participant with the host role: a member with the host call role.
    Host,
    /// Another participant: a member with the default member role.
    Member,
    /// Not a participant (or one whose account is being erased): blocked from the call and
    /// not a member.
    Removed,
}

impl CallMembership {
    fn as_str(self) -> &'static str {
        match self {
            CallMembership::Host => "host",
            CallMembership::Member => "member",
            CallMembership::Removed => "removed",
        }
    }

    fn of(participant: Option<&Participant>) -> Self {
        match participant {
            Some(p) if p.role == Role::Host => CallMembership::Host,
            Some(_) => CallMembership::Member,
            None => CallMembership::Removed,
        }
    }
}

/// What `SYNC_MEMBER` is to do, as read from the meeting.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberPlan {
    /// Absent: nothing (the meeting has no room, or is over and its call ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    membership: Option<CallMembership>,
    /// The user's display name, for Stream's user record (a participant only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The user was removed from the meeting before, so may be blocked from its call.
    #[serde(default)]
    unblock: bool,
}

/// The arguments of `SYNC_MEMBER`, and of `MEMBER_PLAN` (without `attempt`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberJobArgs {
    meeting_id: String,
    user_id: String,
    /// Retries so far (absent: the first attempt).
    attempt: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyncedArgs {
    meeting_id: String,
    user_id: String,
    membership: CallMembership,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyncFailedArgs {
    meeting_id: String,
    user_id: String,
    membership: CallMembership,
    error: String,
    status: i64,
    attempts: i64,
}

/// The arguments of a room job.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobArgs {
    meeting_id: String,
    /// Retries so far (absent: the first attempt).
    attempt: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetryArgs {
    job: String,
    meeting_id: String,
    /// `SYNC_MEMBER`'s user.
    user_id: Option<String>,
    attempt: i64,
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    let room_result = || v::object([("roomId", v::string())]);

    // meetings.createStreamRoom (action): host only. Returns {roomId}: the meeting's room,
    // created through the provider the first time. Returns: UNAUTHORIZED, VALIDATION_ERROR,
    // NOT_FOUND, FORBIDDEN (not a host), CONFLICT (a concluded or cancelled meeting without a
    // room), PROVIDER_ERROR (Stream failed; nothing stored, a retry may succeed).
    let provider = config.stream.provider.clone();
    f.action(
        CREATE,
        Visibility::Public,
        v::object([("meetingId", v::id(MEETINGS))]),
        room_result(),
        move |ctx, a: MeetingIdArgs| {
            let provider = provider.clone();
            async move {
                let plan = ctx
                    .run_query(PLAN_AS_HOST, obj! { "meetingId" => a.meeting_id })
                    .await?;
                let room_id = provision(&ctx, &provider, decode(&plan)?).await?;
                Ok(StreamRoom { room_id })
            }
        },
    );

    let job_args = || {
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("attempt", v::optional(v::int64())),
        ])
    };
    // streamRooms.provision (internal action, scheduled by meetings.start): as above without
    // the host check; on PROVIDER_ERROR schedules itself again (RETRY_DELAYS_MS).
    let provider = config.stream.provider.clone();
    f.action(
        PROVISION,
        Visibility::Internal,
        job_args(),
        room_result(),
        move |ctx, a: JobArgs| {
            let provider = provider.clone();
            async move {
                let plan = ctx
                    .run_query(PLAN, obj! { "meetingId" => a.meeting_id.as_str() })
                    .await?;
                let created = provision(&ctx, &provider, decode(&plan)?)
                    .await
                    .map(|room_id| StreamRoom { room_id });
                retry_on_provider_error(&ctx, PROVISION, &a, created).await
            }
        },
    );

    // streamRooms.endCall (internal action, scheduled by meetings.end for a meeting with a
    // room): ends the call for everyone still in it; on PROVIDER_ERROR schedules itself again.
    let provider = config.stream.provider.clone();
    f.action(
        END_CALL,
        Visibility::Internal,
        job_args(),
        v::null(),
        move |ctx, a: JobArgs| {
            let provider = provider.clone();
            async move {
                let ended = provider.end_call(&a.meeting_id).await.map_err(|e| {
                    tracing::warn!(meeting = %a.meeting_id, error = %e, "cannot end the Stream call");
                    e.to_function_error()
                });
                retry_on_provider_error(&ctx, END_CALL, &a, ended).await
            }
        },
    );

    // streamRooms.syncMember (internal action, scheduled by a change of participants in an open
    // meeting with a room): makes the user's call membership what their participation says
    // (MEMBER_PLAN), then has MEMBER_SYNCED check that it still does. A transient provider
    // failure schedules it again (RETRY_DELAYS_MS); a permanent one, or the last retry's, is
    // logged and audited (MEMBER_SYNC_FAILED).
    let provider = config.stream.provider.clone();
    f.action(
        SYNC_MEMBER,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::id(USERS)),
            ("attempt", v::optional(v::int64())),
        ]),
        v::null(),
        move |ctx, a: MemberJobArgs| {
            let provider = provider.clone();
            async move { sync_member(&ctx, &provider, &a).await }
        },
    );
    f.query(
        MEMBER_PLAN,
        Visibility::Internal,
        v::object([("meetingId", v::id(MEETINGS)), ("userId", v::id(USERS))]),
        v::any(),
        |ctx, a: MemberJobArgs| {
            member_plan(ctx, &a.meeting_id, &a.user_id).and_then(|p| encode(&p))
        },
    );
    let membership = || {
        v::union(
            [
                CallMembership::Host,
                CallMembership::Member,
                CallMembership::Removed,
            ]
            .map(|m| v::literal(m.as_str())),
        )
    };
    f.mutation(
        MEMBER_SYNCED,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::id(USERS)),
            ("membership", membership()),
        ]),
        v::boolean(),
        |ctx, a: SyncedArgs| {
            let meeting = get_meeting(ctx, &a.meeting_id)?;
            let now = call_membership(ctx, &meeting, &a.user_id)?;
            if now.is_none_or(|m| m == a.membership) {
                return Ok(false);
            }
            ctx.schedule_after(
                0,
                SYNC_MEMBER,
                obj! { "meetingId" => a.meeting_id, "userId" => a.user_id },
            )?;
            Ok(true)
        },
    );
    f.mutation(
        MEMBER_SYNC_FAILED,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::id(USERS)),
            ("membership", membership()),
            ("error", v::string()),
            ("status", v::int64()),
            ("attempts", v::int64()),
        ]),
        v::null(),
        |ctx, a: SyncFailedArgs| {
            let org = match ctx.get(MEETINGS, &a.meeting_id)? {
                Some(doc) => decode::<Meeting>(&doc)?.org_id,
                None => None,
            };
            audit::record_in_org(
                ctx,
                org.as_deref(),
                None,
                "meeting",
                &a.meeting_id,
                "meeting.stream_member_sync_failed",
                obj! {
                    "userId" => a.user_id,
                    "membership" => a.membership.as_str(),
                    "error" => a.error,
                    "status" => a.status,
                    "attempts" => a.attempts,
                },
            )
        },
    );

    f.query(
        PLAN_AS_HOST,
        Visibility::Internal,
        v::object([("meetingId", v::id(MEETINGS))]),
        v::any(),
        // Denials are recorded under the public function's name.
        audited(config, CREATE, |ctx, a: MeetingIdArgs| {
            let access = assert_meeting_access(ctx, &a.meeting_id, Role::Host)?;
            plan(ctx, access.meeting, Some(access.user.id)).and_then(|p| encode(&p))
        }),
    );
    f.query(
        PLAN,
        Visibility::Internal,
        v::object([("meetingId", v::id(MEETINGS))]),
        v::any(),
        |ctx, a: MeetingIdArgs| {
            let meeting = get_meeting(ctx, &a.meeting_id)?;
            plan(ctx, meeting, None).and_then(|p| encode(&p))
        },
    );
    f.mutation(
        STORE,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("roomId", v::string()),
            ("actorId", v::optional(v::id(USERS))),
            (
                "members",
                v::optional(v::array(v::object([
                    ("userId", v::id(USERS)),
                    ("host", v::boolean()),
                ]))),
            ),
        ]),
        v::string(),
        store,
    );
    f.mutation(
        RETRY,
        Visibility::Internal,
        v::object([
            ("job", v::string()),
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::optional(v::id(USERS))),
            ("attempt", v::int64()),
        ]),
        v::null(),
        |ctx, a: RetryArgs| {
            let job = RETRIED_JOBS
                .into_iter()
                .find(|j| *j == a.job)
                .ok_or_else(|| ErrorCode::ValidationError.err("job: not a room job"))?;
            let delay = usize::try_from(a.attempt - 1)
                .ok()
                .and_then(|i| RETRY_DELAYS_MS.get(i))
                .ok_or_else(|| ErrorCode::ValidationError.err("attempt: no such retry"))?;
            let mut args = fields(obj! { "meetingId" => a.meeting_id, "attempt" => a.attempt });
            match a.user_id {
                Some(user) if job == SYNC_MEMBER => {
                    args.insert("userId".into(), user.into());
                }
                None if job != SYNC_MEMBER => {}
                _ => {
                    return Err(ErrorCode::ValidationError
                        .err("userId: given for, and only for, a member job"))
                }
            }
            ctx.schedule_after(*delay, job, Value::from(args))?;
            Ok(())
        },
    );
}

/// `result` of room job `job`; when it is a transient `PROVIDER_ERROR` (Stream overloaded,
/// failing or unreachable; a refusal would only be repeated) and retries remain, the job is
/// first scheduled to run again after the next of `RETRY_DELAYS_MS`.
async fn retry_on_provider_error<T>(
    ctx: &ActionCtx,
    job: &str,
    a: &JobArgs,
    result: FunctionResult<T>,
) -> FunctionResult<T> {
    if let Err(e) = &result {
        let transient = e.data.get_path("transient") == Some(&Value::Bool(true));
        if e.code == ErrorCode::ProviderError.as_str() && transient {
            schedule_retry(ctx, job, &a.meeting_id, None, a.attempt.unwrap_or(0)).await?;
        }
    }
    result
}

/// Schedules room job `job` to run again after the next of `RETRY_DELAYS_MS`, if `retries`
/// (so far) leaves one. Returns whether it did.
async fn schedule_retry(
    ctx: &ActionCtx,
    job: &str,
    meeting_id: &str,
    user_id: Option<&str>,
    retries: i64,
) -> FunctionResult<bool> {
    if !(0..RETRY_DELAYS_MS.len() as i64).contains(&retries) {
        return Ok(false);
    }
    let mut args =
        fields(obj! { "job" => job, "meetingId" => meeting_id, "attempt" => retries + 1 });
    if let Some(user) = user_id {
        args.insert("userId".into(), user.into());
    }
    ctx.run_mutation(RETRY, Value::from(args)).await?;
    Ok(true)
}

/// Schedules `SYNC_MEMBER` for `user_id` when `meeting` has a room and is open (the call of a
/// meeting that is over has ended; one without a room gets the participants when it is
/// created). For the mutations that change participants, in the same transaction.
pub(crate) fn schedule_member_sync(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    user_id: &str,
) -> FunctionResult<()> {
    if meeting.stream_room_id.is_some() && meeting.state.is_open() {
        ctx.schedule_after(
            0,
            SYNC_MEMBER,
            obj! { "meetingId" => meeting.id.as_str(), "userId" => user_id },
        )?;
    }
    Ok(())
}

/// `SYNC_MEMBER`: read the membership, apply it, then check it still holds.
async fn sync_member(
    ctx: &ActionCtx,
    provider: &RoomProvider,
    a: &MemberJobArgs,
) -> FunctionResult<()> {
    let plan = ctx
        .run_query(
            MEMBER_PLAN,
            obj! { "meetingId" => a.meeting_id.as_str(), "userId" => a.user_id.as_str() },
        )
        .await?;
    let plan: MemberPlan = decode(&plan)?;
    let Some(membership) = plan.membership else {
        return Ok(());
    };
    let change = match membership {
        CallMembership::Removed => MemberChange::Remove {
            user_id: a.user_id.clone(),
        },
        CallMembership::Host | CallMembership::Member => MemberChange::Set {
            member: RoomMember {
                user_id: a.user_id.clone(),
                name: plan.name,
                host: membership == CallMembership::Host,
            },
            unblock: plan.unblock,
        },
    };
    match provider.change_member(&a.meeting_id, &change).await {
        Ok(()) => {
            ctx.run_mutation(
                MEMBER_SYNCED,
                obj! {
                    "meetingId" => a.meeting_id.as_str(),
                    "userId" => a.user_id.as_str(),
                    "membership" => membership.as_str(),
                },
            )
            .await?;
            Ok(())
        }
        Err(e) => Err(member_sync_failed(ctx, a, membership, &e).await?),
    }
}

/// `SYNC_MEMBER` failed with `e`: retried later if transient and retries remain, else logged
/// and audited. Returns the job's error.
async fn member_sync_failed(
    ctx: &ActionCtx,
    a: &MemberJobArgs,
    membership: CallMembership,
    e: &StreamError,
) -> FunctionResult<query_engine::error::FunctionError> {
    let error = e.to_function_error();
    let retries = a.attempt.unwrap_or(0);
    if e.is_transient()
        && schedule_retry(ctx, SYNC_MEMBER, &a.meeting_id, Some(&a.user_id), retries).await?
    {
        tracing::warn!(meeting = %a.meeting_id, user = %a.user_id,
            membership = membership.as_str(), attempt = retries + 1, error = %e,
            "cannot update the Stream call's members; retrying later");
        return Ok(error);
    }
    tracing::error!(meeting = %a.meeting_id, user = %a.user_id,
        membership = membership.as_str(), attempts = retries + 1, error = %e,
        "gave up updating the Stream call's members");
    let status = error
        .data
        .get_path("status")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    ctx.run_mutation(
        MEMBER_SYNC_FAILED,
        obj! {
            "meetingId" => a.meeting_id.as_str(),
            "userId" => a.user_id.as_str(),
            "membership" => membership.as_str(),
            "error" => error.message.as_str(),
            "status" => status,
            "attempts" => retries + 1,
        },
    )
    .await?;
    Ok(error)
}

/// What `user_id`'s membership of `meeting`'s call should be, if the meeting has a room and
/// is open (else none: nothing to keep in line). A user whose account is being erased keeps
/// their participant record (membership is kept, seed §20) but not their place in the call.
fn call_membership(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    user_id: &str,
) -> FunctionResult<Option<CallMembership>> {
    if meeting.stream_room_id.is_none() || !meeting.state.is_open() {
        return Ok(None);
    }
    if being_erased(ctx, user_id)? {
        return Ok(Some(CallMembership::Removed));
    }
    let participant = find_participant(ctx, &meeting.id, user_id)?;
    Ok(Some(CallMembership::of(participant.as_ref())))
}

/// `MEMBER_PLAN`: the membership with what applying it needs.
fn member_plan(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    user_id: &str,
) -> FunctionResult<MemberPlan> {
    let meeting = get_meeting(ctx, meeting_id)?;
    let membership = call_membership(ctx, &meeting, user_id)?;
    let mut plan = MemberPlan {
        membership,
        name: None,
        unblock: false,
    };
    if matches!(
        membership,
        Some(CallMembership::Host | CallMembership::Member)
    ) {
        plan.name = match ctx.get(USERS, user_id)? {
            Some(doc) => decode::<User>(&doc)?.display_name,
            None => None,
        };
        plan.unblock = ctx
            .query(FORMER_PARTICIPANTS, "by_user")
            .eq("userId", user_id)
            .eq("meetingId", meeting_id)
            .first()?
            .is_some();
    }
    Ok(plan)
}

/// Returns the plan's room if it has one; otherwise creates it through `provider` and stores
/// it (or what a concurrent call stored first).
async fn provision(ctx: &ActionCtx, provider: &RoomProvider, plan: Plan) -> FunctionResult<String> {
    if let Some(room_id) = plan.room_id {
        return Ok(room_id);
    }
    let room_id = provider.create_room(&plan.request()).await.map_err(|e| {
        tracing::warn!(meeting = %plan.meeting_id, error = %e, "cannot create the Stream room");
        e.to_function_error()
    })?;
    let members: Vec<CreatedMember> = plan
        .members
        .iter()
        .map(|m| CreatedMember {
            user_id: m.user_id.clone(),
            host: m.host,
        })
        .collect();
    let mut args = fields(obj! {
        "meetingId" => plan.meeting_id.as_str(),
        "roomId" => room_id,
        "members" => encode(&members)?,
    });
    if let Some(actor) = &plan.actor_id {
        args.insert("actorId".into(), actor.as_str().into());
    }
    let stored = ctx.run_mutation(STORE, Value::from(args)).await?;
    decode(&stored)
}

/// What `provision` needs to know about `meeting`. Refuses a meeting that is over and has no
/// room: nobody will join its call.
fn plan(ctx: &mut Ctx<'_, '_>, meeting: Meeting, actor_id: Option<String>) -> FunctionResult<Plan> {
    let mut plan = Plan {
        meeting_id: meeting.id,
        room_id: meeting.stream_room_id,
        organizer_id: meeting.organizer_id,
        title: meeting.title,
        org_id: meeting.org_id,
        members: Vec::new(),
        actor_id,
    };
    if plan.room_id.is_some() {
        return Ok(plan);
    }
    if !meeting.state.is_open() {
        return Err(ErrorCode::Conflict.err_with(
            format!("a {} meeting gets no room", meeting.state.as_str()),
            obj! { "state" => meeting.state.as_str() },
        ));
    }
    // Hosts first, so they keep their call role whatever the cap leaves out.
    let mut participants = list_participants(ctx, &plan.meeting_id)?;
    participants.truncate(MAX_ROOM_MEMBERS);
    for p in participants {
        let name = match ctx.get(USERS, &p.user_id)? {
            Some(doc) => decode::<User>(&doc)?.display_name,
            None => None,
        };
        plan.members.push(PlanMember {
            user_id: p.user_id,
            name,
            host: p.role == Role::Host,
        });
    }
    Ok(plan)
}

/// For `store`: schedules `SYNC_MEMBER` for whoever the room was created with as other than
/// they now are, and for the hosts it was created without.
fn sync_changed_members(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    created: &[CreatedMember],
) -> FunctionResult<()> {
    let mut stale = Vec::new();
    for m in created {
        let now = CallMembership::of(find_participant(ctx, meeting_id, &m.user_id)?.as_ref());
        let then = if m.host {
            CallMembership::Host
        } else {
            CallMembership::Member
        };
        if now != then {
            stale.push(m.user_id.clone());
        }
    }
    let hosts = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting_and_role")
        .eq("meetingId", meeting_id)
        .eq("role", Role::Host.as_str())
        .take(MAX_ROOM_MEMBERS)?;
    for doc in &hosts {
        let host: Participant = decode(doc)?;
        if !created.iter().any(|m| m.user_id == host.user_id) {
            stale.push(host.user_id);
        }
    }
    for user_id in stale {
        ctx.schedule_after(
            0,
            SYNC_MEMBER,
            obj! { "meetingId" => meeting_id, "userId" => user_id },
        )?;
    }
    Ok(())
}

/// Stores the room id unless the meeting has one already (a concurrent call stored it first;
/// the engine re-runs a conflicting mutation, which then finds it). Returns the stored id.
///
/// A meeting that ended while its room was being created (after the plan was read) gets the
/// room stored and its call ended: `meetings.end` schedules `END_CALL` only for a meeting with
/// a stored room, so of the two serialised mutations exactly one sees both the room and the
/// end, and schedules it. Likewise for participants: a change of participants schedules
/// `SYNC_MEMBER` only for a meeting with a stored room, so this schedules it for each member
/// the room was created with who has since been removed or changed role, and for each host
/// it was created without.
fn store(ctx: &mut Ctx<'_, '_>, a: StoreArgs) -> FunctionResult<String> {
    let meeting = get_meeting(ctx, &a.meeting_id)?;
    if let Some(existing) = meeting.stream_room_id {
        return Ok(existing);
    }
    let now = ctx.now_ms();
    ctx.patch(
        MEETINGS,
        &meeting.id,
        fields(obj! { "streamRoomId" => a.room_id.as_str(), "updatedAt" => now }),
    )?;
    if !meeting.state.is_open() {
        ctx.schedule_after(0, END_CALL, obj! { "meetingId" => meeting.id.as_str() })?;
    } else {
        sync_changed_members(ctx, &meeting.id, &a.members)?;
    }
    audit::record_in_org(
        ctx,
        meeting.org_id.as_deref(),
        a.actor_id.as_deref(),
        "meeting",
        &meeting.id,
        "meeting.stream_room_created",
        obj! { "roomId" => a.room_id.as_str() },
    )?;
    Ok(a.room_id)
}
