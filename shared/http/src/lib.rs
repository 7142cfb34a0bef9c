//! HTTP, shared by every Lambda function and the local server: routing, parsing, and the one
//! place where errors become responses. There is one implementation of each endpoint.

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode, header};
use tracing::Instrument;

use agentidp_core::domain::audit::RequestContext;
use agentidp_core::service::Idp;

pub mod errors;
mod management;
mod oauth;
pub mod views;

pub use errors::ApiError;

/// Bodies above this get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub type ApiResponse = http::Response<Vec<u8>>;

/// A request as every front end hands it over.
#[derive(Debug)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub context: RequestContext,
}

/// Where a request came from, as far as its front end knows: API Gateway says all three; the
/// local server knows the peer's address.
#[derive(Debug, Default)]
pub struct Origin {
    pub request_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl ApiRequest {
    /// The request every endpoint takes, from what any front end receives: an HTTP request's
    /// parts and body, and its origin. A request without a request id gets a fresh one; the user
    /// agent, when the front end did not say, comes from the header.
    pub fn from_parts(parts: http::request::Parts, body: Vec<u8>, origin: Origin) -> Self {
        let user_agent = origin.user_agent.or_else(|| {
            parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        Self {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: parts.headers,
            body,
            context: RequestContext {
                request_id: origin
                    .request_id
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                source_ip: origin.source_ip,
                user_agent,
            },
        }
    }
}

/// The Lambda functions, one per endpoint group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionGroup {
    Agents,
    Credentials,
    Tokens,
    Audit,
}

impl FunctionGroup {
    pub const ALL: [FunctionGroup; 4] = [
        FunctionGroup::Agents,
        FunctionGroup::Credentials,
        FunctionGroup::Tokens,
        FunctionGroup::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FunctionGroup::Agents => "agents",
            FunctionGroup::Credentials => "credentials",
            FunctionGroup::Tokens => "tokens",
            FunctionGroup::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    CreateAgent,
    ListAgents,
    GetAgent,
    UpdateAgent,
    DecommissionAgent,
    CreateResource,
    ListResources,
    GetResource,
    UpdateResource,
    DeleteResource,
    CreateTrustedIssuer,
    ListTrustedIssuers,
    GetTrustedIssuer,
    UpdateTrustedIssuer,
    DeleteTrustedIssuer,
    GenerateCredential,
    ListCredentials,
    RotateCredential,
    RevokeCredential,
    RevokeAgentTokens,
    Token,
    Introspect,
    Revoke,
    Jwks,
    Metadata,
    /// The same metadata at the OpenID Connect discovery path (RFC 8414 §5).
    OpenIdConfiguration,
    /// An organization's issuer's metadata, at each path a client derives from that issuer.
    OrganizationMetadata,
    /// An authorization endpoint that supports no response type (see `oauth::authorize`).
    Authorize,
    ListAudit,
    GetAudit,
}

/// Every route served: method, path template, endpoint, and the function that serves it.
/// The SAM template and the OpenAPI spec are checked against this table.
pub const ROUTES: &[(&str, &str, Endpoint, FunctionGroup)] = &[
    (
        "POST",
        "/api/v1/agents",
        Endpoint::CreateAgent,
        FunctionGroup::Agents,
    ),
    (
        "GET",
        "/api/v1/agents",
        Endpoint::ListAgents,
        FunctionGroup::Agents,
    ),
    (
        "GET",
        "/api/v1/agents/{agentId}",
        Endpoint::GetAgent,
        FunctionGroup::Agents,
    ),
    (
        "PATCH",
        "/api/v1/agents/{agentId}",
        Endpoint::UpdateAgent,
        FunctionGroup::Agents,
    ),
    (
        "DELETE",
        "/api/v1/agents/{agentId}",
        Endpoint::DecommissionAgent,
        FunctionGroup::Agents,
    ),
    (
        "POST",
        "/api/v1/resources",
        Endpoint::CreateResource,
        FunctionGroup::Agents,
    ),
    (
        "GET",
        "/api/v1/resources",
        Endpoint::ListResources,
        FunctionGroup::Agents,
    ),
    (
        "GET",
        "/api/v1/resources/{resourceId}",
        Endpoint::GetResource,
        FunctionGroup::Agents,
    ),
    (
        "PATCH",
        "/api/v1/resources/{resourceId}",
        Endpoint::UpdateResource,
        FunctionGroup::Agents,
    ),
    (
        "DELETE",
        "/api/v1/resources/{resourceId}",
        Endpoint::DeleteResource,
        FunctionGroup::Agents,
    ),
    (
        "POST",
        "/api/v1/trusted-issuers",
        Endpoint::CreateTrustedIssuer,
        FunctionGroup::Credentials,
    ),
    (
        "GET",
        "/api/v1/trusted-issuers",
        Endpoint::ListTrustedIssuers,
        FunctionGroup::Credentials,
    ),
    (
        "GET",
        "/api/v1/trusted-issuers/{issuerId}",
        Endpoint::GetTrustedIssuer,
        FunctionGroup::Credentials,
    ),
    (
        "PATCH",
        "/api/v1/trusted-issuers/{issuerId}",
        Endpoint::UpdateTrustedIssuer,
        FunctionGroup::Credentials,
    ),
    (
        "DELETE",
        "/api/v1/trusted-issuers/{issuerId}",
        Endpoint::DeleteTrustedIssuer,
        FunctionGroup::Credentials,
    ),
    (
        "POST",
        "/api/v1/agents/{agentId}/credentials",
        Endpoint::GenerateCredential,
        FunctionGroup::Credentials,
    ),
    (
        "GET",
        "/api/v1/agents/{agentId}/credentials",
        Endpoint::ListCredentials,
        FunctionGroup::Credentials,
    ),
    (
        "POST",
        "/api/v1/agents/{agentId}/credentials/{credentialId}/rotate",
        Endpoint::RotateCredential,
        FunctionGroup::Credentials,
    ),
    (
        "DELETE",
        "/api/v1/agents/{agentId}/credentials/{credentialId}",
        Endpoint::RevokeCredential,
        FunctionGroup::Credentials,
    ),
    (
        "POST",
        "/api/v1/agents/{agentId}/tokens/revoke",
        Endpoint::RevokeAgentTokens,
        FunctionGroup::Agents,
    ),
    (
        "POST",
        "/api/v1/token",
        Endpoint::Token,
        FunctionGroup::Tokens,
    ),
    (
        "POST",
        "/api/v1/token/introspect",
        Endpoint::Introspect,
        FunctionGroup::Tokens,
    ),
    (
        "POST",
        "/api/v1/token/revoke",
        Endpoint::Revoke,
        FunctionGroup::Tokens,
    ),
    (
        "GET",
        "/.well-known/jwks.json",
        Endpoint::Jwks,
        FunctionGroup::Tokens,
    ),
    (
        "GET",
        "/.well-known/oauth-authorization-server",
        Endpoint::Metadata,
        FunctionGroup::Tokens,
    ),
    (
        "GET",
        "/.well-known/openid-configuration",
        Endpoint::OpenIdConfiguration,
        FunctionGroup::Tokens,
    ),
    // RFC 8414 §3.1 inserts the well-known suffix before the issuer's path; the MCP
    // specification tries the same insertion for OpenID Connect, then OpenID Connect
    // Discovery §4's appended form.
    (
        "GET",
        "/.well-known/oauth-authorization-server/orgs/{orgId}",
        Endpoint::OrganizationMetadata,
        FunctionGroup::Tokens,
    ),
    (
        "GET",
        "/.well-known/openid-configuration/orgs/{orgId}",
        Endpoint::OrganizationMetadata,
        FunctionGroup::Tokens,
    ),
    (
        "GET",
        "/orgs/{orgId}/.well-known/openid-configuration",
        Endpoint::OrganizationMetadata,
        FunctionGroup::Tokens,
    ),
    (
        "GET",
        "/api/v1/authorize",
        Endpoint::Authorize,
        FunctionGroup::Tokens,
    ),
    (
        "POST",
        "/api/v1/authorize",
        Endpoint::Authorize,
        FunctionGroup::Tokens,
    ),
    (
        "GET",
        "/api/v1/audit",
        Endpoint::ListAudit,
        FunctionGroup::Audit,
    ),
    (
        "GET",
        "/api/v1/audit/{eventId}",
        Endpoint::GetAudit,
        FunctionGroup::Audit,
    ),
];

/// A matched route with the path parameters in template order.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched {
    /// The route's path template, as API Gateway's route key names it.
    pub template: &'static str,
    pub endpoint: Endpoint,
    pub group: FunctionGroup,
    pub params: Vec<String>,
}

fn match_template(template: &str, path: &str) -> Option<Vec<String>> {
    let want: Vec<&str> = template.split('/').collect();
    let got: Vec<&str> = path.split('/').collect();
    if want.len() != got.len() {
        return None;
    }
    let mut params = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w.starts_with('{') {
            if g.is_empty() {
                return None;
            }
            params.push((*g).to_owned());
        } else if w != g {
            return None;
        }
    }
    Some(params)
}

/// Finds the route. `Err` holds the methods allowed on a known path (empty: unknown path).
pub fn route(method: &Method, path: &str) -> Result<Matched, Vec<&'static str>> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let mut allowed = Vec::new();
    for &(m, template, endpoint, group) in ROUTES {
        if let Some(params) = match_template(template, path) {
            if m == method.as_str() {
                return Ok(Matched {
                    template,
                    endpoint,
                    group,
                    params,
                });
            }
            allowed.push(m);
        }
    }
    Err(allowed)
}

/// Serves one request. `group` limits the routes to one function's (Lambda); `None` serves all
/// (the local server).
pub async fn handle(
    idp: &Arc<Idp>,
    group: Option<FunctionGroup>,
    request: ApiRequest,
) -> ApiResponse {
    let span = tracing::info_span!("request", request_id = %request.context.request_id, method = %request.method, path = %request.path);
    async move {
        let started = std::time::Instant::now();
        let request_id = request.context.request_id.clone();
        let mut response = dispatch(idp, group, request)
            .await
            .unwrap_or_else(ApiError::into_response);
        if let Ok(value) = request_id.parse() {
            response.headers_mut().insert("x-request-id", value);
        }
        // The instance's running total, so a load test can read from the log how many bcrypt
        // verifications a run cost (one per client per warm instance, with the cache).
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            bcrypt_verifications = idp.hasher().verifications(),
            "request served"
        );
        response
    }
    .instrument(span)
    .await
}

async fn dispatch(
    idp: &Arc<Idp>,
    group: Option<FunctionGroup>,
    request: ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let matched = match route(&request.method, &request.path) {
        Ok(m) if group.is_none_or(|g| g == m.group) => m,
        Ok(_) => return Err(ApiError::RouteNotFound),
        Err(allowed) if allowed.is_empty() => return Err(ApiError::RouteNotFound),
        Err(allowed) => return Err(ApiError::MethodNotAllowed(allowed.join(", "))),
    };
    let oauth = matches!(
        matched.endpoint,
        Endpoint::Token | Endpoint::Introspect | Endpoint::Revoke | Endpoint::Authorize
    );
    if request.body.len() > MAX_BODY_BYTES {
        return Err(if oauth {
            ApiError::oauth_too_large()
        } else {
            ApiError::PayloadTooLarge
        });
    }
    match matched.endpoint {
        Endpoint::Token
        | Endpoint::Introspect
        | Endpoint::Revoke
        | Endpoint::Jwks
        | Endpoint::Metadata
        | Endpoint::OpenIdConfiguration
        | Endpoint::OrganizationMetadata
        | Endpoint::Authorize => {
            oauth::serve(idp, matched.endpoint, &matched.params, request).await
        }
        _ => management::serve(idp, matched.endpoint, &matched.params, request).await,
    }
}

/// The media type of the body, lower-cased, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// The request's DPoP proof (RFC 9449 §4.1): `None` without a `DPoP` header; refused when it is
/// sent more than once or is not text (§4.3).
pub(crate) fn dpop_proof(
    request: &ApiRequest,
) -> Result<Option<agentidp_core::dpop::DpopProof>, agentidp_core::dpop::DpopRejection> {
    let mut values = request.headers.get_all("dpop").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(agentidp_core::dpop::DpopRejection::Malformed);
    }
    let text = first
        .to_str()
        .map_err(|_| agentidp_core::dpop::DpopRejection::Malformed)?;
    Ok(Some(agentidp_core::dpop::DpopProof::new(text.to_owned())))
}

pub(crate) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> ApiResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = http::Response::new(bytes);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

pub(crate) fn empty_response(status: StatusCode) -> ApiResponse {
    let mut response = http::Response::new(Vec::new());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_in_the_table_matches_its_own_template() {
        for &(method, template, endpoint, group) in ROUTES {
            let path = template
                .replace("{agentId}", "a")
                .replace("{resourceId}", "r")
                .replace("{credentialId}", "c")
                .replace("{eventId}", "e");
            let matched = route(&Method::from_bytes(method.as_bytes()).unwrap(), &path).unwrap();
            assert_eq!(
                (matched.endpoint, matched.group),
                (endpoint, group),
                "{method} {template}"
            );
        }
    }

    #[test]
    fn a_known_path_with_another_method_lists_the_allowed_ones() {
        assert_eq!(
            route(&Method::PUT, "/api/v1/agents").unwrap_err(),
            vec!["POST", "GET"]
        );
    }

    #[test]
    fn unknown_paths_and_empty_segments_do_not_match() {
        assert!(
            route(&Method::GET, "/api/v1/nothing")
                .unwrap_err()
                .is_empty()
        );
        assert!(
            route(&Method::GET, "/api/v1/agents//credentials")
                .unwrap_err()
                .is_empty()
        );
    }

    #[test]
    fn a_trailing_slash_is_the_same_route() {
        assert_eq!(
            route(&Method::GET, "/api/v1/agents/").unwrap().endpoint,
            Endpoint::ListAgents
        );
    }

    #[test]
    fn path_parameters_come_back_in_order() {
        let m = route(&Method::POST, "/api/v1/agents/x/credentials/y/rotate").unwrap();
        assert_eq!(m.params, vec!["x", "y"]);
    }
}
