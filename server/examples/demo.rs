//! LinkedUp end to end over the network: starts a development server on 127.0.0.1 (QUIC +
//! TLS with a pinned self-signed certificate, dev-issued WorkOS-style tokens), signs in three
//! users through the client SDK, schedules and starts a meeting, chats, removes a participant,
//! ends the meeting, and prints the live updates each user's subscriptions receive.
//!
//! `cargo run --example demo -p linkedup-server`

use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use linkedup_client::{Client, ClientOptions, Subscription, Trust};
use linkedup_schema::api::{fns, MeetingState, Message};
use linkedup_server::auth::DevClaims;
use linkedup_server::linkedup::{self, LinkedUpConfig};
use linkedup_server::{RunningServer, Server, ServerConfig};
use query_engine::functions::Functions;
use query_engine::json::from_value;
use query_engine::obj;
use query_engine::value::Value;

/// Longest the demo waits for any one expected update.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

struct User {
    name: &'static str,
    client: Client,
    id: String,
}

async fn sign_in(server: &RunningServer, name: &'static str, role: &str) -> Result<User> {
    let mut claims = DevClaims::new(name);
    claims.email = Some(format!("{name}@acme.test"));
    claims.org_id = Some("org_acme".into());
    claims.org_role = Some(role.into());
    let token = server
        .mint_dev_token(claims)
        .context("the development server mints tokens")?;
    let options =
        ClientOptions::new(Trust::PinnedSha256(server.cert_fingerprint().0)).with_token(token);
    let client = Client::connect(&server.quic_connect_addr().to_string(), options).await?;
    let me: Value = client
        .mutation(fns::USERS_ENSURE, &obj! { "displayName" => name })
        .await?;
    let id = me
        .get_path("_id")
        .and_then(Value::as_str)
        .context("users.ensure returns the user")?
        .to_string();
    println!("{name:>5} signed in as user {id} (org_acme, {role})");
    Ok(User { name, client, id })
}

/// Prints every update of one subscription until it fails or `stop` says enough.
fn watch(
    who: &'static str,
    what: &'static str,
    mut sub: Subscription,
    stop: impl Fn(&Value) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(STEP_TIMEOUT, sub.next()).await {
                Ok(Some(Ok(v))) => {
                    println!("{who:>5} sees {what}: {}", describe(what, &v));
                    if stop(&v) {
                        return;
                    }
                }
                Ok(Some(Err(e))) => {
                    println!("{who:>5} sees {what} end: {e}");
                    return;
                }
                Ok(None) => return,
                Err(_) => {
                    println!("{who:>5} stopped waiting for {what}");
                    return;
                }
            }
        }
    })
}

fn describe(what: &str, v: &Value) -> String {
    if what == "chat" {
        let msgs: Vec<Message> = from_value(v).unwrap_or_default();
        let texts: Vec<&str> = msgs.iter().rev().map(|m| m.content.as_str()).collect();
        format!("{texts:?}")
    } else {
        match from_value::<Option<MeetingState>>(v) {
            Ok(Some(s)) => format!("active={} joined={}", s.active, s.joined_count.unwrap_or(0)),
            _ => "not started".into(),
        }
    }
}

fn is_over(v: &Value) -> bool {
    v.get_path("active") == Some(&Value::Bool(false))
}

fn has_message(text: &'static str) -> impl Fn(&Value) -> bool + Send + 'static {
    move |v: &Value| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|m| m.get_path("content").and_then(Value::as_str) == Some(text))
        })
    }
}

async fn pause() {
    // Lets the printers show each step's updates before the next step starts.
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let app = LinkedUpConfig::default();
    let mut functions = Functions::new();
    linkedup::register(&mut functions, &app);
    println!("starting a development server on 127.0.0.1 (first start generates an RSA key)...");
    let server = Server::start(
        ServerConfig::for_tests(dir.path()),
        linkedup_schema::schema(),
        functions,
    )
    .await?;
    let background = linkedup::start(server.engine(), &app);
    println!(
        "server listening on {} (QUIC, TLS pinned)",
        server.quic_addr()
    );

    let alice = sign_in(&server, "alice", "admin").await?;
    let bob = sign_in(&server, "bob", "member").await?;
    let carol = sign_in(&server, "carol", "member").await?;

    let meeting: String = alice
        .client
        .mutation(
            fns::MEETINGS_SCHEDULE,
            &obj! {
                "title" => "Design review",
                "inviteeIds" => vec![Value::from(bob.id.as_str()), Value::from(carol.id.as_str())],
            },
        )
        .await?;
    println!("alice scheduled meeting {meeting} with bob and carol");
    alice
        .client
        .mutation::<_, Value>(
            fns::MEETINGS_START,
            &obj! { "meetingId" => meeting.as_str() },
        )
        .await?;
    println!("alice started the meeting");

    let mut watchers = Vec::new();
    for u in [&alice, &bob, &carol] {
        let args = obj! { "meetingId" => meeting.as_str(), "limit" => 10i64 };
        let chat = u.client.subscribe(fns::CHAT_RECENT, &args)?;
        watchers.push(watch(u.name, "chat", chat, has_message("see you all")));
        let state = u.client.subscribe(
            fns::MEETINGS_GET_STATE,
            &obj! { "meetingId" => meeting.as_str() },
        )?;
        watchers.push(watch(u.name, "state", state, is_over));
    }
    pause().await;

    for u in [&bob, &carol] {
        u.client
            .mutation::<_, Value>(
                fns::MEETINGS_JOIN,
                &obj! { "meetingId" => meeting.as_str() },
            )
            .await?;
        println!("{:>5} joined", u.name);
        pause().await;
    }
    for (u, text) in [
        (&alice, "welcome!"),
        (&bob, "hi alice"),
        (&carol, "hello from carol"),
    ] {
        u.client
            .mutation::<_, Value>(
                fns::CHAT_SEND,
                &obj! { "meetingId" => meeting.as_str(), "content" => text },
            )
            .await?;
        println!("{:>5} said {text:?}", u.name);
        pause().await;
    }
    alice
        .client
        .mutation::<_, Value>(
            fns::MEETINGS_REMOVE_PARTICIPANT,
            &obj! { "meetingId" => meeting.as_str(), "userId" => carol.id.as_str() },
        )
        .await?;
    println!(
        "alice removed carol: her subscriptions end with FORBIDDEN and she sees nothing further"
    );
    pause().await;
    alice
        .client
        .mutation::<_, Value>(
            fns::CHAT_SEND,
            &obj! { "meetingId" => meeting.as_str(), "content" => "see you all" },
        )
        .await?;
    println!("alice said \"see you all\"");
    pause().await;
    alice
        .client
        .mutation::<_, Value>(fns::MEETINGS_END, &obj! { "meetingId" => meeting.as_str() })
        .await?;
    println!("alice ended the meeting (transcript aggregation and insights scheduled)");

    for w in watchers {
        let _ = w.await;
    }
    let reply: Result<Value, _> = carol
        .client
        .query(fns::CHAT_RECENT, &obj! { "meetingId" => meeting.as_str() })
        .await;
    match reply {
        Ok(v) => println!("carol reading the chat now: {v:?}"),
        Err(e) => println!("carol reading the chat now is refused: {e}"),
    }
    background.abort();
    server.shutdown().await;
    println!("done");
    Ok(())
}
