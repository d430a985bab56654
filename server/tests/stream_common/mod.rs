//! Shared by the Stream tests: a fake Stream API on 127.0.0.1 (axum) that records every
//! request and answers call requests as scripted (by default as Stream does: the call's cid),
//! and client settings pointing at it with short backoffs.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use linkedup_server::stream::{ApiSettings, Secret};
use parking_lot::Mutex;
use tokio::sync::{Barrier, Notify};

pub const API_KEY: &str = "test-key";
pub const API_SECRET: &str = "test-secret-do-not-leak";

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub api_key: Option<String>,
    pub authorization: Option<String>,
    pub auth_type: Option<String>,
    pub body: serde_json::Value,
}

/// A scripted answer to a call request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after_secs: Option<u64>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: format!(r#"{{"code":4,"message":"scripted {status}","StatusCode":{status}}}"#),
            retry_after_secs: None,
            delay: Duration::ZERO,
        }
    }

    pub fn ok(body: impl Into<String>) -> Self {
        Reply {
            body: body.into(),
            ..Reply::status(201)
        }
    }
}

#[derive(Default)]
struct FakeState {
    requests: Mutex<Vec<Recorded>>,
    replies: Mutex<VecDeque<Reply>>,
    /// Call requests wait here before answering, when set.
    gate: Mutex<Option<Arc<Barrier>>>,
    /// The next call request waits for this before answering, when set.
    held: Mutex<Option<Arc<Notify>>>,
}

pub struct FakeStream {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeStream {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeStream { addr, state, task }
    }

    /// Answers the next call requests with `replies`, in order; then as Stream does.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.replies.lock().extend(replies);
    }

    /// Holds every call request until `n` of them have arrived.
    pub fn hold_calls_until(&self, n: usize) {
        *self.state.gate.lock() = Some(Arc::new(Barrier::new(n)));
    }

    /// Holds the next call request until the returned handle is notified.
    pub fn hold_next_call(&self) -> Arc<Notify> {
        let release = Arc::new(Notify::new());
        *self.state.held.lock() = Some(release.clone());
        release
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().clone()
    }

    /// The get-or-create call requests received.
    pub fn calls(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/api/v2/video/call/"))
            .collect()
    }

    /// Client settings for this fake: short timeouts and backoffs.
    pub fn settings(&self) -> ApiSettings {
        let mut s = ApiSettings::new(API_KEY, Secret::new(API_SECRET));
        s.base_url = format!("http://{}", self.addr);
        s.request_timeout = Duration::from_millis(500);
        s.connect_timeout = Duration::from_millis(500);
        s.backoff_base = Duration::from_millis(5);
        s.backoff_max = Duration::from_millis(20);
        s.total_budget = Duration::from_secs(5);
        s
    }
}

async fn answer(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let api_key = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("api_key="))
            .map(str::to_string)
    });
    let path = uri.path().to_string();
    state.requests.lock().push(Recorded {
        path: path.clone(),
        api_key,
        authorization: header("authorization"),
        auth_type: header("stream-auth-type"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    let Some(call) = path.strip_prefix("/api/v2/video/call/") else {
        return (StatusCode::CREATED, r#"{"users":{},"duration":"1ms"}"#).into_response();
    };
    let gate = state.gate.lock().clone();
    if let Some(gate) = gate {
        gate.wait().await;
    }
    let held = state.held.lock().take();
    if let Some(release) = held {
        release.notified().await;
    }
    let scripted = state.replies.lock().pop_front();
    let reply = scripted.unwrap_or_else(|| {
        let cid = call.replacen('/', ":", 1);
        Reply::ok(format!(
            r#"{{"call":{{"cid":"{cid}","id":"x"}},"created":true,"members":[],"duration":"1ms"}}"#
        ))
    });
    tokio::time::sleep(reply.delay).await;
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        [("content-type", "application/json")],
        reply.body,
    )
        .into_response();
    if let Some(secs) = reply.retry_after_secs {
        response
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    response
}
