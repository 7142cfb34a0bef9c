//! Registering agents and moving them through their lifecycle.

use std::collections::BTreeMap;

use serde_json::json;
use uuid::Uuid;

use super::{
    Caller, EventDraft, Idp, LimitExceeded, Round, ScopeShortfall, ServiceError, ServiceResult,
    details, page_of, retry_optimistically, settle,
};
use crate::domain::agent::DelegationPolicy;
use crate::domain::time::usage_month;
use crate::domain::{
    Agent, AgentStatus, AuditAction, Credential, CredentialStatus, Outcome, Scope, ScopeSet,
};
use crate::store::{AgentReader, Commit, CredentialReader, OrgReader};
use crate::store::{Guard, StoreError, Write};

/// The fields of `POST /agents`, validated.
#[derive(Debug, Clone, Default)]
pub struct NewAgent {
    pub name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub capabilities: Vec<String>,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub delegation: Option<DelegationPolicy>,
    pub require_dpop: bool,
}

/// The fields of `PATCH /agents/{id}`: `None` leaves a field alone; for the optional text
/// fields `Some(None)` clears them.
#[derive(Debug, Clone, Default)]
pub struct AgentChanges {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    pub capabilities: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub status: Option<AgentStatus>,
    /// `Some(None)` withdraws the policy: no one may act for the agent any more.
    pub delegation: Option<Option<DelegationPolicy>>,
    pub require_dpop: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct AgentPage {
    pub agents: Vec<Agent>,
    pub total: usize,
}

fn refuse_ungrantable_scopes(caller: &Caller, scopes: &[String]) -> ServiceResult<()> {
    let beyond =
        ScopeSet::from_list(scopes.iter().cloned()).management_scopes_beyond(&caller.scopes);
    if beyond.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::InsufficientScope {
            missing: beyond,
            shortfall: ScopeShortfall::Grant,
        })
    }
}

/// Waits out the second a kill switch was pulled in. Tokens carry `iat` in whole seconds, so
/// one issued later in that second cannot be told from one issued before the switch, and it
/// stops too; answering only once the second is over means any token asked for after the
/// answer is honoured.
pub(crate) async fn outlast_the_second_of(
    clock: &dyn crate::domain::time::Clock,
    switched_at: chrono::DateTime<chrono::Utc>,
) {
    let left = 1000 - i64::from(switched_at.timestamp_subsec_millis().min(999));
    let next_second = switched_at + chrono::Duration::milliseconds(left);
    let wait = clock.wait_until(next_second);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Rewrites each active credential's copy of the agent's status and scopes, conditional on its
/// version.
pub(crate) fn credential_sync_writes(
    credentials: &[Credential],
    agent: &Agent,
    revoke_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<Write> {
    credentials
        .iter()
        .filter(|c| c.status == CredentialStatus::Active)
        .map(|c| {
            let mut next = c.clone();
            next.agent_status = agent.status;
            next.agent_scopes = agent.scopes.clone();
            next.agent_may_act = agent
                .delegation
                .as_ref()
                .map(|policy| policy.may_act.clone())
                .unwrap_or_default();
            next.agent_requires_dpop = agent.require_dpop;
            if let Some(at) = revoke_at {
                next.status = CredentialStatus::Revoked;
                next.revoked_at = Some(at);
            }
            next.version += 1;
            Write::PutCredential {
                credential: next,
                expected_version: Some(c.version),
            }
        })
        .collect()
}

/// The credential listing may come from an eventually consistent index; the agent's own count
/// of active credentials is read consistently. If the listing shows fewer, it is behind, and
/// writing from it could leave a credential holding a stale copy of the agent's status: wait
/// briefly and read again.
pub(crate) async fn listing_is_complete(rewrites: &[Write], agent: &Agent) -> bool {
    if rewrites.len() as u64 == agent.active_credentials {
        return true;
    }
    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    false
}

impl<S: OrgReader + AgentReader + CredentialReader + Commit + ?Sized> Idp<S> {
    pub async fn create_agent(&self, caller: &Caller, input: NewAgent) -> ServiceResult<Agent> {
        caller.require(Scope::AgentsWrite)?;
        refuse_ungrantable_scopes(caller, &input.scopes)?;
        let limits = self.limits(caller.org_id).await?;
        let now = self.now();
        let agent = Agent {
            agent_id: Uuid::new_v4(),
            org_id: caller.org_id,
            name: input.name,
            description: input.description,
            owner: input.owner,
            capabilities: input.capabilities,
            scopes: input.scopes,
            metadata: input.metadata,
            status: AgentStatus::Active,
            created_at: now,
            updated_at: now,
            decommissioned_at: None,
            active_credentials: 0,
            delegation: input.delegation,
            tokens_not_before: None,
            require_dpop: input.require_dpop,
            version: 1,
        };
        let event = EventDraft {
            org_id: caller.org_id,
            action: AuditAction::AgentCreated,
            outcome: Outcome::Success,
            actor: caller.actor(),
            subject_agent_id: Some(agent.agent_id),
            resource: format!("agent/{}", agent.agent_id),
            details: details([("name", json!(agent.name)), ("scopes", json!(agent.scopes))]),
        }
        .at(now, &limits, &caller.context);
        let writes = vec![
            Write::CountAgents {
                org_id: caller.org_id,
                delta: 1,
                limit: limits.max_agents,
            },
            Write::ClaimAgentName {
                org_id: caller.org_id,
                name_key: Agent::name_key(&agent.name),
                agent_id: agent.agent_id,
            },
            Write::PutAgent {
                agent: agent.clone(),
                expected_version: None,
            },
            Write::Audit(event),
        ];
        match self.store.commit(writes).await {
            Ok(()) => Ok(agent),
            Err(StoreError::ConditionFailed {
                guard: Guard::AgentLimit,
                ..
            }) => {
                let usage = self.store.usage(caller.org_id, &usage_month(&now)).await?;
                Err(ServiceError::PlanLimit(LimitExceeded {
                    limit: "maxAgents",
                    max: limits.max_agents,
                    current: usage.agents,
                }))
            }
            Err(StoreError::ConditionFailed {
                guard: Guard::NameTaken,
                ..
            }) => Err(ServiceError::AgentNameTaken),
            // Another guard failing here is a bug: the conversion makes it an internal error.
            Err(
                e @ (StoreError::ConditionFailed { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Internal { .. }),
            ) => Err(e.into()),
        }
    }

    pub async fn list_agents(
        &self,
        caller: &Caller,
        status: Option<AgentStatus>,
        page: u32,
        limit: u32,
    ) -> ServiceResult<AgentPage> {
        caller.require(Scope::AgentsRead)?;
        let agents: Vec<Agent> = self
            .store
            .list_agents(caller.org_id)
            .await?
            .into_iter()
            .filter(|a| status.is_none_or(|s| a.status == s))
            .collect();
        let total = agents.len();
        Ok(AgentPage {
            agents: page_of(agents, page, limit),
            total,
        })
    }

    pub async fn get_agent(&self, caller: &Caller, agent_id: Uuid) -> ServiceResult<Agent> {
        caller.require(Scope::AgentsRead)?;
        self.store
            .get_agent(caller.org_id, agent_id)
            .await?
            .ok_or(ServiceError::AgentNotFound)
    }

    /// The agent, read for a change only a caller with authority over it may make: refused, and
    /// the refusal audited under `action`, otherwise.
    async fn agent_to_change(
        &self,
        caller: &Caller,
        agent_id: Uuid,
        action: AuditAction,
        limits: &crate::domain::PlanLimits,
    ) -> ServiceResult<Agent> {
        let current = self
            .store
            .get_agent(caller.org_id, agent_id)
            .await?
            .ok_or(ServiceError::AgentNotFound)?;
        self.refuse_takeover(
            caller,
            (Some(agent_id), current.scopes.clone()),
            action,
            format!("agent/{agent_id}"),
            limits,
        )
        .await?;
        Ok(current)
    }

    /// The kill switch: every token the agent holds now, and every token derived from one it
    /// took part in, as subject or actor, stops at once, without anyone knowing them. The
    /// agent itself stays active and gets new tokens as before.
    pub async fn revoke_agent_tokens(
        &self,
        caller: &Caller,
        agent_id: Uuid,
    ) -> ServiceResult<chrono::DateTime<chrono::Utc>> {
        caller.require(Scope::AgentsWrite)?;
        let limits = &self.limits(caller.org_id).await?;
        let switched_at = retry_optimistically(|_| async move {
            let current = self
                .agent_to_change(caller, agent_id, AuditAction::AgentTokensRevoked, limits)
                .await?;
            if !current.status.is_mutable() {
                return Err(ServiceError::AgentNotActive(
                    "a decommissioned agent's tokens are already inactive".into(),
                ));
            }
            let now = self.now();
            let mut next = current.clone();
            next.tokens_not_before = Some(now);
            next.updated_at = now;
            next.version += 1;
            let writes = vec![
                Write::PutAgent {
                    agent: next,
                    expected_version: Some(current.version),
                },
                Write::Audit(
                    EventDraft {
                        org_id: caller.org_id,
                        action: AuditAction::AgentTokensRevoked,
                        outcome: Outcome::Success,
                        actor: caller.actor(),
                        subject_agent_id: Some(agent_id),
                        resource: format!("agent/{agent_id}"),
                        details: details([(
                            "tokensNotBefore",
                            json!(crate::domain::time::format_timestamp(&now)),
                        )]),
                    }
                    .at(now, limits, &caller.context),
                ),
            ];
            settle(self.store.commit(writes).await, now)
        })
        .await?;
        outlast_the_second_of(self.clock.as_ref(), switched_at).await;
        Ok(switched_at)
    }

    pub async fn update_agent(
        &self,
        caller: &Caller,
        agent_id: Uuid,
        changes: AgentChanges,
    ) -> ServiceResult<Agent> {
        caller.require(Scope::AgentsWrite)?;
        if let Some(scopes) = &changes.scopes {
            refuse_ungrantable_scopes(caller, scopes)?;
        }
        let limits = &self.limits(caller.org_id).await?;
        let changes = &changes;
        retry_optimistically(|_| async move {
            let current = self
                .store
                .get_agent(caller.org_id, agent_id)
                .await?
                .ok_or(ServiceError::AgentNotFound)?;
            let attempted = match changes.status {
                Some(AgentStatus::Suspended) => AuditAction::AgentSuspended,
                Some(AgentStatus::Active) => AuditAction::AgentReactivated,
                _ => AuditAction::AgentUpdated,
            };
            self.refuse_takeover(
                caller,
                (Some(agent_id), current.scopes.clone()),
                attempted,
                format!("agent/{agent_id}"),
                limits,
            )
            .await?;
            let status_change = changes.status.filter(|s| *s != current.status);
            if let Some(to) = status_change
                && !current.status.can_become(to)
            {
                return Err(ServiceError::InvalidStatusTransition {
                    from: current.status.as_str(),
                    to: to.as_str(),
                });
            }
            if !current.status.is_mutable() {
                return Err(ServiceError::AgentNotActive(
                    "a decommissioned agent cannot be changed".into(),
                ));
            }
            let now = self.now();
            let mut next = current.clone();
            let mut changed: Vec<&str> = Vec::new();
            if let Some(name) = &changes.name
                && *name != current.name
            {
                next.name = name.clone();
                changed.push("name");
            }
            if let Some(description) = &changes.description
                && *description != current.description
            {
                next.description = description.clone();
                changed.push("description");
            }
            if let Some(owner) = &changes.owner
                && *owner != current.owner
            {
                next.owner = owner.clone();
                changed.push("owner");
            }
            if let Some(capabilities) = &changes.capabilities
                && *capabilities != current.capabilities
            {
                next.capabilities = capabilities.clone();
                changed.push("capabilities");
            }
            if let Some(scopes) = &changes.scopes
                && *scopes != current.scopes
            {
                next.scopes = scopes.clone();
                changed.push("scopes");
            }
            if let Some(metadata) = &changes.metadata
                && *metadata != current.metadata
            {
                next.metadata = metadata.clone();
                changed.push("metadata");
            }
            if let Some(delegation) = &changes.delegation
                && *delegation != current.delegation
            {
                next.delegation = delegation.clone();
                changed.push("delegation");
            }
            if let Some(require_dpop) = changes.require_dpop
                && require_dpop != current.require_dpop
            {
                next.require_dpop = require_dpop;
                changed.push("requireDpop");
            }
            if let Some(status) = status_change {
                next.status = status;
                changed.push("status");
            }
            if changed.is_empty() {
                return Ok(Round::Done(current));
            }
            next.updated_at = now;
            next.version += 1;
            let action = match status_change {
                Some(AgentStatus::Suspended) => AuditAction::AgentSuspended,
                Some(AgentStatus::Active) => AuditAction::AgentReactivated,
                _ => AuditAction::AgentUpdated,
            };
            let mut writes = vec![Write::PutAgent {
                agent: next.clone(),
                expected_version: Some(current.version),
            }];
            let old_key = Agent::name_key(&current.name);
            let new_key = Agent::name_key(&next.name);
            if old_key != new_key {
                writes.push(Write::ClaimAgentName {
                    org_id: caller.org_id,
                    name_key: new_key,
                    agent_id,
                });
                writes.push(Write::ReleaseAgentName {
                    org_id: caller.org_id,
                    name_key: old_key,
                });
            }
            if status_change.is_some()
                || next.scopes != current.scopes
                || next.delegation != current.delegation
                || next.require_dpop != current.require_dpop
            {
                let credentials = self.store.list_credentials(caller.org_id, agent_id).await?;
                let rewrites = credential_sync_writes(&credentials, &next, None);
                if !listing_is_complete(&rewrites, &current).await {
                    return Ok(Round::Again);
                }
                writes.extend(rewrites);
            }
            writes.push(Write::Audit(
                EventDraft {
                    org_id: caller.org_id,
                    action,
                    outcome: Outcome::Success,
                    actor: caller.actor(),
                    subject_agent_id: Some(agent_id),
                    resource: format!("agent/{agent_id}"),
                    details: details([
                        ("changed", json!(changed)),
                        ("status", json!(next.status.as_str())),
                    ]),
                }
                .at(now, limits, &caller.context),
            ));
            match self.store.commit(writes).await {
                Err(StoreError::ConditionFailed {
                    guard: Guard::NameTaken,
                    ..
                }) => Err(ServiceError::AgentNameTaken),
                committed => settle(committed, next),
            }
        })
        .await
    }

    /// Decommissions the agent: terminal, revokes every credential at once, frees its name and
    /// its place in the plan, and keeps the record.
    pub async fn decommission_agent(&self, caller: &Caller, agent_id: Uuid) -> ServiceResult<()> {
        caller.require(Scope::AgentsWrite)?;
        let limits = &self.limits(caller.org_id).await?;
        retry_optimistically(|_| async move {
            let current = self
                .agent_to_change(caller, agent_id, AuditAction::AgentDecommissioned, limits)
                .await?;
            if !current.status.can_become(AgentStatus::Decommissioned) {
                return Err(ServiceError::InvalidStatusTransition {
                    from: current.status.as_str(),
                    to: AgentStatus::Decommissioned.as_str(),
                });
            }
            let now = self.now();
            let mut next = current.clone();
            next.status = AgentStatus::Decommissioned;
            next.decommissioned_at = Some(now);
            next.updated_at = now;
            next.active_credentials = 0;
            next.version += 1;
            let credentials = self.store.list_credentials(caller.org_id, agent_id).await?;
            let revocations = credential_sync_writes(&credentials, &next, Some(now));
            if !listing_is_complete(&revocations, &current).await {
                return Ok(Round::Again);
            }
            let revoked: Vec<String> = revocations
                .iter()
                .filter_map(|w| match w {
                    Write::PutCredential { credential, .. } => {
                        Some(credential.credential_id.to_string())
                    }
                    _ => None,
                })
                .collect();
            let mut writes = vec![
                Write::PutAgent {
                    agent: next,
                    expected_version: Some(current.version),
                },
                Write::ReleaseAgentName {
                    org_id: caller.org_id,
                    name_key: Agent::name_key(&current.name),
                },
                Write::CountAgents {
                    org_id: caller.org_id,
                    delta: -1,
                    limit: limits.max_agents,
                },
            ];
            writes.extend(revocations);
            writes.push(Write::Audit(
                EventDraft {
                    org_id: caller.org_id,
                    action: AuditAction::AgentDecommissioned,
                    outcome: Outcome::Success,
                    actor: caller.actor(),
                    subject_agent_id: Some(agent_id),
                    resource: format!("agent/{agent_id}"),
                    details: details([
                        ("previousStatus", json!(current.status.as_str())),
                        ("revokedCredentialIds", json!(revoked)),
                    ]),
                }
                .at(now, limits, &caller.context),
            ));
            settle(self.store.commit(writes).await, ())
        })
        .await
    }
}
