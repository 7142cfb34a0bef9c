//! Conversions between rows and domain values, and SQLite's errors as the store's.

use chrono::{DateTime, Utc};
use rusqlite::{ErrorCode, Row};
use uuid::Uuid;

use agentidp_core::client_keys::PublicKeys;
use agentidp_core::domain::{
    Actor, Agent, AgentStatus, AuditAction, AuditEvent, Credential, CredentialProof,
    CredentialStatus, Organization, Outcome, Plan, Resource, ResourceTarget, TrustedIssuer,
};
use agentidp_core::store::{StoreError, StoreResult};

/// SQLite's error as the store's: busy or locked is worth a retry later, the rest is not.
pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::unavailable("SQLite", e)
        }
        _ => StoreError::internal("SQLite", e),
    }
}

// Rows are read in two steps: rusqlite's row closure can only fail with its own error type, so it
// copies the columns out, and decoding into domain values (which can fail on corrupt text) runs
// after, reporting `StoreError::Internal`.

pub(crate) struct RawOrg {
    org_id: String,
    name: String,
    plan: String,
    created_at_ms: i64,
}

pub(crate) fn raw_org(row: &Row<'_>) -> rusqlite::Result<RawOrg> {
    Ok(RawOrg {
        org_id: row.get(0)?,
        name: row.get(1)?,
        plan: row.get(2)?,
        created_at_ms: row.get(3)?,
    })
}

impl RawOrg {
    pub(crate) fn decode(self) -> StoreResult<Organization> {
        Ok(Organization {
            org_id: uuid(&self.org_id)?,
            name: self.name,
            plan: Plan::parse(&self.plan).ok_or_else(|| corrupt("plan", &self.plan))?,
            created_at: time(self.created_at_ms)?,
        })
    }
}

pub(crate) struct RawAgent {
    org_id: String,
    agent_id: String,
    name: String,
    description: Option<String>,
    owner: Option<String>,
    capabilities: String,
    scopes: String,
    metadata: String,
    status: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    decommissioned_at_ms: Option<i64>,
    active_credentials: i64,
    version: i64,
    delegation: Option<String>,
    tokens_not_before_ms: Option<i64>,
    require_dpop: bool,
}

pub(crate) fn raw_agent(row: &Row<'_>) -> rusqlite::Result<RawAgent> {
    Ok(RawAgent {
        org_id: row.get(0)?,
        agent_id: row.get(1)?,
        name: row.get(2)?,
        description: row.get(3)?,
        owner: row.get(4)?,
        capabilities: row.get(5)?,
        scopes: row.get(6)?,
        metadata: row.get(7)?,
        status: row.get(8)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
        decommissioned_at_ms: row.get(11)?,
        active_credentials: row.get(12)?,
        version: row.get(13)?,
        delegation: row.get(14)?,
        tokens_not_before_ms: row.get(15)?,
        require_dpop: row.get(16)?,
    })
}

impl RawAgent {
    pub(crate) fn decode(self) -> StoreResult<Agent> {
        Ok(Agent {
            agent_id: uuid(&self.agent_id)?,
            org_id: uuid(&self.org_id)?,
            name: self.name,
            description: self.description,
            owner: self.owner,
            capabilities: from_json(&self.capabilities)?,
            scopes: from_json(&self.scopes)?,
            metadata: from_json(&self.metadata)?,
            status: AgentStatus::parse(&self.status)
                .ok_or_else(|| corrupt("agent status", &self.status))?,
            created_at: time(self.created_at_ms)?,
            updated_at: time(self.updated_at_ms)?,
            decommissioned_at: self.decommissioned_at_ms.map(time).transpose()?,
            active_credentials: to_u64(self.active_credentials)?,
            delegation: self.delegation.as_deref().map(from_json).transpose()?,
            tokens_not_before: self.tokens_not_before_ms.map(time).transpose()?,
            require_dpop: self.require_dpop,
            version: to_u64(self.version)?,
        })
    }
}

pub(crate) struct RawResource {
    org_id: String,
    resource_id: String,
    identifier: String,
    name: String,
    description: Option<String>,
    scopes: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    version: i64,
}

pub(crate) fn raw_resource(row: &Row<'_>) -> rusqlite::Result<RawResource> {
    Ok(RawResource {
        org_id: row.get(0)?,
        resource_id: row.get(1)?,
        identifier: row.get(2)?,
        name: row.get(3)?,
        description: row.get(4)?,
        scopes: row.get(5)?,
        created_at_ms: row.get(6)?,
        updated_at_ms: row.get(7)?,
        version: row.get(8)?,
    })
}

impl RawResource {
    pub(crate) fn decode(self) -> StoreResult<Resource> {
        Ok(Resource {
            resource_id: uuid(&self.resource_id)?,
            org_id: uuid(&self.org_id)?,
            identifier: self.identifier,
            name: self.name,
            description: self.description,
            scopes: from_json(&self.scopes)?,
            created_at: time(self.created_at_ms)?,
            updated_at: time(self.updated_at_ms)?,
            version: to_u64(self.version)?,
        })
    }
}

/// A row of `resource_identifiers`: org id, identifier, resource id, scopes.
pub(crate) struct RawTarget {
    org_id: String,
    identifier: String,
    resource_id: String,
    scopes: String,
}

pub(crate) fn raw_target(row: &Row<'_>) -> rusqlite::Result<RawTarget> {
    Ok(RawTarget {
        org_id: row.get(0)?,
        identifier: row.get(1)?,
        resource_id: row.get(2)?,
        scopes: row.get(3)?,
    })
}

impl RawTarget {
    pub(crate) fn decode(self) -> StoreResult<ResourceTarget> {
        Ok(ResourceTarget {
            org_id: uuid(&self.org_id)?,
            resource_id: uuid(&self.resource_id)?,
            identifier: self.identifier,
            scopes: from_json(&self.scopes)?,
        })
    }
}

/// A row of `trusted_issuers`, in `TRUSTED_ISSUER_COLUMNS` order.
pub(crate) struct RawTrustedIssuer {
    org_id: String,
    issuer_id: String,
    issuer: String,
    audience: String,
    public_keys: String,
    description: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    version: i64,
}

pub(crate) fn raw_trusted_issuer(row: &Row<'_>) -> rusqlite::Result<RawTrustedIssuer> {
    Ok(RawTrustedIssuer {
        org_id: row.get(0)?,
        issuer_id: row.get(1)?,
        issuer: row.get(2)?,
        audience: row.get(3)?,
        public_keys: row.get(4)?,
        description: row.get(5)?,
        created_at_ms: row.get(6)?,
        updated_at_ms: row.get(7)?,
        version: row.get(8)?,
    })
}

impl RawTrustedIssuer {
    pub(crate) fn decode(self) -> StoreResult<TrustedIssuer> {
        Ok(TrustedIssuer {
            issuer_id: uuid(&self.issuer_id)?,
            org_id: uuid(&self.org_id)?,
            issuer: self.issuer,
            audience: self.audience,
            keys: PublicKeys::from_json(&self.public_keys)
                .map_err(|e| corrupt("trusted issuer keys", &e))?,
            description: self.description,
            created_at: time(self.created_at_ms)?,
            updated_at: time(self.updated_at_ms)?,
            version: to_u64(self.version)?,
        })
    }
}

pub(crate) struct RawCredential {
    credential_id: String,
    client_id: String,
    agent_id: String,
    org_id: String,
    secret_hash: String,
    status: String,
    agent_status: String,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
    rotated_at_ms: Option<i64>,
    version: i64,
    agent_scopes: String,
    public_keys: Option<String>,
    agent_may_act: Option<String>,
    agent_requires_dpop: bool,
}

pub(crate) fn raw_credential(row: &Row<'_>) -> rusqlite::Result<RawCredential> {
    Ok(RawCredential {
        credential_id: row.get(0)?,
        client_id: row.get(1)?,
        agent_id: row.get(2)?,
        org_id: row.get(3)?,
        secret_hash: row.get(4)?,
        status: row.get(5)?,
        agent_status: row.get(6)?,
        created_at_ms: row.get(7)?,
        expires_at_ms: row.get(8)?,
        revoked_at_ms: row.get(9)?,
        rotated_at_ms: row.get(10)?,
        version: row.get(11)?,
        agent_scopes: row.get(12)?,
        public_keys: row.get(13)?,
        agent_may_act: row.get(14)?,
        agent_requires_dpop: row.get(15)?,
    })
}

impl RawCredential {
    pub(crate) fn decode(self) -> StoreResult<Credential> {
        Ok(Credential {
            credential_id: uuid(&self.credential_id)?,
            client_id: uuid(&self.client_id)?,
            agent_id: uuid(&self.agent_id)?,
            org_id: uuid(&self.org_id)?,
            proof: CredentialProof::from_stored(self.secret_hash, self.public_keys.as_deref())
                .map_err(|e| corrupt("credential proof", &e))?,
            status: CredentialStatus::parse(&self.status)
                .ok_or_else(|| corrupt("credential status", &self.status))?,
            agent_status: AgentStatus::parse(&self.agent_status)
                .ok_or_else(|| corrupt("agent status", &self.agent_status))?,
            created_at: time(self.created_at_ms)?,
            expires_at: self.expires_at_ms.map(time).transpose()?,
            revoked_at: self.revoked_at_ms.map(time).transpose()?,
            rotated_at: self.rotated_at_ms.map(time).transpose()?,
            version: to_u64(self.version)?,
            agent_scopes: from_json(&self.agent_scopes)?,
            agent_may_act: self
                .agent_may_act
                .as_deref()
                .map(from_json)
                .transpose()?
                .unwrap_or_default(),
            agent_requires_dpop: self.agent_requires_dpop,
        })
    }
}

pub(crate) struct RawAuditEvent {
    event_id: String,
    org_id: String,
    timestamp_ms: i64,
    action: String,
    outcome: String,
    actor: String,
    subject_agent_id: Option<String>,
    resource: String,
    request_id: String,
    source_ip: Option<String>,
    user_agent: Option<String>,
    details: String,
    expires_at_ms: i64,
}

pub(crate) fn raw_audit(row: &Row<'_>) -> rusqlite::Result<RawAuditEvent> {
    Ok(RawAuditEvent {
        event_id: row.get(0)?,
        org_id: row.get(1)?,
        timestamp_ms: row.get(2)?,
        action: row.get(3)?,
        outcome: row.get(4)?,
        actor: row.get(5)?,
        subject_agent_id: row.get(6)?,
        resource: row.get(7)?,
        request_id: row.get(8)?,
        source_ip: row.get(9)?,
        user_agent: row.get(10)?,
        details: row.get(11)?,
        expires_at_ms: row.get(12)?,
    })
}

impl RawAuditEvent {
    pub(crate) fn decode(self) -> StoreResult<AuditEvent> {
        let actor: Actor = from_json(&self.actor)?;
        Ok(AuditEvent {
            event_id: uuid(&self.event_id)?,
            org_id: uuid(&self.org_id)?,
            timestamp: time(self.timestamp_ms)?,
            action: AuditAction::parse(&self.action)
                .ok_or_else(|| corrupt("audit action", &self.action))?,
            outcome: Outcome::parse(&self.outcome)
                .ok_or_else(|| corrupt("outcome", &self.outcome))?,
            actor,
            subject_agent_id: self.subject_agent_id.as_deref().map(uuid).transpose()?,
            resource: self.resource,
            request_id: self.request_id,
            source_ip: self.source_ip,
            user_agent: self.user_agent,
            details: from_json(&self.details)?,
            expires_at: time(self.expires_at_ms)?,
        })
    }
}

pub(crate) fn millis(at: &DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt("timestamp", &ms.to_string()))
}

fn uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| corrupt("uuid", text))
}

pub(crate) fn to_i64<N: TryInto<i64> + Copy + std::fmt::Display>(n: N) -> StoreResult<i64> {
    n.try_into()
        .map_err(|_| StoreError::broken(format!("{n} does not fit a sqlite integer")))
}

pub(crate) fn to_u64(n: i64) -> StoreResult<u64> {
    u64::try_from(n).map_err(|_| corrupt("count", &n.to_string()))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::internal("cannot encode a stored value", e))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::internal("stored JSON does not decode", e))
}

fn corrupt(what: &str, found: &str) -> StoreError {
    StoreError::broken(format!("stored {what} is not valid: {found:?}"))
}
