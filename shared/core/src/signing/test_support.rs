//! What the signing tests share: a token policy, and claims that satisfy it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AccessTokenClaims, TokenPolicy};

pub(super) fn policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "http://localhost:3000".into(),
        audience: "http://localhost:3000".into(),
        lifetime_seconds: 3600,
    }
}

pub(super) fn claims(now: DateTime<Utc>) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: policy().issuer,
        sub: Uuid::new_v4().to_string(),
        aud: policy().audience,
        exp: now.timestamp() + 3600,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: Uuid::new_v4().to_string(),
        client_id: Uuid::new_v4().to_string(),
        scope: "agents:read".into(),
        org_id: Uuid::new_v4().to_string(),
        act: None,
        may_act: None,
        chain_jtis: Vec::new(),
        chain_iat: None,
        cnf: None,
    }
}
