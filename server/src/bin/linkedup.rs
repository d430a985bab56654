//! The `linkedup` command-line tool: mints development tokens from a dev server's data
//! directory, runs one function and prints its JSON result, or watches a query and prints each
//! new result as a JSON line. A thin layer over the `linkedup_client` SDK.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use linkedup_client::{
    fingerprint_from_pem, parse_fingerprint, CallKind, Client, ClientError, ClientOptions, Trust,
};
use linkedup_server::auth::{DevClaims, DevIssuer};
use linkedup_server::config::{DEV_AUDIENCE, DEV_ISSUER};
use linkedup_server::transport::tls::DEV_CERT_FILE;
use query_engine::json::{from_json, to_json};
use query_engine::value::Value;

/// Largest certificate file read for pinning.
const MAX_CERT_FILE_BYTES: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(name = "linkedup", version, about = "LinkedUp command-line client")]
struct Cli {
    /// Server QUIC address.
    #[arg(
        long,
        global = true,
        env = "LINKEDUP_SERVER",
        default_value = "127.0.0.1:7443"
    )]
    server: String,
    /// SHA-256 fingerprint of the server certificate to pin (64 hex digits). Without it (and
    /// without --ca), the development certificate in --data-dir is pinned.
    #[arg(long, global = true, env = "LINKEDUP_FINGERPRINT")]
    fingerprint: Option<String>,
    /// PEM file of CA certificates to verify the server with (production servers).
    #[arg(long, global = true, env = "LINKEDUP_CA")]
    ca: Option<PathBuf>,
    /// The development server's data directory (dev certificate and token issuer key).
    #[arg(long, global = true, default_value = "./data")]
    data_dir: PathBuf,
    /// Access token to authenticate with.
    #[arg(long, global = true, env = "LINKEDUP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Development-mode helpers.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Runs a function once and prints its result as JSON.
    Run {
        function: String,
        /// Arguments as JSON (the project's JSON form: `{"$float": ...}` etc.).
        #[arg(long, default_value = "{}")]
        args: String,
        #[arg(long, value_enum, default_value_t = Kind::Query)]
        kind: Kind,
    },
    /// Subscribes to a query and prints each new result as one JSON line.
    Watch {
        function: String,
        #[arg(long, default_value = "{}")]
        args: String,
        /// Stop after this many results.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Mints a development access token signed by the server's dev issuer key.
    Token {
        /// The user's subject (`sub`).
        #[arg(long)]
        sub: String,
        #[arg(long)]
        email: Option<String>,
        /// Organization id (`org_id`).
        #[arg(long)]
        org: Option<String>,
        /// Role in the organization (`role`).
        #[arg(long)]
        role: Option<String>,
        /// Further roles (`roles`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Query,
    Mutation,
    Action,
}

impl From<Kind> for CallKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Query => CallKind::Query,
            Kind::Mutation => CallKind::Mutation,
            Kind::Action => CallKind::Action,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        if let Some(ClientError::Function { data, .. } | ClientError::Server { data, .. }) =
            e.downcast_ref::<ClientError>()
        {
            if *data != Value::Null {
                eprintln!("data: {}", to_json(data));
            }
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Dev {
            command:
                DevCommand::Token {
                    sub,
                    email,
                    org,
                    role,
                    roles,
                    ttl_secs,
                },
        } => {
            let claims = DevClaims {
                subject: sub.clone(),
                email: email.clone(),
                org_id: org.clone(),
                org_role: role.clone(),
                roles: roles.clone(),
                ttl: Duration::from_secs(*ttl_secs),
            };
            let dir = cli.data_dir.clone();
            let issuer = tokio::task::spawn_blocking(move || {
                DevIssuer::load_or_generate(&dir, DEV_ISSUER, DEV_AUDIENCE)
            })
            .await
            .context("token issuer task")?
            .with_context(|| {
                format!("loading the dev issuer key from {}", cli.data_dir.display())
            })?;
            println!("{}", issuer.mint(claims));
            Ok(())
        }
        Command::Run {
            function,
            args,
            kind,
        } => {
            let args = parse_args(args)?;
            let client = connect(&cli).await?;
            let mutation_id = matches!(kind, Kind::Mutation).then(linkedup_client::new_mutation_id);
            let reply = client
                .call((*kind).into(), function, args, mutation_id)
                .await?;
            let text = serde_json::to_string_pretty(&to_json(&reply.value))?;
            println!("{text}");
            client.close().await;
            Ok(())
        }
        Command::Watch {
            function,
            args,
            count,
        } => {
            let args = parse_args(args)?;
            let client = connect(&cli).await?;
            let mut subscription = client.subscribe(function, &args)?;
            let mut printed = 0u64;
            let stdout = std::io::stdout();
            loop {
                if count.is_some_and(|n| printed >= n) {
                    break;
                }
                let item = tokio::select! {
                    item = subscription.next() => item,
                    _ = tokio::signal::ctrl_c() => break,
                };
                match item {
                    Some(Ok(value)) => {
                        let mut out = stdout.lock();
                        writeln!(out, "{}", to_json(&value))?;
                        out.flush()?;
                        printed += 1;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the subscription ended"),
                }
            }
            drop(subscription);
            client.close().await;
            Ok(())
        }
    }
}

fn parse_args(text: &str) -> Result<Value> {
    let json: serde_json::Value = serde_json::from_str(text).context("--args is not JSON")?;
    let value = from_json(&json).context("--args")?;
    if !matches!(value, Value::Object(_)) {
        bail!("--args must be a JSON object");
    }
    Ok(value)
}

async fn connect(cli: &Cli) -> Result<Client> {
    let trust = trust(cli)?;
    let mut options = ClientOptions::new(trust)
        .with_client_name(format!("linkedup-cli/{}", env!("CARGO_PKG_VERSION")));
    // An empty LINKEDUP_TOKEN means no token.
    options.token = cli.token.clone().filter(|t| !t.is_empty());
    Client::connect(&cli.server, options)
        .await
        .with_context(|| format!("connecting to {}", cli.server))
}

fn trust(cli: &Cli) -> Result<Trust> {
    if let Some(hex) = &cli.fingerprint {
        return Ok(Trust::PinnedSha256(parse_fingerprint(hex)?));
    }
    if let Some(path) = &cli.ca {
        let pem = read_limited(path)?;
        return Ok(Trust::CaPem(
            String::from_utf8(pem).with_context(|| format!("{} is not text", path.display()))?,
        ));
    }
    let path = cli.data_dir.join(DEV_CERT_FILE);
    let pem = read_limited(&path).with_context(|| {
        "no --fingerprint or --ca given, and the development certificate cannot be read"
    })?;
    Ok(Trust::PinnedSha256(fingerprint_from_pem(&pem)?))
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_CERT_FILE_BYTES {
        bail!(
            "{} is larger than {MAX_CERT_FILE_BYTES} bytes",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}
