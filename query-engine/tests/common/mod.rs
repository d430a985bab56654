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

pub fn counter_by_name(
    ctx: &mut query_engine::context::Ctx<'_, '_>,
    name: &str,
) -> Result<Value, FunctionError> {
    ctx.query("counters", "by_name")
        .eq("name", name)
        .unique()?
        .ok_or_else(|| FunctionError::not_found(format!("no counter {name}")))
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
        |ctx, a: Named| {
            let c = counter_by_name(ctx, &a.name)?;
            let id = c
                .get_path("_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let n = c.get_path("value").and_then(Value::as_i64).unwrap_or(0) + 1;
            let mut o = Object::new();
            o.insert("value".into(), n.into());
            ctx.patch("counters", &id, o)?;
            Ok(n)
        },
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
        v::any(),
        |ctx, a: TopicRange| {
            Ok(Value::Array(
                ctx.query("notes", "by_topic_seq")
                    .eq("topic", a.topic)
                    .gt("seq", a.after)
                    .take(a.limit.clamp(0, 1000) as usize)?,
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

pub fn open(dir: &Path) -> Engine {
    Engine::open(
        &dir.join("db.redb"),
        schema(),
        functions(),
        EngineConfig::default(),
    )
    .expect("open engine")
}
