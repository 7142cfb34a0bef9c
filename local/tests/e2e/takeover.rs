//! A management caller may change an agent or its credentials only if it holds every management
//! scope that agent holds: otherwise `agents:write` alone would take over the admin.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Admin, Response, TestServer};

/// Every change a writer could make to `agent_id` and its credential `credential_id`, as
/// (audit action the attempt is filed under, method, path, body).
fn changes(
    agent_id: &str,
    credential_id: &str,
) -> Vec<(&'static str, Method, String, Option<Value>)> {
    vec![
        (
            "credential.generated",
            Method::POST,
            format!("/api/v1/agents/{agent_id}/credentials"),
            Some(json!({})),
        ),
        (
            "credential.rotated",
            Method::POST,
            format!("/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate"),
            Some(json!({})),
        ),
        (
            "credential.revoked",
            Method::DELETE,
            format!("/api/v1/agents/{agent_id}/credentials/{credential_id}"),
            None,
        ),
        (
            "agent.updated",
            Method::PATCH,
            format!("/api/v1/agents/{agent_id}"),
            Some(json!({"scopes": ["agents:read"]})),
        ),
        (
            "agent.updated",
            Method::PATCH,
            format!("/api/v1/agents/{agent_id}"),
            Some(json!({"description": "owned by the writer"})),
        ),
        (
            "agent.suspended",
            Method::PATCH,
            format!("/api/v1/agents/{agent_id}"),
            Some(json!({"status": "suspended"})),
        ),
        (
            "agent.decommissioned",
            Method::DELETE,
            format!("/api/v1/agents/{agent_id}"),
            None,
        ),
    ]
}

/// The agent, its credentials and the organization's agent listing, as the admin sees them.
async fn state_of(server: &TestServer, admin_token: &str, agent_id: &str) -> (Value, Value, Value) {
    let mut seen = Vec::new();
    for path in [
        format!("/api/v1/agents/{agent_id}"),
        format!("/api/v1/agents/{agent_id}/credentials"),
        "/api/v1/agents?limit=100".to_owned(),
    ] {
        let response = server
            .call(Method::GET, &path, Some(admin_token), None)
            .await;
        assert_eq!(response.status, 200, "{path}: {}", response.text);
        seen.push(response.body);
    }
    let listing = seen.pop().unwrap();
    let credentials = seen.pop().unwrap();
    (seen.pop().unwrap(), credentials, listing)
}

fn assert_takeover_refused(response: &Response, missing: &[&str], what: &str) {
    assert_eq!(response.status, 403, "{what}: {}", response.text);
    assert_eq!(
        response.code(),
        "INSUFFICIENT_SCOPE",
        "{what}: {}",
        response.text
    );
    let named: Vec<Value> = missing.iter().map(|s| json!({ "scope": s })).collect();
    assert_eq!(
        response.body["details"],
        json!(named),
        "{what}: {}",
        response.text
    );
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(&format!(r#"scope="{}""#, missing.join(" "))),
        "{what}: {challenge}"
    );
}

/// What an `agents:write` writer lacks of the admin agent, which holds every management scope.
const ADMIN_BEYOND_WRITER: [&str; 3] = ["audit:read", "resources:read", "resources:write"];

async fn attempt_every_change(
    server: &TestServer,
    admin: &Admin,
    writer: &str,
    missing: &[&str],
) -> usize {
    let mut attempts = 0;
    for (_, method, path, body) in changes(&admin.agent_id, &admin.credential_id) {
        let what = format!("{method} {path} {body:?}");
        let response = server.call(method, &path, Some(writer), body).await;
        assert_takeover_refused(&response, missing, &what);
        attempts += 1;
    }
    attempts
}

async fn a_writer_cannot_take_over_the_admin_agent(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("takeover").await;
    let admin_token = server.admin_token(&admin).await;
    let (_, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write"])
        .await;
    let before = state_of(&server, &admin_token, &admin.agent_id).await;

    attempt_every_change(&server, &admin, &writer, &ADMIN_BEYOND_WRITER).await;

    assert_eq!(
        state_of(&server, &admin_token, &admin.agent_id).await,
        before,
        "a refused takeover changed the admin agent"
    );
    // The real admin still gets its token with every scope, and it still opens the audit trail.
    let response = server
        .token_request(&admin.client_id, &admin.client_secret, None)
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(
        response.body["scope"],
        "agents:read agents:write audit:read resources:read resources:write"
    );
    let audit = server.api(&response.str("access_token")).audit("").await;
    assert_eq!(audit.status, 200, "{}", audit.text);
}

async fn a_writer_cannot_take_over_an_agent_holding_a_scope_it_lacks(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("takeover-peer").await;
    let admin_token = server.admin_token(&admin).await;
    // The target holds less than the writer in every respect but one: audit:read. Free-form
    // scopes, on either side, do not count.
    let (_, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write", "weather:read"])
        .await;
    let target = server
        .create_agent(
            &admin_token,
            "auditor",
            &["agents:read", "audit:read", "billing:admin"],
        )
        .await;
    let (credential_id, _, _) = server.create_credential(&admin_token, &target).await;
    let before = state_of(&server, &admin_token, &target).await;
    for (_, method, path, body) in changes(&target, &credential_id) {
        let what = format!("{method} {path} {body:?}");
        let response = server.call(method, &path, Some(&writer), body).await;
        assert_takeover_refused(&response, &["audit:read"], &what);
    }
    assert_eq!(state_of(&server, &admin_token, &target).await, before);
}

async fn a_refused_takeover_is_audited_as_a_failure(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("takeover-audit").await;
    let admin_token = server.admin_token(&admin).await;
    let (writer_id, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write"])
        .await;

    attempt_every_change(&server, &admin, &writer, &ADMIN_BEYOND_WRITER).await;

    let failures = server.audit_events(&admin_token, "&outcome=failure").await;
    // The test clock stands still, so events of one instant may list in any order.
    let mut actions: Vec<&str> = failures
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    let mut attempted: Vec<&str> = changes(&admin.agent_id, &admin.credential_id)
        .iter()
        .map(|(action, ..)| *action)
        .collect();
    attempted.sort_unstable();
    assert_eq!(actions, attempted, "{failures:#?}");
    for event in &failures {
        assert_eq!(event["outcome"], "failure");
        assert_eq!(event["actor"]["agentId"], writer_id.as_str(), "{event:#}");
        assert_eq!(event["agentId"], admin.agent_id.as_str(), "{event:#}");
        assert_eq!(
            event["details"]["reason"], "insufficient_scope",
            "{event:#}"
        );
        assert_eq!(
            event["details"]["missingScopes"],
            json!(ADMIN_BEYOND_WRITER),
            "{event:#}"
        );
    }
}

async fn a_writer_may_change_agents_that_hold_no_more_than_it(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("takeover-allowed").await;
    let admin_token = server.admin_token(&admin).await;
    let (writer_id, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write"])
        .await;
    // agents:write implies agents:read; free-form scopes are not management scopes.
    for (name, scopes) in [
        ("reader", vec!["agents:read", "weather:read"]),
        ("peer", vec!["agents:write"]),
        ("plain", vec![]),
    ] {
        let target = server.create_agent(&admin_token, name, &scopes).await;
        let (credential_id, _, _) = server.create_credential(&admin_token, &target).await;
        for (_, method, path, body) in changes(&target, &credential_id) {
            let what = format!("{name}: {method} {path} {body:?}");
            let response = server.call(method, &path, Some(&writer), body).await;
            assert!(
                [200, 201, 204].contains(&response.status),
                "{what}: {}",
                response.text
            );
        }
    }
    // Including itself.
    let response = server
        .api(&writer)
        .update_agent(&writer_id, json!({"description": "self"}))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
}

async fn the_admin_may_change_any_agent(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("takeover-admin").await;
    let admin_token = server.admin_token(&admin).await;
    let target = server
        .create_agent(&admin_token, "auditor", &["agents:write", "audit:read"])
        .await;
    let (credential_id, _, _) = server.create_credential(&admin_token, &target).await;
    for (_, method, path, body) in changes(&target, &credential_id) {
        let what = format!("{method} {path} {body:?}");
        let response = server.call(method, &path, Some(&admin_token), body).await;
        assert!(
            [200, 201, 204].contains(&response.status),
            "{what}: {}",
            response.text
        );
    }
}

agentidp_testkit::per_store!(
    a_writer_cannot_take_over_the_admin_agent,
    a_writer_cannot_take_over_an_agent_holding_a_scope_it_lacks,
    a_refused_takeover_is_audited_as_a_failure,
    a_writer_may_change_agents_that_hold_no_more_than_it,
    the_admin_may_change_any_agent,
);
