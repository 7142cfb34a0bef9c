//! The management endpoints: agents, resources, credentials, audit. Parse, call the domain, map.

use std::sync::Arc;

use http::{StatusCode, header};
use uuid::Uuid;

use crate::errors::ApiError;
use crate::views::{
    AgentView, AuditEventView, AuditPageView, CredentialView, IssuedCredentialView, PageView,
    ResourceView,
};
use crate::{ApiRequest, ApiResponse, Endpoint, empty_response, json_response, media_type};
use agentidp_core::client_keys::ClientKeySet;
use agentidp_core::domain::credential::EffectiveCredentialStatus;
use agentidp_core::domain::{AgentStatus, AuditAction, CredentialType, Outcome, Scope};
use agentidp_core::service::agents::{AgentChanges, NewAgent};
use agentidp_core::service::audit::AuditFilters;
use agentidp_core::service::credentials::RequestedProof;
use agentidp_core::service::resources::{NewResource, ResourceChanges};
use agentidp_core::service::{Caller, Idp, ServiceError};
use agentidp_core::validation::{
    BodyError, FieldError, JsonObject, QueryParams, check_capability, check_resource_scope,
    check_scope, limits, parse_id, resource_identifier,
};

const DEFAULT_PAGE_LIMIT: u32 = 20;
const DEFAULT_AUDIT_LIMIT: u32 = 50;

fn validation(errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid(errors)
}

/// The bearer token of the `Authorization` header, if it has one.
pub(crate) fn bearer_token(request: &ApiRequest) -> Option<&str> {
    let value = request.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// A JSON body, if the request has one: anything but JSON is refused with 415.
fn json_body(request: &ApiRequest) -> Result<JsonObject, ApiError> {
    let has_body = !request.body.iter().all(u8::is_ascii_whitespace);
    match media_type(&request.headers).as_deref() {
        Some("application/json") => {}
        None if !has_body => {}
        _ => return Err(ApiError::UnsupportedMediaType("application/json".into())),
    }
    JsonObject::parse(&request.body).map_err(|e| match e {
        BodyError::NotJson(message) => validation(vec![FieldError::new("body", message)]),
        BodyError::Fields(errors) => validation(errors),
    })
}

fn path_id(params: &[String], index: usize, not_found: ServiceError) -> Result<Uuid, ApiError> {
    params
        .get(index)
        .and_then(|p| parse_id(p))
        .ok_or(ApiError::Service(not_found))
}

fn read_new_agent(body: &mut JsonObject) -> NewAgent {
    NewAgent {
        name: body
            .required_text("name", limits::NAME_CHARS)
            .unwrap_or_default(),
        description: body
            .optional_text("description", limits::DESCRIPTION_CHARS)
            .flatten(),
        owner: body.optional_text("owner", limits::OWNER_CHARS).flatten(),
        capabilities: body
            .string_list("capabilities", check_capability)
            .unwrap_or_default(),
        scopes: body.string_list("scopes", check_scope).unwrap_or_default(),
        metadata: body.string_map("metadata").unwrap_or_default(),
    }
}

fn read_changes(body: &mut JsonObject) -> AgentChanges {
    let name = match body.optional_text("name", limits::NAME_CHARS) {
        Some(None) => {
            body.errors
                .push(FieldError::new("name", "cannot be cleared"));
            None
        }
        other => other.flatten(),
    };
    let status = match body.optional_text("status", 32) {
        None => None,
        Some(Some(text)) if text == "active" || text == "suspended" => AgentStatus::parse(&text),
        Some(Some(text)) if text == "decommissioned" => {
            body.errors.push(FieldError::new(
                "status",
                "use DELETE /api/v1/agents/{agentId} to decommission",
            ));
            None
        }
        Some(_) => {
            body.errors.push(FieldError::new(
                "status",
                "must be \"active\" or \"suspended\"",
            ));
            None
        }
    };
    AgentChanges {
        name,
        description: body.optional_text("description", limits::DESCRIPTION_CHARS),
        owner: body.optional_text("owner", limits::OWNER_CHARS),
        capabilities: body.string_list("capabilities", check_capability),
        scopes: body.string_list("scopes", check_scope),
        metadata: body.string_map("metadata"),
        status,
    }
}

/// The `identifier` field, normalised. A refused one is recorded among the body's errors, and so
/// is a null one (as `null`) or an absent one when `missing` names that problem.
fn read_identifier(
    body: &mut JsonObject,
    missing: Option<&'static str>,
    null: &'static str,
) -> Option<String> {
    let problem = match body.optional_text("identifier", limits::IDENTIFIER_CHARS) {
        _ if body.errors.iter().any(|e| e.field == "identifier") => return None,
        Some(Some(text)) => match resource_identifier(&text) {
            Ok(identifier) => return Some(identifier),
            Err(problem) => problem,
        },
        Some(None) => null,
        None => missing?,
    };
    body.errors.push(FieldError::new("identifier", problem));
    None
}

fn read_new_resource(body: &mut JsonObject) -> NewResource {
    NewResource {
        identifier: read_identifier(body, Some("is required"), "is required").unwrap_or_default(),
        name: body
            .required_text("name", limits::NAME_CHARS)
            .unwrap_or_default(),
        description: body
            .optional_text("description", limits::DESCRIPTION_CHARS)
            .flatten(),
        scopes: body
            .string_list("scopes", check_resource_scope)
            .unwrap_or_default(),
    }
}

fn read_resource_changes(body: &mut JsonObject) -> ResourceChanges {
    let name = match body.optional_text("name", limits::NAME_CHARS) {
        Some(None) => {
            body.errors
                .push(FieldError::new("name", "cannot be cleared"));
            None
        }
        other => other.flatten(),
    };
    ResourceChanges {
        identifier: read_identifier(body, None, "cannot be cleared"),
        name,
        description: body.optional_text("description", limits::DESCRIPTION_CHARS),
        scopes: body.string_list("scopes", check_resource_scope),
    }
}

/// The body of a credential's generation or rotation: its `type` (generation only; a client
/// secret unless it says `private_key_jwt`), the public keys of a `private_key_jwt` one in
/// `jwks`, and an optional `expiresAt`.
fn read_credential_request(
    request: &ApiRequest,
    generating: bool,
) -> Result<(RequestedProof, Option<chrono::DateTime<chrono::Utc>>), ApiError> {
    let mut body = json_body(request)?;
    let expires_at = body.optional_timestamp("expiresAt");
    let kind = if generating {
        body.optional_text("type", 32).flatten()
    } else {
        None
    };
    let jwks = body.value("jwks");
    let kind = match kind.as_deref() {
        None if jwks.is_some() && !generating => Some(CredentialType::PrivateKeyJwt),
        None => Some(CredentialType::ClientSecret),
        Some(text) => CredentialType::parse(text),
    };
    let requested = match (kind, jwks) {
        (None, _) => {
            body.errors.push(FieldError::new(
                "type",
                "must be client_secret or private_key_jwt",
            ));
            None
        }
        (Some(CredentialType::ClientSecret), None) => Some(RequestedProof::Secret),
        (Some(CredentialType::ClientSecret), Some(_)) => {
            body.errors.push(FieldError::new(
                "jwks",
                "is only for a private_key_jwt credential",
            ));
            None
        }
        (Some(CredentialType::PrivateKeyJwt), None) => {
            body.errors.push(FieldError::new(
                "jwks",
                "is required for a private_key_jwt credential",
            ));
            None
        }
        (Some(CredentialType::PrivateKeyJwt), Some(jwks)) => {
            match ClientKeySet::from_jwks(&jwks, "jwks") {
                Ok(keys) => Some(RequestedProof::PublicKeys(keys)),
                Err(problems) => {
                    body.errors.extend(problems);
                    None
                }
            }
        }
    };
    body.finish().map_err(validation)?;
    match requested {
        Some(requested) => Ok((requested, expires_at)),
        // `finish` reports every problem found, and each `None` above recorded one.
        None => Err(validation(vec![FieldError::new(
            "type",
            "must be client_secret or private_key_jwt",
        )])),
    }
}

/// `page` and `limit` of the offset-paginated lists.
fn pagination(query: &mut QueryParams) -> (u32, u32) {
    (
        query.number("page", 1, 1, 1_000_000),
        query.number("limit", DEFAULT_PAGE_LIMIT, 1, limits::PAGE_LIMIT_MAX),
    )
}

/// An optional `status` filter, refused with `expected` when it does not parse.
fn status_filter<T>(
    query: &mut QueryParams,
    parse: fn(&str) -> Option<T>,
    expected: &str,
) -> Option<T> {
    let text = query.get("status")?;
    let status = parse(&text);
    if status.is_none() {
        query.errors.push(FieldError::new("status", expected));
    }
    status
}

fn required_scope(endpoint: Endpoint) -> Scope {
    match endpoint {
        Endpoint::ListAgents | Endpoint::GetAgent => Scope::AgentsRead,
        Endpoint::ListAudit | Endpoint::GetAudit => Scope::AuditRead,
        Endpoint::ListResources | Endpoint::GetResource => Scope::ResourcesRead,
        Endpoint::CreateResource | Endpoint::UpdateResource | Endpoint::DeleteResource => {
            Scope::ResourcesWrite
        }
        _ => Scope::AgentsWrite,
    }
}

pub(super) async fn serve(
    idp: &Arc<Idp>,
    endpoint: Endpoint,
    params: &[String],
    request: ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let caller: Caller = idp
        .authenticate_bearer(bearer_token(&request), request.context.clone())
        .await?;
    // Scope before input: a caller without the right gets 403 whatever it sent.
    caller.require(required_scope(endpoint))?;
    idp.admit_org_request(&caller).await?;
    let now = idp.now();
    match endpoint {
        Endpoint::CreateAgent => {
            let mut body = json_body(&request)?;
            let input = read_new_agent(&mut body);
            body.finish().map_err(validation)?;
            let agent = idp.create_agent(&caller, input).await?;
            Ok(json_response(StatusCode::CREATED, &AgentView::from(&agent)))
        }
        Endpoint::ListAgents => {
            let mut query = QueryParams::parse(&request.query);
            let (page, limit) = pagination(&mut query);
            let status = status_filter(
                &mut query,
                AgentStatus::parse,
                "must be active, suspended or decommissioned",
            );
            query.finish().map_err(validation)?;
            let listed = idp.list_agents(&caller, status, page, limit).await?;
            let data = listed.agents.iter().map(AgentView::from).collect();
            Ok(json_response(
                StatusCode::OK,
                &PageView {
                    data,
                    total: listed.total,
                    page,
                    limit,
                },
            ))
        }
        Endpoint::GetAgent => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let agent = idp.get_agent(&caller, agent_id).await?;
            Ok(json_response(StatusCode::OK, &AgentView::from(&agent)))
        }
        Endpoint::UpdateAgent => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let mut body = json_body(&request)?;
            let changes = read_changes(&mut body);
            body.finish().map_err(validation)?;
            let agent = idp.update_agent(&caller, agent_id, changes).await?;
            Ok(json_response(StatusCode::OK, &AgentView::from(&agent)))
        }
        Endpoint::DecommissionAgent => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            idp.decommission_agent(&caller, agent_id).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Endpoint::CreateResource => {
            let mut body = json_body(&request)?;
            let input = read_new_resource(&mut body);
            body.finish().map_err(validation)?;
            let resource = idp.create_resource(&caller, input).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &ResourceView::from(&resource),
            ))
        }
        Endpoint::ListResources => {
            let mut query = QueryParams::parse(&request.query);
            let (page, limit) = pagination(&mut query);
            query.finish().map_err(validation)?;
            let listed = idp.list_resources(&caller, page, limit).await?;
            let data = listed.resources.iter().map(ResourceView::from).collect();
            Ok(json_response(
                StatusCode::OK,
                &PageView {
                    data,
                    total: listed.total,
                    page,
                    limit,
                },
            ))
        }
        Endpoint::GetResource => {
            let resource_id = path_id(params, 0, ServiceError::ResourceNotFound)?;
            let resource = idp.get_resource(&caller, resource_id).await?;
            Ok(json_response(
                StatusCode::OK,
                &ResourceView::from(&resource),
            ))
        }
        Endpoint::UpdateResource => {
            let resource_id = path_id(params, 0, ServiceError::ResourceNotFound)?;
            let mut body = json_body(&request)?;
            let changes = read_resource_changes(&mut body);
            body.finish().map_err(validation)?;
            let resource = idp.update_resource(&caller, resource_id, changes).await?;
            Ok(json_response(
                StatusCode::OK,
                &ResourceView::from(&resource),
            ))
        }
        Endpoint::DeleteResource => {
            let resource_id = path_id(params, 0, ServiceError::ResourceNotFound)?;
            idp.delete_resource(&caller, resource_id).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Endpoint::GenerateCredential => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let (requested, expires_at) = read_credential_request(&request, true)?;
            let issued = idp
                .generate_credential(&caller, agent_id, requested, expires_at)
                .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &IssuedCredentialView::new(&issued, now),
            ))
        }
        Endpoint::ListCredentials => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let mut query = QueryParams::parse(&request.query);
            let (page, limit) = pagination(&mut query);
            let status = status_filter(
                &mut query,
                EffectiveCredentialStatus::parse,
                "must be active, expired or revoked",
            );
            query.finish().map_err(validation)?;
            let listed = idp
                .list_credentials(&caller, agent_id, status, page, limit)
                .await?;
            let data = listed
                .credentials
                .iter()
                .map(|c| CredentialView::new(c, now))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &PageView {
                    data,
                    total: listed.total,
                    page,
                    limit,
                },
            ))
        }
        Endpoint::RotateCredential => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let credential_id = path_id(params, 1, ServiceError::CredentialNotFound)?;
            let (requested, expires_at) = read_credential_request(&request, false)?;
            let issued = idp
                .rotate_credential(&caller, agent_id, credential_id, requested, expires_at)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &IssuedCredentialView::new(&issued, now),
            ))
        }
        Endpoint::RevokeCredential => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let credential_id = path_id(params, 1, ServiceError::CredentialNotFound)?;
            idp.revoke_credential(&caller, agent_id, credential_id)
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Endpoint::ListAudit => {
            let mut query = QueryParams::parse(&request.query);
            let mut filters = AuditFilters::default();
            if let Some(text) = query.get("agentId") {
                filters.agent_id = parse_id(&text);
                if filters.agent_id.is_none() {
                    query
                        .errors
                        .push(FieldError::new("agentId", "must be a UUID"));
                }
            }
            if let Some(text) = query.get("action") {
                filters.action = AuditAction::parse(&text);
                if filters.action.is_none() {
                    query.errors.push(FieldError::new(
                        "action",
                        "must be one of the documented audit actions",
                    ));
                }
            }
            if let Some(text) = query.get("outcome") {
                filters.outcome = Outcome::parse(&text);
                if filters.outcome.is_none() {
                    query
                        .errors
                        .push(FieldError::new("outcome", "must be success or failure"));
                }
            }
            for (name, slot) in [("from", &mut filters.from), ("to", &mut filters.to)] {
                if let Some(text) = query.get(name) {
                    *slot = agentidp_core::domain::time::parse_timestamp(&text);
                    if slot.is_none() {
                        query
                            .errors
                            .push(FieldError::new(name, "must be an RFC 3339 timestamp"));
                    }
                }
            }
            let limit = query.number(
                "limit",
                DEFAULT_AUDIT_LIMIT,
                1,
                limits::AUDIT_LIMIT_MAX as u32,
            ) as usize;
            let cursor = query.get("cursor");
            query.finish().map_err(validation)?;
            let page = idp
                .query_audit(&caller, filters, limit, cursor.as_deref())
                .await?;
            let data = page.events.iter().map(AuditEventView::from).collect();
            Ok(json_response(
                StatusCode::OK,
                &AuditPageView {
                    data,
                    next_cursor: page.next_cursor,
                    limit,
                },
            ))
        }
        Endpoint::GetAudit => {
            let event_id = path_id(params, 0, ServiceError::AuditEventNotFound)?;
            let event = idp.get_audit_event(&caller, event_id).await?;
            Ok(json_response(StatusCode::OK, &AuditEventView::from(&event)))
        }
        Endpoint::Token
        | Endpoint::Introspect
        | Endpoint::Revoke
        | Endpoint::Jwks
        | Endpoint::Metadata
        | Endpoint::OpenIdConfiguration
        | Endpoint::OrganizationMetadata
        | Endpoint::Authorize => Err(ApiError::RouteNotFound),
    }
}
