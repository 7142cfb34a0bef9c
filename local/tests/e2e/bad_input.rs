//! The bad-input matrix: every endpoint, fed what clients get wrong, answers the documented 4xx
//! body, and the store is the same afterwards.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Response, TestServer};

mod resources;

/// What the organization holds, as its admin sees it.
async fn snapshot(server: &TestServer, token: &str, agent: &str) -> Value {
    let agents = server.api(token).list_agents("limit=100").await.body;
    let resources = server.api(token).list_resources("limit=100").await.body;
    let credentials = server
        .api(token)
        .list_credentials(agent, "limit=100")
        .await
        .body;
    let audit = server.audit_events(token, "").await;
    json!({ "agents": agents, "resources": resources, "credentials": credentials, "audit": audit })
}

enum Body {
    None,
    Json(&'static str),
    Raw(&'static str, String),
    Form(Vec<(&'static str, &'static str)>),
}

struct Case {
    method: Method,
    path: String,
    body: Body,
    status: u16,
    /// The management `code`, or the OAuth `error`.
    code: &'static str,
}

fn case(
    method: Method,
    path: impl Into<String>,
    body: Body,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        method,
        path: path.into(),
        body,
        status,
        code,
    }
}

async fn send(server: &TestServer, token: &str, case: &Case) -> Response {
    let mut request = server
        .request(case.method.clone(), &case.path)
        .bearer_auth(token);
    request = match &case.body {
        Body::None => request,
        Body::Json(text) => request
            .header("content-type", "application/json")
            .body(*text),
        Body::Raw(content_type, text) => {
            let request = if content_type.is_empty() {
                request
            } else {
                request.header("content-type", *content_type)
            };
            request.body(text.clone())
        }
        Body::Form(pairs) => request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs.iter())
                    .finish(),
            ),
    };
    server.send(request).await
}

async fn every_endpoint_refuses_bad_input_with_its_documented_body_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let other = server.new_org("other").await;
    let token = server.admin_token(&admin).await;
    let other_token = server.admin_token(&other).await;
    let agent = server.create_agent(&token, "target", &["data:read"]).await;
    let (credential, _, _) = server.create_credential(&token, &agent).await;
    let resource = server
        .create_resource(&token, "https://target.example.com/mcp", &["tools:call"])
        .await;
    let foreign_cursor = server
        .api(&other_token)
        .audit("limit=1")
        .await
        .str("nextCursor");
    let own_cursor = server.api(&token).audit("limit=1").await.str("nextCursor");

    let agents = "/api/v1/agents".to_owned();
    let one = format!("{agents}/{agent}");
    let creds = format!("{one}/credentials");
    let cred = format!("{creds}/{credential}");
    let big = "x".repeat(70 * 1024);
    let long_name = format!(r#"{{"name":"{}"}}"#, "n".repeat(129));
    let mut cases = vec![
        // POST /agents
        case(
            Method::POST,
            &agents,
            Body::Json("{"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json("[]"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json(r#"{"name": 5}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json(r#"{"name": "a", "scopes": "x"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json(r#"{"name": "a", "admin": true}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json(r#"{"description": "no name"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Raw("application/json", long_name.clone()),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Raw("application/json", format!(r#"{{"name":"{big}"}}"#)),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        case(
            Method::POST,
            &agents,
            Body::Raw("text/plain", r#"{"name":"a"}"#.into()),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            Method::POST,
            &agents,
            Body::Raw("", r#"{"name":"a"}"#.into()),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json("{\"name\": \"bad\\u202Ename\"}"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json("{\"name\": \"zero\\u200Bwidth\"}"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json("{\"name\": \"\\ufeffbom\"}"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json("{\"name\": \"line\\nbreak\"}"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json("{\"name\": \"   \"}"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &agents,
            Body::Json("{\"name\": \"ok\", \"metadata\": {\"k\": \"\\u0000\"}}"),
            400,
            "VALIDATION_ERROR",
        ),
        // GET /agents
        case(
            Method::GET,
            format!("{agents}?page=-1"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?page=0"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?page=99999999999"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?limit=abc"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?limit=0"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?limit=1000"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?page=1&page=2"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?status=gone"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{agents}?sort=name"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        // /agents/{agentId}
        case(
            Method::GET,
            format!("{agents}/not-a-uuid"),
            Body::None,
            404,
            "AGENT_NOT_FOUND",
        ),
        case(
            Method::GET,
            format!("{agents}/{}", uuid::Uuid::new_v4()),
            Body::None,
            404,
            "AGENT_NOT_FOUND",
        ),
        case(
            Method::PATCH,
            format!("{agents}/12345"),
            Body::Json("{}"),
            404,
            "AGENT_NOT_FOUND",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Json("{"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Json(r#"{"status": 1}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Json(r#"{"status": "paused"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Json(r#"{"name": null}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Json(r#"{"id": "x"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Raw("text/plain", "{}".into()),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Raw("application/json", format!(r#"{{"description":"{big}"}}"#)),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        case(
            Method::PATCH,
            &one,
            Body::Raw(
                "application/json",
                format!(r#"{{"description":"{}"}}"#, "d".repeat(1025)),
            ),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::DELETE,
            format!("{agents}/zzz"),
            Body::None,
            404,
            "AGENT_NOT_FOUND",
        ),
        // Credentials
        case(
            Method::POST,
            format!("{agents}/x/credentials"),
            Body::Json("{}"),
            404,
            "AGENT_NOT_FOUND",
        ),
        case(
            Method::POST,
            &creds,
            Body::Json("{"),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &creds,
            Body::Json(r#"{"expiresAt": "2001-01-01T00:00:00.000Z"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &creds,
            Body::Json(r#"{"expiresAt": "tomorrow"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &creds,
            Body::Json(r#"{"expiresAt": 1}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &creds,
            Body::Json(r#"{"clientSecret": "sk_live_mine"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            &creds,
            Body::Raw("application/xml", "<x/>".into()),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            Method::GET,
            format!("{creds}?status=lost"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("{creds}?limit=-5"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            format!("{creds}/nope/rotate"),
            Body::Json("{}"),
            404,
            "CREDENTIAL_NOT_FOUND",
        ),
        case(
            Method::POST,
            format!("{cred}/rotate"),
            Body::Json(r#"{"force": true}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::POST,
            format!("{cred}/rotate"),
            Body::Raw("text/plain", "{}".into()),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            Method::DELETE,
            format!("{creds}/{}", uuid::Uuid::new_v4()),
            Body::None,
            404,
            "CREDENTIAL_NOT_FOUND",
        ),
        // Audit
        case(
            Method::GET,
            "/api/v1/audit?limit=0",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?limit=201",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?limit=x",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?agentId=123",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?action=agent.exploded",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?outcome=maybe",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?from=yesterday",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?cursor=forged",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("/api/v1/audit?cursor={foreign_cursor}"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            format!("/api/v1/audit?outcome=failure&cursor={own_cursor}"),
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit?limit=1&limit=2",
            Body::None,
            400,
            "VALIDATION_ERROR",
        ),
        case(
            Method::GET,
            "/api/v1/audit/not-an-id",
            Body::None,
            404,
            "AUDIT_EVENT_NOT_FOUND",
        ),
        // OAuth endpoints
        case(
            Method::POST,
            "/api/v1/token",
            Body::Json("{"),
            400,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token",
            Body::Json(r#"{"grant_type": 5}"#),
            400,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token",
            Body::Form(vec![("scope", "a")]),
            400,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token",
            Body::Form(vec![
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ]),
            400,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token",
            Body::Raw("text/plain", "grant_type=client_credentials".into()),
            415,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token",
            Body::Raw("", "grant_type=client_credentials".into()),
            415,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token",
            Body::Raw("application/x-www-form-urlencoded", big.clone()),
            413,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token/introspect",
            Body::Form(vec![]),
            400,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token/introspect",
            Body::Form(vec![("token", "a"), ("token", "b")]),
            400,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token/introspect",
            Body::Raw("text/plain", "token=a".into()),
            415,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token/revoke",
            Body::Form(vec![("token_type_hint", "access_token")]),
            400,
            "invalid_request",
        ),
        case(
            Method::POST,
            "/api/v1/token/revoke",
            Body::Json(r#"{"token": ["a"]}"#),
            400,
            "invalid_request",
        ),
        // Unknown routes and methods
        case(Method::GET, "/api/v1/nothing", Body::None, 404, "NOT_FOUND"),
        case(
            Method::PUT,
            &agents,
            Body::Json("{}"),
            405,
            "METHOD_NOT_ALLOWED",
        ),
    ];
    cases.extend(resources::cases(&resource, &big));

    let before = snapshot(&server, &token, &agent).await;
    for case in &cases {
        let response = send(&server, &token, case).await;
        let got = if case.path.starts_with("/api/v1/token") {
            response.oauth_error()
        } else {
            response.code()
        };
        assert_eq!(
            (response.status, got),
            (case.status, case.code),
            "{} {}: {}",
            case.method,
            case.path,
            response.text
        );
        assert!(
            response.header("x-request-id").is_some(),
            "{} {}: every answer carries its request id",
            case.method,
            case.path
        );
        if case.path.starts_with("/api/v1/token") {
            assert!(
                response.body["error_description"].is_string(),
                "{}",
                response.text
            );
            assert_eq!(response.header("cache-control"), Some("no-store"));
        } else {
            assert!(
                response.body["message"].is_string() && response.body["details"].is_array(),
                "{}",
                response.text
            );
        }
    }
    assert_eq!(
        snapshot(&server, &token, &agent).await,
        before,
        "a refused request changed the store"
    );
}

async fn a_json_oauth_request_that_repeats_a_parameter_is_refused(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("repeats").await;
    let admin_token = server.admin_token(&admin).await;
    let agent = server.create_agent(&admin_token, "repeated", &[]).await;
    let (_, client_id, secret) = server.create_credential(&admin_token, &agent).await;
    let token = server.token(&client_id, &secret).await;
    let before = snapshot(&server, &admin_token, &agent).await;
    // The last of two values would authenticate; the request is refused before either counts.
    let token_body = format!(
        r#"{{"grant_type":"client_credentials","client_id":"{client_id}","client_secret":"wrong","client_secret":"{secret}"}}"#
    );
    let token_param = format!(
        r#"{{"client_id":"{client_id}","client_secret":"{secret}","token":"x","token":"{token}"}}"#
    );
    for (path, body) in [
        ("/api/v1/token", token_body),
        ("/api/v1/token/introspect", token_param.clone()),
        ("/api/v1/token/revoke", token_param),
    ] {
        let response = server
            .send(
                server
                    .request(Method::POST, path)
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        assert_eq!(
            (response.status, response.oauth_error()),
            (400, "invalid_request"),
            "{path}: {}",
            response.text
        );
        assert!(
            response.body["error_description"]
                .as_str()
                .unwrap()
                .contains("repeated"),
            "{path}: {}",
            response.text
        );
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
    }
    assert_eq!(snapshot(&server, &admin_token, &agent).await, before);
    assert_eq!(
        server.introspect(&admin_token, &token).await["active"],
        true
    );
}

agentidp_testkit::per_store!(
    every_endpoint_refuses_bad_input_with_its_documented_body_and_changes_nothing,
    a_json_oauth_request_that_repeats_a_parameter_is_refused,
);
