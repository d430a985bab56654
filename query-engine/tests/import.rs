//! Offline import: all documents of a valid file land with their indexes and keep given ids;
//! one invalid document, or a given id that is taken, leaves the database as it was.

mod common;

use std::path::Path;
use std::time::Duration;

use query_engine::engine::{Engine, EngineConfig};
use query_engine::functions::Functions;
use query_engine::id::{DocumentId, MAX_INTERNAL_ID};
use query_engine::import::{import, ImportError};
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::Value;

fn schema() -> SchemaDefinition {
    SchemaDefinition::new()
        .table(
            TableDefinition::new("rooms", v::object([("name", v::string())]))
                .index("by_name", &["name"]),
        )
        .table(
            TableDefinition::new(
                "members",
                v::object([("room", v::id("rooms")), ("n", v::int64())]),
            )
            .index("by_room_n", &["room", "n"]),
        )
}

fn open(path: &Path) -> Engine {
    let config = EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    };
    Engine::open(path, schema(), Functions::new(), config).unwrap()
}

/// How long a closed engine may take to release its file.
const CLOSE_WITHIN: Duration = Duration::from_secs(30);

async fn all(engine: &Engine, table: &'static str) -> Vec<Value> {
    let v = engine
        .read(move |ctx| {
            Ok(Value::Array(
                ctx.query(table, "by_creation_time").collect(5_000)?,
            ))
        })
        .await
        .unwrap();
    v.as_array().unwrap().to_vec()
}

fn id(doc: &Value) -> String {
    doc.get_path("_id")
        .and_then(Value::as_str)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_file_is_imported_whole_with_its_ids_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    // Ids from another database, referring to each other.
    let source = open(&dir.path().join("source.redb"));
    let (room, member) = {
        let r = source
            .transact(|ctx| {
                let room = ctx.insert("rooms", obj! {"name" => "blue"})?;
                let m = ctx.insert("members", obj! {"room" => room.as_str(), "n" => 7i64})?;
                Ok(Value::Array(vec![room.into(), m.into()]))
            })
            .await
            .unwrap();
        let a = r.as_array().unwrap();
        (
            a[0].as_str().unwrap().to_string(),
            a[1].as_str().unwrap().to_string(),
        )
    };
    common::close(source, CLOSE_WITHIN).await;
    common::close(open(&path), CLOSE_WITHIN).await;

    let rooms = vec![
        (
            1,
            obj! {"_id" => room.as_str(), "_creationTime" => 1_000i64, "name" => "blue"},
        ),
        (2, obj! {"name" => "green"}),
    ];
    let report = import(&path, schema(), "rooms", rooms).unwrap();
    assert_eq!(report.imported, 2);
    let members: Vec<(usize, Value)> = (0..300i64)
        .map(|n| (n as usize + 1, obj! {"room" => room.as_str(), "n" => n}))
        .chain([(
            301,
            obj! {"_id" => member.as_str(), "room" => room.as_str(), "n" => 1_000i64},
        )])
        .collect();
    assert_eq!(
        import(&path, schema(), "members", members)
            .unwrap()
            .imported,
        301
    );

    let engine = open(&path);
    let rooms = all(&engine, "rooms").await;
    assert_eq!(rooms.len(), 2);
    assert_eq!(id(&rooms[0]), room);
    assert_eq!(
        rooms[0].get_path("_creationTime"),
        Some(&Value::Int64(1_000))
    );
    // Through the imported index entries.
    let r = room.clone();
    let in_room = engine
        .read(move |ctx| {
            ctx.query("members", "by_room_n")
                .eq("room", r.as_str())
                .gte("n", 290i64)
                .collect(100)
                .map(Value::Array)
        })
        .await
        .unwrap();
    let ns: Vec<i64> = in_room
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.get_path("n").and_then(Value::as_i64).unwrap())
        .collect();
    assert_eq!(ns, (290..300).chain([1_000]).collect::<Vec<_>>());
    let green = engine
        .read(|ctx| {
            ctx.query("rooms", "by_name")
                .eq("name", "green")
                .first()
                .map(|d| d.unwrap_or(Value::Null))
        })
        .await
        .unwrap();
    assert_ne!(green, Value::Null);
    // New documents get ids of their own, never an imported one.
    let fresh = engine
        .transact(|ctx| {
            ctx.insert("members", obj! {"room" => "", "n" => 0i64})
                .map(Value::from)
        })
        .await;
    assert!(fresh.is_err(), "an invalid room id was accepted");
    let r = room.clone();
    let fresh = engine
        .transact(move |ctx| {
            ctx.insert("rooms", obj! {"name" => r.as_str()})
                .map(Value::from)
        })
        .await
        .unwrap();
    let ids: Vec<String> = all(&engine, "rooms").await.iter().map(id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&fresh.as_str().unwrap().to_string()));
}

/// A database at `path` holding one room, "red", closed again; returns the room's id.
async fn with_a_red_room(path: &Path) -> String {
    let engine = open(path);
    let existing = engine
        .transact(|ctx| ctx.insert("rooms", obj! {"name" => "red"}).map(Value::from))
        .await
        .unwrap();
    common::close(engine, CLOSE_WITHIN).await;
    existing.as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_document_or_a_taken_id_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let existing = with_a_red_room(&path).await;

    let mut docs: Vec<(usize, Value)> = (1..=50)
        .map(|i| (i, obj! {"name" => format!("r{i}")}))
        .collect();
    docs.push((51, obj! {"name" => 5i64}));
    docs.push((52, obj! {"name" => "x", "_secret" => 1i64}));
    docs.push((53, obj! {"_id" => existing.as_str(), "name" => "again"}));
    docs.push((54, Value::Int64(3)));
    match import(&path, schema(), "rooms", docs) {
        Err(ImportError::Invalid { count, errors }) => {
            assert_eq!(count, 4);
            let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
            assert_eq!(lines, vec![51, 52, 53, 54]);
            assert!(errors[0].message.contains("name"), "{}", errors[0]);
            assert!(
                errors[2].message.contains("already exists"),
                "{}",
                errors[2]
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    // Two imports naming the same id, or an id of another table.
    let twice = vec![(
        1,
        obj! {"_id" => existing.as_str(), "room" => existing.as_str(), "n" => 1i64},
    )];
    match import(&path, schema(), "members", twice) {
        Err(ImportError::Invalid { errors, .. }) => {
            assert!(
                errors[0].message.contains("not an id of table members"),
                "{}",
                errors[0]
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(matches!(
        import(&path, schema(), "_mutation_ids", vec![]),
        Err(ImportError::UnknownTable(_))
    ));
    assert!(matches!(
        import(&path, schema(), "nope", vec![]),
        Err(ImportError::UnknownTable(_))
    ));

    let engine = open(&path);
    let rooms = all(&engine, "rooms").await;
    assert_eq!(rooms.len(), 1, "something was imported");
    assert_eq!(all(&engine, "members").await.len(), 0);
}

/// A given id's counter raises the engine's: one near the top of the range would make the
/// counter wrap and hand out the ids of live documents, so it is refused, and an id the
/// engine could have made is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_above_what_the_engine_allocates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let existing = with_a_red_room(&path).await;
    let table = DocumentId::parse(&existing).unwrap().table;

    for internal in [u64::MAX - 2, u64::MAX, MAX_INTERNAL_ID] {
        let id = DocumentId::new(table, internal).to_string();
        let docs = vec![(1, obj! {"_id" => id.as_str(), "name" => "wraps"})];
        match import(&path, schema(), "rooms", docs) {
            Err(ImportError::Invalid { errors, .. }) => assert!(
                errors[0]
                    .message
                    .contains("above any this engine allocates"),
                "{}",
                errors[0]
            ),
            other => panic!("{internal}: expected Invalid, got {other:?}"),
        }
    }
    let high = DocumentId::new(table, 1 << 40).to_string();
    let docs = vec![(1, obj! {"_id" => high.as_str(), "name" => "high"})];
    assert_eq!(import(&path, schema(), "rooms", docs).unwrap().imported, 1);

    // The counter went up to the given id, not around: new documents never take an old id.
    let engine = open(&path);
    for _ in 0..3 {
        engine
            .transact(|ctx| ctx.insert("rooms", obj! {"name" => "new"}).map(Value::from))
            .await
            .unwrap();
    }
    let rooms = all(&engine, "rooms").await;
    let names: Vec<&str> = rooms
        .iter()
        .map(|d| d.get_path("name").and_then(Value::as_str).unwrap())
        .collect();
    assert_eq!(names, ["red", "high", "new", "new", "new"]);
    for d in &rooms[2..] {
        assert!(DocumentId::parse(&id(d)).unwrap().internal > 1 << 40);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_of_too_many_documents_is_refused_before_it_opens_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    with_a_red_room(&path).await;
    let too_many = vec![(1, Value::Null); query_engine::import::MAX_IMPORT_DOCUMENTS + 1];
    assert!(matches!(
        import(&path, schema(), "rooms", too_many),
        Err(ImportError::TooMany)
    ));
    let engine = open(&path);
    assert_eq!(all(&engine, "rooms").await.len(), 1, "nothing imported");
}

/// An import (an offline tool) of another build must not change the database's schema:
/// opening with a schema pushes it, retiring the indexes that build does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_with_another_schema_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    with_a_red_room(&path).await;
    let mut other = schema();
    other.tables.remove("members");
    let docs = vec![(1, obj! {"name" => "blue"})];
    let e = import(&path, other, "rooms", docs).unwrap_err();
    assert!(e.to_string().contains("schema is not this build's"), "{e}");
    // The members table and its index are still there and served.
    let engine = open(&path);
    let rooms = all(&engine, "rooms").await;
    assert_eq!(rooms.len(), 1);
    let room = id(&rooms[0]);
    engine
        .transact(move |ctx| {
            ctx.insert("members", obj! {"room" => room.as_str(), "n" => 1i64})
                .map(Value::from)
        })
        .await
        .unwrap();
}
