//! End-to-end recovery: a client keeps its subscriptions across a server restart (graceful,
//! and SIGKILL) on the same port and data directory — the server runs in a child process —
//! never showing an older value after a newer one, nor going on anonymous when its token is
//! rejected on the way back; a mutation whose connection drops mid-flight, or whose retry
//! comes after a server crash or during a graceful stop, is applied exactly once, and an
//! interrupted action is reported as failed rather than silently retried.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use linkedup_client::{
    CallKind, Client, ClientError, ClientOptions, ReconnectPolicy, Subscription, TokenRefresher,
};
use linkedup_server::auth::{DevClaims, DevIssuer};
use linkedup_server::config::{DEV_AUDIENCE, DEV_ISSUER};
use linkedup_server::RunningServer;
use query_engine::obj;
use query_engine::value::Value;
use serde_json::json;

/// Guards against a hung test; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(30);

async fn next(sub: &mut Subscription) -> Option<Result<Value, ClientError>> {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("no result in time")
}

/// Reads results until one equals `want`; returns all read.
async fn until_int(sub: &mut Subscription, want: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    loop {
        let v = next(sub).await.expect("ended").unwrap();
        let n = v.as_i64().unwrap();
        seen.push(n);
        if n == want {
            return seen;
        }
    }
}

async fn wait_connected(client: &Client) {
    tokio::time::timeout(PATIENCE, async {
        while client.ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("client did not reconnect");
}

fn non_decreasing(values: &[i64]) -> bool {
    values.windows(2).all(|w| w[0] <= w[1])
}

/// Environment of the child server process (this test binary re-invoked in server mode).
const CHILD_DIR_ENV: &str = "LINKEDUP_E2E_SERVER_DIR";
const CHILD_LISTEN_ENV: &str = "LINKEDUP_E2E_SERVER_LISTEN";

/// Server mode: started by `ServerProcess::spawn` with `--ignored`. Prints
/// `READY <addr> <fingerprint>` once listening, then serves until stdin closes, then shuts
/// down gracefully.
#[test]
#[ignore = "child process of the restart tests"]
fn server_process() {
    let (Some(dir), Some(listen)) = (
        std::env::var_os(CHILD_DIR_ENV),
        std::env::var(CHILD_LISTEN_ENV).ok(),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listen: SocketAddr = listen.parse().unwrap();
        let server = common::start(Path::new(&dir), Some(listen)).await;
        println!(
            "READY {} {}",
            server.quic_connect_addr(),
            linkedup_client::fingerprint_hex(&server.cert_fingerprint().0)
        );
        std::io::stdout().flush().unwrap();
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await
        .unwrap();
        server.shutdown().await;
    });
}

/// A server running in a child process on a fixed data directory.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    fingerprint: [u8; 32],
}

impl ServerProcess {
    async fn spawn(dir: &Path, listen: SocketAddr) -> ServerProcess {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "server_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir)
            .env(CHILD_LISTEN_ENV, listen.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        // Reads the READY line, then keeps draining so the child never writes to a closed pipe.
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints "test server_process ... " on the same line.
                if let Some(at) = line.find("READY ") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(line[at + "READY ".len()..].trim().to_string());
                    }
                }
            }
        });
        let ready = tokio::time::timeout(PATIENCE, ready_rx)
            .await
            .expect("server process not ready in time")
            .expect("server process exited before it was ready");
        let (addr, fingerprint) = ready.split_once(' ').unwrap();
        ServerProcess {
            child,
            addr: addr.parse().unwrap(),
            fingerprint: linkedup_client::parse_fingerprint(fingerprint).unwrap(),
        }
    }

    /// Graceful stop: closing stdin makes the server shut down and exit.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap();
        assert!(status.unwrap().success());
    }

    /// Crash: SIGKILL, no goodbye to clients.
    async fn kill(mut self) {
        self.child.kill().unwrap();
        tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn dev_token(dir: &Path, subject: &str) -> String {
    DevIssuer::load_or_generate(dir, DEV_ISSUER, DEV_AUDIENCE)
        .unwrap()
        .mint(DevClaims::new(subject))
}

fn process_options(server: &ServerProcess) -> ClientOptions {
    let mut options = common::pinned_options(server.fingerprint);
    // A crashed server says nothing: notice the silence quickly.
    options.keep_alive = Duration::from_millis(200);
    options.idle_timeout = Duration::from_secs(1);
    options
}

/// The server process goes away (gracefully or by SIGKILL) and comes back on the same port
/// and data directory under a connected client.
async fn restart_under_a_connected_client(crash: bool) {
    let dir = common::data_dir();
    let listen = free_udp_port();
    let server = ServerProcess::spawn(dir.path(), listen).await;
    let addr = server.addr.to_string();
    let options = process_options(&server).with_token(dev_token(dir.path(), "user_1"));
    let client = Client::connect(&addr, options).await.unwrap();
    let mut counter = client
        .subscribe("counter:get", &json!({"name": "r"}))
        .unwrap();
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    let mut seen = until_int(&mut counter, 0).await;
    for _ in 0..3 {
        let _: i64 = client
            .mutation("counter:add", &json!({"name": "r", "by": 1}))
            .await
            .unwrap();
    }
    seen.extend(until_int(&mut counter, 3).await);
    let _: i64 = client
        .mutation("counter:add", &json!({"name": "user_1", "by": 5}))
        .await
        .unwrap();
    let mut seen_mine = until_int(&mut mine, 5).await;

    if crash {
        server.kill().await;
    } else {
        server.stop().await;
    }
    // Same port, same data directory (so the same certificate and token key).
    let server = ServerProcess::spawn(dir.path(), listen).await;
    wait_connected(&client).await;
    assert!(client.connection_count() >= 2);
    // Re-authenticated with the stored token.
    assert_eq!(client.subject().as_deref(), Some("user_1"));

    // Another client writes; the resumed subscription follows from the current state.
    let writer = Client::connect(&addr, process_options(&server))
        .await
        .unwrap();
    let _: i64 = writer
        .mutation("counter:add", &json!({"name": "r", "by": 1}))
        .await
        .unwrap();
    seen.extend(until_int(&mut counter, 4).await);
    let n: i64 = client
        .mutation("counter:add", &json!({"name": "r", "by": 1}))
        .await
        .unwrap();
    assert_eq!(n, 5);
    seen.extend(until_int(&mut counter, 5).await);
    assert!(non_decreasing(&seen), "went backwards: {seen:?}");
    let _: i64 = writer
        .mutation("counter:add", &json!({"name": "user_1", "by": 1}))
        .await
        .unwrap();
    seen_mine.extend(until_int(&mut mine, 6).await);
    assert!(non_decreasing(&seen_mine), "went backwards: {seen_mine:?}");

    drop((counter, mine));
    writer.close().await;
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_graceful_server_restart() {
    restart_under_a_connected_client(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_server_crash_and_restart() {
    restart_under_a_connected_client(true).await;
}

/// The outcome of a mutation is recorded with its commit, so a retry after the server was
/// killed (SIGKILL) and restarted on the same data directory is not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_retried_after_a_server_crash_is_not_applied_again() {
    let dir = common::data_dir();
    let listen = free_udp_port();
    let server = ServerProcess::spawn(dir.path(), listen).await;
    let options = process_options(&server).with_token(dev_token(dir.path(), "user_1"));
    let client = Client::connect(&server.addr.to_string(), options)
        .await
        .unwrap();
    let id = linkedup_client::new_mutation_id();
    let args = obj! {"name" => "crash", "by" => 1i64};
    let first = client
        .mutation_with_id("counter:add", args.clone(), &id)
        .await
        .unwrap();
    assert_eq!(first.value, Value::Int64(1));

    server.kill().await;
    let server = ServerProcess::spawn(dir.path(), listen).await;
    wait_connected(&client).await;
    let retried = client
        .mutation_with_id("counter:add", args.clone(), &id)
        .await
        .unwrap();
    assert_eq!(retried.value, first.value);
    assert!(retried.ts >= first.ts);
    let now: i64 = client
        .query("counter:get", &json!({"name": "crash"}))
        .await
        .unwrap();
    assert_eq!(
        now, 1,
        "the retried mutation was applied again after the restart"
    );
    // A new id is a new mutation.
    let other = client
        .mutation_with_id("counter:add", args, &linkedup_client::new_mutation_id())
        .await
        .unwrap();
    assert_eq!(other.value, Value::Int64(2));
    client.close().await;
    server.stop().await;
}

/// After a server crash, the first tokens the refresher hands out are rejected (say it timed
/// out while the network came back, and the token held had expired). The client does not go
/// on anonymous — which would end a subscription that needs the identity for good, and run a
/// mutation retried under its id as another identity — but drops those connections and tries
/// again with backoff, asking the refresher each time, until a token is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rejected_on_reconnect_does_not_make_the_client_anonymous() {
    let dir = common::data_dir();
    let listen = free_udp_port();
    let server = ServerProcess::spawn(dir.path(), listen).await;
    let reject = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let refresher: TokenRefresher = {
        let (reject, asked) = (reject.clone(), asked.clone());
        let key_dir = dir.path().to_path_buf();
        Arc::new(move || {
            asked.fetch_add(1, Ordering::SeqCst);
            let token = if reject.load(Ordering::SeqCst) {
                "not-a-token".to_string()
            } else {
                dev_token(&key_dir, "user_1")
            };
            Box::pin(async move { Some(token) })
        })
    };
    let mut options = process_options(&server).with_token_refresher(refresher);
    // Calls wait for a connection that signs in, however many attempts that takes here.
    options.connect_timeout = PATIENCE;
    let client = Client::connect(&server.addr.to_string(), options)
        .await
        .unwrap();
    assert_eq!(client.subject().as_deref(), Some("user_1"));
    let mut mine = client.subscribe("me:counter", &json!({})).unwrap();
    until_int(&mut mine, 0).await;

    reject.store(true, Ordering::SeqCst);
    server.kill().await;
    // Written to a connection whose server is gone: lost once sent, retried under its id.
    let id = linkedup_client::new_mutation_id();
    let mutation = {
        let client = client.clone();
        tokio::spawn(async move { client.mutation_with_id("me:add", obj! {}, &id).await })
    };
    let server = ServerProcess::spawn(dir.path(), listen).await;
    // An attempt that asks the refresher after this reaches the restarted server and is
    // refused; once the next one has asked, it is over.
    let asked_at_restart = asked.load(Ordering::SeqCst);
    tokio::time::timeout(PATIENCE, async {
        while asked.load(Ordering::SeqCst) < asked_at_restart + 2 && client.connection_count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no reconnect attempt in time");
    reject.store(false, Ordering::SeqCst);

    let reply = tokio::time::timeout(PATIENCE, mutation)
        .await
        .expect("mutation answered in time")
        .unwrap()
        .unwrap();
    assert_eq!(reply.value, Value::Int64(1));
    // The subscription was held, not ended, and follows the writes.
    until_int(&mut mine, 1).await;
    let n: i64 = client.mutation("me:add", &json!({})).await.unwrap();
    assert_eq!(n, 2);
    until_int(&mut mine, 2).await;
    assert_eq!(client.subject().as_deref(), Some("user_1"));
    // Each mutation applied once, none anonymously.
    for (name, want) in [("user_1", 2), ("anonymous", 0)] {
        let now: i64 = client
            .query("counter:get", &json!({ "name": name }))
            .await
            .unwrap();
        assert_eq!(now, want, "counter {name}");
    }
    drop(mine);
    client.close().await;
    server.stop().await;
}

/// A server stopping gracefully answers the calls it has read, finishes its call streams and
/// takes no new one while the connection drains. Calls it did not read, and calls made
/// meanwhile, wait for the next connection (not a new stream on the draining one, where they
/// would hang until it closes and be reported `MutationUnconfirmed`): every mutation of many
/// in flight through a graceful restart is answered and applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_in_flight_through_a_graceful_restart_each_apply_once() {
    const WORKERS: usize = 16;
    let dir = common::data_dir();
    let listen = free_udp_port();
    let server = ServerProcess::spawn(dir.path(), listen).await;
    let mut options = process_options(&server);
    // Calls wait for the restarted server however long it takes to start (a hang guard).
    options.connect_timeout = PATIENCE;
    let client = Client::connect(&server.addr.to_string(), options)
        .await
        .unwrap();
    let restarted = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (client, restarted) = (client.clone(), restarted.clone());
        workers.push(tokio::spawn(async move {
            // Mutations back to back, until one made after the restart went through.
            let mut applied = 0i64;
            loop {
                let after_restart = restarted.load(Ordering::SeqCst);
                client
                    .mutation::<_, i64>("counter:add", &json!({"name": "drain", "by": 1}))
                    .await?;
                applied += 1;
                if after_restart {
                    return Ok::<_, ClientError>(applied);
                }
            }
        }));
    }
    // Every worker has a mutation in flight all along; some have been applied.
    counter_reaches(&client, "drain", WORKERS as i64).await;
    server.stop().await;
    let server = ServerProcess::spawn(dir.path(), listen).await;
    restarted.store(true, Ordering::SeqCst);
    let mut applied = 0;
    for worker in workers {
        applied += tokio::time::timeout(PATIENCE, worker)
            .await
            .expect("worker done in time")
            .unwrap()
            .expect("every mutation answered");
    }
    let now: i64 = client
        .query("counter:get", &json!({"name": "drain"}))
        .await
        .unwrap();
    assert_eq!(now, applied);
    assert!(client.connection_count() >= 2);
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_invisible_to_subscribers() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let mut counter = client
        .subscribe("counter:get", &json!({"name": "d"}))
        .unwrap();
    let mut seen = until_int(&mut counter, 0).await;
    for round in 1..=5i64 {
        client.force_reconnect();
        let n: i64 = client
            .mutation("counter:add", &json!({"name": "d", "by": 1}))
            .await
            .unwrap();
        assert_eq!(n, round);
        seen.extend(until_int(&mut counter, round).await);
    }
    assert!(non_decreasing(&seen), "went backwards: {seen:?}");
    assert!(client.connection_count() >= 6);
    drop(counter);
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_cut_off_mid_flight_is_applied_exactly_once() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .mutation::<_, i64>("counter:addSlow", &json!({"name": "once"}))
                .await
        })
    };
    // The server is running it: cut the connection before the answer can arrive.
    tokio::time::timeout(PATIENCE, common::mutation_started("once").notified())
        .await
        .unwrap();
    client.force_reconnect();
    let n = call.await.unwrap().unwrap();
    assert_eq!(n, 1);
    let now: i64 = client
        .query("counter:get", &json!({"name": "once"}))
        .await
        .unwrap();
    assert_eq!(now, 1, "the retried mutation ran twice");
    assert!(client.connection_count() >= 2);
    client.close().await;
    server.shutdown().await;
}

/// Starts `counter:addSlow` on counter `name` through `Client::call` and cuts the connection
/// while the server runs it, after the call was sent; returns the call's outcome.
async fn cut_off_call(
    client: &Client,
    name: &'static str,
    mutation_id: Option<String>,
) -> Result<linkedup_client::CallReply, ClientError> {
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(
                    CallKind::Mutation,
                    "counter:addSlow",
                    obj! {"name" => name},
                    mutation_id,
                )
                .await
        })
    };
    tokio::time::timeout(PATIENCE, common::mutation_started(name).notified())
        .await
        .unwrap();
    client.force_reconnect();
    tokio::time::timeout(PATIENCE, call)
        .await
        .expect("call answered in time")
        .unwrap()
}

/// Waits until counter `name` reads at least `want`; returns what it read.
async fn counter_reaches(client: &Client, name: &str, want: i64) -> i64 {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let n: i64 = client
                .query("counter:get", &json!({ "name": name }))
                .await
                .unwrap();
            if n >= want {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("counter did not reach the value in time")
}

/// `Client::call` with a mutation and no mutation id sends it once (§12: re-sent without an
/// id it could be applied twice): when the connection drops after it was sent, the call
/// fails and the server, which runs what it has read to its end, applied it once. With an id
/// the same loss is retried under that id and answered from the server's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_cut_off_mid_flight_is_resent_only_under_a_mutation_id() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();

    let e = cut_off_call(&client, "no-id", None).await.unwrap_err();
    assert!(matches!(e, ClientError::Disconnected), "{e}");
    // The original commits on the server; nothing else does.
    assert_eq!(counter_reaches(&client, "no-id", 1).await, 1);
    let n: i64 = client
        .mutation("counter:add", &json!({"name": "no-id", "by": 1}))
        .await
        .unwrap();
    assert_eq!(n, 2, "the mutation without an id was applied twice");

    let id = linkedup_client::new_mutation_id();
    let reply = cut_off_call(&client, "with-id", Some(id)).await.unwrap();
    assert_eq!(reply.value, Value::Int64(1));
    assert_eq!(counter_reaches(&client, "with-id", 1).await, 1);
    assert!(client.connection_count() >= 3);
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_mutation_id_returns_the_first_result() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let id = linkedup_client::new_mutation_id();
    let args = obj! {"name" => "m", "by" => 1i64};
    let first = client
        .mutation_with_id("counter:add", args.clone(), &id)
        .await
        .unwrap();
    let again = client
        .mutation_with_id("counter:add", args.clone(), &id)
        .await
        .unwrap();
    // The first value, at a timestamp that includes the first commit (§12).
    assert_eq!(first.value, again.value);
    assert!(again.ts >= first.ts);
    assert_eq!(first.value, Value::Int64(1));
    // Also from a new connection.
    client.force_reconnect();
    let third = client
        .mutation_with_id("counter:add", args.clone(), &id)
        .await
        .unwrap();
    assert_eq!(first.value, third.value);
    assert!(third.ts >= first.ts);
    let other = client
        .mutation_with_id("counter:add", args, &linkedup_client::new_mutation_id())
        .await
        .unwrap();
    assert_eq!(other.value, Value::Int64(2));
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mutations_through_reconnects_each_apply_once() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    const CALLS: i64 = 40;
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let caller = client.clone();
        tasks.push(tokio::spawn(async move {
            caller
                .mutation::<_, i64>("counter:add", &json!({"name": "many", "by": 1}))
                .await
        }));
        if i % 10 == 5 {
            client.force_reconnect();
        }
    }
    // Queries in flight across a reconnect are retried transparently.
    let mut queries = Vec::new();
    for _ in 0..10 {
        let caller = client.clone();
        queries.push(tokio::spawn(async move {
            caller
                .query::<_, i64>("counter:get", &json!({"name": "many"}))
                .await
        }));
    }
    client.force_reconnect();
    for q in queries {
        let n = q.await.unwrap().unwrap();
        assert!((0..=CALLS).contains(&n));
    }
    let mut results = BTreeSet::new();
    for t in tasks {
        let n = t.await.unwrap().unwrap();
        assert!(results.insert(n), "two mutations returned {n}");
    }
    assert_eq!(results, (1..=CALLS).collect::<BTreeSet<_>>());
    let total: i64 = client
        .query("counter:get", &json!({"name": "many"}))
        .await
        .unwrap();
    assert_eq!(total, CALLS);
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_cut_off_mid_flight_fails_and_is_not_retried() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.action::<_, String>("slow:action", &json!({})).await })
    };
    tokio::time::timeout(PATIENCE, common::ACTION_STARTED.notified())
        .await
        .unwrap();
    client.force_reconnect();
    let e = call.await.unwrap().unwrap_err();
    assert!(matches!(e, ClientError::Disconnected), "{e}");
    // The client itself recovers.
    let done: String = client.action("slow:action", &json!({})).await.unwrap();
    assert_eq!(done, "done");
    client.close().await;
    server.shutdown().await;
}

/// Options for a client that gives up after two quick reconnect attempts.
fn giving_up_after_two_attempts(server: &RunningServer) -> ClientOptions {
    let mut options = common::options(server);
    options.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_attempts: Some(2),
        jitter: 0.5,
    };
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_ends_its_subscriptions() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let mut options = giving_up_after_two_attempts(&server);
    options.connect_timeout = Duration::from_millis(500);
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    let mut counter = client
        .subscribe("counter:get", &json!({"name": "g"}))
        .unwrap();
    assert_eq!(next(&mut counter).await.unwrap().unwrap(), Value::Int64(0));
    server.shutdown().await;
    let e = next(&mut counter)
        .await
        .expect("an error first")
        .unwrap_err();
    assert!(matches!(e, ClientError::Disconnected), "{e}");
    assert!(next(&mut counter).await.is_none());
    let e = client
        .query::<_, i64>("counter:get", &json!({"name": "g"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Disconnected), "{e}");
    assert!(client
        .subscribe("counter:get", &json!({"name": "g"}))
        .is_err());
}

/// A client whose reconnects are all refused for its token gives up with that refusal
/// (`UNAUTHORIZED`), not `Disconnected`: the server is there, a token is what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_on_a_refused_token_says_so() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let mut options = giving_up_after_two_attempts(&server);
    options.token = Some(common::token(&server, "user_1"));
    let client = Client::connect(&common::addr(&server), options)
        .await
        .unwrap();
    let mut counter = client
        .subscribe("counter:get", &json!({"name": "g"}))
        .unwrap();
    assert_eq!(next(&mut counter).await.unwrap().unwrap(), Value::Int64(0));
    // Refused on the live connection, the token is kept for the reconnects, which it fails.
    let e = client
        .set_auth(Some("not a token".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    client.force_reconnect();
    let e = next(&mut counter)
        .await
        .expect("an error first")
        .unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    let e = client
        .query::<_, i64>("counter:get", &json!({"name": "g"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("UNAUTHORIZED"), "{e}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_calls_in_flight_through_a_dropped_connection_each_apply_once() {
    let dir = common::data_dir();
    let server = common::start(dir.path(), None).await;
    let client = Client::connect(&common::addr(&server), common::options(&server))
        .await
        .unwrap();
    // More than the connection's call slots: when it drops, some calls wait for a slot, some
    // are queued, some sent, some answered.
    const CALLS: i64 = 300;
    let mut mutations = Vec::new();
    let mut queries = Vec::new();
    for i in 0..CALLS {
        let caller = client.clone();
        mutations.push(tokio::spawn(async move {
            caller
                .mutation::<_, i64>("counter:add", &json!({"name": "burst", "by": 1}))
                .await
        }));
        if i % 3 == 0 {
            let caller = client.clone();
            queries.push(tokio::spawn(async move {
                caller
                    .query::<_, i64>("counter:get", &json!({"name": "burst"}))
                    .await
            }));
        }
        if i == CALLS / 2 {
            tokio::task::yield_now().await;
            client.force_reconnect();
        }
    }
    let mut results = BTreeSet::new();
    for t in mutations {
        let n = tokio::time::timeout(PATIENCE, t)
            .await
            .expect("mutation answered in time")
            .unwrap()
            .unwrap();
        assert!(results.insert(n), "two mutations returned {n}");
    }
    assert_eq!(results, (1..=CALLS).collect::<BTreeSet<_>>());
    for q in queries {
        let n = q.await.unwrap().unwrap();
        assert!((0..=CALLS).contains(&n));
    }
    let total: i64 = client
        .query("counter:get", &json!({"name": "burst"}))
        .await
        .unwrap();
    assert_eq!(total, CALLS);
    assert!(client.connection_count() >= 2);
    client.close().await;
    server.shutdown().await;
}
