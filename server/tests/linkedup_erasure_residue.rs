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
use linkedup_schema::ot::TextOperation;
use linkedup_schema::tables::names::{FORMER_PARTICIPANTS, TRANSCRIPTS};
use linkedup_server::linkedup::audit::flush_denials;
use linkedup_server::linkedup::erasure::{erase_offline, REDACTED};
use linkedup_server::linkedup::retention::PURGE;
use linkedup_server::linkedup::{LinkedUpConfig, RetentionPolicy};
use query_engine::engine::EngineConfig;
use query_engine::identity::Identity;
use query_engine::json::to_value;
use query_engine::obj;
use query_engine::value::Value;

/// `who` tries to turn a flag on for their organisation: FORBIDDEN unless an admin of one.
async fn try_set_flag(env: &Env, who: &Identity) {
    let r = env
        .m(
            "flags.set",
            obj! {
                "key" => "insights/postcall", "environment" => "local", "value" => true,
                "reason" => "test",
            },
            Some(who),
        )
        .await;
    expect_code(r, "FORBIDDEN");
}

/// Denials queued before the erasure and written after its job is done — the minute's first
/// thirty and the summary of the rest, written when the minute ends — carry neither the erased
/// account's token subject nor a link to the account the same subject signs in to afterwards.
/// A denial names the account refused, as it was when refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_written_after_an_erasure_do_not_name_the_erased_subject() {
    let w = world(LinkedUpConfig::default()).await;
    let env = &w.env;
    // bob is no organisation admin: each call is refused, past thirty a minute summarised.
    for _ in 0..31 {
        try_set_flag(env, &w.bob).await;
    }
    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    // The same person signs in again: a new account.
    let again = env.user(&w.bob).await;
    assert_ne!(again, w.bob_id);

    let log = &env.config.denials;
    log.sweep(query_engine::committer::now_millis() + 60_000);
    assert_eq!(flush_denials(&env.engine, log).await.unwrap(), 31);
    let rows = with(env, "auditLogs", "action", "access.denied").await;
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
    try_set_flag(env, &w.bob).await;
    // A first call refused: the account it created went with it, so the row names the
    // subject only.
    let erin = ident("erin", None, None);
    try_set_flag(env, &erin).await;
    assert_eq!(flush_denials(&env.engine, log).await.unwrap(), 2);
    let theirs = with(env, "auditLogs", "actorUserId", &again).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(s(&theirs[0], "metadata.subject"), "bob");
    let hers = with(env, "auditLogs", "metadata.subject", "erin").await;
    assert_eq!(hers.len(), 1);
    assert!(hers[0].get_path("actorUserId").is_none(), "{hers:?}");
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

/// A record of a removal from a meeting outlives its period while the meeting still holds what
/// it leads the removed user's erasure to. The sequence, with periods of a second for a year:
/// bob speaks and is removed from a meeting that goes on; past the record's period the meeting
/// ends and its segments (bob's words among them) are written; its chunks expire; the purge
/// then keeps bob's record, so his erasure still finds the meeting and redacts the segment.
/// A record whose meeting is over and holds nothing goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_record_outlives_its_period_while_its_meeting_holds_the_users_data() {
    const PERIOD: i64 = 1_000;
    let period = || tokio::time::sleep(std::time::Duration::from_millis(PERIOD as u64 + 50));
    let policy = [FORMER_PARTICIPANTS, TRANSCRIPTS]
        .map(|t| (t.to_string(), PERIOD))
        .to_vec();
    let w = world(LinkedUpConfig {
        retention: RetentionPolicy { max_age_ms: policy },
        ..LinkedUpConfig::default()
    })
    .await;
    let env = &w.env;
    let bob = w.bob_id.as_str();
    let purge = |table: &str| {
        let args = obj! { "table" => table };
        async move { env.engine.mutation(PURGE, args, None).await.unwrap() }
    };
    let alice = &w.alice;
    let remove = |meeting: String, user: String| async move {
        env.m(
            "meetings.removeParticipant",
            obj! { "meetingId" => meeting, "userId" => user },
            Some(alice),
        )
        .await
        .unwrap();
    };
    say(env, &w.bob, &w.meeting, "bob-1", bob).await;
    remove(w.meeting.clone(), w.bob_id.clone()).await;
    let quiet = env.schedule(&w.alice, "Quiet", &[&w.carol_id]).await;
    remove(quiet.clone(), w.carol_id.clone()).await;
    env.m(
        "meetings.cancel",
        obj! { "meetingId" => quiet },
        Some(&w.alice),
    )
    .await
    .unwrap();
    period().await;

    w.end_meeting().await;
    env.m(
        "transcripts.aggregateSegments",
        obj! { "meetingId" => w.meeting.as_str() },
        None,
    )
    .await
    .unwrap();
    let spoken = with(env, "transcriptSegments", "meetingId", &w.meeting).await;
    assert_eq!(spoken.len(), 1);
    assert_eq!(
        s(&spoken[0], "text"),
        format!("{bob} says something personal")
    );
    period().await;
    purge(TRANSCRIPTS).await;
    assert!(with(env, "transcripts", "meetingId", &w.meeting)
        .await
        .is_empty());
    purge(FORMER_PARTICIPANTS).await;
    let records = env.all(FORMER_PARTICIPANTS).await;
    assert_eq!(records.len(), 1, "carol's went, bob's stays: {records:?}");
    assert_eq!(s(&records[0], "userId"), bob);

    let r = request(env, &w.bob).await;
    wait_done(env, &s(&r, "requestId")).await;
    let segments = with(env, "transcriptSegments", "meetingId", &w.meeting).await;
    assert_eq!(s(&segments[0], "text"), REDACTED, "{segments:?}");
    assert!(env.all(FORMER_PARTICIPANTS).await.is_empty());
}

/// `who` writes `text` as the first edit of `meeting`'s note.
async fn write_note(env: &Env, who: &Identity, meeting: &str, text: &str) {
    let op = to_value(&TextOperation::new().insert(text)).unwrap();
    env.m(
        "notes.applyOperation",
        obj! {
            "meetingId" => meeting, "baseVersion" => 0i64, "op" => op,
            "clientId" => "c1", "clientSeq" => 1i64,
        },
        Some(who),
    )
    .await
    .unwrap();
}

/// carol is the only participant of two open meetings: once she is erased nobody could end
/// them, and a note is kept until its meeting is over. So her erasure closes them as a host
/// would — the scheduled one cancelled, the active one concluded — audited with no actor; the
/// post-call run asks the provider nothing for her; and note retention then purges the notes
/// only she wrote. The world's meeting, which has others, stays as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_the_last_participant_closes_the_meeting_so_its_note_can_expire() {
    let fake = ai_common::Fake::start().await;
    let w = world(fake.config()).await;
    let env = &w.env;
    ai_common::enable(&env.engine, &w.alice, "insights/postcall").await;
    let active = env.schedule(&w.carol, "Focus time", &[]).await;
    env.start(&w.carol, &active).await;
    wait_for_room_job(&env.engine, &active).await;
    let later = env.schedule(&w.carol, "Planning", &[]).await;
    for m in [&active, &later] {
        write_note(env, &w.carol, m, "carol's private plans").await;
    }

    let r = request(env, &w.carol).await;
    wait_done(env, &s(&r, "requestId")).await;
    let state = |m: String| async move {
        let meeting = env.all("meetings").await.into_iter().find(|d| id(d) == m);
        s(&meeting.unwrap(), "state")
    };
    assert_eq!(state(active.clone()).await, "concluded");
    assert_eq!(state(later.clone()).await, "cancelled");
    assert_eq!(state(w.meeting.clone()).await, "active");
    for (m, action) in [
        (&active, "meeting.concluded"),
        (&later, "meeting.cancelled"),
    ] {
        let rows: Vec<Value> = with(env, "auditLogs", "resourceId", m)
            .await
            .into_iter()
            .filter(|e| s(e, "action") == action)
            .collect();
        assert_eq!(rows.len(), 1, "{m}");
        assert_eq!(s(&rows[0], "metadata.reason"), "participantsErased");
        assert!(rows[0].get_path("actorUserId").is_none());
    }
    // The concluded meeting's post-call run ends with nobody to write for.
    for _ in 0..800 {
        if with(env, "insightRuns", "meetingId", &active)
            .await
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(with(env, "insightRuns", "meetingId", &active)
        .await
        .is_empty());
    assert_eq!(fake.count("/chat/completions"), 0, "{:?}", fake.requests());

    env.engine
        .mutation(
            "notes.compactAll",
            obj! { "retainMs" => 0i64, "retainNoteMs" => 0i64 },
            None,
        )
        .await
        .unwrap();
    for _ in 0..800 {
        if env.all("meetingNotes").await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(env.all("meetingNotes").await.is_empty());
}
