//! `meetings.streamCallToken` (seed §6, and the runbook's "Stream outage: disable token
//! minting", §23): a participant of an active meeting gets what their video client joins the
//! meeting's call with — a Stream user token admitting them to that call only, valid for
//! `StreamConfig::call_token_ttl` (`crate::stream::tokens`).
//!
//! The checks run in one internal mutation with the caller's identity (participant, meeting
//! active, the `stream/paused` switch off, the per-user rate limit, which must commit its
//! count); the action then signs with the wall clock, which a mutation must not read. Nothing
//! about the token is stored: it lives with the client, and the mutation's count is all the
//! database keeps.

use std::sync::Arc;

use linkedup_schema::api::{fns, MeetingIdArgs, Role, StreamCallToken};
use linkedup_schema::tables::names::MEETINGS;
use linkedup_schema::ErrorCode;
use query_engine::committer::now_millis;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;

use super::guards::{assert_meeting_access, require_active};
use super::rate_limit::check_and_consume;
use super::{audited, flags, LinkedUpConfig};
use crate::stream::{call_cid, mint_call_token};

/// The checks before minting, with the caller's identity (internal mutation).
const GRANT: &str = "streamTokens.grant";
/// The flag that stops minting while Stream is out (seed §23).
pub const PAUSED_FLAG: &str = "stream/paused";
/// The rate limiter's action name.
const RATE_ACTION: &str = "stream.callToken";

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // meetings.streamCallToken (action): {meetingId} -> StreamCallToken.
    // Errors: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND (also not a participant), FORBIDDEN,
    // MEETING_NOT_ACTIVE, RATE_LIMITED, PROVIDER_ERROR (`data.reason`: "streamPaused" while
    // the stream/paused flag is on; "notConfigured" on a server without a Stream secret).
    let cfg = config.clone();
    f.action(
        fns::MEETINGS_STREAM_CALL_TOKEN,
        Visibility::Public,
        v::object([("meetingId", v::id(MEETINGS))]),
        v::object([
            ("apiKey", v::optional(v::string())),
            ("callType", v::string()),
            ("callId", v::string()),
            ("callCid", v::string()),
            ("userId", v::string()),
            ("token", v::string()),
            ("expiresAt", v::int64()),
        ]),
        move |ctx, a: MeetingIdArgs| {
            let cfg = cfg.clone();
            async move {
                let granted = ctx
                    .run_mutation(GRANT, obj! { "meetingId" => a.meeting_id.as_str() })
                    .await?;
                let user_id = granted
                    .as_str()
                    .ok_or_else(|| ErrorCode::Internal.err("the grant returned no user id"))?
                    .to_string();
                let Some(secret) = &cfg.stream.webhook_secret else {
                    return Err(ErrorCode::ProviderError.err_with(
                        "video calls are not configured on this server (no Stream API secret)",
                        obj! { "reason" => "notConfigured" },
                    ));
                };
                let call_type = cfg.stream.provider.call_type().to_string();
                let cid = call_cid(&call_type, &a.meeting_id);
                let minted = mint_call_token(
                    secret,
                    &user_id,
                    &cid,
                    now_millis(),
                    cfg.stream.call_token_ttl,
                )
                .map_err(|e| e.to_function_error())?;
                Ok(StreamCallToken {
                    api_key: cfg.stream.api_key.clone(),
                    call_type,
                    call_id: a.meeting_id,
                    call_cid: cid,
                    user_id,
                    token: minted.token,
                    expires_at: minted.expires_at_ms,
                })
            }
        },
    );

    let cfg = config.clone();
    f.mutation(
        GRANT,
        Visibility::Internal,
        v::object([("meetingId", v::id(MEETINGS))]),
        v::string(),
        // Denials are recorded under the public function's name.
        audited(
            config,
            fns::MEETINGS_STREAM_CALL_TOKEN,
            move |ctx, a: MeetingIdArgs| grant(ctx, &cfg, &a.meeting_id),
        ),
    );
}

/// The caller's user id, once they may have a token for `meeting_id`'s call.
fn grant(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    meeting_id: &str,
) -> FunctionResult<String> {
    let access = assert_meeting_access(ctx, meeting_id, Role::Participant)?;
    require_active(&access.meeting)?;
    let user_id = access.user.id;
    if flags::is_enabled(
        ctx,
        PAUSED_FLAG,
        &config.environment,
        access.meeting.org_id.as_deref(),
        &user_id,
    )? {
        return Err(ErrorCode::ProviderError.err_with(
            "video calls are paused (Stream outage); use the meeting without video for now",
            obj! { "reason" => "streamPaused" },
        ));
    }
    check_and_consume(
        ctx,
        &config.rate_limits,
        &user_id,
        RATE_ACTION,
        config.rate_limits.stream_call_tokens,
    )?;
    Ok(user_id)
}
