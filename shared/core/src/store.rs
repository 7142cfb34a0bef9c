//! Storage behind small traits. Two implementations, each in its own crate: the embedded SQLite
//! store (`agentidp-store-sqlite`: local server, tests) and DynamoDB (`agentidp-store-dynamodb`:
//! Lambda). Both pass the conformance suite in `shared/integration/tests/conformance/`.
//!
//! Reads go through the reader traits. Every change goes through [`Commit::commit`] as one
//! atomic batch of [`Write`]s, so a state change and its audit event land together or not at
//! all, and each write carries the condition that guards it against races.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{
    Agent, AuditAction, AuditEvent, Credential, Organization, Outcome, Plan, Resource,
    ResourceTarget, TrustedIssuer,
};
use crate::error::Cause;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write at `index` of the batch found its condition false; nothing was written.
    /// Callers tell what happened by `guard`: a batch's order may change, its guards' meaning
    /// does not. `index` is for diagnostics.
    #[error("condition of write {index} failed ({guard:?})")]
    ConditionFailed { guard: Guard, index: usize },
    /// The backend could not be reached or is throttling; the caller may retry later.
    /// `context` says what the store was doing; `source` is the driver's or SDK's error.
    #[error("store unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// Anything else: corrupt data, a bug. Logged, never shown to clients. `source` is the
    /// underlying error; `None` when an invariant broke and `context` says all there is.
    #[error("store failure: {context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    pub fn unavailable(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        StoreError::Unavailable {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn internal(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        StoreError::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A failure with no error beneath it: a broken invariant, a limit, corrupt data.
    pub fn broken(context: impl Into<String>) -> Self {
        StoreError::Internal {
            context: context.into(),
            source: None,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What the condition of a [`Write`] guards; a failed condition reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// `CreateOrg`: no organization with this id exists yet.
    OrgIsNew,
    /// `SetPlan`: the organization exists.
    OrgExists,
    /// `PutAgent`, `PutCredential`, `PutResource` or `DeleteResource`: the record is new, or
    /// still at the version read.
    StaleVersion,
    /// `ClaimAgentName`: no other agent holds the name.
    NameTaken,
    /// `ClaimResourceIdentifier`: no other resource of the organization holds the identifier.
    IdentifierTaken,
    /// `CountAgents` upwards: the organization is below its plan's agent limit.
    AgentLimit,
    /// `CountResources` upwards: the organization is below its plan's resource limit.
    ResourceLimit,
    /// `CountTrustedIssuers` upwards: the organization is below its plan's trusted-issuer limit.
    TrustedIssuerLimit,
    /// `PutTrustedIssuer` of a new one: the organization does not trust that issuer yet.
    IssuerAlreadyTrusted,
    /// `CountTokenRequest`: the month's token requests are below the plan's quota.
    TokenQuota,
    /// `UseClientAssertion`: no assertion of this client with this `jti` was used before.
    AssertionReplayed,
    /// `UseDpopProof`: no DPoP proof made with this key with this `jti` was used before.
    DpopProofReplayed,
}

/// One conditional write of an atomic batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Condition: no organization with this id exists.
    CreateOrg(Organization),
    /// Condition: the organization exists.
    SetPlan { org_id: Uuid, plan: Plan },
    /// Condition: `expected_version` is `None` and no such agent exists, or the stored agent has
    /// exactly that version. The stored version becomes `agent.version`.
    PutAgent {
        agent: Agent,
        expected_version: Option<u64>,
    },
    /// Condition: no non-decommissioned agent of the organization holds this name key.
    ClaimAgentName {
        org_id: Uuid,
        name_key: String,
        agent_id: Uuid,
    },
    /// Unconditional; frees the name for reuse.
    ReleaseAgentName { org_id: Uuid, name_key: String },
    /// Same condition rule as `PutAgent`, on the credential's version.
    PutCredential {
        credential: Credential,
        expected_version: Option<u64>,
    },
    /// Same condition rule as `PutAgent`, on the resource's version.
    PutResource {
        resource: Resource,
        expected_version: Option<u64>,
    },
    /// Condition: the stored resource has exactly `expected_version`. The record is gone after.
    DeleteResource {
        org_id: Uuid,
        resource_id: Uuid,
        expected_version: u64,
    },
    /// Condition: `expected_version` is `None` and the organization has no record of this issuer
    /// (else [`Guard::IssuerAlreadyTrusted`]), or the stored record has exactly that version.
    PutTrustedIssuer {
        issuer: TrustedIssuer,
        expected_version: Option<u64>,
    },
    /// Condition: the stored record has exactly `expected_version`. The record is gone after.
    DeleteTrustedIssuer {
        org_id: Uuid,
        issuer_id: Uuid,
        expected_version: u64,
    },
    /// Moves the organization's count of trusted issuers by `delta`, as `CountAgents` does.
    /// Condition when `delta > 0`: the count before is below `limit`.
    CountTrustedIssuers {
        org_id: Uuid,
        delta: i64,
        limit: u64,
    },
    /// Writes the organization's claim of `target.identifier`, holding the resource's id and a
    /// copy of its scopes (what a token request for it reads). Condition: no claim of that
    /// identifier exists, or it is already this resource's (then it is rewritten, which keeps
    /// the copy of the scopes in step).
    ClaimResourceIdentifier(ResourceTarget),
    /// Unconditional; frees the identifier for reuse.
    ReleaseResourceIdentifier { org_id: Uuid, identifier: String },
    /// Moves the organization's count of non-decommissioned agents by `delta`.
    /// Condition when `delta > 0`: the count before is below `limit`.
    CountAgents {
        org_id: Uuid,
        delta: i64,
        limit: u64,
    },
    /// Moves the organization's count of resources by `delta`, as `CountAgents` does.
    /// Condition when `delta > 0`: the count before is below `limit`.
    CountResources {
        org_id: Uuid,
        delta: i64,
        limit: u64,
    },
    /// Adds one token request to the month's count. Condition: the count before is below `limit`.
    CountTokenRequest {
        org_id: Uuid,
        month: String,
        limit: u64,
    },
    /// Unconditional and idempotent; kept until the token would have expired anyway.
    RevokeToken {
        jti: String,
        org_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    /// Records that a client assertion (RFC 7523) was used, until `expires_at`, when the
    /// assertion's own `exp` refuses it anyway. Condition: no record of this client's `jti`.
    UseClientAssertion {
        client_id: Uuid,
        jti: String,
        expires_at: DateTime<Utc>,
    },
    /// Records that a DPoP proof (RFC 9449) was used, until `expires_at`, when its `iat` is too
    /// old for it to be accepted anyway. Keyed by the proof's key as well as its `jti`, so no
    /// one without the key can spend a `jti` of its holder's. Condition: no record of this
    /// key's `jti`.
    UseDpopProof {
        key_thumbprint: String,
        jti: String,
        expires_at: DateTime<Utc>,
    },
    /// Unconditional.
    Audit(AuditEvent),
    /// Adds one to a throttle counter (failed authentications of a client or an address, or
    /// requests of an organization), which lives until `expires_at`, the end of the window its
    /// key names. Unconditional.
    Tally {
        key: String,
        expires_at: DateTime<Utc>,
    },
}

impl Write {
    /// The guard of this write's condition; `None` for an unconditional write.
    pub fn guard(&self) -> Option<Guard> {
        match self {
            Write::CreateOrg(_) => Some(Guard::OrgIsNew),
            Write::SetPlan { .. } => Some(Guard::OrgExists),
            Write::PutAgent { .. }
            | Write::PutCredential { .. }
            | Write::PutResource { .. }
            | Write::DeleteResource { .. } => Some(Guard::StaleVersion),
            Write::ClaimAgentName { .. } => Some(Guard::NameTaken),
            Write::ClaimResourceIdentifier(_) => Some(Guard::IdentifierTaken),
            Write::CountAgents { delta, .. } => (*delta > 0).then_some(Guard::AgentLimit),
            Write::CountResources { delta, .. } => (*delta > 0).then_some(Guard::ResourceLimit),
            Write::CountTrustedIssuers { delta, .. } => {
                (*delta > 0).then_some(Guard::TrustedIssuerLimit)
            }
            Write::PutTrustedIssuer {
                expected_version: None,
                ..
            } => Some(Guard::IssuerAlreadyTrusted),
            Write::PutTrustedIssuer { .. } | Write::DeleteTrustedIssuer { .. } => {
                Some(Guard::StaleVersion)
            }
            Write::CountTokenRequest { .. } => Some(Guard::TokenQuota),
            Write::UseClientAssertion { .. } => Some(Guard::AssertionReplayed),
            Write::UseDpopProof { .. } => Some(Guard::DpopProofReplayed),
            Write::ReleaseAgentName { .. }
            | Write::ReleaseResourceIdentifier { .. }
            | Write::RevokeToken { .. }
            | Write::Audit(_)
            | Write::Tally { .. } => None,
        }
    }

    /// The error a failed condition of this write, at `index` of its batch, reports.
    pub fn condition_failed(&self, index: usize) -> StoreError {
        match self.guard() {
            Some(guard) => StoreError::ConditionFailed { guard, index },
            None => StoreError::broken(format!(
                "write {index} has no condition, yet the store reported it failed"
            )),
        }
    }
}

#[async_trait]
pub trait Commit: Send + Sync {
    /// Applies every write, or none of them. A batch touches each stored item at most once
    /// (DynamoDB refuses a transaction that names an item twice), and holds at most 100 writes.
    async fn commit(&self, writes: Vec<Write>) -> StoreResult<()>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub agents: u64,
    pub token_requests: u64,
    pub resources: u64,
    pub trusted_issuers: u64,
}

#[async_trait]
pub trait OrgReader: Send + Sync {
    async fn get_org(&self, org_id: Uuid) -> StoreResult<Option<Organization>>;
    /// Operator use only (not a request path): may scan.
    async fn list_orgs(&self) -> StoreResult<Vec<Organization>>;
    /// Non-decommissioned agents, resources, trusted issuers, and token requests in `month`
    /// (`YYYY-MM`).
    async fn usage(&self, org_id: Uuid, month: &str) -> StoreResult<Usage>;
}

#[async_trait]
pub trait AgentReader: Send + Sync {
    async fn get_agent(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Option<Agent>>;
    /// Every agent of the organization, oldest first. Bounded by the plan's agent limit plus
    /// decommissioned ones.
    async fn list_agents(&self, org_id: Uuid) -> StoreResult<Vec<Agent>>;
}

#[async_trait]
pub trait ResourceReader: Send + Sync {
    async fn get_resource(&self, org_id: Uuid, resource_id: Uuid) -> StoreResult<Option<Resource>>;
    /// Every resource of the organization, oldest first. Bounded by the plan's resource limit.
    async fn list_resources(&self, org_id: Uuid) -> StoreResult<Vec<Resource>>;
    /// The organization's claim of a normalised identifier: one strongly consistent read by key.
    async fn resource_by_identifier(
        &self,
        org_id: Uuid,
        identifier: &str,
    ) -> StoreResult<Option<ResourceTarget>>;
}

#[async_trait]
pub trait TrustedIssuerReader: Send + Sync {
    /// One strongly consistent read by key (the token endpoint's second read for a federated
    /// credential, whose issuer gives the id: [`TrustedIssuer::id_for`]).
    async fn get_trusted_issuer(
        &self,
        org_id: Uuid,
        issuer_id: Uuid,
    ) -> StoreResult<Option<TrustedIssuer>>;
    /// Every trusted issuer of the organization, oldest first. Bounded by the plan's limit.
    async fn list_trusted_issuers(&self, org_id: Uuid) -> StoreResult<Vec<TrustedIssuer>>;
}

#[async_trait]
pub trait CredentialReader: Send + Sync {
    /// The token endpoint's lookup: one read, strongly consistent.
    async fn credential_by_client_id(&self, client_id: Uuid) -> StoreResult<Option<Credential>>;
    async fn get_credential(
        &self,
        org_id: Uuid,
        agent_id: Uuid,
        credential_id: Uuid,
    ) -> StoreResult<Option<Credential>>;
    /// Every credential of the agent, oldest first.
    async fn list_credentials(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Vec<Credential>>;
}

#[async_trait]
pub trait RevocationReader: Send + Sync {
    async fn is_token_revoked(&self, jti: &str) -> StoreResult<bool>;
    /// What an access token's validity depends on besides its signature: whether any of
    /// `jtis` (its own id and its ancestors', for a delegated token) is revoked, and the
    /// organization's `agents` of its chain (its subject, then each actor), in that order,
    /// `None` for one that does not exist. One read round trip (introspection and every
    /// management call), however long the chain.
    async fn token_standing(
        &self,
        jtis: &[String],
        org_id: Uuid,
        agents: &[Uuid],
    ) -> StoreResult<(bool, Vec<Option<Agent>>)>;
}

#[async_trait]
pub trait ThrottleReader: Send + Sync {
    /// The throttle counters of `keys`, in order: 0 for one that is absent or has expired.
    /// One read round trip.
    async fn tallies(&self, keys: &[String], now: DateTime<Utc>) -> StoreResult<Vec<u64>>;
    /// Adds one to a throttle counter outside any batch and returns its new value: the request
    /// rate check, in one round trip.
    async fn add_tally(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<u64>;
    /// The token endpoint's one read: the credential of `client_id` (when it is a UUID), the
    /// throttle counters of `keys`, as [`ThrottleReader::tallies`] gives them, and the claim of
    /// `resource` (an organization and a normalised identifier) when asked for, as
    /// [`ResourceReader::resource_by_identifier`] gives it.
    async fn client_standing(
        &self,
        client_id: Option<Uuid>,
        keys: &[String],
        resource: Option<(Uuid, &str)>,
        now: DateTime<Utc>,
    ) -> StoreResult<ClientStanding>;
}

/// What [`ThrottleReader::client_standing`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStanding {
    pub credential: Option<Credential>,
    /// One per key asked for, in order.
    pub tallies: Vec<u64>,
    /// `None` when not asked for, or when the organization has no such resource.
    pub resource: Option<ResourceTarget>,
}

/// Filters of `GET /audit`. The window `[not_before, until]` always applies: `not_before` is the
/// later of the caller's `from` and the start of the organization's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub org_id: Uuid,
    pub agent_id: Option<Uuid>,
    /// Events whose actor is this agent, directly or anywhere in a delegated token's chain.
    pub actor_agent_id: Option<Uuid>,
    pub action: Option<AuditAction>,
    pub outcome: Option<Outcome>,
    pub not_before: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    /// Events whose TTL has passed are never returned, even if the backend still holds them.
    pub now: DateTime<Utc>,
    pub limit: usize,
    /// Resume strictly after (older than) this position.
    pub after: Option<AuditPosition>,
}

/// A position in the newest-first order: timestamp, then event id, both descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPosition {
    pub timestamp: DateTime<Utc>,
    pub event_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Set when more events may follow.
    pub next: Option<AuditPosition>,
}

#[async_trait]
pub trait AuditReader: Send + Sync {
    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<AuditPage>;
    /// `None` for another organization's event or one past retention (`not_before`) or TTL.
    async fn get_audit_event(
        &self,
        org_id: Uuid,
        event_id: Uuid,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<AuditEvent>>;
}

/// Everything at once, for the local server and the operator CLI, which serve every route.
pub trait Store:
    Commit
    + OrgReader
    + AgentReader
    + CredentialReader
    + ResourceReader
    + TrustedIssuerReader
    + RevocationReader
    + AuditReader
    + ThrottleReader
{
}

impl<T> Store for T where
    T: Commit
        + OrgReader
        + AgentReader
        + CredentialReader
        + ResourceReader
        + TrustedIssuerReader
        + RevocationReader
        + AuditReader
        + ThrottleReader
{
}
