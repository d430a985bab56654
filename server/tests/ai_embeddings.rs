//! Embeddings: `embeddings.refreshMine` stores one unit vector per user under (`user`, users
//! id) whose similarities reflect shared interests; `embeddings.generate` replaces a source's
//! vector of the same model, keeps one index per (provider, model) and refuses vectors that
//! disagree with it; bad content, unknown models and provider failures write nothing.

mod ai_common;
mod linkedup_common;

use ai_common::*;
use linkedup_common::*;
use linkedup_server::linkedup::{LinkedUpConfig, RateLimit};
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

fn vector(doc: &Value) -> Vec<f64> {
    doc.get_path("vector")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

async fn of_source(env: &Env, source_type: &str, source_id: &str) -> Vec<Value> {
    env.all("embeddings")
        .await
        .into_iter()
        .filter(|e| s(e, "sourceType") == source_type && s(e, "sourceId") == source_id)
        .collect()
}

async fn refresh(
    env: &Env,
    who: Option<&Identity>,
) -> Result<Value, query_engine::error::FunctionError> {
    env.call("embeddings.refreshMine", obj! {}, who).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_one_unit_vector_each_whose_similarity_follows_their_interests() {
    let mut config = LinkedUpConfig::default();
    config.ai.refresh_limit = RateLimit {
        max: 3,
        window_ms: 600_000,
    };
    // One counter per bucket: the limiter is exact (see rate_limit).
    config.rate_limits.shards = 1;
    let w = world(config).await;
    let profile = |bio: &str| obj! { "bio" => bio };
    for (who, bio, interests) in [
        (
            &w.alice,
            "I build storage engines and databases.",
            vec!["rust", "ai"],
        ),
        (&w.bob, "Databases and compilers.", vec!["rust"]),
        (&w.carol, "Gardening, tomatoes and beekeeping.", vec![]),
    ] {
        w.env
            .m("profiles.update", profile(bio), Some(who))
            .await
            .unwrap();
        let keys: Vec<Value> = interests.into_iter().map(Value::from).collect();
        w.env
            .m("interests.setMine", obj! { "keys" => keys }, Some(who))
            .await
            .unwrap();
        let r = refresh(&w.env, Some(who)).await.unwrap();
        assert_eq!(s(&r, "model"), "local-hash-256");
        assert_eq!(r.get_path("dimensions"), Some(&Value::from(256i64)));
    }
    let alice = of_source(&w.env, "user", &w.alice_id).await;
    assert_eq!(alice.len(), 1);
    let (a, b, c) = (
        vector(&alice[0]),
        vector(&of_source(&w.env, "user", &w.bob_id).await[0]),
        vector(&of_source(&w.env, "user", &w.carol_id).await[0]),
    );
    assert_eq!(a.len(), 256);
    assert!((dot(&a, &a) - 1.0).abs() < 1e-9);
    assert!(
        dot(&a, &b) > dot(&a, &c) + 0.1,
        "{} vs {}",
        dot(&a, &b),
        dot(&a, &c)
    );
    assert_eq!(
        alice[0]
            .get_path("metadata.provider")
            .and_then(Value::as_str),
        Some("local")
    );

    // A refresh replaces the vector in place.
    w.env
        .m(
            "profiles.update",
            profile("Now into gardening."),
            Some(&w.alice),
        )
        .await
        .unwrap();
    refresh(&w.env, Some(&w.alice)).await.unwrap();
    let again = of_source(&w.env, "user", &w.alice_id).await;
    assert_eq!(again.len(), 1);
    assert_eq!(id(&again[0]), id(&alice[0]));
    assert_ne!(vector(&again[0]), a);

    // One index for the local model.
    let indexes = w.env.all("vectorIndexMeta").await;
    assert_eq!(indexes.len(), 1);
    assert_eq!(s(&indexes[0], "provider"), "local");
    assert_eq!(s(&indexes[0], "indexName"), "local-hash-256");
    assert_eq!(s(&indexes[0], "status"), "active");
    assert_eq!(
        indexes[0].get_path("config.dimensions"),
        Some(&Value::from(256i64))
    );

    // Nothing to embed, no identity, too often.
    let e = expect_code(refresh(&w.env, Some(&w.dave)).await, "VALIDATION_ERROR");
    assert!(e.message.contains("nothing to embed"), "{}", e.message);
    expect_code(refresh(&w.env, None).await, "UNAUTHORIZED");
    refresh(&w.env, Some(&w.alice)).await.unwrap();
    expect_code(refresh(&w.env, Some(&w.alice)).await, "RATE_LIMITED");
    assert_eq!(w.env.all("embeddings").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_vectors_keep_to_their_models_index() {
    let fake = Fake::start().await;
    let w = world(fake.config()).await;
    let generate = |content: &str, model: Option<&str>| {
        let mut args = obj! {
            "sourceType" => "meeting",
            "sourceId" => w.meeting.as_str(),
            "content" => content,
        };
        if let Some(m) = model {
            args.as_object_mut()
                .unwrap()
                .insert("model".into(), m.into());
        }
        let engine = w.env.engine.clone();
        async move { engine.action("embeddings.generate", args, None).await }
    };
    let first = generate("The launch plan for May", None).await.unwrap();
    assert_eq!(first.get_path("dimensions"), Some(&Value::from(8i64)));
    assert_eq!(s(&first, "model"), "text-embedding-3-small");
    assert_eq!(fake.count("/embeddings"), 1);

    // The provider changes its vectors' size: refused, nothing replaced.
    fake.set_embedding_dims(16);
    let e = expect_code(generate("The launch plan for June", None).await, "CONFLICT");
    assert!(e.message.contains("8-dimensional"), "{}", e.message);
    let stored = of_source(&w.env, "meeting", &w.meeting).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(id(&stored[0]), s(&first, "embeddingId"));
    assert_eq!(stored[0].get_path("dimensions"), Some(&Value::from(8i64)));

    // Another model: its own index and its own vector for the source.
    let large = generate("The launch plan for June", Some("text-embedding-3-large"))
        .await
        .unwrap();
    assert_eq!(large.get_path("dimensions"), Some(&Value::from(16i64)));
    assert_eq!(of_source(&w.env, "meeting", &w.meeting).await.len(), 2);
    let mut names: Vec<String> = w
        .env
        .all("vectorIndexMeta")
        .await
        .iter()
        .map(|i| format!("{}/{}", s(i, "provider"), s(i, "indexName")))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "openai/text-embedding-3-large",
            "openai/text-embedding-3-small"
        ]
    );

    // Bad content never reaches the provider; a failing provider writes nothing.
    let before = fake.count("/embeddings");
    expect_code(generate("the and of", None).await, "VALIDATION_ERROR");
    expect_code(
        generate(&"word ".repeat(2_000), None).await,
        "VALIDATION_ERROR",
    );
    assert_eq!(fake.count("/embeddings"), before);
    fake.always(status(500));
    expect_code(
        generate("Launch", Some("text-embedding-3-large")).await,
        "PROVIDER_ERROR",
    );
    assert_eq!(w.env.all("embeddings").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_refuses_other_models() {
    let w = world(LinkedUpConfig::default()).await;
    let e = expect_code(
        w.env
            .engine
            .action(
                "embeddings.generate",
                obj! {
                    "sourceType" => "note",
                    "sourceId" => "n1",
                    "content" => "launch",
                    "model" => "text-embedding-3-small",
                },
                None,
            )
            .await,
        "VALIDATION_ERROR",
    );
    assert!(e.message.starts_with("model:"), "{}", e.message);
    assert!(w.env.all("embeddings").await.is_empty());
}
