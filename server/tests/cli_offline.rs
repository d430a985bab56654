//! The `linkedup` CLI's offline commands on a stopped server's database: `schema push`
//! applies this build's schema, and `import` adds a JSON-lines file to a table, all or
//! nothing, with each bad line named.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use query_engine::engine::{Engine, EngineConfig};
use query_engine::functions::Functions;
use query_engine::value::Value;

fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_linkedup"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

async fn interests(db: &Path) -> Vec<Value> {
    let config = EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    };
    let engine = Engine::open(db, linkedup_schema::schema(), Functions::new(), config).unwrap();
    let v = all(&engine, "interests").await;
    close(engine).await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_push_then_import_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = data.join("linkedup.redb");

    // Nothing there yet: without --create neither command makes a database.
    let file = data.join("interests.jsonl");
    std::fs::write(
        &file,
        r#"{"key": "go", "label": "Go", "category": "tech", "createdAt": 1}"#,
    )
    .unwrap();
    for args in [
        &["schema", "push"][..],
        &["import", "interests", file.to_str().unwrap()][..],
    ] {
        let out = cli(data, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no database") && err.contains("--create"),
            "{err}"
        );
        assert!(!db.exists(), "{args:?} made a database");
    }

    let out = cli(data, &["schema", "push", "--create"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The application's tables, not the engine's own.
    let tables = linkedup_schema::schema().tables.len();
    assert_eq!(report["tables"], tables, "{report}");
    assert_eq!(report["documentsChecked"], 0);

    let good = [
        r#"{"key": "rust", "label": "Rust", "category": "tech", "createdAt": 1}"#,
        "",
        r#"{"key": "ai", "label": "AI", "category": "tech", "createdAt": 2}"#,
    ];
    std::fs::write(&file, good.join("\n")).unwrap();
    let out = cli(data, &["import", "interests", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["imported"], 2);

    // A document of the wrong shape and a line that is not JSON: each named, nothing written.
    let bad = [
        r#"{"key": "go", "label": "Go", "category": "tech", "createdAt": 3}"#,
        r#"{"key": "rs", "label": 5, "category": "tech", "createdAt": 4}"#,
    ];
    std::fs::write(&file, bad.join("\n")).unwrap();
    let out = cli(data, &["import", "interests", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("VALIDATION_ERROR"),
        "{err}"
    );
    std::fs::write(&file, format!("{}\n{{not json", bad[0])).unwrap();
    let out = cli(data, &["import", "interests", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: not a JSON document"), "{err}");
    // A line that is not UTF-8 is named (not read with replacement characters).
    let mut bytes = format!("{}\n", bad[0]).into_bytes();
    bytes.extend_from_slice(
        b"{\"key\": \"\xff\", \"label\": \"x\", \"category\": \"t\", \"createdAt\": 5}\n",
    );
    std::fs::write(&file, bytes).unwrap();
    let out = cli(data, &["import", "interests", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: not UTF-8"), "{err}");
    // A line longer than any document's JSON is refused before it is parsed.
    let long = format!("{}\n{{\"key\": \"{}\"}}\n", bad[0], "x".repeat(17 << 20));
    std::fs::write(&file, long).unwrap();
    let out = cli(data, &["import", "interests", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2 is longer than"), "{err}");

    let keys: Vec<String> = interests(&db)
        .await
        .iter()
        .map(|d| {
            d.get_path("key")
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, ["rust", "ai"]);
}

async fn open_linkedup(db: &Path) -> Engine {
    let mut functions = Functions::new();
    linkedup_server::linkedup::register(
        &mut functions,
        &linkedup_server::linkedup::LinkedUpConfig::default(),
    );
    let config = EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    };
    Engine::open(db, linkedup_schema::schema(), functions, config).unwrap()
}

async fn close(engine: Engine) {
    let closed = tokio::task::spawn_blocking(move || engine.close(Duration::from_secs(30)));
    assert!(closed.await.unwrap());
}

async fn all(engine: &Engine, table: &'static str) -> Vec<Value> {
    let v = engine
        .read(move |ctx| {
            Ok(Value::Array(
                ctx.query(table, "by_creation_time").collect(1_000)?,
            ))
        })
        .await
        .unwrap();
    v.as_array().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_runs_an_operators_erasure_to_the_end_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = data.join("linkedup.redb");
    // No database there: refused, and none is created.
    let out = cli(data, &["erase", "--user", "0000070000000000001zzzz"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
    assert!(!db.exists());
    let who = query_engine::identity::Identity {
        issuer: "https://auth.test".into(),
        subject: "mallory".into(),
        email: Some("mallory@example.com".into()),
        org_id: Some("org1".into()),
        org_role: Some("member".into()),
        roles: Vec::new(),
    };
    let engine = open_linkedup(&db).await;
    let user = engine
        .mutation("users.ensure", query_engine::obj! {}, Some(&who))
        .await
        .unwrap()
        .value;
    let user = user.get_path("_id").unwrap().as_str().unwrap().to_string();
    engine
        .mutation(
            "profiles.update",
            query_engine::obj! { "bio" => "Mallory writes compilers" },
            Some(&who),
        )
        .await
        .unwrap();
    assert_eq!(all(&engine, "profiles").await.len(), 1);
    close(engine).await;

    // An id that names no account: refused, and nothing is started.
    let out = cli(data, &["erase", "--user", "0000070000000000001zzzz"]);
    assert!(!out.status.success());
    let engine = open_linkedup(&db).await;
    assert!(all(&engine, "erasureRequests").await.is_empty());
    close(engine).await;

    let out = cli(data, &["erase", "--user", &user]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["userId"], user.as_str());
    assert!(report["runs"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["documents"].as_i64().unwrap() >= 1, "{report}");

    let engine = open_linkedup(&db).await;
    assert!(all(&engine, "profiles").await.is_empty());
    let users = all(&engine, "users").await;
    assert_eq!(users.len(), 1);
    assert!(
        users[0].get_path("erasedAt").is_some(),
        "a tombstone: {:?}",
        users[0]
    );
    close(engine).await;
}

#[test]
fn a_refused_import_with_create_leaves_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let file = data.join("interests.jsonl");
    std::fs::write(
        &file,
        r#"{"key": "rs", "label": 5, "category": "tech", "createdAt": 4}"#,
    )
    .unwrap();
    let out = cli(
        data,
        &["import", "interests", file.to_str().unwrap(), "--create"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VALIDATION_ERROR"), "{err}");
    let mut left: Vec<String> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["interests.jsonl"], "{err}");
    // So a run without --create still refuses the path rather than taking an empty database.
    let out = cli(data, &["import", "interests", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no database"), "{err}");
}

/// A database another process opened while `import --create` read its input is never
/// removed by the import's failure: before, the import took a file that was not there when
/// it looked as its own and deleted it (and its log) under the process using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_never_removes_a_database_another_process_opened() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = data.join("linkedup.redb");
    let fifo = data.join("interests.jsonl");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let child = Command::new(env!("CARGO_BIN_EXE_linkedup"))
        .arg("--data-dir")
        .arg(data)
        .args(["import", "interests", fifo.to_str().unwrap(), "--create"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Opening the FIFO's write end returns once the import has opened it to read: past its
    // look at the database path.
    let input = {
        let fifo = fifo.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new().write(true).open(fifo).unwrap()
        })
        .await
        .unwrap()
    };
    // Meanwhile another process opens the database and writes to it.
    let engine = open_linkedup(&db).await;
    engine
        .transact(|ctx| {
            ctx.insert(
                "interests",
                query_engine::obj! {"key" => "go", "label" => "Go", "category" => "tech", "createdAt" => 1i64},
            )?;
            Ok(Value::Null)
        })
        .await
        .unwrap();
    {
        use std::io::Write;
        let mut input = input;
        input
            .write_all(br#"{"key": "rs", "label": "Rust", "category": "tech", "createdAt": 2}"#)
            .unwrap();
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(db.exists(), "the database was removed: {err}");
    assert_eq!(all(&engine, "interests").await.len(), 1, "{err}");
    close(engine).await;
    // And on its next open it still holds what was written.
    assert_eq!(interests(&db).await.len(), 1);
}
