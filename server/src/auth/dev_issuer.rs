//! The development-mode token issuer: an RSA key pair, kept across restarts as a PEM file,
//! that mints WorkOS-shaped RS256 access tokens and publishes its JWKS over HTTP, so that
//! development exercises the same `TokenVerifier` path as production.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::AuthConfig;

/// Where `jwks_router` serves the issuer's keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// File name of the persisted key inside the directory given to `load_or_generate`.
pub const KEY_FILE_NAME: &str = "dev-issuer-key.pem";
const KEY_BITS: usize = 2048;
/// Bytes of SHA-256(n || e) kept in the `kid`: 128 bits cannot collide by accident.
const KID_DIGEST_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("generating the RSA key failed: {0}")]
    Generate(#[source] rsa::Error),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a PKCS#8 PEM RSA private key ({source}); delete it to generate a new key"
    )]
    Pem {
        path: PathBuf,
        source: rsa::pkcs8::Error,
    },
    #[error("encoding the RSA key failed: {0}")]
    Encode(String),
    #[error("the key cannot sign RS256 tokens: {0}")]
    Unusable(#[source] jsonwebtoken::errors::Error),
}

/// What a development token says about its holder; mirrors the WorkOS access-token claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevClaims {
    pub subject: String,
    pub email: Option<String>,
    pub org_id: Option<String>,
    pub org_role: Option<String>,
    pub roles: Vec<String>,
    pub ttl: Duration,
}

impl DevClaims {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

    /// Claims for `subject` with no organisation, no roles and the default one-hour lifetime.
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            email: None,
            org_id: None,
            org_role: None,
            roles: Vec::new(),
            ttl: Self::DEFAULT_TTL,
        }
    }
}

/// The JWT payload as minted; field names are the WorkOS AuthKit ones.
#[derive(Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
}

/// A local RS256 issuer with one key.
pub struct DevIssuer {
    issuer: String,
    audience: String,
    kid: String,
    encoding_key: EncodingKey,
    modulus_b64: String,
    exponent_b64: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// An issuer with a fresh key that lives only as long as the process.
    pub fn generate(
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, DevIssuerError> {
        let key = generate_key()?;
        Self::from_private_key(&key, issuer, audience)
    }

    /// An issuer whose key is `dir/dev-issuer-key.pem` (PKCS#8, mode 0600), created on first
    /// use, so tokens minted before a restart still verify after it.
    pub fn load_or_generate(
        dir: &Path,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, DevIssuerError> {
        let path = dir.join(KEY_FILE_NAME);
        let key = match fs::read_to_string(&path) {
            Ok(pem) => parse_key(&path, &pem)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => create_key_file(dir, &path)?,
            Err(source) => return Err(DevIssuerError::Read { path, source }),
        };
        Self::from_private_key(&key, issuer, audience)
    }

    /// An issuer signing with `key`; fails if the key cannot produce RS256 signatures.
    pub fn from_private_key(
        key: &RsaPrivateKey,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, DevIssuerError> {
        let der = key
            .to_pkcs1_der()
            .map_err(|err| DevIssuerError::Encode(err.to_string()))?;
        let encoding_key = EncodingKey::from_rsa_der(der.as_bytes());
        let modulus = key.n().to_bytes_be();
        let exponent = key.e().to_bytes_be();
        let digest = Sha256::new()
            .chain_update(&modulus)
            .chain_update(&exponent)
            .finalize();
        let issuer = Self {
            issuer: issuer.into(),
            audience: audience.into(),
            kid: URL_SAFE_NO_PAD.encode(&digest[..KID_DIGEST_BYTES]),
            encoding_key,
            modulus_b64: URL_SAFE_NO_PAD.encode(&modulus),
            exponent_b64: URL_SAFE_NO_PAD.encode(&exponent),
        };
        // Sign once now so that `mint` can rely on the key being usable.
        issuer
            .try_mint(&DevClaims::new("probe"))
            .map_err(DevIssuerError::Unusable)?;
        Ok(issuer)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Key id: base64url of the first 16 bytes of SHA-256(n || e), stable for a given key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Verifier settings that accept this issuer's tokens, given where its JWKS is served.
    pub fn auth_config(&self, jwks_url: impl Into<String>) -> AuthConfig {
        AuthConfig::new(self.issuer.clone(), self.audience.clone(), jwks_url)
    }

    /// An RS256 access token for `claims`, issued now and valid for `claims.ttl`.
    pub fn mint(&self, claims: DevClaims) -> String {
        // `from_private_key` signed a probe with this key, and the claims are plain strings
        // and integers, so encoding cannot fail here.
        self.try_mint(&claims)
            .expect("dev issuer key signed at construction")
    }

    /// The JWKS document publishing this issuer's public key.
    pub fn jwks_json(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": self.kid,
                "n": self.modulus_b64,
                "e": self.exponent_b64,
            }]
        })
    }

    fn try_mint(&self, claims: &DevClaims) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let payload = MintedClaims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: &claims.subject,
            iat: now,
            exp: now.saturating_add(claims.ttl.as_secs()),
            email: claims.email.as_deref(),
            org_id: claims.org_id.as_deref(),
            role: claims.org_role.as_deref(),
            roles: &claims.roles,
        };
        jsonwebtoken::encode(&header, &payload, &self.encoding_key)
    }
}

/// Serves `GET /.well-known/jwks.json` with the issuer's keys, for merging into the HTTP app.
pub fn jwks_router(issuer: Arc<DevIssuer>) -> Router {
    let body = bytes::Bytes::from(issuer.jwks_json().to_string());
    Router::new().route(
        JWKS_PATH,
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

fn generate_key() -> Result<RsaPrivateKey, DevIssuerError> {
    RsaPrivateKey::new(&mut rand::thread_rng(), KEY_BITS).map_err(DevIssuerError::Generate)
}

fn parse_key(path: &Path, pem: &str) -> Result<RsaPrivateKey, DevIssuerError> {
    RsaPrivateKey::from_pkcs8_pem(pem).map_err(|source| DevIssuerError::Pem {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a new key into place whole (`files::create_once`); if another start got there
/// first, its key wins and is read back.
fn create_key_file(dir: &Path, path: &Path) -> Result<RsaPrivateKey, DevIssuerError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DevIssuerError::Write { path, source }
    };
    crate::files::create_private_dir(dir).map_err(write_err(dir))?;
    let key = generate_key()?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| DevIssuerError::Encode(err.to_string()))?;
    if crate::files::create_once(path, pem.as_bytes(), true).map_err(write_err(path))? {
        return Ok(key);
    }
    let pem = fs::read_to_string(path).map_err(|source| DevIssuerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_key(path, &pem)
}

/// RSA keys shared by the auth tests: generating one costs far more than the tests using it.
#[cfg(test)]
pub(crate) fn test_key(index: usize) -> RsaPrivateKey {
    use std::sync::OnceLock;
    static KEYS: [OnceLock<RsaPrivateKey>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    KEYS[index]
        .get_or_init(|| generate_key().expect("test key generation"))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_derived_from_the_public_key() {
        let a = DevIssuer::from_private_key(&test_key(0), "iss", "aud").expect("issuer");
        let again = DevIssuer::from_private_key(&test_key(0), "other", "x").expect("issuer");
        let b = DevIssuer::from_private_key(&test_key(1), "iss", "aud").expect("issuer");
        assert_eq!(a.kid(), again.kid());
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.jwks_json(), again.jwks_json());
    }

    #[test]
    fn jwks_document_publishes_the_public_key() {
        let issuer = DevIssuer::from_private_key(&test_key(0), "iss", "aud").expect("issuer");
        let jwks = issuer.jwks_json();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["kid"], issuer.kid());
        assert_eq!(key["e"], "AQAB");
        let n = URL_SAFE_NO_PAD
            .decode(key["n"].as_str().expect("n is a string"))
            .expect("n is base64url");
        assert_eq!(n, test_key(0).n().to_bytes_be());
        assert!(jwks.to_string().find("\"d\"").is_none(), "no private parts");
    }

    #[test]
    fn minted_token_carries_the_requested_claims() {
        let issuer =
            DevIssuer::from_private_key(&test_key(0), "https://dev", "client").expect("issuer");
        let token = issuer.mint(DevClaims {
            subject: "user_1".into(),
            email: Some("a@example.com".into()),
            org_id: Some("org_1".into()),
            org_role: Some("admin".into()),
            roles: vec!["notes:write".into()],
            ttl: Duration::from_secs(120),
        });
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(issuer.kid()));
        let payload = token.split('.').nth(1).expect("payload part");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
                .expect("json");
        assert_eq!(claims["iss"], "https://dev");
        assert_eq!(claims["aud"], "client");
        assert_eq!(claims["sub"], "user_1");
        assert_eq!(claims["role"], "admin");
        assert_eq!(claims["org_id"], "org_1");
        assert_eq!(claims["roles"][0], "notes:write");
        let iat = claims["iat"].as_u64().expect("iat");
        assert_eq!(claims["exp"].as_u64(), Some(iat + 120));
    }

    #[test]
    fn key_file_survives_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let first = DevIssuer::load_or_generate(&data, "iss", "aud").expect("first start");
        let second = DevIssuer::load_or_generate(&data, "iss", "aud").expect("restart");
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.jwks_json(), second.jwks_json());
        let path = data.join(KEY_FILE_NAME);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("key file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(&data)
            .expect("data dir")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from(KEY_FILE_NAME)]);
    }

    #[test]
    fn corrupt_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE_NAME);
        fs::write(&path, "not a key").expect("write");
        let err = DevIssuer::load_or_generate(dir.path(), "iss", "aud").expect_err("corrupt");
        assert!(matches!(err, DevIssuerError::Pem { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("still there"), "not a key");
    }
}
