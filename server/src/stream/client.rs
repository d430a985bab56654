//! Stream Video's server-side REST API over reqwest: what a room needs (upsert the users it
//! names, `POST /api/v2/users`, and get-or-create the call,
//! `POST /api/v2/video/call/{type}/{id}`), ending the call (`…/mark_ended`), and keeping its
//! members in line with the meeting's participants (`…/members`, `…/block`, `…/unblock`).
//!
//! As Stream's server SDKs do, every request carries the `api_key` query parameter, a server
//! token (HS256 JWT `{"server": true}` signed with the API secret) in `Authorization` and
//! `stream-auth-type: jwt`. Bounded: a timeout per attempt, a few attempts with jittered
//! exponential backoff (honouring `Retry-After`) on 429, 5xx and unreachability only, an
//! overall time budget below the engine's action limit, and a response size limit.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value as Json};
use tokio::time::Instant;

use super::provider::{MemberChange, RoomMember, RoomRequest};
use super::{call_cid, is_call_id, Secret, StreamError, DEFAULT_BASE_URL, DEFAULT_CALL_TYPE};
use crate::provider_http::{
    describe, excerpt, read_capped, retry_after, with_retries, BodyError, Failure, RetryPolicy,
};

/// The user upsert endpoint.
pub const USERS_PATH: &str = "/api/v2/users";
/// Calls live under `{CALL_PATH}/{type}/{id}`.
pub const CALL_PATH: &str = "/api/v2/video/call";

/// How to reach Stream's API, and the bounds of each call.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// `https://…` without a trailing path (a test's fake server may be `http://`).
    pub base_url: String,
    /// The application's public API key (`api_key` query parameter).
    pub api_key: String,
    /// Signs the server token; never sent.
    pub api_secret: Secret,
    pub call_type: String,
    /// Per attempt, connecting to reading the whole response.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles per retry up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest a room creation may take, all requests and retries included. Below the
    /// engine's action time limit (60 s), so a slow Stream fails the action with
    /// `PROVIDER_ERROR` rather than a timeout.
    pub total_budget: Duration,
    pub max_response_bytes: usize,
}

impl ApiSettings {
    /// Stream's production API with the default call type and bounds.
    pub fn new(api_key: impl Into<String>, api_secret: Secret) -> Self {
        ApiSettings {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key: api_key.into(),
            api_secret,
            call_type: DEFAULT_CALL_TYPE.to_string(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 3,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(4),
            total_budget: Duration::from_secs(30),
            max_response_bytes: 1 << 20,
        }
    }
}

/// A client for Stream's REST API. Cheap to clone.
#[derive(Clone)]
pub struct StreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    settings: ApiSettings,
    /// `base_url` without a trailing slash.
    base: String,
    /// The server token, made once: it carries no expiry (as Stream's SDKs make it).
    server_token: String,
}

// The secret and the token derived from it never reach a log line.
impl fmt::Debug for StreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("StreamClient")
            .field("base_url", &s.base_url)
            .field("api_key", &s.api_key)
            .field("call_type", &s.call_type)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize)]
struct ServerClaims {
    server: bool,
}

impl StreamClient {
    /// Checks the settings and prepares the HTTP client and server token.
    pub fn new(settings: ApiSettings) -> Result<Self, StreamError> {
        let invalid = |what: &str| Err(StreamError::InvalidRequest(what.to_string()));
        let base = settings.base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return invalid("the base URL must be an http(s) URL");
        }
        if settings.api_key.trim().is_empty() {
            return invalid("the API key is empty");
        }
        if settings.api_secret.expose().is_empty() {
            return invalid("the API secret is empty");
        }
        if !is_call_id(&settings.call_type) {
            return invalid("the call type must be 1 to 64 of a-z A-Z 0-9 _ -");
        }
        if settings.max_attempts == 0 {
            return invalid("at least one attempt is needed");
        }
        let server_token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &ServerClaims { server: true },
            &EncodingKey::from_secret(settings.api_secret.expose().as_bytes()),
        )
        .map_err(|e| StreamError::InvalidRequest(format!("cannot sign the server token: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            // The token goes to the configured host only.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StreamError::Transport(describe(&e)))?;
        Ok(StreamClient {
            inner: Arc::new(Inner {
                http,
                settings,
                base,
                server_token,
            }),
        })
    }

    pub fn call_type(&self) -> &str {
        &self.inner.settings.call_type
    }

    /// Upserts the users the room names, then gets or creates the call whose id is the
    /// meeting id, and returns its cid. Both requests are idempotent: a retry, or a second
    /// room request for the same meeting, finds the same call.
    pub async fn get_or_create_call(&self, request: &RoomRequest) -> Result<String, StreamError> {
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.total_budget;
        self.post(USERS_PATH, &users_body(request), deadline)
            .await?;
        let path = format!("{CALL_PATH}/{}/{}", settings.call_type, request.meeting_id);
        let response = self.post(&path, &call_body(request), deadline).await?;
        let expected = call_cid(&settings.call_type, &request.meeting_id);
        match response.pointer("/call/cid").and_then(Json::as_str) {
            Some(cid) if cid == expected => Ok(expected),
            Some(cid) => Err(StreamError::BadResponse(format!(
                "asked for call {expected}, got {}",
                excerpt(cid)
            ))),
            None => Err(StreamError::BadResponse(
                "no call.cid in the response".into(),
            )),
        }
    }

    /// Ends the meeting's call for everyone in it (`POST …/{type}/{id}/mark_ended`; Stream then
    /// sends `call.ended`). Ending an ended call again is harmless.
    pub async fn end_call(&self, meeting_id: &str) -> Result<(), StreamError> {
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.total_budget;
        let path = format!("{CALL_PATH}/{}/{meeting_id}/mark_ended", settings.call_type);
        self.post(&path, &json!({}), deadline).await.map(drop)
    }

    /// Applies one membership change to the meeting's call, every request idempotent:
    /// - `Set`: upserts the user (as room creation does, so a participant the room was not
    ///   created with exists on Stream), lifts their block if asked (`POST …/unblock`
    ///   `{"user_id"}`), then sets their call role
    ///   (`POST …/members` `{"update_members": [{"user_id", "role"}]}`);
    /// - `Remove`: blocks the user (`POST …/block` `{"user_id"}`), which is what keeps their
    ///   call token from admitting them, then removes them
    ///   (`POST …/members` `{"remove_members": [id]}`). Blocking goes first so that a removal
    ///   cut short never leaves the user able to join.
    ///
    /// All requests share one `total_budget`; each is retried as `post` allows.
    pub async fn change_member(
        &self,
        meeting_id: &str,
        change: &MemberChange,
    ) -> Result<(), StreamError> {
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.total_budget;
        let call = format!("{CALL_PATH}/{}/{meeting_id}", settings.call_type);
        match change {
            MemberChange::Set { member, unblock } => {
                self.post(USERS_PATH, &member_user_body(member), deadline)
                    .await?;
                if *unblock {
                    let body = json!({ "user_id": member.user_id });
                    self.post(&format!("{call}/unblock"), &body, deadline)
                        .await?;
                }
                let body = json!({ "update_members": [
                    { "user_id": member.user_id, "role": member.call_role() },
                ]});
                self.post(&format!("{call}/members"), &body, deadline)
                    .await
                    .map(drop)
            }
            MemberChange::Remove { user_id } => {
                let body = json!({ "user_id": user_id });
                self.post(&format!("{call}/block"), &body, deadline).await?;
                let body = json!({ "remove_members": [user_id] });
                self.post(&format!("{call}/members"), &body, deadline)
                    .await
                    .map(drop)
            }
        }
    }

    /// POSTs `body` to `path`, retrying what `StreamError::is_retryable` allows while
    /// attempts and time remain. Returns the response's JSON object.
    async fn post(&self, path: &str, body: &Json, deadline: Instant) -> Result<Json, StreamError> {
        let url = format!("{}{path}", self.inner.base);
        let bytes = serde_json::to_vec(body)
            .map_err(|e| StreamError::InvalidRequest(format!("cannot encode the body: {e}")))?;
        let settings = &self.inner.settings;
        let policy = RetryPolicy {
            max_attempts: settings.max_attempts,
            backoff_base: settings.backoff_base,
            backoff_max: settings.backoff_max,
        };
        with_retries(&policy, deadline, path, || async {
            self.attempt(&url, &bytes)
                .await
                .map_err(|(error, retry_after)| {
                    if error.is_retryable() {
                        Failure::Retryable { error, retry_after }
                    } else {
                        Failure::Fatal(error)
                    }
                })
        })
        .await
        .map_err(|gave_up| {
            if gave_up.exhausted {
                StreamError::GaveUp {
                    attempts: gave_up.attempts,
                    last: Box::new(gave_up.error),
                }
            } else {
                gave_up.error
            }
        })
    }

    /// One request; a failure comes with the wait Stream asked for, if any.
    async fn attempt(
        &self,
        url: &str,
        body: &[u8],
    ) -> Result<Json, (StreamError, Option<Duration>)> {
        let settings = &self.inner.settings;
        let response = self
            .inner
            .http
            .post(url)
            .query(&[("api_key", settings.api_key.as_str())])
            .header(reqwest::header::AUTHORIZATION, &self.inner.server_token)
            .header("stream-auth-type", "jwt")
            .header(
                "x-stream-client",
                concat!("linkedup-server-", env!("CARGO_PKG_VERSION")),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| (StreamError::Transport(describe(&e)), None))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = read_capped(response, settings.max_response_bytes)
            .await
            .map_err(|e| {
                let error = match e {
                    BodyError::TooLarge => StreamError::TooLarge {
                        limit: settings.max_response_bytes,
                    },
                    BodyError::Transport(why) => StreamError::Transport(why),
                };
                (error, None)
            })?;
        if !status.is_success() {
            let error = StreamError::Api {
                status: status.as_u16(),
                message: api_message(&bytes),
            };
            return Err((error, retry_after));
        }
        match serde_json::from_slice::<Json>(&bytes) {
            Ok(json) if json.is_object() => Ok(json),
            Ok(_) => Err((StreamError::BadResponse("not a JSON object".into()), None)),
            Err(e) => Err((StreamError::BadResponse(format!("not JSON: {e}")), None)),
        }
    }
}

/// Stream's error message (`{"code", "message", ...}`), shortened; the raw body if it is not
/// JSON.
fn api_message(body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<Json>(body).ok();
    match parsed
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Json::as_str)
    {
        Some(message) => excerpt(message),
        None => excerpt(&String::from_utf8_lossy(body)),
    }
}

/// `{"users": {id: {"id", "name"?}}}`: the creator and the members.
fn users_body(request: &RoomRequest) -> Json {
    let mut users: BTreeMap<&str, Json> = BTreeMap::new();
    users.insert(&request.created_by, json!({ "id": request.created_by }));
    for m in &request.members {
        users.insert(&m.user_id, user_json(m));
    }
    json!({ "users": users })
}

/// `{"users": {id: {"id", "name"?}}}` for one member.
fn member_user_body(member: &RoomMember) -> Json {
    json!({ "users": { member.user_id.as_str(): user_json(member) } })
}

/// A member's Stream user record: `{"id", "name"?}`.
fn user_json(member: &RoomMember) -> Json {
    let mut user = Map::new();
    user.insert("id".into(), json!(member.user_id));
    if let Some(name) = &member.name {
        user.insert("name".into(), json!(name));
    }
    Json::Object(user)
}

/// The get-or-create body: creator, members (hosts with the `host` call role) and custom data
/// naming the meeting.
fn call_body(request: &RoomRequest) -> Json {
    let members: Vec<Json> = request
        .members
        .iter()
        .map(|m| {
            if m.host {
                json!({ "user_id": m.user_id, "role": "host" })
            } else {
                json!({ "user_id": m.user_id })
            }
        })
        .collect();
    let mut custom = Map::new();
    custom.insert("meetingId".into(), json!(request.meeting_id));
    custom.insert("title".into(), json!(request.title));
    if let Some(org) = &request.org_id {
        custom.insert("orgId".into(), json!(org));
    }
    json!({
        "data": {
            "created_by_id": request.created_by,
            "members": members,
            "custom": custom,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::RoomMember;

    fn settings() -> ApiSettings {
        ApiSettings::new("key", Secret::new("secret"))
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut s = settings();
        s.base_url = "ftp://x".into();
        assert!(StreamClient::new(s).is_err());
        let mut s = settings();
        s.call_type = "a:b".into();
        assert!(StreamClient::new(s).is_err());
        assert!(StreamClient::new(ApiSettings::new("key", Secret::new(""))).is_err());
        assert!(StreamClient::new(ApiSettings::new(" ", Secret::new("s"))).is_err());
        let client = StreamClient::new(settings()).unwrap();
        let printed = format!("{client:?}");
        assert!(!printed.contains("secret") && !printed.contains(&client.inner.server_token));
    }

    #[test]
    fn bodies_carry_creator_members_roles_and_meeting() {
        let request = RoomRequest {
            meeting_id: "m1".into(),
            created_by: "u1".into(),
            members: vec![
                RoomMember {
                    user_id: "u1".into(),
                    name: Some("Ann".into()),
                    host: true,
                },
                RoomMember {
                    user_id: "u2".into(),
                    name: None,
                    host: false,
                },
            ],
            title: "Standup".into(),
            org_id: Some("org1".into()),
        };
        assert_eq!(
            users_body(&request),
            json!({ "users": { "u1": { "id": "u1", "name": "Ann" }, "u2": { "id": "u2" } } })
        );
        assert_eq!(
            call_body(&request),
            json!({ "data": {
                "created_by_id": "u1",
                "members": [{ "user_id": "u1", "role": "host" }, { "user_id": "u2" }],
                "custom": { "meetingId": "m1", "title": "Standup", "orgId": "org1" },
            }})
        );
    }

    #[test]
    fn error_messages_are_stream_s_shortened() {
        assert_eq!(
            api_message(br#"{"code":4,"message":"bad\nthing","StatusCode":400}"#),
            "bad thing"
        );
        assert_eq!(api_message(b"<html>"), "<html>");
        assert_eq!(api_message(&[b'x'; 500]).len(), 200);
    }
}
