//! Credentials exactly as the credential guide describes: generate (secret shown once), list,
//! rotate (same `credentialId` and `clientId`, new secret), revoke (irreversible).

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{
    Caller, EventDraft, Idp, LimitExceeded, ServiceError, ServiceResult, details, page_of,
    retry_optimistically, settle,
};
use crate::client_keys::PublicKeys;
use crate::domain::credential::EffectiveCredentialStatus;
use crate::domain::{
    AuditAction, Credential, CredentialProof, CredentialStatus, CredentialType, FederatedIdentity,
    Outcome, Scope, TrustedIssuer,
};
use crate::secret::ClientSecret;
use crate::store::Write;
use crate::store::{AgentReader, Commit, CredentialReader, OrgReader, TrustedIssuerReader};
use crate::validation::FieldError;

/// A credential as generated or rotated: with its secret in plain text, the one response that
/// shows it, when it is a client secret.
#[derive(Debug)]
pub struct IssuedCredential {
    pub credential: Credential,
    pub client_secret: Option<ClientSecret>,
}

/// What a new or rotated credential is proved with.
#[derive(Debug, Clone)]
pub enum RequestedProof {
    /// A new client secret, generated here.
    Secret,
    /// These public keys, or those at this URL (private_key_jwt).
    PublicKeys(PublicKeys),
    /// A subject of one of the organization's trusted issuers (workload identity federation).
    Federated(FederatedIdentity),
}

impl RequestedProof {
    fn credential_type(&self) -> CredentialType {
        match self {
            RequestedProof::Secret => CredentialType::ClientSecret,
            RequestedProof::PublicKeys(_) => CredentialType::PrivateKeyJwt,
            RequestedProof::Federated(_) => CredentialType::Federated,
        }
    }
}

#[derive(Debug)]
pub struct CredentialPage {
    pub credentials: Vec<Credential>,
    pub total: usize,
}

fn refuse_past_expiry(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> ServiceResult<()> {
    match expires_at {
        Some(at) if at <= now => Err(ServiceError::Validation(vec![FieldError::new(
            "expiresAt",
            "must be in the future",
        )])),
        _ => Ok(()),
    }
}

/// An audit event's details about a credential: its client id, its type, and what it is proved
/// with, short of a secret: key ids, the key set's URL, or the federated issuer and subject.
fn proof_details<const N: usize>(
    credential: &Credential,
    extra: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    let mut recorded = details([
        ("clientId", json!(credential.client_id)),
        ("type", json!(credential.proof.credential_type().as_str())),
    ]);
    if let Some(key_ids) = credential.proof.public_keys().and_then(PublicKeys::key_ids) {
        recorded.insert("keyIds".to_owned(), json!(key_ids));
    }
    if let Some(uri) = credential
        .proof
        .public_keys()
        .and_then(PublicKeys::jwks_uri)
    {
        recorded.insert("jwksUri".to_owned(), json!(uri.as_str()));
    }
    if let Some(identity) = credential.proof.federated() {
        recorded.insert("issuer".to_owned(), json!(identity.issuer));
        recorded.insert("subject".to_owned(), json!(identity.subject));
    }
    for (name, value) in extra {
        recorded.insert(name.to_owned(), value);
    }
    recorded
}

impl<
    S: OrgReader + AgentReader + CredentialReader + TrustedIssuerReader + Commit + ?Sized + 'static,
> Idp<S>
{
    fn new_secret(&self) -> ServiceResult<(ClientSecret, String)> {
        let secret = ClientSecret::generate()
            .map_err(|e| ServiceError::internal("generating a client secret", e))?;
        let hash = self
            .hasher
            .hash(&secret)
            .map_err(|e| ServiceError::internal("hashing a client secret", e))?;
        Ok((secret, hash))
    }

    /// bcrypt is slow by design; run it off the async workers.
    async fn new_secret_off_thread(
        self: &std::sync::Arc<Self>,
    ) -> ServiceResult<(ClientSecret, String)> {
        let idp = self.clone();
        tokio::task::spawn_blocking(move || idp.new_secret())
            .await
            .map_err(|e| ServiceError::internal("the hashing task failed", e))?
    }

    /// The secret (generated now, bcrypt off the async workers), the keys, or the federated
    /// identity a credential gets. A federated identity's issuer must be one the organization
    /// trusts: a credential no token could ever match is a mistake to report now.
    async fn proof_for(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        requested: RequestedProof,
    ) -> ServiceResult<(Option<ClientSecret>, CredentialProof)> {
        Ok(match requested {
            RequestedProof::Secret => {
                let (secret, hash) = self.new_secret_off_thread().await?;
                (Some(secret), CredentialProof::Secret { hash })
            }
            RequestedProof::PublicKeys(keys) => (None, CredentialProof::PublicKeys(keys)),
            RequestedProof::Federated(identity) => {
                let issuer_id = TrustedIssuer::id_for(caller.org_id, &identity.issuer);
                if self
                    .store
                    .get_trusted_issuer(caller.org_id, issuer_id)
                    .await?
                    .is_none()
                {
                    return Err(ServiceError::Validation(vec![FieldError::new(
                        "issuer",
                        "is not one of the organization's trusted issuers \
                         (POST /api/v1/trusted-issuers)",
                    )]));
                }
                (None, CredentialProof::Federated(identity))
            }
        })
    }

    pub async fn generate_credential(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        agent_id: Uuid,
        requested: RequestedProof,
        expires_at: Option<DateTime<Utc>>,
    ) -> ServiceResult<IssuedCredential> {
        caller.require(Scope::AgentsWrite)?;
        refuse_past_expiry(expires_at, self.now())?;
        let limits = self.limits(caller.org_id).await?;
        // Cheap refusals first, so an inactive agent or a full plan costs no bcrypt; the record
        // read for them also serves the first attempt to write.
        let refusal = |agent: &crate::domain::Agent| {
            if !agent.status.may_receive_credentials() {
                Some(ServiceError::AgentNotActive(format!(
                    "the agent is {}",
                    agent.status.as_str()
                )))
            } else if agent.active_credentials >= limits.max_active_credentials_per_agent {
                Some(ServiceError::PlanLimit(LimitExceeded {
                    limit: "maxActiveCredentialsPerAgent",
                    max: limits.max_active_credentials_per_agent,
                    current: agent.active_credentials,
                }))
            } else {
                None
            }
        };
        let first_read = self
            .store
            .get_agent(caller.org_id, agent_id)
            .await?
            .ok_or(ServiceError::AgentNotFound)?;
        let takeover_check = |agent_scopes: Vec<String>| {
            self.refuse_takeover(
                caller,
                (Some(agent_id), agent_scopes),
                AuditAction::CredentialGenerated,
                format!("agent/{agent_id}"),
                &limits,
            )
        };
        takeover_check(first_read.scopes.clone()).await?;
        if let Some(refused) = refusal(&first_read) {
            return Err(refused);
        }
        let (secret, proof) = self.proof_for(caller, requested).await?;
        let (first_read, proof, limits) = (&first_read, &proof, &limits);
        let (refusal, takeover_check) = (&refusal, &takeover_check);
        let credential = retry_optimistically(|attempt| async move {
            let agent = if attempt == 0 {
                first_read.clone()
            } else {
                let agent = self
                    .store
                    .get_agent(caller.org_id, agent_id)
                    .await?
                    .ok_or(ServiceError::AgentNotFound)?;
                takeover_check(agent.scopes.clone()).await?;
                if let Some(refused) = refusal(&agent) {
                    return Err(refused);
                }
                agent
            };
            let now = self.now();
            let credential = Credential {
                credential_id: Uuid::new_v4(),
                client_id: Uuid::new_v4(),
                agent_id,
                org_id: caller.org_id,
                proof: proof.clone(),
                status: CredentialStatus::Active,
                agent_status: agent.status,
                agent_scopes: agent.scopes.clone(),
                agent_may_act: agent
                    .delegation
                    .as_ref()
                    .map(|policy| policy.may_act.clone())
                    .unwrap_or_default(),
                agent_requires_dpop: agent.require_dpop,
                created_at: now,
                expires_at,
                revoked_at: None,
                rotated_at: None,
                version: 1,
            };
            let mut next_agent = agent.clone();
            next_agent.active_credentials += 1;
            next_agent.version += 1;
            let writes = vec![
                Write::PutAgent {
                    agent: next_agent,
                    expected_version: Some(agent.version),
                },
                Write::PutCredential {
                    credential: credential.clone(),
                    expected_version: None,
                },
                Write::Audit(
                    EventDraft {
                        org_id: caller.org_id,
                        action: AuditAction::CredentialGenerated,
                        outcome: Outcome::Success,
                        actor: caller.actor(),
                        subject_agent_id: Some(agent_id),
                        resource: format!("credential/{}", credential.credential_id),
                        details: proof_details(
                            &credential,
                            [(
                                "expiresAt",
                                json!(
                                    expires_at.map(|at| crate::domain::time::format_timestamp(&at))
                                ),
                            )],
                        ),
                    }
                    .at(now, limits, &caller.context),
                ),
            ];
            settle(self.store.commit(writes).await, credential)
        })
        .await?;
        Ok(IssuedCredential {
            credential,
            client_secret: secret,
        })
    }

    pub async fn list_credentials(
        &self,
        caller: &Caller,
        agent_id: Uuid,
        status: Option<EffectiveCredentialStatus>,
        page: u32,
        limit: u32,
    ) -> ServiceResult<CredentialPage> {
        caller.require(Scope::AgentsWrite)?;
        self.store
            .get_agent(caller.org_id, agent_id)
            .await?
            .ok_or(ServiceError::AgentNotFound)?;
        let now = self.now();
        let credentials: Vec<Credential> = self
            .store
            .list_credentials(caller.org_id, agent_id)
            .await?
            .into_iter()
            .filter(|c| status.is_none_or(|s| c.effective_status(now) == s))
            .collect();
        let total = credentials.len();
        Ok(CredentialPage {
            credentials: page_of(credentials, page, limit),
            total,
        })
    }

    async fn credential_of(
        &self,
        caller: &Caller,
        agent_id: Uuid,
        credential_id: Uuid,
    ) -> ServiceResult<Credential> {
        self.store
            .get_agent(caller.org_id, agent_id)
            .await?
            .ok_or(ServiceError::AgentNotFound)?;
        self.store
            .get_credential(caller.org_id, agent_id, credential_id)
            .await?
            .ok_or(ServiceError::CredentialNotFound)
    }

    /// A new secret, or new keys, for the same credential. The old secret or keys stop working
    /// at once; tokens already issued stay valid. `expires_at`, when given, replaces the expiry.
    /// A credential keeps its type: `requested` must be of the same kind.
    pub async fn rotate_credential(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        agent_id: Uuid,
        credential_id: Uuid,
        requested: RequestedProof,
        expires_at: Option<DateTime<Utc>>,
    ) -> ServiceResult<IssuedCredential> {
        caller.require(Scope::AgentsWrite)?;
        refuse_past_expiry(expires_at, self.now())?;
        let limits = self.limits(caller.org_id).await?;
        let first_read = self.credential_of(caller, agent_id, credential_id).await?;
        // The credential's copy of the agent's scopes moves with the agent's (each change
        // rewrites it at a new version), so the rotation's conditional write guards this check.
        let takeover_check = |agent_scopes: Vec<String>| {
            self.refuse_takeover(
                caller,
                (Some(agent_id), agent_scopes),
                AuditAction::CredentialRotated,
                format!("credential/{credential_id}"),
                &limits,
            )
        };
        takeover_check(first_read.agent_scopes.clone()).await?;
        if !first_read.may_be_rotated() {
            return Err(ServiceError::CredentialRevoked);
        }
        let kept = first_read.proof.credential_type();
        if requested.credential_type() != kept {
            let (field, problem) = match kept {
                CredentialType::ClientSecret => (
                    "type",
                    "a client_secret credential gets a new secret: send no keys or identity",
                ),
                CredentialType::PrivateKeyJwt => (
                    "jwks",
                    "is required (or jwksUri): a private_key_jwt credential is rotated to new keys",
                ),
                CredentialType::Federated => (
                    "subject",
                    "is required, with issuer: a federated credential is rotated to another \
                     identity",
                ),
            };
            return Err(ServiceError::Validation(vec![FieldError::new(
                field, problem,
            )]));
        }
        let (secret, proof) = self.proof_for(caller, requested).await?;
        let (first_read, proof, limits, takeover_check) =
            (&first_read, &proof, &limits, &takeover_check);
        let credential = retry_optimistically(|attempt| async move {
            let current = if attempt == 0 {
                first_read.clone()
            } else {
                // Another writer got there first: re-read by client id, the one consistent read.
                let current = self
                    .store
                    .credential_by_client_id(first_read.client_id)
                    .await?
                    .filter(|c| c.org_id == caller.org_id && c.agent_id == agent_id)
                    .ok_or(ServiceError::CredentialNotFound)?;
                takeover_check(current.agent_scopes.clone()).await?;
                if !current.may_be_rotated() {
                    return Err(ServiceError::CredentialRevoked);
                }
                current
            };
            let now = self.now();
            let mut next = current.clone();
            next.proof = proof.clone();
            next.rotated_at = Some(now);
            if expires_at.is_some() {
                next.expires_at = expires_at;
            }
            next.version += 1;
            let writes = vec![
                Write::PutCredential {
                    credential: next.clone(),
                    expected_version: Some(current.version),
                },
                Write::Audit(
                    EventDraft {
                        org_id: caller.org_id,
                        action: AuditAction::CredentialRotated,
                        outcome: Outcome::Success,
                        actor: caller.actor(),
                        subject_agent_id: Some(agent_id),
                        resource: format!("credential/{credential_id}"),
                        details: proof_details(&next, []),
                    }
                    .at(now, limits, &caller.context),
                ),
            ];
            settle(self.store.commit(writes).await, next)
        })
        .await?;
        Ok(IssuedCredential {
            credential,
            client_secret: secret,
        })
    }

    /// Revokes the credential. Its tokens stay valid until they expire, as the credential guide
    /// says, unless `revoke_tokens`: then the agent's kill switch is pulled in the same commit,
    /// stopping every token it holds (a leaked credential may have minted any of them, and
    /// which it minted is recorded nowhere a check could read).
    pub async fn revoke_credential(
        &self,
        caller: &Caller,
        agent_id: Uuid,
        credential_id: Uuid,
        revoke_tokens: bool,
    ) -> ServiceResult<()> {
        caller.require(Scope::AgentsWrite)?;
        let limits = &self.limits(caller.org_id).await?;
        let revoked_at = retry_optimistically(|_| async move {
            let agent = self
                .store
                .get_agent(caller.org_id, agent_id)
                .await?
                .ok_or(ServiceError::AgentNotFound)?;
            let current = self
                .store
                .get_credential(caller.org_id, agent_id, credential_id)
                .await?
                .ok_or(ServiceError::CredentialNotFound)?;
            self.refuse_takeover(
                caller,
                (Some(agent_id), agent.scopes.clone()),
                AuditAction::CredentialRevoked,
                format!("credential/{credential_id}"),
                limits,
            )
            .await?;
            if current.status == CredentialStatus::Revoked {
                return Err(ServiceError::CredentialRevoked);
            }
            let now = self.now();
            let mut next = current.clone();
            next.status = CredentialStatus::Revoked;
            next.revoked_at = Some(now);
            next.version += 1;
            let mut next_agent = agent.clone();
            next_agent.active_credentials = agent.active_credentials.saturating_sub(1);
            if revoke_tokens {
                next_agent.tokens_not_before = Some(now);
            }
            next_agent.version += 1;
            let writes = vec![
                Write::PutAgent {
                    agent: next_agent,
                    expected_version: Some(agent.version),
                },
                Write::PutCredential {
                    credential: next,
                    expected_version: Some(current.version),
                },
                Write::Audit(
                    EventDraft {
                        org_id: caller.org_id,
                        action: AuditAction::CredentialRevoked,
                        outcome: Outcome::Success,
                        actor: caller.actor(),
                        subject_agent_id: Some(agent_id),
                        resource: format!("credential/{credential_id}"),
                        details: details([
                            ("clientId", json!(current.client_id)),
                            ("revokeTokens", json!(revoke_tokens)),
                        ]),
                    }
                    .at(now, limits, &caller.context),
                ),
            ];
            settle(self.store.commit(writes).await, now)
        })
        .await?;
        if revoke_tokens {
            super::agents::outlast_the_second_of(self.clock.as_ref(), revoked_at).await;
        }
        Ok(())
    }
}
