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

use std::sync::Arc;

use linkedup_schema::api::{Meeting, MeetingIdArgs, Role, StreamRoom, User};
use linkedup_schema::tables::names::{MEETINGS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::ActionCtx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::guards::{assert_meeting_access, get_meeting};
use super::meetings::list_participants;
use super::{audit, audited, decode, encode, fields, LinkedUpConfig};
use crate::stream::provider::MAX_ROOM_MEMBERS;
use crate::stream::{RoomMember, RoomProvider, RoomRequest};

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
const RETRY: &str = "streamRooms.retryLater";
/// When a room job (`PROVISION`, `END_CALL`) fails with `PROVIDER_ERROR`, it runs again after
/// each of these waits in turn, then gives up (a host can still call
/// `meetings.createStreamRoom`; an unended call ends when its participants leave).
const RETRY_DELAYS_MS: [i64; 2] = [30_000, 300_000];
const RETRIED_JOBS: [&str; 2] = [PROVISION, END_CALL];

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
            ctx.schedule_after(
                *delay,
                job,
                obj! { "meetingId" => a.meeting_id, "attempt" => a.attempt },
            )?;
            Ok(())
        },
    );
}

/// `result` of room job `job`; when it is a `PROVIDER_ERROR` and retries remain, the job is
/// first scheduled to run again after the next of `RETRY_DELAYS_MS`.
async fn retry_on_provider_error<T>(
    ctx: &ActionCtx,
    job: &str,
    a: &JobArgs,
    result: FunctionResult<T>,
) -> FunctionResult<T> {
    if let Err(e) = &result {
        let retries = a.attempt.unwrap_or(0);
        if e.code == ErrorCode::ProviderError.as_str()
            && (0..RETRY_DELAYS_MS.len() as i64).contains(&retries)
        {
            ctx.run_mutation(
                RETRY,
                obj! { "job" => job, "meetingId" => a.meeting_id.as_str(), "attempt" => retries + 1 },
            )
            .await?;
        }
    }
    result
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
    let mut args = fields(obj! { "meetingId" => plan.meeting_id.as_str(), "roomId" => room_id });
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

/// Stores the room id unless the meeting has one already (a concurrent call stored it first;
/// the engine re-runs a conflicting mutation, which then finds it). Returns the stored id.
///
/// A meeting that ended while its room was being created (after the plan was read) gets the
/// room stored and its call ended: `meetings.end` schedules `END_CALL` only for a meeting with
/// a stored room, so of the two serialised mutations exactly one sees both the room and the
/// end, and schedules it.
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
