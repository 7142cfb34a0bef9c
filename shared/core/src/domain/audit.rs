//! Audit events: one per state change and per token request. Never holds a secret or a token.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuditAction {
    #[serde(rename = "organization.created")]
    OrganizationCreated,
    #[serde(rename = "organization.plan_changed")]
    OrganizationPlanChanged,
    #[serde(rename = "agent.created")]
    AgentCreated,
    #[serde(rename = "agent.updated")]
    AgentUpdated,
    #[serde(rename = "agent.suspended")]
    AgentSuspended,
    #[serde(rename = "agent.reactivated")]
    AgentReactivated,
    #[serde(rename = "agent.decommissioned")]
    AgentDecommissioned,
    #[serde(rename = "agent.tokens_revoked")]
    AgentTokensRevoked,
    #[serde(rename = "credential.generated")]
    CredentialGenerated,
    #[serde(rename = "credential.rotated")]
    CredentialRotated,
    #[serde(rename = "credential.revoked")]
    CredentialRevoked,
    #[serde(rename = "token.issued")]
    TokenIssued,
    #[serde(rename = "token.denied")]
    TokenDenied,
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    #[serde(rename = "resource.created")]
    ResourceCreated,
    #[serde(rename = "resource.updated")]
    ResourceUpdated,
    #[serde(rename = "resource.deleted")]
    ResourceDeleted,
    #[serde(rename = "trusted_issuer.created")]
    TrustedIssuerCreated,
    #[serde(rename = "trusted_issuer.updated")]
    TrustedIssuerUpdated,
    #[serde(rename = "trusted_issuer.deleted")]
    TrustedIssuerDeleted,
}

impl AuditAction {
    pub const ALL: [AuditAction; 20] = [
        AuditAction::OrganizationCreated,
        AuditAction::OrganizationPlanChanged,
        AuditAction::AgentCreated,
        AuditAction::AgentUpdated,
        AuditAction::AgentSuspended,
        AuditAction::AgentReactivated,
        AuditAction::AgentDecommissioned,
        AuditAction::AgentTokensRevoked,
        AuditAction::CredentialGenerated,
        AuditAction::CredentialRotated,
        AuditAction::CredentialRevoked,
        AuditAction::TokenIssued,
        AuditAction::TokenDenied,
        AuditAction::TokenRevoked,
        AuditAction::ResourceCreated,
        AuditAction::ResourceUpdated,
        AuditAction::ResourceDeleted,
        AuditAction::TrustedIssuerCreated,
        AuditAction::TrustedIssuerUpdated,
        AuditAction::TrustedIssuerDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::OrganizationCreated => "organization.created",
            AuditAction::OrganizationPlanChanged => "organization.plan_changed",
            AuditAction::AgentCreated => "agent.created",
            AuditAction::AgentUpdated => "agent.updated",
            AuditAction::AgentSuspended => "agent.suspended",
            AuditAction::AgentReactivated => "agent.reactivated",
            AuditAction::AgentDecommissioned => "agent.decommissioned",
            AuditAction::AgentTokensRevoked => "agent.tokens_revoked",
            AuditAction::CredentialGenerated => "credential.generated",
            AuditAction::CredentialRotated => "credential.rotated",
            AuditAction::CredentialRevoked => "credential.revoked",
            AuditAction::TokenIssued => "token.issued",
            AuditAction::TokenDenied => "token.denied",
            AuditAction::TokenRevoked => "token.revoked",
            AuditAction::ResourceCreated => "resource.created",
            AuditAction::ResourceUpdated => "resource.updated",
            AuditAction::ResourceDeleted => "resource.deleted",
            AuditAction::TrustedIssuerCreated => "trusted_issuer.created",
            AuditAction::TrustedIssuerUpdated => "trusted_issuer.updated",
            AuditAction::TrustedIssuerDeleted => "trusted_issuer.deleted",
        }
    }

    pub fn parse(text: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            _ => None,
        }
    }
}

/// Who did it: the calling agent and the credential it authenticated with, as far as known.
/// An operator action through `agentidp-admin` has neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: String,
    pub agent_id: Option<Uuid>,
    pub client_id: Option<Uuid>,
    /// With a delegated token (RFC 8693): the agent acted for, the token's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_for: Option<Uuid>,
    /// With a delegated token: its actors, outermost (the one that called) first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actor_chain: Vec<Uuid>,
}

impl Actor {
    pub fn agent(agent_id: Uuid, client_id: Option<Uuid>) -> Self {
        Self {
            kind: "agent".into(),
            agent_id: Some(agent_id),
            client_id,
            ..Self::default()
        }
    }

    pub fn client(client_id: Option<Uuid>) -> Self {
        Self {
            kind: "client".into(),
            agent_id: None,
            client_id,
            ..Self::default()
        }
    }

    pub fn operator() -> Self {
        Self {
            kind: "operator".into(),
            agent_id: None,
            client_id: None,
            ..Self::default()
        }
    }

    /// The same actor, acting for `subject` through the delegated token's `chain` of actors
    /// (outermost first): the agent is the outermost actor, the one that called.
    pub fn delegated(mut self, subject: Uuid, chain: Vec<Uuid>) -> Self {
        if let Some(outermost) = chain.first() {
            if self.kind == "agent" {
                self.agent_id = Some(*outermost);
            }
            self.acting_for = Some(subject);
            self.actor_chain = chain;
        }
        self
    }

    /// Whether `agent` is this actor or one of its chain.
    pub fn involves(&self, agent: Uuid) -> bool {
        self.agent_id == Some(agent) || self.actor_chain.contains(&agent)
    }
}

/// Where a request came from, copied onto every event it causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub request_id: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub event_id: Uuid,
    pub org_id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub action: AuditAction,
    pub outcome: Outcome,
    pub actor: Actor,
    /// The agent the event is about, which filters `?agentId=`.
    pub subject_agent_id: Option<Uuid>,
    /// `agent/<id>`, `credential/<id>`, `token/<jti>`, `organization/<id>` or `resource/<id>`.
    pub resource: String,
    pub request_id: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Map<String, serde_json::Value>,
    /// When retention ends; the DynamoDB TTL attribute, and a read filter on both stores.
    pub expires_at: DateTime<Utc>,
}
