//! Server configuration: the typed `ServerConfig` the library starts from, and how the binary
//! builds it from command-line flags, environment variables (clap `env`) and an optional TOML or
//! JSON file, in that order of precedence. No TLS and no WorkOS settings means development mode.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use query_engine::engine::EngineConfig;
use query_engine::protocol::DEFAULT_MAX_FRAME_BYTES;
use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::linkedup::matching::cycle::MAX_SHARDS;
use crate::linkedup::matching::scoring::parse_weights;
use crate::linkedup::MatchingConfig;
use crate::secret::{Secret, SecretFileError};

pub const DEFAULT_QUIC_LISTEN: &str = "127.0.0.1:7443";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DATABASE_FILE: &str = "linkedup.redb";
/// `iss` and `aud` of development tokens; the verifier compares them exactly.
pub const DEV_ISSUER: &str = "urn:linkedup:dev";
pub const DEV_AUDIENCE: &str = "linkedup-dev";
/// Largest configuration file read.
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;
/// Smallest `maxFrameBytes` accepted: below this, ordinary results would not fit in a frame.
const MIN_FRAME_BYTES: u32 = 64 * 1024;
/// Largest `maxFrameBytes` accepted: a frame is held whole in memory while it is decoded, and
/// every inbound byte budget grows to hold at least one, so an unbounded value would lift
/// them all.
const MAX_FRAME_BYTES: u32 = 64 << 20;
/// Bounds of `--connection-receive-window-bytes` and `--connection-send-window-bytes`: below
/// the floor a connection crawls (a stream moves half the receive window, a connection the
/// send window, per round trip); above the ceiling, a few dozen connections could hold
/// gigabytes unread or unacknowledged.
pub(crate) const MIN_CONNECTION_WINDOW_BYTES: u32 = 64 << 10;
const MAX_CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
const MAX_CONCURRENT_CALLS_LIMIT: u32 = 10_000;
/// The `--environment` whose configuration must not use development auth or TLS silently.
const PROD_ENVIRONMENT: &str = "prod";
/// Bound of `--drain-timeout-secs` and `--pre-stop-secs`: far above any sensible value, and
/// small enough that adding grace periods to it cannot overflow.
const MAX_SHUTDOWN_SECS: u64 = 3_600;
const AT_MOST_AN_HOUR: &str = "must be at most 3600";
/// `--pre-stop-secs` when unset in production mode: a few health-check periods.
const DEFAULT_PRODUCTION_PRE_STOP: Duration = Duration::from_secs(5);
/// Upper bounds of the HTTP port's limits.
const MAX_HTTP_CONNECTIONS: usize = 1 << 16;
const MAX_HTTP_TIMEOUT_SECS: u64 = 3_600;
/// Bounds of `--storage-cache-mib`.
const MIN_STORAGE_CACHE_MIB: u64 = 8;
const MAX_STORAGE_CACHE_MIB: u64 = 1 << 20;
/// Longest group-commit wait: past it, the latency a commit may gain outweighs the fsyncs.
const MAX_GROUP_COMMIT_WAIT_US: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {MAX_CONFIG_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("--cert and --key must be given together (got only {given})")]
    PartialTls { given: &'static str },
    #[error("--workos-audience (the WorkOS client id) is required when {given} is set")]
    MissingWorkosAudience { given: &'static str },
    #[error(
        "the development token issuer would be on ({why}): anyone with a copy of the data \
         directory could mint tokens it accepts; set --workos-audience (the WorkOS client id), \
         or pass --allow-dev-auth to run it anyway"
    )]
    DevAuthRefused { why: String },
    #[error(
        "the self-signed development certificate would be used ({why}); set --cert and --key, \
         or pass --allow-dev-tls to run it anyway"
    )]
    DevTlsRefused { why: String },
    #[error("{name}: {source}")]
    SecretFile {
        name: &'static str,
        source: SecretFileError,
    },
    #[error("{name} = {value}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Where the QUIC endpoint's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// A self-signed certificate kept in `dir` (`dev-cert.pem`, `dev-key.pem`), made once.
    SelfSigned { dir: PathBuf },
    /// PEM files: a chain (leaf first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// Who issues the access tokens the server accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthSource {
    /// A local issuer whose RSA key lives in `key_dir`; its JWKS is served on the HTTP port and
    /// tokens are verified through it exactly like WorkOS ones.
    Development {
        key_dir: PathBuf,
        issuer: String,
        audience: String,
    },
    /// WorkOS AuthKit (or any RS256 issuer with a JWKS).
    WorkOs(AuthConfig),
}

/// Per-connection limits, announced to clients in `Connected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; further handshakes are refused.
    pub max_connections: usize,
    pub max_frame_bytes: u32,
    pub max_concurrent_calls: u32,
    pub max_subscriptions: u32,
    /// Time a new connection has to open its control stream and send `Connect`.
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed (clients send keep-alives).
    pub idle_timeout: Duration,
    /// Control messages queued for the control stream's writer before the reader waits.
    pub control_queue: usize,
    /// Connections open at once from one source address (an IPv4 address, or an IPv6 /64);
    /// a further one is closed right after its handshake.
    pub max_connections_per_address: usize,
    /// Bytes of inbound frames one connection may hold at once (being received, or waiting
    /// for a call slot), reserved by each frame's declared length; never below
    /// `max_frame_bytes`. A frame that does not fit waits unread.
    pub max_inbound_frame_bytes_per_connection: usize,
    /// The same over all connections from one source address (counted as for
    /// `max_connections_per_address`); never below `max_frame_bytes` nor above the server-wide
    /// budget.
    pub max_inbound_frame_bytes_per_address: usize,
    /// The same over all connections; never below the per-connection budget.
    pub max_inbound_frame_bytes: usize,
    /// How long a frame may take to arrive in full once the server has reserved its bytes.
    pub inbound_frame_timeout: Duration,
    /// Bytes of call results encoded but not yet written (the client has not granted the flow
    /// control credit for them) one connection may hold before it starts no further call. A
    /// result is held whole once its call has run, so this is exceeded by at most what the
    /// calls running then return (one frame each); never below `max_frame_bytes`.
    pub max_pending_result_bytes_per_connection: usize,
    /// The same over all connections from one source address; never below `max_frame_bytes`
    /// nor above the server-wide budget.
    pub max_pending_result_bytes_per_address: usize,
    /// The same over all connections; never below the per-connection budget.
    pub max_pending_result_bytes: usize,
    /// How long the first unwritten result of a call stream may wait to be written in full,
    /// from when it is first in line; past it the stream is reset (`RESULT_TIMEOUT`) and its
    /// results are dropped, so that a client that never reads frees what it holds.
    pub result_write_timeout: Duration,
    /// Bytes a client may send on one connection ahead of the server reading them (QUIC's
    /// connection receive window; one stream may use half). Frames waiting for room in the
    /// budgets above are not read, so this is what a connection can make quinn hold beyond
    /// them; it also caps a connection's upload at about this much per round trip.
    pub connection_receive_window_bytes: u32,
    /// Bytes the server may have written on one connection that the client has not
    /// acknowledged (QUIC's send window, over all the connection's streams). A write beyond it
    /// waits for acknowledgements, so this is what a client that stops acknowledging can make
    /// quinn hold, and a slow subscriber's transitions merge instead (protocol §8); it also
    /// caps a connection's download at about this much per round trip.
    pub connection_send_window_bytes: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_concurrent_calls: 64,
            max_subscriptions: 1_000,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            control_queue: 64,
            max_connections_per_address: 256,
            max_inbound_frame_bytes_per_connection: 16 << 20,
            max_inbound_frame_bytes_per_address: 64 << 20,
            max_inbound_frame_bytes: 1 << 30,
            inbound_frame_timeout: Duration::from_secs(30),
            // As the inbound budgets: two of the largest results per connection, and it takes
            // 16 addresses to fill the server's budget.
            max_pending_result_bytes_per_connection: 16 << 20,
            max_pending_result_bytes_per_address: 64 << 20,
            max_pending_result_bytes: 1 << 30,
            // As the inbound frame deadline: 8 MiB in 30 s needs about 280 KB/s.
            result_write_timeout: Duration::from_secs(30),
            connection_receive_window_bytes: 1 << 20,
            // A connection sends at most this much per round trip plus the client's ack delay
            // (25 ms by default): about 80 MB/s at loopback, 16 MB/s at a 100 ms WAN round
            // trip (an 8 MiB result in four round trips). A fan-out benchmark connection
            // carries about 800 transitions a second of 1–2 KB, 1.6 MB/s, which ties up
            // about 40 KB of the window at loopback and 200 KB at 100 ms: ten times headroom
            // at the worst. Quinn's default, about 10 MB, let one address's 256 connections
            // hold 2.5 GB.
            connection_send_window_bytes: 2 << 20,
        }
    }
}

/// Limits of the HTTP port. It faces the internet (Stream's webhooks) and also serves `/health`
/// and `/metrics`, so a client that opens connections and sends nothing, or sends slowly, must
/// neither hold them for ever nor use up the process's file descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; further ones wait, unaccepted, in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers once the server waits for them; an idle
    /// keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Time a client has to send a webhook's body once its headers arrived.
    pub body_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            // Well under the common 1,024 open-file limit, which the database needs too.
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything `Server::start` needs besides the schema and functions.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_path: PathBuf,
    pub tls: TlsSource,
    pub auth: AuthSource,
    pub limits: ConnectionLimits,
    pub http: HttpLimits,
    /// The engine's settings, retried-mutation deduplication (`mutation_dedup`) included.
    pub engine: EngineConfig,
    /// On shutdown, how long in-flight calls may take to finish before connections close.
    pub drain_timeout: Duration,
    /// On shutdown, how long `/health` answers 503 (draining) while both ports still serve,
    /// before they close: time for load balancers to stop sending new traffic.
    pub pre_stop: Duration,
    /// The bearer token `/metrics` requires (`--metrics-token-file`). Without one it is open
    /// in development mode and answers loopback peers only in production (`MetricsAccess`).
    pub metrics_token: Option<Secret>,
}

impl ServerConfig {
    /// Development mode with everything under `data_dir` and the default addresses.
    pub fn development(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        ServerConfig {
            quic_listen: parse_default(DEFAULT_QUIC_LISTEN),
            http_listen: parse_default(DEFAULT_HTTP_LISTEN),
            database_path: data_dir.join(DATABASE_FILE),
            tls: TlsSource::SelfSigned {
                dir: data_dir.clone(),
            },
            auth: AuthSource::Development {
                key_dir: data_dir.clone(),
                issuer: DEV_ISSUER.into(),
                audience: DEV_AUDIENCE.into(),
            },
            data_dir,
            limits: ConnectionLimits::default(),
            http: HttpLimits::default(),
            engine: EngineConfig::default(),
            drain_timeout: Duration::from_secs(10),
            pre_stop: Duration::ZERO,
            metrics_token: None,
        }
    }

    /// Development mode on 127.0.0.1 with OS-chosen ports: what in-process tests start.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Self::development(data_dir);
        config.quic_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.drain_timeout = Duration::from_secs(2);
        config
    }

    /// True with the development token issuer (anyone who can reach the server can mint a
    /// token, so nothing it serves is private): `/metrics` is then open, a Stream webhook
    /// secret is made for the data directory, and there is no pre-stop wait. A self-signed
    /// certificate alone (`--allow-dev-tls`, clients pinning it) is production with real
    /// sign-in, and keeps production's rules.
    pub fn is_development(&self) -> bool {
        matches!(self.auth, AuthSource::Development { .. })
    }

    /// Whether both ports listen on loopback addresses only.
    pub fn is_loopback_only(&self) -> bool {
        self.quic_listen.ip().is_loopback() && self.http_listen.ip().is_loopback()
    }

    /// Builds the configuration from parsed flags/env, reading `--config` if given.
    pub fn from_options(cli: &Options) -> Result<Self, ConfigError> {
        cli.layered()?.resolve()
    }
}

fn parse_default(addr: &str) -> SocketAddr {
    // The defaults are constants above, checked by a unit test.
    addr.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The `linkedup-server` command line.
#[derive(Parser, Debug)]
#[command(
    name = "linkedup-server",
    version,
    about = "LinkedUp server: a reactive database over QUIC, with an HTTP port for health and metrics.",
    long_about = "LinkedUp server: a reactive database over QUIC (wire protocol docs/protocol.md, \
ALPN linkedup/1, TLS 1.3), with an HTTP port for /health, /metrics and, in development mode, \
the development issuer's JWKS.\n\n\
Every option can also be set by its environment variable or in a TOML/JSON file given with \
--config (keys are the long flag names without the leading `--`, e.g. `http-listen = \
\"0.0.0.0:7080\"`). Precedence: flag, then environment, then file, then default.\n\n\
With no --cert/--key and no --workos-* options the server runs in development mode: data in \
./data/linkedup.redb, a self-signed certificate ./data/dev-cert.pem (its SHA-256 fingerprint is \
printed at startup for clients to pin) and a local token issuer (`linkedup-server mint-token`)."
)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Print a development access token signed by the development issuer's key in the data
    /// directory (the key a development-mode server in that directory accepts).
    MintToken(MintTokenArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct MintTokenArgs {
    /// The user's subject (`sub`), e.g. user_1.
    #[arg(long, default_value = "dev_user")]
    pub subject: String,
    #[arg(long)]
    pub email: Option<String>,
    /// Organisation id (`org_id`).
    #[arg(long)]
    pub org_id: Option<String>,
    /// Role in the organisation (`role`), e.g. admin or member.
    #[arg(long)]
    pub org_role: Option<String>,
    /// Further roles/permissions; repeat for several.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
}

/// Options shared by the flags, the environment and the config file; all optional so that the
/// sources can be layered. Defaults are applied in `resolve`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// Configuration file: TOML, or JSON when the name ends in .json.
    #[arg(long, env = "LINKEDUP_CONFIG", global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// QUIC (UDP) address to listen on [default: 127.0.0.1:7443].
    #[arg(long, env = "LINKEDUP_LISTEN", global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// HTTP address for /health, /metrics and the dev JWKS [default: 127.0.0.1:7080].
    #[arg(long, env = "LINKEDUP_HTTP_LISTEN", global = true, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Directory for the database, the development certificate and the dev issuer key
    /// [default: ./data].
    #[arg(long, env = "LINKEDUP_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database file [default: <data-dir>/linkedup.redb].
    #[arg(long, env = "LINKEDUP_DATABASE", global = true, value_name = "FILE")]
    pub database: Option<PathBuf>,
    /// TLS certificate chain, PEM, leaf first (production; needs --key).
    #[arg(long, env = "LINKEDUP_TLS_CERT", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// TLS private key, PEM (production; needs --cert).
    #[arg(long, env = "LINKEDUP_TLS_KEY", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Run the development token issuer even though the configuration looks like production
    /// (--cert/--key, --environment prod or a non-loopback address); anyone with a copy of the
    /// data directory can then mint tokens the server accepts.
    #[arg(
        long,
        env = "LINKEDUP_ALLOW_DEV_AUTH",
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub allow_dev_auth: Option<bool>,
    /// Use the self-signed development certificate even with --environment prod or a
    /// non-loopback address.
    #[arg(
        long,
        env = "LINKEDUP_ALLOW_DEV_TLS",
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub allow_dev_tls: Option<bool>,
    /// WorkOS client id. The default issuer and JWKS URL are derived from it, and a token
    /// that carries `aud` must name it there (AuthKit access tokens carry no `aud`; the issuer
    /// check binds them to the client). Setting it switches from the development issuer to
    /// WorkOS.
    #[arg(
        long,
        env = "LINKEDUP_WORKOS_AUDIENCE",
        global = true,
        value_name = "CLIENT_ID"
    )]
    pub workos_audience: Option<String>,
    /// Expected token issuer [default: https://api.workos.com/user_management/<client id>].
    #[arg(
        long,
        env = "LINKEDUP_WORKOS_ISSUER",
        global = true,
        value_name = "URL"
    )]
    pub workos_issuer: Option<String>,
    /// JWKS URL [default: https://api.workos.com/sso/jwks/<client id>].
    #[arg(
        long,
        env = "LINKEDUP_WORKOS_JWKS_URL",
        global = true,
        value_name = "URL"
    )]
    pub workos_jwks_url: Option<String>,
    /// Most connections open at once [default: 10000].
    #[arg(
        long,
        env = "LINKEDUP_MAX_CONNECTIONS",
        global = true,
        value_name = "N"
    )]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one source address (an IPv4 address or an IPv6
    /// /64) [default: 256].
    #[arg(
        long,
        env = "LINKEDUP_MAX_CONNECTIONS_PER_ADDRESS",
        global = true,
        value_name = "N"
    )]
    pub max_connections_per_address: Option<usize>,
    /// Largest frame payload accepted or sent, in bytes, from 65536 to 67108864
    /// [default: 8388608].
    #[arg(
        long,
        env = "LINKEDUP_MAX_FRAME_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub max_frame_bytes: Option<u32>,
    /// Bytes of inbound frames all connections from one source address may hold at once
    /// (each frame reserved by its declared length until decoded; one that does not fit waits
    /// unread), from --max-frame-bytes to 1073741824 (the server-wide budget)
    /// [default: 67108864].
    #[arg(
        long,
        env = "LINKEDUP_MAX_INBOUND_FRAME_BYTES_PER_ADDRESS",
        global = true,
        value_name = "BYTES"
    )]
    pub max_inbound_frame_bytes_per_address: Option<usize>,
    /// Bytes of call results computed but not yet written (the client has not read them) one
    /// connection may hold before it starts no further call, from --max-frame-bytes to
    /// --max-pending-result-bytes-per-address. The calls running then may still add one
    /// result each [default: 16777216].
    #[arg(
        long,
        env = "LINKEDUP_MAX_PENDING_RESULT_BYTES_PER_CONNECTION",
        global = true,
        value_name = "BYTES"
    )]
    pub max_pending_result_bytes_per_connection: Option<usize>,
    /// The same over all connections from one source address, from --max-frame-bytes to
    /// --max-pending-result-bytes [default: 67108864].
    #[arg(
        long,
        env = "LINKEDUP_MAX_PENDING_RESULT_BYTES_PER_ADDRESS",
        global = true,
        value_name = "BYTES"
    )]
    pub max_pending_result_bytes_per_address: Option<usize>,
    /// The same over all connections, at least --max-frame-bytes [default: 1073741824].
    #[arg(
        long,
        env = "LINKEDUP_MAX_PENDING_RESULT_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub max_pending_result_bytes: Option<usize>,
    /// Reset a call stream whose first unwritten result has not been written in full this long
    /// after it came first in line (the client does not read it), dropping its results
    /// [default: 30].
    #[arg(
        long,
        env = "LINKEDUP_RESULT_WRITE_TIMEOUT_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub result_write_timeout_secs: Option<u64>,
    /// Bytes a client may send on one connection ahead of the server reading them (QUIC's
    /// connection receive window; one stream may use half), 65536..=67108864. The server may
    /// hold this much per connection beyond the inbound frame budgets, and a connection uploads
    /// at most about this much per round trip [default: 1048576].
    #[arg(
        long,
        env = "LINKEDUP_CONNECTION_RECEIVE_WINDOW_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub connection_receive_window_bytes: Option<u32>,
    /// Bytes the server may have sent on one connection that the client has not acknowledged
    /// (QUIC's send window), 65536..=67108864. The server holds at most this much output per
    /// connection for a client that does not acknowledge it (a slow subscriber's transitions
    /// merge meanwhile), and a connection downloads at most about this much per round trip
    /// [default: 2097152].
    #[arg(
        long,
        env = "LINKEDUP_CONNECTION_SEND_WINDOW_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub connection_send_window_bytes: Option<u32>,
    /// Most call streams open at once per connection [default: 64].
    #[arg(
        long,
        env = "LINKEDUP_MAX_CONCURRENT_CALLS",
        global = true,
        value_name = "N"
    )]
    pub max_concurrent_calls: Option<u32>,
    /// Most live subscriptions per connection [default: 1000].
    #[arg(
        long,
        env = "LINKEDUP_MAX_SUBSCRIPTIONS",
        global = true,
        value_name = "N"
    )]
    pub max_subscriptions: Option<u32>,
    /// Close connections silent for this long [default: 30].
    #[arg(
        long,
        env = "LINKEDUP_IDLE_TIMEOUT_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub idle_timeout_secs: Option<u64>,
    /// Most HTTP connections served at once; more wait in the listen backlog [default: 256].
    #[arg(
        long,
        env = "LINKEDUP_HTTP_MAX_CONNECTIONS",
        global = true,
        value_name = "N"
    )]
    pub http_max_connections: Option<usize>,
    /// Close an HTTP connection whose request headers take longer than this, or that stays
    /// idle between requests this long [default: 10].
    #[arg(
        long,
        env = "LINKEDUP_HTTP_HEADER_TIMEOUT_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub http_header_timeout_secs: Option<u64>,
    /// Refuse (408) and close a webhook delivery whose body takes longer than this
    /// [default: 30].
    #[arg(
        long,
        env = "LINKEDUP_HTTP_BODY_TIMEOUT_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub http_body_timeout_secs: Option<u64>,
    /// File holding the bearer token /metrics then requires (`Authorization: Bearer
    /// <token>`). Without it /metrics is open in development mode and answers only loopback
    /// peers in production mode.
    #[arg(
        long,
        env = "LINKEDUP_METRICS_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub metrics_token_file: Option<PathBuf>,
    /// On SIGINT/SIGTERM, how long in-flight calls may run before connections close
    /// [default: 10].
    #[arg(
        long,
        env = "LINKEDUP_DRAIN_TIMEOUT_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub drain_timeout_secs: Option<u64>,
    /// On SIGINT/SIGTERM, how long /health answers 503 "draining" while everything is still
    /// served, before the ports close [default: 5 in production mode, 0 in development mode].
    #[arg(
        long,
        env = "LINKEDUP_PRE_STOP_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub pre_stop_secs: Option<u64>,
    /// How long a mutation's outcome is remembered (durably, in the database) for retries
    /// with the same mutationId [default: 600].
    #[arg(
        long,
        env = "LINKEDUP_MUTATION_DEDUP_TTL_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub mutation_dedup_ttl_secs: Option<u64>,
    /// Longest a client's mutation waits for a commit slot while the queue drains before it
    /// is refused as overloaded (RATE_LIMITED, data.reason "overloaded") [default: 1000].
    #[arg(
        long,
        env = "LINKEDUP_OVERLOAD_MAX_WAIT_MS",
        global = true,
        value_name = "MS"
    )]
    pub overload_max_wait_ms: Option<u64>,
    /// Longest it waits once the queue stands (no admission for 100 ms waited less than
    /// this) [default: 50].
    #[arg(
        long,
        env = "LINKEDUP_OVERLOAD_TARGET_MS",
        global = true,
        value_name = "MS"
    )]
    pub overload_target_ms: Option<u64>,
    /// MiB of storage page cache (redb's read and write buffers). With the decoded-document
    /// cache, most of the server's memory [default: 1024].
    #[arg(
        long,
        env = "LINKEDUP_STORAGE_CACHE_MIB",
        global = true,
        value_name = "MIB"
    )]
    pub storage_cache_mib: Option<u64>,
    /// Microseconds the committer may hold a batch of fewer than four transactions for more,
    /// while writes arrive often enough (over ~500/s at the default) that more are due
    /// within the wait: fewer fsyncs under load for at most this much latency. 0 never waits
    /// [default: 1000; at most 10000].
    #[arg(
        long,
        env = "LINKEDUP_GROUP_COMMIT_WAIT_US",
        global = true,
        value_name = "US"
    )]
    pub group_commit_wait_us: Option<u64>,
    /// Skip fsync on commit (benchmarks only: a crash loses acknowledged writes). Logged as a
    /// warning and shown in /health (`durable`); `--no-fsync=false` overrides a file or
    /// environment that turns it on.
    #[arg(
        long,
        env = "LINKEDUP_NO_FSYNC",
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub no_fsync: Option<bool>,
    /// GetStream API key. With it (and --stream-api-secret) meeting rooms are created through
    /// Stream's API; without it by the local provider (no network).
    #[arg(
        long,
        env = "LINKEDUP_STREAM_API_KEY",
        global = true,
        value_name = "KEY"
    )]
    pub stream_api_key: Option<String>,
    /// GetStream API secret: signs API requests and verifies Stream's webhooks (alone, it only
    /// verifies webhooks) [default in development: <data-dir>/dev-stream-secret].
    #[arg(
        long,
        env = "LINKEDUP_STREAM_API_SECRET",
        hide_env_values = true,
        global = true,
        value_name = "SECRET"
    )]
    pub stream_api_secret: Option<crate::stream::Secret>,
    /// GetStream API base URL [default: https://chat.stream-io-api.com].
    #[arg(
        long,
        env = "LINKEDUP_STREAM_BASE_URL",
        global = true,
        value_name = "URL"
    )]
    pub stream_base_url: Option<String>,
    /// GetStream call type of meeting rooms [default: default].
    #[arg(
        long,
        env = "LINKEDUP_STREAM_CALL_TYPE",
        global = true,
        value_name = "TYPE"
    )]
    pub stream_call_type: Option<String>,
    /// The environment whose feature flags apply: local, staging or prod [default: local].
    #[arg(long, env = "LINKEDUP_ENVIRONMENT", global = true, value_name = "ENV")]
    pub environment: Option<String>,
    /// Shards each matching cycle is split into, 1..=64 [default: 4].
    #[arg(
        long,
        env = "LINKEDUP_MATCHING_SHARDS",
        global = true,
        value_name = "N"
    )]
    pub matching_shards: Option<u32>,
    /// Least score, in percent, a pair needs to be matched [default: 25].
    #[arg(
        long,
        env = "LINKEDUP_MATCHING_MIN_SCORE_PERCENT",
        global = true,
        value_name = "PERCENT"
    )]
    pub matching_min_score_percent: Option<u8>,
    /// Weights of the matching signals [default:
    /// interests=0.35,roles=0.2,languages=0.15,vector=0.3].
    #[arg(
        long,
        env = "LINKEDUP_MATCHING_WEIGHTS",
        global = true,
        value_name = "WEIGHTS"
    )]
    pub matching_weights: Option<String>,
    /// AI provider: `local` (deterministic heuristics, offline) or `openai` (an
    /// OpenAI-compatible API) [default: openai if an API key is set, else local].
    #[arg(long, env = "LINKEDUP_AI_PROVIDER", global = true, value_name = "NAME")]
    pub ai_provider: Option<String>,
    /// Base URL of the OpenAI-compatible API [default: https://api.openai.com/v1].
    #[arg(long, env = "LINKEDUP_AI_BASE_URL", global = true, value_name = "URL")]
    pub ai_base_url: Option<String>,
    /// API key of the AI provider; prefer the environment or the config file to the flag.
    #[arg(
        long,
        env = "LINKEDUP_AI_API_KEY",
        global = true,
        value_name = "KEY",
        hide_env_values = true
    )]
    pub ai_api_key: Option<crate::secret::Secret>,
    /// Chat model for ideas, prompts and insights [default: gpt-4o-mini].
    #[arg(
        long,
        env = "LINKEDUP_AI_CHAT_MODEL",
        global = true,
        value_name = "MODEL"
    )]
    pub ai_chat_model: Option<String>,
    /// Embedding model [default: text-embedding-3-small].
    #[arg(
        long,
        env = "LINKEDUP_AI_EMBEDDING_MODEL",
        global = true,
        value_name = "MODEL"
    )]
    pub ai_embedding_model: Option<String>,
    /// Timeout of one AI request, 100..=60000 [default: 15000].
    #[arg(long, env = "LINKEDUP_AI_TIMEOUT_MS", global = true, value_name = "MS")]
    pub ai_timeout_ms: Option<u64>,
    /// Retries of an AI request on 429, 5xx and timeouts, 0..=5 [default: 2].
    #[arg(long, env = "LINKEDUP_AI_MAX_RETRIES", global = true, value_name = "N")]
    pub ai_max_retries: Option<u32>,
    /// At most one in-call prompt generation per meeting per this many ms [default: 10000].
    #[arg(
        long,
        env = "LINKEDUP_AI_IN_CALL_INTERVAL_MS",
        global = true,
        value_name = "MS"
    )]
    pub ai_in_call_interval_ms: Option<u64>,
    /// AI provider calls one user's own requests may make in 24 h, 1..=1000000 [default: 200].
    #[arg(
        long,
        env = "LINKEDUP_AI_DAILY_CALLS_PER_USER",
        global = true,
        value_name = "N"
    )]
    pub ai_daily_calls_per_user: Option<u64>,
    /// Most users one user may block, 1..=5000 [default: 1000].
    #[arg(
        long,
        env = "LINKEDUP_MAX_BLOCKS_PER_USER",
        global = true,
        value_name = "N"
    )]
    pub max_blocks_per_user: Option<usize>,
}

impl Options {
    /// Reads a config file: JSON when the name ends in `.json`, TOML otherwise.
    pub fn from_file(path: &Path) -> Result<Options, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let Some(text) =
            crate::files::read_text_at_most(path, MAX_CONFIG_FILE_BYTES).map_err(read_err)?
        else {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        };
        let parse_err = |detail: String| ConfigError::Parse {
            path: path.to_path_buf(),
            detail,
        };
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))
        } else {
            toml::from_str(&text).map_err(|e| parse_err(toml_error(&text, &e)))
        }
    }

    /// These options over those of the `--config` file, if one is given: what the server
    /// runs with, before defaults.
    pub fn layered(&self) -> Result<Options, ConfigError> {
        let file = match &self.config {
            Some(path) => Options::from_file(path)?,
            None => Options::default(),
        };
        Ok(self.clone().or(file))
    }

    /// Each option from `self` if set, else from `lower`.
    pub fn or(self, lower: Options) -> Options {
        Options {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            http_listen: self.http_listen.or(lower.http_listen),
            data_dir: self.data_dir.or(lower.data_dir),
            database: self.database.or(lower.database),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            allow_dev_auth: self.allow_dev_auth.or(lower.allow_dev_auth),
            allow_dev_tls: self.allow_dev_tls.or(lower.allow_dev_tls),
            workos_audience: self.workos_audience.or(lower.workos_audience),
            workos_issuer: self.workos_issuer.or(lower.workos_issuer),
            workos_jwks_url: self.workos_jwks_url.or(lower.workos_jwks_url),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_address: self
                .max_connections_per_address
                .or(lower.max_connections_per_address),
            max_frame_bytes: self.max_frame_bytes.or(lower.max_frame_bytes),
            max_inbound_frame_bytes_per_address: self
                .max_inbound_frame_bytes_per_address
                .or(lower.max_inbound_frame_bytes_per_address),
            max_pending_result_bytes_per_connection: self
                .max_pending_result_bytes_per_connection
                .or(lower.max_pending_result_bytes_per_connection),
            max_pending_result_bytes_per_address: self
                .max_pending_result_bytes_per_address
                .or(lower.max_pending_result_bytes_per_address),
            max_pending_result_bytes: self
                .max_pending_result_bytes
                .or(lower.max_pending_result_bytes),
            result_write_timeout_secs: self
                .result_write_timeout_secs
                .or(lower.result_write_timeout_secs),
            connection_receive_window_bytes: self
                .connection_receive_window_bytes
                .or(lower.connection_receive_window_bytes),
            connection_send_window_bytes: self
                .connection_send_window_bytes
                .or(lower.connection_send_window_bytes),
            max_concurrent_calls: self.max_concurrent_calls.or(lower.max_concurrent_calls),
            max_subscriptions: self.max_subscriptions.or(lower.max_subscriptions),
            idle_timeout_secs: self.idle_timeout_secs.or(lower.idle_timeout_secs),
            http_max_connections: self.http_max_connections.or(lower.http_max_connections),
            http_header_timeout_secs: self
                .http_header_timeout_secs
                .or(lower.http_header_timeout_secs),
            http_body_timeout_secs: self.http_body_timeout_secs.or(lower.http_body_timeout_secs),
            metrics_token_file: self.metrics_token_file.or(lower.metrics_token_file),
            drain_timeout_secs: self.drain_timeout_secs.or(lower.drain_timeout_secs),
            pre_stop_secs: self.pre_stop_secs.or(lower.pre_stop_secs),
            mutation_dedup_ttl_secs: self
                .mutation_dedup_ttl_secs
                .or(lower.mutation_dedup_ttl_secs),
            overload_max_wait_ms: self.overload_max_wait_ms.or(lower.overload_max_wait_ms),
            overload_target_ms: self.overload_target_ms.or(lower.overload_target_ms),
            storage_cache_mib: self.storage_cache_mib.or(lower.storage_cache_mib),
            group_commit_wait_us: self.group_commit_wait_us.or(lower.group_commit_wait_us),
            no_fsync: self.no_fsync.or(lower.no_fsync),
            stream_api_key: self.stream_api_key.or(lower.stream_api_key),
            stream_api_secret: self.stream_api_secret.or(lower.stream_api_secret),
            stream_base_url: self.stream_base_url.or(lower.stream_base_url),
            stream_call_type: self.stream_call_type.or(lower.stream_call_type),
            environment: self.environment.or(lower.environment),
            matching_shards: self.matching_shards.or(lower.matching_shards),
            matching_min_score_percent: self
                .matching_min_score_percent
                .or(lower.matching_min_score_percent),
            matching_weights: self.matching_weights.or(lower.matching_weights),
            ai_provider: self.ai_provider.or(lower.ai_provider),
            ai_base_url: self.ai_base_url.or(lower.ai_base_url),
            ai_api_key: self.ai_api_key.or(lower.ai_api_key),
            ai_chat_model: self.ai_chat_model.or(lower.ai_chat_model),
            ai_embedding_model: self.ai_embedding_model.or(lower.ai_embedding_model),
            ai_timeout_ms: self.ai_timeout_ms.or(lower.ai_timeout_ms),
            ai_max_retries: self.ai_max_retries.or(lower.ai_max_retries),
            ai_in_call_interval_ms: self.ai_in_call_interval_ms.or(lower.ai_in_call_interval_ms),
            ai_daily_calls_per_user: self
                .ai_daily_calls_per_user
                .or(lower.ai_daily_calls_per_user),
            max_blocks_per_user: self.max_blocks_per_user.or(lower.max_blocks_per_user),
        }
    }

    /// The matching settings these options select (`linkedup::matching`); unset ones keep
    /// their defaults.
    pub fn matching(&self) -> Result<MatchingConfig, ConfigError> {
        let mut config = MatchingConfig::default();
        if let Some(n) = self.matching_shards {
            let n = at_least("matching-shards", n, 1)?;
            config.shards = at_most("matching-shards", n, MAX_SHARDS, "must be at most 64")?;
        }
        if let Some(p) = self.matching_min_score_percent {
            let p = at_most("matching-min-score-percent", p, 100, "must be at most 100")?;
            config.min_score = f64::from(p) / 100.0;
        }
        if let Some(w) = &self.matching_weights {
            config.weights = parse_weights(w).map_err(|_| ConfigError::Invalid {
                name: "matching-weights",
                value: w.clone(),
                reason: "must be interests=W,roles=W,languages=W,vector=W with non-negative \
                         weights, not all 0",
            })?;
        }
        Ok(config)
    }

    /// The data directory these options select.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// Applies defaults and checks the combination.
    pub fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let mut config = ServerConfig::development(self.data_dir());
        self.resolve_http(&mut config.http)?;
        let tls_files_given = self.cert.is_some() || self.key.is_some();
        let environment_prod = self.environment.as_deref() == Some(PROD_ENVIRONMENT);
        let (allow_dev_auth, allow_dev_tls) = (
            self.allow_dev_auth.unwrap_or(false),
            self.allow_dev_tls.unwrap_or(false),
        );
        if let Some(addr) = self.listen {
            config.quic_listen = addr;
        }
        if let Some(addr) = self.http_listen {
            config.http_listen = addr;
        }
        if let Some(path) = self.database {
            config.database_path = path;
        }
        if let Some(path) = &self.metrics_token_file {
            let token = Secret::read_file(path).map_err(|source| ConfigError::SecretFile {
                name: "metrics-token-file",
                source,
            })?;
            config.metrics_token = Some(token);
        }
        config.tls = match (self.cert, self.key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) => config.tls,
            (Some(_), None) => return Err(ConfigError::PartialTls { given: "--cert" }),
            (None, Some(_)) => return Err(ConfigError::PartialTls { given: "--key" }),
        };
        match self.workos_audience {
            Some(client_id) => {
                non_empty("workos-audience", &client_id)?;
                let issuer = self.workos_issuer.unwrap_or_else(|| {
                    format!("https://api.workos.com/user_management/{client_id}")
                });
                let jwks_url = self
                    .workos_jwks_url
                    .unwrap_or_else(|| format!("https://api.workos.com/sso/jwks/{client_id}"));
                non_empty("workos-issuer", &issuer)?;
                if !(jwks_url.starts_with("https://") || jwks_url.starts_with("http://")) {
                    return Err(ConfigError::Invalid {
                        name: "workos-jwks-url",
                        value: jwks_url,
                        reason: "must be an http(s) URL",
                    });
                }
                config.auth = AuthSource::WorkOs(AuthConfig::new(issuer, client_id, jwks_url));
            }
            None if self.workos_issuer.is_some() => {
                return Err(ConfigError::MissingWorkosAudience {
                    given: "--workos-issuer",
                })
            }
            None if self.workos_jwks_url.is_some() => {
                return Err(ConfigError::MissingWorkosAudience {
                    given: "--workos-jwks-url",
                })
            }
            None => {}
        }
        let production_sign = |tls_files: bool| -> Option<String> {
            if tls_files {
                return Some("--cert/--key are set".into());
            }
            if environment_prod {
                return Some("--environment is prod".into());
            }
            [
                ("--listen", config.quic_listen),
                ("--http-listen", config.http_listen),
            ]
            .into_iter()
            .find(|(_, addr)| !addr.ip().is_loopback())
            .map(|(flag, addr)| format!("{flag} {addr} is not a loopback address"))
        };
        if matches!(config.auth, AuthSource::Development { .. }) && !allow_dev_auth {
            if let Some(why) = production_sign(tls_files_given) {
                return Err(ConfigError::DevAuthRefused { why });
            }
        }
        if matches!(config.tls, TlsSource::SelfSigned { .. }) && !allow_dev_tls {
            if let Some(why) = production_sign(false) {
                return Err(ConfigError::DevTlsRefused { why });
            }
        }
        let limits = &mut config.limits;
        if let Some(n) = self.max_connections {
            limits.max_connections = at_least("max-connections", n, 1)?;
        }
        if let Some(n) = self.max_connections_per_address {
            limits.max_connections_per_address = at_least("max-connections-per-address", n, 1)?;
        }
        if let Some(n) = self.max_frame_bytes {
            let n = at_least("max-frame-bytes", n, MIN_FRAME_BYTES)?;
            limits.max_frame_bytes = at_most(
                "max-frame-bytes",
                n,
                MAX_FRAME_BYTES,
                "is above 67108864: frames are held whole in memory and every inbound budget grows to hold one",
            )?;
        }
        if let Some(n) = self.max_inbound_frame_bytes_per_address {
            const NAME: &str = "max-inbound-frame-bytes-per-address";
            // Below one frame, a frame could never be reserved.
            let n = at_least_one_frame(NAME, n, limits.max_frame_bytes)?;
            limits.max_inbound_frame_bytes_per_address = at_most(
                NAME,
                n,
                limits.max_inbound_frame_bytes,
                "must be at most the server-wide inbound budget, 1073741824",
            )?;
        }
        // Wider first, so that each narrower one is checked against what is in effect.
        if let Some(n) = self.max_pending_result_bytes {
            limits.max_pending_result_bytes =
                at_least_one_frame("max-pending-result-bytes", n, limits.max_frame_bytes)?;
        }
        if let Some(n) = self.max_pending_result_bytes_per_address {
            const NAME: &str = "max-pending-result-bytes-per-address";
            let n = at_least_one_frame(NAME, n, limits.max_frame_bytes)?;
            limits.max_pending_result_bytes_per_address = at_most(
                NAME,
                n,
                limits.max_pending_result_bytes,
                "must be at most max-pending-result-bytes",
            )?;
        }
        if let Some(n) = self.max_pending_result_bytes_per_connection {
            const NAME: &str = "max-pending-result-bytes-per-connection";
            let n = at_least_one_frame(NAME, n, limits.max_frame_bytes)?;
            limits.max_pending_result_bytes_per_connection = at_most(
                NAME,
                n,
                limits.max_pending_result_bytes_per_address,
                "must be at most max-pending-result-bytes-per-address",
            )?;
        }
        if let Some(secs) = self.result_write_timeout_secs {
            let secs = at_least("result-write-timeout-secs", secs, 1)?;
            limits.result_write_timeout = Duration::from_secs(at_most(
                "result-write-timeout-secs",
                secs,
                MAX_SHUTDOWN_SECS,
                AT_MOST_AN_HOUR,
            )?);
        }
        if let Some(n) = self.connection_receive_window_bytes {
            limits.connection_receive_window_bytes =
                window_bytes("connection-receive-window-bytes", n)?;
        }
        if let Some(n) = self.connection_send_window_bytes {
            limits.connection_send_window_bytes = window_bytes("connection-send-window-bytes", n)?;
        }
        if let Some(n) = self.max_concurrent_calls {
            let n = at_least("max-concurrent-calls", n, 1)?;
            limits.max_concurrent_calls = at_most(
                "max-concurrent-calls",
                n,
                MAX_CONCURRENT_CALLS_LIMIT,
                "must be at most 10000",
            )?;
        }
        if let Some(n) = self.max_subscriptions {
            limits.max_subscriptions = at_least("max-subscriptions", n, 1)?;
        }
        if let Some(secs) = self.idle_timeout_secs {
            limits.idle_timeout = Duration::from_secs(at_least("idle-timeout-secs", secs, 1)?);
        }
        if let Some(secs) = self.drain_timeout_secs {
            let secs = at_most(
                "drain-timeout-secs",
                secs,
                MAX_SHUTDOWN_SECS,
                AT_MOST_AN_HOUR,
            )?;
            config.drain_timeout = Duration::from_secs(secs);
        }
        config.pre_stop = match self.pre_stop_secs {
            Some(secs) => Duration::from_secs(at_most(
                "pre-stop-secs",
                secs,
                MAX_SHUTDOWN_SECS,
                AT_MOST_AN_HOUR,
            )?),
            None if config.is_development() => Duration::ZERO,
            None => DEFAULT_PRODUCTION_PRE_STOP,
        };
        if let Some(secs) = self.mutation_dedup_ttl_secs {
            config.engine.mutation_dedup.ttl = Duration::from_secs(secs);
        }
        let admission = &mut config.engine.admission;
        if let Some(ms) = self.overload_target_ms {
            admission.target = Duration::from_millis(at_least("overload-target-ms", ms, 1)?);
        }
        if let Some(ms) = self.overload_max_wait_ms {
            admission.max_wait = Duration::from_millis(ms);
        }
        if admission.max_wait < admission.target {
            return Err(ConfigError::Invalid {
                name: "overload-max-wait-ms",
                value: admission.max_wait.as_millis().to_string(),
                reason: "must be at least overload-target-ms",
            });
        }
        if let Some(mib) = self.storage_cache_mib {
            const TOO_LARGE: &str = "must be at most 1048576 (1 TiB)";
            let mib = at_least("storage-cache-mib", mib, MIN_STORAGE_CACHE_MIB)?;
            let mib = at_most("storage-cache-mib", mib, MAX_STORAGE_CACHE_MIB, TOO_LARGE)?;
            // Only a 32-bit target cannot hold it.
            config.engine.storage.page_cache_bytes =
                usize::try_from(mib << 20).map_err(|_| ConfigError::Invalid {
                    name: "storage-cache-mib",
                    value: mib.to_string(),
                    reason: TOO_LARGE,
                })?;
        }
        if let Some(us) = self.group_commit_wait_us {
            let us = at_most(
                "group-commit-wait-us",
                us,
                MAX_GROUP_COMMIT_WAIT_US,
                "must be at most 10000 (10 ms)",
            )?;
            config.engine.committer.group_commit_wait = Duration::from_micros(us);
        }
        if self.no_fsync == Some(true) {
            config.engine.committer.durable = false;
        }
        Ok(config)
    }
}

impl Options {
    fn resolve_http(&self, http: &mut HttpLimits) -> Result<(), ConfigError> {
        if let Some(n) = self.http_max_connections {
            let n = at_least("http-max-connections", n, 1)?;
            http.max_connections = at_most(
                "http-max-connections",
                n,
                MAX_HTTP_CONNECTIONS,
                "must be at most 65536",
            )?;
        }
        let secs = |name, value: u64| -> Result<Duration, ConfigError> {
            let value = at_least(name, value, 1)?;
            Ok(Duration::from_secs(at_most(
                name,
                value,
                MAX_HTTP_TIMEOUT_SECS,
                "must be at most 3600",
            )?))
        };
        if let Some(s) = self.http_header_timeout_secs {
            http.header_read_timeout = secs("http-header-timeout-secs", s)?;
        }
        if let Some(s) = self.http_body_timeout_secs {
            http.body_read_timeout = secs("http-body-timeout-secs", s)?;
        }
        Ok(())
    }
}

/// A TOML error as its message and position only: its `Display` quotes the offending line,
/// which may hold a secret (`stream_api_secret = "…"`, a key misspelt and so refused).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let start = (0..=span.start.min(text.len()))
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

fn non_empty(name: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::Invalid {
            name,
            value: value.into(),
            reason: "must not be empty",
        });
    }
    Ok(())
}

pub(crate) fn at_most<T: PartialOrd + ToString>(
    name: &'static str,
    n: T,
    max: T,
    reason: &'static str,
) -> Result<T, ConfigError> {
    if n > max {
        return Err(ConfigError::Invalid {
            name,
            value: n.to_string(),
            reason,
        });
    }
    Ok(n)
}

/// A QUIC flow-control window checked against its bounds.
fn window_bytes(name: &'static str, n: u32) -> Result<u32, ConfigError> {
    let n = at_least(name, n, MIN_CONNECTION_WINDOW_BYTES)?;
    at_most(
        name,
        n,
        MAX_CONNECTION_WINDOW_BYTES,
        "must be at most 67108864 (64 MiB)",
    )
}

/// A byte budget that must hold at least one frame.
fn at_least_one_frame(
    name: &'static str,
    n: usize,
    max_frame_bytes: u32,
) -> Result<usize, ConfigError> {
    if n < max_frame_bytes as usize {
        return Err(ConfigError::Invalid {
            name,
            value: n.to_string(),
            reason: "must be at least max-frame-bytes",
        });
    }
    Ok(n)
}

fn at_least<T: PartialOrd + ToString>(name: &'static str, n: T, min: T) -> Result<T, ConfigError> {
    if n < min {
        return Err(ConfigError::Invalid {
            name,
            value: n.to_string(),
            reason: "is below the minimum",
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("linkedup-server").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn no_options_is_development_mode_with_the_defaults() {
        Cli::command().debug_assert();
        let config = parse(&[]).options.resolve().unwrap();
        assert!(config.is_development());
        assert_eq!(config.quic_listen.to_string(), DEFAULT_QUIC_LISTEN);
        assert_eq!(config.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert_eq!(
            config.database_path,
            Path::new(DEFAULT_DATA_DIR).join(DATABASE_FILE)
        );
        assert!(matches!(config.auth, AuthSource::Development { .. }));
    }

    #[test]
    fn production_options_select_files_and_workos() {
        let cli = parse(&[
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--workos-audience",
            "client_1",
            "--listen",
            "0.0.0.0:443",
        ]);
        let config = cli.options.resolve().unwrap();
        assert!(!config.is_development());
        assert_eq!(config.quic_listen.to_string(), "0.0.0.0:443");
        let AuthSource::WorkOs(auth) = &config.auth else {
            panic!("expected WorkOS auth");
        };
        assert_eq!(auth.audience, "client_1");
        assert_eq!(
            auth.issuer,
            "https://api.workos.com/user_management/client_1"
        );
        assert_eq!(auth.jwks_url, "https://api.workos.com/sso/jwks/client_1");
    }

    #[test]
    fn partial_settings_are_refused() {
        assert!(matches!(
            parse(&["--cert", "c.pem"]).options.resolve(),
            Err(ConfigError::PartialTls { .. })
        ));
        assert!(matches!(
            parse(&["--workos-issuer", "https://x"]).options.resolve(),
            Err(ConfigError::MissingWorkosAudience { .. })
        ));
        for bad in ["10", "67108865"] {
            assert!(matches!(
                parse(&["--max-frame-bytes", bad]).options.resolve(),
                Err(ConfigError::Invalid { .. })
            ));
        }
        let limits = |n: &str| {
            let config = parse(&["--max-frame-bytes", n]).options.resolve();
            config.map(|c| c.limits.max_frame_bytes)
        };
        assert_eq!(limits("67108864").ok(), Some(64 << 20));
    }

    #[test]
    fn development_auth_and_tls_are_refused_in_production_style_configs_unless_allowed() {
        let refused_auth = |args: &[&str]| {
            let resolved = parse(args).options.resolve();
            assert!(
                matches!(resolved, Err(ConfigError::DevAuthRefused { .. })),
                "{args:?}: {resolved:?}"
            );
        };
        refused_auth(&["--cert", "c.pem", "--key", "k.pem"]);
        refused_auth(&["--environment", "prod"]);
        refused_auth(&["--listen", "0.0.0.0:7443"]);
        refused_auth(&["--http-listen", "192.0.2.1:7080"]);
        let err = parse(&["--cert", "c.pem", "--key", "k.pem"])
            .options
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--workos-audience") && err.contains("--allow-dev-auth"),
            "{err}"
        );

        let allowed = parse(&["--cert", "c.pem", "--key", "k.pem", "--allow-dev-auth"])
            .options
            .resolve()
            .unwrap();
        assert!(matches!(allowed.auth, AuthSource::Development { .. }));
        assert!(matches!(
            parse(&["--environment", "prod", "--allow-dev-auth"])
                .options
                .resolve(),
            Err(ConfigError::DevTlsRefused { .. })
        ));
        assert!(matches!(
            parse(&["--workos-audience", "client_1", "--listen", "0.0.0.0:7443"])
                .options
                .resolve(),
            Err(ConfigError::DevTlsRefused { .. })
        ));
        let both = [
            "--listen",
            "0.0.0.0:7443",
            "--allow-dev-auth",
            "--allow-dev-tls",
        ];
        assert!(parse(&both).options.resolve().unwrap().is_development());
        // The plain run, loopback on IPv6 included, stays as it was.
        assert!(parse(&["--listen", "[::1]:7443"]).options.resolve().is_ok());

        // A file's opt-in is overridden by an explicit `false` on the command line.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "allow-dev-auth = true\nenvironment = \"prod\"\nallow-dev-tls = true\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        assert!(ServerConfig::from_options(&parse(&["--config", path]).options).is_ok());
        assert!(matches!(
            ServerConfig::from_options(
                &parse(&["--config", path, "--allow-dev-auth=false"]).options
            ),
            Err(ConfigError::DevAuthRefused { .. })
        ));
    }

    /// Real sign-in with the self-signed certificate (clients pin it) is production: before,
    /// the certificate alone made the server "development", and `/metrics` answered anyone.
    #[test]
    fn a_self_signed_certificate_alone_is_not_development() {
        let config = parse(&[
            "--workos-audience",
            "client_1",
            "--environment",
            "prod",
            "--http-listen",
            "0.0.0.0:7080",
            "--allow-dev-tls",
        ])
        .options
        .resolve()
        .unwrap();
        assert!(matches!(config.tls, TlsSource::SelfSigned { .. }));
        assert!(!config.is_development());
        assert_eq!(config.pre_stop, DEFAULT_PRODUCTION_PRE_STOP);
        let access = crate::metrics_access::MetricsAccess::new(None, config.is_development());
        let remote = std::net::IpAddr::from([192, 0, 2, 7]);
        assert!(access.check(remote, &axum::http::HeaderMap::new()).is_err());
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("server.toml");
        std::fs::write(
            &toml_path,
            "listen = \"127.0.0.1:9000\"\nhttp-listen = \"127.0.0.1:9001\"\nmax-subscriptions = 5\n",
        )
        .unwrap();
        let cli = parse(&[
            "--config",
            toml_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9100",
        ]);
        let config = ServerConfig::from_options(&cli.options).unwrap();
        assert_eq!(config.quic_listen.to_string(), "127.0.0.1:9100");
        assert_eq!(config.http_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(config.limits.max_subscriptions, 5);

        let json_path = dir.path().join("server.json");
        std::fs::write(&json_path, r#"{"max-concurrent-calls": 7}"#).unwrap();
        let options = Options::from_file(&json_path).unwrap();
        assert_eq!(options.max_concurrent_calls, Some(7));
        std::fs::write(&json_path, r#"{"no-such-key": 1}"#).unwrap();
        assert!(matches!(
            Options::from_file(&json_path),
            Err(ConfigError::Parse { .. })
        ));
    }

    /// A blank secret is refused from a flag (an unset variable expanded into it) and from
    /// the file; before, `--stream-api-secret ""` verified webhooks with an empty HMAC key.
    #[test]
    fn blank_secrets_are_refused() {
        for flag in ["--stream-api-secret", "--ai-api-key"] {
            for blank in ["", "  "] {
                let parsed = Cli::try_parse_from(["linkedup-server", flag, blank]);
                assert!(parsed.is_err(), "{flag} {blank:?} was taken");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        for line in ["stream-api-secret = \"\"\n", "ai-api-key = \" \"\n"] {
            std::fs::write(&path, line).unwrap();
            assert!(
                matches!(Options::from_file(&path), Err(ConfigError::Parse { .. })),
                "{line}"
            );
        }
    }

    /// An error in the file names the line and column without quoting it: the line may hold
    /// a secret under a misspelt (so refused) key.
    #[test]
    fn a_config_file_error_does_not_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nstream_api_secret = \"TOPSECRET\"\n",
        )
        .unwrap();
        let e = Options::from_file(&path).unwrap_err().to_string();
        assert!(!e.contains("TOPSECRET"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("stream_api_secret"), "{e}");
    }

    #[test]
    fn the_mutation_dedup_ttl_reaches_the_engine() {
        let config = parse(&["--mutation-dedup-ttl-secs", "42"])
            .options
            .resolve()
            .unwrap();
        assert_eq!(config.engine.mutation_dedup.ttl, Duration::from_secs(42));
    }

    #[test]
    fn overload_bounds_reach_the_engine_and_are_checked() {
        let config = parse(&[
            "--overload-max-wait-ms",
            "300",
            "--overload-target-ms",
            "20",
        ])
        .options
        .resolve()
        .unwrap();
        let admission = &config.engine.admission;
        assert_eq!(admission.max_wait, Duration::from_millis(300));
        assert_eq!(admission.target, Duration::from_millis(20));
        for bad in [
            &["--overload-target-ms", "0"][..],
            &["--overload-max-wait-ms", "10"][..],
        ] {
            assert!(matches!(
                parse(bad).options.resolve(),
                Err(ConfigError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn the_group_commit_wait_reaches_the_engine_and_is_checked() {
        let config = parse(&["--group-commit-wait-us", "0"])
            .options
            .resolve()
            .unwrap();
        assert_eq!(config.engine.committer.group_commit_wait, Duration::ZERO);
        let config = parse(&["--group-commit-wait-us", "10000"])
            .options
            .resolve()
            .unwrap();
        assert_eq!(
            config.engine.committer.group_commit_wait,
            Duration::from_millis(10)
        );
        let default = parse(&[]).options.resolve().unwrap();
        assert_eq!(
            default.engine.committer.group_commit_wait,
            query_engine::committer::DEFAULT_GROUP_COMMIT_WAIT
        );
        assert!(matches!(
            parse(&["--group-commit-wait-us", "10001"])
                .options
                .resolve(),
            Err(ConfigError::Invalid {
                name: "group-commit-wait-us",
                ..
            })
        ));
    }

    #[test]
    fn the_storage_cache_size_reaches_the_engine_and_is_checked() {
        let config = parse(&["--storage-cache-mib", "64"])
            .options
            .resolve()
            .unwrap();
        assert_eq!(config.engine.storage.page_cache_bytes, 64 << 20);
        let default = parse(&[]).options.resolve().unwrap();
        assert_eq!(
            default.engine.storage.page_cache_bytes,
            query_engine::storage::PAGE_CACHE_BYTES
        );
        for bad in ["0", "7", "1048577"] {
            assert!(matches!(
                parse(&["--storage-cache-mib", bad]).options.resolve(),
                Err(ConfigError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn http_limits_reach_the_config_and_are_checked() {
        let config = parse(&[
            "--http-max-connections",
            "3",
            "--http-header-timeout-secs",
            "4",
            "--http-body-timeout-secs",
            "5",
        ])
        .options
        .resolve()
        .unwrap();
        assert_eq!(config.http.max_connections, 3);
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(4));
        assert_eq!(config.http.body_read_timeout, Duration::from_secs(5));
        assert_eq!(
            parse(&[]).options.resolve().unwrap().http,
            HttpLimits::default()
        );
        for bad in [
            &["--http-max-connections", "0"][..],
            &["--http-header-timeout-secs", "0"][..],
            &["--http-body-timeout-secs", "3601"][..],
        ] {
            assert!(matches!(
                parse(bad).options.resolve(),
                Err(ConfigError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn the_metrics_token_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("metrics-token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let path = token.to_str().unwrap();
        let config = parse(&["--metrics-token-file", path])
            .options
            .resolve()
            .unwrap();
        assert_eq!(config.metrics_token, Some(Secret::new("s3cret-token")));
        assert_eq!(parse(&[]).options.resolve().unwrap().metrics_token, None);

        let file = dir.path().join("server.toml");
        std::fs::write(&file, format!("metrics-token-file = {path:?}\n")).unwrap();
        let options = parse(&["--config", file.to_str().unwrap()]).options;
        let config = ServerConfig::from_options(&options).unwrap();
        assert_eq!(config.metrics_token, Some(Secret::new("s3cret-token")));
        let command = Cli::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some("metrics-token-file"))
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("LINKEDUP_METRICS_TOKEN_FILE")
        );

        let missing = dir.path().join("missing");
        let resolved = parse(&["--metrics-token-file", missing.to_str().unwrap()])
            .options
            .resolve();
        assert!(
            matches!(resolved, Err(ConfigError::SecretFile { .. })),
            "{resolved:?}"
        );
        std::fs::write(&token, "\n").unwrap();
        assert!(matches!(
            parse(&["--metrics-token-file", path]).options.resolve(),
            Err(ConfigError::SecretFile { .. })
        ));
    }

    #[test]
    fn connection_byte_limits_are_layered_and_checked() {
        let limits = |args: &[&str]| {
            ServerConfig::from_options(&parse(args).options).map(|config| config.limits)
        };
        let default = ConnectionLimits::default();
        assert_eq!(limits(&[]).unwrap(), default);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "max-inbound-frame-bytes-per-address = 33554432\n\
             connection-receive-window-bytes = 131072\n\
             connection-send-window-bytes = 262144\n\
             max-pending-result-bytes-per-address = 33554432\n\
             result-write-timeout-secs = 5\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let from_file = limits(&["--config", path]).unwrap();
        assert_eq!(from_file.max_inbound_frame_bytes_per_address, 32 << 20);
        assert_eq!(from_file.connection_receive_window_bytes, 128 << 10);
        assert_eq!(from_file.connection_send_window_bytes, 256 << 10);
        assert_eq!(from_file.max_pending_result_bytes_per_address, 32 << 20);
        assert_eq!(from_file.result_write_timeout, Duration::from_secs(5));
        let flags = limits(&[
            "--config",
            path,
            "--max-inbound-frame-bytes-per-address",
            "8388608",
            "--connection-receive-window-bytes",
            "65536",
            "--connection-send-window-bytes",
            "67108864",
            "--max-pending-result-bytes",
            "67108864",
            "--max-pending-result-bytes-per-address",
            "16777216",
            "--max-pending-result-bytes-per-connection",
            "8388608",
            "--result-write-timeout-secs",
            "60",
        ])
        .unwrap();
        assert_eq!(flags.max_inbound_frame_bytes_per_address, 8 << 20);
        assert_eq!(flags.connection_receive_window_bytes, 64 << 10);
        assert_eq!(flags.connection_send_window_bytes, 64 << 20);
        assert_eq!(flags.max_pending_result_bytes, 64 << 20);
        assert_eq!(flags.max_pending_result_bytes_per_address, 16 << 20);
        assert_eq!(flags.max_pending_result_bytes_per_connection, 8 << 20);
        assert_eq!(flags.result_write_timeout, Duration::from_secs(60));
        for bad in [
            // Below one frame (8 MiB by default, or as given).
            &["--max-inbound-frame-bytes-per-address", "8388607"][..],
            &[
                "--max-frame-bytes",
                "16777216",
                "--max-inbound-frame-bytes-per-address",
                "8388608",
            ][..],
            // Above the server-wide budget.
            &["--max-inbound-frame-bytes-per-address", "1073741825"][..],
            &["--connection-receive-window-bytes", "65535"][..],
            &["--connection-receive-window-bytes", "67108865"][..],
            &["--connection-send-window-bytes", "65535"][..],
            &["--connection-send-window-bytes", "67108865"][..],
            // Result budgets below one frame, or above the next wider one.
            &["--max-pending-result-bytes", "8388607"][..],
            &["--max-pending-result-bytes-per-connection", "8388607"][..],
            &["--max-pending-result-bytes-per-address", "1073741825"][..],
            &[
                "--max-pending-result-bytes",
                "16777216",
                "--max-pending-result-bytes-per-address",
                "33554432",
            ][..],
            &["--max-pending-result-bytes-per-connection", "67108865"][..],
            &["--result-write-timeout-secs", "0"][..],
            &["--result-write-timeout-secs", "3601"][..],
        ] {
            assert!(
                matches!(limits(bad), Err(ConfigError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_fsync_is_layered_like_any_option() {
        let durable = |args: &[&str]| {
            let options = parse(args).options;
            ServerConfig::from_options(&options)
                .unwrap()
                .engine
                .committer
                .durable
        };
        assert!(durable(&[]));
        assert!(!durable(&["--no-fsync"]));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(&file, "no-fsync = true\n").unwrap();
        let path = file.to_str().unwrap();
        assert!(!durable(&["--config", path]));
        assert!(durable(&["--config", path, "--no-fsync=false"]));
        // A subcommand after the bare flag is not taken for its value.
        assert!(matches!(
            parse(&["--no-fsync", "serve"]).command,
            Some(Command::Serve)
        ));
    }

    #[test]
    fn shutdown_timeouts_are_bounded_and_pre_stop_defaults_by_mode() {
        for name in ["--drain-timeout-secs", "--pre-stop-secs"] {
            assert!(matches!(
                parse(&[name, &u64::MAX.to_string()]).options.resolve(),
                Err(ConfigError::Invalid { .. })
            ));
        }
        let config = parse(&["--drain-timeout-secs", "3600", "--pre-stop-secs", "7"])
            .options
            .resolve()
            .unwrap();
        assert_eq!(config.drain_timeout, Duration::from_secs(3600));
        assert_eq!(config.pre_stop, Duration::from_secs(7));
        assert_eq!(
            parse(&[]).options.resolve().unwrap().pre_stop,
            Duration::ZERO
        );
        let production = parse(&["--cert", "c", "--key", "k", "--workos-audience", "client_1"]);
        assert_eq!(
            production.options.resolve().unwrap().pre_stop,
            DEFAULT_PRODUCTION_PRE_STOP
        );
    }

    #[test]
    fn mint_token_subcommand_takes_global_options() {
        let cli = parse(&["mint-token", "--subject", "user_1", "--data-dir", "/tmp/x"]);
        assert_eq!(cli.options.data_dir(), PathBuf::from("/tmp/x"));
        let Some(Command::MintToken(args)) = cli.command else {
            panic!("expected mint-token");
        };
        assert_eq!(args.subject, "user_1");
    }

    #[test]
    fn matching_options_reach_the_matching_config_and_are_checked() {
        assert_eq!(
            parse(&[]).options.matching().unwrap(),
            MatchingConfig::default()
        );
        let m = parse(&[
            "--matching-shards",
            "8",
            "--matching-min-score-percent",
            "40",
            "--matching-weights",
            "interests=1,roles=0,languages=0,vector=1",
        ])
        .options
        .matching()
        .unwrap();
        assert_eq!(m.shards, 8);
        assert_eq!(m.min_score, 0.4);
        assert_eq!((m.weights.interests, m.weights.vector), (1.0, 1.0));
        for bad in [
            &["--matching-shards", "0"][..],
            &["--matching-shards", "65"][..],
            &["--matching-min-score-percent", "101"][..],
            &["--matching-weights", "interests=1"][..],
        ] {
            assert!(matches!(
                parse(bad).options.matching(),
                Err(ConfigError::Invalid { .. })
            ));
        }
    }
}
