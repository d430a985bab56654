//! What an erasure must not leave behind outside the tables its job goes through: access
//! denials written after it, profile text in scheduled jobs or sent to the embedding provider,
//! removal records purged before the data they lead it to, and meetings nobody is left to
//! end (whose notes retention could then never purge).

mod ai_common;
mod erasure_common;
mod linkedup_common;

use erasure_common::*;
use linkedup_common::*;
use linkedup_schema::api::erasure::ErasureStatus;
use linkedup_server::linkedup::audit::flush_denials;
use linkedup_server::linkedup::erasure::erase_offline;
use linkedup_server::linkedup::LinkedUpConfig;
use query_engine::engine::EngineConfig;
use query_engine::obj;
use query_engine::value::Value;

/// The access-denial rows of the audit log.
async fn denials(env: &Env) -> Vec<Value> {
    with(env, "auditLogs", "action", "access.denied").await
}

/// Denials queued before the erasure and written after its job is done — the minute's first
/// thirty and the summary of the rest, written when the minute ends — carry neither the erased
/// account's token subject nor a link to the account the same subject signs in to afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_written_after_an_erasure_do_not_name_the_erased_subject() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    // bob is no organisation admin: each call is FORBIDDEN, past thirty a minute summarised.
    for _ in 0..31 {
        let r = env
            .m(
                "flags.set",
                obj! {
                    "key" => "insights/postcall", "environment" => "local", "value" => true,
                    "reason" => "test",
                },
                Some(&w.bob),
            )
            .await;
        expect_code(r, "FORBIDDEN");
    }
    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    // The same person signs in again: a new account.
    let again = env.user(&w.bob).await;
    assert_ne!(again, w.bob_id);

    let log = &env.config.denials;
    log.sweep(query_engine::committer::now_millis() + 60_000);
    assert_eq!(flush_denials(&env.engine, log).await.unwrap(), 31);
    let rows = denials(env).await;
    assert_eq!(rows.len(), 31, "the denials stay, as the security record");
    for row in &rows {
        assert!(row.get_path("metadata.subject").is_none(), "{row:?}");
        assert_eq!(s(row, "actorUserId"), w.bob_id, "the erased account's id");
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r.get_path("metadata.suppressed").is_some())
            .count(),
        1
    );

    // The new account's own denials are its own, with its subject.
    let r = env
        .m(
            "flags.set",
            obj! {
                "key" => "insights/postcall", "environment" => "local", "value" => true,
                "reason" => "test",
            },
            Some(&w.bob),
        )
        .await;
    expect_code(r, "FORBIDDEN");
    flush_denials(&env.engine, log).await.unwrap();
    let theirs = with(env, "auditLogs", "actorUserId", &again).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(s(&theirs[0], "metadata.subject"), "bob");
}

/// Runs, as the scheduler would, each pending embeddings job (their outcome recorded there,
/// not checked here); returns how many.
async fn run_embedding_jobs(env: &Env) -> usize {
    let jobs: Vec<Value> = env
        .all("_scheduled_jobs")
        .await
        .into_iter()
        .filter(|j| s(j, "function").starts_with("embeddings.") && s(j, "state") == "pending")
        .collect();
    for j in &jobs {
        let args = j.get_path("args").cloned().unwrap();
        let _outcome = env.call(&s(j, "function"), args, None).await;
    }
    jobs.len()
}

/// A profile change schedules the embedding refresh with the user's id only: the text is read
/// when the job runs, so none of it waits in `_scheduled_jobs` (kept a week after), and a
/// refresh still queued when the user's erasure is requested asks the provider nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_embedding_refreshes_hold_no_profile_text_and_skip_an_erased_user() {
    const MARKER: &str = "MARKER Bob restores vintage synthesizers";
    let fake = ai_common::Fake::start().await;
    // The test runs the jobs itself, so that the refresh is still queued at the request.
    let env = open_with(
        fake.config(),
        EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        },
    );
    let (alice, bob) = (ident("alice", None, None), ident("bob", None, None));
    let alice_id = env.user(&alice).await;
    let bob_id = env.user(&bob).await;
    for (who, bio) in [(&alice, "Alice plans rocket launches"), (&bob, MARKER)] {
        env.m("profiles.update", obj! { "bio" => bio }, Some(who))
            .await
            .unwrap();
    }
    request(&env, &bob).await;
    let (done, _) = erase_offline(&env.engine, &bob_id, 100).await.unwrap();
    assert_eq!(done.status, ErasureStatus::Done);
    assert_eq!(run_embedding_jobs(&env).await, 2);

    let sent: Vec<String> = fake.requests().iter().map(|r| r.body.to_string()).collect();
    assert_eq!(sent.len(), 1, "alice's refresh only: {sent:?}");
    assert!(sent[0].contains("rocket launches"), "{sent:?}");
    assert_eq!(
        with(&env, "embeddings", "sourceId", &alice_id).await.len(),
        1
    );
    assert!(with(&env, "embeddings", "sourceId", &bob_id)
        .await
        .is_empty());
    for job in env.all("_scheduled_jobs").await {
        assert!(!format!("{job:?}").contains("MARKER"), "{job:?}");
    }
}
