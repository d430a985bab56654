//! The issuer's signing keys (JWKS), fetched over HTTP and cached by key id. Refetches on an
//! unknown `kid` are coalesced and rate limited, so a flood of tokens with invented key ids
//! costs the issuer at most one request per `min_refetch_interval`. Keys older than
//! `max_key_age` are fetched again before use, so a key the issuer withdraws stops verifying.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

/// Largest JWKS document accepted; real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys one JWKS may list; issuers publish a handful during a rotation.
pub const MAX_JWKS_KEYS: usize = 64;
const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("could not build the JWKS HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("JWKS request failed: {0}")]
    Request(#[source] reqwest::Error),
    #[error("JWKS endpoint answered HTTP {status}")]
    Status { status: u16 },
    #[error("JWKS document exceeds {max_bytes} bytes")]
    TooLarge { max_bytes: usize },
    #[error("JWKS document is not a JSON object with a `keys` array: {0}")]
    Json(#[source] serde_json::Error),
    #[error("JWKS lists more than {max_keys} keys")]
    TooManyKeys { max_keys: usize },
    #[error("JWKS contains no usable RS256 signing key")]
    NoUsableKeys,
    #[error("the last JWKS fetch failed and the refetch interval has not passed yet")]
    RecentlyFailed,
}

type KeySet = HashMap<String, Arc<DecodingKey>>;

/// The keys of the last successful fetch, and when it started.
#[derive(Default)]
struct Fetched {
    keys: KeySet,
    at: Option<Instant>,
}

/// Bookkeeping for the refetch rate limit; its mutex is held for the whole of a fetch so that
/// concurrent misses wait for the one request in flight instead of starting their own.
#[derive(Default)]
struct FetchState {
    last_started: Option<Instant>,
    last_failed: bool,
}

/// RSA verification keys by `kid`, refreshed from `url` on demand.
pub struct JwksCache {
    client: reqwest::Client,
    url: String,
    min_refetch_interval: Duration,
    max_key_age: Duration,
    keys: ArcSwap<Fetched>,
    fetch_state: tokio::sync::Mutex<FetchState>,
    fetches_started: AtomicU64,
}

impl JwksCache {
    /// An empty cache; the first lookup fetches.
    pub fn new(
        url: impl Into<String>,
        min_refetch_interval: Duration,
        max_key_age: Duration,
        http_timeout: Duration,
    ) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(http_timeout)
            .connect_timeout(http_timeout)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .build()
            .map_err(JwksError::Client)?;
        Ok(Self {
            client,
            url: url.into(),
            min_refetch_interval,
            max_key_age,
            keys: ArcSwap::from_pointee(Fetched::default()),
            fetch_state: tokio::sync::Mutex::new(FetchState::default()),
            fetches_started: AtomicU64::new(0),
        })
    }

    /// The key with id `kid`. A miss refetches the JWKS unless a fetch started less than
    /// `min_refetch_interval` ago; `Ok(None)` means the issuer does not (yet) publish `kid`.
    /// A hit on keys older than `max_key_age` refetches first (same rate limit; while another
    /// lookup is fetching, or when the fetch fails, the keys held answer).
    pub async fn key(&self, kid: &str) -> Result<Option<Arc<DecodingKey>>, JwksError> {
        let held = self.keys.load();
        if let Some(key) = held.keys.get(kid) {
            if held.at.is_some_and(|at| at.elapsed() < self.max_key_age) {
                return Ok(Some(Arc::clone(key)));
            }
            if let Ok(mut state) = self.fetch_state.try_lock() {
                if self.may_fetch(&state) {
                    // On failure the keys held stay in use (see `fetch_and_store`).
                    let _ = self.fetch_and_store(&mut state).await;
                }
            }
            return Ok(self.keys.load().keys.get(kid).cloned());
        }
        let mut state = self.fetch_state.lock().await;
        // The fetch we may have queued behind could have brought the key.
        if let Some(key) = self.keys.load().keys.get(kid) {
            return Ok(Some(Arc::clone(key)));
        }
        if !self.may_fetch(&state) {
            return if state.last_failed {
                Err(JwksError::RecentlyFailed)
            } else {
                Ok(None)
            };
        }
        self.fetch_and_store(&mut state).await?;
        Ok(self.keys.load().keys.get(kid).cloned())
    }

    /// Whether the refetch rate limit lets a fetch start now.
    fn may_fetch(&self, state: &FetchState) -> bool {
        state
            .last_started
            .is_none_or(|started| started.elapsed() >= self.min_refetch_interval)
    }

    /// Fetches now, ignoring the rate limit (e.g. to warm the cache at startup); returns how
    /// many usable keys the issuer publishes.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut state = self.fetch_state.lock().await;
        self.fetch_and_store(&mut state).await?;
        Ok(self.keys.load().keys.len())
    }

    /// How many JWKS requests this cache has started.
    pub fn fetches_started(&self) -> u64 {
        self.fetches_started.load(Ordering::Relaxed)
    }

    /// Lets tests move past the rate limit without sleeping.
    #[cfg(test)]
    pub(crate) async fn forget_last_fetch(&self) {
        self.fetch_state.lock().await.last_started = None;
    }

    /// On failure the previous keys stay in place: an issuer outage must not log everyone out.
    async fn fetch_and_store(&self, state: &mut FetchState) -> Result<(), JwksError> {
        let started = Instant::now();
        state.last_started = Some(started);
        self.fetches_started.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await;
        state.last_failed = result.is_err();
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "fetched JWKS");
                self.keys.store(Arc::new(Fetched {
                    keys,
                    at: Some(started),
                }));
                Ok(())
            }
            Err(err) => {
                tracing::warn!(url = %self.url, error = %err, "JWKS fetch failed");
                Err(err)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(JwksError::Request)?;
        let status = response.status();
        if !status.is_success() {
            return Err(JwksError::Status {
                status: status.as_u16(),
            });
        }
        let too_large = JwksError::TooLarge {
            max_bytes: MAX_JWKS_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(JwksError::Request)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// One JWK as published; every field optional so that one odd key does not hide the others.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
}

/// The RS256 signing keys in a JWKS document. Keys of other types, for other algorithms or
/// for encryption are skipped rather than rejected: issuers may publish them alongside.
fn parse_jwks(body: &[u8]) -> Result<KeySet, JwksError> {
    let document: JwksDocument = serde_json::from_slice(body).map_err(JwksError::Json)?;
    if document.keys.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys {
            max_keys: MAX_JWKS_KEYS,
        });
    }
    let mut keys = KeySet::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<RawJwk>(value) else {
            continue;
        };
        let usable = jwk.kty.as_deref() == Some("RSA")
            && jwk.alg.as_deref().is_none_or(|alg| alg == "RS256")
            && jwk
                .key_use
                .as_deref()
                .is_none_or(|key_use| key_use == "sig");
        let (Some(kid), Some(n), Some(e), true) = (jwk.kid, jwk.n, jwk.e, usable) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_rsa_components(&n, &e) else {
            continue;
        };
        keys.entry(kid).or_insert_with(|| Arc::new(key));
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<KeySet, JwksError> {
        parse_jwks(value.to_string().as_bytes())
    }

    #[test]
    fn keeps_only_rs256_signing_keys() {
        let keys = parse(json!({ "keys": [
            { "kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB", "alg": "RS256", "use": "sig" },
            { "kty": "RSA", "kid": "b", "n": "AQAB", "e": "AQAB" },
            { "kty": "RSA", "kid": "enc", "n": "AQAB", "e": "AQAB", "use": "enc" },
            { "kty": "RSA", "kid": "ps", "n": "AQAB", "e": "AQAB", "alg": "PS256" },
            { "kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA" },
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "RSA", "n": "AQAB", "e": "AQAB" },
            { "kty": "RSA", "kid": "bad", "n": "!!!", "e": "AQAB" },
            { "kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB" },
            "not an object"
        ]}))
        .expect("two usable keys");
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["a", "b"]);
    }

    #[test]
    fn rejects_documents_without_usable_keys() {
        assert!(matches!(
            parse(json!({ "keys": [] })),
            Err(JwksError::NoUsableKeys)
        ));
        assert!(matches!(
            parse(json!({ "keys": [{ "kty": "oct", "kid": "h", "k": "AA" }] })),
            Err(JwksError::NoUsableKeys)
        ));
        assert!(matches!(
            parse(json!({ "nokeys": 1 })),
            Err(JwksError::Json(_))
        ));
        assert!(matches!(
            parse_jwks(b"\xff garbage"),
            Err(JwksError::Json(_))
        ));
    }

    #[test]
    fn rejects_too_many_keys() {
        let key = json!({ "kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB" });
        let keys = vec![key; MAX_JWKS_KEYS + 1];
        assert!(matches!(
            parse(json!({ "keys": keys })),
            Err(JwksError::TooManyKeys { .. })
        ));
    }
}
