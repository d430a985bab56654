//! The wire contract of the matching functions (seed §11): names, arguments, results, the
//! match record stored on a queue entry, and the bounds the server enforces. Shared by the
//! server and clients so both agree by construction.

use serde::{Deserialize, Serialize};

/// Function names, as clients call them.
pub mod fns {
    pub const ENTER_QUEUE: &str = "matching.enterQueue";
    pub const LEAVE_QUEUE: &str = "matching.leaveQueue";
    pub const STATUS: &str = "matching.status";
    pub const RESPOND: &str = "matching.respond";
}

/// Bounds on `matching.enterQueue` and `matching.respond` arguments.
pub mod limits {
    const DAY_MS: i64 = 24 * 60 * 60 * 1_000;
    /// Longest availability window.
    pub const MAX_WINDOW_MS: i64 = 14 * DAY_MS;
    /// Furthest ahead a window may start.
    pub const MAX_LEAD_MS: i64 = 30 * DAY_MS;
    /// Most interest keys in `constraints.interests`.
    pub const MAX_QUEUE_INTERESTS: usize = 20;
    /// Most roles in `constraints.roles`.
    pub const MAX_ROLES: usize = 5;
    /// Longest interest key or role, in chars.
    pub const MAX_KEY_CHARS: usize = 64;
    /// Longest feedback comment, in chars.
    pub const MAX_COMMENT_CHARS: usize = 2_000;
    /// Feedback ratings are 1..=5 stars.
    pub const MAX_RATING: i64 = 5;
}

/// The values `constraints.orgConstraints` accepts.
pub const ORG_CONSTRAINTS: [&str; 2] = ["sameOrg", "otherOrgs"];
/// The values `matching.respond` accepts as `outcome`.
pub const MATCH_OUTCOMES: [&str; 3] = ["accepted", "declined", "completed"];

/// A queue entry's state: `waiting` until a cycle matches it, the user leaves, or its window
/// ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QueueStatus {
    Waiting,
    Matched,
    Expired,
    Cancelled,
}

impl QueueStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueStatus::Waiting => "waiting",
            QueueStatus::Matched => "matched",
            QueueStatus::Expired => "expired",
            QueueStatus::Cancelled => "cancelled",
        }
    }
}

/// An organisation hard constraint, honoured on both sides of a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OrgConstraint {
    /// Only members of the caller's organisation (the caller must have one).
    SameOrg,
    /// Only people outside the caller's organisation (anyone, for a caller without one).
    OtherOrgs,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchConstraints {
    /// Interest keys from the catalogue, added to the caller's own interests for this entry.
    pub interests: Vec<String>,
    /// The caller's roles for this entry (e.g. "mentor"); the server's configuration says
    /// which roles exist and which complement each other.
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_constraints: Option<OrgConstraint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnterQueueArgs {
    /// ms since the epoch.
    pub available_from: i64,
    /// ms since the epoch; after `availableFrom` and in the future.
    pub available_to: i64,
    pub constraints: MatchConstraints,
}

/// The signals a pair was scored on, each in [0, 1]. `None`: no signal (a side declared no
/// languages, or has no usable embedding), left out of the score rather than counted as 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchFeatures {
    /// Jaccard similarity of the two sides' interest keys.
    pub interests: f64,
    /// Share of the two sides' roles that have a complement on the other side.
    pub roles: f64,
    /// Shared languages over the smaller side's languages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<f64>,
    /// Cosine similarity of the two users' embeddings, clamped to [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<f64>,
}

/// Relative weights of the signals in a score (non-negative; normalised over the signals
/// present).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchWeights {
    pub interests: f64,
    pub roles: f64,
    pub languages: f64,
    pub vector: f64,
}

/// What a matching cycle recorded on both entries of a match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchRecord {
    /// The same on both entries: `<smaller user id>:<larger user id>:<matchedAt>`.
    pub match_id: String,
    pub matched_at: i64,
    pub score: f64,
    pub features: MatchFeatures,
    pub weights: MatchWeights,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueEntry {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub user_id: String,
    pub available_from: i64,
    pub available_to: i64,
    pub constraints: MatchConstraints,
    pub status: QueueStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_with: Option<String>,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_record: Option<MatchRecord>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MatchOutcome {
    Accepted,
    Declined,
    Completed,
}

impl MatchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOutcome::Accepted => "accepted",
            MatchOutcome::Declined => "declined",
            MatchOutcome::Completed => "completed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchFeedback {
    /// 1..=5 stars.
    pub rating: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RespondArgs {
    pub match_id: String,
    pub outcome: MatchOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<MatchFeedback>,
}

/// A `matchingAnalytics` row: one per user, match and outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchAnalytics {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub user_id: String,
    pub match_id: String,
    pub outcome: MatchOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<MatchFeedback>,
    pub features: MatchFeatures,
    pub weights: MatchWeights,
    pub created_at: i64,
}

/// The other side of a match, as much of them as the caller may see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchedUser {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// What `matching.status` returns: the caller's latest queue entry and, once matched, who
/// with and the outcomes the caller recorded so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchStatus {
    pub entry: QueueEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_user: Option<MatchedUser>,
    pub my_outcomes: Vec<MatchOutcome>,
}
