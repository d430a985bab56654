//! The `linkedup-server` binary: parses flags/env/config file, starts the server with the
//! LinkedUp schema and functions, prints where it listens (and, in development mode, the
//! certificate fingerprint to pin and how to mint a token), and stops gracefully on a signal;
//! a second signal during that stop exits at once.

use anyhow::{bail, Context};
use clap::Parser;
use linkedup_server::ai::AiConfig;
use linkedup_server::auth::{DevClaims, DevIssuer};
use linkedup_server::config::{AuthSource, Cli, Command, MintTokenArgs, Options, TlsSource};
use linkedup_server::linkedup::blocks::BlocksConfig;
use linkedup_server::linkedup::flags::Environment;
use linkedup_server::linkedup::{self, LinkedUpConfig};
use linkedup_server::stream::config::DEV_SECRET_FILE;
use linkedup_server::stream::{RoomProvider, StreamConfig};
use linkedup_server::{Server, ServerConfig};
use query_engine::functions::Functions;
use query_engine::schema::SchemaDefinition;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// The engine allocates many small values on its hot paths; mimalloc handles that with far
/// less contention than the system allocator on a busy server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Some(Command::MintToken(args)) => mint_token(&cli.options, args),
        Some(Command::Serve) | None => runtime.block_on(serve(&cli.options)),
    }
}

/// The application the binary serves: the LinkedUp schema and functions.
fn application(config: &LinkedUpConfig) -> (SchemaDefinition, Functions) {
    let mut functions = Functions::new();
    linkedup::register(&mut functions, config);
    (linkedup_schema::schema(), functions)
}

async fn serve(options: &Options) -> anyhow::Result<()> {
    // Registered first, so a signal that comes while the server starts is not lost.
    let mut signals = Signals::new()?;
    let options = options.layered().context("invalid configuration")?;
    let mut config = options.clone().resolve().context("invalid configuration")?;
    config.engine.crons = linkedup::crons();
    let data_dir = config.data_dir.clone();
    let dev_tls = matches!(config.tls, TlsSource::SelfSigned { .. });
    let dev_auth = matches!(config.auth, AuthSource::Development { .. });
    let app_config = LinkedUpConfig {
        stream: StreamConfig::from_options(&options, config.is_development())
            .context("invalid Stream configuration")?,
        matching: options
            .matching()
            .context("invalid matching configuration")?,
        environment: Environment::from_options(&options).context("invalid configuration")?,
        ai: AiConfig::from_options(&options).context("invalid AI configuration")?,
        blocks: BlocksConfig::from_options(&options).context("invalid configuration")?,
        ..LinkedUpConfig::default()
    };
    let (schema, functions) = application(&app_config);
    let routes = linkedup::http_routes(&app_config);
    // A signal while the database opens (a long log replay) stops the process at once: nothing
    // has been acknowledged yet, and the replay is one durable transaction, redone at the next
    // start if cut short.
    let server = tokio::select! {
        started = Server::start_with_routes(config, schema, functions, routes) => {
            started.context("starting the server")?
        }
        received = signals.next() => {
            received?;
            tracing::warn!("signal while starting: exiting");
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
    };
    let background = linkedup::start(server.engine(), &app_config);
    let mode = if server.is_development() {
        "development"
    } else {
        "production"
    };
    let mut banner = format!(
        "LinkedUp server {} ({mode} mode)\n  QUIC   {}  (ALPN linkedup/1)\n  HTTP   http://{}  (/health, /metrics, {})\n  {}\n",
        linkedup_server::server::SERVER_VERSION,
        server.quic_addr(),
        server.http_addr(),
        linkedup::stream_webhook::PATH,
        describe_stream(&options, &app_config.stream, &data_dir),
    );
    banner += &format!(
        "  TLS certificate SHA-256{}: {}\n",
        if dev_tls {
            " (self-signed; pin it)"
        } else {
            ""
        },
        server.cert_fingerprint()
    );
    banner += &format!("  Metrics: {}\n", server.metrics_access());
    if dev_auth {
        banner += &format!(
            "  Dev tokens: linkedup-server mint-token --data-dir {} --subject <user id>\n",
            data_dir.display()
        );
    }
    // The banner is for whoever watches the terminal: a closed or full stdout (a supervisor
    // that discards it, a reader that went away) must not stop a server that is serving, as
    // `println!`'s panic on a broken pipe did.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush())
    {
        tracing::warn!(error = %e, "could not print the start-up banner to stdout");
    }
    drop(stdout);
    signals.next().await?;
    tokio::select! {
        () = server.shutdown() => {}
        received = signals.next() => {
            received?;
            // Every acknowledged commit is already in the log; the next start replays it.
            tracing::warn!("second signal: exiting without finishing the shutdown");
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
    }
    background.abort();
    Ok(())
}

/// One line on the room provider and how webhooks are verified (never the secret itself).
fn describe_stream(options: &Options, stream: &StreamConfig, data_dir: &Path) -> String {
    let provider = match &stream.provider {
        RoomProvider::Local { call_type, .. } => format!("local provider (call type {call_type})"),
        RoomProvider::Stream(client) => format!("{client:?}"),
    };
    let webhooks = match (&stream.webhook_secret, &options.stream_api_secret) {
        (None, _) => "webhooks refused (no secret)".to_string(),
        (Some(_), Some(_)) => "webhooks verified with the configured secret".to_string(),
        (Some(_), None) => format!(
            "webhooks verified with the secret in {}",
            data_dir.join(DEV_SECRET_FILE).display()
        ),
    };
    format!("Stream: {provider}; {webhooks}")
}

/// Exit status when a second signal cuts the graceful stop short (128 + SIGINT, as a shell
/// reports an interrupted command).
const EXIT_SECOND_SIGNAL: i32 = 130;

/// SIGINT and SIGTERM (Ctrl-C elsewhere), registered once for the whole run so that a signal
/// between two waits is not missed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())
                    .context("installing a SIGINT handler")?,
                terminate: signal(SignalKind::terminate())
                    .context("installing a SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        tracing::info!("signal received");
        Ok(())
    }
}

fn mint_token(options: &Options, args: MintTokenArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::from_options(options).context("invalid configuration")?;
    config.engine.crons = linkedup::crons();
    let AuthSource::Development {
        key_dir,
        issuer,
        audience,
    } = &config.auth
    else {
        bail!("mint-token needs the development issuer; this configuration uses WorkOS");
    };
    let issuer = DevIssuer::load_or_generate(key_dir, issuer.clone(), audience.clone())
        .context("loading the development issuer key")?;
    let token = issuer.mint(DevClaims {
        subject: args.subject,
        email: args.email,
        org_id: args.org_id,
        org_role: args.org_role,
        roles: args.roles,
        ttl: Duration::from_secs(args.ttl_secs),
    });
    writeln!(std::io::stdout(), "{token}").context("printing the token")?;
    Ok(())
}
