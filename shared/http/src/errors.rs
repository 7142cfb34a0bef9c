//! The one place where errors become HTTP: management errors as the documented
//! `{code, message, details}` body, OAuth errors in the RFC 6749 §5.2 shape.

use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::{ApiResponse, json_response};
use agentidp_core::client_keys::ASSERTION_ALGORITHMS as DPOP_ALGORITHMS;
use agentidp_core::error::Chain;
use agentidp_core::service::tokens::OAuthError;
use agentidp_core::service::{LimitExceeded, ScopeShortfall, ServiceError, Unauthenticated};
use agentidp_core::validation::FieldError;

/// Seconds a client should wait after a 503.
const RETRY_AFTER_UNAVAILABLE: &str = "2";

#[derive(Debug)]
pub enum ApiError {
    Service(ServiceError),
    /// A request that does not parse (a body that is not a JSON object, a bad field or query
    /// parameter): the same 400 as the operations' own validation, found before any is called.
    Invalid(Vec<FieldError>),
    OAuth(OAuthError),
    /// An OAuth endpoint's transport problem (413, 415), in the OAuth shape.
    OAuthHttp {
        status: StatusCode,
        description: String,
    },
    /// The authorization endpoint's answer to every request: no response type is supported
    /// (`response_type` given) or the request is malformed. Never a redirect: no client has a
    /// redirection URI registered, so none can be trusted (RFC 6749 §4.1.2.1).
    Unauthorizable {
        error: &'static str,
        description: String,
    },
    RouteNotFound,
    /// Discovery for an organization that does not exist (or an id that is not one).
    UnknownIssuer,
    MethodNotAllowed(String),
    PayloadTooLarge,
    UnsupportedMediaType(String),
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::Service(e)
    }
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> Self {
        ApiError::OAuth(e)
    }
}

impl ApiError {
    pub fn oauth_too_large() -> Self {
        ApiError::OAuthHttp {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            description: format!("the body exceeds {} bytes", crate::MAX_BODY_BYTES),
        }
    }

    pub fn into_response(self) -> ApiResponse {
        match self {
            ApiError::Service(e) => service_error(e),
            ApiError::Invalid(details) => invalid(details),
            ApiError::OAuth(e) => oauth_error(e),
            ApiError::OAuthHttp {
                status,
                description,
            } => oauth_body(status, "invalid_request", &description, json!({})),
            ApiError::Unauthorizable { error, description } => {
                oauth_body(StatusCode::BAD_REQUEST, error, &description, json!({}))
            }
            ApiError::RouteNotFound => management(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "No route matches this path.",
                json!([]),
            ),
            ApiError::UnknownIssuer => management(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "No organization has this issuer.",
                json!([]),
            ),
            ApiError::MethodNotAllowed(allowed) => {
                let mut response = management(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    "This path does not accept that method.",
                    json!([]),
                );
                if let Ok(value) = HeaderValue::from_str(&allowed) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
            ApiError::PayloadTooLarge => management(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                &format!("The body exceeds {} bytes.", crate::MAX_BODY_BYTES),
                json!([]),
            ),
            ApiError::UnsupportedMediaType(expected) => management(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                &format!("The body must be sent as {expected}."),
                json!([]),
            ),
        }
    }
}

fn management(status: StatusCode, code: &str, message: &str, details: Value) -> ApiResponse {
    json_response(
        status,
        &json!({ "code": code, "message": message, "details": details }),
    )
}

fn limit_details(limit: &LimitExceeded) -> Value {
    json!([{ "limit": limit.limit, "max": limit.max, "current": limit.current }])
}

fn set(response: &mut ApiResponse, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn invalid(details: Vec<FieldError>) -> ApiResponse {
    management(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        "The request is invalid; see details.",
        json!(details),
    )
}

fn service_error(e: ServiceError) -> ApiResponse {
    match e {
        ServiceError::Validation(details) => invalid(details),
        ServiceError::Unauthenticated(reason) => {
            let message = match reason {
                Unauthenticated::NoToken | Unauthenticated::InvalidToken => {
                    "A valid bearer access token is required."
                }
                Unauthenticated::InvalidDpopToken
                | Unauthenticated::BoundTokenAsBearer
                | Unauthenticated::InvalidDpopProof(_) => {
                    "A valid DPoP-bound access token, with a DPoP proof for this request, is required."
                }
            };
            let mut response =
                management(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message, json!([]));
            // RFC 9449 §7.1: a resource that takes both schemes offers both challenges, each in
            // its own header, the DPoP one with the algorithms it accepts; an error goes in the
            // challenge of the scheme the token was presented in.
            let algs = DPOP_ALGORITHMS.join(" ");
            let dpop = |error: Option<(&str, &Unauthenticated)>| match error {
                None => format!(r#"DPoP realm="agentidp", algs="{algs}""#),
                Some((error, reason)) => format!(
                    r#"DPoP realm="agentidp", error="{error}", error_description="{reason}", algs="{algs}""#
                ),
            };
            let challenges = match reason {
                Unauthenticated::NoToken => {
                    vec![r#"Bearer realm="agentidp""#.to_owned(), dpop(None)]
                }
                Unauthenticated::InvalidToken => vec![
                    format!(
                        r#"Bearer realm="agentidp", error="invalid_token", error_description="{reason}""#
                    ),
                    dpop(None),
                ],
                Unauthenticated::InvalidDpopToken | Unauthenticated::BoundTokenAsBearer => {
                    vec![dpop(Some(("invalid_token", &reason)))]
                }
                Unauthenticated::InvalidDpopProof(_) => {
                    vec![dpop(Some(("invalid_dpop_proof", &reason)))]
                }
            };
            for challenge in challenges {
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response
                        .headers_mut()
                        .append(header::WWW_AUTHENTICATE, value);
                }
            }
            response
        }
        ServiceError::InsufficientScope { missing, shortfall } => {
            let listed = missing.join(" ");
            let (message, details) = match shortfall {
                ScopeShortfall::Endpoint => (
                    format!("The access token lacks the required scope: {listed}."),
                    json!([]),
                ),
                ScopeShortfall::Grant => (
                    format!("A caller cannot grant scopes it does not hold: {listed}."),
                    json!([]),
                ),
                ScopeShortfall::Trust => (
                    format!(
                        "Trusting an issuer decides who can become the agents federated to it, so it takes every management scope: {listed}."
                    ),
                    missing
                        .iter()
                        .map(|scope| json!({ "scope": scope }))
                        .collect(),
                ),
                ScopeShortfall::Target => (
                    format!(
                        "The agent holds scopes the caller does not, so the caller cannot change it or its credentials: {listed}."
                    ),
                    missing
                        .iter()
                        .map(|scope| json!({ "scope": scope }))
                        .collect(),
                ),
            };
            let mut response = management(
                StatusCode::FORBIDDEN,
                "INSUFFICIENT_SCOPE",
                &message,
                details,
            );
            // Scope tokens exclude `"` and `\`, so the attribute needs no escaping. The error
            // is the token's whichever scheme it came in, so both challenges carry it.
            for scheme in ["Bearer", "DPoP"] {
                if let Ok(value) = HeaderValue::from_str(&format!(
                    r#"{scheme} realm="agentidp", error="insufficient_scope", scope="{listed}""#
                )) {
                    response
                        .headers_mut()
                        .append(header::WWW_AUTHENTICATE, value);
                }
            }
            response
        }
        ServiceError::AgentNotFound => management(
            StatusCode::NOT_FOUND,
            "AGENT_NOT_FOUND",
            "No agent with this id exists.",
            json!([]),
        ),
        ServiceError::CredentialNotFound => management(
            StatusCode::NOT_FOUND,
            "CREDENTIAL_NOT_FOUND",
            "No credential with this id exists for this agent.",
            json!([]),
        ),
        ServiceError::ResourceNotFound => management(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            "No resource with this id exists.",
            json!([]),
        ),
        ServiceError::AuditEventNotFound => management(
            StatusCode::NOT_FOUND,
            "AUDIT_EVENT_NOT_FOUND",
            "No audit event with this id exists.",
            json!([]),
        ),
        ServiceError::AgentNotActive(why) => management(
            StatusCode::CONFLICT,
            "AGENT_NOT_ACTIVE",
            &format!("The agent is not active: {why}."),
            json!([]),
        ),
        ServiceError::CredentialRevoked => management(
            StatusCode::CONFLICT,
            "CREDENTIAL_REVOKED",
            "The credential is revoked; revocation is permanent. Generate a new credential instead.",
            json!([]),
        ),
        ServiceError::AgentNameTaken => management(
            StatusCode::CONFLICT,
            "AGENT_NAME_TAKEN",
            "Another agent of this organization already has this name.",
            json!([{ "field": "name", "message": "is already taken" }]),
        ),
        ServiceError::TrustedIssuerNotFound => management(
            StatusCode::NOT_FOUND,
            "TRUSTED_ISSUER_NOT_FOUND",
            "No trusted issuer with this id exists.",
            json!([]),
        ),
        ServiceError::IssuerAlreadyTrusted => management(
            StatusCode::CONFLICT,
            "ISSUER_ALREADY_TRUSTED",
            "The organization already trusts this issuer; change it with PATCH.",
            json!([{ "field": "issuer", "message": "is already trusted" }]),
        ),
        ServiceError::ResourceIdentifierTaken => management(
            StatusCode::CONFLICT,
            "RESOURCE_IDENTIFIER_TAKEN",
            "Another resource of this organization already has this identifier.",
            json!([{ "field": "identifier", "message": "is already registered" }]),
        ),
        ServiceError::InvalidStatusTransition { from, to } => management(
            StatusCode::CONFLICT,
            "INVALID_STATUS_TRANSITION",
            &format!("An agent cannot go from {from} to {to}."),
            json!([{ "field": "status", "message": format!("{from} cannot become {to}") }]),
        ),
        ServiceError::PlanLimit(limit) => management(
            StatusCode::FORBIDDEN,
            "PLAN_LIMIT_EXCEEDED",
            &format!(
                "The plan allows {} for {}; {} in use.",
                limit.max, limit.limit, limit.current
            ),
            limit_details(&limit),
        ),
        ServiceError::RateLimited { retry_after } => {
            let mut response = management(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "The organization is sending requests too fast; retry after the time given.",
                json!([]),
            );
            set(&mut response, header::RETRY_AFTER, &retry_after.to_string());
            response
        }
        ServiceError::Contended => management(
            StatusCode::CONFLICT,
            "CONFLICT",
            "The resource changed concurrently too many times; retry the request.",
            json!([]),
        ),
        e @ ServiceError::Unavailable { .. } => {
            tracing::warn!(error = %Chain(&e), "dependency unavailable");
            let mut response = management(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "The service is temporarily unavailable; retry later.",
                json!([]),
            );
            set(&mut response, header::RETRY_AFTER, RETRY_AFTER_UNAVAILABLE);
            response
        }
        e @ ServiceError::Internal { .. } => {
            tracing::error!(error = %Chain(&e), "internal error");
            management(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "An internal error occurred.",
                json!([]),
            )
        }
    }
}

fn oauth_body(status: StatusCode, error: &str, description: &str, extra: Value) -> ApiResponse {
    let mut body = json!({ "error": error, "error_description": description });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let mut response = json_response(status, &body);
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_error(e: OAuthError) -> ApiResponse {
    match e {
        OAuthError::InvalidRequest(description) => oauth_body(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &description,
            json!({}),
        ),
        OAuthError::InvalidClient { basic } => {
            let mut response = oauth_body(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed.",
                json!({}),
            );
            if basic {
                set(
                    &mut response,
                    header::WWW_AUTHENTICATE,
                    r#"Basic realm="agentidp", charset="UTF-8""#,
                );
            }
            response
        }
        OAuthError::InvalidGrant(description) => oauth_body(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            description,
            json!({}),
        ),
        OAuthError::InvalidScope(description) => oauth_body(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &description,
            json!({}),
        ),
        OAuthError::InvalidTarget(description) => oauth_body(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            &description,
            json!({}),
        ),
        OAuthError::InvalidDpopProof(description) => oauth_body(
            StatusCode::BAD_REQUEST,
            "invalid_dpop_proof",
            &description,
            json!({}),
        ),
        OAuthError::UseDpopNonce { nonce } => {
            let mut response = oauth_body(
                StatusCode::BAD_REQUEST,
                "use_dpop_nonce",
                "The DPoP proof must carry the server's nonce: use the one in the DPoP-Nonce header.",
                json!({}),
            );
            set(
                &mut response,
                header::HeaderName::from_static(crate::oauth::DPOP_NONCE),
                &nonce,
            );
            response
        }
        OAuthError::UnsupportedGrantType => oauth_body(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only the client_credentials grant is supported.",
            json!({}),
        ),
        OAuthError::QuotaExceeded { limit, retry_after } => {
            let mut response = oauth_body(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                &format!(
                    "The plan allows {} token requests a month; {} used.",
                    limit.max, limit.current
                ),
                json!({ "limit": limit.limit, "max": limit.max, "current": limit.current }),
            );
            set(&mut response, header::RETRY_AFTER, &retry_after.to_string());
            response
        }
        OAuthError::RateLimited { retry_after } => {
            let mut response = oauth_body(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "Too many failed authentications; retry after the time given.",
                json!({}),
            );
            set(&mut response, header::RETRY_AFTER, &retry_after.to_string());
            response
        }
        e @ OAuthError::Unavailable { .. } => {
            tracing::warn!(error = %Chain(&e), "dependency unavailable");
            let mut response = oauth_body(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The service is temporarily unavailable; retry later.",
                json!({}),
            );
            set(&mut response, header::RETRY_AFTER, RETRY_AFTER_UNAVAILABLE);
            response
        }
        e @ OAuthError::Internal { .. } => {
            tracing::error!(error = %Chain(&e), "internal error");
            oauth_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "An internal error occurred.",
                json!({}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use agentidp_core::store::StoreError;

    use super::*;

    /// What the subscriber writes, shared with the test.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The response to `error`, and what answering it logged.
    fn answer(error: ApiError) -> (ApiResponse, String) {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let response = tracing::subscriber::with_default(subscriber, || error.into_response());
        let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        (response, logged)
    }

    fn body(response: &ApiResponse) -> Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    fn corrupt_row() -> StoreError {
        StoreError::internal(
            "stored JSON does not decode",
            std::io::Error::other("disk sector 7 unreadable"),
        )
    }

    #[test]
    fn an_internal_error_logs_its_cause_and_answers_with_the_generic_body() {
        let (response, logged) = answer(ApiError::Service(corrupt_row().into()));
        assert!(logged.contains("internal error"), "{logged}");
        assert!(
            logged.contains(
                "internal: the store failed: store failure: stored JSON does not decode: \
                 disk sector 7 unreadable"
            ),
            "{logged}"
        );
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body(&response),
            json!({ "code": "INTERNAL_ERROR", "message": "An internal error occurred.", "details": [] })
        );
    }

    #[test]
    fn an_internal_error_of_an_oauth_endpoint_logs_its_cause_and_answers_server_error() {
        let (response, logged) = answer(ApiError::OAuth(corrupt_row().into()));
        assert!(logged.contains("disk sector 7 unreadable"), "{logged}");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body(&response),
            json!({ "error": "server_error", "error_description": "An internal error occurred." })
        );
    }

    #[test]
    fn an_unavailable_dependency_logs_its_cause_and_answers_503_without_it() {
        let refused = || {
            StoreError::unavailable(
                "GetItem: dispatch failure",
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "127.0.0.1:8000 refused",
                ),
            )
        };
        for error in [
            ApiError::Service(refused().into()),
            ApiError::OAuth(refused().into()),
        ] {
            let (response, logged) = answer(error);
            assert!(logged.contains("dependency unavailable"), "{logged}");
            assert!(logged.contains("127.0.0.1:8000 refused"), "{logged}");
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let text = String::from_utf8_lossy(response.body());
            assert!(
                !text.contains("127.0.0.1") && !text.contains("GetItem"),
                "{text}"
            );
        }
    }
}
