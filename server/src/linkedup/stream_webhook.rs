//! Stream's webhooks (seed §6, §12, §20): `POST /webhooks/stream` on the HTTP port, and the
//! internal mutation `streamWebhooks.apply` it calls.
//!
//! The route checks what it can without the database: body size, `X-Api-Key`, the signature
//! over the raw body (`crate::stream::webhook`), the event's shape and time. The mutation then,
//! in ONE transaction, records the delivery's key in `idempotencyKeys` (scope
//! `stream_webhook`) and applies the event, so a retried delivery changes nothing and a failed
//! one leaves no key. The key is a digest of the signed body, not the unsigned `X-Webhook-Id`
//! (only logged): a captured delivery posted again under a fresh id is still a duplicate.
//!
//! - participant joined / left: the participant's presence, through the same helpers as
//!   `meetings.join` / `meetings.leave` (so `meetingState.joinedCount` stays consistent);
//!   joining only counts in an active meeting, as for `meetings.join`;
//! - session ended (nobody is in the call any more): every joined participant leaves;
//! - call ended: an active meeting is concluded as by `meetings.end` (post-call jobs
//!   scheduled, audited with no acting user); a concluded one is left alone, so the jobs are
//!   scheduled once whoever ends the meeting first.
//!
//! Presence events (joined, left, and session ended for every participant) are applied in the
//! order Stream created them, not in the order they arrive: Stream retries a failed delivery
//! later, possibly after the participant's next event succeeded. Each participant keeps the
//! `created_at` of the last presence event applied to them (`presenceEventAt`), and an event
//! not newer than it is acknowledged and ignored, so a join retried after the leave that
//! followed it does not leave the participant joined (and counted) for good.
//!
//! An applied event must carry its signed `created_at` (400 without). One older than
//! `MAX_EVENT_AGE_MS` is acknowledged and not applied: its delivery key may have expired, so a
//! captured delivery replayed later would otherwise act again. One more than
//! `MAX_CLOCK_SKEW_MS` in the future is refused (400). Events about unknown meetings, users who
//! are not participants, other call types, or of other types are acknowledged (200) and
//! ignored: Stream would retry an error for ever, and none of them can become valid later.
//! Responses: 200 processed, duplicate or ignored; 400 a malformed body (an applied event
//! without `created_at` or with one too far ahead included); 401 a missing or wrong signature,
//! or with an API key configured a missing or other `X-Api-Key`; 408 (and the connection
//! closed) a body that takes longer than the HTTP body timeout to arrive; 413 a body over 1 MiB; 503
//! while the server shuts down or is overloaded; 500 otherwise (Stream retries). Every
//! delivery is counted in `/metrics` (`server_calls_total{function="/webhooks/stream",
//! kind="webhook"}`) by outcome, and ignored ones by reason too
//! (`stream_webhook_ignored_total{reason}`). Stream sends many event types not handled here,
//! so ignored deliveries are logged at debug only; refusals are warned of (rate-limited).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use linkedup_schema::api::{Meeting, MeetingStatus, Participant, Presence};
use linkedup_schema::tables::names::{MEETINGS, MEETING_PARTICIPANTS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::committer::now_millis;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::Deserialize;

use super::guards::find_participant;
use super::idempotency::{check_and_record, store_result, DEFAULT_TTL_MS};
use super::meetings::{conclude, list_participants, mark_joined, mark_left, ChangedBy};
use super::{decode, fields, LinkedUpConfig};
use crate::http::{AppRoutes, HttpContext};
use crate::log_limit::LogLimit;
use crate::metrics::LabelledCounter;
use crate::stream::webhook::{
    self, delivery_key, parse_event, CallRef, Event, EventAction, API_KEY_HEADER, SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
};
use crate::stream::StreamConfig;

pub const PATH: &str = "/webhooks/stream";
/// Oldest event applied, by its `created_at`: half the delivery keys' lifetime, so a
/// delivery is either recognised as a duplicate or refused as stale.
const MAX_EVENT_AGE_MS: i64 = DEFAULT_TTL_MS / 2;
/// Furthest ahead of this server's clock an applied event's `created_at` may be: more than
/// Stream's and our clocks differ by, and far less than the 12 h by which a delivery key
/// outlives `MAX_EVENT_AGE_MS`, so an event dated ahead still turns stale before its key
/// expires (and a presence time from the future cannot make later events look old for long).
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;
/// Most characters of `X-Webhook-Id` written to the log.
const MAX_LOGGED_ID: usize = 128;
/// The deliveries' scope in `idempotencyKeys`.
pub const SCOPE: &str = "stream_webhook";
/// Largest body accepted (Stream's call events carry the call and its members).
pub const MAX_BODY_BYTES: usize = 1 << 20;
const APPLY: &str = "streamWebhooks.apply";
/// The `kind` label of deliveries in the call metrics.
const METRICS_KIND: &str = "webhook";

/// The event actions the mutation applies (`EventAction` without `Other`).
const JOINED: &str = "participantJoined";
const LEFT: &str = "participantLeft";
const SESSION_ENDED: &str = "sessionEnded";
const CALL_ENDED: &str = "callEnded";
const ACTIONS: [&str; 4] = [JOINED, LEFT, SESSION_ENDED, CALL_ENDED];
/// Verified deliveries acknowledged and not applied, by `Ignored::label`.
static IGNORED: LabelledCounter = LabelledCounter {
    name: "stream_webhook_ignored_total",
    help: "Verified Stream webhook deliveries acknowledged and not applied, by reason",
    label: "reason",
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplyArgs {
    key: String,
    action: String,
    /// The call id: a meeting id if the call is LinkedUp's. Not validated as an id, so that an
    /// unknown one is ignored rather than refused.
    meeting_id: String,
    user_id: Option<String>,
    /// The event's signed `created_at`, ms since the epoch.
    created_at: i64,
}

/// What became of a verified delivery.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Processed,
    Duplicate,
    Ignored(Ignored),
}

/// Why a verified delivery is acknowledged and not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ignored {
    Stale,
    EventType,
    CallType,
    NotLinkedUpMeeting,
    NoSuchMeeting,
    MeetingNotActive,
    NotParticipant,
    /// A presence event at least as recent was applied to the participant.
    Superseded,
    AlreadyConcluded,
}

impl Ignored {
    const ALL: [Ignored; 9] = [
        Ignored::Stale,
        Ignored::EventType,
        Ignored::CallType,
        Ignored::NotLinkedUpMeeting,
        Ignored::NoSuchMeeting,
        Ignored::MeetingNotActive,
        Ignored::NotParticipant,
        Ignored::Superseded,
        Ignored::AlreadyConcluded,
    ];

    /// The `reason` of the reply and of the mutation's result.
    fn reason(self) -> &'static str {
        match self {
            Ignored::Stale => "older than the replay window",
            Ignored::EventType => "event type not handled",
            Ignored::CallType => "another call type",
            Ignored::NotLinkedUpMeeting => "not a LinkedUp meeting",
            Ignored::NoSuchMeeting => "no such meeting",
            Ignored::MeetingNotActive => "the meeting is not active",
            Ignored::NotParticipant => "not a participant",
            Ignored::Superseded => "a presence event at least as recent was applied",
            Ignored::AlreadyConcluded => "already concluded",
        }
    }

    /// The `reason` label in `/metrics`.
    fn label(self) -> &'static str {
        match self {
            Ignored::Stale => "stale",
            Ignored::EventType => "event_type",
            Ignored::CallType => "call_type",
            Ignored::NotLinkedUpMeeting => "not_linkedup_meeting",
            Ignored::NoSuchMeeting => "no_such_meeting",
            Ignored::MeetingNotActive => "meeting_not_active",
            Ignored::NotParticipant => "not_participant",
            Ignored::Superseded => "superseded",
            Ignored::AlreadyConcluded => "already_concluded",
        }
    }
}

impl Outcome {
    fn to_value(&self) -> Value {
        match self {
            Outcome::Processed => obj! { "outcome" => "processed" },
            Outcome::Duplicate => obj! { "outcome" => "duplicate" },
            Outcome::Ignored(why) => obj! { "outcome" => "ignored", "reason" => why.reason() },
        }
    }

    /// The outcome `streamWebhooks.apply` returned (`to_value`'s), `None` for anything else.
    fn from_value(v: &Value) -> Option<Self> {
        match v.get_path("outcome").and_then(Value::as_str)? {
            "processed" => Some(Outcome::Processed),
            "duplicate" => Some(Outcome::Duplicate),
            "ignored" => {
                let reason = v.get_path("reason").and_then(Value::as_str)?;
                let why = Ignored::ALL.into_iter().find(|w| w.reason() == reason)?;
                Some(Outcome::Ignored(why))
            }
            _ => None,
        }
    }
}

pub(crate) fn register(f: &mut Functions, _config: &Arc<LinkedUpConfig>) {
    // streamWebhooks.apply (internal): records the delivery key and applies the event in one
    // transaction. Returns {outcome: processed | duplicate | ignored, reason?}.
    f.mutation(
        APPLY,
        Visibility::Internal,
        v::object([
            ("key", v::string()),
            ("action", v::union(ACTIONS.iter().map(|a| v::literal(*a)))),
            ("meetingId", v::string()),
            ("userId", v::optional(v::string())),
            ("createdAt", v::int64()),
        ]),
        v::any(),
        |ctx, a: ApplyArgs| {
            if check_and_record(ctx, "key", &a.key, SCOPE, DEFAULT_TTL_MS)?.is_some() {
                return Ok(Outcome::Duplicate.to_value());
            }
            let outcome = apply(ctx, &a)?.to_value();
            store_result(ctx, &a.key, SCOPE, outcome.clone())?;
            Ok(outcome)
        },
    );
}

fn apply(ctx: &mut Ctx<'_, '_>, a: &ApplyArgs) -> FunctionResult<Outcome> {
    if ctx.parse_id(MEETINGS, &a.meeting_id).is_err() {
        return Ok(Outcome::Ignored(Ignored::NotLinkedUpMeeting));
    }
    let Some(doc) = ctx.get(MEETINGS, &a.meeting_id)? else {
        return Ok(Outcome::Ignored(Ignored::NoSuchMeeting));
    };
    let meeting: Meeting = decode(&doc)?;
    let participant = |ctx: &mut Ctx<'_, '_>| match a.user_id.as_deref() {
        Some(user) if ctx.parse_id(USERS, user).is_ok() => find_participant(ctx, &meeting.id, user),
        _ => Ok(None),
    };
    match a.action.as_str() {
        JOINED => {
            if meeting.state != MeetingStatus::Active {
                return Ok(Outcome::Ignored(Ignored::MeetingNotActive));
            }
            let Some(p) = participant(ctx)? else {
                return Ok(Outcome::Ignored(Ignored::NotParticipant));
            };
            if !apply_presence(ctx, &meeting.id, &p, Presence::Joined, a.created_at)? {
                return Ok(Outcome::Ignored(Ignored::Superseded));
            }
        }
        LEFT => {
            let Some(p) = participant(ctx)? else {
                return Ok(Outcome::Ignored(Ignored::NotParticipant));
            };
            if !apply_presence(ctx, &meeting.id, &p, Presence::Left, a.created_at)? {
                return Ok(Outcome::Ignored(Ignored::Superseded));
            }
        }
        // Everyone leaves, as of the session's end: a participant whose own later event was
        // applied (a new session) stays, and every other one records the end, so that a join
        // from before it arriving late is ignored.
        SESSION_ENDED => {
            for p in list_participants(ctx, &meeting.id)? {
                apply_presence(ctx, &meeting.id, &p, Presence::Left, a.created_at)?;
            }
        }
        // CALL_ENDED: the validator admits only ACTIONS.
        _ => match meeting.state {
            MeetingStatus::Active => conclude(ctx, &meeting, ChangedBy::System(None))?,
            MeetingStatus::Concluded => return Ok(Outcome::Ignored(Ignored::AlreadyConcluded)),
            _ => return Ok(Outcome::Ignored(Ignored::MeetingNotActive)),
        },
    }
    Ok(Outcome::Processed)
}

/// Applies a presence event Stream created at `at` to `p`: `to` (`Joined` or `Left`) through
/// `mark_joined` / `mark_left`, and `at` recorded as the participant's `presenceEventAt`, also
/// when the presence was already `to` (the event is still the latest word on it). Returns false,
/// changing nothing, if an event created at or after `at` was applied already.
///
/// At the same millisecond the event is taken for the one already applied: a retry of that
/// event then changes nothing even if it is not recognised as a duplicate (its body sent
/// differently), and two different events of one participant within a millisecond, which
/// their times cannot order, are applied first come.
fn apply_presence(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    p: &Participant,
    to: Presence,
    at: i64,
) -> FunctionResult<bool> {
    if p.presence_event_at.is_some_and(|last| at <= last) {
        return Ok(false);
    }
    if to == Presence::Joined {
        mark_joined(ctx, meeting_id, p)?;
    } else {
        mark_left(ctx, meeting_id, p)?;
    }
    ctx.patch(
        MEETING_PARTICIPANTS,
        &p.id,
        fields(obj! { "presenceEventAt" => at }),
    )?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// The HTTP route.

struct Receiver {
    http: HttpContext,
    stream: StreamConfig,
    /// Refusals before the signature is checked can come from anyone: their log lines are
    /// thinned (every one is in the metrics as its reply code).
    refusals: parking_lot::Mutex<LogLimit>,
}

/// The answer to one delivery.
enum Reply {
    Applied(Outcome),
    Malformed(String),
    Unauthorized(&'static str),
    TooLarge,
    /// The body did not arrive within `HttpContext::body_read_timeout`.
    TimedOut,
    Unavailable,
    Failed,
}

impl Reply {
    fn status(&self) -> StatusCode {
        match self {
            Reply::Applied(_) => StatusCode::OK,
            Reply::Malformed(_) => StatusCode::BAD_REQUEST,
            Reply::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Reply::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reply::TimedOut => StatusCode::REQUEST_TIMEOUT,
            Reply::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reply::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The outcome label in the call metrics.
    fn code(&self) -> &'static str {
        match self {
            Reply::Applied(Outcome::Processed) => "OK",
            Reply::Applied(Outcome::Duplicate) => "DUPLICATE",
            Reply::Applied(Outcome::Ignored(_)) => "IGNORED",
            Reply::Malformed(_) => "VALIDATION_ERROR",
            Reply::Unauthorized(_) => "UNAUTHORIZED",
            Reply::TooLarge => "PAYLOAD_TOO_LARGE",
            Reply::TimedOut => "TIMEOUT",
            Reply::Unavailable => "UNAVAILABLE",
            Reply::Failed => "INTERNAL",
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            Reply::Applied(Outcome::Processed) => serde_json::json!({ "status": "processed" }),
            Reply::Applied(Outcome::Duplicate) => serde_json::json!({ "status": "duplicate" }),
            Reply::Applied(Outcome::Ignored(why)) => {
                serde_json::json!({ "status": "ignored", "reason": why.reason() })
            }
            Reply::Malformed(why) => serde_json::json!({ "error": why }),
            Reply::Unauthorized(why) => serde_json::json!({ "error": why }),
            Reply::TooLarge => {
                serde_json::json!({ "error": format!("the body exceeds {MAX_BODY_BYTES} bytes") })
            }
            Reply::TimedOut => serde_json::json!({ "error": "the body arrived too slowly" }),
            Reply::Unavailable => serde_json::json!({ "error": "unavailable, retry later" }),
            Reply::Failed => serde_json::json!({ "error": "internal error" }),
        }
    }
}

/// The route, for `Server::start_with_routes` (through `linkedup::http_routes`).
pub(crate) fn routes(config: &LinkedUpConfig) -> AppRoutes {
    let stream = config.stream.clone();
    Box::new(move |http| {
        Router::new()
            .route(PATH, post(receive))
            .with_state(Arc::new(Receiver {
                http,
                stream,
                refusals: parking_lot::Mutex::new(LogLimit::default()),
            }))
    })
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let reply = r.handle(&headers, body).await;
    let metrics = r.http.metrics();
    metrics.record_call(PATH, METRICS_KIND, reply.code(), started.elapsed());
    if let Reply::Applied(Outcome::Ignored(why)) = &reply {
        metrics.count(&IGNORED, why.label());
    }
    let mut response = (reply.status(), Json(reply.body())).into_response();
    if matches!(reply, Reply::TooLarge | Reply::TimedOut) {
        // The body was not read, so the connection cannot carry another request; saying so
        // keeps a client from reusing it (a later request on it would fail mid-send).
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Receiver {
    async fn handle(&self, headers: &HeaderMap, body: Body) -> Reply {
        if self.http.is_shutting_down() {
            return Reply::Unavailable;
        }
        // Unsigned, so it identifies nothing; kept to find a delivery in Stream's dashboard.
        let id = webhook_id(headers);
        let (event, key) = match self.read(headers, body).await {
            Ok(delivery) => delivery,
            Err(reply) => return reply,
        };
        let now = now_millis();
        if is_stale(&event, now) {
            return ignored(&event, id, Ignored::Stale);
        }
        let Some((call, action, user_id)) = target(&event) else {
            return ignored(&event, id, Ignored::EventType);
        };
        // `parse_event` refuses the applied types without it; checked again all the same.
        let Some(created_at) = event.created_at_ms else {
            return Reply::Malformed(format!("a {} event needs created_at", event.kind));
        };
        if created_at > now.saturating_add(MAX_CLOCK_SKEW_MS) {
            tracing::warn!(event = %event.kind, webhook_id = id, created_at,
                "Stream webhook refused: created in the future");
            return Reply::Malformed(format!(
                "created_at is more than {} minutes ahead of the server's clock",
                MAX_CLOCK_SKEW_MS / 60_000
            ));
        }
        if call.call_type != self.stream.provider.call_type() {
            return ignored(&event, id, Ignored::CallType);
        }
        let mut args = super::fields(obj! {
            "key" => key,
            "action" => action,
            "meetingId" => call.call_id.as_str(),
            "createdAt" => created_at,
        });
        if let Some(user) = user_id {
            args.insert("userId".into(), user.into());
        }
        let applied = self.http.engine().mutation(APPLY, Value::from(args), None);
        match applied.await {
            Ok(committed) => match Outcome::from_value(&committed.value) {
                Some(outcome) => {
                    tracing::debug!(event = %event.kind, webhook_id = id,
                        meeting = %call.call_id, ?outcome, "Stream webhook");
                    Reply::Applied(outcome)
                }
                None => {
                    tracing::error!(event = %event.kind, webhook_id = id,
                        value = ?committed.value, "streamWebhooks.apply returned no outcome");
                    Reply::Failed
                }
            },
            Err(e) if self.http.is_shutting_down() || e.code == ErrorCode::RateLimited.as_str() => {
                Reply::Unavailable
            }
            Err(e) => {
                tracing::error!(event = %event.kind, webhook_id = id, error = %e,
                    "cannot apply a Stream webhook");
                Reply::Failed
            }
        }
    }

    /// The verified event and its delivery key, or the refusal.
    async fn read(&self, headers: &HeaderMap, body: Body) -> Result<(Event, String), Reply> {
        let announced =
            header(headers, header::CONTENT_LENGTH.as_str()).and_then(|n| n.parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(Reply::TooLarge);
        }
        // A complete request fails here only by exceeding the limit; an aborted one gets no
        // answer anyway. A body sent a byte at a time would hold the connection for ever.
        let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
        let bytes = tokio::time::timeout(self.http.body_read_timeout(), read)
            .await
            .map_err(|_| Reply::TimedOut)?
            .map_err(|_| Reply::TooLarge)?;
        self.authenticate(headers, &bytes).map_err(|why| {
            if let Some(held_back) = self.refusals.lock().note(Instant::now()) {
                tracing::warn!(reason = why, held_back, "Stream webhook refused");
            }
            Reply::Unauthorized(why)
        })?;
        let event = parse_event(&bytes).map_err(|e| Reply::Malformed(e.to_string()))?;
        Ok((event, delivery_key(&bytes)))
    }

    /// Checks the application and the signature. Stream sends `X-Api-Key` with every
    /// webhook, so with an API key configured a delivery without it, or naming another
    /// application, is refused; without one (development) the header is not looked at.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        let Some(secret) = &self.stream.webhook_secret else {
            return Err("no Stream secret is configured");
        };
        if let Some(expected) = &self.stream.api_key {
            match header(headers, API_KEY_HEADER) {
                None => return Err("missing X-Api-Key"),
                Some(given) if given != expected => return Err("another application's API key"),
                Some(_) => {}
            }
        }
        let signature = header(headers, SIGNATURE_HEADER).ok_or("missing X-Signature")?;
        if !webhook::verify(secret, body, signature) {
            return Err("invalid signature");
        }
        Ok(())
    }
}

/// `X-Webhook-Id`, cut to `MAX_LOGGED_ID` characters, for the log only ("-" without one). A
/// header value that is text is visible ASCII, so cutting at a byte is cutting at a character.
fn webhook_id(headers: &HeaderMap) -> &str {
    header(headers, WEBHOOK_ID_HEADER).map_or("-", |id| &id[..id.len().min(MAX_LOGGED_ID)])
}

/// Whether a verified event is too old to apply: its delivery key is remembered for
/// `DEFAULT_TTL_MS`, so a captured delivery replayed later would no longer be recognised as a
/// duplicate. Its signed `created_at` bounds how late it may arrive; Stream's own retries of a
/// delivery come within minutes.
fn is_stale(event: &Event, now_ms: i64) -> bool {
    event
        .created_at_ms
        .is_some_and(|created| created < now_ms - MAX_EVENT_AGE_MS)
}

/// The call, the action (one of `ACTIONS`) and the user of an event `apply` handles.
fn target(event: &Event) -> Option<(&CallRef, &'static str, Option<&str>)> {
    let call = event.call.as_ref()?;
    match &event.action {
        EventAction::ParticipantJoined { user_id } => Some((call, JOINED, Some(user_id))),
        EventAction::ParticipantLeft { user_id } => Some((call, LEFT, Some(user_id))),
        EventAction::SessionEnded => Some((call, SESSION_ENDED, None)),
        EventAction::CallEnded => Some((call, CALL_ENDED, None)),
        EventAction::Other => None,
    }
}

fn ignored(event: &Event, webhook_id: &str, why: Ignored) -> Reply {
    tracing::debug!(event = %event.kind, webhook_id, reason = why.reason(), "Stream webhook ignored");
    Reply::Applied(Outcome::Ignored(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_survives_the_mutation_s_result() {
        let outcomes = [Outcome::Processed, Outcome::Duplicate]
            .into_iter()
            .chain(Ignored::ALL.into_iter().map(Outcome::Ignored));
        for outcome in outcomes {
            let value = outcome.to_value();
            assert_eq!(Outcome::from_value(&value), Some(outcome));
        }
        let labels: std::collections::BTreeSet<_> =
            Ignored::ALL.iter().map(|why| why.label()).collect();
        assert_eq!(labels.len(), Ignored::ALL.len(), "labels are distinct");
    }
}
