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
    let v = engine
        .read(|ctx| {
            Ok(Value::Array(
                ctx.query("interests", "by_creation_time").collect(1_000)?,
            ))
        })
        .await
        .unwrap();
    let closed = tokio::task::spawn_blocking(move || engine.close(Duration::from_secs(30)));
    assert!(closed.await.unwrap());
    v.as_array().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_push_then_import_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = data.join("linkedup.redb");

    let out = cli(data, &["schema", "push"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["tables"].as_u64().unwrap() > 20, "{report}");
    assert_eq!(report["documentsChecked"], 0);

    let file = data.join("interests.jsonl");
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
