//! Access tokens (RFC 9068): their claims, what a token must satisfy and why one is refused, and
//! signing and verifying them with a [`KeySet`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::Validation;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{KeyError, KeySet};

/// The `typ` header of RFC 9068 access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Tokens larger than this are refused before any parsing. Ours are well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims of an access token (RFC 9068 §2.2), plus the organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    /// The agent id.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    pub org_id: String,
    /// Who acts for `sub` (RFC 8693 §4.1): present on tokens obtained by token exchange, nested
    /// when the subject token was itself delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<ActorClaim>,
    /// Who may act for `sub` (RFC 8693 §4.4): the agents its delegation policy names. One
    /// party is an object, as the RFC shows; several, an array of such objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<serde_json::Value>,
    /// The ids of the tokens this one was exchanged from (subject and actor tokens), and of
    /// theirs: revoking any of them makes this one inactive, checked in the read that checks
    /// its own id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_jtis: Vec<String>,
    /// When the subject's part of the chain began (the subject token's, or its own origin): a
    /// kill switch of the subject pulled after it stops this token, however late this one was
    /// issued. Each actor's own start is in its `act`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_iat: Option<i64>,
    /// The key the token is bound to (RFC 9449 §6.1): only a request with a DPoP proof made
    /// with that key may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// RFC 7800's confirmation claim, with the one member DPoP uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The RFC 7638 thumbprint of the public key.
    pub jkt: String,
}

/// An actor (RFC 8693 §4.1): the agent acting, the client it authenticated as, and the actor
/// before it in the chain, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorClaim {
    pub sub: String,
    pub client_id: String,
    /// When this actor joined the chain (its exchange, or its own token's issue if it sent
    /// one): what its kill switch is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<ActorClaim>>,
}

impl ActorClaim {
    /// The actors' agent ids, outermost first.
    pub fn agents(&self) -> Vec<Uuid> {
        self.chain()
            .iter()
            .filter_map(|actor| Uuid::parse_str(&actor.sub).ok())
            .collect()
    }

    /// The actors, innermost last: this one, the one before it, and so on.
    pub fn chain(&self) -> Vec<&ActorClaim> {
        let mut actors = vec![self];
        let mut next = self.act.as_deref();
        while let Some(actor) = next {
            actors.push(actor);
            next = actor.act.as_deref();
        }
        actors
    }
}

impl AccessTokenClaims {
    pub fn agent_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sub).ok()
    }

    pub fn org_uuid(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.org_id).ok()
    }

    pub fn client_uuid(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.client_id).ok()
    }

    /// How many actors stand between the subject and the bearer: 0 for a token of its own.
    pub fn delegation_depth(&self) -> usize {
        self.act.as_ref().map_or(0, |act| act.chain().len())
    }

    /// Every agent the token's validity depends on: the subject, then each actor. `None` if
    /// an id is not one (no token of ours has such).
    pub fn chain_agents(&self) -> Option<Vec<Uuid>> {
        let mut agents = vec![self.agent_id()?];
        if let Some(act) = &self.act {
            for actor in act.chain() {
                agents.push(Uuid::parse_str(&actor.sub).ok()?);
            }
        }
        Some(agents)
    }

    /// The actors of a delegated token, outermost first; empty for a token of its own.
    pub fn actor_agents(&self) -> Vec<Uuid> {
        self.act.as_ref().map_or_else(Vec::new, ActorClaim::agents)
    }

    /// The token's own id and its ancestors'.
    pub fn chain_token_ids(&self) -> Vec<String> {
        std::iter::once(self.jti.clone())
            .chain(self.chain_jtis.iter().cloned())
            .collect()
    }

    /// When the subject's part of the chain began: the oldest subject token this one stands on.
    pub fn origin_iat(&self) -> i64 {
        self.chain_iat.map_or(self.iat, |chain| chain.min(self.iat))
    }

    /// When each agent of [`AccessTokenClaims::chain_agents`] joined the chain, in that order:
    /// the subject's origin, then each actor's own start.
    pub fn chain_starts(&self) -> Vec<i64> {
        let mut starts = vec![self.origin_iat()];
        if let Some(act) = &self.act {
            starts.extend(
                act.chain()
                    .iter()
                    .map(|actor| actor.iat.unwrap_or(self.iat)),
            );
        }
        starts
    }
}

/// Why a token was refused. Callers answer all of these the same way; the reason is for logs
/// and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("token too large")]
    TooLarge,
    #[error("token malformed")]
    Malformed,
    #[error("token type is not at+jwt")]
    WrongType,
    #[error("unknown key id")]
    UnknownKey,
    #[error("algorithm not accepted")]
    WrongAlgorithm,
    #[error("bad signature or claims")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
}

/// What a token needs besides the key: who issues it, for whom, and for how long.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// The platform's issuer: of tokens for the management API, and the base of every
    /// organization's issuer.
    pub issuer: String,
    /// The management API's audience.
    pub audience: String,
    pub lifetime_seconds: i64,
}

impl TokenPolicy {
    /// The issuer of an organization's tokens for its own resources. Resource identifiers are
    /// unique only within an organization, so another organization may register the same one:
    /// a resource server that checks `iss` against its own organization's issuer, as every
    /// JWT verifier does, refuses that organization's tokens without knowing about `org_id`.
    pub fn organization_issuer(&self, org_id: &str) -> String {
        format!("{}/orgs/{org_id}", self.issuer)
    }

    /// The `iss` of a token for `audience`: the platform's for the management API, the
    /// organization's for any resource.
    pub fn issuer_for(&self, audience: &str, org_id: &str) -> String {
        if audience == self.audience {
            self.issuer.clone()
        } else {
            self.organization_issuer(org_id)
        }
    }
}

impl KeySet {
    /// A JWS compact serialization (RFC 7515 §7.1): header, claims and signature, base64url.
    pub fn sign(&self, claims: &AccessTokenClaims) -> Result<String, KeyError> {
        let key = self
            .current()?
            .signing
            .as_ref()
            .ok_or(KeyError::VerifyOnly)?;
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Signing(e.to_string()))?;
        let mut token = String::with_capacity(1024);
        token.push_str(&key.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = key.signer.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// Checks the signature with the key the `kid` names, pinned to that key's algorithm, then
    /// `typ`, `iss`, `aud` (the policy's audience: the management API's), and `exp`/`nbf` against
    /// `now` (the injected clock, not the system's).
    pub fn verify(
        &self,
        token: &str,
        policy: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<AccessTokenClaims, TokenRejection> {
        self.verify_for(token, policy, Some(&policy.audience), now)
    }

    /// As [`KeySet::verify`], for any audience: what introspection and revocation accept, since
    /// a token for a resource is as much the organization's as one for the management API.
    /// Whoever relies on the answer checks `aud` against its own identifier. `iss` must be the
    /// one [`TokenPolicy::issuer_for`] gives the token's audience and organization.
    pub fn verify_any_audience(
        &self,
        token: &str,
        policy: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<AccessTokenClaims, TokenRejection> {
        self.verify_for(token, policy, None, now)
    }

    fn verify_for(
        &self,
        token: &str,
        policy: &TokenPolicy,
        audience: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<AccessTokenClaims, TokenRejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRejection::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
        if header
            .typ
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
            != Some(ACCESS_TOKEN_TYPE)
        {
            return Err(TokenRejection::WrongType);
        }
        let kid = header.kid.ok_or(TokenRejection::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenRejection::UnknownKey)?;
        if header.alg != key.alg.jwt_algorithm() {
            return Err(TokenRejection::WrongAlgorithm);
        }
        let mut validation = Validation::new(key.alg.jwt_algorithm());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]);
        match audience {
            Some(audience) => {
                validation.set_issuer(&[&policy.issuer]);
                validation.set_audience(&[audience]);
            }
            // Checked below, once the claims say which organization's issuer it must be.
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<AccessTokenClaims>(token, &key.decoding, &validation)
            .map_err(|_| TokenRejection::Invalid)?;
        let claims = data.claims;
        if audience.is_none() && claims.iss != policy.issuer_for(&claims.aud, &claims.org_id) {
            return Err(TokenRejection::Invalid);
        }
        let now = now.timestamp();
        if claims.exp <= now {
            return Err(TokenRejection::Expired);
        }
        if claims.nbf > now {
            return Err(TokenRejection::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::test_support::{claims, policy};
    use crate::signing::{KeySetDocument, SigningAlgorithm};

    #[test]
    fn each_algorithm_signs_tokens_that_verify_with_its_own_key_set() {
        for alg in [
            SigningAlgorithm::RS256,
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
        ] {
            let now = Utc::now();
            let keys = KeySet::from_document(&KeySetDocument::generate(alg, now).unwrap()).unwrap();
            let token = keys.sign(&claims(now)).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert!(header.kid.is_some());
            assert_eq!(
                keys.verify(&token, &policy(), now).unwrap().scope,
                "agents:read",
                "{alg:?}"
            );
            assert_eq!(keys.jwks().keys[0].alg, alg.as_str());
        }
    }

    #[test]
    fn a_token_for_a_resource_verifies_only_where_any_audience_is_accepted() {
        let now = Utc::now();
        let keys =
            KeySet::from_document(&KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap())
                .unwrap();
        let plain = claims(now);
        let for_mcp = AccessTokenClaims {
            iss: policy().organization_issuer(&plain.org_id),
            aud: "https://mcp.example.com/mcp".into(),
            ..plain
        };
        let token = keys.sign(&for_mcp).unwrap();
        assert_eq!(
            keys.verify(&token, &policy(), now).unwrap_err(),
            TokenRejection::Invalid,
            "the management API's audience is not this resource's"
        );
        // What the resource server configures: its organization's issuer and its identifier.
        let mcp = TokenPolicy {
            issuer: for_mcp.iss.clone(),
            audience: for_mcp.aud.clone(),
            ..policy()
        };
        assert_eq!(keys.verify(&token, &mcp, now).unwrap().aud, for_mcp.aud);
        let other_resource = TokenPolicy {
            audience: "https://other.example.com/mcp".into(),
            ..mcp.clone()
        };
        assert!(keys.verify(&token, &other_resource, now).is_err());
        assert_eq!(
            keys.verify_any_audience(&token, &policy(), now)
                .unwrap()
                .aud,
            for_mcp.aud
        );
        let wrong_issuer = TokenPolicy {
            issuer: "https://elsewhere.example.com".into(),
            ..policy()
        };
        assert!(
            keys.verify_any_audience(&token, &wrong_issuer, now)
                .is_err(),
            "any audience, but still only our issuer"
        );
    }

    #[test]
    fn any_audience_still_requires_the_issuer_of_the_tokens_audience_and_organization() {
        let now = Utc::now();
        let keys =
            KeySet::from_document(&KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap())
                .unwrap();
        let plain = claims(now);
        let other_org = Uuid::new_v4().to_string();
        for (iss, aud) in [
            // A resource token under the platform's issuer.
            (policy().issuer, "https://mcp.example.com/mcp".to_owned()),
            // A resource token under another organization's issuer.
            (
                policy().organization_issuer(&other_org),
                "https://mcp.example.com/mcp".to_owned(),
            ),
            // A management token under the organization's issuer.
            (
                policy().organization_issuer(&plain.org_id),
                policy().audience,
            ),
        ] {
            let token = keys
                .sign(&AccessTokenClaims {
                    iss: iss.clone(),
                    aud: aud.clone(),
                    ..plain.clone()
                })
                .unwrap();
            assert_eq!(
                keys.verify_any_audience(&token, &policy(), now)
                    .unwrap_err(),
                TokenRejection::Invalid,
                "iss {iss}, aud {aud}"
            );
        }
    }
}
