//! Call tokens: what a participant's video client connects to Stream with. A Stream user token
//! (an HS256 JWT signed with the API secret whose `user_id` is the LinkedUp user id, as Stream's
//! server SDKs make it) restricted by `call_cids` to the one call of the meeting and with an
//! expiry, so a token kept after the meeting, or leaked, opens no other call and stops working.
//! Minted locally: Stream is not called.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::{Secret, StreamError};

/// How long a call token is valid by default.
pub const DEFAULT_CALL_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// The claims of a call token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallClaims {
    pub user_id: String,
    /// The calls (`<call type>:<call id>`) the token admits to: one.
    pub call_cids: Vec<String>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
}

/// A minted token and when it expires (ms since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallToken {
    pub token: String,
    pub expires_at_ms: i64,
}

/// Signs a token admitting `user_id` to the call `call_cid` from `now_ms` for `ttl`.
pub fn mint_call_token(
    secret: &Secret,
    user_id: &str,
    call_cid: &str,
    now_ms: i64,
    ttl: Duration,
) -> Result<CallToken, StreamError> {
    if secret.expose().is_empty() {
        return Err(StreamError::InvalidRequest(
            "the API secret is empty".into(),
        ));
    }
    let iat = now_ms.div_euclid(1_000);
    let exp = iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let claims = CallClaims {
        user_id: user_id.to_string(),
        call_cids: vec![call_cid.to_string()],
        iat,
        exp,
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|e| StreamError::InvalidRequest(format!("cannot sign the call token: {e}")))?;
    Ok(CallToken {
        token,
        expires_at_ms: exp.saturating_mul(1_000),
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[test]
    fn a_token_names_the_user_and_only_the_call_and_verifies_with_the_secret() {
        let secret = Secret::new("s3cret");
        let t = mint_call_token(
            &secret,
            "u1",
            "default:m1",
            1_700_000_000_500,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(t.expires_at_ms, 1_700_000_060_000);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<CallClaims>(
            &t.token,
            &DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(
            claims,
            CallClaims {
                user_id: "u1".into(),
                call_cids: vec!["default:m1".into()],
                iat: 1_700_000_000,
                exp: 1_700_000_060,
            }
        );
        assert!(jsonwebtoken::decode::<CallClaims>(
            &t.token,
            &DecodingKey::from_secret(b"other"),
            &validation
        )
        .is_err());
    }

    #[test]
    fn an_empty_secret_signs_nothing() {
        assert!(mint_call_token(
            &Secret::new(""),
            "u",
            "default:m",
            0,
            DEFAULT_CALL_TOKEN_TTL
        )
        .is_err());
    }
}
