//! Fixture shared by the live-meeting tests: an in-process engine with the LinkedUp schema
//! and functions (no fsync), identities of one organisation, and meeting setup.
#![allow(dead_code)]

use linkedup_server::linkedup::{self, LinkedUpConfig};
use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::functions::Functions;
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::value::Value;

pub struct Env {
    pub engine: Engine,
    _dir: tempfile::TempDir,
}

pub fn open_with(run_scheduler: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut functions = Functions::new();
    linkedup::register(&mut functions, &LinkedUpConfig::default());
    let mut config = EngineConfig::default();
    config.committer.durable = false;
    config.run_scheduler = run_scheduler;
    let engine = Engine::open(
        &dir.path().join("db.redb"),
        linkedup_schema::schema(),
        functions,
        config,
    )
    .unwrap();
    Env { engine, _dir: dir }
}

pub fn open() -> Env {
    open_with(false)
}

pub fn ident(subject: &str) -> Identity {
    Identity {
        issuer: "https://auth.test".into(),
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        org_id: Some("org1".into()),
        org_role: Some("member".into()),
        roles: Vec::new(),
    }
}

impl Env {
    pub async fn m(&self, name: &str, args: Value, who: &Identity) -> Result<Value, FunctionError> {
        self.engine
            .mutation(name, args, Some(who))
            .await
            .map(|c| c.value)
    }

    pub async fn q(&self, name: &str, args: Value, who: &Identity) -> Result<Value, FunctionError> {
        self.engine
            .query(name, args, Some(who))
            .await
            .map(|r| r.value)
    }
    pub async fn user(&self, who: &Identity) -> String {
        let u = self.m("users.ensure", obj! {}, who).await.unwrap();
        u.get_path("_id").unwrap().as_str().unwrap().to_string()
    }

    /// A meeting hosted by `host` with `others` invited; started if `start`.
    pub async fn meeting(&self, host: &Identity, others: &[&Identity], start: bool) -> String {
        self.user(host).await;
        let mut invitees = Vec::new();
        for o in others {
            invitees.push(Value::from(self.user(o).await));
        }
        let id = self
            .m(
                "meetings.schedule",
                obj! { "title" => "Standup", "inviteeIds" => invitees },
                host,
            )
            .await
            .unwrap();
        let id = id.as_str().unwrap().to_string();
        if start {
            self.m("meetings.start", obj! { "meetingId" => id.as_str() }, host)
                .await
                .unwrap();
        }
        id
    }
}
