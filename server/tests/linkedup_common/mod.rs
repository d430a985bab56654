//! Shared fixtures for the LinkedUp in-process tests: an engine on a temp dir with the
//! LinkedUp schema and functions, identities, and a small world of users and a meeting.
#![allow(dead_code)]

use std::sync::atomic::Ordering;

use linkedup_server::linkedup::{self, LinkedUpConfig};
use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::functions::Functions;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

pub struct Env {
    pub engine: Engine,
    pub config: LinkedUpConfig,
    _dir: tempfile::TempDir,
}

pub fn ident(subject: &str, org: Option<&str>, role: Option<&str>) -> Identity {
    Identity {
        issuer: "https://auth.test".into(),
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        org_id: org.map(String::from),
        org_role: role.map(String::from),
        roles: Vec::new(),
    }
}

pub fn open(config: LinkedUpConfig) -> Env {
    open_with(config, EngineConfig::default())
}

/// `open` with engine settings, e.g. without the scheduler for a test that runs jobs itself.
pub fn open_with(config: LinkedUpConfig, engine_config: EngineConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut functions = Functions::new();
    linkedup::register(&mut functions, &config);
    let engine = Engine::open(
        &dir.path().join("db.redb"),
        linkedup_schema::schema(),
        functions,
        engine_config,
    )
    .unwrap();
    Env {
        engine,
        config,
        _dir: dir,
    }
}

impl Env {
    pub async fn q(
        &self,
        name: &str,
        args: Value,
        who: Option<&Identity>,
    ) -> Result<Value, FunctionError> {
        self.engine.query(name, args, who).await.map(|r| r.value)
    }

    pub async fn m(
        &self,
        name: &str,
        args: Value,
        who: Option<&Identity>,
    ) -> Result<Value, FunctionError> {
        self.engine.mutation(name, args, who).await.map(|r| r.value)
    }

    /// Calls `name` as whatever kind it is registered as.
    pub async fn call(
        &self,
        name: &str,
        args: Value,
        who: Option<&Identity>,
    ) -> Result<Value, FunctionError> {
        use query_engine::functions::FunctionKind;
        let kind = self.engine.functions().get(name).map(|d| d.kind);
        match kind {
            Some(FunctionKind::Query) => self.q(name, args, who).await,
            Some(FunctionKind::Mutation) => self.m(name, args, who).await,
            Some(FunctionKind::Action) => self.engine.action(name, args, who).await,
            None => panic!("no function {name}"),
        }
    }

    /// Creates (or links) the user and returns its id.
    pub async fn user(&self, who: &Identity) -> String {
        let u = self.m("users.ensure", obj! {}, Some(who)).await.unwrap();
        u.get_path("_id").unwrap().as_str().unwrap().to_string()
    }

    /// `host` schedules a meeting titled `title` with `invitees` (user ids); returns its id.
    pub async fn schedule(&self, host: &Identity, title: &str, invitees: &[&str]) -> String {
        let invitees: Vec<Value> = invitees.iter().map(|&i| Value::from(i)).collect();
        let m = self
            .m(
                "meetings.schedule",
                obj! { "title" => title, "inviteeIds" => invitees },
                Some(host),
            )
            .await
            .unwrap();
        m.as_str().unwrap().to_string()
    }

    /// `host` starts meeting `meeting`.
    pub async fn start(&self, host: &Identity, meeting: &str) {
        self.m(
            "meetings.start",
            obj! { "meetingId" => meeting },
            Some(host),
        )
        .await
        .unwrap();
    }

    /// `host` ends meeting `meeting`.
    pub async fn end(&self, host: &Identity, meeting: &str) {
        self.m("meetings.end", obj! { "meetingId" => meeting }, Some(host))
            .await
            .unwrap();
    }

    pub fn commits(&self) -> u64 {
        self.engine.metrics().commits.load(Ordering::Relaxed)
    }

    pub fn conflicts(&self) -> u64 {
        self.engine.metrics().conflicts.load(Ordering::Relaxed)
    }

    /// Every document of a table in creation order (test-sized tables only).
    pub async fn all(&self, table: &'static str) -> Vec<Value> {
        documents(&self.engine, table).await
    }
}

/// Waits (bounded) until `table` holds `n` documents; returns them.
pub async fn documents_when(env: &Env, table: &'static str, n: usize) -> Vec<Value> {
    let mut all = Vec::new();
    for _ in 0..800 {
        all = env.all(table).await;
        if all.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(all.len(), n, "{table}: {all:#?}");
    all
}

/// Every document of a table in creation order (test-sized tables only).
pub async fn documents(engine: &Engine, table: &'static str) -> Vec<Value> {
    let v = engine
        .read(move |ctx| {
            Ok(Value::Array(
                ctx.query(table, "by_creation_time").collect(8_000)?,
            ))
        })
        .await
        .unwrap();
    v.as_array().unwrap().to_vec()
}

/// Waits (bounded) until the Stream room job `meetings.start` scheduled for `meeting` has
/// finished, so that its commits do not race a test's.
pub async fn wait_for_room_job(engine: &Engine, meeting: &str) {
    for _ in 0..400 {
        let jobs = meeting_jobs(engine, "streamRooms.provision", meeting).await;
        let running = jobs.iter().any(|j| {
            matches!(
                j.get_path("state").and_then(Value::as_str),
                Some("pending" | "running")
            )
        });
        if !running {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the Stream room job of {meeting} did not finish");
}

/// The scheduled jobs of `function` for `meeting` (their `args.meetingId`), as they are now.
pub async fn meeting_jobs(engine: &Engine, function: &str, meeting: &str) -> Vec<Value> {
    let (f, m) = (function.to_string(), meeting.to_string());
    let v = engine
        .read(move |ctx| {
            let jobs = ctx.full_table_scan("_scheduled_jobs", 1_000)?;
            Ok(Value::Array(
                jobs.into_iter()
                    .filter(|j| {
                        j.get_path("function").and_then(Value::as_str) == Some(f.as_str())
                            && j.get_path("args.meetingId").and_then(Value::as_str)
                                == Some(m.as_str())
                    })
                    .collect(),
            ))
        })
        .await
        .unwrap();
    v.as_array().unwrap().to_vec()
}

pub fn id(v: &Value) -> String {
    v.get_path("_id")
        .and_then(Value::as_str)
        .unwrap()
        .to_string()
}

pub fn s(v: &Value, path: &str) -> String {
    v.get_path(path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path} in {v:?}"))
        .to_string()
}

pub fn expect_code(r: Result<Value, FunctionError>, code: &str) -> FunctionError {
    match r {
        Ok(v) => panic!("expected {code}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            e
        }
    }
}

/// The standard cast: alice (org1 admin, host), bob (org1 member, participant), carol (org1
/// member, not a participant), dave (org2 admin).
pub struct World {
    pub env: Env,
    pub alice: Identity,
    pub bob: Identity,
    pub carol: Identity,
    pub dave: Identity,
    pub alice_id: String,
    pub bob_id: String,
    pub carol_id: String,
    pub dave_id: String,
    /// Scheduled by alice with bob invited, and started.
    pub meeting: String,
}

impl World {
    /// A meeting of alice's with bob invited, not started (so no room job runs).
    pub async fn scheduled(&self) -> String {
        self.env
            .schedule(&self.alice, "Later", &[&self.bob_id])
            .await
    }

    /// Alice (the host) ends the meeting.
    pub async fn end_meeting(&self) {
        self.env.end(&self.alice, &self.meeting).await;
    }

    /// Gives each of `who` a display name and the interest Rust (the local AI provider
    /// recommends people who share an interest to each other).
    pub async fn share_an_interest(&self, who: &[(&Identity, &str)]) {
        for (id, name) in who {
            self.env
                .m("profiles.update", obj! { "displayName" => *name }, Some(id))
                .await
                .unwrap();
            self.env
                .m(
                    "interests.setMine",
                    obj! { "keys" => vec![Value::from("rust")] },
                    Some(id),
                )
                .await
                .unwrap();
        }
    }
}

pub async fn world(config: LinkedUpConfig) -> World {
    world_with(config, EngineConfig::default()).await
}

/// `world` on an engine with `engine_config` (e.g. tighter transaction limits).
pub async fn world_with(config: LinkedUpConfig, engine_config: EngineConfig) -> World {
    let env = open_with(config, engine_config);
    let alice = ident("alice", Some("org1"), Some("admin"));
    let bob = ident("bob", Some("org1"), Some("member"));
    let carol = ident("carol", Some("org1"), Some("member"));
    let dave = ident("dave", Some("org2"), Some("admin"));
    let alice_id = env.user(&alice).await;
    let bob_id = env.user(&bob).await;
    let carol_id = env.user(&carol).await;
    let dave_id = env.user(&dave).await;
    for (key, label) in [("rust", "Rust"), ("ai", "AI")] {
        env.m(
            "interests.upsert",
            obj! { "key" => key, "label" => label, "category" => "tech" },
            None,
        )
        .await
        .unwrap();
    }
    let meeting = env.schedule(&alice, "Standup", &[&bob_id]).await;
    env.start(&alice, &meeting).await;
    wait_for_room_job(&env.engine, &meeting).await;
    World {
        env,
        alice,
        bob,
        carol,
        dave,
        alice_id,
        bob_id,
        carol_id,
        dave_id,
        meeting,
    }
}

/// A data directory for a server process or instance, with a copy of one development issuer
/// key made once per test binary (generating an RSA key per test costs far more).
pub fn data_dir() -> tempfile::TempDir {
    static KEY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        linkedup_server::auth::DevIssuer::load_or_generate(
            &dir,
            linkedup_server::config::DEV_ISSUER,
            linkedup_server::config::DEV_AUDIENCE,
        )
        .unwrap();
        dir.join("dev-issuer-key.pem")
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(key, dir.path().join("dev-issuer-key.pem")).unwrap();
    dir
}
