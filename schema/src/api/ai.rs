//! The wire contract of the AI functions (seed §9 prompts, §10 insights, §11 embeddings):
//! names, arguments, results, stored documents and limits, shared by the server, which decodes
//! and enforces them, and the client SDK.

use serde::{Deserialize, Serialize};

use query_engine::value::Value;

/// Function names.
pub mod fns {
    pub const PROMPTS_GENERATE_PRE_CALL: &str = "prompts.generatePreCall";
    pub const PROMPTS_GENERATE_IN_CALL: &str = "prompts.generateInCall";
    pub const PROMPTS_LIST: &str = "prompts.list";
    pub const PROMPTS_RECORD_FEEDBACK: &str = "prompts.recordFeedback";
    pub const INSIGHTS_LIST_MINE: &str = "insights.listMine";
    pub const INSIGHTS_FOR_MEETING: &str = "insights.forMeeting";
    pub const INSIGHTS_DELETE: &str = "insights.delete";
    pub const EMBEDDINGS_REFRESH_MINE: &str = "embeddings.refreshMine";
}

/// Bounds the server enforces on arguments and provider outputs.
pub mod limits {
    /// `context.recentTranscript` of `prompts.generateInCall`, in chars.
    pub const MAX_RECENT_TRANSCRIPT_CHARS: usize = 8_000;
    /// `context.currentTopics` entries.
    pub const MAX_CURRENT_TOPICS: usize = 20;
    /// One topic, in chars.
    pub const MAX_TOPIC_CHARS: usize = 100;
    /// Most prompts `prompts.list` returns.
    pub const MAX_PROMPTS_LISTED: i64 = 100;
    /// Most insights per `insights.listMine` page.
    pub const MAX_INSIGHTS_PAGE: i64 = 50;
    /// Longest text `embeddings.generate` embeds, in chars.
    pub const MAX_EMBED_CHARS: usize = 8_000;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PromptType {
    Precall,
    Incall,
}

impl PromptType {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptType::Precall => "precall",
            PromptType::Incall => "incall",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PromptFeedback {
    Used,
    Dismissed,
    Upvoted,
}

impl PromptFeedback {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptFeedback::Used => "used",
            PromptFeedback::Dismissed => "dismissed",
            PromptFeedback::Upvoted => "upvoted",
        }
    }
}

/// How a prompt or insight was generated (seed §9: input features and generation parameters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// `local` or `openai`: the provider that produced the text.
    pub provider: String,
    pub model: String,
    /// SHA-256 (hex) of the canonical request: equal inputs, equal hashes.
    pub request_hash: String,
    /// True when the configured provider failed and the local heuristics stood in.
    pub fallback: bool,
    /// Why the configured provider failed (its error message), when `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// What the generation was based on (counts, shared interests, topics, ...).
    pub features: Value,
}

/// A stored prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prompt {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub meeting_id: String,
    #[serde(rename = "type")]
    pub prompt_type: PromptType,
    pub content: String,
    pub tags: Vec<String>,
    /// 0.0..=1.0.
    pub relevance: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<PromptFeedback>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// `connection`, `followUp` or `topic`.
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
    /// 0.0..=1.0.
    pub confidence: f64,
    /// The user recommended (a `connection`'s other participant): what a block between them
    /// and the insight's owner is checked against, when it is written and when it is read.
    /// Absent on recommendations about nobody and in insights written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// A pointer from an insight to what it is based on, e.g. a transcript segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightLink {
    /// `meeting`, `transcriptSegment` or `transcriptChunk`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub title: String,
}

/// Which part of an insight a [`Quote`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QuotePart {
    /// A sentence of `summary`: `index` counts the sentences as the server splits them
    /// (at `.`, `!`, `?` and line ends).
    Summary,
    /// `actionItems[index]`.
    ActionItem,
    /// `links[index]`, whose title quotes the passage it points to.
    Link,
}

impl QuotePart {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotePart::Summary => "summary",
            QuotePart::ActionItem => "actionItem",
            QuotePart::Link => "link",
        }
    }
}

/// A part of an insight that quotes, or was written from, what one participant said (it was
/// matched to a transcript passage they spoke when the insight was written), so that the
/// erasure of that participant redacts it from other people's insights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quote {
    pub user_id: String,
    pub part: QuotePart,
    pub index: i64,
}

/// A stored post-call insight: one per (user, meeting).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Insight {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub user_id: String,
    pub meeting_id: String,
    pub summary: String,
    pub action_items: Vec<String>,
    pub recommendations: Vec<Recommendation>,
    pub links: Vec<InsightLink>,
    /// Whose words which parts are (absent in insights written before they were recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotes: Vec<Quote>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratePreCallArgs {
    pub meeting_id: String,
}

/// What the client knows of the conversation right now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InCallContext {
    /// The last minutes of transcript, up to 8,000 chars.
    pub recent_transcript: String,
    /// Up to 20 topics of 1..=100 chars.
    pub current_topics: Vec<String>,
    pub lull_detected: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateInCallArgs {
    pub meeting_id: String,
    pub context: InCallContext,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPromptsArgs {
    pub meeting_id: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub prompt_type: Option<PromptType>,
    /// 1..=100, default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordFeedbackArgs {
    pub prompt_id: String,
    pub feedback: PromptFeedback,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMyInsightsArgs {
    /// From a previous page's `continueCursor`; absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1..=50.
    pub num_items: i64,
}

/// A page of the caller's insights, newest first.
pub type InsightPage = super::Page<Insight>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightIdArgs {
    pub insight_id: String,
}

/// What `embeddings.refreshMine` (and `embeddings.generate`) stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingResult {
    pub embedding_id: String,
    pub model: String,
    pub dimensions: i64,
    /// The stored vector, unit length.
    pub vector: Vec<f64>,
}
