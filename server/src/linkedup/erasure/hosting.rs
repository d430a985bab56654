//! What an erasure does to an open meeting the user is leaving, beyond their own data
//! (`settle`): the meeting must keep someone who can run it, so when they were its only host
//! another participant takes over (`hand_over_hosting`); and when nobody is left but users
//! being erased, nobody could ever end it — and its note, kept until its meeting is over, would
//! be kept for ever — so it is closed as its host would have (`meetings::close_unattended`).
//! For the erasure job's `hosting` phase (`job`), whose budget counts what these read and
//! write (`SETTLE_DOCS`).

use linkedup_schema::api::{Meeting, Participant, Role};
use linkedup_schema::tables::names::MEETING_PARTICIPANTS;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::obj;

use crate::linkedup::guards::being_erased;
use crate::linkedup::meetings::{
    another_live_host, any_live_but, close_unattended, MAX_OTHER_HOSTS_CHECKED,
};
use crate::linkedup::{audit, decode, fields, stream_rooms};

/// Most participants `hand_over_hosting` and `unattended` consider: a bound on their reads
/// when several participants of one meeting are being erased at once.
const HANDOVER_CANDIDATES: usize = 8;

/// Most documents `settle` reads or writes: `hand_over_hosting`'s (`another_live_host`'s
/// 1 + 2 × its bound, then 2 × candidates read; 3 written), `unattended`'s (candidates + 2 participant rows, a user document per candidate)
/// and closing an active meeting (its state document read; meeting, state document, audit entry,
/// insight run record and three jobs written; the insight run record read).
pub(crate) const SETTLE_DOCS: usize =
    (4 + 2 * MAX_OTHER_HOSTS_CHECKED + 2 * HANDOVER_CANDIDATES) + (2 + 2 * HANDOVER_CANDIDATES) + 9;

/// The audit reason of a meeting closed because its last participants were erased.
const PARTICIPANTS_ERASED: &str = "participantsErased";

/// What the erasure of `leaving`'s account does to the open meeting they leave: hosting
/// handed over (`hand_over_hosting`), or, with nobody left to run it (`unattended`), the
/// meeting closed (`meetings::close_unattended`, reason `participantsErased`).
pub(crate) fn settle(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    leaving: &Participant,
) -> FunctionResult<()> {
    if !meeting.state.is_open() || hand_over_hosting(ctx, meeting, leaving)?.is_some() {
        return Ok(());
    }
    if unattended(ctx, &meeting.id, &leaving.user_id)? {
        close_unattended(ctx, meeting, PARTICIPANTS_ERASED)?;
    }
    Ok(())
}

/// Whether every participant of the meeting but `leaving` is a user being erased (or there is
/// none). A meeting of more than `HANDOVER_CANDIDATES` others is taken to have someone: the
/// answer reads at most that many user documents.
fn unattended(ctx: &mut Ctx<'_, '_>, meeting_id: &str, leaving: &str) -> FunctionResult<bool> {
    let rows = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting")
        .eq("meetingId", meeting_id)
        .take(HANDOVER_CANDIDATES + 2)?;
    if rows.len() > HANDOVER_CANDIDATES + 1 {
        return Ok(false);
    }
    Ok(!any_live_but(ctx, &rows, leaving)?)
}

/// When `leaving` is the only host of an open (scheduled or active) meeting not being erased
/// (an erased host keeps the role, so a co-host erased earlier does not count), makes the
/// earliest-added other participant whose account is not being erased its host (among the
/// first `HANDOVER_CANDIDATES`), so the meeting keeps someone who can run it; audited
/// (`participant.role_changed`, reason `hostErased`, no actor), and their call role follows
/// (`stream_rooms::schedule_member_sync`). For the erasure job: reads at most
/// 1 + 2 × `MAX_OTHER_HOSTS_CHECKED` + 2 × `HANDOVER_CANDIDATES` documents, writes at most
/// three. Returns the new host's user
/// id, if any.
fn hand_over_hosting(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    leaving: &Participant,
) -> FunctionResult<Option<String>> {
    if leaving.role != Role::Host
        || !meeting.state.is_open()
        || another_live_host(ctx, &meeting.id, &leaving.user_id)?
    {
        return Ok(None);
    }
    let candidates = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting_and_role")
        .eq("meetingId", meeting.id.as_str())
        .eq("role", Role::Participant.as_str())
        .take(HANDOVER_CANDIDATES)?;
    let mut next = None;
    for d in &candidates {
        let p: Participant = decode(d)?;
        if !being_erased(ctx, &p.user_id)? {
            next = Some(p);
            break;
        }
    }
    let Some(next) = next else {
        return Ok(None);
    };
    ctx.patch(
        MEETING_PARTICIPANTS,
        &next.id,
        fields(obj! { "role" => Role::Host.as_str() }),
    )?;
    // The new host's call role follows, as for `meetings.setRole`.
    stream_rooms::schedule_member_sync(ctx, meeting, &next.user_id)?;
    audit::record_in_org(
        ctx,
        meeting.org_id.as_deref(),
        None,
        "meeting",
        &meeting.id,
        "participant.role_changed",
        obj! {
            "userId" => next.user_id.as_str(),
            "from" => Role::Participant.as_str(),
            "to" => Role::Host.as_str(),
            "reason" => "hostErased",
        },
    )?;
    Ok(Some(next.user_id))
}
