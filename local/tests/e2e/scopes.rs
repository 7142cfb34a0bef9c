//! Scope checks on every management endpoint: who may call what, with which token.

use std::sync::Arc;

use agentidp_shared::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Admin, Response, TestServer};

/// Ids that exist in the organization, to fill in every management route.
struct Ids {
    agent_id: String,
    credential_id: String,
    event_id: String,
}

/// Every management endpoint, as (method, path, body), against existing records.
fn endpoints(ids: &Ids) -> Vec<(Method, String, Option<Value>)> {
    let Ids { agent_id, credential_id, event_id } = ids;
    vec![
        (Method::POST, "/api/v1/agents".into(), Some(json!({"name": "newcomer", "scopes": []}))),
        (Method::GET, "/api/v1/agents".into(), None),
        (Method::GET, format!("/api/v1/agents/{agent_id}"), None),
        (Method::PATCH, format!("/api/v1/agents/{agent_id}"), Some(json!({"description": "changed"}))),
        (Method::DELETE, format!("/api/v1/agents/{agent_id}"), None),
        (Method::POST, format!("/api/v1/agents/{agent_id}/credentials"), Some(json!({}))),
        (Method::GET, format!("/api/v1/agents/{agent_id}/credentials"), None),
        (Method::POST, format!("/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate"), Some(json!({}))),
        (Method::DELETE, format!("/api/v1/agents/{agent_id}/credentials/{credential_id}"), None),
        (Method::GET, "/api/v1/audit".into(), None),
        (Method::GET, format!("/api/v1/audit/{event_id}"), None),
    ]
}

/// The scope each endpoint of [`endpoints`] requires, in the same order.
const REQUIRED: [&str; 11] = [
    "agents:write",
    "agents:read",
    "agents:read",
    "agents:write",
    "agents:write",
    "agents:write",
    "agents:write",
    "agents:write",
    "agents:write",
    "audit:read",
    "audit:read",
];

/// An organization with a target agent holding a credential, and an audit event id.
async fn setup(server: &TestServer) -> (Admin, String, Ids) {
    let admin = server.new_org("scopes").await;
    let admin_token = server.admin_token(&admin).await;
    let agent_id = server.create_agent(&admin_token, "target", &["weather:read"]).await;
    let (credential_id, _, _) = server.create_credential(&admin_token, &agent_id).await;
    let events = server.audit_events(&admin_token, "").await;
    let event_id = events[0]["eventId"].as_str().unwrap().to_owned();
    (admin, admin_token, Ids { agent_id, credential_id, event_id })
}

/// An agent holding exactly `scopes`, and an access token of it carrying them all.
async fn token_with(server: &TestServer, admin_token: &str, name: &str, scopes: &[&str]) -> (String, String) {
    let agent_id = server.create_agent(admin_token, name, scopes).await;
    let (_, client_id, secret) = server.create_credential(admin_token, &agent_id).await;
    let token = server.token(&client_id, &secret).await;
    (agent_id, token)
}

fn assert_unauthorized(response: &Response, what: &str) {
    assert_eq!(response.status, 401, "{what}: {}", response.text);
    assert_eq!(response.code(), "UNAUTHORIZED", "{what}: {}", response.text);
    assert!(response.body["message"].is_string(), "{what}: {}", response.text);
    assert_eq!(response.body["details"], json!([]), "{what}: {}", response.text);
    let challenge = response.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
}

/// 401 for a token that was presented but is not valid: RFC 6750 §3.1 `invalid_token`.
fn assert_invalid_token(response: &Response, what: &str) {
    assert_unauthorized(response, what);
    let challenge = response.header("www-authenticate").unwrap();
    assert!(challenge.contains(r#"error="invalid_token""#), "{what}: {challenge}");
}

fn assert_insufficient_scope(response: &Response, scope: &str, what: &str) {
    assert_eq!(response.status, 403, "{what}: {}", response.text);
    assert_eq!(response.code(), "INSUFFICIENT_SCOPE", "{what}: {}", response.text);
    assert_eq!(response.body["details"], json!([]), "{what}: {}", response.text);
    let challenge = response.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
    assert!(challenge.contains(r#"error="insufficient_scope""#), "{what}: {challenge}");
    assert!(challenge.contains(&format!(r#"scope="{scope}""#)), "{what}: {challenge}");
}

/// Calls every endpoint with `token` (or none) and expects a 401 from each.
async fn expect_401_everywhere(server: &TestServer, ids: &Ids, token: Option<&str>, invalid_token: bool) {
    for (method, path, body) in endpoints(ids) {
        let what = format!("{method} {path}");
        let response = server.call(method, &path, token, body).await;
        if invalid_token {
            assert_invalid_token(&response, &what);
        } else {
            assert_unauthorized(&response, &what);
        }
    }
}

/// The target agent, its credentials and the audit trail, to show that refused calls changed
/// nothing.
async fn snapshot(server: &TestServer, admin_token: &str, ids: &Ids) -> (Value, Value, Value, usize) {
    let agents = server.call(Method::GET, "/api/v1/agents?limit=100", Some(admin_token), None).await;
    let agent = server.call(Method::GET, &format!("/api/v1/agents/{}", ids.agent_id), Some(admin_token), None).await;
    let credentials =
        server.call(Method::GET, &format!("/api/v1/agents/{}/credentials", ids.agent_id), Some(admin_token), None).await;
    assert_eq!(agents.status, 200);
    assert_eq!(agent.status, 200);
    assert_eq!(credentials.status, 200);
    let events = server.audit_events(admin_token, "").await.len();
    (agents.body, agent.body, credentials.body, events)
}

async fn a_call_without_a_token_is_refused_with_a_bearer_challenge(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, _, ids) = setup(&server).await;
    expect_401_everywhere(&server, &ids, None, false).await;
    // Without a token there is no error code in the challenge (RFC 6750 §3.1).
    let response = server.call(Method::GET, "/api/v1/agents", None, None).await;
    assert_eq!(response.header("www-authenticate"), Some(r#"Bearer realm="agentidp""#));
    // Basic credentials are not a bearer token.
    let basic = server
        .send(server.request(Method::GET, "/api/v1/agents").basic_auth("someone", Some("something")))
        .await;
    assert_unauthorized(&basic, "basic auth on the management API");
}

async fn a_garbage_token_is_refused_on_every_endpoint(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    expect_401_everywhere(&server, &ids, Some("not-a-token"), true).await;
    // A well-formed JWT signed by nobody we know.
    let forged = "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6IngifQ.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    expect_401_everywhere(&server, &ids, Some(forged), true).await;
    // The admin token with its signature altered.
    let (head, _) = admin_token.rsplit_once('.').unwrap();
    let tampered = format!("{head}.AAAA{}", &admin_token[admin_token.len() - 10..]);
    expect_401_everywhere(&server, &ids, Some(&tampered), true).await;
}

