//! Data migrations an operator runs once after an upgrade (`agentidp-admin migrate`; the local
//! server runs them at start). Each is idempotent: run again, it changes nothing. Each change is
//! conditional on the version it read and audited as the operator's.

use serde_json::json;
use uuid::Uuid;

use super::agents::{credential_sync_writes, listing_is_complete};
use super::{Idp, Round, ServiceError, ServiceResult, details, retry_optimistically, settle};
use crate::domain::scope::{FULL_ADMIN_SCOPES_BEFORE_RESOURCES, MANAGEMENT_SCOPES};
use crate::domain::{Agent, AuditAction, Organization};
use crate::store::{AgentReader, Commit, CredentialReader, OrgReader, Write};
use crate::validation::FieldError;

/// An agent a migration gave scopes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopesGranted {
    pub agent_id: Uuid,
    pub name: String,
    pub added: Vec<String>,
}

/// The management scopes `agent` should be given: those it lacks, if it is a full admin of the
/// scopes there were before resources. It is known by what it holds, never by its name, which
/// any writer could give its own agent.
fn scopes_to_grant(agent: &Agent) -> Vec<String> {
    let holds = |scope: &str| agent.scopes.iter().any(|held| held == scope);
    if !agent.status.is_mutable() || !FULL_ADMIN_SCOPES_BEFORE_RESOURCES.into_iter().all(holds) {
        return Vec::new();
    }
    MANAGEMENT_SCOPES
        .into_iter()
        .filter(|scope| !holds(scope))
        .map(str::to_owned)
        .collect()
}

impl<S: OrgReader + AgentReader + CredentialReader + Commit + ?Sized> Idp<S> {
    /// Gives each full admin of the organization (an agent holding `agents:read`,
    /// `agents:write` and `audit:read`, which includes its bootstrap admin) the management
    /// scopes added since (`resources:read`, `resources:write`), with its credentials' copies of
    /// its scopes in step, each as an `agent.updated` event of the operator. Decommissioned
    /// agents are left as they are.
    pub async fn grant_new_management_scopes(
        &self,
        org_id: Uuid,
    ) -> ServiceResult<Vec<ScopesGranted>> {
        let org = self.store.get_org(org_id).await?.ok_or_else(|| {
            ServiceError::Validation(vec![FieldError::new("orgId", "no such organization")])
        })?;
        let mut granted = Vec::new();
        for agent in self.store.list_agents(org_id).await? {
            if let Some(grant) = self.grant_missing_scopes(&org, agent.agent_id).await? {
                granted.push(grant);
            }
        }
        Ok(granted)
    }

    async fn grant_missing_scopes(
        &self,
        org: &Organization,
        agent_id: Uuid,
    ) -> ServiceResult<Option<ScopesGranted>> {
        retry_optimistically(|_| async move {
            let Some(current) = self.store.get_agent(org.org_id, agent_id).await? else {
                return Ok(Round::Done(None));
            };
            let added = scopes_to_grant(&current);
            if added.is_empty() {
                return Ok(Round::Done(None));
            }
            let mut next = current.clone();
            next.scopes.extend(added.iter().cloned());
            next.updated_at = self.now();
            next.version += 1;
            let credentials = self.store.list_credentials(org.org_id, agent_id).await?;
            let rewrites = credential_sync_writes(&credentials, &next, None);
            if !listing_is_complete(&rewrites, &current).await {
                return Ok(Round::Again);
            }
            let mut writes = vec![Write::PutAgent {
                agent: next.clone(),
                expected_version: Some(current.version),
            }];
            writes.extend(rewrites);
            writes.push(Write::Audit(self.operator_event(
                org.org_id,
                AuditAction::AgentUpdated,
                Some(agent_id),
                format!("agent/{agent_id}"),
                details([
                    ("changed", json!(["scopes"])),
                    ("status", json!(next.status.as_str())),
                    ("addedScopes", json!(added)),
                ]),
                org.plan,
            )));
            settle(
                self.store.commit(writes).await,
                Some(ScopesGranted {
                    agent_id,
                    name: next.name,
                    added,
                }),
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::domain::AgentStatus;

    fn agent(scopes: &[&str], status: AgentStatus) -> Agent {
        Agent {
            agent_id: Uuid::new_v4(),
            org_id: Uuid::new_v4(),
            name: "bootstrap-admin".into(),
            description: None,
            owner: None,
            capabilities: Vec::new(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            metadata: BTreeMap::new(),
            status,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            decommissioned_at: None,
            active_credentials: 0,
            delegation: None,
            tokens_not_before: None,
            require_dpop: false,
            version: 1,
        }
    }

    #[test]
    fn only_an_agent_holding_every_old_management_scope_is_given_the_new_ones() {
        let full = ["agents:read", "agents:write", "audit:read", "weather:read"];
        assert_eq!(
            scopes_to_grant(&agent(&full, AgentStatus::Active)),
            ["resources:read", "resources:write"]
        );
        assert_eq!(
            scopes_to_grant(&agent(&full, AgentStatus::Suspended)),
            ["resources:read", "resources:write"]
        );
        assert!(scopes_to_grant(&agent(&full, AgentStatus::Decommissioned)).is_empty());
        // The name says nothing: a writer's own agent named bootstrap-admin gets nothing.
        assert!(scopes_to_grant(&agent(&["agents:write"], AgentStatus::Active)).is_empty());
        assert!(
            scopes_to_grant(&agent(
                &["agents:read", "agents:write"],
                AgentStatus::Active
            ))
            .is_empty()
        );
        let half_done = [
            "agents:read",
            "agents:write",
            "audit:read",
            "resources:read",
        ];
        assert_eq!(
            scopes_to_grant(&agent(&half_done, AgentStatus::Active)),
            ["resources:write"]
        );
        assert!(scopes_to_grant(&agent(&MANAGEMENT_SCOPES, AgentStatus::Active)).is_empty());
    }
}
