//! The domain's operations: each reads what it needs, applies the lifecycle rules, and commits
//! the change together with its audit event. HTTP does not appear here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::Config;
use crate::domain::audit::RequestContext;
use crate::domain::time::Clock;
use crate::domain::{
    Actor, AuditAction, AuditEvent, Organization, Outcome, PlanLimits, Scope, ScopeSet,
};
use crate::error::Cause;
use crate::remote_keys::RemoteKeySets;
use crate::secret::SecretHasher;
use crate::signing::KeySource;
use crate::store::{Commit, OrgReader, Store, StoreError, Write};
use crate::validation::FieldError;

pub mod agents;
pub mod audit;
pub mod credentials;
pub mod migrations;
mod oauth_error;
pub mod orgs;
pub mod resources;
pub mod throttle;
pub mod tokens;
pub mod trusted_issuers;

/// Optimistic writes re-read and retry when another writer got there first. Twenty callers
/// racing on one record need at most twenty rounds; the margin covers bursts.
const MAX_WRITE_ATTEMPTS: usize = 64;
/// How long a warm instance trusts its copy of an organization's plan.
const ORG_CACHE_TTL: Duration = Duration::from_secs(30);

/// Which plan limit a request ran into, and where usage stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub limit: &'static str,
    pub max: u64,
    pub current: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// No bearer token, or one that is malformed, expired, revoked or foreign, or whose agent
    /// is not active.
    #[error("unauthenticated: {0}")]
    Unauthenticated(Unauthenticated),
    /// The caller lacks `missing` (scope tokens); `shortfall` says what it needed them for.
    #[error("insufficient scope: {missing:?}")]
    InsufficientScope {
        missing: Vec<String>,
        shortfall: ScopeShortfall,
    },
    #[error("agent not found")]
    AgentNotFound,
    #[error("credential not found")]
    CredentialNotFound,
    #[error("audit event not found")]
    AuditEventNotFound,
    #[error("resource not found")]
    ResourceNotFound,
    #[error("trusted issuer not found")]
    TrustedIssuerNotFound,
    #[error("agent not active")]
    AgentNotActive(String),
    #[error("credential revoked")]
    CredentialRevoked,
    #[error("agent name taken")]
    AgentNameTaken,
    #[error("resource identifier taken")]
    ResourceIdentifierTaken,
    #[error("issuer already trusted")]
    IssuerAlreadyTrusted,
    #[error("invalid status transition from {from} to {to}")]
    InvalidStatusTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("plan limit exceeded")]
    PlanLimit(LimitExceeded),
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    #[error("too many concurrent changes")]
    Contended,
    /// A dependency (the store, the key secret) cannot be reached now; `source` is its error.
    #[error("unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Cause,
    },
    /// A bug, corrupt data or a failed dependency call that retrying will not fix. Logged,
    /// never shown to clients. `source` is `None` when an invariant broke.
    #[error("internal: {context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl ServiceError {
    pub fn internal(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        ServiceError::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A broken invariant: nothing failed beneath it.
    pub fn broken(context: impl Into<String>) -> Self {
        ServiceError::Internal {
            context: context.into(),
            source: None,
        }
    }
}

/// The store's error becomes the source, so the log still shows the driver's or SDK's error.
impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => ServiceError::Unavailable {
                context: "the store".into(),
                source: Box::new(e),
            },
            StoreError::ConditionFailed { .. } => {
                ServiceError::internal("a condition failed unexpectedly", e)
            }
            StoreError::Internal { .. } => ServiceError::internal("the store failed", e),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl From<crate::signing::KeyError> for ServiceError {
    fn from(e: crate::signing::KeyError) -> Self {
        use crate::signing::KeyError;
        match e {
            KeyError::Unavailable { .. } => ServiceError::Unavailable {
                context: "the signing keys".into(),
                source: Box::new(e),
            },
            KeyError::Generation
            | KeyError::Malformed(_)
            | KeyError::Empty
            | KeyError::Signing(_)
            | KeyError::VerifyOnly => ServiceError::internal("the signing keys", e),
        }
    }
}

/// What one round of an optimistic write came to.
pub(crate) enum Round<T> {
    Done(T),
    /// Another writer got there first, or a listing lagged behind: read again and retry.
    Again,
}

/// Runs rounds of an optimistic write, each reading what it changes and writing on the
/// condition that it is unchanged, until one is done; `Contended` after [`MAX_WRITE_ATTEMPTS`].
/// The round is told its number, so the first may reuse a read made before it.
pub(crate) async fn retry_optimistically<T, F, Fut>(mut round: F) -> ServiceResult<T>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ServiceResult<Round<T>>>,
{
    for attempt in 0..MAX_WRITE_ATTEMPTS {
        if let Round::Done(value) = round(attempt).await? {
            return Ok(value);
        }
    }
    Err(ServiceError::Contended)
}

/// A round's commit: done with `value`, or again when a condition failed because another
/// writer got there first.
pub(crate) fn settle<T>(committed: Result<(), StoreError>, value: T) -> ServiceResult<Round<T>> {
    match committed {
        Ok(()) => Ok(Round::Done(value)),
        Err(StoreError::ConditionFailed { .. }) => Ok(Round::Again),
        Err(e @ (StoreError::Unavailable { .. } | StoreError::Internal { .. })) => Err(e.into()),
    }
}

/// Why a management call was not authenticated. RFC 6750 §3.1: a request without a token gets
/// a bare challenge, one with a bad token `invalid_token`; RFC 9449 §7.1 the same in the DPoP
/// scheme, and `invalid_dpop_proof` for a bad proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("a bearer access token is required")]
    NoToken,
    #[error("the access token is invalid, expired or revoked")]
    InvalidToken,
    /// Presented in the DPoP scheme: invalid, expired, revoked, or not DPoP-bound.
    #[error("the access token is invalid, expired, revoked or not DPoP-bound")]
    InvalidDpopToken,
    #[error("the access token is DPoP-bound: present it in the DPoP scheme with a proof")]
    BoundTokenAsBearer,
    #[error("{0}")]
    InvalidDpopProof(crate::dpop::DpopRejection),
}

/// Why a caller's scopes were not enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeShortfall {
    /// The endpoint requires a scope the token lacks.
    Endpoint,
    /// The request would give an agent a management scope the caller lacks.
    Grant,
    /// The target agent holds a management scope the caller lacks: changing it, or minting a
    /// secret for it, would hand the caller that scope.
    Target,
    /// Changing the organization's trust in an outside issuer decides who can become any
    /// agent federated to it, so it needs every management scope.
    Trust,
}

/// An authenticated caller of the management API, from its access token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org_id: Uuid,
    pub agent_id: Uuid,
    pub client_id: Option<Uuid>,
    pub scopes: ScopeSet,
    pub context: RequestContext,
    /// With a delegated token: its actors, outermost first; `agent_id` is the subject's.
    pub actor_chain: Vec<Uuid>,
}

impl Caller {
    pub fn require(&self, scope: Scope) -> ServiceResult<()> {
        if self.scopes.permits(scope) {
            Ok(())
        } else {
            Err(ServiceError::InsufficientScope {
                missing: vec![scope.as_str().to_owned()],
                shortfall: ScopeShortfall::Endpoint,
            })
        }
    }

    /// The management scopes an agent holding `agent_scopes` has that this caller does not:
    /// empty when the caller may change that agent and its credentials.
    pub fn lacks_authority_over(&self, agent_scopes: &[String]) -> Vec<String> {
        ScopeSet::from_list(agent_scopes.iter().cloned()).management_scopes_beyond(&self.scopes)
    }

    pub fn actor(&self) -> Actor {
        Actor::agent(self.agent_id, self.client_id)
            .delegated(self.agent_id, self.actor_chain.clone())
    }
}

/// Everything the operations need, built once per cold start. The store is a type parameter so
/// that each group of operations states the store traits it reads and writes (its `impl`
/// block's bounds) and the compiler holds it to them; everything outside the core uses the
/// default, one store that is all of them.
pub struct Idp<S: ?Sized = dyn Store> {
    pub(crate) config: Config,
    pub(crate) store: Arc<S>,
    pub(crate) keys: KeySource,
    pub(crate) hasher: SecretHasher,
    pub(crate) clock: Arc<dyn Clock>,
    /// Key sets published at URLs: clients' `jwksUri`s and trusted issuers'.
    pub(crate) remote_keys: Arc<dyn RemoteKeySets>,
    orgs: Mutex<HashMap<Uuid, (Organization, Instant)>>,
    /// The organization of each client this instance has authenticated. A credential never
    /// changes organization, so this never goes stale; it lets a token request for a resource
    /// read the resource in the same round trip as the credential.
    pub(crate) client_orgs: Mutex<HashMap<Uuid, Uuid>>,
}

/// Built on one store that is every trait: what the functions and the local server run. (The
/// operations' bounds are checked whatever the store; nothing needs another one built.)
impl Idp {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        keys: KeySource,
        remote_keys: Arc<dyn RemoteKeySets>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, crate::secret::SecretError> {
        let hasher = SecretHasher::new(config.bcrypt_cost)?;
        Ok(Self {
            config,
            store,
            keys,
            hasher,
            clock,
            remote_keys,
            orgs: Mutex::new(HashMap::new()),
            client_orgs: Mutex::new(HashMap::new()),
        })
    }
}

impl<S: ?Sized> Idp<S> {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bcrypt work done so far, for the request log and the tests of the secret cache.
    pub fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    /// The key set as published: the JWKS and the metadata's algorithms.
    pub async fn published_keys(
        &self,
    ) -> Result<Arc<crate::signing::KeySet>, crate::signing::KeyError> {
        self.keys.keys().await
    }

    pub fn forget_org(&self, org_id: Uuid) {
        if let Ok(mut cache) = self.orgs.lock() {
            cache.remove(&org_id);
        }
    }
}

/// The organization of a request: its plan and limits.
impl<S: OrgReader + ?Sized> Idp<S> {
    /// The organization, from a short-lived per-instance cache: its plan changes rarely, and
    /// every write needs it for limits and audit retention.
    pub async fn org(&self, org_id: Uuid) -> ServiceResult<Option<Organization>> {
        if let Ok(cache) = self.orgs.lock()
            && let Some((org, at)) = cache.get(&org_id)
            && at.elapsed() < ORG_CACHE_TTL
        {
            return Ok(Some(org.clone()));
        }
        let org = self.store.get_org(org_id).await?;
        if let (Some(org), Ok(mut cache)) = (&org, self.orgs.lock()) {
            cache.insert(org_id, (org.clone(), Instant::now()));
        }
        Ok(org)
    }

    pub async fn limits(&self, org_id: Uuid) -> ServiceResult<PlanLimits> {
        match self.org(org_id).await? {
            Some(org) => Ok(self.config.limits(org.plan)),
            None => Err(ServiceError::broken(format!(
                "organization {org_id} of a valid caller does not exist"
            ))),
        }
    }
}

/// A refusal is audited, so refusing needs the audit trail too.
impl<S: Commit + ?Sized> Idp<S> {
    /// Refuses a change to an agent (or to its credential `resource`) by a caller that holds
    /// less than the agent, and files the refusal under the `action` attempted. The change's
    /// own write is conditional on the version the scopes were read at, so a grant racing this
    /// check makes the change re-read and check again. Without an agent, `agent_scopes` are
    /// what the change could hand out (a trusted issuer's: any agent's).
    pub(crate) async fn refuse_takeover(
        &self,
        caller: &Caller,
        (agent_id, agent_scopes): (Option<Uuid>, Vec<String>),
        action: AuditAction,
        resource: String,
        limits: &PlanLimits,
    ) -> ServiceResult<()> {
        let missing = caller.lacks_authority_over(&agent_scopes);
        if missing.is_empty() {
            return Ok(());
        }
        let event = EventDraft {
            org_id: caller.org_id,
            action,
            outcome: Outcome::Failure,
            actor: caller.actor(),
            subject_agent_id: agent_id,
            resource,
            details: details([
                ("reason", serde_json::json!("insufficient_scope")),
                ("missingScopes", serde_json::json!(missing)),
            ]),
        }
        .at(self.now(), limits, &caller.context);
        self.store.commit(vec![Write::Audit(event)]).await?;
        Err(ServiceError::InsufficientScope {
            missing,
            shortfall: if agent_id.is_some() {
                ScopeShortfall::Target
            } else {
                ScopeShortfall::Trust
            },
        })
    }
}

/// The fields every event shares; callers fill in what the event is about.
pub(crate) struct EventDraft {
    pub org_id: Uuid,
    pub action: AuditAction,
    pub outcome: Outcome,
    pub actor: Actor,
    pub subject_agent_id: Option<Uuid>,
    pub resource: String,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl EventDraft {
    pub fn at(
        self,
        now: DateTime<Utc>,
        limits: &PlanLimits,
        context: &RequestContext,
    ) -> AuditEvent {
        AuditEvent {
            event_id: Uuid::new_v4(),
            org_id: self.org_id,
            timestamp: now,
            action: self.action,
            outcome: self.outcome,
            actor: self.actor,
            subject_agent_id: self.subject_agent_id,
            resource: self.resource,
            request_id: context.request_id.clone(),
            source_ip: context.source_ip.clone(),
            user_agent: context.user_agent.clone(),
            details: self.details,
            expires_at: now + chrono::Duration::days(i64::from(limits.audit_retention_days)),
        }
    }
}

/// Builds a JSON object for event details from pairs.
pub(crate) fn details<const N: usize>(
    pairs: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// One page of an in-memory list, as `page`/`limit` ask.
pub(crate) fn page_of<T>(items: Vec<T>, page: u32, limit: u32) -> Vec<T> {
    let start = (page.saturating_sub(1) as usize).saturating_mul(limit as usize);
    items.into_iter().skip(start).take(limit as usize).collect()
}
