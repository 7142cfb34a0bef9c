//! The JSON shapes of responses: camelCase, timestamps with milliseconds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use agentidp_core::client_keys::PublicKeys;
use agentidp_core::domain::agent::DelegationPolicy;
use agentidp_core::domain::credential::EffectiveCredentialStatus;
use agentidp_core::domain::time::format_timestamp;
use agentidp_core::domain::{
    Actor, Agent, AuditEvent, Credential, CredentialProof, Resource, TrustedIssuer,
};
use agentidp_core::secret::ClientSecret;
use agentidp_core::service::credentials::IssuedCredential;

fn ts(at: &DateTime<Utc>) -> String {
    format_timestamp(at)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub capabilities: Vec<String>,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub status: &'static str,
    pub created_at: String,
    pub updated_at: String,
    pub decommissioned_at: Option<String>,
    /// Who may act for the agent (token exchange); absent when no one may.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<DelegationPolicy>,
    /// When its kill switch was last pulled; absent when never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_not_before: Option<String>,
    /// Whether its tokens must be DPoP-bound.
    pub require_dpop: bool,
}

impl From<&Agent> for AgentView {
    fn from(a: &Agent) -> Self {
        Self {
            agent_id: a.agent_id,
            name: a.name.clone(),
            description: a.description.clone(),
            owner: a.owner.clone(),
            capabilities: a.capabilities.clone(),
            scopes: a.scopes.clone(),
            metadata: a.metadata.clone(),
            status: a.status.as_str(),
            created_at: ts(&a.created_at),
            updated_at: ts(&a.updated_at),
            decommissioned_at: a.decommissioned_at.as_ref().map(ts),
            delegation: a.delegation.clone(),
            tokens_not_before: a.tokens_not_before.as_ref().map(ts),
            require_dpop: a.require_dpop,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    pub resource_id: Uuid,
    pub identifier: String,
    pub name: String,
    pub description: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Resource> for ResourceView {
    fn from(r: &Resource) -> Self {
        Self {
            resource_id: r.resource_id,
            identifier: r.identifier.clone(),
            name: r.name.clone(),
            description: r.description.clone(),
            scopes: r.scopes.clone(),
            created_at: ts(&r.created_at),
            updated_at: ts(&r.updated_at),
        }
    }
}

/// What a credential is proved with, as shown: of inline keys only their ids, the URL of
/// published ones, or the federated identity; never a secret or its hash.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProofView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl From<&CredentialProof> for ProofView {
    fn from(proof: &CredentialProof) -> Self {
        match proof {
            CredentialProof::Secret { .. } => Self::default(),
            CredentialProof::PublicKeys(keys) => Self::from(keys),
            CredentialProof::Federated(identity) => Self {
                issuer: Some(identity.issuer.clone()),
                subject: Some(identity.subject.clone()),
                ..Self::default()
            },
        }
    }
}

impl From<&PublicKeys> for ProofView {
    fn from(keys: &PublicKeys) -> Self {
        Self {
            key_ids: keys.key_ids(),
            jwks_uri: keys.jwks_uri().map(|uri| uri.as_str().to_owned()),
            ..Self::default()
        }
    }
}

/// A credential as listed: never the secret, never the hash; of keys, only their ids.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub credential_id: Uuid,
    pub client_id: Uuid,
    #[serde(rename = "type")]
    pub credential_type: &'static str,
    #[serde(flatten)]
    pub proof: ProofView,
    pub status: EffectiveCredentialStatus,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl CredentialView {
    pub fn new(c: &Credential, now: DateTime<Utc>) -> Self {
        Self {
            credential_id: c.credential_id,
            client_id: c.client_id,
            credential_type: c.proof.credential_type().as_str(),
            proof: ProofView::from(&c.proof),
            status: c.effective_status(now),
            created_at: ts(&c.created_at),
            expires_at: c.expires_at.as_ref().map(ts),
            revoked_at: c.revoked_at.as_ref().map(ts),
        }
    }
}

/// The one response that shows the secret (of a client_secret credential): generation and
/// rotation.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCredentialView<'a> {
    pub credential_id: Uuid,
    pub client_id: Uuid,
    #[serde(rename = "type")]
    pub credential_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<&'a str>,
    #[serde(flatten)]
    pub proof: ProofView,
    pub status: EffectiveCredentialStatus,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl<'a> IssuedCredentialView<'a> {
    pub fn new(issued: &'a IssuedCredential, now: DateTime<Utc>) -> Self {
        let c = &issued.credential;
        Self {
            credential_id: c.credential_id,
            client_id: c.client_id,
            credential_type: c.proof.credential_type().as_str(),
            client_secret: issued.client_secret.as_ref().map(ClientSecret::expose),
            proof: ProofView::from(&c.proof),
            status: c.effective_status(now),
            created_at: ts(&c.created_at),
            expires_at: c.expires_at.as_ref().map(ts),
            revoked_at: c.revoked_at.as_ref().map(ts),
        }
    }
}

/// A trusted issuer: of inline keys only their ids, as for credentials.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuerView {
    pub issuer_id: Uuid,
    pub issuer: String,
    pub audience: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    pub description: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&TrustedIssuer> for TrustedIssuerView {
    fn from(t: &TrustedIssuer) -> Self {
        let keys = ProofView::from(&t.keys);
        Self {
            issuer_id: t.issuer_id,
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            key_ids: keys.key_ids,
            jwks_uri: keys.jwks_uri,
            description: t.description.clone(),
            created_at: ts(&t.created_at),
            updated_at: ts(&t.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEventView {
    pub event_id: Uuid,
    pub timestamp: String,
    pub action: &'static str,
    pub outcome: &'static str,
    pub actor: Actor,
    pub agent_id: Option<Uuid>,
    pub resource: String,
    pub request_id: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl From<&AuditEvent> for AuditEventView {
    fn from(e: &AuditEvent) -> Self {
        Self {
            event_id: e.event_id,
            timestamp: ts(&e.timestamp),
            action: e.action.as_str(),
            outcome: e.outcome.as_str(),
            actor: e.actor.clone(),
            agent_id: e.subject_agent_id,
            resource: e.resource.clone(),
            request_id: e.request_id.clone(),
            source_ip: e.source_ip.clone(),
            user_agent: e.user_agent.clone(),
            details: e.details.clone(),
        }
    }
}

/// `{data, total, page, limit}` of the offset-paginated lists.
#[derive(Debug, Serialize)]
pub struct PageView<T: Serialize> {
    pub data: Vec<T>,
    pub total: usize,
    pub page: u32,
    pub limit: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPageView {
    pub data: Vec<AuditEventView>,
    pub next_cursor: Option<String>,
    pub limit: usize,
}
