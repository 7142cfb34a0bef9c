//! Reads, no-op changes and refused calls: none of them leaves an event.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use super::{new_events, org, tick};
use crate::support::TestServer;

async fn reads_and_refused_calls_leave_no_event(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "reads").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (credential, client_id, secret) = server.create_credential(t, &agent).await;
    let agent_token = server.token(&client_id, &secret).await;
    let before = tick(&server, t).await;
    let event_id = before[0]["eventId"].as_str().unwrap().to_owned();

    for path in [
        "/api/v1/agents".to_owned(),
        "/api/v1/agents?status=active&page=1&limit=5".to_owned(),
        format!("/api/v1/agents/{agent}"),
        format!("/api/v1/agents/{agent}/credentials"),
        format!("/api/v1/agents/{agent}/credentials?status=active"),
        "/api/v1/audit".to_owned(),
        format!("/api/v1/audit?agentId={agent}"),
        format!("/api/v1/audit/{event_id}"),
        "/.well-known/jwks.json".to_owned(),
        "/.well-known/oauth-authorization-server".to_owned(),
        "/.well-known/openid-configuration".to_owned(),
    ] {
        let response = server.call(Method::GET, &path, Some(t), None).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text);
    }
    // Introspection is a read too, by bearer token and by client credentials.
    assert_eq!(server.introspect(t, &agent_token).await["active"], true);
    let by_client = server
        .api_as_client(&client_id, &secret)
        .introspect(&agent_token)
        .await;
    assert_eq!(by_client.body["active"], true, "{}", by_client.text);
    // A patch that changes nothing changes no state.
    let same = server
        .api(t)
        .update_agent(&agent, json!({"name": "subject"}))
        .await;
    assert_eq!(same.status, 200, "{}", same.text);
    // Refused management calls change nothing and record nothing.
    let missing = uuid::Uuid::new_v4();
    for (method, path, body, status) in [
        (Method::GET, format!("/api/v1/agents/{missing}"), None, 404),
        (
            Method::PATCH,
            format!("/api/v1/agents/{missing}"),
            Some(json!({"description": "x"})),
            404,
        ),
        (
            Method::DELETE,
            format!("/api/v1/agents/{missing}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/api/v1/agents".to_owned(),
            Some(json!({"name": "subject", "scopes": []})),
            409,
        ),
        (
            Method::POST,
            "/api/v1/agents".to_owned(),
            Some(json!({"scopes": []})),
            400,
        ),
        (
            Method::PATCH,
            format!("/api/v1/agents/{agent}"),
            Some(json!({"status": "retired"})),
            400,
        ),
        (
            Method::POST,
            format!("/api/v1/agents/{agent}/credentials/{missing}/rotate"),
            Some(json!({})),
            404,
        ),
        (
            Method::POST,
            format!("/api/v1/agents/{agent}/credentials"),
            Some(json!({"expiresAt": "2000-01-01T00:00:00.000Z"})),
            400,
        ),
        (
            Method::GET,
            "/api/v1/audit?action=agent.exploded".to_owned(),
            None,
            400,
        ),
    ] {
        let what = format!("{method} {path}");
        let response = server.call(method, &path, Some(t), body).await;
        assert_eq!(response.status, status, "{what}: {}", response.text);
    }
    // Revoking an unknown token is a no-op (RFC 7009) and records nothing.
    let response = server.api(t).revoke_token("not-a-token").await;
    assert_eq!(response.status, 200, "{}", response.text);
    // Revoking a revoked credential again is refused and records nothing new.
    let revoked = server.api(t).revoke_credential(&agent, &credential).await;
    assert_eq!(revoked.status, 204);
    let after_revoke = server.audit_events(t, "").await;
    assert_eq!(new_events(&before, &after_revoke).len(), 1);
    let again = server.api(t).revoke_credential(&agent, &credential).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(server.audit_events(t, "").await, after_revoke);
    let new: Vec<Value> = new_events(&before, &after_revoke);
    assert_eq!(new[0]["action"], "credential.revoked");
}

agentidp_testkit::per_store!(reads_and_refused_calls_leave_no_event);
