//! The bad-input matrix's cases for the resource endpoints: what a client gets wrong about an
//! identifier (RFC 8707), a resource's scopes and fields, and the routes themselves.

use reqwest::Method;

use super::{Body, Case, case};

/// The cases against the organization's resource `resource`; `big` is a body over the limit.
pub(super) fn cases(resource: &str, big: &str) -> Vec<Case> {
    let resources = "/api/v1/resources".to_owned();
    let one_resource = format!("{resources}/{resource}");
    let long_identifier = format!(
        r#"{{"identifier":"https://long.example.com/{}","name":"long"}}"#,
        "p".repeat(500)
    );
    vec![
        // POST /resources
        case(
            Method::POST,
            &resources,
            Body::Json("{"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": 5, "name": "not a string"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": ["https://a.example.com/"], "name": "a list"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": "/mcp", "name": "relative"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": "https://a.example.com/mcp#tools", "name": "fragment"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": "http://a.example.com/mcp", "name": "plain http"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": "https://user:pw@a.example.com/", "name": "userinfo"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": "urn:example:mcp", "name": "not a URL"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(
                "{\"identifier\": \"https://a.example.com/\\u00e9\", \"name\": \"not ASCII\"}",
            ),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Raw("application/json", long_identifier),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(
                r#"{"identifier": "https://a.example.com/", "name": "admin", "scopes": ["agents:write"]}"#,
            ),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(
                r#"{"identifier": "https://a.example.com/", "name": "spaced", "scopes": ["a b"]}"#,
            ),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(
                r#"{"identifier": "https://a.example.com/", "name": "owned", "owner": "x"}"#,
            ),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"name": "no identifier"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Json(r#"{"identifier": "https://a.example.com/"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &resources,
            Body::Raw(
                "text/plain",
                r#"{"identifier":"https://a.example.com/","name":"a"}"#.into(),
            ),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            Method::POST,
            &resources,
            Body::Raw("application/json", format!(r#"{{"name":"{big}"}}"#)),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        // GET /resources
        case(
            Method::GET,
            format!("{resources}?page=0"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{resources}?limit=1000"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{resources}?status=active"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        // /resources/{resourceId}
        case(
            Method::GET,
            format!("{resources}/not-a-uuid"),
            Body::None,
            404,
            "RESOURCE_NOT_FOUND",
        ),
        case(
            Method::GET,
            format!("{resources}/{}", uuid::Uuid::new_v4()),
            Body::None,
            404,
            "RESOURCE_NOT_FOUND",
        ),
        case(
            Method::DELETE,
            format!("{resources}/not-a-uuid"),
            Body::None,
            404,
            "RESOURCE_NOT_FOUND",
        ),
        case(
            Method::PATCH,
            &one_resource,
            Body::Json(r#"{"identifier": null}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one_resource,
            Body::Json(r#"{"identifier": "ftp://a.example.com/"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one_resource,
            Body::Json(r#"{"name": null}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one_resource,
            Body::Json(r#"{"scopes": ["tools:call", "resources:read"]}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one_resource,
            Body::Json(r#"{"status": "active"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one_resource,
            Body::Raw("text/plain", r#"{"name":"a"}"#.into()),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            Method::PUT,
            &resources,
            Body::Json("{}"),
            405,
            "METHOD_NOT_ALLOWED",
        ),
    ]
}
