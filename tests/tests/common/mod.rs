//! Shared fixtures for the end-to-end tests: a small counter/items schema with functions of
//! every kind, a real server started in-process on 127.0.0.1, and SDK client options that pin
//! its certificate and reconnect quickly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use linkedup_client::{ClientOptions, ReconnectPolicy, Trust};
use linkedup_server::auth::DevClaims;
use linkedup_server::config::{DEV_AUDIENCE, DEV_ISSUER};
use linkedup_server::{RunningServer, Server, ServerConfig};
use query_engine::engine::ActionCtx;
use query_engine::error::FunctionError;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::{Object, Value};
use serde::Deserialize;
use tokio::sync::Notify;

/// Signalled by `slow:action` once it runs, so a test can cut the connection mid-action.
pub static ACTION_STARTED: Notify = Notify::const_new();

/// A gate the `gate:hold` query waits at: closed until the test opens it, then open for good.
#[derive(Default)]
pub struct Hold {
    open: Mutex<bool>,
    opened: Condvar,
    /// Runs of the query that reached the gate.
    arrived: AtomicUsize,
}

/// The most a `gate:hold` query waits, so a failing test never wedges its server.
const MAX_HOLD: Duration = Duration::from_secs(30);

/// Test-wide registries of named things, one per name, so tests running at once in a binary
/// do not share one.
type Registry<T> = OnceLock<Mutex<HashMap<String, Arc<T>>>>;

fn named<T: Default>(registry: &'static Registry<T>, name: &str) -> Arc<T> {
    registry
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// The gate named `name`.
pub fn hold(name: &str) -> Arc<Hold> {
    static HOLDS: Registry<Hold> = OnceLock::new();
    named(&HOLDS, name)
}

impl Hold {
    /// Blocks the calling thread until the gate is open (at most `MAX_HOLD`).
    fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let open = self.open.lock().unwrap();
        let _ = self
            .opened
            .wait_timeout_while(open, MAX_HOLD, |open| !*open);
    }

    /// Waits until a run of the query has reached the gate.
    pub async fn reached(&self) {
        tokio::time::timeout(MAX_HOLD, async {
            while self.arrived.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("no run of the query reached its gate in time");
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Signalled by `counter:addSlow` on counter `name` once it runs, before it commits: one
/// `Notify` per counter name, so tests running at once in a binary do not take each other's.
pub fn mutation_started(name: &str) -> Arc<Notify> {
    static STARTED: Registry<Notify> = OnceLock::new();
    named(&STARTED, name)
}

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
                "items",
                v::object([
                    ("list", v::string()),
                    ("n", v::int64()),
                    ("text", v::string()),
                ]),
            )
            .index("by_list_n", &["list", "n"]),
        )
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct Add {
    name: String,
    by: i64,
}

#[derive(Deserialize)]
struct ListArgs {
    list: String,
}

#[derive(Deserialize)]
struct Empty {}

fn counter_value(
    ctx: &mut query_engine::context::Ctx<'_, '_>,
    name: &str,
) -> Result<i64, FunctionError> {
    Ok(ctx
        .query("counters", "by_name")
        .eq("name", name)
        .unique()?
        .and_then(|c| c.get_path("value").and_then(Value::as_i64))
        .unwrap_or(0))
}

fn add(
    ctx: &mut query_engine::context::Ctx<'_, '_>,
    name: &str,
    by: i64,
) -> Result<i64, FunctionError> {
    let existing = ctx.query("counters", "by_name").eq("name", name).unique()?;
    match existing {
        None => {
            ctx.insert("counters", obj! {"name" => name, "value" => by})?;
            Ok(by)
        }
        Some(doc) => {
            let id = doc
                .get_path("_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let n = doc.get_path("value").and_then(Value::as_i64).unwrap_or(0) + by;
            let mut patch = Object::new();
            patch.insert("value".into(), n.into());
            ctx.patch("counters", &id, patch)?;
            Ok(n)
        }
    }
}

fn subject(ctx: &query_engine::context::Ctx<'_, '_>) -> Result<String, FunctionError> {
    ctx.auth()
        .map(|i| i.subject.clone())
        .ok_or_else(|| FunctionError::unauthorized("sign in first"))
}

pub fn functions() -> Functions {
    let mut f = Functions::new();
    f.query(
        "counter:get",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| counter_value(ctx, &a.name),
    );
    f.mutation(
        "counter:add",
        Visibility::Public,
        v::object([("name", v::string()), ("by", v::int64())]),
        v::int64(),
        |ctx, a: Add| add(ctx, &a.name, a.by),
    );
    f.mutation(
        "counter:addSlow",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| {
            mutation_started(&a.name).notify_one();
            // Long enough for the test to cut the connection before the result is sent.
            std::thread::sleep(Duration::from_millis(200));
            add(ctx, &a.name, 1)
        },
    );
    f.mutation(
        "items:add",
        Visibility::Public,
        v::object([
            ("list", v::string()),
            ("n", v::int64()),
            ("text", v::string()),
        ]),
        v::string(),
        |ctx, a: Value| ctx.insert("items", a),
    );
    f.mutation(
        "items:remove",
        Visibility::Public,
        v::object([("id", v::string())]),
        v::null(),
        |ctx, a: Value| {
            let id = a
                .get_path("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            ctx.delete("items", &id)?;
            Ok(())
        },
    );
    f.query(
        "items:list",
        Visibility::Public,
        v::object([("list", v::string())]),
        v::any(),
        |ctx, a: ListArgs| {
            Ok(Value::Array(
                ctx.query("items", "by_list_n")
                    .eq("list", a.list)
                    .take(100)?,
            ))
        },
    );
    // A query that waits at gate `name` (`hold`) before answering. Queries run on the server's
    // subscription thread, so a subscription to it keeps that thread, and the connection's
    // control stream waiting on its first result, busy until the test opens the gate.
    f.query(
        "gate:hold",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::string(),
        |_ctx, a: Named| {
            hold(&a.name).pass();
            Ok(a.name)
        },
    );
    f.query(
        "me:whoami",
        Visibility::Public,
        v::object([]),
        v::string(),
        |ctx, _: Empty| subject(ctx),
    );
    f.query(
        "me:counter",
        Visibility::Public,
        v::object([]),
        v::int64(),
        |ctx, _: Empty| {
            let me = subject(ctx)?;
            counter_value(ctx, &me)
        },
    );
    // Adds 1 to the counter named after the caller's subject ("anonymous" without one), so
    // that a test sees under which identity a mutation ran.
    f.mutation(
        "me:add",
        Visibility::Public,
        v::object([]),
        v::int64(),
        |ctx, _: Empty| {
            let me = ctx
                .auth()
                .map_or_else(|| "anonymous".to_string(), |i| i.subject.clone());
            add(ctx, &me, 1)
        },
    );
    f.mutation(
        "fail:always",
        Visibility::Public,
        v::object([]),
        v::null(),
        |_ctx, _: Empty| -> Result<(), FunctionError> {
            Err(FunctionError::new("CONFLICT", "always conflicts")
                .with_data(obj! {"reason" => "test"}))
        },
    );
    f.action(
        "echo",
        Visibility::Public,
        v::object([("value", v::any())]),
        v::any(),
        |ctx: ActionCtx, a: Value| async move {
            let count = ctx.run_mutation("counter:add", obj! {"name" => "echo", "by" => 1i64}).await?;
            Ok(obj! {"value" => a.get_path("value").cloned().unwrap_or(Value::Null), "count" => count})
        },
    );
    f.action(
        "guarded:action",
        Visibility::Public,
        v::object([]),
        v::string(),
        |ctx: ActionCtx, _: Empty| async move {
            // Works first and finds out late that the caller is anonymous, as an action may:
            // its UNAUTHORIZED comes after an effect (counter `guarded` went up).
            ctx.run_mutation("counter:add", obj! {"name" => "guarded", "by" => 1i64})
                .await?;
            ctx.auth()
                .map(|i| i.subject.clone())
                .ok_or_else(|| FunctionError::unauthorized("sign in first"))
        },
    );
    f.action(
        "slow:action",
        Visibility::Public,
        v::object([]),
        v::string(),
        |_ctx: ActionCtx, _: Empty| async move {
            ACTION_STARTED.notify_one();
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok("done".to_string())
        },
    );
    f
}

/// A data directory holding a copy of one RSA issuer key made once per test binary, so each
/// test does not pay for generating its own.
pub fn data_dir() -> tempfile::TempDir {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        linkedup_server::auth::DevIssuer::load_or_generate(&dir, DEV_ISSUER, DEV_AUDIENCE).unwrap();
        dir.join("dev-issuer-key.pem")
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(key, dir.path().join("dev-issuer-key.pem")).unwrap();
    dir
}

/// Starts a development server on 127.0.0.1 (port 0 unless `quic_listen` is given).
pub async fn start(dir: &Path, quic_listen: Option<SocketAddr>) -> RunningServer {
    start_with(dir, |config| {
        if let Some(addr) = quic_listen {
            config.quic_listen = addr;
        }
    })
    .await
}

/// Starts a development server on 127.0.0.1, port 0, with its configuration `adjust`ed.
pub async fn start_with(dir: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::for_tests(dir);
    adjust(&mut config);
    Server::start(config, schema(), functions()).await.unwrap()
}

/// Starts a development server on 127.0.0.1 with the LinkedUp schema and functions.
pub async fn start_linkedup(dir: &Path) -> RunningServer {
    start_linkedup_with(dir, &linkedup_server::linkedup::LinkedUpConfig::default()).await
}

/// As `start_linkedup`, with the LinkedUp functions configured by `config`.
pub async fn start_linkedup_with(
    dir: &Path,
    config: &linkedup_server::linkedup::LinkedUpConfig,
) -> RunningServer {
    let mut functions = Functions::new();
    linkedup_server::linkedup::register(&mut functions, config);
    Server::start(
        ServerConfig::for_tests(dir),
        linkedup_schema::schema(),
        functions,
    )
    .await
    .unwrap()
}

pub fn addr(server: &RunningServer) -> String {
    server.quic_connect_addr().to_string()
}

/// Options pinning the server's certificate, with quick reconnects and short timeouts.
pub fn options(server: &RunningServer) -> ClientOptions {
    pinned_options(server.cert_fingerprint().0)
}

/// Options pinning the certificate with this SHA-256, with quick reconnects and short
/// timeouts.
pub fn pinned_options(fingerprint: [u8; 32]) -> ClientOptions {
    let mut options = ClientOptions::new(Trust::PinnedSha256(fingerprint));
    options.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        max_attempts: None,
        jitter: 0.5,
    };
    options.connect_timeout = Duration::from_secs(5);
    options
}

pub fn token(server: &RunningServer, subject: &str) -> String {
    server.mint_dev_token(DevClaims::new(subject)).unwrap()
}
