//! The client of an OpenAI-compatible HTTP API: `POST {base}/chat/completions` with a JSON
//! response format for ideas, prompts and insights, and `POST {base}/embeddings`. Each request
//! has a timeout, is retried on 429, 5xx, timeouts and connection failures only (honouring
//! `Retry-After`, capped, else exponential backoff with jitter), until the caller's deadline
//! (what its action has left, less the time it needs afterwards) or for `MAX_CALL_TIME`,
//! whichever ends first; response bodies are read up to a cap. The key travels only in the `Authorization` header and never appears in errors, nor does
//! any of an answer's content (`malformed`).

use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use linkedup_schema::api::ai::Recommendation;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::json;
use tokio::time::Instant;

use super::{
    AiError, AiProvider, Idea, InCallRequest, InsightDraft, PostCallRequest, PreCallRequest,
    MAX_ACTION_ITEMS, MAX_IDEAS, MAX_ITEM_CHARS, MAX_RECOMMENDATIONS, MAX_SUMMARY_CHARS, MAX_TAGS,
    MAX_TAG_CHARS, RECOMMENDATION_KINDS,
};
use crate::provider_http::{
    describe, read_capped, retry_after, with_retries, BodyError, Failure, RetryPolicy,
};
use crate::secret::Secret;

/// Longest a call may take, retries and waits included, however long its caller could wait.
pub const MAX_CALL_TIME: Duration = Duration::from_secs(40);
/// Longest error body read for its error code.
const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;
/// Longest error code kept from an error body.
const MAX_ERROR_CODE_CHARS: usize = 64;

/// Where and how to reach the API.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAiSettings {
    /// E.g. `https://api.openai.com/v1`; paths are appended to it.
    pub base_url: String,
    pub api_key: Secret,
    pub chat_model: String,
    pub embedding_model: String,
    /// Per request (connect to last byte).
    pub request_timeout: Duration,
    /// Retries after the first attempt, on retryable failures only.
    pub max_retries: u32,
    /// First backoff; doubled per retry.
    pub backoff_base: Duration,
    /// Cap on any wait between attempts, `Retry-After` included.
    pub max_backoff: Duration,
    pub max_response_bytes: usize,
    pub temperature: f64,
    pub max_tokens: u32,
}

impl OpenAiSettings {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";
    pub const DEFAULT_CHAT_MODEL: &'static str = "gpt-4o-mini";
    pub const DEFAULT_EMBEDDING_MODEL: &'static str = "text-embedding-3-small";

    /// The defaults for `base_url` and `api_key`.
    pub fn new(base_url: impl Into<String>, api_key: Secret) -> Self {
        OpenAiSettings {
            base_url: base_url.into(),
            api_key,
            chat_model: Self::DEFAULT_CHAT_MODEL.into(),
            embedding_model: Self::DEFAULT_EMBEDDING_MODEL.into(),
            request_timeout: Duration::from_secs(15),
            max_retries: 2,
            backoff_base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_response_bytes: 2 * 1024 * 1024,
            temperature: 0.4,
            max_tokens: 800,
        }
    }
}

/// The OpenAI-compatible provider.
pub struct OpenAiProvider {
    client: reqwest::Client,
    settings: OpenAiSettings,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `settings` holds the key; its Debug redacts it, but say only what matters.
        f.debug_struct("OpenAiProvider")
            .field("base_url", &self.settings.base_url)
            .field("chat_model", &self.settings.chat_model)
            .field("embedding_model", &self.settings.embedding_model)
            .finish()
    }
}

impl OpenAiProvider {
    /// Returns: an error message if the HTTP client cannot be built.
    pub fn new(settings: OpenAiSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the AI HTTP client: {e}"))?;
        Ok(OpenAiProvider { client, settings })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.base_url.trim_end_matches('/'))
    }

    /// POSTs `body` to `path` with retries until `deadline` (at most `MAX_CALL_TIME`); the
    /// successful response's body.
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        deadline: Instant,
    ) -> Result<Vec<u8>, AiError> {
        let url = self.url(path);
        let policy = RetryPolicy {
            max_attempts: self.settings.max_retries.saturating_add(1),
            backoff_base: self.settings.backoff_base,
            backoff_max: self.settings.max_backoff,
        };
        let deadline = deadline.min(Instant::now() + MAX_CALL_TIME);
        with_retries(&policy, deadline, path, || self.attempt(&url, body))
            .await
            .map_err(|gave_up| gave_up.error)
    }

    async fn attempt(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, Failure<AiError>> {
        let response = self
            .client
            .post(url)
            .bearer_auth(self.settings.api_key.expose())
            .json(body)
            .send()
            .await
            .map_err(transport_failure)?;
        let status = response.status();
        if status.is_success() {
            return read_capped(response, self.settings.max_response_bytes)
                .await
                .map_err(|e| match e {
                    BodyError::Transport(why) => Failure::retryable(AiError::Transport(why)),
                    BodyError::TooLarge => Failure::Fatal(AiError::TooLarge {
                        max_bytes: self.settings.max_response_bytes,
                    }),
                });
        }
        let retry_after = retry_after(response.headers());
        let code = read_capped(response, MAX_ERROR_BODY_BYTES)
            .await
            .ok()
            .and_then(|b| error_code(&b));
        let error = AiError::Status {
            status: status.as_u16(),
            code,
        };
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(Failure::Retryable { error, retry_after })
        } else {
            Err(Failure::Fatal(error))
        }
    }

    /// A chat completion whose message content is the JSON object `T`.
    async fn chat<T: DeserializeOwned>(
        &self,
        system: &str,
        user: String,
        deadline: Instant,
    ) -> Result<T, AiError> {
        let body = json!({
            "model": self.settings.chat_model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "response_format": {"type": "json_object"},
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
        });
        let bytes = self.post("chat/completions", &body, deadline).await?;
        let response: ChatResponse =
            serde_json::from_slice(&bytes).map_err(|e| malformed("not a chat completion", &e))?;
        let choice = response
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| AiError::Malformed("no choices".into()))?;
        if choice.finish_reason.as_deref() == Some("length") {
            return Err(AiError::Malformed(
                "the completion was cut off at max_tokens".into(),
            ));
        }
        let content = choice
            .message
            .content
            .ok_or_else(|| AiError::Malformed("the message has no content".into()))?;
        serde_json::from_str(&content)
            .map_err(|e| malformed("the content is not the JSON asked for", &e))
    }

    async fn embeddings(
        &self,
        model: &str,
        texts: &[String],
        deadline: Instant,
    ) -> Result<Vec<Vec<f64>>, AiError> {
        let body = json!({ "model": model, "input": texts, "encoding_format": "float" });
        let bytes = self.post("embeddings", &body, deadline).await?;
        let response: EmbeddingResponse = serde_json::from_slice(&bytes)
            .map_err(|e| malformed("not an embeddings response", &e))?;
        let mut slots: Vec<Option<Vec<f64>>> = vec![None; texts.len()];
        for item in response.data {
            let slot = slots.get_mut(item.index).ok_or_else(|| {
                AiError::Malformed(format!(
                    "embedding index {} for {} inputs",
                    item.index,
                    texts.len()
                ))
            })?;
            if slot.replace(item.embedding).is_some() {
                return Err(AiError::Malformed(format!(
                    "embedding index {} given twice",
                    item.index
                )));
            }
        }
        slots
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| AiError::Malformed(format!("no embedding for input {i}")))
            })
            .collect()
    }
}

/// A response that did not decode, described by what it is not and where it went wrong, never
/// by its content: serde's message quotes the offending value (`invalid type: string "…"`),
/// which can be the model's whole answer, made of the profiles, transcripts and notes it was
/// sent, and the description is logged and stored as a fallback reason.
fn malformed(what: &str, e: &serde_json::Error) -> AiError {
    let how = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not valid JSON",
        Category::Data => "JSON of another shape",
        Category::Eof => "cut short",
    };
    AiError::Malformed(format!(
        "{what}: {how} at line {} column {}",
        e.line(),
        e.column()
    ))
}

fn transport_failure(e: reqwest::Error) -> Failure<AiError> {
    // Timeouts and failed connections may pass; anything else (a bad URL, a redirect) will not.
    let error = AiError::Transport(describe(&e));
    if e.is_timeout() || e.is_connect() || e.is_request() {
        Failure::retryable(error)
    } else {
        Failure::Fatal(error)
    }
}

/// The machine-readable code of an OpenAI error body (`error.code`, else `error.type`). Only
/// that: the human message may quote part of the key.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = v.get("error")?;
    let code = error
        .get("code")
        .and_then(|c| c.as_str())
        .or_else(|| error.get("type").and_then(|t| t.as_str()))?;
    let code: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(MAX_ERROR_CODE_CHARS)
        .collect();
    (!code.is_empty()).then_some(code)
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChatMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f64>,
}

/// What the model must answer for ideas and prompts: exactly this, no other keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdeasOut {
    prompts: Vec<IdeaOut>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdeaOut {
    content: String,
    tags: Vec<String>,
    relevance: f64,
}

impl From<IdeasOut> for Vec<Idea> {
    fn from(out: IdeasOut) -> Self {
        out.prompts
            .into_iter()
            .map(|i| Idea {
                content: i.content,
                tags: i.tags,
                relevance: i.relevance,
            })
            .collect()
    }
}

/// What the model must answer for an insight.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InsightOut {
    summary: String,
    action_items: Vec<String>,
    recommendations: Vec<RecommendationOut>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendationOut {
    #[serde(rename = "type")]
    kind: String,
    content: String,
    confidence: f64,
    #[serde(default, rename = "userId")]
    user_id: Option<String>,
}

impl From<InsightOut> for InsightDraft {
    fn from(out: InsightOut) -> Self {
        InsightDraft {
            summary: out.summary,
            action_items: out.action_items,
            recommendations: out
                .recommendations
                .into_iter()
                .map(|r| Recommendation {
                    kind: r.kind,
                    content: r.content,
                    confidence: r.confidence,
                    user_id: r.user_id,
                })
                .collect(),
        }
    }
}

fn ideas_format() -> String {
    format!(
        "Answer with a JSON object of exactly this shape and nothing else: \
{{\"prompts\": [{{\"content\": string of at most {MAX_ITEM_CHARS} characters, \"tags\": \
[at most {MAX_TAGS} strings of at most {MAX_TAG_CHARS} characters], \"relevance\": number \
from 0 to 1}}]}} with 1 to {MAX_IDEAS} prompts, most relevant first."
    )
}

fn pre_call_system() -> String {
    format!(
        "You help professionals prepare a meeting. From the meeting and its participants \
(profiles, interests, goals), suggest conversation starters grounded in shared or \
complementary interests, the participants' goals and the meeting's subject. Address people \
by name. {}",
        ideas_format()
    )
}

fn in_call_system() -> String {
    format!(
        "You help a meeting in progress. From the recent transcript, the current topics and \
whether the conversation stalled (lullDetected), suggest short prompts: after a lull, ways \
back into the conversation; otherwise, ways to go deeper into the current topic. Tag each \
prompt first with \"lull\" or \"topicShift\". {}",
        ideas_format()
    )
}

fn post_call_system() -> String {
    format!(
        "You write the post-meeting insight for one participant (forUser, a userId of the \
participants). From the transcript, the notes and the participants, answer with a JSON \
object of exactly this shape and nothing else: {{\"summary\": string of at most \
{MAX_SUMMARY_CHARS} characters, \"actionItems\": [at most {MAX_ACTION_ITEMS} strings of at \
most {MAX_ITEM_CHARS} characters, this participant's first], \"recommendations\": [at most \
{MAX_RECOMMENDATIONS} objects {{\"type\": one of {RECOMMENDATION_KINDS:?}, \"content\": \
string of at most {MAX_ITEM_CHARS} characters, \"confidence\": number from 0 to 1, \
\"userId\": the userId of the participant recommended, for a connection}}]}}. Connection \
recommendations name one other participant each, by name in content and by userId, and say \
why; a connection without the userId of another participant is dropped."
    )
}

/// The request as the user message: its JSON.
fn user_message(request: &impl serde::Serialize) -> Result<String, AiError> {
    serde_json::to_string(request)
        .map_err(|e| AiError::Invalid(format!("cannot encode the request: {e}")))
}

impl AiProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn chat_model(&self) -> &str {
        &self.settings.chat_model
    }

    fn embedding_model(&self) -> &str {
        &self.settings.embedding_model
    }

    fn embedding_version(&self) -> &str {
        "1"
    }

    fn generation_params(&self) -> Option<(f64, i64)> {
        Some((
            self.settings.temperature,
            i64::from(self.settings.max_tokens),
        ))
    }

    fn pre_call_ideas<'a>(
        &'a self,
        r: &'a PreCallRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Idea>, AiError>> {
        async move {
            let out: IdeasOut = self
                .chat(&pre_call_system(), user_message(r)?, deadline)
                .await?;
            Ok(out.into())
        }
        .boxed()
    }

    fn in_call_prompts<'a>(
        &'a self,
        r: &'a InCallRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Idea>, AiError>> {
        async move {
            let out: IdeasOut = self
                .chat(&in_call_system(), user_message(r)?, deadline)
                .await?;
            Ok(out.into())
        }
        .boxed()
    }

    fn post_call_insight<'a>(
        &'a self,
        r: &'a PostCallRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<InsightDraft, AiError>> {
        async move {
            let out: InsightOut = self
                .chat(&post_call_system(), user_message(r)?, deadline)
                .await?;
            Ok(out.into())
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        model: &'a str,
        texts: &'a [String],
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Vec<f64>>, AiError>> {
        self.embeddings(model, texts, deadline).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_kept_but_messages_are_not() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        assert_eq!(error_code(body).as_deref(), Some("invalid_api_key"));
        let body = br#"{"error":{"message":"slow down","type":"rate limit!"}}"#;
        assert_eq!(error_code(body).as_deref(), Some("ratelimit"));
        assert_eq!(error_code(b"<html>"), None);
    }
}
