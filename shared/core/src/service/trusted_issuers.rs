//! Trusted issuers (workload identity federation): the outside issuers whose tokens the
//! organization's federated credentials accept.
//!
//! Read with `agents:read`. Written with `agents:write` and, besides, every management scope:
//! an issuer's keys and audience decide who can become each agent federated to it, whatever
//! that agent holds, so changing them is a change to the most privileged such agent.

use serde_json::json;
use uuid::Uuid;

use super::{
    Caller, EventDraft, Idp, LimitExceeded, Round, ServiceError, ServiceResult, details, page_of,
    retry_optimistically, settle,
};
use crate::client_keys::PublicKeys;
use crate::domain::scope::MANAGEMENT_SCOPES;
use crate::domain::time::usage_month;
use crate::domain::{AuditAction, Outcome, PlanLimits, Scope, TrustedIssuer};
use crate::store::{Commit, Guard, OrgReader, StoreError, TrustedIssuerReader, Write};

/// The fields of `POST /trusted-issuers`, validated.
#[derive(Debug, Clone)]
pub struct NewTrustedIssuer {
    pub issuer: String,
    pub audience: String,
    pub keys: PublicKeys,
    pub description: Option<String>,
}

/// The fields of `PATCH /trusted-issuers/{id}`; `None` leaves one as it is, `Some(None)` clears
/// the description. The issuer itself never changes.
#[derive(Debug, Clone, Default)]
pub struct TrustedIssuerChanges {
    pub audience: Option<String>,
    pub keys: Option<PublicKeys>,
    pub description: Option<Option<String>>,
}

#[derive(Debug, Clone)]
pub struct TrustedIssuerPage {
    pub issuers: Vec<TrustedIssuer>,
    pub total: usize,
}

fn issuer_path(issuer_id: Uuid) -> String {
    format!("trusted-issuer/{issuer_id}")
}

/// What an event records of the issuer's keys: their ids, or where they are published.
fn keys_detail(keys: &PublicKeys) -> (&'static str, serde_json::Value) {
    match keys {
        PublicKeys::Inline(set) => ("keyIds", json!(set.key_ids())),
        PublicKeys::Published(uri) => ("jwksUri", json!(uri.as_str())),
    }
}

impl<S: OrgReader + TrustedIssuerReader + Commit + ?Sized> Idp<S> {
    /// Refuses, and audits, a change to trusted issuers by a caller without every management
    /// scope (see the module's comment).
    async fn require_full_authority(
        &self,
        caller: &Caller,
        action: AuditAction,
        resource: String,
        limits: &PlanLimits,
    ) -> ServiceResult<()> {
        let every_scope = MANAGEMENT_SCOPES.map(str::to_owned).to_vec();
        self.refuse_takeover(caller, (None, every_scope), action, resource, limits)
            .await
    }

    pub async fn create_trusted_issuer(
        &self,
        caller: &Caller,
        input: NewTrustedIssuer,
    ) -> ServiceResult<TrustedIssuer> {
        caller.require(Scope::AgentsWrite)?;
        let limits = self.limits(caller.org_id).await?;
        let issuer_id = TrustedIssuer::id_for(caller.org_id, &input.issuer);
        self.require_full_authority(
            caller,
            AuditAction::TrustedIssuerCreated,
            issuer_path(issuer_id),
            &limits,
        )
        .await?;
        let now = self.now();
        let issuer = TrustedIssuer {
            issuer_id,
            org_id: caller.org_id,
            issuer: input.issuer,
            audience: input.audience,
            keys: input.keys,
            description: input.description,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let event = EventDraft {
            org_id: caller.org_id,
            action: AuditAction::TrustedIssuerCreated,
            outcome: Outcome::Success,
            actor: caller.actor(),
            subject_agent_id: None,
            resource: issuer_path(issuer_id),
            details: details([
                ("issuer", json!(issuer.issuer)),
                ("audience", json!(issuer.audience)),
                keys_detail(&issuer.keys),
            ]),
        }
        .at(now, &limits, &caller.context);
        let writes = vec![
            Write::CountTrustedIssuers {
                org_id: caller.org_id,
                delta: 1,
                limit: limits.max_trusted_issuers,
            },
            Write::PutTrustedIssuer {
                issuer: issuer.clone(),
                expected_version: None,
            },
            Write::Audit(event),
        ];
        match self.store.commit(writes).await {
            Ok(()) => Ok(issuer),
            Err(StoreError::ConditionFailed {
                guard: Guard::TrustedIssuerLimit,
                ..
            }) => {
                let usage = self.store.usage(caller.org_id, &usage_month(&now)).await?;
                Err(ServiceError::PlanLimit(LimitExceeded {
                    limit: "maxTrustedIssuers",
                    max: limits.max_trusted_issuers,
                    current: usage.trusted_issuers,
                }))
            }
            Err(StoreError::ConditionFailed {
                guard: Guard::IssuerAlreadyTrusted,
                ..
            }) => Err(ServiceError::IssuerAlreadyTrusted),
            // Another guard failing here is a bug: the conversion makes it an internal error.
            Err(
                e @ (StoreError::ConditionFailed { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Internal { .. }),
            ) => Err(e.into()),
        }
    }

    pub async fn list_trusted_issuers(
        &self,
        caller: &Caller,
        page: u32,
        limit: u32,
    ) -> ServiceResult<TrustedIssuerPage> {
        caller.require(Scope::AgentsRead)?;
        let issuers = self.store.list_trusted_issuers(caller.org_id).await?;
        let total = issuers.len();
        Ok(TrustedIssuerPage {
            issuers: page_of(issuers, page, limit),
            total,
        })
    }

    pub async fn get_trusted_issuer(
        &self,
        caller: &Caller,
        issuer_id: Uuid,
    ) -> ServiceResult<TrustedIssuer> {
        caller.require(Scope::AgentsRead)?;
        self.store
            .get_trusted_issuer(caller.org_id, issuer_id)
            .await?
            .ok_or(ServiceError::TrustedIssuerNotFound)
    }

    pub async fn update_trusted_issuer(
        &self,
        caller: &Caller,
        issuer_id: Uuid,
        changes: TrustedIssuerChanges,
    ) -> ServiceResult<TrustedIssuer> {
        caller.require(Scope::AgentsWrite)?;
        let limits = &self.limits(caller.org_id).await?;
        self.require_full_authority(
            caller,
            AuditAction::TrustedIssuerUpdated,
            issuer_path(issuer_id),
            limits,
        )
        .await?;
        let changes = &changes;
        retry_optimistically(|_| async move {
            let current = self
                .store
                .get_trusted_issuer(caller.org_id, issuer_id)
                .await?
                .ok_or(ServiceError::TrustedIssuerNotFound)?;
            let mut next = current.clone();
            let mut changed: Vec<&str> = Vec::new();
            if let Some(audience) = &changes.audience
                && *audience != current.audience
            {
                next.audience = audience.clone();
                changed.push("audience");
            }
            if let Some(keys) = &changes.keys
                && *keys != current.keys
            {
                next.keys = keys.clone();
                changed.push("keys");
            }
            if let Some(description) = &changes.description
                && *description != current.description
            {
                next.description = description.clone();
                changed.push("description");
            }
            if changed.is_empty() {
                return Ok(Round::Done(current));
            }
            let now = self.now();
            next.updated_at = now;
            next.version += 1;
            let writes = vec![
                Write::PutTrustedIssuer {
                    issuer: next.clone(),
                    expected_version: Some(current.version),
                },
                Write::Audit(
                    EventDraft {
                        org_id: caller.org_id,
                        action: AuditAction::TrustedIssuerUpdated,
                        outcome: Outcome::Success,
                        actor: caller.actor(),
                        subject_agent_id: None,
                        resource: issuer_path(issuer_id),
                        details: details([
                            ("changed", json!(changed)),
                            ("issuer", json!(next.issuer)),
                            ("audience", json!(next.audience)),
                            keys_detail(&next.keys),
                        ]),
                    }
                    .at(now, limits, &caller.context),
                ),
            ];
            settle(self.store.commit(writes).await, next)
        })
        .await
    }

    /// Stops trusting the issuer at once: federated credentials naming it get no more tokens
    /// (they stay, and work again should the issuer be trusted again).
    pub async fn delete_trusted_issuer(
        &self,
        caller: &Caller,
        issuer_id: Uuid,
    ) -> ServiceResult<()> {
        caller.require(Scope::AgentsWrite)?;
        let limits = &self.limits(caller.org_id).await?;
        self.require_full_authority(
            caller,
            AuditAction::TrustedIssuerDeleted,
            issuer_path(issuer_id),
            limits,
        )
        .await?;
        retry_optimistically(|_| async move {
            let current = self
                .store
                .get_trusted_issuer(caller.org_id, issuer_id)
                .await?
                .ok_or(ServiceError::TrustedIssuerNotFound)?;
            let writes = vec![
                Write::DeleteTrustedIssuer {
                    org_id: caller.org_id,
                    issuer_id,
                    expected_version: current.version,
                },
                Write::CountTrustedIssuers {
                    org_id: caller.org_id,
                    delta: -1,
                    limit: limits.max_trusted_issuers,
                },
                Write::Audit(
                    EventDraft {
                        org_id: caller.org_id,
                        action: AuditAction::TrustedIssuerDeleted,
                        outcome: Outcome::Success,
                        actor: caller.actor(),
                        subject_agent_id: None,
                        resource: issuer_path(issuer_id),
                        details: details([("issuer", json!(current.issuer))]),
                    }
                    .at(self.now(), limits, &caller.context),
                ),
            ];
            settle(self.store.commit(writes).await, ())
        })
        .await
    }
}
