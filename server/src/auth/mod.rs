//! Caller authentication: verifies WorkOS (AuthKit) RS256 access tokens against the issuer's
//! JWKS and turns them into the engine's `Identity`. Development mode runs its own issuer
//! (`DevIssuer`) and is verified through exactly the same `TokenVerifier` path.

mod dev_issuer;
mod jwks;
mod verifier;

use std::time::Duration;

pub use dev_issuer::{jwks_router, DevClaims, DevIssuer, DevIssuerError, JWKS_PATH};
pub use jwks::{JwksCache, JwksError, MAX_JWKS_BYTES, MAX_JWKS_KEYS};
pub use verifier::{AuthError, TokenVerifier, MAX_TOKEN_BYTES};

/// The only code an authentication failure may put on the wire; the detailed `AuthError` is
/// for logs, so a caller cannot probe which check failed.
pub const UNAUTHORIZED_CODE: &str = "UNAUTHORIZED";

/// Where tokens come from and how strictly their time claims are judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// Expected `iss`, compared exactly (e.g. `https://api.workos.com/user_management/<client id>`).
    pub issuer: String,
    /// The WorkOS client id. A token that carries `aud` must name it there; one without
    /// `aud` (AuthKit access tokens have none) is tied to the client by `issuer`, which
    /// embeds the id, and by the signature under the client's JWKS.
    pub audience: String,
    /// Where the issuer publishes its signing keys.
    pub jwks_url: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Unknown key ids trigger a JWKS refetch at most this often.
    pub min_refetch_interval: Duration,
    /// Keys fetched longer ago than this are fetched again before they are used, so a key the
    /// issuer withdraws (compromised, rotated out) stops verifying within this time. If the
    /// issuer cannot be reached, the keys held stay in use (an outage must not log everyone
    /// out) and the fetch is retried at most every `min_refetch_interval`.
    pub max_key_age: Duration,
    /// Bound on one JWKS request, connection to last byte.
    pub http_timeout: Duration,
}

impl AuthConfig {
    pub const DEFAULT_LEEWAY_SECS: u64 = 30;
    pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_KEY_AGE: Duration = Duration::from_secs(600);
    pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

    /// A configuration with the default leeway, refetch interval, key age and HTTP timeout.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks_url: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: jwks_url.into(),
            leeway_secs: Self::DEFAULT_LEEWAY_SECS,
            min_refetch_interval: Self::DEFAULT_MIN_REFETCH_INTERVAL,
            max_key_age: Self::DEFAULT_MAX_KEY_AGE,
            http_timeout: Self::DEFAULT_HTTP_TIMEOUT,
        }
    }
}
