//! What an erasure does to a meeting the user is leaving, beyond their own data: the meeting
//! must keep someone who can run it, so when they were its only host another participant takes
//! over (`hand_over_hosting`). For the erasure job's `hosting` phase (`job`), whose budget
//! counts what these read and write.

use linkedup_schema::api::{Meeting, Participant, Role};
use linkedup_schema::tables::names::MEETING_PARTICIPANTS;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::obj;

use crate::linkedup::guards::being_erased;
use crate::linkedup::meetings::at_most_one_host;
use crate::linkedup::{audit, decode, fields, stream_rooms};

/// Most participants `hand_over_hosting` considers: a bound on its reads when several
/// participants of one meeting are being erased at once.
pub(crate) const HANDOVER_CANDIDATES: usize = 8;

/// When `leaving` is the only host of an open (scheduled or active) meeting, makes the
/// earliest-added other participant whose account is not being erased its host (among the
/// first `HANDOVER_CANDIDATES`), so the meeting keeps someone who can run it; audited
/// (`participant.role_changed`, reason `hostErased`, no actor), and their call role follows
/// (`stream_rooms::schedule_member_sync`). For the erasure job: reads at most
/// 2 + 2 × `HANDOVER_CANDIDATES` documents, writes at most three. Returns the new host's user
/// id, if any.
pub(crate) fn hand_over_hosting(
    ctx: &mut Ctx<'_, '_>,
    meeting: &Meeting,
    leaving: &Participant,
) -> FunctionResult<Option<String>> {
    if leaving.role != Role::Host
        || !meeting.state.is_open()
        || !at_most_one_host(ctx, &meeting.id)?
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
