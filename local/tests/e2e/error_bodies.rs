//! The documented error answers, each matched whole against a snapshot in `snapshots/` beside
//! this file: the management API's `{code, message, details}` body, and the RFC 6749 §5.2 body
//! of the OAuth endpoints, with the status and the headers a client acts on.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::support::{Response, TestServer};

/// Asserts the status, the headers a client acts on and the body of `response` against the
/// snapshot `name`. A Retry-After counts down to the end of a window, so its value is redacted.
fn assert_error_snapshot(name: &str, response: &Response) {
    let headers: Map<String, Value> = [
        "content-type",
        "cache-control",
        "pragma",
        "www-authenticate",
        "retry-after",
        "allow",
    ]
    .into_iter()
    .filter_map(|header| {
        response
            .header(header)
            .map(|value| (header.to_owned(), Value::from(value)))
    })
    .collect();
    let answer = json!({"status": response.status, "headers": headers, "body": response.body});
    insta::assert_json_snapshot!(name, answer, {
        ".headers[\"retry-after\"]" => "[seconds]",
    });
}

async fn management_errors_have_the_documented_bodies(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("errors").await;
    let admin_token = server.admin_token(&admin).await;
    let api = server.api(&admin_token);
    let agent = server.create_agent(&admin_token, "target", &[]).await;
    let (credential, _, _) = server.create_credential(&admin_token, &agent).await;
    let (_, reader) = server
        .agent_with_token(&admin_token, "reader", &["agents:read"])
        .await;
    let (_, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write"])
        .await;
    let missing = uuid::Uuid::new_v4().to_string();

    // 400
    assert_error_snapshot(
        "validation_error",
        &api.create_agent(json!({"name": "", "scopes": ["has space"], "colour": "red"}))
            .await,
    );
    assert_error_snapshot(
        "validation_error_of_a_resource",
        &api.create_resource(json!({
            "identifier": "http://mcp.example.com/mcp#tools",
            "name": "mcp",
            "scopes": ["tools:call", "resources:write"],
        }))
        .await,
    );
    // 401
    assert_error_snapshot(
        "unauthorized_without_a_token",
        &server.call(Method::GET, "/api/v1/agents", None, None).await,
    );
    assert_error_snapshot(
        "unauthorized_with_an_invalid_token",
        &server.api("not-a-token").list_agents("").await,
    );
    // 403
    assert_error_snapshot(
        "insufficient_scope_for_the_endpoint",
        &server
            .api(&reader)
            .create_agent(json!({"name": "new"}))
            .await,
    );
    assert_error_snapshot(
        "insufficient_scope_to_grant",
        &server
            .api(&writer)
            .create_agent(json!({"name": "new", "scopes": ["audit:read"]}))
            .await,
    );
    assert_error_snapshot(
        "insufficient_scope_over_the_target",
        &server.api(&writer).suspend(&admin.agent_id).await,
    );
    // 404
    assert_error_snapshot("agent_not_found", &api.get_agent(&missing).await);
    assert_error_snapshot("credential_not_found", &api.rotate(&agent, &missing).await);
    assert_error_snapshot("audit_event_not_found", &api.audit_event(&missing).await);
    assert_error_snapshot("resource_not_found", &api.get_resource(&missing).await);
    assert_error_snapshot(
        "route_not_found",
        &server
            .call(Method::GET, "/api/v1/nothing", Some(&admin_token), None)
            .await,
    );
    // 405
    assert_error_snapshot(
        "method_not_allowed",
        &server
            .call(
                Method::PUT,
                "/api/v1/agents",
                Some(&admin_token),
                Some(json!({})),
            )
            .await,
    );
    // 409
    assert_error_snapshot(
        "agent_name_taken",
        &api.create_agent(json!({"name": "target"})).await,
    );
    server
        .create_resource(&admin_token, "https://mcp.example.com/mcp", &[])
        .await;
    assert_error_snapshot(
        "resource_identifier_taken",
        &api.create_resource(json!({"identifier": "HTTPS://MCP.EXAMPLE.COM/mcp", "name": "again"}))
            .await,
    );
    assert_eq!(api.revoke_credential(&agent, &credential).await.status, 204);
    assert_error_snapshot(
        "credential_revoked",
        &api.revoke_credential(&agent, &credential).await,
    );
    assert_eq!(api.suspend(&agent).await.status, 200);
    assert_error_snapshot(
        "agent_not_active",
        &api.generate_credential(&agent, json!({})).await,
    );
    assert_eq!(api.delete_agent(&agent).await.status, 204);
    assert_error_snapshot("invalid_status_transition", &api.reactivate(&agent).await);
    // 413, 415
    assert_error_snapshot(
        "payload_too_large",
        &server
            .send(
                server
                    .request(Method::POST, "/api/v1/agents")
                    .bearer_auth(&admin_token)
                    .header("content-type", "application/json")
                    .body(format!("{{\"name\":\"{}\"}}", "a".repeat(70 * 1024))),
            )
            .await,
    );
    assert_error_snapshot(
        "unsupported_media_type",
        &server
            .send(
                server
                    .request(Method::POST, "/api/v1/agents")
                    .bearer_auth(&admin_token)
                    .header("content-type", "text/plain")
                    .body("{}"),
            )
            .await,
    );
}

async fn management_limit_refusals_have_the_documented_bodies(store: Arc<dyn Store>) {
    // The bootstrap admin fills the one place; the second management call is one too many.
    let server = TestServer::start_with(store, |config| {
        config.free_limits.max_agents = 1;
        config.throttle.org_requests_per_minute = 1;
    })
    .await;
    let admin = server.new_org("errors").await;
    let token = server.admin_token(&admin).await;
    // 403
    assert_error_snapshot(
        "plan_limit_exceeded",
        &server
            .api(&token)
            .create_agent(json!({"name": "one-too-many"}))
            .await,
    );
    // 429
    assert_error_snapshot("rate_limited", &server.api(&token).list_agents("").await);
}

async fn oauth_errors_have_the_rfc_6749_bodies(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("errors").await;
    let (client_id, secret) = (admin.client_id.as_str(), admin.client_secret.as_str());
    let token_endpoint = || {
        server
            .request(Method::POST, "/api/v1/token")
            .basic_auth(client_id, Some(secret))
    };

    assert_error_snapshot(
        "oauth_invalid_request",
        &server.send(token_endpoint().form(&[("scope", "x")])).await,
    );
    assert_error_snapshot(
        "oauth_unsupported_grant_type",
        &server
            .send(token_endpoint().form(&[("grant_type", "password")]))
            .await,
    );
    assert_error_snapshot(
        "oauth_invalid_scope",
        &server
            .token_request(client_id, secret, Some("admin:everything"))
            .await,
    );
    assert_error_snapshot(
        "oauth_invalid_client_basic",
        &server.token_request(client_id, "wrong", None).await,
    );
    assert_error_snapshot(
        "oauth_invalid_client_post",
        &server
            .send(server.request(Method::POST, "/api/v1/token").form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", "wrong"),
            ]))
            .await,
    );
    assert_error_snapshot(
        "oauth_unsupported_media_type",
        &server
            .send(token_endpoint().body("grant_type=client_credentials"))
            .await,
    );
    assert_error_snapshot(
        "oauth_payload_too_large",
        &server
            .send(token_endpoint().form(&[
                ("grant_type", "client_credentials"),
                ("scope", &"a".repeat(70 * 1024)),
            ]))
            .await,
    );
    assert_error_snapshot(
        "oauth_introspection_without_client_authentication",
        &server
            .send(
                server
                    .request(Method::POST, "/api/v1/token/introspect")
                    .form(&[("token", "x")]),
            )
            .await,
    );
}

async fn oauth_limit_refusals_have_the_rfc_6749_bodies(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| {
        config.free_limits.monthly_token_requests = 1;
        config.throttle.client_failures = 1;
    })
    .await;
    // The monthly quota: the admin's first token takes the one request of the month.
    let quota = server.new_org("quota").await;
    server.admin_token(&quota).await;
    assert_error_snapshot(
        "oauth_quota_exceeded",
        &server
            .token_request(&quota.client_id, &quota.client_secret, None)
            .await,
    );
    // The lockout: one wrong secret, and the client is refused even with the right one.
    let locked = server.new_org("locked").await;
    let wrong = server.token_request(&locked.client_id, "wrong", None).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    assert_error_snapshot(
        "oauth_slow_down",
        &server
            .token_request(&locked.client_id, &locked.client_secret, None)
            .await,
    );
}

agentidp_testkit::per_store!(
    management_errors_have_the_documented_bodies,
    management_limit_refusals_have_the_documented_bodies,
    oauth_errors_have_the_rfc_6749_bodies,
    oauth_limit_refusals_have_the_rfc_6749_bodies,
);
