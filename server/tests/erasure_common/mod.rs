//! Shared fixtures for the erasure tests: asking for an account's erasure and waiting for its
//! job, reading a table's documents by a field, and writing what the tests erase.
#![allow(dead_code)]

use std::time::Duration;

use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

use crate::linkedup_common::{id, s, Env};

pub const REQUEST: &str = "users.requestErasure";

/// Inserts a document directly, for tables whose writers need a provider or a flag.
pub async fn insert(env: &Env, table: &'static str, doc: Value) -> String {
    let v = env
        .engine
        .transact(move |ctx| ctx.insert(table, doc.clone()).map(Value::from))
        .await
        .unwrap();
    v.as_str().unwrap().to_string()
}

/// `who` asks for their account's erasure; returns the request.
pub async fn request(env: &Env, who: &Identity) -> Value {
    env.m(REQUEST, obj! { "confirm" => true }, Some(who))
        .await
        .unwrap()
}

/// Waits (bounded) until the erasure request is done.
pub async fn wait_done(env: &Env, request_id: &str) -> Value {
    for _ in 0..800 {
        let r = env
            .all("erasureRequests")
            .await
            .into_iter()
            .find(|r| id(r) == request_id)
            .unwrap();
        if s(&r, "status") == "done" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("erasure request {request_id} did not finish");
}

/// The documents of `table` whose `field` is `value`.
pub async fn with(env: &Env, table: &'static str, field: &str, value: &str) -> Vec<Value> {
    env.all(table)
        .await
        .into_iter()
        .filter(|d| d.get_path(field).and_then(Value::as_str) == Some(value))
        .collect()
}

/// `who` stores a chunk of `meeting` that `speaker` (a user id or a label) says.
pub async fn say(env: &Env, who: &Identity, meeting: &str, chunk: &str, speaker: &str) {
    env.m(
        "transcripts.ingestChunk",
        obj! {
            "meetingId" => meeting, "chunkId" => chunk, "speakerId" => speaker,
            "text" => format!("{speaker} says something personal"), "confidence" => 0.9,
            "startMs" => 0i64, "endMs" => 1_000i64,
        },
        Some(who),
    )
    .await
    .unwrap();
}
