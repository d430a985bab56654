//! Access-token verification: checks an RS256 JWT's header, signature (against the JWKS),
//! issuer, audience and time claims, then maps the WorkOS AuthKit claims onto `Identity`.
//! Every check failure is an `AuthError`; on the wire they all become `UNAUTHORIZED`.
//!
//! `iss`, `sub` and `exp` are required; `aud` is not, because AuthKit access tokens carry
//! none: what binds them to this application is the issuer
//! (`https://api.workos.com/user_management/<client id>`) and the signature under the client's
//! JWKS. A token that does carry `aud` (the development issuer's, or one shaped by a WorkOS
//! JWT template) must name the configured audience in it, as a string or in an array.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use query_engine::identity::Identity;
use serde::Deserialize;

use super::jwks::{JwksCache, JwksError};
use super::{AuthConfig, UNAUTHORIZED_CODE};

/// Longest token accepted; WorkOS access tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Attacker-chosen header values are cut to this many characters before entering errors/logs.
const MAX_ECHOED_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token exceeds {max_bytes} bytes")]
    TooLong { max_bytes: usize },
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token algorithm {alg:?} is not accepted; only RS256 is")]
    UnsupportedAlgorithm { alg: String },
    #[error("token header has no key id (kid)")]
    MissingKeyId,
    #[error("the issuer publishes no key with id {kid:?}")]
    UnknownKey { kid: String },
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued by a different issuer")]
    WrongIssuer,
    #[error("token is not addressed to this audience")]
    WrongAudience,
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("could not obtain the issuer's keys: {0}")]
    JwksFetch(#[from] JwksError),
}

impl AuthError {
    /// The code the transport sends: always `UNAUTHORIZED`, whatever the detail.
    pub fn wire_code(&self) -> &'static str {
        UNAUTHORIZED_CODE
    }
}

/// The JOSE header fields we act on; anything else is ignored.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// WorkOS AuthKit access-token claims. `iss` and `sub` are optional here only so that their
/// absence is reported as a missing claim instead of a parse error.
#[derive(Deserialize)]
struct AccessClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    email: Option<String>,
    org_id: Option<String>,
    role: Option<String>,
    roles: Option<Vec<String>>,
    permissions: Option<Vec<String>>,
    iat: Option<u64>,
}

/// The `aud` claim: one audience or several. Any other shape fails to parse (`Malformed`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|one| one == audience),
        }
    }
}

/// Verifies access tokens from one issuer for one audience.
pub struct TokenVerifier {
    config: AuthConfig,
    jwks: JwksCache,
    validation: Validation,
}

impl TokenVerifier {
    pub fn new(config: AuthConfig) -> Result<Self, JwksError> {
        let jwks = JwksCache::new(
            config.jwks_url.clone(),
            config.min_refetch_interval,
            config.max_key_age,
            config.http_timeout,
        )?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // `verify` checks `aud` itself: the decoder lets an `aud` of the wrong type through
        // when the claim is not required.
        validation.validate_aud = false;
        validation.leeway = config.leeway_secs;
        Ok(Self {
            config,
            jwks,
            validation,
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The key cache, e.g. to warm it with `refresh` at startup.
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// The identity `token` proves, or why it proves none.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong {
                max_bytes: MAX_TOKEN_BYTES,
            });
        }
        // Header checks come before any key lookup, so that junk never triggers a JWKS fetch.
        let kid = checked_key_id(token)?;
        let Some(key) = self.jwks.key(&kid).await? else {
            return Err(AuthError::UnknownKey { kid: echo(&kid) });
        };
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key, &self.validation)
            .map_err(map_jwt_error)?
            .claims;
        let now = jsonwebtoken::get_current_timestamp();
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(self.config.leeway_secs))
        {
            return Err(AuthError::NotYetValid);
        }
        if claims
            .aud
            .is_some_and(|aud| !aud.names(&self.config.audience))
        {
            return Err(AuthError::WrongAudience);
        }
        let issuer = claims
            .iss
            .ok_or_else(|| AuthError::MissingClaim("iss".into()))?;
        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        let mut roles: Vec<String> = Vec::new();
        for role in claims
            .roles
            .into_iter()
            .flatten()
            .chain(claims.permissions.into_iter().flatten())
        {
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(Identity {
            issuer,
            subject,
            email: claims.email,
            org_id: claims.org_id,
            org_role: claims.role,
            roles,
        })
    }
}

/// The `kid` of a token whose header asks for exactly RS256 and nothing we do not understand.
fn checked_key_id(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("expected three dot-separated parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url"))?;
    let header: RawHeader = serde_json::from_slice(&header)
        .map_err(|_| AuthError::Malformed("header is not a JSON object with a string alg"))?;
    // Exact match: `none`, HS256 (keyed with our public key) and every other algorithm fail.
    if header.alg != "RS256" {
        return Err(AuthError::UnsupportedAlgorithm {
            alg: echo(&header.alg),
        });
    }
    if header.crit.is_some() {
        return Err(AuthError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    let kid = header
        .kid
        .filter(|kid| !kid.is_empty())
        .ok_or(AuthError::MissingKeyId)?;
    if payload.is_empty() || signature.is_empty() {
        return Err(AuthError::Malformed("empty payload or signature"));
    }
    Ok(kid)
}

fn map_jwt_error(err: jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) | ErrorKind::Crypto(_) => {
            AuthError::BadSignature
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::Base64(_) => AuthError::Malformed("payload or signature is not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("claims are not a JSON object of the expected shape")
        }
        _ => AuthError::Malformed("token rejected by the JWT decoder"),
    }
}

fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHOED_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::routing::get;
    use axum::{Json, Router};
    use jsonwebtoken::EncodingKey;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    use rsa::RsaPrivateKey;
    use serde_json::{json, Value};

    use super::*;
    use crate::auth::dev_issuer::test_key;
    use crate::auth::{jwks_router, DevClaims, DevIssuer, JWKS_PATH};

    const ISSUER: &str = "https://dev.linkedup.test";
    const AUDIENCE: &str = "client_dev";

    fn dev_issuer(key_index: usize) -> Arc<DevIssuer> {
        Arc::new(
            DevIssuer::from_private_key(&test_key(key_index), ISSUER, AUDIENCE).expect("issuer"),
        )
    }

    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}{JWKS_PATH}")
    }

    /// A JWKS endpoint whose document can be swapped and whose hits are counted.
    struct CountingJwks {
        url: String,
        fetches: Arc<AtomicUsize>,
        document: Arc<parking_lot::RwLock<Value>>,
    }

    impl CountingJwks {
        async fn start(document: Value) -> Self {
            let fetches = Arc::new(AtomicUsize::new(0));
            let document = Arc::new(parking_lot::RwLock::new(document));
            let app = Router::new().route(
                JWKS_PATH,
                get({
                    let fetches = Arc::clone(&fetches);
                    let document = Arc::clone(&document);
                    move || {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let body = document.read().clone();
                        async move { Json(body) }
                    }
                }),
            );
            Self {
                url: serve(app).await,
                fetches,
                document,
            }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    fn verifier(url: &str) -> TokenVerifier {
        TokenVerifier::new(AuthConfig::new(ISSUER, AUDIENCE, url)).expect("verifier")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn valid_claims() -> Value {
        json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "user_01", "iat": now(), "exp": now() + 600 })
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// Signs an arbitrary header and payload, so tests can build tokens no library would.
    fn sign(header: Value, claims: Value, key: &EncodingKey, alg: Algorithm) -> String {
        let message = format!("{}.{}", b64(&header), b64(&claims));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("test signing");
        format!("{message}.{signature}")
    }

    fn rsa_key(key_index: usize) -> EncodingKey {
        let der = test_key(key_index).to_pkcs1_der().expect("der");
        EncodingKey::from_rsa_der(der.as_bytes())
    }

    fn rs256(kid: &str, claims: Value) -> String {
        let index = 0;
        sign(
            json!({ "alg": "RS256", "typ": "JWT", "kid": kid }),
            claims,
            &rsa_key(index),
            Algorithm::RS256,
        )
    }

    fn with(mut claims: Value, field: &str, value: Value) -> Value {
        claims[field] = value;
        claims
    }

    #[tokio::test]
    async fn minted_token_verifies_through_the_served_jwks() {
        let issuer = dev_issuer(0);
        let url = serve(jwks_router(Arc::clone(&issuer))).await;
        let verifier = TokenVerifier::new(issuer.auth_config(url)).expect("verifier");
        let token = issuer.mint(DevClaims {
            subject: "user_01".into(),
            email: Some("ada@example.com".into()),
            org_id: Some("org_01".into()),
            org_role: Some("admin".into()),
            roles: vec!["admin".into(), "notes:write".into()],
            ttl: Duration::from_secs(300),
        });
        let identity = verifier.verify(&token).await.expect("valid token");
        assert_eq!(
            identity,
            Identity {
                issuer: ISSUER.into(),
                subject: "user_01".into(),
                email: Some("ada@example.com".into()),
                org_id: Some("org_01".into()),
                org_role: Some("admin".into()),
                roles: vec!["admin".into(), "notes:write".into()],
            }
        );
        let bare = verifier
            .verify(&issuer.mint(DevClaims::new("user_02")))
            .await
            .expect("token without optional claims");
        assert_eq!(bare.subject, "user_02");
        assert_eq!((bare.email, bare.org_id, bare.roles), (None, None, vec![]));
    }

    #[tokio::test]
    async fn workos_claims_map_onto_identity() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let verifier = verifier(&server.url);
        let claims = json!({
            "iss": ISSUER, "aud": ["other", AUDIENCE], "sub": "user_01", "sid": "session_01",
            "iat": now(), "nbf": now(), "exp": now() + 600, "org_id": "org_01", "role": "member",
            "roles": ["member"], "permissions": ["meetings:read", "member"],
        });
        let identity = verifier
            .verify(&rs256(issuer.kid(), claims))
            .await
            .expect("valid");
        assert_eq!(identity.email, None);
        assert_eq!(identity.org_role.as_deref(), Some("member"));
        assert_eq!(identity.roles, ["member", "meetings:read"]);
    }

    /// An access token as WorkOS AuthKit issues it (the claims of its session-token reference:
    /// no `aud`) verifies against the production issuer; an `aud`, when present, must name the
    /// client id.
    #[tokio::test]
    async fn authkit_tokens_need_no_audience_but_a_present_one_must_match() {
        const CLIENT_ID: &str = "client_01HBEQKA6K4QJAS93VPE39W1JT";
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let workos_issuer = format!("https://api.workos.com/user_management/{CLIENT_ID}");
        let verifier = TokenVerifier::new(AuthConfig::new(
            workos_issuer.clone(),
            CLIENT_ID,
            server.url.clone(),
        ))
        .expect("verifier");
        let authkit = json!({
            "iss": workos_issuer, "sub": "user_01HBEQKA6K4QJAS93VPE39W1JT",
            "act": { "sub": "admin@foocorp.com" }, "org_id": "org_01HRDMC6CM357W30QMHMQ96Q0S",
            "role": "member", "roles": ["member"], "permissions": ["posts:read", "posts:write"],
            "entitlements": ["audit-logs"], "sid": "session_01HQSXZGF8FHF7A9ZZFCW4387R",
            "jti": "01HQSXZXPPFPKMDD32RKTFY6PV", "exp": now() + 300, "iat": now(),
        });
        let check = |claims: Value| {
            let token = rs256(issuer.kid(), claims);
            let verifier = &verifier;
            async move { verifier.verify(&token).await }
        };

        let identity = check(authkit.clone())
            .await
            .expect("AuthKit token without aud");
        assert_eq!(identity.issuer, workos_issuer);
        assert_eq!(identity.subject, "user_01HBEQKA6K4QJAS93VPE39W1JT");
        assert_eq!(
            identity.org_id.as_deref(),
            Some("org_01HRDMC6CM357W30QMHMQ96Q0S")
        );
        assert_eq!(identity.roles, ["member", "posts:read", "posts:write"]);

        let other_client = with(authkit.clone(), "aud", json!("client_other"));
        assert!(matches!(
            check(other_client).await,
            Err(AuthError::WrongAudience)
        ));
        let other_clients = with(authkit.clone(), "aud", json!(["client_a", "client_b"]));
        assert!(matches!(
            check(other_clients).await,
            Err(AuthError::WrongAudience)
        ));
        let ours = with(authkit.clone(), "aud", json!(CLIENT_ID));
        assert!(check(ours).await.is_ok());
        let among_others = with(authkit.clone(), "aud", json!(["client_a", CLIENT_ID]));
        assert!(check(among_others).await.is_ok());
        let other_issuer = with(
            authkit,
            "iss",
            json!("https://api.workos.com/user_management/client_other"),
        );
        assert!(matches!(
            check(other_issuer).await,
            Err(AuthError::WrongIssuer)
        ));
    }

    #[tokio::test]
    async fn claim_checks_reject_what_they_should() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let verifier = verifier(&server.url);
        let kid = issuer.kid();
        let leeway_secs = AuthConfig::DEFAULT_LEEWAY_SECS;
        let check = |claims: Value| {
            let token = rs256(kid, claims);
            let verifier = &verifier;
            async move { verifier.verify(&token).await }
        };

        let expired = with(valid_claims(), "exp", json!(now() - leeway_secs - 120));
        assert!(matches!(check(expired).await, Err(AuthError::Expired)));
        let within_leeway = with(valid_claims(), "exp", json!(now() - leeway_secs / 3));
        assert!(check(within_leeway).await.is_ok());
        let future_nbf = with(valid_claims(), "nbf", json!(now() + leeway_secs + 600));
        assert!(matches!(
            check(future_nbf).await,
            Err(AuthError::NotYetValid)
        ));
        let future_iat = with(valid_claims(), "iat", json!(now() + leeway_secs + 600));
        assert!(matches!(
            check(future_iat).await,
            Err(AuthError::NotYetValid)
        ));
        let wrong_iss = with(valid_claims(), "iss", json!("https://evil.example"));
        assert!(matches!(
            check(wrong_iss).await,
            Err(AuthError::WrongIssuer)
        ));
        let wrong_aud = with(valid_claims(), "aud", json!("client_other"));
        assert!(matches!(
            check(wrong_aud).await,
            Err(AuthError::WrongAudience)
        ));
        let wrong_auds = with(valid_claims(), "aud", json!(["a", "b"]));
        assert!(matches!(
            check(wrong_auds).await,
            Err(AuthError::WrongAudience)
        ));
        let bad_aud = with(valid_claims(), "aud", json!(7));
        assert!(matches!(check(bad_aud).await, Err(AuthError::Malformed(_))));
        for claim in ["exp", "iss", "sub"] {
            let mut claims = valid_claims();
            claims.as_object_mut().expect("object").remove(claim);
            let result = check(claims).await;
            assert!(
                matches!(&result, Err(AuthError::MissingClaim(c)) if c == claim),
                "{claim}: {result:?}"
            );
        }
        let bad_roles = with(valid_claims(), "roles", json!("admin"));
        assert!(matches!(
            check(bad_roles).await,
            Err(AuthError::Malformed(_))
        ));
        assert!(check(valid_claims()).await.is_ok());
    }

    #[tokio::test]
    async fn signatures_from_other_keys_or_over_other_payloads_fail() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let verifier = verifier(&server.url);
        let header = json!({ "alg": "RS256", "kid": issuer.kid() });

        let forged = sign(header, valid_claims(), &rsa_key(1), Algorithm::RS256);
        assert!(matches!(
            verifier.verify(&forged).await,
            Err(AuthError::BadSignature)
        ));

        let good = issuer.mint(DevClaims::new("user_01"));
        let parts: Vec<&str> = good.split('.').collect();
        let elevated = with(valid_claims(), "sub", json!("user_admin"));
        let tampered = format!("{}.{}.{}", parts[0], b64(&elevated), parts[2]);
        assert!(matches!(
            verifier.verify(&tampered).await,
            Err(AuthError::BadSignature)
        ));

        let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
        signature[0] ^= 1;
        let flipped = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode(signature)
        );
        assert!(matches!(
            verifier.verify(&flipped).await,
            Err(AuthError::BadSignature)
        ));
        assert!(verifier.verify(&good).await.is_ok());
    }

    #[tokio::test]
    async fn only_rs256_headers_with_a_kid_are_accepted() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let verifier = verifier(&server.url);
        let kid = issuer.kid();
        let payload = b64(&valid_claims());

        let none = format!("{}.{payload}.", b64(&json!({ "alg": "none", "kid": kid })));
        let unsupported = |result: Result<Identity, AuthError>| {
            matches!(result, Err(AuthError::UnsupportedAlgorithm { .. }))
        };
        assert!(unsupported(verifier.verify(&none).await));

        // The RS/HS confusion attack: HMAC keyed with the public key the verifier holds.
        let public = test_key(0).to_public_key();
        let pem = public.to_public_key_pem(LineEnding::LF).expect("pem");
        let modulus = public.n().to_bytes_be();
        for secret in [pem.as_bytes(), modulus.as_slice()] {
            let hs = sign(
                json!({ "alg": "HS256", "kid": kid }),
                valid_claims(),
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            );
            assert!(unsupported(verifier.verify(&hs).await));
        }
        for alg in ["ES256", "PS256", "RS512", "rs256", "EdDSA"] {
            let token = format!("{}.{payload}.c2ln", b64(&json!({ "alg": alg, "kid": kid })));
            assert!(unsupported(verifier.verify(&token).await), "{alg}");
        }

        let no_kid = sign(
            json!({ "alg": "RS256" }),
            valid_claims(),
            &rsa_key(0),
            Algorithm::RS256,
        );
        assert!(matches!(
            verifier.verify(&no_kid).await,
            Err(AuthError::MissingKeyId)
        ));
        let crit = sign(
            json!({ "alg": "RS256", "kid": kid, "crit": ["exp"] }),
            valid_claims(),
            &rsa_key(0),
            Algorithm::RS256,
        );
        assert!(matches!(
            verifier.verify(&crit).await,
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(server.fetches(), 0, "rejected headers never reach the JWKS");
    }

    #[tokio::test]
    async fn garbage_and_oversized_tokens_are_malformed() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let verifier = verifier(&server.url);
        let header = b64(&json!({ "alg": "RS256", "kid": issuer.kid() }));
        let garbage = [
            String::new(),
            "Bearer".into(),
            "a.b".into(),
            "a.b.c".into(),
            "....".into(),
            "a.b.c.d".into(),
            "é.ü.ß".into(),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("[1,2]")),
            format!("{}.e30.c2ln", b64(&json!({ "alg": 256 }))),
            format!("{header}..c2ln"),
            format!("{header}.e30."),
        ];
        for token in &garbage {
            let result = verifier.verify(token).await;
            assert!(
                matches!(result, Err(AuthError::Malformed(_))),
                "{token:?}: {result:?}"
            );
        }
        assert_eq!(server.fetches(), 0);
        for payload in ["%%%", "bm90IGpzb24", "e30"] {
            let token = format!("{header}.{payload}.c2ln");
            let result = verifier.verify(&token).await;
            assert!(
                matches!(
                    result,
                    Err(AuthError::Malformed(_) | AuthError::BadSignature)
                ),
                "{result:?}"
            );
        }

        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            verifier.verify(&long).await,
            Err(AuthError::TooLong { .. })
        ));
        let padded = rs256(
            issuer.kid(),
            with(valid_claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES))),
        );
        assert!(matches!(
            verifier.verify(&padded).await,
            Err(AuthError::TooLong { .. })
        ));
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let verifier = verifier(&server.url);
        let good = issuer.mint(DevClaims::new("user_01"));
        verifier.verify(&good).await.expect("valid");
        assert_eq!(server.fetches(), 1);
        let early = verifier.verify(&rs256("unknown-1", valid_claims())).await;
        assert!(matches!(early, Err(AuthError::UnknownKey { .. })));
        assert_eq!(server.fetches(), 1, "the first fetch starts the interval");

        verifier.jwks().forget_last_fetch().await;
        let first = verifier.verify(&rs256("unknown-1", valid_claims())).await;
        assert!(
            matches!(&first, Err(AuthError::UnknownKey { kid }) if kid == "unknown-1"),
            "{first:?}"
        );
        assert_eq!(server.fetches(), 2, "an unknown kid refetches");
        let second = verifier.verify(&rs256("unknown-2", valid_claims())).await;
        assert!(matches!(second, Err(AuthError::UnknownKey { .. })));
        assert_eq!(server.fetches(), 2, "no second refetch within the interval");
        verifier
            .verify(&good)
            .await
            .expect("known keys still verify");
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn a_flood_of_random_kids_costs_one_fetch() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let verifier = Arc::new(verifier(&server.url));
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let verifier = Arc::clone(&verifier);
                let token = rs256(&format!("random-{i}"), valid_claims());
                tokio::spawn(async move { verifier.verify(&token).await })
            })
            .collect();
        for task in tasks {
            let result = task.await.expect("task");
            assert!(
                matches!(result, Err(AuthError::UnknownKey { .. })),
                "{result:?}"
            );
        }
        assert_eq!(server.fetches(), 1);
        assert_eq!(verifier.jwks().fetches_started(), 1);
    }

    #[tokio::test]
    async fn rotated_keys_are_picked_up_on_the_first_unknown_kid() {
        let old = dev_issuer(0);
        let new = dev_issuer(2);
        let server = CountingJwks::start(old.jwks_json()).await;
        let mut config = AuthConfig::new(ISSUER, AUDIENCE, server.url.clone());
        config.min_refetch_interval = Duration::ZERO;
        let verifier = TokenVerifier::new(config).expect("verifier");
        let old_token = old.mint(DevClaims::new("user_01"));
        verifier.verify(&old_token).await.expect("old key");
        assert_eq!(server.fetches(), 1);

        *server.document.write() = new.jwks_json();
        let identity = verifier
            .verify(&new.mint(DevClaims::new("user_01")))
            .await
            .expect("new key after refetch");
        assert_eq!(identity.subject, "user_01");
        assert_eq!(server.fetches(), 2);
        let retired = verifier.verify(&old_token).await;
        assert!(
            matches!(retired, Err(AuthError::UnknownKey { .. })),
            "{retired:?}"
        );
    }

    /// A key the issuer withdraws stops verifying once the keys held are older than
    /// `max_key_age`, without any unknown kid to set off a refetch; within the age, a known
    /// key costs no fetch.
    #[tokio::test]
    async fn a_withdrawn_key_stops_verifying_after_the_key_age() {
        let old = dev_issuer(0);
        let new = dev_issuer(2);
        let server = CountingJwks::start(old.jwks_json()).await;
        let mut config = AuthConfig::new(ISSUER, AUDIENCE, server.url.clone());
        config.min_refetch_interval = Duration::ZERO;
        config.max_key_age = Duration::from_secs(3600);
        let fresh = TokenVerifier::new(config.clone()).expect("verifier");
        config.max_key_age = Duration::ZERO;
        let aged = TokenVerifier::new(config).expect("verifier");
        let token = old.mint(DevClaims::new("user_01"));
        fresh.verify(&token).await.expect("old key");
        aged.verify(&token).await.expect("old key");
        assert_eq!(server.fetches(), 2);

        *server.document.write() = new.jwks_json();
        fresh.verify(&token).await.expect("held keys are young");
        assert_eq!(fresh.jwks().fetches_started(), 1);
        let withdrawn = aged.verify(&token).await;
        assert!(
            matches!(withdrawn, Err(AuthError::UnknownKey { .. })),
            "{withdrawn:?}"
        );
        assert_eq!(aged.jwks().fetches_started(), 2);
        aged.verify(&new.mint(DevClaims::new("user_01")))
            .await
            .expect("the new key");
    }

    /// An issuer outage does not log everyone out: aged keys that cannot be refreshed stay in
    /// use, and the refresh is retried at most once per refetch interval.
    #[tokio::test]
    async fn aged_keys_stay_in_use_while_the_issuer_is_unreachable() {
        let issuer = dev_issuer(0);
        let server = CountingJwks::start(issuer.jwks_json()).await;
        let mut config = AuthConfig::new(ISSUER, AUDIENCE, server.url.clone());
        config.max_key_age = Duration::ZERO;
        let verifier = TokenVerifier::new(config).expect("verifier");
        let token = issuer.mint(DevClaims::new("user_01"));
        verifier.verify(&token).await.expect("first");
        *server.document.write() = json!({ "keys": [] });
        verifier.jwks().forget_last_fetch().await;
        verifier
            .verify(&token)
            .await
            .expect("refresh failed, held key");
        verifier.verify(&token).await.expect("within the interval");
        assert_eq!(verifier.jwks().fetches_started(), 2);
    }

    #[tokio::test]
    async fn an_unreachable_jwks_fails_closed_and_backs_off() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let verifier = verifier(&format!("http://{addr}{JWKS_PATH}"));
        let token = dev_issuer(0).mint(DevClaims::new("user_01"));
        let first = verifier.verify(&token).await;
        assert!(
            matches!(first, Err(AuthError::JwksFetch(JwksError::Request(_)))),
            "{first:?}"
        );
        let second = verifier.verify(&token).await;
        assert!(
            matches!(second, Err(AuthError::JwksFetch(JwksError::RecentlyFailed))),
            "{second:?}"
        );
        assert_eq!(verifier.jwks().fetches_started(), 1);
        let err = second.expect_err("failed");
        assert_eq!(err.wire_code(), "UNAUTHORIZED");
    }

    #[tokio::test]
    async fn oversized_or_broken_jwks_documents_are_refused() {
        let huge = json!({ "keys": [], "pad": "x".repeat(crate::auth::MAX_JWKS_BYTES) });
        let server = CountingJwks::start(huge).await;
        let token = dev_issuer(0).mint(DevClaims::new("user_01"));
        let result = verifier(&server.url).verify(&token).await;
        assert!(
            matches!(
                result,
                Err(AuthError::JwksFetch(JwksError::TooLarge { .. }))
            ),
            "{result:?}"
        );

        let server = CountingJwks::start(json!({ "keys": [{ "kty": "oct", "k": "AA" }] })).await;
        let result = verifier(&server.url).verify(&token).await;
        assert!(
            matches!(result, Err(AuthError::JwksFetch(JwksError::NoUsableKeys))),
            "{result:?}"
        );
    }

    #[test]
    fn test_keys_are_distinct() {
        let keys: Vec<RsaPrivateKey> = (0..3).map(test_key).collect();
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
    }
}
