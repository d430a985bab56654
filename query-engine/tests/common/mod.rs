//! Shared fixtures for the engine's integration tests: a small schema of counters and notes,
//! and functions over it.
#![allow(dead_code)]

use std::path::Path;

use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::{Object, Value};

pub fn schema() -> SchemaDefinition {
    SchemaDefinition::new()
        .table(
            TableDefinition::new(
                "counters",
                v::object([("name", v::string()), ("value", v::int64())]),
            )
            .index("by_name", &["name"]),
        )
        .table(
            TableDefinition::new(
                "notes",
                v::object([
                    ("topic", v::string()),
                    ("seq", v::int64()),
                    ("text", v::string()),
                    ("tags", v::optional(v::array(v::string()))),
                ]),
            )
            .index("by_topic_seq", &["topic", "seq"]),
        )
        .table(
            TableDefinition::new(
                "members",
                v::object([("topic", v::string()), ("user", v::string())]),
            )
            .index("by_topic_user", &["topic", "user"]),
        )
}

#[derive(serde::Deserialize)]
pub struct Membership {
    pub topic: String,
    pub user: String,
}

#[derive(serde::Deserialize)]
pub struct Topic {
    pub topic: String,
}

fn require_member(
    ctx: &mut query_engine::context::Ctx<'_, '_>,
    topic: &str,
) -> Result<(), FunctionError> {
    let user = ctx
        .auth()
        .map(|i| i.subject.clone())
        .ok_or_else(|| FunctionError::unauthorized("sign in"))?;
    ctx.query("members", "by_topic_user")
        .eq("topic", topic)
        .eq("user", user)
        .first()?
        .map(|_| ())
        .ok_or_else(|| FunctionError::forbidden("not a member"))
}

#[derive(serde::Deserialize)]
pub struct Named {
    pub name: String,
}

#[derive(serde::Deserialize)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub amount: i64,
}

#[derive(serde::Deserialize)]
pub struct TopicRange {
    pub topic: String,
    pub after: i64,
    pub limit: i64,
}

#[derive(serde::Deserialize)]
pub struct NoteAndRange {
    pub topic: String,
    pub seq: i64,
    pub after: i64,
    pub before: i64,
}

/// Set by `gated` when it starts; `gated` returns once `GATE_OPEN` is set (at most a minute).
pub static GATED_ENTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
pub static GATE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn counter_by_name(
    ctx: &mut query_engine::context::Ctx<'_, '_>,
    name: &str,
) -> Result<Value, FunctionError> {
    ctx.query("counters", "by_name")
        .eq("name", name)
        .unique()?
        .ok_or_else(|| FunctionError::not_found(format!("no counter {name}")))
}

/// Adds `delta` to counter `name`; returns its new value.
pub fn add_to_counter(
    ctx: &mut query_engine::context::Ctx<'_, '_>,
    name: &str,
    delta: i64,
) -> Result<i64, FunctionError> {
    let c = counter_by_name(ctx, name)?;
    let id = c
        .get_path("_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let n = c.get_path("value").and_then(Value::as_i64).unwrap_or(0) + delta;
    let mut o = Object::new();
    o.insert("value".into(), n.into());
    ctx.patch("counters", &id, o)?;
    Ok(n)
}

pub fn functions() -> Functions {
    let mut f = Functions::new();
    f.mutation(
        "createCounter",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::string(),
        |ctx, a: Named| ctx.insert("counters", obj! { "name" => a.name, "value" => 0i64 }),
    );
    f.mutation(
        "increment",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| add_to_counter(ctx, &a.name, 1),
    );
    f.mutation(
        "transfer",
        Visibility::Public,
        v::object([
            ("from", v::string()),
            ("to", v::string()),
            ("amount", v::int64()),
        ]),
        v::null(),
        |ctx, a: Transfer| {
            let from = counter_by_name(ctx, &a.from)?;
            let to = counter_by_name(ctx, &a.to)?;
            for (doc, delta) in [(from, -a.amount), (to, a.amount)] {
                let id = doc
                    .get_path("_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let n = doc.get_path("value").and_then(Value::as_i64).unwrap_or(0) + delta;
                let mut o = Object::new();
                o.insert("value".into(), n.into());
                ctx.patch("counters", &id, o)?;
            }
            Ok(())
        },
    );
    // Takes one from counter `name`, refused (CONFLICT) below zero, after its write, so a
    // refusal visibly commits nothing of the call. Each failed call adds one to the counter
    // `failures of <caller's subject>` (`FailureRecorder`); the recorder fails if that counter
    // does not exist.
    f.mutation_recording_failures(
        "decrement",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| {
            let n = add_to_counter(ctx, &a.name, -1)?;
            if n < 0 {
                return Err(FunctionError::conflict(format!("{} is at zero", a.name)));
            }
            Ok(n)
        },
        |ctx, _error| {
            let subject = ctx.auth().map_or("nobody", |i| i.subject.as_str());
            let counter = format!("failures of {subject}");
            add_to_counter(ctx, &counter, 1).map(|_| ())
        },
    );
    f.query(
        "getCounter",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::any(),
        |ctx, a: Named| counter_by_name(ctx, &a.name),
    );
    f.mutation(
        "addNote",
        Visibility::Public,
        v::object([
            ("topic", v::string()),
            ("seq", v::int64()),
            ("text", v::string()),
        ]),
        v::string(),
        |ctx, a: Value| ctx.insert("notes", a),
    );
    f.query(
        "notesAfter",
        Visibility::Public,
        v::object([
            ("topic", v::string()),
            ("after", v::int64()),
            ("limit", v::int64()),
        ]),
        // An array, so a re-run's result is checked against the previous one's (its size
        // and its unchanged elements are not measured or validated again).
        v::array(v::any()),
        |ctx, a: TopicRange| {
            Ok(Value::Array(
                ctx.query("notes", "by_topic_seq")
                    .eq("topic", a.topic)
                    .gt("seq", a.after)
                    .take(a.limit.clamp(0, 1000) as usize)?,
            ))
        },
    );
    // Reads an arbitrary `seq` range (`after` may exceed `before`) after a write of its own.
    f.mutation(
        "addNoteThenRange",
        Visibility::Public,
        v::object([
            ("topic", v::string()),
            ("seq", v::int64()),
            ("after", v::int64()),
            ("before", v::int64()),
        ]),
        v::array(v::any()),
        |ctx, a: NoteAndRange| {
            let note = obj! { "topic" => a.topic.as_str(), "seq" => a.seq, "text" => "x" };
            ctx.insert("notes", note)?;
            Ok(Value::Array(
                ctx.query("notes", "by_topic_seq")
                    .eq("topic", a.topic)
                    .gt("seq", a.after)
                    .lt("seq", a.before)
                    .take(100)?,
            ))
        },
    );
    // Holds whoever runs it (the subscription worker, for a subscription) until the test
    // opens the gate.
    f.query(
        "gated",
        Visibility::Public,
        v::object([]),
        v::null(),
        |_ctx, _a: Value| {
            use std::sync::atomic::Ordering;
            GATED_ENTERED.store(true, Ordering::SeqCst);
            let started = std::time::Instant::now();
            while !GATE_OPEN.load(Ordering::SeqCst) && started.elapsed().as_secs() < 60 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(())
        },
    );
    // Panics once the topic has a note with seq 13: a bug in a handler must not take the
    // subscription worker (and everyone's subscriptions) down with it.
    f.query(
        "notesOrPanic",
        Visibility::Public,
        v::object([("topic", v::string())]),
        v::any(),
        |ctx, a: Topic| {
            let notes = ctx
                .query("notes", "by_topic_seq")
                .eq("topic", a.topic)
                .take(100)?;
            assert!(
                notes
                    .iter()
                    .all(|n| n.get_path("seq") != Some(&Value::Int64(13))),
                "note 13"
            );
            Ok(Value::Array(notes))
        },
    );
    f.mutation(
        "addMember",
        Visibility::Public,
        v::object([("topic", v::string()), ("user", v::string())]),
        v::string(),
        |ctx, a: Value| ctx.insert("members", a),
    );
    f.mutation(
        "removeMember",
        Visibility::Public,
        v::object([("topic", v::string()), ("user", v::string())]),
        v::null(),
        |ctx, a: Membership| {
            if let Some(m) = ctx
                .query("members", "by_topic_user")
                .eq("topic", a.topic)
                .eq("user", a.user)
                .first()?
            {
                let id = m
                    .get_path("_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                ctx.delete("members", &id)?;
            }
            Ok(())
        },
    );
    f.shared_query(
        "memberNotes",
        v::object([("topic", v::string())]),
        v::any(),
        |ctx, a: Topic| require_member(ctx, &a.topic),
        |ctx, a: Topic| {
            Ok(Value::Array(
                ctx.query("notes", "by_topic_seq")
                    .eq("topic", a.topic)
                    .take(50)?,
            ))
        },
    );
    f.mutation(
        "internalOnly",
        Visibility::Internal,
        v::object([]),
        v::null(),
        |_ctx, _a: Value| Ok(()),
    );
    f
}

pub fn identity(subject: &str) -> query_engine::identity::Identity {
    query_engine::identity::Identity {
        issuer: "test".into(),
        subject: subject.into(),
        email: None,
        org_id: None,
        org_role: None,
        roles: vec![],
    }
}

/// An engine without fsync, for tests that commit thousands of times.
pub fn open_fast(dir: &Path) -> Engine {
    open_fast_with(dir, |_| {})
}

/// `open_fast` with further settings made by `adjust`.
pub fn open_fast_with(dir: &Path, adjust: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut config = EngineConfig::default();
    config.committer.durable = false;
    adjust(&mut config);
    Engine::open(&dir.join("db.redb"), schema(), functions(), config).expect("open engine")
}

/// Shuts `engine` down, drops it and waits (at most `within`) until its database file is
/// released: redb allows one open handle per file, so a test reopening it must wait.
pub async fn close(engine: Engine, within: std::time::Duration) {
    let released = tokio::task::spawn_blocking(move || engine.close(within))
        .await
        .unwrap();
    assert!(released, "the engine did not close");
}

pub fn open(dir: &Path) -> Engine {
    open_with(dir, |_| {})
}

/// `open` (durable commits) with further settings made by `adjust`.
pub fn open_with(dir: &Path, adjust: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut config = EngineConfig::default();
    adjust(&mut config);
    Engine::open(&dir.join("db.redb"), schema(), functions(), config).expect("open engine")
}
