//! The typed contract of LinkedUp's public functions: their names, argument and result types
//! (serde, camelCase on the wire), and the document types they return. The server decodes
//! arguments into these types and the client SDK encodes them, so both agree by construction.
//!
//! Optional fields are omitted when `None`, never sent as null: the engine's validators treat
//! an optional field as "may be absent", and null is not a string.

pub mod ai;
pub mod blocks;
pub mod erasure;
pub mod matching;
pub mod notes;
pub mod transcripts;

use serde::{Deserialize, Serialize};

use query_engine::value::Value;

/// Function names, as clients call them.
pub mod fns {
    pub const USERS_ME: &str = "users.me";
    pub const USERS_ENSURE: &str = "users.ensure";
    pub const USERS_HEARTBEAT: &str = "users.heartbeat";
    pub const PROFILES_GET: &str = "profiles.get";
    pub const PROFILES_UPDATE: &str = "profiles.update";
    pub const INTERESTS_LIST: &str = "interests.list";
    pub const INTERESTS_SET_MINE: &str = "interests.setMine";
    pub const CONNECTIONS_REQUEST: &str = "connections.request";
    pub const CONNECTIONS_ACCEPT: &str = "connections.accept";
    pub const CONNECTIONS_DECLINE: &str = "connections.decline";
    pub const CONNECTIONS_LIST: &str = "connections.list";
    pub const MEETINGS_SCHEDULE: &str = "meetings.schedule";
    pub const MEETINGS_START: &str = "meetings.start";
    pub const MEETINGS_END: &str = "meetings.end";
    pub const MEETINGS_CANCEL: &str = "meetings.cancel";
    pub const MEETINGS_JOIN: &str = "meetings.join";
    pub const MEETINGS_LEAVE: &str = "meetings.leave";
    pub const MEETINGS_ADD_PARTICIPANT: &str = "meetings.addParticipant";
    pub const MEETINGS_REMOVE_PARTICIPANT: &str = "meetings.removeParticipant";
    pub const MEETINGS_SET_ROLE: &str = "meetings.setRole";
    pub const MEETINGS_GET: &str = "meetings.get";
    pub const MEETINGS_LIST_PARTICIPANTS: &str = "meetings.listParticipants";
    pub const MEETINGS_GET_STATE: &str = "meetings.getState";
    pub const MEETINGS_LIST_MINE: &str = "meetings.listMine";
    pub const CHAT_SEND: &str = "chat.send";
    pub const CHAT_LIST: &str = "chat.list";
    pub const CHAT_RECENT: &str = "chat.recent";
    pub const FLAGS_GET: &str = "flags.get";
    pub const FLAGS_SET: &str = "flags.set";
    pub const AUDIT_QUERY: &str = "audit.query";
    pub const MEETINGS_CREATE_STREAM_ROOM: &str = "meetings.createStreamRoom";
    pub const MEETINGS_STREAM_CALL_TOKEN: &str = "meetings.streamCallToken";
}

/// Feature flag keys: one per capability (seed §22).
/// All of them turn a capability on, except `stream/paused`, the Stream-outage switch of the
/// runbook (seed §23): on, it stops `meetings.streamCallToken` minting call tokens.
pub const FLAG_KEYS: [&str; 5] = [
    "precall/ai",
    "incall/ai",
    "insights/postcall",
    "matching",
    "stream/paused",
];
/// Environments a flag may be set for (seed §15).
pub const ENVIRONMENTS: [&str; 3] = ["local", "staging", "prod"];

/// Bounds the server enforces on arguments.
pub mod limits {
    /// Chat message length in chars.
    pub const MAX_MESSAGE_CHARS: usize = 4_000;
    /// Most rows `chat.recent` / `chat.list` return per call.
    pub const MAX_CHAT_PAGE: i64 = 100;
    /// Most bytes (the engine's value size) of one message's attachments, together. They
    /// describe files (a link, a name, a type), not carry them: bounded so that a full page
    /// of `MAX_CHAT_PAGE` messages stays far below a query's result limit.
    pub const MAX_ATTACHMENT_BYTES: usize = 8 * 1024;
    /// Most participants one meeting may have.
    pub const MAX_PARTICIPANTS: usize = 256;
    /// Most invitees `meetings.schedule` accepts.
    pub const MAX_INVITEES: usize = 50;
    /// Most meetings `meetings.listMine` returns.
    pub const MAX_LIST_MINE: i64 = 100;
    /// Most interests a user may hold.
    pub const MAX_INTERESTS: usize = 50;
    /// Most connections `connections.list` returns.
    pub const MAX_CONNECTIONS_LISTED: usize = 200;
    /// Most audit entries `audit.query` returns.
    pub const MAX_AUDIT_ROWS: i64 = 200;
    /// Longest title, description, bio and similar free text, in chars.
    pub const MAX_TEXT_CHARS: usize = 4_000;
}

// ---------------------------------------------------------------------------------------------
// Documents as functions return them (system fields `_id`, `_creationTime` included).

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub workos_user_id: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    pub is_active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure_requested_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub user_id: String,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goals: Option<String>,
    pub languages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interest {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub key: String,
    pub label: String,
    pub category: String,
    pub created_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConnectionStatus {
    Pending,
    Accepted,
    Declined,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Pending => "pending",
            ConnectionStatus::Accepted => "accepted",
            ConnectionStatus::Declined => "declined",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    /// The smaller user id of the pair (string order).
    pub user_a: String,
    /// The larger user id of the pair.
    pub user_b: String,
    pub requested_by: String,
    pub status: ConnectionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responded_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MeetingStatus {
    Scheduled,
    Active,
    Concluded,
    Cancelled,
}

impl MeetingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MeetingStatus::Scheduled => "scheduled",
            MeetingStatus::Active => "active",
            MeetingStatus::Concluded => "concluded",
            MeetingStatus::Cancelled => "cancelled",
        }
    }

    /// Not over yet: scheduled or active.
    pub fn is_open(self) -> bool {
        matches!(self, MeetingStatus::Scheduled | MeetingStatus::Active)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meeting {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub organizer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<i64>,
    /// Planned length in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_room_id: Option<String>,
    pub state: MeetingStatus,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A participant's role. A host holds every participant right as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Participant,
    Host,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Participant => "participant",
            Role::Host => "host",
        }
    }

    /// Whether holding `self` grants what `required` grants (host ⊇ participant).
    pub fn satisfies(self, required: Role) -> bool {
        self >= required
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Presence {
    Invited,
    Joined,
    Left,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Invited => "invited",
            Presence::Joined => "joined",
            Presence::Left => "left",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub meeting_id: String,
    pub user_id: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at: Option<i64>,
    pub presence: Presence,
    /// When Stream created the last presence event applied to the participant (its
    /// webhook's `created_at`, ms); older ones are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_event_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LullState {
    pub detected: bool,
    pub last_activity: i64,
    pub duration: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeetingState {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub meeting_id: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaking_stats: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lull_state: Option<LullState>,
    pub topics: Vec<String>,
    pub recording_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_count: Option<i64>,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub meeting_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Value>>,
    pub timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditLog {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub resource_type: String,
    pub resource_id: String,
    pub action: String,
    pub metadata: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureFlag {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub key: String,
    pub value: Value,
    pub environment: String,
    /// `"global"` or `"org:<orgId>"`.
    pub scope: String,
    pub rollout_percentage: f64,
    pub updated_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

// ---------------------------------------------------------------------------------------------
// Arguments.

/// Arguments of functions that take none (`users.me`, `users.ensure`, `profiles.get`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoArgs {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureUserArgs {
    /// Used only when the user document is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateProfileArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListInterestsArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetInterestsArgs {
    pub keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdArgs {
    pub user_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionIdArgs {
    pub connection_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListConnectionsArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConnectionStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleMeetingArgs {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<i64>,
    /// Planned length in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    /// Users invited as participants (presence `invited`); the caller becomes the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitee_ids: Option<Vec<String>>,
    /// A retry with the same key returns the first call's meeting id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeetingIdArgs {
    pub meeting_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddParticipantArgs {
    pub meeting_id: String,
    pub user_id: String,
    /// Defaults to `participant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantArgs {
    pub meeting_id: String,
    pub user_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetRoleArgs {
    pub meeting_id: String,
    pub user_id: String,
    pub role: Role,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMineArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MeetingStatus>,
    /// 1..=100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageArgs {
    pub meeting_id: String,
    /// 1..=4000 chars.
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Value>>,
    /// A retry with the same id returns the first call's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMessagesArgs {
    pub meeting_id: String,
    /// From a previous page's `continueCursor`; absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1..=100.
    pub num_items: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentMessagesArgs {
    pub meeting_id: String,
    /// 1..=100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// A page of a paginated list: `continueCursor` fetches the next; absent when `isDone`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub page: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_cursor: Option<String>,
    pub is_done: bool,
}

/// A page of messages, newest first.
pub type MessagePage = Page<Message>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetFlagArgs {
    pub key: String,
    pub environment: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetFlagArgs {
    pub key: String,
    pub environment: String,
    pub value: Value,
    /// 0.0..=100.0, default 100.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_percentage: Option<f64>,
    /// Why the operator changed the flag; recorded in the audit log. Required.
    pub reason: String,
}

/// A flag as `flags.get` resolves it for the caller: the organisation's override if there is
/// one, else the global value, else `null` (the capability is off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagValue {
    pub key: String,
    pub environment: String,
    pub value: Value,
    pub rollout_percentage: f64,
    pub scope: String,
    pub updated_at: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQueryArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Inclusive lower bound on `timestamp` (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Exclusive upper bound on `timestamp` (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// 1..=200, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// `meetings.streamCallToken`'s result: what a participant's video client joins the meeting's
/// call with — Stream's `apiKey` (absent with the local provider), the call, the Stream user
/// id (the LinkedUp user id) and a token admitting that user to this call only, until
/// `expiresAt` (ms since the epoch); ask again for a fresh one before then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamCallToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    pub call_type: String,
    pub call_id: String,
    pub call_cid: String,
    pub user_id: String,
    pub token: String,
    pub expires_at: i64,
}

/// `meetings.createStreamRoom`'s result: the meeting's Stream room (the call's cid,
/// `<call type>:<meeting id>`), as `meetings.get` also shows it in `streamRoomId`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRoom {
    pub room_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use query_engine::json::{from_value, to_value};

    #[test]
    fn absent_optionals_are_omitted_not_null() {
        let a = ScheduleMeetingArgs {
            title: "t".into(),
            ..Default::default()
        };
        let v = to_value(&a).unwrap();
        assert_eq!(v, query_engine::obj! { "title" => "t" });
        let back: ScheduleMeetingArgs = from_value(&v).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn roles_are_ordered_host_above_participant() {
        assert!(Role::Host.satisfies(Role::Participant));
        assert!(Role::Host.satisfies(Role::Host));
        assert!(!Role::Participant.satisfies(Role::Host));
        assert_eq!(
            to_value(&Role::Host).unwrap(),
            query_engine::value::Value::from("host")
        );
    }
}
