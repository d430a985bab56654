//! Who may read `/metrics`. It shows what the server does (functions called and their errors,
//! connections, queues), and the HTTP port usually faces the internet for Stream's webhooks.
//! With a token configured (`--metrics-token-file`) a scraper sends it as `Authorization:
//! Bearer`; without one, `/metrics` is open in development mode and answers peers on this
//! machine only in production mode.

use std::fmt;
use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use linkedup_schema::ErrorCode;
use rand::Rng;
use ring::hmac;

use crate::metrics::LabelledCounter;
use crate::secret::Secret;

/// Refused requests for `/metrics`, by reason: a scraper missing its token, or someone probing.
pub(crate) static REFUSED: LabelledCounter = LabelledCounter {
    name: "http_metrics_refused_total",
    help: "Requests for /metrics refused, by reason",
    label: "reason",
};

/// The challenge sent with a 401 (RFC 6750).
const CHALLENGE: &str = "Bearer realm=\"metrics\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"metrics\", error=\"invalid_token\"";

/// The rule `/metrics` follows, chosen once at start.
pub enum MetricsAccess {
    /// Whoever sends the token (boxed: a key's hashing states are large).
    Token(Box<BearerToken>),
    /// Anyone: development mode without a token.
    Open,
    /// Loopback peers only: production mode without a token.
    LoopbackOnly,
}

/// A bearer token, kept as its HMAC under a key made at start: a presented token is checked
/// with ring's constant-time `hmac::verify`, so the time taken shows neither how much of it
/// matched nor how long the token is.
pub struct BearerToken {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl BearerToken {
    fn new(token: &Secret) -> Self {
        let key_bytes: [u8; 32] = rand::thread_rng().gen();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
        let tag = hmac::sign(&key, token.expose().as_bytes());
        BearerToken { key, tag }
    }

    fn matches(&self, given: &str) -> bool {
        hmac::verify(&self.key, given.as_bytes(), self.tag.as_ref()).is_ok()
    }
}

/// Why a request for `/metrics` is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Authorization: Bearer` header, with a token configured.
    NoToken,
    /// A bearer token other than the configured one.
    WrongToken,
    /// From another machine, in production mode without a token.
    NotLoopback,
}

impl MetricsAccess {
    /// The token's rule if there is one, else the mode's.
    pub fn new(token: Option<&Secret>, development: bool) -> Self {
        match token {
            Some(token) => MetricsAccess::Token(Box::new(BearerToken::new(token))),
            None if development => MetricsAccess::Open,
            None => MetricsAccess::LoopbackOnly,
        }
    }

    /// Whether a request from `peer` with `headers` may read the metrics.
    pub(crate) fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        match self {
            MetricsAccess::Token(token) => match bearer(headers) {
                None => Err(Refusal::NoToken),
                Some(given) if token.matches(given) => Ok(()),
                Some(_) => Err(Refusal::WrongToken),
            },
            MetricsAccess::Open => Ok(()),
            // An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d.
            MetricsAccess::LoopbackOnly if peer.to_canonical().is_loopback() => Ok(()),
            MetricsAccess::LoopbackOnly => Err(Refusal::NotLoopback),
        }
    }
}

/// One line for the banner and the start-up log; never the token.
impl fmt::Display for MetricsAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricsAccess::Token(_) => "bearer token required (--metrics-token-file)",
            MetricsAccess::Open => "open to anyone (development mode, no --metrics-token-file)",
            MetricsAccess::LoopbackOnly => {
                "loopback peers only (production mode, no --metrics-token-file)"
            }
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches(' '))
}

impl Refusal {
    /// The `reason` label of `REFUSED` and of the log line.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::WrongToken => "wrong_token",
            Refusal::NotLoopback => "not_loopback",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, error, challenge) = match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "/metrics needs Authorization: Bearer <the metrics token>",
                Some(CHALLENGE),
            ),
            Refusal::WrongToken => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "not the metrics token",
                Some(CHALLENGE_INVALID),
            ),
            Refusal::NotLoopback => (
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "/metrics answers this machine only; configure --metrics-token-file \
                 (LINKEDUP_METRICS_TOKEN_FILE) to scrape it from elsewhere",
                None,
            ),
        };
        let body = Json(serde_json::json!({ "code": code.as_str(), "error": error }));
        let mut response = (status, body).into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const TOKEN: &str = "s3cret-token";
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    /// Documentation addresses (RFC 5737, RFC 3849): not loopback.
    const REMOTE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const REMOTE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_configured_token_is_required_from_every_peer_in_either_mode() {
        for development in [true, false] {
            let access = MetricsAccess::new(Some(&Secret::new(TOKEN)), development);
            for peer in [LOOPBACK, REMOTE_V4] {
                let check = |headers: &HeaderMap| access.check(peer, headers);
                assert_eq!(check(&HeaderMap::new()), Err(Refusal::NoToken));
                assert_eq!(
                    check(&with_authorization(&format!("Basic {TOKEN}"))),
                    Err(Refusal::NoToken)
                );
                for wrong in ["s3cret-toke", "s3cret-token2", "S3CRET-TOKEN", ""] {
                    let headers = with_authorization(&format!("Bearer {wrong}"));
                    assert_eq!(check(&headers), Err(Refusal::WrongToken), "{wrong:?}");
                }
                assert_eq!(
                    check(&with_authorization(&format!("Bearer {TOKEN}"))),
                    Ok(())
                );
                assert_eq!(
                    check(&with_authorization(&format!("bearer {TOKEN}"))),
                    Ok(())
                );
            }
        }
    }

    #[test]
    fn without_a_token_production_answers_loopback_peers_only() {
        let access = MetricsAccess::new(None, false);
        let none = HeaderMap::new();
        for peer in [
            LOOPBACK,
            IpAddr::V4(Ipv4Addr::new(127, 8, 9, 10)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
        ] {
            assert_eq!(access.check(peer, &none), Ok(()), "{peer}");
        }
        for peer in [
            REMOTE_V4,
            REMOTE_V6,
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
        ] {
            assert_eq!(
                access.check(peer, &none),
                Err(Refusal::NotLoopback),
                "{peer}"
            );
        }
        // A token sent anyway does not open it: there is none to match.
        let sent = with_authorization(&format!("Bearer {TOKEN}"));
        assert_eq!(access.check(REMOTE_V4, &sent), Err(Refusal::NotLoopback));
    }

    #[test]
    fn without_a_token_development_is_open() {
        let access = MetricsAccess::new(None, true);
        for peer in [LOOPBACK, REMOTE_V4, REMOTE_V6] {
            assert_eq!(access.check(peer, &HeaderMap::new()), Ok(()), "{peer}");
        }
    }

    #[test]
    fn refusals_answer_401_with_a_challenge_or_403() {
        for (refusal, status, challenge) in [
            (Refusal::NoToken, 401, Some(CHALLENGE)),
            (Refusal::WrongToken, 401, Some(CHALLENGE_INVALID)),
            (Refusal::NotLoopback, 403, None),
        ] {
            let response = refusal.into_response();
            assert_eq!(response.status().as_u16(), status);
            let sent = response.headers().get(header::WWW_AUTHENTICATE);
            assert_eq!(sent.map(|v| v.to_str().unwrap()), challenge);
        }
        // The description never shows the token.
        let access = MetricsAccess::new(Some(&Secret::new(TOKEN)), false);
        assert!(!access.to_string().contains(TOKEN));
    }
}
