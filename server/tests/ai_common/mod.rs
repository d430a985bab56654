//! Shared fixtures for the AI tests: a fake OpenAI-compatible API on 127.0.0.1 (scripted
//! replies, every request recorded), provider settings pointing at it, and flag helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use linkedup_server::ai::{AiConfig, AiService, OpenAiProvider, OpenAiSettings};
use linkedup_server::linkedup::LinkedUpConfig;
use linkedup_server::secret::Secret;
use parking_lot::Mutex;
use query_engine::identity::Identity;
use serde_json::{json, Value as Json_};

pub const KEY: &str = "sk-test-key-123";

/// One scripted reply.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Status, JSON body, `Retry-After` seconds.
    Json(u16, Json_, Option<u64>),
    /// Status and a raw body.
    Raw(u16, String),
    /// Waits, then replies.
    Delay(Duration, Box<Reply>),
    /// The default reply for the path (see `Fake::default_reply`).
    Default,
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Json_,
}

#[derive(Default)]
struct FakeState {
    script: Mutex<VecDeque<Reply>>,
    /// Used when the script is empty; `None`: the built-in default for the path.
    fallback: Mutex<Option<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    embedding_dims: Mutex<usize>,
    /// When set, no request is answered before this many wait together.
    barrier: Mutex<Option<Arc<tokio::sync::Barrier>>>,
    /// When set, no request is answered before `Fake::release` closes it.
    held: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

pub struct Fake {
    pub base_url: String,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A chat completion whose message content is `content` (JSON, as text).
pub fn chat(content: Json_) -> Json_ {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content.to_string()},
            "finish_reason": "stop",
        }],
    })
}

/// Ideas the fake proposes by default.
pub fn fake_ideas() -> Json_ {
    json!({"prompts": [
        {"content": "Ask about the launch plan", "tags": ["launch"], "relevance": 0.9},
        {"content": "Share one lesson from last quarter", "tags": ["retro"], "relevance": 0.6},
    ]})
}

/// The insight the fake writes by default.
pub fn fake_insight() -> Json_ {
    json!({
        "summary": "The team agreed to ship the launch plan.",
        "actionItems": ["Send the launch plan to the team"],
        "recommendations": [
            {"type": "connection", "content": "Connect with the launch lead", "confidence": 0.8}
        ],
    })
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(body): Json<Json_>,
) -> Response {
    let path = uri.path().to_string();
    state.requests.lock().push(Recorded {
        path: path.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: body.clone(),
    });
    let barrier = state.barrier.lock().clone();
    if let Some(b) = barrier {
        b.wait().await;
    }
    let held = state.held.lock().clone();
    if let Some(gate) = held {
        // It never has a permit: this returns when `release` closes it.
        let _ = gate.acquire().await;
    }
    let scripted = state.script.lock().pop_front();
    let reply = scripted
        .or_else(|| state.fallback.lock().clone())
        .unwrap_or(Reply::Default);
    let dims = *state.embedding_dims.lock();
    render(reply, path, body, dims).await
}

fn render(
    reply: Reply,
    path: String,
    body: Json_,
    dims: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        match reply {
            Reply::Json(status, value, retry_after) => {
                let mut r = (StatusCode::from_u16(status).unwrap(), Json(value)).into_response();
                if let Some(s) = retry_after {
                    r.headers_mut()
                        .insert("retry-after", s.to_string().parse().unwrap());
                }
                r
            }
            Reply::Raw(status, text) => {
                (StatusCode::from_u16(status).unwrap(), text).into_response()
            }
            Reply::Delay(d, then) => {
                tokio::time::sleep(d).await;
                render(*then, path, body, dims).await
            }
            Reply::Default => {
                (StatusCode::OK, Json(default_reply(&path, &body, dims))).into_response()
            }
        }
    })
}

/// Chat: an insight when the system message asks for one, else ideas. Embeddings: one
/// vector per input (component i of input k is k + i + 1), listed in reverse order so the
/// client must sort by `index`.
fn default_reply(path: &str, body: &Json_, dims: usize) -> Json_ {
    if path.ends_with("/embeddings") {
        let n = body["input"].as_array().map_or(0, Vec::len);
        let data: Vec<Json_> = (0..n)
            .rev()
            .map(|k| {
                let v: Vec<f64> = (0..dims).map(|i| (k + i + 1) as f64).collect();
                json!({"object": "embedding", "index": k, "embedding": v})
            })
            .collect();
        return json!({"object": "list", "data": data, "model": body["model"]});
    }
    let system = body["messages"][0]["content"].as_str().unwrap_or("");
    if system.contains("post-meeting insight") {
        chat(fake_insight())
    } else {
        chat(fake_ideas())
    }
}

impl Fake {
    pub async fn start() -> Fake {
        let state = Arc::new(FakeState::default());
        *state.embedding_dims.lock() = 8;
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/v1/embeddings", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        }
    }

    /// Replies for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().extend(replies);
    }

    /// The reply once the script is exhausted (`Reply::Default` to restore the default).
    pub fn always(&self, reply: Reply) {
        *self.state.fallback.lock() = Some(reply);
    }

    /// Answers requests only in groups of `n`, each when all `n` have arrived.
    pub fn answer_in_groups_of(&self, n: usize) {
        *self.state.barrier.lock() = Some(Arc::new(tokio::sync::Barrier::new(n)));
    }

    /// Holds every request from now on unanswered (recorded on arrival) until `release`.
    pub fn hold(&self) {
        *self.state.held.lock() = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Answers the held requests, and later ones at once.
    pub fn release(&self) {
        if let Some(gate) = self.state.held.lock().take() {
            gate.close();
        }
    }

    pub fn set_embedding_dims(&self, dims: usize) {
        *self.state.embedding_dims.lock() = dims;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().clone()
    }

    pub fn count(&self, path_suffix: &str) -> usize {
        self.state
            .requests
            .lock()
            .iter()
            .filter(|r| r.path.ends_with(path_suffix))
            .count()
    }

    /// Settings for a client of this fake: short timeouts and backoff, two retries.
    pub fn settings(&self) -> OpenAiSettings {
        let mut s = OpenAiSettings::new(self.base_url.clone(), Secret::new(KEY));
        s.request_timeout = Duration::from_secs(2);
        s.backoff_base = Duration::from_millis(10);
        s.max_backoff = Duration::from_millis(50);
        s
    }

    pub fn provider(&self, settings: OpenAiSettings) -> OpenAiProvider {
        OpenAiProvider::new(settings).unwrap()
    }

    /// A LinkedUp configuration using this fake, without retries inside a call (so the
    /// request counts equal the provider calls) and with quick insight retries.
    pub fn config(&self) -> LinkedUpConfig {
        let mut settings = self.settings();
        settings.max_retries = 0;
        LinkedUpConfig {
            ai: AiConfig {
                service: AiService::new(Arc::new(self.provider(settings))),
                insight_retry_delay_ms: 10,
                ..AiConfig::default()
            },
            ..LinkedUpConfig::default()
        }
    }
}

/// A server error reply.
pub fn status(code: u16) -> Reply {
    Reply::Json(
        code,
        json!({"error": {"message": "boom", "type": "server_error"}}),
        None,
    )
}

/// Turns capability `key` on for `admin`'s organisation (environment `local`).
pub async fn enable(engine: &query_engine::engine::Engine, admin: &Identity, key: &str) {
    set_flag(engine, admin, key, true).await;
}

pub async fn set_flag(
    engine: &query_engine::engine::Engine,
    admin: &Identity,
    key: &str,
    on: bool,
) {
    engine
        .mutation(
            "flags.set",
            query_engine::obj! {
                "key" => key,
                "environment" => "local",
                "value" => on,
                "reason" => "test",
            },
            Some(admin),
        )
        .await
        .unwrap();
}
