//! Meeting lifecycle, membership and presence (seed §6): schedule, start, end, cancel, join,
//! leave, participant management, and the reads a meeting's participants subscribe to.
//!
//! State machine (`meetings.state`), and what each call does in each state:
//!
//! | call     | scheduled        | active             | concluded | cancelled |
//! |----------|------------------|--------------------|-----------|-----------|
//! | start    | → active         | no-op (retry-safe) | CONFLICT  | CONFLICT  |
//! | end      | CONFLICT         | → concluded        | no-op     | CONFLICT  |
//! | cancel   | → cancelled      | CONFLICT           | CONFLICT  | no-op     |
//! | join     | MEETING_NOT_ACTIVE | presence joined  | MEETING_NOT_ACTIVE | MEETING_NOT_ACTIVE |
//! | leave    | presence left (any state; a no-op unless joined)                          |
//! | add/remove participant, set role | allowed | allowed | CONFLICT | CONFLICT |
//!
//! Joining and leaving are presence, not membership, and are not audited (they are frequent
//! and carry no rights); every state change and membership change is.
//!
//! Starting a meeting schedules its Stream room (`stream_rooms`); adding or removing a
//! participant, or changing their role, in a meeting with a room schedules the matching change
//! of their call membership (`stream_rooms::SYNC_MEMBER`). Stream's webhooks change presence
//! and conclude meetings through the same helpers as join, leave and end (`mark_joined`,
//! `mark_left`, `conclude`), with no acting user; so does the erasure of an open meeting's last
//! participants, which cancels or ends it (`close_unattended`).

use std::sync::Arc;

use linkedup_schema::api::limits::{MAX_INVITEES, MAX_LIST_MINE, MAX_PARTICIPANTS, MAX_TEXT_CHARS};
use linkedup_schema::api::{
    AddParticipantArgs, ListMineArgs, Meeting, MeetingIdArgs, MeetingState, MeetingStatus,
    Participant, ParticipantArgs, Presence, Role, ScheduleMeetingArgs, SetRoleArgs,
};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{
    FORMER_PARTICIPANTS, MEETINGS, MEETING_PARTICIPANTS, MEETING_STATE, USERS,
};
use linkedup_schema::tables::{MEETING_STATES, PARTICIPANT_ROLES};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, Validator};
use query_engine::value::Value;

use super::guards::{
    assert_meeting_access, being_erased, current_user, find_participant, hidden, in_tenant,
    live_user, require_active, MeetingAccess,
};
use super::idempotency::{earlier_id, store_result};
use super::post_call::{schedule_insights, TRANSCRIPTS_AGGREGATE};
use super::rate_limit::check_and_consume;
use super::stream_rooms;
use super::{audit, audited, check_text, decode, fields, limit_arg, LinkedUpConfig};

/// Longest meeting title, in chars.
const MAX_TITLE_CHARS: usize = 200;
/// Longest planned duration: one day.
const MAX_DURATION_MS: i64 = 86_400_000;
/// Most memberships `meetings.listMine` looks at (the newest ones).
const MAX_MEMBERSHIPS_SCANNED: usize = 200;

fn literals(values: &[&str]) -> Validator {
    v::union(values.iter().map(|s| v::literal(*s)))
}

fn meeting_id_args() -> Validator {
    v::object([("meetingId", v::id(MEETINGS))])
}

fn participant_args() -> Validator {
    v::object([("meetingId", v::id(MEETINGS)), ("userId", v::id(USERS))])
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // meetings.schedule: creates a meeting in state `scheduled`; the caller becomes its host
    // and the invitees its participants (presence `invited`). With `idempotencyKey`, a retry
    // returns the first call's meeting id. Returns the meeting id.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR (naming the field, e.g. `inviteeIds[1]`),
    // RATE_LIMITED. An invitee of another organisation is refused as a user that does not
    // exist (`VALIDATION_ERROR` "no such user"; the reason goes to the audit log).
    let cfg = config.clone();
    f.mutation(
        "meetings.schedule",
        Visibility::Public,
        v::object([
            ("title", v::string()),
            ("description", v::optional(v::string())),
            ("scheduledAt", v::optional(v::int64())),
            ("duration", v::optional(v::int64())),
            ("inviteeIds", v::optional(v::array(v::id(USERS)))),
            ("idempotencyKey", v::optional(v::string())),
        ]),
        v::id(MEETINGS),
        audited(
            config,
            "meetings.schedule",
            move |ctx, a: ScheduleMeetingArgs| schedule(ctx, &cfg, a),
        ),
    );

    // meetings.start: host only; scheduled → active, creates/updates the meeting state and
    // schedules the creation of its Stream room (`stream_rooms`). Returns null.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN, CONFLICT.
    f.mutation(
        "meetings.start",
        Visibility::Public,
        meeting_id_args(),
        v::null(),
        audited(config, "meetings.start", |ctx, a: MeetingIdArgs| {
            start(ctx, &a.meeting_id)
        }),
    );

    // meetings.end: host only; active → concluded; schedules `transcripts.aggregateSegments` and
    // `insights.generate` for the meeting. Returns null.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN, CONFLICT.
    f.mutation(
        "meetings.end",
        Visibility::Public,
        meeting_id_args(),
        v::null(),
        audited(config, "meetings.end", |ctx, a: MeetingIdArgs| {
            end(ctx, &a.meeting_id)
        }),
    );

    // meetings.cancel: host only; scheduled → cancelled. Returns null.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN, CONFLICT.
    f.mutation(
        "meetings.cancel",
        Visibility::Public,
        meeting_id_args(),
        v::null(),
        audited(config, "meetings.cancel", |ctx, a: MeetingIdArgs| {
            cancel(ctx, &a.meeting_id)
        }),
    );

    // meetings.join: a participant of an active meeting becomes present. Returns the
    // participant record. Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN,
    // MEETING_NOT_ACTIVE.
    f.mutation(
        "meetings.join",
        Visibility::Public,
        meeting_id_args(),
        v::any(),
        audited(config, "meetings.join", |ctx, a: MeetingIdArgs| {
            join(ctx, &a.meeting_id)
        }),
    );

    // meetings.leave: the caller's presence becomes `left` (a no-op unless joined); they stay
    // a participant. Returns null. Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND,
    // FORBIDDEN.
    f.mutation(
        "meetings.leave",
        Visibility::Public,
        meeting_id_args(),
        v::null(),
        audited(config, "meetings.leave", |ctx, a: MeetingIdArgs| {
            leave(ctx, &a.meeting_id)
        }),
    );

    // meetings.addParticipant: host only; adds `userId` (of the meeting's organisation) with
    // `role` (default participant); adding an existing participant returns its record
    // unchanged. In a meeting with a Stream room, schedules making them a call member with
    // their role (unblocked if removed before). Returns the participant record. Returns:
    // UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND (meeting or user; a user of another
    // organisation answers as one that does not exist), FORBIDDEN, CONFLICT (meeting over,
    // or full).
    f.mutation(
        "meetings.addParticipant",
        Visibility::Public,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::id(USERS)),
            ("role", v::optional(literals(&PARTICIPANT_ROLES))),
        ]),
        v::any(),
        audited(config, "meetings.addParticipant", add_participant),
    );

    // meetings.removeParticipant: host only; deletes the participant record, ending all of
    // that user's access (their subscriptions fail with NOT_FOUND), and records the removal
    // in `formerParticipants` (what erasure finds the meeting by). In a meeting with a Stream
    // room, schedules blocking them from its call and removing them from its members. The
    // last host cannot be removed. Returns null. Returns: UNAUTHORIZED, VALIDATION_ERROR,
    // NOT_FOUND, FORBIDDEN, CONFLICT (last host, or meeting over).
    f.mutation(
        "meetings.removeParticipant",
        Visibility::Public,
        participant_args(),
        v::null(),
        audited(config, "meetings.removeParticipant", remove_participant),
    );

    // meetings.setRole: host only; changes a participant's role (in a meeting with a Stream
    // room, schedules the same change of their call role). The last host cannot be demoted.
    // Returns the participant record. Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND,
    // FORBIDDEN, CONFLICT.
    f.mutation(
        "meetings.setRole",
        Visibility::Public,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::id(USERS)),
            ("role", literals(&PARTICIPANT_ROLES)),
        ]),
        v::any(),
        audited(config, "meetings.setRole", set_role),
    );

    // The subscribable reads below are shared: the access check runs per caller (and again
    // on every re-run), the body once per meeting for all of its subscribers.

    // meetings.get: the meeting document. Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND,
    // FORBIDDEN.
    f.shared_query(
        "meetings.get",
        meeting_id_args(),
        v::any(),
        participant_access(config, "meetings.get"),
        |ctx, a: MeetingIdArgs| super::guards::get_meeting(ctx, &a.meeting_id),
    );

    // meetings.listParticipants: the participant records (at most 256), hosts first.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN.
    f.shared_query(
        "meetings.listParticipants",
        meeting_id_args(),
        v::array(v::any()),
        participant_access(config, "meetings.listParticipants"),
        |ctx, a: MeetingIdArgs| list_participants(ctx, &a.meeting_id),
    );

    // meetings.getState: the live meeting state, or null before the meeting first started.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN.
    f.shared_query(
        "meetings.getState",
        meeting_id_args(),
        v::any(),
        participant_access(config, "meetings.getState"),
        |ctx, a: MeetingIdArgs| -> FunctionResult<Option<MeetingState>> {
            state_doc(ctx, &a.meeting_id)
        },
    );

    // meetings.listMine: meetings the caller participates in, optionally of one state,
    // newest (by scheduled time, else creation) first; looks at the newest 200 memberships
    // and returns at most `limit` (1..=100, default 50). Meetings of an organisation other
    // than the caller's current one are left out.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.query(
        "meetings.listMine",
        Visibility::Public,
        v::object([
            ("state", v::optional(literals(&MEETING_STATES))),
            ("limit", v::optional(v::int64())),
        ]),
        v::array(v::any()),
        audited(config, "meetings.listMine", list_mine),
    );
}

/// The access check of the shared meeting reads: any participant (host included).
fn participant_access(
    config: &Arc<LinkedUpConfig>,
    name: &'static str,
) -> impl Fn(&mut Ctx<'_, '_>, MeetingIdArgs) -> FunctionResult<()> + Send + Sync + 'static {
    audited(config, name, |ctx, a: MeetingIdArgs| {
        assert_meeting_access(ctx, &a.meeting_id, Role::Participant).map(|_| ())
    })
}

fn schedule(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: ScheduleMeetingArgs,
) -> FunctionResult<String> {
    check_text("title", a.title.trim(), 1, MAX_TITLE_CHARS)?;
    if let Some(d) = &a.description {
        check_text("description", d, 0, MAX_TEXT_CHARS)?;
    }
    if a.scheduled_at.is_some_and(|t| t < 0) {
        return Err(invalid_field("scheduledAt", "must be ms since the epoch"));
    }
    if a.duration
        .is_some_and(|d| !(0..=MAX_DURATION_MS).contains(&d))
    {
        return Err(invalid_field(
            "duration",
            format!("must be 0..={MAX_DURATION_MS} ms"),
        ));
    }
    let invitees = a.invitee_ids.clone().unwrap_or_default();
    if invitees.len() > MAX_INVITEES {
        return Err(invalid_field(
            "inviteeIds",
            format!("at most {MAX_INVITEES} invitees"),
        ));
    }

    let me = current_user(ctx)?;
    let scope = format!("meetings.schedule:{}", me.id);
    if let Some(id) = earlier_id(ctx, "idempotencyKey", a.idempotency_key.as_deref(), &scope)? {
        return Ok(id);
    }
    check_and_consume(
        ctx,
        &config.rate_limits,
        &me.id,
        "meetings.schedule",
        config.rate_limits.meetings_schedule,
    )?;
    let org = me.identity.org_id.clone();
    let mut invited: Vec<String> = Vec::new();
    for (i, uid) in invitees.iter().enumerate() {
        if *uid == me.id || invited.contains(uid) {
            continue;
        }
        let path = format!("inviteeIds[{i}]");
        let missing = || invalid_field(&path, "no such user");
        let user = live_user(ctx, uid)?.ok_or_else(missing)?;
        // Another organisation's user is refused as one that does not exist: user ids are
        // guessable, so a different answer would tell which exist and in which tenant.
        if org.is_some() && user.org_id != org {
            return Err(hidden(
                missing(),
                format!("{path}: the user belongs to another organisation"),
                "user",
                uid,
            ));
        }
        invited.push(uid.clone());
    }

    let now = ctx.now_ms();
    let mut meeting = fields(obj! {
        "organizerId" => me.id.as_str(),
        "title" => a.title.trim(),
        "state" => "scheduled",
        "createdAt" => now,
        "updatedAt" => now,
    });
    if let Some(o) = &org {
        meeting.insert("orgId".into(), o.as_str().into());
    }
    if let Some(d) = &a.description {
        meeting.insert("description".into(), d.as_str().into());
    }
    if let Some(t) = a.scheduled_at {
        meeting.insert("scheduledAt".into(), t.into());
    }
    if let Some(d) = a.duration {
        meeting.insert("duration".into(), d.into());
    }
    let meeting_id = ctx.insert(MEETINGS, Value::from(meeting))?;
    insert_participant(ctx, &meeting_id, &me.id, Role::Host, now)?;
    for uid in &invited {
        insert_participant(ctx, &meeting_id, uid, Role::Participant, now)?;
    }
    audit::record(
        ctx,
        Some(&me.id),
        "meeting",
        &meeting_id,
        "meeting.scheduled",
        obj! { "invitees" => invited.len() as i64 },
    )?;
    if let Some(key) = &a.idempotency_key {
        store_result(ctx, key, &scope, meeting_id.as_str().into())?;
    }
    Ok(meeting_id)
}

fn insert_participant(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    user_id: &str,
    role: Role,
    now: i64,
) -> FunctionResult<String> {
    ctx.insert(
        MEETING_PARTICIPANTS,
        obj! {
            "meetingId" => meeting_id,
            "userId" => user_id,
            "role" => role.as_str(),
            "presence" => "invited",
            "createdAt" => now,
        },
    )
}

/// The meeting's state document, if it was ever started.
fn state_doc(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<Option<MeetingState>> {
    ctx.query(MEETING_STATE, "by_meeting")
        .eq("meetingId", meeting_id)
        .first()?
        .map(|d| decode(&d))
        .transpose()
}

/// Who moves a meeting to another state, for its audit entry.
#[derive(Clone, Copy)]
pub(crate) enum ChangedBy<'a> {
    /// A host (the organisation from their token).
    Host(&'a str),
    /// The system (Stream's webhook, the erasure job), in the meeting's organisation, with the
    /// reason if it is not the call's own.
    System(Option<&'a str>),
}

/// Moves the meeting to `to` and audits it, as changed `by`.
fn set_meeting_state(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    by: ChangedBy<'_>,
    to: MeetingStatus,
) -> FunctionResult<()> {
    let now = ctx.now_ms();
    ctx.patch(
        MEETINGS,
        &meeting.id,
        fields(obj! { "state" => to.as_str(), "updatedAt" => now }),
    )?;
    let action = format!("meeting.{}", to.as_str());
    let mut change = obj! { "from" => meeting.state.as_str(), "to" => to.as_str() };
    match by {
        ChangedBy::Host(user) => {
            audit::record(ctx, Some(user), "meeting", &meeting.id, &action, change)
        }
        ChangedBy::System(reason) => {
            if let (Some(r), Some(o)) = (reason, change.as_object_mut()) {
                o.insert("reason".into(), r.into());
            }
            audit::record_in_org(
                ctx,
                meeting.org_id.as_deref(),
                None,
                "meeting",
                &meeting.id,
                &action,
                change,
            )
        }
    }
}

fn conflict(action: &str, state: MeetingStatus) -> query_engine::error::FunctionError {
    ErrorCode::Conflict.err_with(
        format!("cannot {action} a {} meeting", state.as_str()),
        obj! { "state" => state.as_str() },
    )
}

fn start(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<()> {
    let access = assert_meeting_access(ctx, meeting_id, Role::Host)?;
    match access.meeting.state {
        MeetingStatus::Active => return Ok(()),
        MeetingStatus::Scheduled => {}
        s => return Err(conflict("start", s)),
    }
    set_meeting_state(
        ctx,
        &access.meeting,
        ChangedBy::Host(&access.user.id),
        MeetingStatus::Active,
    )?;
    // Runs only if this mutation commits; a no-op if the host created the room already.
    ctx.schedule_after(
        0,
        stream_rooms::PROVISION,
        obj! { "meetingId" => meeting_id },
    )?;
    let now = ctx.now_ms();
    let joined = count_joined(ctx, meeting_id)?;
    match state_doc(ctx, meeting_id)? {
        Some(s) => ctx.patch(
            MEETING_STATE,
            &s.id,
            fields(obj! {
                "active" => true, "startedAt" => now, "joinedCount" => joined, "updatedAt" => now,
            }),
        ),
        None => ctx
            .insert(
                MEETING_STATE,
                obj! {
                    "meetingId" => meeting_id,
                    "active" => true,
                    "startedAt" => now,
                    "topics" => Value::Array(Vec::new()),
                    "recordingEnabled" => false,
                    "joinedCount" => joined,
                    "updatedAt" => now,
                },
            )
            .map(|_| ()),
    }
}

fn count_joined(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<i64> {
    let rows = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting")
        .eq("meetingId", meeting_id)
        .take(MAX_PARTICIPANTS)?;
    Ok(rows
        .iter()
        .filter(|r| r.get_path("presence").and_then(Value::as_str) == Some("joined"))
        .count() as i64)
}

fn end(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<()> {
    let access = assert_meeting_access(ctx, meeting_id, Role::Host)?;
    match access.meeting.state {
        MeetingStatus::Concluded => return Ok(()),
        MeetingStatus::Active => {}
        s => return Err(conflict("end", s)),
    }
    finish(ctx, &access.meeting, ChangedBy::Host(&access.user.id))
}

/// Ends an active meeting as its host does: concluded (`conclude`), and its video call ended
/// for everyone still in it. (When Stream reports the call ended, the webhook concludes the
/// meeting without this.)
fn finish(ctx: &mut Ctx<'_, '_>, meeting: &Meeting, by: ChangedBy<'_>) -> FunctionResult<()> {
    conclude(ctx, meeting, by)?;
    if meeting.stream_room_id.is_some() {
        ctx.schedule_after(
            0,
            stream_rooms::END_CALL,
            obj! { "meetingId" => meeting.id.as_str() },
        )?;
    }
    Ok(())
}

/// Concludes an active meeting: its state, its live state document, and the post-call jobs,
/// which run only if the calling mutation commits.
pub(crate) fn conclude(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    by: ChangedBy<'_>,
) -> FunctionResult<()> {
    debug_assert_eq!(meeting.state, MeetingStatus::Active);
    set_meeting_state(ctx, meeting, by, MeetingStatus::Concluded)?;
    let now = ctx.now_ms();
    if let Some(s) = state_doc(ctx, &meeting.id)? {
        ctx.patch(
            MEETING_STATE,
            &s.id,
            fields(obj! { "active" => false, "endedAt" => now, "updatedAt" => now }),
        )?;
    }
    ctx.schedule_after(
        0,
        TRANSCRIPTS_AGGREGATE,
        obj! { "meetingId" => meeting.id.as_str() },
    )?;
    schedule_insights(ctx, &meeting.id)
}

/// Closes an open meeting that nobody is left to run, as its host would have: a scheduled one
/// is cancelled, an active one ended (`finish`); audited with no actor and `reason`. For the
/// erasure of its last participants (`erasure::hosting`).
pub(crate) fn close_unattended(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    reason: &str,
) -> FunctionResult<()> {
    let by = ChangedBy::System(Some(reason));
    match meeting.state {
        MeetingStatus::Scheduled => set_meeting_state(ctx, meeting, by, MeetingStatus::Cancelled),
        MeetingStatus::Active => finish(ctx, meeting, by),
        MeetingStatus::Concluded | MeetingStatus::Cancelled => Ok(()),
    }
}

fn cancel(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<()> {
    let access = assert_meeting_access(ctx, meeting_id, Role::Host)?;
    match access.meeting.state {
        MeetingStatus::Cancelled => Ok(()),
        MeetingStatus::Scheduled => set_meeting_state(
            ctx,
            &access.meeting,
            ChangedBy::Host(&access.user.id),
            MeetingStatus::Cancelled,
        ),
        s => Err(conflict("cancel", s)),
    }
}

fn adjust_joined(ctx: &mut Ctx<'_, '_>, meeting_id: &str, delta: i64) -> FunctionResult<()> {
    if let Some(s) = state_doc(ctx, meeting_id)? {
        let n = (s.joined_count.unwrap_or(0) + delta).max(0);
        let now = ctx.now_ms();
        ctx.patch(
            MEETING_STATE,
            &s.id,
            fields(obj! { "joinedCount" => n, "updatedAt" => now }),
        )?;
    }
    Ok(())
}

fn join(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<Participant> {
    let access = assert_meeting_access(ctx, meeting_id, Role::Participant)?;
    require_active(&access.meeting)?;
    let p = access.participant;
    if !mark_joined(ctx, meeting_id, &p)? {
        return Ok(p);
    }
    stamp_presence(ctx, &p)?;
    reread_participant(ctx, &p.id)
}

/// Records an in-app presence change as the latest presence event (`presenceEventAt`, at this
/// server's clock, never moved back), so that a Stream webhook about an earlier moment
/// arriving late does not undo it; clocks that differ by more than a moment could still order
/// the two wrongly.
fn stamp_presence(ctx: &mut Ctx<'_, '_>, p: &Participant) -> FunctionResult<()> {
    let at = ctx.now_ms().max(p.presence_event_at.unwrap_or(0));
    ctx.patch(
        MEETING_PARTICIPANTS,
        &p.id,
        fields(obj! { "presenceEventAt" => at }),
    )
}

/// Makes the participant present (`joined`, `joinedAt`) and counts them in the meeting
/// state's `joinedCount`. Returns false, changing nothing, if they were already joined.
pub(crate) fn mark_joined(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    p: &Participant,
) -> FunctionResult<bool> {
    if p.presence == Presence::Joined {
        return Ok(false);
    }
    let now = ctx.now_ms();
    ctx.patch(
        MEETING_PARTICIPANTS,
        &p.id,
        fields(obj! { "presence" => "joined", "joinedAt" => now }),
    )?;
    adjust_joined(ctx, meeting_id, 1)?;
    Ok(true)
}

/// The reverse of `mark_joined` (`left`, `leftAt`); returns false, changing nothing, unless
/// the participant was joined.
pub(crate) fn mark_left(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    p: &Participant,
) -> FunctionResult<bool> {
    if p.presence != Presence::Joined {
        return Ok(false);
    }
    let now = ctx.now_ms();
    ctx.patch(
        MEETING_PARTICIPANTS,
        &p.id,
        fields(obj! { "presence" => "left", "leftAt" => now }),
    )?;
    adjust_joined(ctx, meeting_id, -1)?;
    Ok(true)
}

fn reread_participant(ctx: &mut Ctx<'_, '_>, id: &str) -> FunctionResult<Participant> {
    let doc = ctx
        .get(MEETING_PARTICIPANTS, id)?
        .ok_or_else(|| ErrorCode::Internal.err("participant vanished"))?;
    decode(&doc)
}

fn leave(ctx: &mut Ctx<'_, '_>, meeting_id: &str) -> FunctionResult<()> {
    let access = assert_meeting_access(ctx, meeting_id, Role::Participant)?;
    if mark_left(ctx, meeting_id, &access.participant)? {
        stamp_presence(ctx, &access.participant)?;
    }
    Ok(())
}

/// Membership changes are refused once a meeting is over.
fn check_open(access: &MeetingAccess, action: &str) -> FunctionResult<()> {
    let state = access.meeting.state;
    if state.is_open() {
        Ok(())
    } else {
        Err(conflict(action, state))
    }
}

/// Most other hosts `another_live_host` looks at: more are taken to include a live one.
pub(crate) const MAX_OTHER_HOSTS_CHECKED: usize = 8;

/// Whether the meeting has a host besides `user_id` whose account is not being erased. An
/// erased host keeps the role (the record stays) but can run nothing, so it does not count.
/// Reads at most 1 + 2 × `MAX_OTHER_HOSTS_CHECKED` documents.
pub(crate) fn another_live_host(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    user_id: &str,
) -> FunctionResult<bool> {
    let hosts = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting_and_role")
        .eq("meetingId", meeting_id)
        .eq("role", Role::Host.as_str())
        .take(MAX_OTHER_HOSTS_CHECKED + 2)?;
    if hosts.len() > MAX_OTHER_HOSTS_CHECKED + 1 {
        return Ok(true);
    }
    any_live_but(ctx, &hosts, user_id)
}

/// Whether any of the participant rows `rows`, other than `except`'s, is of a user whose
/// account is not being erased. Reads a user document per other row.
pub(crate) fn any_live_but(
    ctx: &mut Ctx<'_, '_>,
    rows: &[Value],
    except: &str,
) -> FunctionResult<bool> {
    for d in rows {
        let p: Participant = decode(d)?;
        if p.user_id != except && !being_erased(ctx, &p.user_id)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn target_participant(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    user_id: &str,
) -> FunctionResult<Participant> {
    find_participant(ctx, meeting_id, user_id)?
        .ok_or_else(|| ErrorCode::NotFound.err(format!("user {user_id} is not a participant")))
}

fn add_participant(ctx: &mut Ctx<'_, '_>, a: AddParticipantArgs) -> FunctionResult<Participant> {
    let access = assert_meeting_access(ctx, &a.meeting_id, Role::Host)?;
    check_open(&access, "add participants to")?;
    let missing = || ErrorCode::NotFound.err(format!("no user {}", a.user_id));
    let user = live_user(ctx, &a.user_id)?.ok_or_else(missing)?;
    // As for an invitee: another organisation's user is indistinguishable from none.
    if access.meeting.org_id.is_some() && user.org_id != access.meeting.org_id {
        return Err(hidden(
            missing(),
            "the user belongs to another organisation",
            "user",
            &a.user_id,
        ));
    }
    if let Some(existing) = find_participant(ctx, &a.meeting_id, &a.user_id)? {
        return Ok(existing);
    }
    let count = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting")
        .eq("meetingId", a.meeting_id.as_str())
        .take(MAX_PARTICIPANTS)?
        .len();
    if count >= MAX_PARTICIPANTS {
        return Err(ErrorCode::Conflict.err(format!(
            "a meeting has at most {MAX_PARTICIPANTS} participants"
        )));
    }
    let role = a.role.unwrap_or(Role::Participant);
    let now = ctx.now_ms();
    let id = insert_participant(ctx, &a.meeting_id, &a.user_id, role, now)?;
    // A member of the call with their role (and no longer blocked, if removed before).
    stream_rooms::schedule_member_sync(ctx, &access.meeting, &a.user_id)?;
    audit::record(
        ctx,
        Some(&access.user.id),
        "meeting",
        &a.meeting_id,
        "participant.added",
        obj! { "userId" => a.user_id.as_str(), "role" => role.as_str() },
    )?;
    reread_participant(ctx, &id)
}

fn remove_participant(ctx: &mut Ctx<'_, '_>, a: ParticipantArgs) -> FunctionResult<()> {
    let access = assert_meeting_access(ctx, &a.meeting_id, Role::Host)?;
    check_open(&access, "remove participants from")?;
    let target = target_participant(ctx, &a.meeting_id, &a.user_id)?;
    if target.role == Role::Host && !another_live_host(ctx, &a.meeting_id, &target.user_id)? {
        return Err(ErrorCode::Conflict.err("cannot remove the last host"));
    }
    ctx.delete(MEETING_PARTICIPANTS, &target.id)?;
    ctx.insert(
        FORMER_PARTICIPANTS,
        obj! {
            "meetingId" => a.meeting_id.as_str(),
            "userId" => a.user_id.as_str(),
            "role" => target.role.as_str(),
            "removedBy" => access.user.id.as_str(),
            "removedAt" => ctx.now_ms(),
        },
    )?;
    if target.presence == Presence::Joined {
        adjust_joined(ctx, &a.meeting_id, -1)?;
    }
    // Blocked from the call and no longer a member: their call token no longer admits them.
    stream_rooms::schedule_member_sync(ctx, &access.meeting, &a.user_id)?;
    audit::record(
        ctx,
        Some(&access.user.id),
        "meeting",
        &a.meeting_id,
        "participant.removed",
        obj! { "userId" => a.user_id.as_str(), "role" => target.role.as_str() },
    )
}

fn set_role(ctx: &mut Ctx<'_, '_>, a: SetRoleArgs) -> FunctionResult<Participant> {
    let access = assert_meeting_access(ctx, &a.meeting_id, Role::Host)?;
    check_open(&access, "change roles in")?;
    let target = target_participant(ctx, &a.meeting_id, &a.user_id)?;
    if target.role == a.role {
        return Ok(target);
    }
    if target.role == Role::Host && !another_live_host(ctx, &a.meeting_id, &target.user_id)? {
        return Err(ErrorCode::Conflict.err("cannot demote the last host"));
    }
    ctx.patch(
        MEETING_PARTICIPANTS,
        &target.id,
        fields(obj! { "role" => a.role.as_str() }),
    )?;
    // The call role follows: host, or the call type's member role.
    stream_rooms::schedule_member_sync(ctx, &access.meeting, &a.user_id)?;
    audit::record(
        ctx,
        Some(&access.user.id),
        "meeting",
        &a.meeting_id,
        "participant.role_changed",
        obj! {
            "userId" => a.user_id.as_str(),
            "from" => target.role.as_str(),
            "to" => a.role.as_str(),
        },
    )?;
    reread_participant(ctx, &target.id)
}

/// The meeting's participant records (at most 256), hosts first, then in the order added.
pub(crate) fn list_participants(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
) -> FunctionResult<Vec<Participant>> {
    let rows = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting")
        .eq("meetingId", meeting_id)
        .take(MAX_PARTICIPANTS)?;
    let mut out = rows
        .iter()
        .map(decode::<Participant>)
        .collect::<FunctionResult<Vec<_>>>()?;
    out.sort_by(|x, y| y.role.cmp(&x.role).then(x.created_at.cmp(&y.created_at)));
    Ok(out)
}

fn list_mine(ctx: &mut Ctx<'_, '_>, a: ListMineArgs) -> FunctionResult<Vec<Meeting>> {
    let limit = limit_arg("limit", a.limit, 50, MAX_LIST_MINE)?;
    let me = current_user(ctx)?;
    let memberships = ctx
        .query(MEETING_PARTICIPANTS, "by_user")
        .eq("userId", me.id.as_str())
        .desc()
        .take(MAX_MEMBERSHIPS_SCANNED)?;
    let mut out = Vec::new();
    for m in &memberships {
        let Some(mid) = m.get_path("meetingId").and_then(Value::as_str) else {
            continue;
        };
        let Some(doc) = ctx.get(MEETINGS, mid)? else {
            continue;
        };
        let meeting: Meeting = decode(&doc)?;
        let state_ok = a.state.is_none_or(|s| s == meeting.state);
        if in_tenant(&me, &meeting) && state_ok {
            out.push(meeting);
        }
    }
    let key = |m: &Meeting| m.scheduled_at.unwrap_or(m.created_at);
    out.sort_by(|x, y| key(y).cmp(&key(x)).then(y.id.cmp(&x.id)));
    out.truncate(limit);
    Ok(out)
}
