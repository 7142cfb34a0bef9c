//! The management endpoints: agents, resources, credentials, audit. Parse, call the domain, map.

use std::sync::Arc;

use http::{StatusCode, header};
use uuid::Uuid;

use crate::errors::ApiError;
use crate::views::{
    AgentView, AuditEventView, AuditPageView, CredentialView, IssuedCredentialView, PageView,
    ResourceView, TrustedIssuerView,
};
use crate::{ApiRequest, ApiResponse, Endpoint, empty_response, json_response, media_type};
use agentidp_core::client_keys::{ClientKeySet, PublicKeys};
use agentidp_core::domain::agent::DelegationPolicy;
use agentidp_core::domain::credential::EffectiveCredentialStatus;
use agentidp_core::domain::{
    AgentStatus, AuditAction, CredentialType, FederatedIdentity, Outcome, Scope,
};
use agentidp_core::remote_keys::{JwksUri, KeyFetchNetwork};
use agentidp_core::service::agents::{AgentChanges, NewAgent};
use agentidp_core::service::audit::AuditFilters;
use agentidp_core::service::credentials::RequestedProof;
use agentidp_core::service::resources::{NewResource, ResourceChanges};
use agentidp_core::service::tokens::{PresentedToken, TokenScheme};
use agentidp_core::service::trusted_issuers::{NewTrustedIssuer, TrustedIssuerChanges};
use agentidp_core::service::{Caller, Idp, ServiceError, Unauthenticated};
use agentidp_core::validation::{
    BodyError, FieldError, JsonObject, QueryParams, check_capability, check_resource_scope,
    check_scope, limits, parse_id, resource_identifier,
};

const DEFAULT_PAGE_LIMIT: u32 = 20;
const DEFAULT_AUDIT_LIMIT: u32 = 50;

fn validation(errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid(errors)
}

/// The access token of the `Authorization` header, in the Bearer or DPoP scheme, with the DPoP
/// proof beside it, if the request has one. More than one `DPoP` header is not a proof (RFC
/// 9449 §4.3).
pub(crate) fn presented_token(request: &ApiRequest) -> Result<Option<PresentedToken>, ApiError> {
    let proof = crate::dpop_proof(request).map_err(|rejection| {
        ApiError::Service(ServiceError::Unauthenticated(
            Unauthenticated::InvalidDpopProof(rejection),
        ))
    })?;
    Ok(token_of(request).map(|(scheme, token)| PresentedToken {
        token: token.to_owned(),
        scheme,
        proof,
        method: request.method.as_str().to_owned(),
        path: request.path.clone(),
    }))
}

/// The `Authorization` header's scheme and token, if it has one in a scheme known here.
fn token_of(request: &ApiRequest) -> Option<(TokenScheme, &str)> {
    let value = request.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        TokenScheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        TokenScheme::Dpop
    } else {
        return None;
    };
    Some((scheme, token.trim())).filter(|(_, token)| !token.is_empty())
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
        delegation: read_delegation(body).flatten(),
        require_dpop: body.optional_bool("requireDpop").unwrap_or_default(),
    }
}

/// An agent's `delegation`: `{"mayAct": [agentIds], "scopes": [...]}` (scopes optional), or
/// `null` to withdraw it. `None` when not sent or refused (the problem is recorded).
fn read_delegation(body: &mut JsonObject) -> Option<Option<DelegationPolicy>> {
    const SHAPE: &str = "must be {\"mayAct\": [agent ids], \"scopes\": [scopes]} or null";
    let value = body.value("delegation")?;
    let serde_json::Value::Object(mut members) = value else {
        if value.is_null() {
            return Some(None);
        }
        body.errors.push(FieldError::new("delegation", SHAPE));
        return None;
    };
    let mut problems = Vec::new();
    let may_act = match members.remove("mayAct") {
        Some(serde_json::Value::Array(items))
            if !items.is_empty() && items.len() <= DelegationPolicy::MAX_ACTORS =>
        {
            let mut agents: Vec<Uuid> = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                match item.as_str().and_then(parse_id) {
                    Some(id) if !agents.contains(&id) => agents.push(id),
                    Some(_) => problems.push(FieldError::new(
                        format!("delegation.mayAct[{index}]"),
                        "is a duplicate",
                    )),
                    None => problems.push(FieldError::new(
                        format!("delegation.mayAct[{index}]"),
                        "must be an agent id",
                    )),
                }
            }
            agents
        }
        _ => {
            problems.push(FieldError::new(
                "delegation.mayAct",
                format!("must list 1 to {} agent ids", DelegationPolicy::MAX_ACTORS),
            ));
            Vec::new()
        }
    };
    let scopes = match members.remove("scopes") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(items)) if items.len() <= limits::LIST_ITEMS => {
            let mut scopes: Vec<String> = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let problem = match item.as_str() {
                    None => Some("must be a string".to_owned()),
                    Some(scope) => check_scope(scope),
                };
                match (problem, item.as_str()) {
                    (None, Some(scope)) if !scopes.iter().any(|s| s == scope) => {
                        scopes.push(scope.to_owned());
                    }
                    (problem, _) => problems.push(FieldError::new(
                        format!("delegation.scopes[{index}]"),
                        problem.unwrap_or_else(|| "is a duplicate".to_owned()),
                    )),
                }
            }
            Some(scopes)
        }
        Some(_) => {
            problems.push(FieldError::new(
                "delegation.scopes",
                format!("must be a list of at most {} scopes", limits::LIST_ITEMS),
            ));
            None
        }
    };
    for unknown in members.keys() {
        problems.push(FieldError::new(
            format!("delegation.{unknown}"),
            "is not a field of a delegation policy",
        ));
    }
    if problems.is_empty() {
        Some(Some(DelegationPolicy { may_act, scopes }))
    } else {
        body.errors.extend(problems);
        None
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
        delegation: read_delegation(body),
        require_dpop: body.optional_bool("requireDpop"),
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

/// At most this many characters in an issuer, an audience or a subject: more than any real
/// workload identity's (a GitHub Actions subject is well under 200).
const IDENTITY_CHARS: usize = 512;

/// The public keys in a body: inline in `jwks`, or published at `jwksUri`, exactly one of
/// them. `Some(None)` when neither was sent; `None` when what was sent is refused (the
/// problem is recorded).
fn read_public_keys(body: &mut JsonObject, network: KeyFetchNetwork) -> Option<Option<PublicKeys>> {
    let jwks = body.value("jwks");
    let uri = body.optional_text("jwksUri", 2048);
    match (jwks, uri) {
        (Some(_), Some(_)) => {
            body.errors.push(FieldError::new(
                "jwksUri",
                "is sent instead of jwks, not beside it",
            ));
            None
        }
        (Some(jwks), None) => match ClientKeySet::from_jwks(&jwks, "jwks") {
            Ok(keys) => Some(Some(PublicKeys::Inline(keys))),
            Err(problems) => {
                body.errors.extend(problems);
                None
            }
        },
        (None, Some(Some(text))) => match JwksUri::parse(&text, network) {
            Ok(uri) => Some(Some(PublicKeys::Published(uri))),
            Err(problem) => {
                body.errors.push(FieldError::new("jwksUri", problem));
                None
            }
        },
        (None, Some(None)) => {
            body.errors
                .push(FieldError::new("jwksUri", "cannot be cleared"));
            None
        }
        // `optional_text` recorded a problem with jwksUri, or neither was sent.
        (None, None) if body.errors.iter().any(|e| e.field == "jwksUri") => None,
        (None, None) => Some(None),
    }
}

/// The body of a credential's generation or rotation: its `type` (generation only; a client
/// secret unless it says otherwise; a rotation keeps the type), the public keys of a
/// `private_key_jwt` one (`jwks` or `jwksUri`), the `issuer` and `subject` of a `federated` one,
/// and an optional `expiresAt`.
fn read_credential_request(
    request: &ApiRequest,
    generating: bool,
    network: KeyFetchNetwork,
) -> Result<(RequestedProof, Option<chrono::DateTime<chrono::Utc>>), ApiError> {
    const TYPES: &str = "must be client_secret, private_key_jwt or federated";
    let mut body = json_body(request)?;
    let expires_at = body.optional_timestamp("expiresAt");
    let kind = if generating {
        body.optional_text("type", 32).flatten()
    } else {
        None
    };
    let keys = read_public_keys(&mut body, network);
    let issuer = body.optional_text("issuer", IDENTITY_CHARS).flatten();
    let subject = body.optional_text("subject", IDENTITY_CHARS).flatten();
    let sent_keys = !matches!(keys, Some(None));
    let sent_identity = issuer.is_some() || subject.is_some();
    let kind = match kind.as_deref() {
        None if generating => Some(CredentialType::ClientSecret),
        None if sent_keys => Some(CredentialType::PrivateKeyJwt),
        None if sent_identity => Some(CredentialType::Federated),
        None => Some(CredentialType::ClientSecret),
        Some(text) => CredentialType::parse(text),
    };
    let mut refuse = |field: &'static str, problem: &'static str| {
        body.errors.push(FieldError::new(field, problem));
        None
    };
    let requested = match kind {
        None => refuse("type", TYPES),
        Some(CredentialType::ClientSecret) if sent_keys => refuse(
            "jwks",
            "is only for a private_key_jwt credential (as is jwksUri)",
        ),
        Some(CredentialType::PrivateKeyJwt | CredentialType::ClientSecret) if sent_identity => {
            refuse(
                "issuer",
                "is only for a federated credential (as is subject)",
            )
        }
        Some(CredentialType::Federated) if sent_keys => refuse(
            "jwks",
            "is not for a federated credential: its keys are its trusted issuer's",
        ),
        Some(CredentialType::ClientSecret) => Some(RequestedProof::Secret),
        Some(CredentialType::PrivateKeyJwt) => match keys {
            Some(Some(keys)) => Some(RequestedProof::PublicKeys(keys)),
            Some(None) => refuse(
                "jwks",
                "is required for a private_key_jwt credential (or jwksUri)",
            ),
            None => None,
        },
        Some(CredentialType::Federated) => match (issuer, subject) {
            (Some(issuer), Some(subject)) => Some(RequestedProof::Federated(FederatedIdentity {
                issuer,
                subject,
            })),
            (None, _) => refuse("issuer", "is required for a federated credential"),
            (Some(_), None) => refuse("subject", "is required for a federated credential"),
        },
    };
    body.finish().map_err(validation)?;
    match requested {
        Some(requested) => Ok((requested, expires_at)),
        // `finish` reports every problem found, and each `None` above recorded one.
        None => Err(validation(vec![FieldError::new("type", TYPES)])),
    }
}

/// The body of `POST /trusted-issuers`.
fn read_new_trusted_issuer(
    body: &mut JsonObject,
    network: KeyFetchNetwork,
) -> Option<NewTrustedIssuer> {
    let issuer = body.required_text("issuer", IDENTITY_CHARS);
    let audience = body.required_text("audience", IDENTITY_CHARS);
    let description = body
        .optional_text("description", limits::DESCRIPTION_CHARS)
        .flatten();
    let keys = match read_public_keys(body, network) {
        Some(None) => {
            body.errors.push(FieldError::new(
                "jwks",
                "is required (or jwksUri): the keys the issuer signs its tokens with",
            ));
            None
        }
        other => other.flatten(),
    };
    Some(NewTrustedIssuer {
        issuer: issuer?,
        audience: audience?,
        keys: keys?,
        description,
    })
}

/// The body of `PATCH /trusted-issuers/{id}`: the issuer itself cannot change.
fn read_trusted_issuer_changes(
    body: &mut JsonObject,
    network: KeyFetchNetwork,
) -> TrustedIssuerChanges {
    if body.value("issuer").is_some() {
        body.errors.push(FieldError::new(
            "issuer",
            "cannot be changed: trust another issuer with POST /api/v1/trusted-issuers",
        ));
    }
    let audience = match body.optional_text("audience", IDENTITY_CHARS) {
        Some(None) => {
            body.errors
                .push(FieldError::new("audience", "cannot be cleared"));
            None
        }
        other => other.flatten(),
    };
    TrustedIssuerChanges {
        audience,
        keys: read_public_keys(body, network).flatten(),
        description: body.optional_text("description", limits::DESCRIPTION_CHARS),
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
        Endpoint::ListAgents
        | Endpoint::GetAgent
        | Endpoint::ListTrustedIssuers
        | Endpoint::GetTrustedIssuer => Scope::AgentsRead,
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
    let presented = presented_token(&request)?;
    let caller: Caller = idp
        .authenticate_caller(presented.as_ref(), request.context.clone())
        .await?;
    // Scope before input: a caller without the right gets 403 whatever it sent.
    caller.require(required_scope(endpoint))?;
    idp.admit_org_request(&caller).await?;
    let now = idp.now();
    let network = idp.config().key_fetch_network;
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
        Endpoint::CreateTrustedIssuer => {
            let mut body = json_body(&request)?;
            let input = read_new_trusted_issuer(&mut body, network);
            body.finish().map_err(validation)?;
            let input = input.ok_or_else(|| {
                ServiceError::broken("a trusted issuer's body passed validation incomplete")
            })?;
            let issuer = idp.create_trusted_issuer(&caller, input).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &TrustedIssuerView::from(&issuer),
            ))
        }
        Endpoint::ListTrustedIssuers => {
            let mut query = QueryParams::parse(&request.query);
            let (page, limit) = pagination(&mut query);
            query.finish().map_err(validation)?;
            let listed = idp.list_trusted_issuers(&caller, page, limit).await?;
            let data = listed.issuers.iter().map(TrustedIssuerView::from).collect();
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
        Endpoint::GetTrustedIssuer => {
            let issuer_id = path_id(params, 0, ServiceError::TrustedIssuerNotFound)?;
            let issuer = idp.get_trusted_issuer(&caller, issuer_id).await?;
            Ok(json_response(
                StatusCode::OK,
                &TrustedIssuerView::from(&issuer),
            ))
        }
        Endpoint::UpdateTrustedIssuer => {
            let issuer_id = path_id(params, 0, ServiceError::TrustedIssuerNotFound)?;
            let mut body = json_body(&request)?;
            let changes = read_trusted_issuer_changes(&mut body, network);
            body.finish().map_err(validation)?;
            let issuer = idp
                .update_trusted_issuer(&caller, issuer_id, changes)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &TrustedIssuerView::from(&issuer),
            ))
        }
        Endpoint::DeleteTrustedIssuer => {
            let issuer_id = path_id(params, 0, ServiceError::TrustedIssuerNotFound)?;
            idp.delete_trusted_issuer(&caller, issuer_id).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Endpoint::GenerateCredential => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let (requested, expires_at) = read_credential_request(&request, true, network)?;
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
            let (requested, expires_at) = read_credential_request(&request, false, network)?;
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
            let mut query = QueryParams::parse(&request.query);
            let revoke_tokens = match query.get("revokeTokens").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    query
                        .errors
                        .push(FieldError::new("revokeTokens", "must be true or false"));
                    false
                }
            };
            query.finish().map_err(validation)?;
            idp.revoke_credential(&caller, agent_id, credential_id, revoke_tokens)
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Endpoint::RevokeAgentTokens => {
            let agent_id = path_id(params, 0, ServiceError::AgentNotFound)?;
            let not_before = idp.revoke_agent_tokens(&caller, agent_id).await?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "agentId": agent_id,
                    "tokensNotBefore": agentidp_core::domain::time::format_timestamp(&not_before),
                }),
            ))
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
            if let Some(text) = query.get("actorAgentId") {
                filters.actor_agent_id = parse_id(&text);
                if filters.actor_agent_id.is_none() {
                    query
                        .errors
                        .push(FieldError::new("actorAgentId", "must be a UUID"));
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
