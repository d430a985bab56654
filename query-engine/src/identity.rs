//! The verified caller identity handed to functions as `ctx.auth`. The transport verifies
//! tokens and builds this; functions never parse tokens themselves.

use serde::{Deserialize, Serialize};

/// Who is calling, as established by a verified token (OIDC-style claims).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The token's issuer (`iss`).
    pub issuer: String,
    /// The subject (`sub`): stable user id at the issuer (a WorkOS user id in production).
    pub subject: String,
    pub email: Option<String>,
    /// Organisation the session is scoped to, if any.
    pub org_id: Option<String>,
    /// The caller's role in that organisation (e.g. `admin`, `member`).
    pub org_role: Option<String>,
    /// Further roles/permissions carried by the token.
    pub roles: Vec<String>,
}

impl Identity {
    /// `issuer|subject`: unique across issuers; the key functions should use to link users.
    pub fn token_identifier(&self) -> String {
        format!("{}|{}", self.issuer, self.subject)
    }
}
