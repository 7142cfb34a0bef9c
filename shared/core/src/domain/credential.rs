//! Client credentials: `active` → `revoked` (terminal), with an optional expiry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AgentStatus;
use crate::client_keys::PublicKeys;

/// The stored status. `expired` is not stored: it is what an active credential past its
/// `expiresAt` shows as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialStatus {
    Active,
    Revoked,
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Active => "active",
            CredentialStatus::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<CredentialStatus> {
        match text {
            "active" => Some(CredentialStatus::Active),
            "revoked" => Some(CredentialStatus::Revoked),
            _ => None,
        }
    }
}

/// What a listing shows and filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EffectiveCredentialStatus {
    Active,
    Expired,
    Revoked,
}

impl EffectiveCredentialStatus {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "expired" => Some(Self::Expired),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// The kinds of credential: what `type` says in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialType {
    ClientSecret,
    PrivateKeyJwt,
    Federated,
}

impl CredentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::ClientSecret => "client_secret",
            CredentialType::PrivateKeyJwt => "private_key_jwt",
            CredentialType::Federated => "federated",
        }
    }

    pub fn parse(text: &str) -> Option<CredentialType> {
        match text {
            "client_secret" => Some(CredentialType::ClientSecret),
            "private_key_jwt" => Some(CredentialType::PrivateKeyJwt),
            "federated" => Some(CredentialType::Federated),
            _ => None,
        }
    }
}

/// A workload identity another issuer vouches for (workload identity federation): the tokens
/// of `issuer`, one of the organization's trusted issuers, whose `sub` is `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedIdentity {
    pub issuer: String,
    pub subject: String,
}

/// What a client proves it holds to use a credential.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialProof {
    /// A client secret, kept only as its bcrypt hash.
    Secret { hash: String },
    /// The public keys whose private halves sign its client assertions (RFC 7523 §2.2).
    PublicKeys(PublicKeys),
    /// A token of a trusted issuer about this subject (RFC 7523 §2.1).
    Federated(FederatedIdentity),
}

impl CredentialProof {
    pub fn credential_type(&self) -> CredentialType {
        match self {
            CredentialProof::Secret { .. } => CredentialType::ClientSecret,
            CredentialProof::PublicKeys(_) => CredentialType::PrivateKeyJwt,
            CredentialProof::Federated(_) => CredentialType::Federated,
        }
    }

    pub fn secret_hash(&self) -> Option<&str> {
        match self {
            CredentialProof::Secret { hash } => Some(hash),
            CredentialProof::PublicKeys(_) | CredentialProof::Federated(_) => None,
        }
    }

    pub fn public_keys(&self) -> Option<&PublicKeys> {
        match self {
            CredentialProof::PublicKeys(keys) => Some(keys),
            CredentialProof::Secret { .. } | CredentialProof::Federated(_) => None,
        }
    }

    pub fn federated(&self) -> Option<&FederatedIdentity> {
        match self {
            CredentialProof::Federated(identity) => Some(identity),
            CredentialProof::Secret { .. } | CredentialProof::PublicKeys(_) => None,
        }
    }

    /// What a store keeps beside the (empty) secret hash for a credential without a secret:
    /// the public keys' stored form, or `{"federated": {"issuer": ..., "subject": ...}}`.
    pub fn stored_document(&self) -> Option<String> {
        match self {
            CredentialProof::Secret { .. } => None,
            CredentialProof::PublicKeys(keys) => Some(keys.to_json()),
            CredentialProof::Federated(identity) => Some(
                serde_json::json!({
                    "federated": { "issuer": identity.issuer, "subject": identity.subject }
                })
                .to_string(),
            ),
        }
    }

    /// The proof from what a store kept: the document when there is one, else the hash.
    pub fn from_stored(hash: String, document: Option<&str>) -> Result<Self, String> {
        let Some(text) = document else {
            return Ok(CredentialProof::Secret { hash });
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("the stored credential proof is not JSON: {e}"))?;
        match value.get("federated") {
            Some(federated) => {
                let member = |name: &str| {
                    federated
                        .get(name)
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| format!("the stored federated identity has no {name}"))
                };
                Ok(CredentialProof::Federated(FederatedIdentity {
                    issuer: member("issuer")?,
                    subject: member("subject")?,
                }))
            }
            None => PublicKeys::from_json(text).map(CredentialProof::PublicKeys),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub credential_id: Uuid,
    pub client_id: Uuid,
    pub agent_id: Uuid,
    pub org_id: Uuid,
    /// The secret's bcrypt hash (which never leaves the server) or the public keys.
    pub proof: CredentialProof,
    pub status: CredentialStatus,
    /// A copy of the agent's status, kept in step on every agent transition, so the token
    /// endpoint learns both from one read.
    pub agent_status: AgentStatus,
    /// A copy of the agent's scopes, kept in step like `agent_status`, for the same reason.
    pub agent_scopes: Vec<String>,
    /// A copy of who the agent's delegation policy lets act for it, kept in step likewise: its
    /// tokens carry it as `may_act` without the agent record being read.
    pub agent_may_act: Vec<Uuid>,
    /// A copy of whether the agent's tokens must be DPoP-bound, kept in step likewise.
    pub agent_requires_dpop: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub version: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("credential_id", &self.credential_id)
            .field("client_id", &self.client_id)
            .field("agent_id", &self.agent_id)
            .field("org_id", &self.org_id)
            .field("type", &self.proof.credential_type())
            .field(
                "key_ids",
                &self.proof.public_keys().and_then(PublicKeys::key_ids),
            )
            .field("status", &self.status)
            .field("agent_status", &self.agent_status)
            .field("agent_scopes", &self.agent_scopes)
            .field("agent_may_act", &self.agent_may_act)
            .field("agent_requires_dpop", &self.agent_requires_dpop)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("version", &self.version)
            .finish()
    }
}

impl Credential {
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    pub fn effective_status(&self, now: DateTime<Utc>) -> EffectiveCredentialStatus {
        match self.status {
            CredentialStatus::Revoked => EffectiveCredentialStatus::Revoked,
            CredentialStatus::Active if self.is_expired_at(now) => {
                EffectiveCredentialStatus::Expired
            }
            CredentialStatus::Active => EffectiveCredentialStatus::Active,
        }
    }

    /// Whether a presented secret for this credential may be checked at all: a revoked or
    /// expired credential, or one whose agent is not active, never yields a token.
    pub fn may_obtain_tokens(&self, now: DateTime<Utc>) -> bool {
        self.effective_status(now) == EffectiveCredentialStatus::Active
            && self.agent_status.may_obtain_tokens()
    }

    pub fn may_be_rotated(&self) -> bool {
        self.status == CredentialStatus::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn credential(
        status: CredentialStatus,
        expires_in: Option<Duration>,
        agent: AgentStatus,
    ) -> (Credential, DateTime<Utc>) {
        let now = Utc::now();
        (
            Credential {
                credential_id: Uuid::new_v4(),
                client_id: Uuid::new_v4(),
                agent_id: Uuid::new_v4(),
                org_id: Uuid::new_v4(),
                proof: CredentialProof::Secret {
                    hash: "$2b$04$hash".into(),
                },
                status,
                agent_status: agent,
                agent_scopes: Vec::new(),
                agent_may_act: Vec::new(),
                agent_requires_dpop: false,
                created_at: now,
                expires_at: expires_in.map(|d| now + d),
                revoked_at: None,
                rotated_at: None,
                version: 1,
            },
            now,
        )
    }

    #[test]
    fn an_active_unexpired_credential_of_an_active_agent_may_obtain_tokens() {
        let (c, now) = credential(
            CredentialStatus::Active,
            Some(Duration::hours(1)),
            AgentStatus::Active,
        );
        assert!(c.may_obtain_tokens(now));
    }

    #[test]
    fn an_expired_credential_shows_as_expired_and_gets_no_tokens() {
        let (c, now) = credential(
            CredentialStatus::Active,
            Some(Duration::seconds(-1)),
            AgentStatus::Active,
        );
        assert_eq!(c.effective_status(now), EffectiveCredentialStatus::Expired);
        assert!(!c.may_obtain_tokens(now));
    }

    #[test]
    fn expiry_is_reached_at_the_exact_instant() {
        let (c, now) = credential(
            CredentialStatus::Active,
            Some(Duration::zero()),
            AgentStatus::Active,
        );
        assert!(c.is_expired_at(now));
    }

    #[test]
    fn a_revoked_credential_cannot_be_rotated_or_used() {
        let (c, now) = credential(CredentialStatus::Revoked, None, AgentStatus::Active);
        assert!(!c.may_be_rotated());
        assert!(!c.may_obtain_tokens(now));
        assert_eq!(c.effective_status(now), EffectiveCredentialStatus::Revoked);
    }

    #[test]
    fn a_credential_of_a_suspended_or_decommissioned_agent_gets_no_tokens() {
        for agent in [AgentStatus::Suspended, AgentStatus::Decommissioned] {
            let (c, now) = credential(CredentialStatus::Active, None, agent);
            assert!(!c.may_obtain_tokens(now));
        }
    }

    #[test]
    fn debug_output_never_shows_the_hash() {
        let (c, _) = credential(CredentialStatus::Active, None, AgentStatus::Active);
        assert!(!format!("{c:?}").contains("$2b$"));
    }
}
