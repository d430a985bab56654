//! The AI provider abstraction (seed §9–§11, §23). LinkedUp asks a model four things: ideas
//! before a call, prompts during one, a participant's insight after one, and embeddings. The
//! `AiProvider` trait states those requests in domain terms; two providers implement it: the
//! deterministic `local` heuristics (the default: offline, no configuration) and an
//! OpenAI-compatible HTTP API (`openai`). `AiService`, which the LinkedUp functions hold,
//! validates whatever a provider returns and, for prompts, falls back to the local heuristics
//! when the configured provider fails (seed §23 "AI outage").

pub mod config;
pub mod local;
pub mod openai;
pub mod text;

use std::sync::Arc;

use futures::future::BoxFuture;
use linkedup_schema::api::ai::{Provenance, Recommendation};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::ErrorCode;
use query_engine::error::FunctionError;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use config::AiConfig;
pub use local::LocalProvider;
pub use openai::{OpenAiProvider, OpenAiSettings};

/// Most ideas or prompts one generation may return.
pub const MAX_IDEAS: usize = 8;
/// Longest idea, action item or recommendation, in chars.
pub const MAX_ITEM_CHARS: usize = 400;
/// Most tags per idea and longest tag, in chars.
pub const MAX_TAGS: usize = 6;
pub const MAX_TAG_CHARS: usize = 40;
/// Longest insight summary, in chars.
pub const MAX_SUMMARY_CHARS: usize = 2_000;
/// Most action items and recommendations per insight.
pub const MAX_ACTION_ITEMS: usize = 15;
pub const MAX_RECOMMENDATIONS: usize = 8;
/// The kinds of recommendation an insight may carry.
pub const RECOMMENDATION_KINDS: [&str; 3] = ["connection", "followUp", "topic"];
/// Largest embedding accepted from a provider.
pub const MAX_DIMENSIONS: usize = 4_096;
/// Longest `fallbackReason` stored, in chars.
const MAX_REASON_CHARS: usize = 300;

/// A participant as the model sees them: their profile and interests (labels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantProfile {
    pub user_id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
    pub interests: Vec<String>,
}

/// Conversation ideas before a meeting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreCallRequest {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub participants: Vec<ParticipantProfile>,
}

/// Prompts for a running meeting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InCallRequest {
    pub title: String,
    pub recent_transcript: String,
    pub current_topics: Vec<String>,
    pub lull_detected: bool,
    pub participants: Vec<ParticipantProfile>,
}

/// One piece of a meeting's transcript (a segment, or a chunk not aggregated yet).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptPiece {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
    pub text: String,
}

/// One participant's insight after a meeting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostCallRequest {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub transcript: Vec<TranscriptPiece>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    pub participants: Vec<ParticipantProfile>,
    /// The user id of the participant the insight is for.
    pub for_user: String,
}

/// A generated idea or prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Idea {
    pub content: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// 0.0..=1.0.
    pub relevance: f64,
}

/// A generated insight, before it is linked to its sources and stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightDraft {
    pub summary: String,
    #[serde(default)]
    pub action_items: Vec<String>,
    #[serde(default)]
    pub recommendations: Vec<Recommendation>,
}

/// What went wrong with a provider. Messages never contain the API key.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("answered HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status { status: u16, code: Option<String> },
    #[error("response exceeds {max_bytes} bytes")]
    TooLarge { max_bytes: usize },
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("invalid output: {0}")]
    Invalid(String),
    #[error("model {model:?} is not available here; this provider embeds with {available:?}")]
    UnsupportedModel { model: String, available: String },
}

impl From<crate::provider_http::OutOfTime> for AiError {
    fn from(_: crate::provider_http::OutOfTime) -> Self {
        AiError::Transport("out of time".into())
    }
}

impl AiError {
    /// The error a function returns: `PROVIDER_ERROR` naming the provider, or
    /// `VALIDATION_ERROR` on `model` for a model the provider does not offer.
    pub fn into_function_error(self, provider: &str) -> FunctionError {
        match self {
            AiError::UnsupportedModel { .. } => invalid_field("model", self),
            e => ErrorCode::ProviderError.err_with(
                format!("AI provider {provider}: {e}"),
                query_engine::obj! { "provider" => provider },
            ),
        }
    }
}

/// A provider: domain-level requests in, unvalidated domain-level answers out. Each request
/// ends by its `deadline` (the time its caller has for it; see `AiConfig::provider_deadline`).
pub trait AiProvider: Send + Sync {
    /// `local` or `openai`, for provenance.
    fn name(&self) -> &'static str;
    /// The model that writes ideas, prompts and insights.
    fn chat_model(&self) -> &str;
    /// The model embeddings default to, and the version of its vectors.
    fn embedding_model(&self) -> &str;
    fn embedding_version(&self) -> &str;
    /// `(temperature, max_tokens)` of text generation, if the provider has such parameters.
    fn generation_params(&self) -> Option<(f64, i64)>;
    fn pre_call_ideas<'a>(
        &'a self,
        r: &'a PreCallRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Idea>, AiError>>;
    fn in_call_prompts<'a>(
        &'a self,
        r: &'a InCallRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Idea>, AiError>>;
    fn post_call_insight<'a>(
        &'a self,
        r: &'a PostCallRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<InsightDraft, AiError>>;
    /// One vector per text, in order, with `model`.
    fn embed<'a>(
        &'a self,
        model: &'a str,
        texts: &'a [String],
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Vec<f64>>, AiError>>;
}

/// A validated generation and who produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated<T> {
    pub value: T,
    pub provider: &'static str,
    pub model: String,
    pub params: Option<(f64, i64)>,
    /// Why the configured provider's answer was not used (then the local heuristics made it).
    pub fallback_reason: Option<String>,
}

impl<T> Generated<T> {
    /// The provenance to store with the result.
    pub fn provenance(&self, request_hash: &str, features: Value) -> Provenance {
        Provenance {
            provider: self.provider.to_string(),
            model: self.model.clone(),
            request_hash: request_hash.to_string(),
            fallback: self.fallback_reason.is_some(),
            fallback_reason: self.fallback_reason.clone(),
            temperature: self.params.map(|p| p.0),
            max_tokens: self.params.map(|p| p.1),
            features,
        }
    }
}

/// Unit-length embeddings and the model that made them.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    pub provider: &'static str,
    pub model: String,
    pub version: String,
    pub vectors: Vec<Vec<f64>>,
}

/// The configured provider with validation and the local fallback.
#[derive(Clone)]
pub struct AiService {
    provider: Arc<dyn AiProvider>,
    local: LocalProvider,
}

impl Default for AiService {
    fn default() -> Self {
        AiService::new(Arc::new(LocalProvider))
    }
}

impl std::fmt::Debug for AiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiService")
            .field("provider", &self.provider.name())
            .field("chat_model", &self.provider.chat_model())
            .field("embedding_model", &self.provider.embedding_model())
            .finish()
    }
}

impl AiService {
    pub fn new(provider: Arc<dyn AiProvider>) -> Self {
        AiService {
            provider,
            local: LocalProvider,
        }
    }

    /// The configured provider's name.
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    fn generated<T>(&self, value: T) -> Generated<T> {
        Generated {
            value,
            provider: self.provider.name(),
            model: self.provider.chat_model().to_string(),
            params: self.provider.generation_params(),
            fallback_reason: None,
        }
    }

    fn local_generated<T>(&self, value: T, reason: Option<String>) -> Generated<T> {
        Generated {
            value,
            provider: self.local.name(),
            model: self.local.chat_model().to_string(),
            params: None,
            fallback_reason: reason.map(|r| text::truncate(&r, MAX_REASON_CHARS)),
        }
    }

    /// Ideas from the configured provider, or from the local heuristics if it fails or has not
    /// answered by `deadline`.
    /// Returns: INTERNAL if even the local heuristics produce nothing valid (a bug).
    pub async fn pre_call_ideas(
        &self,
        r: &PreCallRequest,
        deadline: Instant,
    ) -> Result<Generated<Vec<Idea>>, FunctionError> {
        let answer = self.provider.pre_call_ideas(r, deadline).await;
        match answer.and_then(valid_ideas) {
            Ok(ideas) => Ok(self.generated(ideas)),
            Err(e) => self.local_pre_call_ideas(r, self.failed("pre-call ideas", &e)),
        }
    }

    /// The local heuristics' ideas, recording why the configured provider's were not used.
    pub fn local_pre_call_ideas(
        &self,
        r: &PreCallRequest,
        reason: Option<String>,
    ) -> Result<Generated<Vec<Idea>>, FunctionError> {
        let ideas = valid_ideas(self.local.ideas_before(r)).map_err(local_bug)?;
        Ok(self.local_generated(ideas, reason))
    }

    /// Prompts from the configured provider, or from the local heuristics if it fails or has
    /// not answered by `deadline`.
    pub async fn in_call_prompts(
        &self,
        r: &InCallRequest,
        deadline: Instant,
    ) -> Result<Generated<Vec<Idea>>, FunctionError> {
        let answer = self.provider.in_call_prompts(r, deadline).await;
        match answer.and_then(valid_ideas) {
            Ok(ideas) => Ok(self.generated(ideas)),
            Err(e) => self.local_in_call_prompts(r, self.failed("in-call prompts", &e)),
        }
    }

    /// The local heuristics' prompts, recording why the configured provider's were not used.
    pub fn local_in_call_prompts(
        &self,
        r: &InCallRequest,
        reason: Option<String>,
    ) -> Result<Generated<Vec<Idea>>, FunctionError> {
        let ideas = valid_ideas(self.local.prompts_during(r)).map_err(local_bug)?;
        Ok(self.local_generated(ideas, reason))
    }

    /// The configured provider's insight, validated; the error is left to the caller, which
    /// retries before it settles for `local_post_call_insight`.
    pub async fn try_post_call_insight(
        &self,
        r: &PostCallRequest,
        deadline: Instant,
    ) -> Result<Generated<InsightDraft>, AiError> {
        let draft = self
            .provider
            .post_call_insight(r, deadline)
            .await
            .and_then(valid_insight)
            .inspect_err(|e| {
                self.failed("a post-call insight", e);
            })?;
        Ok(self.generated(draft))
    }

    /// The local heuristics' insight, recording why the configured provider was not used.
    pub fn local_post_call_insight(
        &self,
        r: &PostCallRequest,
        reason: Option<String>,
    ) -> Result<Generated<InsightDraft>, FunctionError> {
        let draft = valid_insight(self.local.insight_after(r)).map_err(local_bug)?;
        Ok(self.local_generated(draft, reason))
    }

    /// Unit-length embeddings of `texts` with `model` (default: the provider's). No fallback:
    /// vectors of another model are not comparable with the ones already stored.
    /// Returns: PROVIDER_ERROR, VALIDATION_ERROR (a model the provider does not offer).
    pub async fn embed(
        &self,
        model: Option<&str>,
        texts: &[String],
        deadline: Instant,
    ) -> Result<Embedded, FunctionError> {
        let provider = self.provider.name();
        let model = model.unwrap_or(self.provider.embedding_model());
        let vectors = self
            .provider
            .embed(model, texts, deadline)
            .await
            .and_then(|v| valid_embeddings(v, texts.len()))
            .map_err(|e| {
                self.failed("embeddings", &e);
                e.into_function_error(provider)
            })?;
        Ok(Embedded {
            provider,
            model: model.to_string(),
            version: self.provider.embedding_version().to_string(),
            vectors,
        })
    }

    /// Logs a provider failure (seed §23: alert ops) and returns it as a fallback reason.
    fn failed(&self, what: &str, e: &AiError) -> Option<String> {
        let provider = self.provider.name();
        tracing::warn!(provider, error = %e, "AI provider failed to produce {what}");
        Some(format!("{provider}: {e}"))
    }
}

fn local_bug(e: AiError) -> FunctionError {
    tracing::error!(error = %e, "the local AI heuristics produced invalid output");
    ErrorCode::Internal.err(format!("local AI heuristics: {e}"))
}

/// SHA-256 (hex) of `scope` and the JSON of `request`: the request hash of seed §9. serde_json
/// writes struct fields in declaration order, so equal requests hash equally.
pub fn request_hash(scope: &str, request: &impl Serialize) -> String {
    let body = serde_json::to_vec(request).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0u8]);
    h.update(&body);
    crate::hex::hex(&h.finalize())
}

fn check_chars(what: &str, s: &str, max: usize) -> Result<(), AiError> {
    let n = s.chars().count();
    if s.trim().is_empty() {
        return Err(AiError::Invalid(format!("{what} is empty")));
    }
    if n > max {
        return Err(AiError::Invalid(format!(
            "{what} has {n} chars, more than {max}"
        )));
    }
    Ok(())
}

fn check_unit(what: &str, x: f64) -> Result<(), AiError> {
    if !(0.0..=1.0).contains(&x) {
        return Err(AiError::Invalid(format!("{what} {x} is not within 0..=1")));
    }
    Ok(())
}

/// Checks ideas: 1..=MAX_IDEAS, each with bounded content and tags and a relevance in 0..=1.
pub fn valid_ideas(ideas: Vec<Idea>) -> Result<Vec<Idea>, AiError> {
    if ideas.is_empty() || ideas.len() > MAX_IDEAS {
        return Err(AiError::Invalid(format!(
            "{} ideas, expected 1 to {MAX_IDEAS}",
            ideas.len()
        )));
    }
    for (i, idea) in ideas.iter().enumerate() {
        check_chars(
            &format!("prompts[{i}].content"),
            &idea.content,
            MAX_ITEM_CHARS,
        )?;
        if idea.tags.len() > MAX_TAGS {
            return Err(AiError::Invalid(format!(
                "prompts[{i}] has {} tags, more than {MAX_TAGS}",
                idea.tags.len()
            )));
        }
        for (j, t) in idea.tags.iter().enumerate() {
            check_chars(&format!("prompts[{i}].tags[{j}]"), t, MAX_TAG_CHARS)?;
        }
        check_unit(&format!("prompts[{i}].relevance"), idea.relevance)?;
    }
    Ok(ideas)
}

/// Checks an insight: a bounded summary, at most MAX_ACTION_ITEMS bounded action items and
/// MAX_RECOMMENDATIONS recommendations of a known kind with a confidence in 0..=1.
pub fn valid_insight(d: InsightDraft) -> Result<InsightDraft, AiError> {
    check_chars("summary", &d.summary, MAX_SUMMARY_CHARS)?;
    if d.action_items.len() > MAX_ACTION_ITEMS {
        return Err(AiError::Invalid(format!(
            "{} action items, more than {MAX_ACTION_ITEMS}",
            d.action_items.len()
        )));
    }
    for (i, a) in d.action_items.iter().enumerate() {
        check_chars(&format!("actionItems[{i}]"), a, MAX_ITEM_CHARS)?;
    }
    if d.recommendations.len() > MAX_RECOMMENDATIONS {
        return Err(AiError::Invalid(format!(
            "{} recommendations, more than {MAX_RECOMMENDATIONS}",
            d.recommendations.len()
        )));
    }
    for (i, r) in d.recommendations.iter().enumerate() {
        if !RECOMMENDATION_KINDS.contains(&r.kind.as_str()) {
            // Not quoted: it is the model's text.
            return Err(AiError::Invalid(format!(
                "recommendations[{i}].type is not one of {RECOMMENDATION_KINDS:?}"
            )));
        }
        check_chars(
            &format!("recommendations[{i}].content"),
            &r.content,
            MAX_ITEM_CHARS,
        )?;
        check_unit(&format!("recommendations[{i}].confidence"), r.confidence)?;
    }
    Ok(d)
}

/// Checks embeddings (one per text, equal non-zero dimensions up to MAX_DIMENSIONS, finite)
/// and scales each to unit length.
pub fn valid_embeddings(vectors: Vec<Vec<f64>>, texts: usize) -> Result<Vec<Vec<f64>>, AiError> {
    if vectors.len() != texts {
        return Err(AiError::Invalid(format!(
            "{} embeddings for {texts} inputs",
            vectors.len()
        )));
    }
    let dims = vectors.first().map_or(0, Vec::len);
    if vectors.iter().any(|v| v.len() != dims) || dims == 0 || dims > MAX_DIMENSIONS {
        return Err(AiError::Invalid(format!(
            "embeddings must share one dimension count in 1..={MAX_DIMENSIONS}"
        )));
    }
    vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(AiError::Invalid(format!(
                    "embedding {i} has a non-finite component"
                )));
            }
            text::normalise(v)
                .ok_or_else(|| AiError::Invalid(format!("embedding {i} is the zero vector")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idea(content: &str, relevance: f64) -> Idea {
        Idea {
            content: content.into(),
            tags: vec!["t".into()],
            relevance,
        }
    }

    #[test]
    fn ideas_are_checked_strictly() {
        assert!(valid_ideas(vec![idea("ask about rust", 0.5)]).is_ok());
        assert!(valid_ideas(Vec::new()).is_err());
        assert!(valid_ideas(vec![idea("x", 1.5)]).is_err());
        assert!(valid_ideas(vec![idea("x", f64::NAN)]).is_err());
        assert!(valid_ideas(vec![idea("   ", 0.5)]).is_err());
        assert!(valid_ideas(vec![idea(&"x".repeat(MAX_ITEM_CHARS + 1), 0.5)]).is_err());
        assert!(valid_ideas(vec![idea("x", 0.5); MAX_IDEAS + 1]).is_err());
        let mut many_tags = idea("x", 0.5);
        many_tags.tags = vec!["t".into(); MAX_TAGS + 1];
        assert!(valid_ideas(vec![many_tags]).is_err());
    }

    #[test]
    fn insights_are_checked_strictly() {
        let ok = InsightDraft {
            summary: "We agreed on the plan.".into(),
            action_items: vec!["Send the notes".into()],
            recommendations: vec![Recommendation {
                kind: "connection".into(),
                content: "Connect with Bob".into(),
                confidence: 0.7,
                user_id: Some("u2".into()),
            }],
        };
        assert!(valid_insight(ok.clone()).is_ok());
        let mut bad = ok.clone();
        bad.recommendations[0].confidence = -0.1;
        assert!(valid_insight(bad).is_err());
        let mut bad = ok.clone();
        bad.recommendations[0].kind = "spam".into();
        assert!(valid_insight(bad).is_err());
        let mut bad = ok.clone();
        bad.summary = String::new();
        assert!(valid_insight(bad).is_err());
        let mut bad = ok;
        bad.action_items = vec!["x".into(); MAX_ACTION_ITEMS + 1];
        assert!(valid_insight(bad).is_err());
    }

    #[test]
    fn embeddings_are_checked_and_normalised() {
        let v = valid_embeddings(vec![vec![3.0, 4.0]], 1).unwrap();
        assert_eq!(v, vec![vec![0.6, 0.8]]);
        assert!(valid_embeddings(vec![vec![1.0]], 2).is_err());
        assert!(valid_embeddings(vec![vec![1.0], vec![1.0, 2.0]], 2).is_err());
        assert!(valid_embeddings(vec![vec![0.0, 0.0]], 1).is_err());
        assert!(valid_embeddings(vec![vec![f64::INFINITY, 0.0]], 1).is_err());
        assert!(valid_embeddings(vec![Vec::new()], 1).is_err());
    }

    #[test]
    fn request_hashes_depend_on_scope_and_content_only() {
        let a = request_hash("ai_in", &("m1", "topic"));
        assert_eq!(a, request_hash("ai_in", &("m1", "topic")));
        assert_eq!(a.len(), 64);
        assert_ne!(a, request_hash("ai_pre", &("m1", "topic")));
        assert_ne!(a, request_hash("ai_in", &("m1", "other")));
    }

    #[test]
    fn provider_errors_name_the_provider_and_a_bad_model_the_field() {
        let e = AiError::Status {
            status: 503,
            code: None,
        }
        .into_function_error("openai");
        assert_eq!(e.code, "PROVIDER_ERROR");
        assert!(e.message.contains("openai") && e.message.contains("503"));
        let e = AiError::UnsupportedModel {
            model: "x".into(),
            available: "y".into(),
        }
        .into_function_error("local");
        assert_eq!(e.code, "VALIDATION_ERROR");
    }
}
