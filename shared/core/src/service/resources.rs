//! Registering resources (RFC 8707): the audiences an organization's agents may ask tokens for.

use serde_json::json;
use uuid::Uuid;

use super::{
    Caller, EventDraft, Idp, LimitExceeded, Round, ServiceError, ServiceResult, details, page_of,
    retry_optimistically, settle,
};
use crate::domain::time::usage_month;
use crate::domain::{AuditAction, Outcome, Resource, Scope};
use crate::store::{Commit, Guard, OrgReader, ResourceReader, StoreError, Write};
use crate::validation::FieldError;

/// The fields of `POST /resources`, validated: the identifier normalised
/// ([`crate::validation::resource_identifier`]), no management scope among the scopes.
#[derive(Debug, Clone, Default)]
pub struct NewResource {
    pub identifier: String,
    pub name: String,
    pub description: Option<String>,
    pub scopes: Vec<String>,
}

/// The fields of `PATCH /resources/{id}`, validated as [`NewResource`]'s; `None` leaves one
/// as it is, and `Some(None)` clears the description.
#[derive(Debug, Clone, Default)]
pub struct ResourceChanges {
    pub identifier: Option<String>,
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ResourcePage {
    pub resources: Vec<Resource>,
    pub total: usize,
}

fn resource_path(resource_id: Uuid) -> String {
    format!("resource/{resource_id}")
}

impl<S: OrgReader + ResourceReader + Commit + ?Sized> Idp<S> {
    /// This API's own audience is no resource: a token for it would be a management API token,
    /// and a resource's tokens must never be accepted here.
    fn refuse_own_audience(&self, identifier: &str) -> ServiceResult<()> {
        let own = &self.config.audience;
        let normalised = crate::validation::resource_identifier(own).ok();
        if identifier == own || normalised.as_deref() == Some(identifier) {
            return Err(ServiceError::Validation(vec![FieldError::new(
                "identifier",
                "is this API's own audience: its tokens are the ones asked for without resource",
            )]));
        }
        Ok(())
    }

    pub async fn create_resource(
        &self,
        caller: &Caller,
        input: NewResource,
    ) -> ServiceResult<Resource> {
        caller.require(Scope::ResourcesWrite)?;
        self.refuse_own_audience(&input.identifier)?;
        let limits = self.limits(caller.org_id).await?;
        let now = self.now();
        let resource = Resource {
            resource_id: Uuid::new_v4(),
            org_id: caller.org_id,
            identifier: input.identifier,
            name: input.name,
            description: input.description,
            scopes: input.scopes,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let event = EventDraft {
            org_id: caller.org_id,
            action: AuditAction::ResourceCreated,
            outcome: Outcome::Success,
            actor: caller.actor(),
            subject_agent_id: None,
            resource: resource_path(resource.resource_id),
            details: details([
                ("identifier", json!(resource.identifier)),
                ("name", json!(resource.name)),
                ("scopes", json!(resource.scopes)),
            ]),
        }
        .at(now, &limits, &caller.context);
        let writes = vec![
            Write::CountResources {
                org_id: caller.org_id,
                delta: 1,
                limit: limits.max_resources,
            },
            Write::ClaimResourceIdentifier(resource.target()),
            Write::PutResource {
                resource: resource.clone(),
                expected_version: None,
            },
            Write::Audit(event),
        ];
        match self.store.commit(writes).await {
            Ok(()) => Ok(resource),
            Err(StoreError::ConditionFailed {
                guard: Guard::ResourceLimit,
                ..
            }) => {
                let usage = self.store.usage(caller.org_id, &usage_month(&now)).await?;
                Err(ServiceError::PlanLimit(LimitExceeded {
                    limit: "maxResources",
                    max: limits.max_resources,
                    current: usage.resources,
                }))
            }
            Err(StoreError::ConditionFailed {
                guard: Guard::IdentifierTaken,
                ..
            }) => Err(ServiceError::ResourceIdentifierTaken),
            // Another guard failing here is a bug: the conversion makes it an internal error.
            Err(
                e @ (StoreError::ConditionFailed { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Internal { .. }),
            ) => Err(e.into()),
        }
    }

    pub async fn list_resources(
        &self,
        caller: &Caller,
        page: u32,
        limit: u32,
    ) -> ServiceResult<ResourcePage> {
        caller.require(Scope::ResourcesRead)?;
        let resources = self.store.list_resources(caller.org_id).await?;
        let total = resources.len();
        Ok(ResourcePage {
            resources: page_of(resources, page, limit),
            total,
        })
    }

    pub async fn get_resource(
        &self,
        caller: &Caller,
        resource_id: Uuid,
    ) -> ServiceResult<Resource> {
        caller.require(Scope::ResourcesRead)?;
        self.store
            .get_resource(caller.org_id, resource_id)
            .await?
            .ok_or(ServiceError::ResourceNotFound)
    }

    /// Changes the resource and, in the same commit, its claim of the identifier: a new
    /// identifier is claimed and the old one freed; new scopes are copied onto the claim.
    pub async fn update_resource(
        &self,
        caller: &Caller,
        resource_id: Uuid,
        changes: ResourceChanges,
    ) -> ServiceResult<Resource> {
        caller.require(Scope::ResourcesWrite)?;
        if let Some(identifier) = &changes.identifier {
            self.refuse_own_audience(identifier)?;
        }
        let limits = &self.limits(caller.org_id).await?;
        let changes = &changes;
        retry_optimistically(|_| async move {
            let current = self
                .store
                .get_resource(caller.org_id, resource_id)
                .await?
                .ok_or(ServiceError::ResourceNotFound)?;
            let mut next = current.clone();
            let mut changed: Vec<&str> = Vec::new();
            if let Some(identifier) = &changes.identifier
                && *identifier != current.identifier
            {
                next.identifier = identifier.clone();
                changed.push("identifier");
            }
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
            if let Some(scopes) = &changes.scopes
                && *scopes != current.scopes
            {
                next.scopes = scopes.clone();
                changed.push("scopes");
            }
            if changed.is_empty() {
                return Ok(Round::Done(current));
            }
            let now = self.now();
            next.updated_at = now;
            next.version += 1;
            // The resource's own write comes first: when another writer got there first, its
            // failed version is what a transaction reports, and the round is run again.
            let mut writes = vec![Write::PutResource {
                resource: next.clone(),
                expected_version: Some(current.version),
            }];
            if next.identifier != current.identifier || next.scopes != current.scopes {
                writes.push(Write::ClaimResourceIdentifier(next.target()));
            }
            if next.identifier != current.identifier {
                writes.push(Write::ReleaseResourceIdentifier {
                    org_id: caller.org_id,
                    identifier: current.identifier.clone(),
                });
            }
            writes.push(Write::Audit(
                EventDraft {
                    org_id: caller.org_id,
                    action: AuditAction::ResourceUpdated,
                    outcome: Outcome::Success,
                    actor: caller.actor(),
                    subject_agent_id: None,
                    resource: resource_path(resource_id),
                    details: details([
                        ("changed", json!(changed)),
                        ("identifier", json!(next.identifier)),
                    ]),
                }
                .at(now, limits, &caller.context),
            ));
            match self.store.commit(writes).await {
                Err(StoreError::ConditionFailed {
                    guard: Guard::IdentifierTaken,
                    ..
                }) => Err(ServiceError::ResourceIdentifierTaken),
                committed => settle(committed, next),
            }
        })
        .await
    }

    /// Deletes the resource for good: its identifier is free to register again, and its place
    /// in the plan is freed.
    pub async fn delete_resource(&self, caller: &Caller, resource_id: Uuid) -> ServiceResult<()> {
        caller.require(Scope::ResourcesWrite)?;
        let limits = &self.limits(caller.org_id).await?;
        retry_optimistically(|_| async move {
            let current = self
                .store
                .get_resource(caller.org_id, resource_id)
                .await?
                .ok_or(ServiceError::ResourceNotFound)?;
            let writes = vec![
                Write::DeleteResource {
                    org_id: caller.org_id,
                    resource_id,
                    expected_version: current.version,
                },
                Write::ReleaseResourceIdentifier {
                    org_id: caller.org_id,
                    identifier: current.identifier.clone(),
                },
                Write::CountResources {
                    org_id: caller.org_id,
                    delta: -1,
                    limit: limits.max_resources,
                },
                Write::Audit(
                    EventDraft {
                        org_id: caller.org_id,
                        action: AuditAction::ResourceDeleted,
                        outcome: Outcome::Success,
                        actor: caller.actor(),
                        subject_agent_id: None,
                        resource: resource_path(resource_id),
                        details: details([
                            ("identifier", json!(current.identifier)),
                            ("name", json!(current.name)),
                        ]),
                    }
                    .at(self.now(), limits, &caller.context),
                ),
            ];
            settle(self.store.commit(writes).await, ())
        })
        .await
    }
}
