//! Stream's webhooks, as its docs specify them: the body is signed with HMAC-SHA256 under the
//! API secret, hex-encoded in `X-Signature`; `X-Webhook-Id` is the same on every retry of one
//! delivery; `X-Api-Key` names the application. Only the body is signed, so a delivery is
//! deduplicated by a digest of its body (`delivery_key`), never by a header a replayer could
//! change; `X-Webhook-Id` is only logged. `verify` checks a signature in constant time;
//! `parse_event` reads the call events LinkedUp reacts to.

use ring::hmac;
use serde::Deserialize;

use super::Secret;
use crate::hex::{hex, sha256_hex};

pub const SIGNATURE_HEADER: &str = "x-signature";
pub const API_KEY_HEADER: &str = "x-api-key";
pub const WEBHOOK_ID_HEADER: &str = "x-webhook-id";

pub const CALL_ENDED: &str = "call.ended";
pub const SESSION_ENDED: &str = "call.session_ended";
pub const PARTICIPANT_JOINED: &str = "call.session_participant_joined";
pub const PARTICIPANT_LEFT: &str = "call.session_participant_left";

/// Bytes of an HMAC-SHA256.
const SIGNATURE_BYTES: usize = 32;

fn key(secret: &Secret) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes())
}

/// The `X-Signature` Stream sends with `body`: lowercase hex HMAC-SHA256 under the secret.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    hex(hmac::sign(&key(secret), body).as_ref())
}

/// Whether `signature` (hex, either case) is the body's signature under `secret`. The
/// comparison is constant-time (`ring::hmac::verify`).
pub fn verify(secret: &Secret, body: &[u8], signature: &str) -> bool {
    match decode_hex(signature.trim()) {
        Some(tag) => hmac::verify(&key(secret), body, &tag).is_ok(),
        None => false,
    }
}

fn decode_hex(s: &str) -> Option<[u8; SIGNATURE_BYTES]> {
    if s.len() != 2 * SIGNATURE_BYTES || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; SIGNATURE_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The deduplication key of a delivery: a digest of its verified body, which the signature
/// covers. Stream sends a retry with the same body, so a retry or a replay of a captured
/// delivery (whatever its `X-Webhook-Id`) has the key of the first.
pub fn delivery_key(body: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(body))
}

/// A call a webhook is about (`call_cid` = `<type>:<id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRef {
    pub call_type: String,
    pub call_id: String,
}

/// What a verified webhook asks LinkedUp to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// `call.session_participant_joined`: the user is in the call.
    ParticipantJoined { user_id: String },
    /// `call.session_participant_left`.
    ParticipantLeft { user_id: String },
    /// `call.session_ended`: nobody is in the call any more.
    SessionEnded,
    /// `call.ended`: the call is over for good.
    CallEnded,
    /// Any other event (`call.session_started` included: starting a meeting is its host's
    /// decision, not the first connection's); acknowledged and ignored.
    Other,
}

/// A webhook's event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event's `type`, e.g. `call.ended`.
    pub kind: String,
    /// When Stream created the event (`created_at`, RFC 3339), in ms since the epoch. Always
    /// set for the events LinkedUp applies (`parse_event` refuses them without); `None` if an
    /// event of another type carries none.
    pub created_at_ms: Option<i64>,
    /// `None` for events not about a call (their action is `Other`).
    pub call: Option<CallRef>,
    pub action: EventAction,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("the event has no type")]
    MissingType,
    #[error("a {kind} event needs {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("call_cid {0:?} is not <type>:<id>")]
    BadCallCid(String),
    #[error("created_at {0:?} is not an RFC 3339 time")]
    BadCreatedAt(String),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    call_cid: Option<String>,
    created_at: Option<String>,
    participant: Option<RawParticipant>,
}

#[derive(Deserialize)]
struct RawParticipant {
    user: Option<RawUser>,
}

#[derive(Deserialize)]
struct RawUser {
    id: Option<String>,
}

/// An RFC 3339 time in ms since the epoch.
fn parse_time(s: &str) -> Result<i64, WebhookError> {
    let bad = || WebhookError::BadCreatedAt(s.chars().take(64).collect());
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

/// Reads a webhook body. Unknown event types are `Other`; a known one missing what LinkedUp
/// needs (its call, its signed `created_at`, its participant's user id) is malformed.
pub fn parse_event(body: &[u8]) -> Result<Event, WebhookError> {
    let raw: RawEvent =
        serde_json::from_slice(body).map_err(|e| WebhookError::NotJson(e.to_string()))?;
    let kind = raw
        .kind
        .filter(|k| !k.is_empty())
        .ok_or(WebhookError::MissingType)?;
    let created_at_ms = raw.created_at.as_deref().map(parse_time).transpose()?;
    let known: &'static str = match kind.as_str() {
        PARTICIPANT_JOINED => PARTICIPANT_JOINED,
        PARTICIPANT_LEFT => PARTICIPANT_LEFT,
        SESSION_ENDED => SESSION_ENDED,
        CALL_ENDED => CALL_ENDED,
        _ => {
            let call = raw.call_cid.as_deref().and_then(|c| split_cid(c).ok());
            return Ok(Event {
                kind,
                created_at_ms,
                call,
                action: EventAction::Other,
            });
        }
    };
    let cid = raw.call_cid.ok_or(WebhookError::MissingField {
        kind: known,
        field: "call_cid",
    })?;
    let call = split_cid(&cid)?;
    // The signed time is what bounds a replay (too old: refused as stale) and orders
    // presence events; an applied event without it could be replayed for ever.
    if created_at_ms.is_none() {
        return Err(WebhookError::MissingField {
            kind: known,
            field: "created_at",
        });
    }
    let user_id = || {
        raw.participant
            .and_then(|p| p.user)
            .and_then(|u| u.id)
            .filter(|id| !id.is_empty())
            .ok_or(WebhookError::MissingField {
                kind: known,
                field: "participant.user.id",
            })
    };
    let action = match known {
        PARTICIPANT_JOINED => EventAction::ParticipantJoined {
            user_id: user_id()?,
        },
        PARTICIPANT_LEFT => EventAction::ParticipantLeft {
            user_id: user_id()?,
        },
        SESSION_ENDED => EventAction::SessionEnded,
        _ => EventAction::CallEnded,
    };
    Ok(Event {
        kind,
        created_at_ms,
        call: Some(call),
        action,
    })
}

fn split_cid(cid: &str) -> Result<CallRef, WebhookError> {
    match cid.split_once(':') {
        Some((t, id)) if !t.is_empty() && !id.is_empty() => Ok(CallRef {
            call_type: t.to_string(),
            call_id: id.to_string(),
        }),
        _ => Err(WebhookError::BadCallCid(cid.chars().take(100).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_same_body_and_secret() {
        let secret = Secret::new("s3cret");
        let body = br#"{"type":"call.ended","call_cid":"default:m1"}"#;
        let sig = sign(&secret, body);
        assert_eq!(sig.len(), 64);
        assert!(verify(&secret, body, &sig));
        assert!(verify(&secret, body, &sig.to_uppercase()));
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        assert!(!verify(&secret, &tampered, &sig));
        assert!(!verify(&Secret::new("other"), body, &sig));
        for bad in ["", "zz", &sig[..62], &format!("{sig}00"), &"é".repeat(32)] {
            assert!(!verify(&secret, body, bad), "{bad:?}");
        }
    }

    #[test]
    fn a_known_value_matches_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = sign(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn deliveries_are_keyed_by_their_body() {
        let key = delivery_key(b"x");
        assert!(key.starts_with("sha256:") && key.len() == 7 + 64);
        assert_eq!(delivery_key(b"x"), key);
        assert_ne!(delivery_key(b"y"), key);
    }

    #[test]
    fn the_call_events_linkedup_uses_are_read() {
        let joined = br#"{"type":"call.session_participant_joined","call_cid":"default:m1",
            "created_at":"2024-01-01T00:00:00Z","session_id":"s1",
            "participant":{"user":{"id":"u1","name":"Ann"},"user_session_id":"x","role":"user"}}"#;
        assert_eq!(
            parse_event(joined).unwrap(),
            Event {
                kind: PARTICIPANT_JOINED.into(),
                created_at_ms: Some(1_704_067_200_000),
                call: Some(CallRef {
                    call_type: "default".into(),
                    call_id: "m1".into()
                }),
                action: EventAction::ParticipantJoined {
                    user_id: "u1".into()
                },
            }
        );
        let left = br#"{"type":"call.session_participant_left","call_cid":"default:m1",
            "created_at":"2024-01-01T00:00:01Z","participant":{"user":{"id":"u1"}},
            "duration_seconds":3}"#;
        assert_eq!(
            parse_event(left).unwrap().action,
            EventAction::ParticipantLeft {
                user_id: "u1".into()
            }
        );
        let ended = br#"{"type":"call.ended","call_cid":"default:m1",
            "created_at":"2024-01-01T00:00:02Z","call":{"cid":"default:m1"}}"#;
        assert_eq!(parse_event(ended).unwrap().action, EventAction::CallEnded);
        let session = br#"{"type":"call.session_ended","call_cid":"default:m1",
            "created_at":"2024-01-01T00:00:02Z","session_id":"s"}"#;
        assert_eq!(
            parse_event(session).unwrap().action,
            EventAction::SessionEnded
        );
        // Events LinkedUp does not apply need no created_at.
        let started = br#"{"type":"call.session_started","call_cid":"default:m1"}"#;
        assert_eq!(parse_event(started).unwrap().action, EventAction::Other);
        let chat = br#"{"type":"message.new","message":{}}"#;
        let other = parse_event(chat).unwrap();
        assert_eq!((other.action, other.call), (EventAction::Other, None));
    }

    #[test]
    fn malformed_events_are_refused() {
        assert!(matches!(
            parse_event(b"not json"),
            Err(WebhookError::NotJson(_))
        ));
        assert!(matches!(parse_event(b"[1]"), Err(WebhookError::NotJson(_))));
        assert!(matches!(
            parse_event(
                br#"{"type":"call.ended","call_cid":"default:m1","created_at":"yesterday"}"#
            ),
            Err(WebhookError::BadCreatedAt(_))
        ));
        assert_eq!(
            parse_event(br#"{"type":"call.ended","call_cid":"default:m1","created_at":"2024-01-01T00:00:00.5+01:00"}"#)
                .unwrap()
                .created_at_ms,
            Some(1_704_063_600_500)
        );
        assert_eq!(parse_event(b"{}"), Err(WebhookError::MissingType));
        assert_eq!(
            parse_event(br#"{"type":"call.ended"}"#),
            Err(WebhookError::MissingField {
                kind: CALL_ENDED,
                field: "call_cid"
            })
        );
        assert!(matches!(
            parse_event(br#"{"type":"call.ended","call_cid":"nocolon"}"#),
            Err(WebhookError::BadCallCid(_))
        ));
        // The events LinkedUp applies need their signed time.
        for kind in [
            PARTICIPANT_JOINED,
            PARTICIPANT_LEFT,
            SESSION_ENDED,
            CALL_ENDED,
        ] {
            let body = format!(
                r#"{{"type":"{kind}","call_cid":"default:m1","participant":{{"user":{{"id":"u1"}}}}}}"#
            );
            assert_eq!(
                parse_event(body.as_bytes()),
                Err(WebhookError::MissingField {
                    kind,
                    field: "created_at"
                }),
                "{kind}"
            );
        }
        assert_eq!(
            parse_event(br#"{"type":"call.session_participant_left","call_cid":"default:m1","created_at":"2024-01-01T00:00:00Z","participant":{}}"#),
            Err(WebhookError::MissingField {
                kind: PARTICIPANT_LEFT,
                field: "participant.user.id"
            })
        );
    }
}
