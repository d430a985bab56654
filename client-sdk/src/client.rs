//! The SDK's entry point: `Client` connects, authenticates, calls functions and subscribes to
//! queries, and hides connection loss from its users — it reconnects with backoff, signs in
//! again (a connection whose token is rejected is dropped and tried again, never used
//! anonymously), re-subscribes, and retries in-flight calls as far as that is safe (§12).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use query_engine::error::codes;
use query_engine::protocol::{
    CallKind, CallOutcome, ClientMessage, ServerMessage, DEFAULT_MAX_FRAME_BYTES,
};
use query_engine::value::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, watch, Notify};

use crate::connection::{
    self, check_limits, encode_checked, CallFailure, Established, HandshakeParams, ServerInfo,
    Session,
};
use crate::error::ClientError;
use crate::outbox::Outbox;
use crate::subscription::{
    Subscription, SubscriptionOwner, SubscriptionTable, TransitionEffects, TypedSubscription,
};
use crate::tls::{self, Trust};
use crate::transition_parts::TransitionParts;

/// Port used when an address names none.
pub const DEFAULT_PORT: u16 = 7443;
/// Most `ping`s awaiting their `Pong` at once.
const MAX_PENDING_PINGS: usize = 16;
/// Attempts of a call that never reached the wire (stream could not be opened) before giving up.
const MAX_UNSENT_ATTEMPTS: u32 = 8;
/// Longest a mutation the server shed waits before its retry, whatever `retryAfterMs` says.
const MAX_OVERLOAD_WAIT: Duration = Duration::from_secs(5);
/// The wait when a shed mutation's error carries no usable `retryAfterMs`.
const DEFAULT_OVERLOAD_WAIT: Duration = Duration::from_millis(100);
/// A token is refreshed a quarter of its lifetime (`iat` to `exp`) before its `exp`, and at
/// most this long before.
const REFRESH_LEAD: Duration = Duration::from_secs(60);
/// Shortest time between two refreshes ahead of expiry, whatever the tokens say.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Default of `ClientOptions::max_transition_bytes`.
const DEFAULT_MAX_TRANSITION_BYTES: u64 = 256 << 20;
/// Default of `ClientOptions::token_refresh_timeout`.
const DEFAULT_TOKEN_REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// Failed refreshes in a row before the client stops asking the refresher until it has a new
/// token, a new refresher or a new expiry notice.
const MAX_REFRESH_ATTEMPTS: u32 = 5;
/// Waits between failed refreshes: 1 s doubling to 30 s, ±50 % jitter.
const REFRESH_BACKOFF: ReconnectPolicy = ReconnectPolicy {
    initial_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(30),
    max_attempts: None,
    jitter: 0.5,
};

/// The future a token refresher returns: a fresh access token, or `None` if it has none.
pub type TokenFuture = BoxFuture<'static, Option<String>>;
/// Called on every (re)connect, shortly before the current token's `exp`, when the server
/// reports the token expired, and when a call fails with `UNAUTHORIZED` (see
/// `ClientOptions::token_refresher`). Each answer is awaited at most
/// `ClientOptions::token_refresh_timeout`.
pub type TokenRefresher = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// How reconnecting backs off: `initial_delay` doubling up to `max_delay`, each delay scaled
/// by a random factor in `[1 - jitter, 1 + jitter)` (then capped at `max_delay`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReconnectPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Reconnect attempts after a connection is lost before the client gives up (then its
    /// calls and subscriptions end with `Disconnected`, or with the server's `UNAUTHORIZED` if
    /// the last attempt's token was refused); `None` retries forever. `Some(0)` never
    /// reconnects.
    pub max_attempts: Option<u32>,
    /// Between 0 and 1.
    pub jitter: f64,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
            jitter: 0.5,
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects: a lost connection ends the client.
    pub fn never() -> Self {
        Self {
            max_attempts: Some(0),
            ..Self::default()
        }
    }

    /// The delay before reconnect attempt `attempt` (0-based); `unit` is uniform in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let doubled = self
            .initial_delay
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
        let base = doubled.min(self.max_delay);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(factor.max(0.0)).min(self.max_delay)
    }
}

/// Settings of a `Client`.
#[derive(Clone)]
pub struct ClientOptions {
    /// Name the certificate is checked against and sent as SNI; defaults to the host part of
    /// the address (ignored by `Trust::PinnedSha256`).
    pub server_name: Option<String>,
    pub trust: Trust,
    /// The access token to authenticate with; `None` stays anonymous.
    pub token: Option<String>,
    /// Supplies fresh tokens; when set, it is asked on every connect and reconnect (its
    /// `None`, or no answer within `token_refresh_timeout`, falls back to `token`), when a
    /// call fails with `UNAUTHORIZED` (the call then runs once more: a query or a mutation
    /// after any such failure, an action only when the server refused it for an expired
    /// token, before running it), and to keep the connection signed in: shortly before the
    /// current token's `exp` (read from the JWT, unverified; a quarter of its lifetime
    /// before, at most 60 s) and when the server reports the token expired, after which the
    /// live connection authenticates with the new token. A refresh that fails (no token,
    /// none within `token_refresh_timeout`, a token the server rejects) is tried again with
    /// backoff, at most 5 times in a row. A reconnect whose token the server rejects is
    /// dropped and tried again per `reconnect`, asking the refresher again each time: the
    /// client does not go on anonymous. A subscription that failed only because the token
    /// lapsed waits for the next token accepted and is subscribed again (protocol §11).
    pub token_refresher: Option<TokenRefresher>,
    /// Longest wait for one answer of the token refresher; a refresher that has not answered
    /// by then counts as having no token, so a hanging one cannot stall a reconnect.
    pub token_refresh_timeout: Duration,
    pub reconnect: ReconnectPolicy,
    /// Sent in `Connect`, for the server's logs.
    pub client_name: String,
    /// Largest frame accepted (the server's announced limit applies if lower).
    pub max_frame_bytes: u32,
    /// Most bytes (of frames) of one transition sent in parts (protocol §8) held until its
    /// last part arrives; a server that sends more has broken the protocol, and the
    /// connection is dropped and made again. Also never more than the server's
    /// `maxSubscriptions` frames, which a correct server cannot exceed. Raise it if the
    /// results of all the subscriptions of a client can together exceed it: a transition
    /// over it (a first one after a reconnect, say, with every result in full) would be
    /// refused on every connection.
    pub max_transition_bytes: u64,
    /// QUIC keep-alive interval: keeps idle connections (and NAT bindings) open.
    pub keep_alive: Duration,
    /// A connection with no packet from the server for this long is dead.
    pub idle_timeout: Duration,
    /// Bounds one handshake, how long a call or `set_auth` waits for a connection (then it
    /// fails with `Disconnected`, or with the server's `UNAUTHORIZED` if the last attempt's
    /// token was rejected), and how long `set_auth` waits for the server's answer (without
    /// one, the connection is dropped and `set_auth` fails with `Disconnected`; the next
    /// connection signs in with the token).
    pub connect_timeout: Duration,
    /// Retries of a query whose connection was lost.
    pub max_query_retries: u32,
    /// Retries of a mutation the server shed as overloaded (`ClientError::is_overloaded`:
    /// nothing was applied), each under the same mutation id after the error's
    /// `retryAfterMs` plus up to 50 % jitter (at most 5 s). 0 returns the error at once.
    pub max_overload_retries: u32,
    /// A QUIC endpoint (one UDP socket and its driver task) to share with other clients;
    /// `None` binds one for this client. Many clients in one process (load generators,
    /// servers fanning out) share a few endpoints instead of holding a socket each.
    pub endpoint: Option<quinn::Endpoint>,
}

impl ClientOptions {
    pub fn new(trust: Trust) -> Self {
        Self {
            server_name: None,
            trust,
            token: None,
            token_refresher: None,
            token_refresh_timeout: DEFAULT_TOKEN_REFRESH_TIMEOUT,
            reconnect: ReconnectPolicy::default(),
            client_name: format!("linkedup-rust/{}", env!("CARGO_PKG_VERSION")),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_transition_bytes: DEFAULT_MAX_TRANSITION_BYTES,
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_query_retries: 3,
            max_overload_retries: 3,
            endpoint: None,
        }
    }

    /// Connects through `endpoint` (see `shared_endpoint`) instead of binding a socket.
    pub fn with_endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn with_token_refresher(mut self, refresher: TokenRefresher) -> Self {
        self.token_refresher = Some(refresher);
        self
    }

    pub fn with_token_refresh_timeout(mut self, timeout: Duration) -> Self {
        self.token_refresh_timeout = timeout;
        self
    }

    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    pub fn with_client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_refresher", &self.token_refresher.is_some())
            .field("token_refresh_timeout", &self.token_refresh_timeout)
            .field("reconnect", &self.reconnect)
            .field("client_name", &self.client_name)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_transition_bytes", &self.max_transition_bytes)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_query_retries", &self.max_query_retries)
            .field("max_overload_retries", &self.max_overload_retries)
            .field("shared_endpoint", &self.endpoint.is_some())
            .finish()
    }
}

/// A successful call's result and timestamp (commit timestamp of a mutation, snapshot of a
/// query; see protocol §6.3).
#[derive(Clone, Debug, PartialEq)]
pub struct CallReply {
    pub value: Value,
    pub ts: u64,
}

/// A connection to a server, shared by clones. Dropping the last clone closes it and ends its
/// subscriptions.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _lifetime: Arc<Lifetime>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("server_name", &self.inner.server_name)
            .finish_non_exhaustive()
    }
}

/// Shuts the client down when the last `Client` clone goes (subscriptions and the supervisor
/// hold `Inner`, not this).
struct Lifetime {
    inner: Arc<Inner>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        self.inner.shutdown(None);
    }
}

/// Where the client's connection stands, for callers waiting on it.
#[derive(Clone)]
enum Link {
    /// No connection yet. `refused`: the server rejected the token the last attempt signed
    /// in with, what callers that give up waiting report, so that the application learns it
    /// must supply a token (`set_auth`) or sign out.
    Connecting {
        refused: Option<ClientError>,
    },
    Up(Arc<Session>),
    Down(ClientError),
}

struct Inner {
    opts: ClientOptions,
    quic_config: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    state: Mutex<State>,
    link: watch::Sender<Link>,
    shutdown: watch::Sender<bool>,
    /// Serialises `Authenticate`s so that answers match requests.
    auth_lock: tokio::sync::Mutex<()>,
    /// Wakes the token keeper (`keep_token_fresh`): the token or refresher changed, or the
    /// server reported the token expired.
    auth_wake: Notify,
    next_request_id: AtomicU64,
    next_nonce: AtomicU64,
}

struct State {
    token: Option<String>,
    /// Incremented whenever `token` is set.
    token_version: u64,
    /// Incremented whenever the application changes the sign-in state (`set_auth`,
    /// `set_token_refresher`): a token refresher's answer to a request made before is
    /// discarded, so that a refresh under way cannot undo a sign-out.
    auth_epoch: u64,
    /// `set_auth` stored `token` and no connection has signed in with it yet: the next
    /// handshake uses it rather than asking the refresher.
    token_unsent: bool,
    /// The server dropped the identity because its token expired (§11), and no refresh has
    /// been attempted since.
    expiry_notice: bool,
    /// Where the current connection stands after its token lapsed: when subscriptions that
    /// failed for it are subscribed again.
    lapse: Lapse,
    /// The `token_version` the token keeper gave up refreshing (`keep_token_fresh`): until the
    /// token changes or another expiry notice comes, no fresh token will come by itself.
    refresh_gave_up_on: Option<u64>,
    refresher: Option<TokenRefresher>,
    subs: SubscriptionTable,
    /// The current connection, if up.
    session: Option<Arc<Session>>,
    /// Generation of the newest connection.
    gen: u64,
    /// Control messages for the current connection's writer. Bounded however long the stream
    /// is blocked: per live subscription a `Subscribe` and an `Unsubscribe` (of an id already
    /// sent), per subscription dropped after its `Subscribe` went to the writer an
    /// `Unsubscribe` (`Outbox`), one `Authenticate` (serialised by `auth_lock`), at most
    /// `MAX_PENDING_PINGS` pings.
    outbox: Outbox,
    /// Senders waiting for the answer to an `Authenticate` on the current connection.
    auth_waiters: VecDeque<oneshot::Sender<Result<Option<String>, ClientError>>>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    /// Highest transition `endTs` or call `ts` seen, sent as `lastSeenTs` on reconnect.
    last_seen_ts: Option<u64>,
    /// The subject the server last confirmed (`None`: anonymous).
    subject: Option<String>,
    closed: Option<ClientError>,
}

/// The current connection's token lapse (§11), as far as the subscriptions that failed for it
/// care. The server marks such a failure (`tokenExpired`) from the moment it drops the identity
/// until it reads the next `Authenticate`, and its expiry notice and its `AuthOk`s come in that
/// order; but a transition carrying the failure may come before the notice or after the
/// `AuthOk` (they travel apart). So a marked failure before any notice waits for the notice and
/// then an `AuthOk`, and one after an `AuthOk` that followed the notice is subscribed again at
/// once (a later lapse's failure taken so waits for that lapse's notice on its next try).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lapse {
    /// No expiry notice on this connection.
    None,
    /// The server dropped the identity; no `Authenticate` was answered since.
    Noticed,
    /// An `Authenticate` was answered with `AuthOk` after the notice: the server runs new
    /// subscriptions under that identity.
    Renewed,
}

/// What became of a token `Inner::sign_in` was given.
enum SignIn {
    /// The server verified it: the subject (`None`: anonymous).
    Verified(Option<String>),
    /// A refresher's answer, dropped unused: the application changed the sign-in state while
    /// the refresher was asked.
    Discarded,
}

impl SignIn {
    /// The subject, or for a discarded token the `UNAUTHORIZED` saying so.
    fn subject(self) -> Result<Option<String>, ClientError> {
        match self {
            SignIn::Verified(subject) => Ok(subject),
            SignIn::Discarded => Err(unauthorized(
                "the sign-in state changed while the token refresher was asked; its token was discarded"
                    .into(),
            )),
        }
    }
}

impl State {
    /// After a transition parked subscriptions that failed for a lapsed token, an `AuthOk`,
    /// an expiry notice, or a change of the refresher or of the token keeper's hopes:
    /// subscribes them again once the connection has authenticated after the notice, ends
    /// them when no fresh token will come (no refresher, or the token keeper gave up after the
    /// notice: one that gave up before it tries afresh on it), and otherwise lets them wait.
    /// Returns readers to wake.
    fn settle_parked(&mut self) -> Vec<std::task::Waker> {
        if !self.subs.has_parked() {
            return Vec::new();
        }
        if self.refresher.is_none() {
            return self.subs.end_parked();
        }
        match self.lapse {
            Lapse::None => {}
            Lapse::Noticed => {
                if self.refresh_gave_up_on == Some(self.token_version) {
                    return self.subs.end_parked();
                }
            }
            Lapse::Renewed => {
                for msg in self.subs.resume_parked() {
                    self.push(msg);
                }
            }
        }
        Vec::new()
    }

    /// The token refresher, if any, with the `auth_epoch` a request made now is asked at.
    fn refresher_now(&self) -> Option<(TokenRefresher, u64)> {
        self.refresher
            .clone()
            .map(|refresher| (refresher, self.auth_epoch))
    }

    /// Keeps `token` for reconnects; the caller wakes the token keeper (`Inner::auth_wake`) to
    /// reschedule.
    fn keep_token(&mut self, token: Option<String>) {
        self.token = token;
        self.token_version += 1;
    }

    fn note_ts(&mut self, ts: u64) {
        self.last_seen_ts = Some(self.last_seen_ts.map_or(ts, |seen| seen.max(ts)));
    }

    fn push(&mut self, msg: ClientMessage) {
        if let Some(session) = &self.session {
            self.outbox.push(msg);
            session.outbox_ready.notify_one();
        }
    }
}

impl Client {
    /// Connects to `addr` (`host:port`, optionally prefixed `quic://`; port 7443 if absent),
    /// completes the handshake and authenticates. Fails if this first connection cannot be
    /// made; later losses are handled by reconnecting per `options.reconnect`.
    pub async fn connect(addr: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let (host, port) = parse_address(addr)?;
        let socket_addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| ClientError::InvalidAddress(format!("{addr}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::InvalidAddress(addr.to_string()))?;
        let server_name = options.server_name.clone().unwrap_or_else(|| host.clone());
        let quic_config =
            tls::quic_client_config(&options.trust, options.keep_alive, options.idle_timeout)?;
        let endpoint = match &options.endpoint {
            Some(shared) => shared.clone(),
            None => shared_endpoint(socket_addr)?,
        };
        let (link, _) = watch::channel(Link::Connecting { refused: None });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                token: options.token.clone(),
                token_version: 0,
                auth_epoch: 0,
                token_unsent: false,
                expiry_notice: false,
                lapse: Lapse::None,
                refresh_gave_up_on: None,
                refresher: options.token_refresher.clone(),
                subs: SubscriptionTable::new(),
                session: None,
                gen: 0,
                outbox: Outbox::default(),
                auth_waiters: VecDeque::new(),
                pings: HashMap::new(),
                last_seen_ts: None,
                subject: None,
                closed: None,
            }),
            opts: options,
            quic_config,
            endpoint,
            addr: socket_addr,
            server_name,
            link,
            shutdown,
            auth_lock: tokio::sync::Mutex::new(()),
            auth_wake: Notify::new(),
            next_request_id: AtomicU64::new(1),
            next_nonce: AtomicU64::new(1),
        });
        let established = inner.establish().await?;
        tokio::spawn(supervise(inner.clone(), established, shutdown_rx));
        // The supervisor installs the session; wait for it so calls can start at once.
        inner.wait_session(0).await?;
        tokio::spawn(keep_token_fresh(inner.clone(), inner.shutdown.subscribe()));
        Ok(Client {
            _lifetime: Arc::new(Lifetime {
                inner: inner.clone(),
            }),
            inner,
        })
    }

    /// Runs a query and decodes its result.
    pub async fn query<A, R>(&self, name: &str, args: &A) -> Result<R, ClientError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let reply = self
            .call(CallKind::Query, name, to_args(args)?, None)
            .await?;
        decode(&reply.value)
    }

    /// Runs a mutation under a fresh mutation id and decodes its result. If the connection
    /// drops before the answer, it is retried once with the same id after reconnecting, so it
    /// is applied at most once; `ClientError::MutationUnconfirmed` reports the rare case where
    /// the retry got no answer that tells whether it was (see `call`). A mutation the server
    /// sheds under load is retried as `ClientOptions::max_overload_retries` says.
    pub async fn mutation<A, R>(&self, name: &str, args: &A) -> Result<R, ClientError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let reply = self
            .mutation_with_id(name, to_args(args)?, &new_mutation_id())
            .await?;
        decode(&reply.value)
    }

    /// A mutation under a caller-chosen id (≤ 128 bytes), e.g. to retry one that came back
    /// `MutationUnconfirmed`: the server runs each id at most once per identity. Retried like
    /// `mutation` when the server sheds it; `call` sends it exactly as asked.
    pub async fn mutation_with_id(
        &self,
        name: &str,
        args: Value,
        mutation_id: &str,
    ) -> Result<CallReply, ClientError> {
        let mut retries = 0;
        loop {
            let attempt = self
                .call(
                    CallKind::Mutation,
                    name,
                    args.clone(),
                    Some(mutation_id.to_string()),
                )
                .await;
            match attempt {
                Err(e) if e.is_overloaded() && retries < self.inner.opts.max_overload_retries => {
                    retries += 1;
                    let wait = overload_wait(&e, rand::random());
                    tracing::debug!(
                        name,
                        retries,
                        ?wait,
                        "mutation shed as overloaded; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Runs an action and decodes its result. An action that may have run is never retried:
    /// if the connection drops while one runs, this returns `ClientError::Disconnected`, and
    /// its own `UNAUTHORIZED` is returned as is (it may have had effects before it). Only one
    /// the server refused for an expired token, before running it, is sent again once (after
    /// a token refresh, with a refresher configured).
    pub async fn action<A, R>(&self, name: &str, args: &A) -> Result<R, ClientError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let reply = self
            .call(CallKind::Action, name, to_args(args)?, None)
            .await?;
        decode(&reply.value)
    }

    /// Calls a function of any kind with a raw value, returning the value and its timestamp.
    /// Mutations should pass a `mutation_id` (see `new_mutation_id`): only then can one be
    /// retried safely. A call is sent again only where that cannot apply it twice (protocol
    /// §12): a call never written is sent on the next connection; once it may have reached the
    /// server, a query is retried (`max_query_retries`) and a mutation with an id once, under
    /// that id, while a mutation without an id and an action fail with `Disconnected`: they may
    /// or may not have run. That retry's answer is returned unless it says nothing of the
    /// first attempt — it is lost too, or refused before the server looked the id up (shed as
    /// overloaded, a token expired and not refreshed), or it cannot be sent: then the result
    /// is `MutationUnconfirmed`, never an error that reads as "not applied". After `UNAUTHORIZED`,
    /// with a token refresher, a call runs once more under a fresh token if its first run had
    /// no effect: a query or a mutation (a failed mutation wrote nothing) after any such
    /// answer, an action only when the server refused it for an expired token before running
    /// it (`ClientError::is_token_expired`). Each retry after a loss waits the `reconnect`
    /// policy's delay, growing with each loss; a call lost because the server is shutting the
    /// connection down (it finished or stopped a call stream) waits for the next connection.
    /// A shed mutation is not retried here. A call over
    /// a fixed limit of protocol §10 (function name, mutation id, argument nesting) is refused
    /// before it is sent: a `VALIDATION_ERROR` naming the field in `data.path`.
    pub async fn call(
        &self,
        kind: CallKind,
        name: &str,
        args: Value,
        mutation_id: Option<String>,
    ) -> Result<CallReply, ClientError> {
        self.inner.call(kind, name, args, mutation_id).await
    }

    /// Subscribes to a query. The stream's first item is the current result. A subscription
    /// over a limit of protocol §10 is refused at once, as `call` refuses a call.
    pub fn subscribe<A: Serialize + ?Sized>(
        &self,
        name: &str,
        args: &A,
    ) -> Result<Subscription, ClientError> {
        let args = to_args(args)?;
        self.inner.subscribe(name, args)
    }

    /// `subscribe`, with results decoded into `R`.
    pub fn subscribe_typed<A, R>(
        &self,
        name: &str,
        args: &A,
    ) -> Result<TypedSubscription<R>, ClientError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        Ok(self.subscribe(name, args)?.typed())
    }

    /// Authenticates with `token` (or, with `None`, signs out) on the live connection without
    /// touching subscriptions, which the server re-runs under the new identity. Returns the
    /// subject the server verified. The token is kept for reconnects. Without a connection
    /// (say while reconnects are refused for a rejected token), the next connection signs in
    /// with it, rather than with the refresher's answer, and this waits for that connection;
    /// `None` lets it connect anonymously. A token over the protocol's limit is refused
    /// before it is sent or kept (`VALIDATION_ERROR`, `data.path` `"token"`), and the
    /// identity stays as it was. A rejected token leaves the live connection anonymous and
    /// returns the `UNAUTHORIZED` error; a connection made later with it is refused. A token
    /// refresh under way when this is called (the token keeper's, a reconnect's, a call's or
    /// `refresh_auth`'s) is void: its token is discarded, so it cannot undo a sign-out.
    pub async fn set_auth(&self, token: Option<String>) -> Result<Option<String>, ClientError> {
        self.inner.sign_in(token, None).await?.subject()
    }

    /// Replaces (or with `None` removes) the token refresher. To sign out for good, remove the
    /// refresher and then `set_auth(None)`. Without a refresher, subscriptions waiting for a
    /// fresh token after theirs lapsed end with the `UNAUTHORIZED`. A refresh under way is
    /// void, as after `set_auth`: the old refresher's answer is discarded.
    pub fn set_token_refresher(&self, refresher: Option<TokenRefresher>) {
        let wakers = {
            let mut st = self.inner.state.lock();
            st.refresher = refresher;
            // A refresh asked of the previous refresher is void.
            st.auth_epoch += 1;
            st.settle_parked()
        };
        for w in wakers {
            w.wake();
        }
        self.inner.auth_wake.notify_one();
    }

    /// Asks the token refresher for a new token and authenticates with it. If the application
    /// changes the sign-in state (`set_auth`, `set_token_refresher`) while the refresher is
    /// asked, its token is discarded and this fails with `UNAUTHORIZED`.
    pub async fn refresh_auth(&self) -> Result<Option<String>, ClientError> {
        self.inner.refresh_auth().await
    }

    /// Round trip of an application-level `Ping` on the control stream.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.inner.ping().await
    }

    /// What the server announced on the current connection, if connected.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.inner
            .state
            .lock()
            .session
            .as_ref()
            .map(|s| s.info.clone())
    }

    /// The subject of the identity the server last confirmed (`None`: anonymous, also after a
    /// rejected token, on the live connection or on a reconnect, or once the server dropped an
    /// expired token's identity).
    pub fn subject(&self) -> Option<String> {
        self.inner.state.lock().subject.clone()
    }

    /// Whether calls can go out now: false while reconnecting (also while reconnects are
    /// refused for a rejected token) and while the server is shutting the connection down.
    pub fn is_connected(&self) -> bool {
        self.inner
            .state
            .lock()
            .session
            .as_ref()
            .is_some_and(|s| s.is_live())
    }

    /// Highest timestamp this client has observed (transition `endTs` or call `ts`).
    pub fn last_seen_ts(&self) -> Option<u64> {
        self.inner.state.lock().last_seen_ts
    }

    /// How many connections this client has made (1 until the first reconnect).
    pub fn connection_count(&self) -> u64 {
        self.inner.state.lock().gen
    }

    /// Drops the current connection as a network failure would; the client reconnects per its
    /// policy (useful after a network change, and to test recovery).
    pub fn force_reconnect(&self) {
        if let Some(session) = self.inner.state.lock().session.clone() {
            session.conn.close(0u8.into(), b"client reconnecting");
        }
    }

    /// Closes the connection and ends every subscription; pending calls fail with `Closed`.
    pub async fn close(&self) {
        let conn = self
            .inner
            .state
            .lock()
            .session
            .as_ref()
            .map(|s| s.conn.clone());
        self.inner.shutdown(None);
        let closing = async {
            match (&self.inner.opts.endpoint, conn) {
                // Other clients' connections keep a shared endpoint busy: wait for ours only.
                (Some(_), Some(conn)) => {
                    conn.closed().await;
                }
                (Some(_), None) => {}
                (None, _) => self.inner.endpoint.wait_idle().await,
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
    }
}

/// A client QUIC endpoint (one UDP socket and its driver task) suited to reaching `server`:
/// bound to loopback for a loopback server, to the unspecified address otherwise. Pass it to
/// several clients with `ClientOptions::with_endpoint` to share it.
pub fn shared_endpoint(server: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(ip) if ip.is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let err = |e: std::io::Error| ClientError::Connect(format!("binding a UDP socket: {e}"));
    // Large socket buffers, as the server's: a burst of transitions must not be dropped.
    let udp = query_engine::protocol::udp::bind_udp(bind).map_err(err)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp.socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
    .map_err(err)
}

/// A fresh 128-bit random mutation id, as 32 hex digits.
pub fn new_mutation_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn to_args<A: Serialize + ?Sized>(args: &A) -> Result<Value, ClientError> {
    query_engine::json::to_value(args).map_err(|e| ClientError::Encode(e.to_string()))
}

/// How long to wait before retrying a shed mutation: the server's `retryAfterMs` (or
/// `DEFAULT_OVERLOAD_WAIT`), stretched by up to half again by `jitter` in [0, 1) so that
/// callers shed together do not return together, and capped at `MAX_OVERLOAD_WAIT`.
fn overload_wait(e: &ClientError, jitter: f64) -> Duration {
    e.retry_after()
        .unwrap_or(DEFAULT_OVERLOAD_WAIT)
        .mul_f64(1.0 + 0.5 * jitter.clamp(0.0, 1.0))
        .min(MAX_OVERLOAD_WAIT)
}

fn decode<R: DeserializeOwned>(value: &Value) -> Result<R, ClientError> {
    query_engine::json::from_value(value).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Splits `[quic://]host[:port]` (IPv6 hosts in brackets).
fn parse_address(addr: &str) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::InvalidAddress(addr.to_string());
    let rest = addr
        .trim()
        .trim_start_matches("quic://")
        .trim_start_matches("linkedup://")
        .trim_end_matches('/');
    if rest.is_empty() {
        return Err(bad());
    }
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => DEFAULT_PORT,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            if host.is_empty() {
                return Err(bad());
            }
            Ok((host.to_string(), port.parse().map_err(|_| bad())?))
        }
        Some(_) => Ok((rest.to_string(), DEFAULT_PORT)), // bare IPv6
        None => Ok((rest.to_string(), DEFAULT_PORT)),
    }
}

impl Inner {
    /// Connects and shakes hands with the current token: the one `set_auth` stored while there
    /// was no connection, else fresh from the refresher if any, else the one held. A token the
    /// server rejects fails the attempt (`UNAUTHORIZED`).
    async fn establish(&self) -> Result<Established, ClientError> {
        let (token, unsent) = self.handshake_token().await;
        let last_seen_ts = self.state.lock().last_seen_ts;
        let result = connection::handshake(HandshakeParams {
            endpoint: &self.endpoint,
            config: &self.quic_config,
            addr: self.addr,
            server_name: &self.server_name,
            client_name: &self.opts.client_name,
            last_seen_ts,
            token,
            max_frame_bytes: self.opts.max_frame_bytes,
            timeout: self.opts.connect_timeout,
        })
        .await;
        let answered = result
            .as_ref()
            .map_or_else(ClientError::is_unauthorized, |_| true);
        if let Some(version) = unsent.filter(|_| answered) {
            let mut st = self.state.lock();
            // Unless `set_auth` stored another token meanwhile.
            if st.token_version == version {
                st.token_unsent = false;
            }
        }
        result
    }

    /// The token a handshake signs in with, and the `token_version` of one `set_auth` stored
    /// unsent: that one, else fresh from the refresher if any, else the one held. The
    /// refresher's answer counts only if the application left the sign-in state alone while
    /// it was asked; otherwise (a sign-out, say) it is discarded and the choice made afresh.
    async fn handshake_token(&self) -> (Option<String>, Option<u64>) {
        loop {
            let (refresh, asked_at) = {
                let st = self.state.lock();
                match st.refresher_now() {
                    Some(refresher) if !st.token_unsent => refresher,
                    _ => {
                        return (
                            st.token.clone(),
                            st.token_unsent.then_some(st.token_version),
                        )
                    }
                }
            };
            let answer = ask_refresher(&refresh, self.opts.token_refresh_timeout).await;
            let mut st = self.state.lock();
            if st.auth_epoch != asked_at {
                continue;
            }
            match answer {
                Ok(fresh) => {
                    st.keep_token(Some(fresh.clone()));
                    drop(st);
                    self.auth_wake.notify_one();
                    return (Some(fresh), None);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no fresh token; connecting with the one held");
                    return (st.token.clone(), None);
                }
            }
        }
    }

    /// Makes `est` the current connection: every live subscription is sent again, and the
    /// control-stream writer starts. Returns the session and the control stream's read half.
    fn install(self: &Arc<Self>, est: Established) -> (Arc<Session>, quinn::RecvStream) {
        let Established {
            conn,
            send,
            recv,
            info,
            max_frame_bytes,
            subject,
            transition_ts,
        } = est;
        let session = {
            let mut st = self.state.lock();
            st.gen += 1;
            let session = Arc::new(Session::new(st.gen, conn, info, max_frame_bytes));
            st.subject = subject;
            st.lapse = Lapse::None;
            if transition_ts > 0 {
                st.note_ts(transition_ts);
            }
            st.outbox.clear();
            let resubscribe = st.subs.begin_connection(session.gen, transition_ts);
            st.outbox.extend(resubscribe);
            st.session = Some(session.clone());
            session
        };
        let writer = tokio::spawn(run_writer(self.clone(), session.clone(), send));
        *session.writer.lock() = Some(writer);
        session.outbox_ready.notify_one();
        self.link.send_replace(Link::Up(session.clone()));
        tracing::debug!(session_id = %session.info.session_id, gen = session.gen, "connected");
        (session, recv)
    }

    /// The connection `session` is gone: fail what waited on it and stop its writer.
    fn teardown(&self, session: &Session, reason: &ClientError) {
        tracing::debug!(gen = session.gen, error = %reason, "connection lost");
        session.conn.close(0u8.into(), b"");
        if let Some(writer) = session.writer.lock().take() {
            writer.abort();
        }
        let mut st = self.state.lock();
        if st.gen == session.gen {
            st.session = None;
            st.outbox.clear();
            for waiter in st.auth_waiters.drain(..) {
                let _ = waiter.send(Err(ClientError::Disconnected));
            }
            st.pings.clear();
            if st.closed.is_none() {
                self.link.send_replace(Link::Connecting { refused: None });
            }
        }
    }

    /// Ends the client: `error` is what subscriptions and waiting calls see (`None`: a
    /// deliberate close, streams just end).
    fn shutdown(&self, error: Option<ClientError>) {
        let wakers = {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(error.clone().unwrap_or(ClientError::Closed));
            if let Some(session) = st.session.take() {
                session.conn.close(0u8.into(), b"client closed");
                if let Some(writer) = session.writer.lock().take() {
                    writer.abort();
                }
            }
            st.outbox.clear();
            for waiter in st.auth_waiters.drain(..) {
                let _ = waiter.send(Err(ClientError::Closed));
            }
            st.pings.clear();
            st.subs.end_all(error.clone())
        };
        for w in wakers {
            w.wake();
        }
        self.link
            .send_replace(Link::Down(error.unwrap_or(ClientError::Closed)));
        self.shutdown.send_replace(true);
    }

    /// Waits (up to `connect_timeout`) for a live connection of generation ≥ `min_gen`.
    async fn wait_session(&self, min_gen: u64) -> Result<Arc<Session>, ClientError> {
        // Fast path for every call on a live connection: no watch receiver, no timer.
        if let Link::Up(s) = &*self.link.borrow() {
            if s.gen >= min_gen && s.is_live() {
                return Ok(s.clone());
            }
        }
        let mut rx = self.link.subscribe();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    Link::Up(s) if s.gen >= min_gen && s.is_live() => return Ok(s.clone()),
                    Link::Down(e) => return Err(e.clone()),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        match tokio::time::timeout(self.opts.connect_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(match &*self.link.borrow() {
                Link::Connecting {
                    refused: Some(refusal),
                } => refusal.clone(),
                _ => ClientError::Disconnected,
            }),
        }
    }

    async fn call(
        self: &Arc<Self>,
        kind: CallKind,
        name: &str,
        args: Value,
        mutation_id: Option<String>,
    ) -> Result<CallReply, ClientError> {
        let mut min_gen = 0;
        let mut lost_after_send = 0u32;
        let mut unsent = 0u32;
        let mut reauthenticated = false;
        // Built once: every attempt sends the same call under a fresh request id.
        let mut msg = ClientMessage::Call {
            request_id: 0,
            kind,
            function: name.to_string(),
            args,
            mutation_id: mutation_id.clone(),
        };
        check_limits(&msg)?;
        loop {
            let session = match self.wait_session(min_gen).await {
                Ok(s) => s,
                Err(e) => return Err(unanswered(kind, lost_after_send, &mutation_id, e)),
            };
            let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            if let ClientMessage::Call { request_id: id, .. } = &mut msg {
                *id = request_id;
            }
            match session.call(&msg, request_id).await {
                Ok(CallOutcome::Ok { value, ts }) => {
                    self.state.lock().note_ts(ts);
                    return Ok(CallReply { value, ts });
                }
                Ok(CallOutcome::Err(payload)) => {
                    let error = ClientError::function(payload);
                    // An expired token or an anonymous connection: refresh the token once
                    // and run the call again, where that cannot repeat an effect.
                    if reruns_after_unauthorized(kind, &error)
                        && !reauthenticated
                        && self.has_refresher()
                    {
                        reauthenticated = true;
                        match self.refresh_auth().await {
                            Ok(_) => continue,
                            Err(e) => tracing::debug!(error = %e, "token refresh failed"),
                        }
                    }
                    if refused_before_dedup(&error) {
                        return Err(unanswered(kind, lost_after_send, &mutation_id, error));
                    }
                    return Err(error);
                }
                // Refused before it was sent: no answer to an earlier attempt either.
                Err(CallFailure::Fatal(e)) => {
                    return Err(unanswered(kind, lost_after_send, &mutation_id, e))
                }
                Err(CallFailure::Lost { sent }) => {
                    // Retry on a new connection unless this one still takes calls (only the
                    // stream failed), after a backoff so that losses in a row cannot spin.
                    min_gen = if session.is_live() {
                        session.gen
                    } else {
                        session.gen + 1
                    };
                    let losses = unsent + lost_after_send;
                    if !sent {
                        unsent += 1;
                        if unsent >= MAX_UNSENT_ATTEMPTS {
                            return Err(unanswered(
                                kind,
                                lost_after_send,
                                &mutation_id,
                                ClientError::Disconnected,
                            ));
                        }
                    } else {
                        let allowed = retries_after_loss(
                            kind,
                            mutation_id.is_some(),
                            self.opts.max_query_retries,
                        );
                        if lost_after_send >= allowed {
                            return Err(unanswered(
                                kind,
                                lost_after_send + 1,
                                &mutation_id,
                                ClientError::Disconnected,
                            ));
                        }
                        lost_after_send += 1;
                    }
                    let backoff = self.opts.reconnect.delay(losses, rand::random::<f64>());
                    tracing::debug!(
                        function = name,
                        ?kind,
                        sent,
                        ?backoff,
                        "connection lost during call; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    fn subscribe(self: &Arc<Self>, name: &str, args: Value) -> Result<Subscription, ClientError> {
        let mut st = self.state.lock();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        let limit = self.frame_limit_of(&st);
        let (key, slot, msg) = st.subs.insert(name.to_string(), args);
        if let Err(e) = encode_checked(&msg, limit) {
            st.subs.remove(key);
            return Err(e);
        }
        st.push(msg);
        drop(st);
        let owner: Arc<dyn SubscriptionOwner> = self.clone();
        Ok(Subscription::new(key, name.to_string(), slot, owner))
    }

    /// The frame limit of the current connection, or the client's own when there is none.
    fn frame_limit_of(&self, st: &State) -> u32 {
        st.session
            .as_ref()
            .map_or(self.opts.max_frame_bytes, |s| s.max_frame_bytes)
    }

    fn frame_limit(&self) -> u32 {
        self.frame_limit_of(&self.state.lock())
    }

    fn has_refresher(&self) -> bool {
        self.state.lock().refresher.is_some()
    }

    async fn refresh_auth(self: &Arc<Self>) -> Result<Option<String>, ClientError> {
        let refresher = self.state.lock().refresher_now();
        let Some((refresh, asked_at)) = refresher else {
            return Err(unauthorized("no token refresher is configured".into()));
        };
        let token = ask_refresher(&refresh, self.opts.token_refresh_timeout).await?;
        self.sign_in(Some(token), Some(asked_at)).await?.subject()
    }

    /// Authenticates with `token` on the live connection (without one, the next connection
    /// signs in with it) and keeps it for reconnects. `asked_at`: the token is a refresher's
    /// answer to a request made at that `auth_epoch`, taken only if the application has not
    /// changed the sign-in state since (else `SignIn::Discarded`); `None`: the application's
    /// own, which voids every refresher's answer still to come.
    async fn sign_in(
        self: &Arc<Self>,
        token: Option<String>,
        asked_at: Option<u64>,
    ) -> Result<SignIn, ClientError> {
        // A token the server would refuse fatally, or that does not fit in a frame, is neither
        // sent nor kept for reconnects.
        let authenticate = ClientMessage::Authenticate {
            token: token.clone(),
        };
        encode_checked(&authenticate, self.frame_limit())?;
        if asked_at.is_none() {
            self.state.lock().auth_epoch += 1;
        }
        let _serial = self.auth_lock.lock().await;
        {
            let mut st = self.state.lock();
            if asked_at.is_some_and(|epoch| epoch != st.auth_epoch) {
                return Ok(SignIn::Discarded);
            }
            st.keep_token(token);
            // Until a connection takes it, the next handshake signs in with it.
            st.token_unsent = true;
        }
        self.auth_wake.notify_one();
        let session = self.wait_session(0).await?;
        let answer = {
            let mut st = self.state.lock();
            if st.session.as_ref().map(|s| s.gen) != Some(session.gen) {
                // Reconnected meanwhile: that handshake already used the new token.
                return Ok(SignIn::Verified(st.subject.clone()));
            }
            let (tx, rx) = oneshot::channel();
            st.auth_waiters.push_back(tx);
            st.push(authenticate);
            st.token_unsent = false;
            rx
        };
        let result = match tokio::time::timeout(self.opts.connect_timeout, answer).await {
            Ok(answer) => answer.map_err(|_| ClientError::Disconnected)?,
            Err(_) => {
                // The server answers every Authenticate, in order (§5.2); without this answer
                // the next ones cannot be matched. The next connection's handshake signs in
                // with the token.
                tracing::warn!(
                    gen = session.gen,
                    "no answer to Authenticate; dropping the connection"
                );
                session.conn.close(0u8.into(), b"no answer to Authenticate");
                return Err(ClientError::Disconnected);
            }
        };
        let mut st = self.state.lock();
        // A newer connection's handshake has set the subject already.
        if st.gen == session.gen {
            match &result {
                Ok(subject) => st.subject = subject.clone(),
                Err(_) => st.subject = None,
            }
        }
        result.map(SignIn::Verified)
    }

    async fn ping(&self) -> Result<Duration, ClientError> {
        let session = self.wait_session(0).await?;
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let pong = {
            let mut st = self.state.lock();
            if st.session.as_ref().map(|s| s.gen) != Some(session.gen) {
                return Err(ClientError::Disconnected);
            }
            if st.pings.len() >= MAX_PENDING_PINGS {
                return Err(ClientError::Function {
                    code: codes::RATE_LIMITED.into(),
                    message: format!("{MAX_PENDING_PINGS} pings already pending"),
                    data: Value::Null,
                });
            }
            let (tx, rx) = oneshot::channel();
            st.pings.insert(nonce, tx);
            st.push(ClientMessage::Ping { nonce });
            rx
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(self.opts.connect_timeout, pong).await;
        self.state.lock().pings.remove(&nonce);
        match answer {
            Ok(Ok(())) => Ok(started.elapsed()),
            _ => Err(ClientError::Disconnected),
        }
    }

    /// Reads the control stream of `session` until it fails; returns why.
    async fn read_control(
        self: &Arc<Self>,
        session: &Arc<Session>,
        recv: &mut quinn::RecvStream,
    ) -> ClientError {
        // A correct server sends at most one part per subscription, each at most a frame.
        let mut parts = TransitionParts::new(
            u64::from(session.info.max_subscriptions.max(1))
                .saturating_mul(u64::from(session.max_frame_bytes))
                .min(self.opts.max_transition_bytes),
        );
        loop {
            let (msg, frame_bytes) =
                match connection::read_sized_message(recv, session.max_frame_bytes).await {
                    Ok(Some(read)) => read,
                    Ok(None) => return ClientError::Disconnected,
                    Err(e) => return e,
                };
            // The server writes a transition's parts back to back (§8).
            if parts.in_progress()
                && !matches!(
                    msg,
                    ServerMessage::Transition { .. } | ServerMessage::Error { fatal: true, .. }
                )
            {
                return ClientError::Protocol(format!(
                    "{} between the parts of a transition",
                    connection::message_kind(&msg)
                ));
            }
            match msg {
                ServerMessage::Transition {
                    start_ts,
                    end_ts,
                    modifications,
                    continued,
                } => {
                    let whole =
                        match parts.push(start_ts, end_ts, modifications, continued, frame_bytes) {
                            Ok(Some(whole)) => whole,
                            // Applied with the last part.
                            Ok(None) => continue,
                            Err(violation) => return ClientError::Protocol(violation),
                        };
                    let (start_ts, end_ts, modifications) =
                        (whole.start_ts, whole.end_ts, whole.modifications);
                    let wakers = {
                        let mut st = self.state.lock();
                        if st.gen != session.gen {
                            return ClientError::Disconnected;
                        }
                        match st.subs.apply_transition(start_ts, end_ts, modifications) {
                            Ok(mut effects) => {
                                st.note_ts(end_ts);
                                for msg in effects.outbox {
                                    st.push(msg);
                                }
                                if effects.parked {
                                    effects.wakers.extend(st.settle_parked());
                                }
                                effects.wakers
                            }
                            Err(violation) => return ClientError::Protocol(violation),
                        }
                    };
                    // Every subscription of the transition is updated; now wake readers.
                    for w in wakers {
                        w.wake();
                    }
                }
                ServerMessage::AuthOk { subject } => {
                    let (waiter, wakers) = {
                        let mut st = self.state.lock();
                        // The server runs what is subscribed from now on under this identity
                        // (or none, after a sign-out): the subscriptions parked for the
                        // lapsed token are subscribed again, and end if they still fail.
                        if st.lapse != Lapse::None {
                            st.lapse = Lapse::Renewed;
                        }
                        let wakers = st.settle_parked();
                        (st.auth_waiters.pop_front(), wakers)
                    };
                    for w in wakers {
                        w.wake();
                    }
                    match waiter {
                        Some(w) => {
                            let _ = w.send(Ok(subject));
                        }
                        None => tracing::warn!("AuthOk without a pending Authenticate"),
                    }
                }
                ServerMessage::Error {
                    code,
                    message,
                    data,
                    fatal,
                } => {
                    let error = ClientError::server(code, message, data, fatal);
                    if fatal {
                        return error;
                    }
                    // The server's notice that the token expired unrefreshed (§11) answers no
                    // Authenticate, so it must not be taken as the reply to one in flight.
                    if error.is_token_expired() {
                        tracing::warn!(error = %error, "token expired; the connection is anonymous");
                        {
                            let mut st = self.state.lock();
                            st.subject = None;
                            st.expiry_notice = true;
                            st.lapse = Lapse::Noticed;
                            // A new event: the token keeper tries afresh.
                            st.refresh_gave_up_on = None;
                        }
                        // With a refresher, the token keeper signs in again.
                        self.auth_wake.notify_one();
                    } else if error.is_unauthorized() {
                        let waiter = {
                            let mut st = self.state.lock();
                            let waiter = st.auth_waiters.pop_front();
                            if waiter.is_none() {
                                // Not an answer, yet the identity is gone (§5.2: never kept).
                                st.subject = None;
                            }
                            waiter
                        };
                        match waiter {
                            Some(w) => {
                                let _ = w.send(Err(error));
                            }
                            None => tracing::warn!(error = %error, "server rejected the identity"),
                        }
                    } else {
                        tracing::warn!(error = %error, "server reported an error on the control stream");
                    }
                }
                ServerMessage::Pong { nonce } => {
                    if let Some(tx) = self.state.lock().pings.remove(&nonce) {
                        let _ = tx.send(());
                    }
                }
                other => {
                    return ClientError::Protocol(format!(
                        "unexpected {} on the control stream",
                        connection::message_kind(&other)
                    ))
                }
            }
        }
    }
}

/// Retries of a call whose connection was lost after it was (maybe partly) written, so that
/// the server may have run it. A call provably never written is always sent again.
fn retries_after_loss(kind: CallKind, has_mutation_id: bool, max_query_retries: u32) -> u32 {
    match kind {
        CallKind::Query => max_query_retries,
        // The server answers a retry under the same id from its record (§12): applied once.
        CallKind::Mutation if has_mutation_id => 1,
        // Sent again without an id, it could be applied twice.
        CallKind::Mutation => 0,
        // Not transactional, not deduplicated.
        CallKind::Action => 0,
    }
}

/// Whether a call that failed with `error` is run again after a token refresh: only after an
/// `UNAUTHORIZED`, and only if its first run can have had no effect. The server refuses a call
/// under an expired token before running anything and says so (`data.tokenExpired`), so any
/// call refused that way is. Otherwise a query only reads, and a failed mutation wrote nothing
/// (its transaction did not commit, and it left no mutation-id record, so a retry under the
/// same id runs it afresh); but an action's own `UNAUTHORIZED` may come after it had effects.
fn reruns_after_unauthorized(kind: CallKind, error: &ClientError) -> bool {
    if !error.is_unauthorized() {
        return false;
    }
    match kind {
        CallKind::Query | CallKind::Mutation => true,
        CallKind::Action => error.is_token_expired(),
    }
}

/// Whether the server refuses a call with `error` before a mutation's id is looked up in its
/// deduplication record (protocol §12), so that the error says nothing of an earlier attempt
/// under that id: shed under load (`admission`, ahead of the transaction) or refused for an
/// expired token (ahead of running anything). Every other answer to a mutation comes from
/// running it under its id, which replays a committed earlier attempt instead (the engine's
/// refusals ahead of the lookup — an unknown function, arguments or an id that do not
/// validate — would have refused the same call the first time too).
fn refused_before_dedup(error: &ClientError) -> bool {
    error.is_overloaded() || error.is_token_expired()
}

/// The error for a call that got no answer that tells whether it ran: a mutation that may
/// have reached the server is reported as unconfirmed rather than with that error.
fn unanswered(
    kind: CallKind,
    lost_after_send: u32,
    mutation_id: &Option<String>,
    error: ClientError,
) -> ClientError {
    match (kind, mutation_id) {
        (CallKind::Mutation, Some(id)) if lost_after_send > 0 => ClientError::MutationUnconfirmed {
            mutation_id: id.clone(),
        },
        _ => error,
    }
}

impl SubscriptionOwner for Inner {
    fn unsubscribe(&self, key: u64) {
        let wakers = {
            let mut st = self.state.lock();
            let (unsubscribe, wakers) = st.subs.remove(key);
            if let Some(msg) = unsubscribe {
                st.push(msg);
            }
            wakers
        };
        for w in wakers {
            w.wake();
        }
    }

    fn resubscribe(&self, key: u64) {
        let mut st = self.state.lock();
        let mut effects = TransitionEffects::default();
        st.subs.resubscribe(key, &mut effects);
        for msg in effects.outbox {
            st.push(msg);
        }
    }
}

/// Drains the client's outbox onto the control stream of `session`.
async fn run_writer(inner: Arc<Inner>, session: Arc<Session>, mut send: quinn::SendStream) {
    loop {
        let batch: Vec<ClientMessage> = {
            let mut st = inner.state.lock();
            if st.gen != session.gen || st.session.is_none() {
                return;
            }
            st.outbox.take_all()
        };
        if batch.is_empty() {
            session.outbox_ready.notified().await;
            continue;
        }
        for msg in &batch {
            match connection::write_message(&mut send, msg, session.max_frame_bytes).await {
                Ok(()) => {}
                // Refused before anything was written (limits are checked when messages are
                // queued, against the connection of that moment).
                Err(e @ (ClientError::Encode(_) | ClientError::Function { .. })) => {
                    tracing::warn!(error = %e, "control message dropped");
                    match msg {
                        ClientMessage::Authenticate { .. } => {
                            // One Authenticate at a time (`auth_lock`): its waiter is the
                            // only one.
                            let waiter = inner.state.lock().auth_waiters.pop_front();
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(Err(e));
                            }
                        }
                        // A re-subscription that no longer fits (a reconnect to a server
                        // with a lower frame limit) ends with the error, so that it does not
                        // hold back the others' results for ever.
                        ClientMessage::Subscribe { query_id, .. } => {
                            let wakers = {
                                let mut st = inner.state.lock();
                                if st.gen != session.gen {
                                    // Subscribed again on a newer connection meanwhile.
                                    continue;
                                }
                                st.subs.fail(*query_id, e)
                            };
                            for w in wakers {
                                w.wake();
                            }
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control stream write failed");
                    session.conn.close(0u8.into(), b"control stream failed");
                    return;
                }
            }
        }
    }
}

/// Runs connections one after another for the client's lifetime: reads each one's control
/// stream until it fails, then reconnects with backoff.
async fn supervise(inner: Arc<Inner>, first: Established, mut shutdown: watch::Receiver<bool>) {
    let policy = inner.opts.reconnect.clone();
    let mut established = first;
    let mut attempt: u32 = 0;
    loop {
        let (session, mut recv) = inner.install(established);
        let started = Instant::now();
        let reason = tokio::select! {
            reason = inner.read_control(&session, &mut recv) => reason,
            _ = shutdown.wait_for(|closed| *closed) => return,
        };
        inner.teardown(&session, &reason);
        if *shutdown.borrow() {
            return;
        }
        if started.elapsed() >= policy.max_delay {
            attempt = 0;
        }
        // The last attempt's refusal of the token: what the client ends with if it gives up,
        // so that the application learns a token is needed rather than that the server is gone.
        let mut refused: Option<ClientError> = None;
        established = loop {
            if policy.max_attempts.is_some_and(|max| attempt >= max) {
                inner.shutdown(Some(refused.unwrap_or(ClientError::Disconnected)));
                return;
            }
            let delay = policy.delay(attempt, rand::random::<f64>());
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|closed| *closed) => return,
            }
            let result = tokio::select! {
                r = inner.establish() => r,
                _ = shutdown.wait_for(|closed| *closed) => return,
            };
            match result {
                Ok(est) => break est,
                // The server does not speak our version: retrying cannot help.
                Err(e @ ClientError::Server { .. })
                    if e.code() == Some(codes::VALIDATION_ERROR) =>
                {
                    tracing::error!(error = %e, "server refused the session");
                    inner.shutdown(Some(e));
                    return;
                }
                // Not anonymous instead: the application chose an identity. Calls and
                // subscriptions wait for a connection that signs in, while the refresher is
                // asked again on each attempt; calls that give up waiting report the refusal.
                Err(e) if e.is_unauthorized() => {
                    tracing::warn!(error = %e, attempt, "token rejected on reconnect; retrying");
                    let mut st = inner.state.lock();
                    st.subject = None;
                    if st.closed.is_none() {
                        inner.link.send_replace(Link::Connecting {
                            refused: Some(e.clone()),
                        });
                    }
                    refused = Some(e);
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "reconnect failed");
                    refused = None;
                }
            }
        };
    }
}

/// Keeps the connection signed in while a token refresher is configured (protocol §11): asks
/// it shortly before the current token's `exp` and when the server reports the token expired,
/// and authenticates the live connection with the answer. A refresh that fails (no token,
/// none within `token_refresh_timeout`, a token the server rejects, no connection, a token
/// already due for refresh) is tried again with backoff, `MAX_REFRESH_ATTEMPTS` times in a
/// row at most; then the keeper waits for a new token, a new refresher or a new expiry notice.
async fn keep_token_fresh(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    use tokio::time::Instant;
    let mut failures = 0u32;
    let mut retry_at = None;
    let mut last_refresh: Option<Instant> = None;
    loop {
        let due = {
            let mut st = inner.state.lock();
            if st
                .refresh_gave_up_on
                .is_some_and(|version| version != st.token_version)
            {
                // A new token since (the application's, or a reconnect's).
                st.refresh_gave_up_on = None;
                failures = 0;
            }
            if st.refresher.is_none() {
                None
            } else if st.expiry_notice {
                Some(Instant::now())
            } else if st.refresh_gave_up_on.is_some() {
                None
            } else if failures > 0 {
                retry_at
            } else {
                // No `exp` to read: the server's expiry notice will tell.
                st.token.as_deref().and_then(token_times).map(|times| {
                    let now = unix_now();
                    let at = Instant::now() + refresh_time(&times, now).saturating_sub(now);
                    last_refresh.map_or(at, |last| at.max(last + MIN_REFRESH_INTERVAL))
                })
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|closed| *closed) => return,
            () = inner.auth_wake.notified() => continue,
            () = sleep_until(due) => {}
        }
        let (refresher, notice) = {
            let mut st = inner.state.lock();
            let notice = std::mem::take(&mut st.expiry_notice);
            (st.refresher_now(), notice)
        };
        let Some((refresher, asked_at)) = refresher else {
            continue;
        };
        if notice {
            // A new event: a fresh allowance of attempts (`refresh_gave_up_on` was cleared
            // with the notice).
            failures = 0;
        }
        last_refresh = Some(Instant::now());
        match refresh_token(&inner, &refresher, asked_at).await {
            Ok(()) => {
                failures = 0;
                retry_at = None;
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_REFRESH_ATTEMPTS {
                    tracing::warn!(error = %e, failures, "token refresh keeps failing; giving up until the token changes");
                    let wakers = {
                        let mut st = inner.state.lock();
                        st.refresh_gave_up_on = Some(st.token_version);
                        // Subscriptions waiting for a fresh token end with their error.
                        st.settle_parked()
                    };
                    for w in wakers {
                        w.wake();
                    }
                } else {
                    let wait = REFRESH_BACKOFF.delay(failures - 1, rand::random());
                    tracing::debug!(error = %e, failures, ?wait, "token refresh failed; retrying");
                    retry_at = Some(Instant::now() + wait);
                }
            }
        }
    }
}

/// Asks `refresher` for a token, at `auth_epoch` `asked_at`, and authenticates with it unless
/// the application changed the sign-in state meanwhile (then nothing failed: the token is
/// dropped, and the keeper, woken by the change, reschedules).
async fn refresh_token(
    inner: &Arc<Inner>,
    refresher: &TokenRefresher,
    asked_at: u64,
) -> Result<(), ClientError> {
    let token = ask_refresher(refresher, inner.opts.token_refresh_timeout).await?;
    let now = unix_now();
    let due = token_times(&token).is_some_and(|times| refresh_time(&times, now) <= now);
    if let SignIn::Discarded = inner.sign_in(Some(token), Some(asked_at)).await? {
        return Ok(());
    }
    if due {
        // Accepted, but asking again at once would spin: count it as a failure.
        return Err(unauthorized(
            "the token refresher returned a token already due for refresh".into(),
        ));
    }
    Ok(())
}

/// Asks `refresher` for a token, waiting at most `timeout`: no token, or none in time, is an
/// `UNAUTHORIZED` saying which; a token over the protocol's limit is its `VALIDATION_ERROR`
/// (so that it is never sent, nor kept for reconnects).
async fn ask_refresher(
    refresher: &TokenRefresher,
    timeout: Duration,
) -> Result<String, ClientError> {
    match tokio::time::timeout(timeout, refresher()).await {
        Ok(Some(token)) => {
            check_limits(&ClientMessage::Authenticate {
                token: Some(token.clone()),
            })?;
            Ok(token)
        }
        Ok(None) => Err(unauthorized("the token refresher returned no token".into())),
        Err(_) => Err(unauthorized(format!(
            "the token refresher gave no token within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// An `UNAUTHORIZED` raised by the client itself (no server was asked).
fn unauthorized(message: String) -> ClientError {
    ClientError::Function {
        code: codes::UNAUTHORIZED.into(),
        message,
        data: Value::Null,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A token's `iat` and `exp` claims, as time since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TokenTimes {
    iat: Option<Duration>,
    exp: Duration,
}

/// Reads `exp` (and `iat`) from a JWT's payload without verifying anything: only to schedule
/// refreshes, the server verifies. `None` for anything that is not a JWT with a numeric `exp`.
fn token_times(token: &str) -> Option<TokenTimes> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<serde_json::Value>,
        iat: Option<serde_json::Value>,
    }
    let seconds = |v: Option<serde_json::Value>| {
        v.as_ref()
            .and_then(serde_json::Value::as_f64)
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    };
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    Some(TokenTimes {
        exp: seconds(claims.exp)?,
        iat: seconds(claims.iat),
    })
}

/// When to refresh a token, as time since the Unix epoch: a quarter of its lifetime before
/// `exp`, at most `REFRESH_LEAD` before. Without a usable `iat` the lifetime counts from `now`.
fn refresh_time(times: &TokenTimes, now: Duration) -> Duration {
    let issued = times.iat.filter(|iat| *iat < times.exp).unwrap_or(now);
    let lead = (times.exp.saturating_sub(issued) / 4).min(REFRESH_LEAD);
    times.exp.saturating_sub(lead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use query_engine::protocol::TOKEN_EXPIRED;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("127.0.0.1:7443").unwrap(),
            ("127.0.0.1".into(), 7443)
        );
        assert_eq!(
            parse_address("quic://localhost:9/").unwrap(),
            ("localhost".into(), 9)
        );
        assert_eq!(
            parse_address("example.com").unwrap(),
            ("example.com".into(), DEFAULT_PORT)
        );
        assert_eq!(parse_address("[::1]:5").unwrap(), ("::1".into(), 5));
        assert_eq!(parse_address("::1").unwrap(), ("::1".into(), DEFAULT_PORT));
        assert!(parse_address("").is_err());
        assert!(parse_address("host:notaport").is_err());
        assert!(parse_address(":5").is_err());
    }

    #[test]
    fn shed_mutations_wait_the_servers_retry_after_with_jitter_up_to_the_cap() {
        let shed = |data: Value| ClientError::Function {
            code: codes::RATE_LIMITED.into(),
            message: "overloaded".into(),
            data,
        };
        let after = |ms: i64| shed(query_engine::obj! { "retryAfterMs" => ms });
        assert_eq!(overload_wait(&after(200), 0.0), Duration::from_millis(200));
        assert_eq!(overload_wait(&after(200), 1.0), Duration::from_millis(300));
        assert_eq!(overload_wait(&after(200), 7.0), Duration::from_millis(300));
        assert_eq!(overload_wait(&after(60_000), 0.0), MAX_OVERLOAD_WAIT);
        assert_eq!(overload_wait(&after(0), 0.0), DEFAULT_OVERLOAD_WAIT);
        assert_eq!(
            overload_wait(&shed(Value::Null), 0.0),
            DEFAULT_OVERLOAD_WAIT
        );
        assert_eq!(
            overload_wait(&ClientError::Disconnected, 0.0),
            DEFAULT_OVERLOAD_WAIT
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.delay(0, 0.5), Duration::from_millis(100));
        assert_eq!(p.delay(1, 0.5), Duration::from_millis(200));
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(800));
        assert_eq!(p.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(40, 0.5), p.max_delay);
        for attempt in 0..64 {
            for unit in [0.0, 0.3, 0.999] {
                let d = p.delay(attempt, unit);
                assert!(d <= p.max_delay && d >= Duration::from_millis(50), "{d:?}");
            }
        }
    }

    #[test]
    fn mutation_ids_are_128_bit_hex_and_distinct() {
        let a = new_mutation_id();
        let b = new_mutation_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    fn jwt(claims: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn token_times_are_read_from_the_unverified_payload() {
        let secs = Duration::from_secs;
        assert_eq!(
            token_times(&jwt(r#"{"sub":"u","iat":1000,"exp":4600}"#)),
            Some(TokenTimes {
                iat: Some(secs(1000)),
                exp: secs(4600)
            })
        );
        assert_eq!(
            token_times(&jwt(r#"{"exp":12.5}"#)),
            Some(TokenTimes {
                iat: None,
                exp: Duration::from_millis(12_500)
            })
        );
        for unknown in [
            jwt(r#"{"sub":"u"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-1}"#),
            jwt("not json"),
            "opaque-token".to_string(),
            "a.!!!.c".to_string(),
        ] {
            assert_eq!(token_times(&unknown), None, "{unknown}");
        }
    }

    #[test]
    fn tokens_are_refreshed_a_quarter_of_their_lifetime_before_exp_at_most_a_minute() {
        let secs = Duration::from_secs;
        let at = |iat: Option<u64>, exp: u64, now: u64| {
            let times = TokenTimes {
                iat: iat.map(secs),
                exp: secs(exp),
            };
            refresh_time(&times, secs(now)).as_secs()
        };
        // An hour: a minute before.
        assert_eq!(at(Some(1000), 4600, 1000), 4540);
        // Four seconds: one before, wherever `now` is.
        assert_eq!(at(Some(1000), 1004, 1002), 1003);
        // No `iat` (or a wrong one): the lifetime counts from now.
        assert_eq!(at(None, 1008, 1000), 1006);
        assert_eq!(at(Some(2000), 1008, 1000), 1006);
        // Expired: at once.
        assert!(at(Some(900), 1000, 2000) <= 2000);
    }

    #[test]
    fn only_calls_that_cannot_apply_twice_are_sent_again() {
        assert_eq!(retries_after_loss(CallKind::Query, false, 3), 3);
        assert_eq!(retries_after_loss(CallKind::Mutation, true, 3), 1);
        assert_eq!(retries_after_loss(CallKind::Mutation, false, 3), 0);
        assert_eq!(retries_after_loss(CallKind::Action, false, 3), 0);
        assert_eq!(retries_after_loss(CallKind::Action, true, 3), 0);
        let refused = |data: Value| ClientError::Function {
            code: codes::UNAUTHORIZED.into(),
            message: "no".into(),
            data,
        };
        let own = refused(Value::Null);
        let expired = refused(query_engine::obj! { TOKEN_EXPIRED => true });
        for kind in [CallKind::Query, CallKind::Mutation, CallKind::Action] {
            assert!(reruns_after_unauthorized(kind, &expired), "{kind:?}");
        }
        assert!(reruns_after_unauthorized(CallKind::Query, &own));
        assert!(reruns_after_unauthorized(CallKind::Mutation, &own));
        assert!(!reruns_after_unauthorized(CallKind::Action, &own));
        // The marker counts only on an UNAUTHORIZED.
        let conflict = ClientError::Function {
            code: codes::CONFLICT.into(),
            message: "no".into(),
            data: query_engine::obj! { TOKEN_EXPIRED => true },
        };
        assert!(!reruns_after_unauthorized(CallKind::Action, &conflict));
        assert!(!reruns_after_unauthorized(CallKind::Query, &conflict));
    }

    #[test]
    fn lost_mutations_are_reported_unconfirmed() {
        let id = Some("m".to_string());
        assert!(matches!(
            unanswered(CallKind::Mutation, 1, &id, ClientError::Disconnected),
            ClientError::MutationUnconfirmed { .. }
        ));
        assert!(matches!(
            unanswered(CallKind::Mutation, 0, &id, ClientError::Disconnected),
            ClientError::Disconnected
        ));
        assert!(matches!(
            unanswered(CallKind::Action, 1, &None, ClientError::Disconnected),
            ClientError::Disconnected
        ));
        // Only the server's refusals ahead of the id's lookup say nothing of an earlier
        // attempt; a mutation's own errors (its UNAUTHORIZED included) came from running it.
        let error = |code: &str, data: Value| ClientError::Function {
            code: code.into(),
            message: "no".into(),
            data,
        };
        let shed = error(
            codes::RATE_LIMITED,
            query_engine::obj! { "reason" => query_engine::admission::OVERLOADED },
        );
        let expired = error(
            codes::UNAUTHORIZED,
            query_engine::obj! { TOKEN_EXPIRED => true },
        );
        assert!(refused_before_dedup(&shed));
        assert!(refused_before_dedup(&expired));
        for own in [
            error(codes::UNAUTHORIZED, Value::Null),
            error(codes::RATE_LIMITED, Value::Null),
            error(codes::CONFLICT, Value::Null),
        ] {
            assert!(!refused_before_dedup(&own), "{own}");
        }
    }
}
