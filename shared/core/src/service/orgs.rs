//! Operator actions: organizations, plans, and the bootstrap admin credential.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::{EventDraft, Idp, ServiceError, ServiceResult, details, retry_optimistically, settle};
use crate::domain::audit::RequestContext;
use crate::domain::scope::MANAGEMENT_SCOPES;
use crate::domain::{
    Actor, Agent, AgentStatus, AuditAction, Credential, CredentialProof, CredentialStatus,
    Organization, Outcome, Plan,
};
use crate::secret::ClientSecret;
use crate::store::Write;
use crate::store::{AgentReader, Commit, OrgReader};

/// The name of the agent that holds an organization's bootstrap admin credential.
pub const BOOTSTRAP_AGENT_NAME: &str = "bootstrap-admin";

/// The bootstrap admin's credential with its secret in plain text, printed once.
#[derive(Debug)]
pub struct BootstrapCredential {
    pub credential: Credential,
    pub client_secret: ClientSecret,
}

#[derive(Debug)]
pub struct BootstrappedOrg {
    pub org: Organization,
    pub admin: BootstrapCredential,
}

fn operator_context() -> RequestContext {
    RequestContext {
        request_id: format!("operator-{}", Uuid::new_v4()),
        source_ip: None,
        user_agent: Some("agentidp-admin".into()),
    }
}

impl<S: OrgReader + AgentReader + Commit + ?Sized> Idp<S> {
    fn new_admin_agent(&self, org_id: Uuid) -> Agent {
        let now = self.now();
        Agent {
            agent_id: Uuid::new_v4(),
            org_id,
            name: BOOTSTRAP_AGENT_NAME.into(),
            description: Some("Holds the organization's bootstrap admin credential.".into()),
            owner: None,
            capabilities: Vec::new(),
            scopes: MANAGEMENT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            metadata: Default::default(),
            status: AgentStatus::Active,
            created_at: now,
            updated_at: now,
            decommissioned_at: None,
            active_credentials: 1,
            delegation: None,
            tokens_not_before: None,
            require_dpop: false,
            version: 1,
        }
    }

    fn new_admin_credential(&self, agent: &Agent) -> ServiceResult<(Credential, ClientSecret)> {
        let secret = ClientSecret::generate()
            .map_err(|e| ServiceError::internal("generating a client secret", e))?;
        let hash = self
            .hasher
            .hash(&secret)
            .map_err(|e| ServiceError::internal("hashing a client secret", e))?;
        Ok((
            Credential {
                credential_id: Uuid::new_v4(),
                client_id: Uuid::new_v4(),
                agent_id: agent.agent_id,
                org_id: agent.org_id,
                proof: CredentialProof::Secret { hash },
                status: CredentialStatus::Active,
                agent_status: agent.status,
                agent_scopes: agent.scopes.clone(),
                agent_may_act: Vec::new(),
                agent_requires_dpop: agent.require_dpop,
                created_at: self.now(),
                expires_at: None,
                revoked_at: None,
                rotated_at: None,
                version: 1,
            },
            secret,
        ))
    }

    pub(super) fn operator_event(
        &self,
        org_id: Uuid,
        action: AuditAction,
        subject: Option<Uuid>,
        resource: String,
        detail: serde_json::Map<String, serde_json::Value>,
        plan: Plan,
    ) -> crate::domain::AuditEvent {
        EventDraft {
            org_id,
            action,
            outcome: Outcome::Success,
            actor: Actor::operator(),
            subject_agent_id: subject,
            resource,
            details: detail,
        }
        .at(self.now(), &self.config.limits(plan), &operator_context())
    }

    /// Creates an organization with its bootstrap admin agent and credential, in one commit.
    pub async fn create_org(
        self: &Arc<Self>,
        name: &str,
        plan: Plan,
    ) -> ServiceResult<BootstrappedOrg> {
        let mut errors = Vec::new();
        crate::validation::check_text(
            "name",
            name,
            crate::validation::limits::NAME_CHARS,
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ServiceError::Validation(errors));
        }
        let org = Organization {
            org_id: Uuid::new_v4(),
            name: name.to_owned(),
            plan,
            created_at: self.now(),
        };
        let agent = self.new_admin_agent(org.org_id);
        let (credential, secret) = self.new_admin_credential(&agent)?;
        let limits = self.config.limits(plan);
        let writes = vec![
            Write::CreateOrg(org.clone()),
            Write::CountAgents {
                org_id: org.org_id,
                delta: 1,
                limit: limits.max_agents,
            },
            Write::ClaimAgentName {
                org_id: org.org_id,
                name_key: Agent::name_key(&agent.name),
                agent_id: agent.agent_id,
            },
            Write::PutAgent {
                agent: agent.clone(),
                expected_version: None,
            },
            Write::PutCredential {
                credential: credential.clone(),
                expected_version: None,
            },
            Write::Audit(self.operator_event(
                org.org_id,
                AuditAction::OrganizationCreated,
                None,
                format!("organization/{}", org.org_id),
                details([("name", json!(org.name)), ("plan", json!(plan.as_str()))]),
                plan,
            )),
            Write::Audit(self.operator_event(
                org.org_id,
                AuditAction::CredentialGenerated,
                Some(agent.agent_id),
                format!("credential/{}", credential.credential_id),
                details([
                    ("clientId", json!(credential.client_id)),
                    ("bootstrap", json!(true)),
                ]),
                plan,
            )),
        ];
        self.store.commit(writes).await?;
        Ok(BootstrappedOrg {
            org,
            admin: BootstrapCredential {
                credential,
                client_secret: secret,
            },
        })
    }

    pub async fn list_orgs(&self) -> ServiceResult<Vec<Organization>> {
        Ok(self.store.list_orgs().await?)
    }

    pub async fn set_plan(&self, org_id: Uuid, plan: Plan) -> ServiceResult<Organization> {
        let org = self.store.get_org(org_id).await?.ok_or_else(|| {
            ServiceError::Validation(vec![crate::validation::FieldError::new(
                "orgId",
                "no such organization",
            )])
        })?;
        let event = self.operator_event(
            org_id,
            AuditAction::OrganizationPlanChanged,
            None,
            format!("organization/{org_id}"),
            details([
                ("from", json!(org.plan.as_str())),
                ("to", json!(plan.as_str())),
            ]),
            plan,
        );
        self.store
            .commit(vec![Write::SetPlan { org_id, plan }, Write::Audit(event)])
            .await?;
        self.forget_org(org_id);
        Ok(Organization { plan, ..org })
    }

    /// A new credential on the organization's bootstrap admin agent, for an operator whose
    /// admin secret was lost. If that agent is gone or suspended, a new admin agent is made.
    pub async fn issue_bootstrap_credential(
        self: &Arc<Self>,
        org_id: Uuid,
    ) -> ServiceResult<BootstrapCredential> {
        let org = self.store.get_org(org_id).await?.ok_or_else(|| {
            ServiceError::Validation(vec![crate::validation::FieldError::new(
                "orgId",
                "no such organization",
            )])
        })?;
        let limits = self.config.limits(org.plan);
        let (org, limits) = (&org, &limits);
        retry_optimistically(|_| async move {
            let existing = self
                .store
                .list_agents(org_id)
                .await?
                .into_iter()
                .find(|a| a.name == BOOTSTRAP_AGENT_NAME && a.status == AgentStatus::Active);
            let (mut writes, agent) = match existing {
                Some(agent) => {
                    let mut next = agent.clone();
                    next.active_credentials += 1;
                    next.version += 1;
                    (
                        vec![Write::PutAgent {
                            agent: next.clone(),
                            expected_version: Some(agent.version),
                        }],
                        next,
                    )
                }
                None => {
                    let agent = self.new_admin_agent(org_id);
                    (
                        vec![
                            Write::CountAgents {
                                org_id,
                                delta: 1,
                                limit: limits.max_agents,
                            },
                            Write::ClaimAgentName {
                                org_id,
                                name_key: Agent::name_key(&agent.name),
                                agent_id: agent.agent_id,
                            },
                            Write::PutAgent {
                                agent: agent.clone(),
                                expected_version: None,
                            },
                        ],
                        agent,
                    )
                }
            };
            let (credential, secret) = self.new_admin_credential(&agent)?;
            writes.push(Write::PutCredential {
                credential: credential.clone(),
                expected_version: None,
            });
            writes.push(Write::Audit(self.operator_event(
                org_id,
                AuditAction::CredentialGenerated,
                Some(agent.agent_id),
                format!("credential/{}", credential.credential_id),
                details([
                    ("clientId", json!(credential.client_id)),
                    ("bootstrap", json!(true)),
                ]),
                org.plan,
            )));
            settle(
                self.store.commit(writes).await,
                BootstrapCredential {
                    credential,
                    client_secret: secret,
                },
            )
        })
        .await
    }
}
