//! Scope checks on every management endpoint: who may call what, with which token.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Admin, Response, TestServer};

/// Ids that exist in the organization, to fill in every management route.
struct Ids {
    agent_id: String,
    credential_id: String,
    event_id: String,
    resource_id: String,
}

/// Every management endpoint, as (method, path, body), against existing records.
fn endpoints(ids: &Ids) -> Vec<(Method, String, Option<Value>)> {
    let Ids {
        agent_id,
        credential_id,
        event_id,
        resource_id,
    } = ids;
    vec![
        (
            Method::POST,
            "/api/v1/agents".into(),
            Some(json!({"name": "newcomer", "scopes": []})),
        ),
        (Method::GET, "/api/v1/agents".into(), None),
        (Method::GET, format!("/api/v1/agents/{agent_id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/agents/{agent_id}"),
            Some(json!({"description": "changed"})),
        ),
        (Method::DELETE, format!("/api/v1/agents/{agent_id}"), None),
        (
            Method::POST,
            format!("/api/v1/agents/{agent_id}/credentials"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/api/v1/agents/{agent_id}/credentials"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate"),
            Some(json!({})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/agents/{agent_id}/credentials/{credential_id}"),
            None,
        ),
        (Method::GET, "/api/v1/audit".into(), None),
        (Method::GET, format!("/api/v1/audit/{event_id}"), None),
        (
            Method::POST,
            "/api/v1/resources".into(),
            Some(json!({"identifier": "https://new.example.com/", "name": "new"})),
        ),
        (Method::GET, "/api/v1/resources".into(), None),
        (
            Method::GET,
            format!("/api/v1/resources/{resource_id}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/resources/{resource_id}"),
            Some(json!({"name": "changed"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/resources/{resource_id}"),
            None,
        ),
    ]
}

/// The scope each endpoint of [`endpoints`] requires, in the same order.
const REQUIRED: [&str; 16] = [
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
    "resources:write",
    "resources:read",
    "resources:read",
    "resources:write",
    "resources:write",
];

/// An organization with a target agent holding a credential, a resource, and an audit event id.
async fn setup(server: &TestServer) -> (Admin, String, Ids) {
    let admin = server.new_org("scopes").await;
    let admin_token = server.admin_token(&admin).await;
    let agent_id = server
        .create_agent(&admin_token, "target", &["weather:read"])
        .await;
    let (credential_id, _, _) = server.create_credential(&admin_token, &agent_id).await;
    let resource_id = server
        .create_resource(&admin_token, "https://target.example.com/", &["tools:call"])
        .await;
    let events = server.audit_events(&admin_token, "").await;
    let event_id = events[0]["eventId"].as_str().unwrap().to_owned();
    (
        admin,
        admin_token,
        Ids {
            agent_id,
            credential_id,
            event_id,
            resource_id,
        },
    )
}

fn assert_unauthorized(response: &Response, what: &str) {
    assert_eq!(response.status, 401, "{what}: {}", response.text);
    assert_eq!(response.code(), "UNAUTHORIZED", "{what}: {}", response.text);
    assert!(
        response.body["message"].is_string(),
        "{what}: {}",
        response.text
    );
    assert_eq!(
        response.body["details"],
        json!([]),
        "{what}: {}",
        response.text
    );
    let challenge = response
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
}

/// 401 for a token that was presented but is not valid: RFC 6750 §3.1 `invalid_token`.
fn assert_invalid_token(response: &Response, what: &str) {
    assert_unauthorized(response, what);
    let challenge = response.header("www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{what}: {challenge}"
    );
}

fn assert_insufficient_scope(response: &Response, scope: &str, what: &str) {
    assert_eq!(response.status, 403, "{what}: {}", response.text);
    assert_eq!(
        response.code(),
        "INSUFFICIENT_SCOPE",
        "{what}: {}",
        response.text
    );
    assert_eq!(
        response.body["details"],
        json!([]),
        "{what}: {}",
        response.text
    );
    let challenge = response
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{what}: {challenge}"
    );
    assert!(
        challenge.contains(&format!(r#"scope="{scope}""#)),
        "{what}: {challenge}"
    );
}

/// Calls every endpoint with `token` (or none) and expects a 401 from each.
async fn expect_401_everywhere(
    server: &TestServer,
    ids: &Ids,
    token: Option<&str>,
    invalid_token: bool,
) {
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

/// The target agent, its credentials, the resources and the audit trail, to show that refused
/// calls changed nothing.
async fn snapshot(
    server: &TestServer,
    admin_token: &str,
    ids: &Ids,
) -> (Value, Value, Value, Vec<Value>, Value) {
    let api = server.api(admin_token);
    let agents = api.list_agents("limit=100").await;
    let agent = api.get_agent(&ids.agent_id).await;
    let credentials = api.list_credentials(&ids.agent_id, "").await;
    let resources = api.list_resources("limit=100").await;
    assert_eq!(agents.status, 200);
    assert_eq!(agent.status, 200);
    assert_eq!(credentials.status, 200);
    assert_eq!(resources.status, 200);
    let events = server.audit_events(admin_token, "").await;
    (
        agents.body,
        agent.body,
        credentials.body,
        events,
        resources.body,
    )
}

async fn a_call_without_a_token_is_refused_with_a_bearer_challenge(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, _, ids) = setup(&server).await;
    expect_401_everywhere(&server, &ids, None, false).await;
    // Without a token there is no error code in the challenge (RFC 6750 §3.1).
    let response = server.call(Method::GET, "/api/v1/agents", None, None).await;
    assert_eq!(
        response.header("www-authenticate"),
        Some(r#"Bearer realm="agentidp""#)
    );
    // Basic credentials are not a bearer token.
    let basic = server
        .send(
            server
                .request(Method::GET, "/api/v1/agents")
                .basic_auth("someone", Some("something")),
        )
        .await;
    assert_unauthorized(&basic, "basic auth on the management API");
}

async fn a_garbage_token_is_refused_on_every_endpoint(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    expect_401_everywhere(&server, &ids, Some("not-a-token"), true).await;
    // A well-formed JWT signed by nobody we know.
    let forged =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6IngifQ.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    expect_401_everywhere(&server, &ids, Some(forged), true).await;
    // The admin token with one character of its signature altered.
    let (head, signature) = admin_token.rsplit_once('.').unwrap();
    let mut altered: Vec<char> = signature.chars().collect();
    altered[4] = if altered[4] == 'A' { 'B' } else { 'A' };
    let tampered = format!("{head}.{}", altered.into_iter().collect::<String>());
    expect_401_everywhere(&server, &ids, Some(&tampered), true).await;
}

async fn an_expired_token_is_refused_on_every_endpoint(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (admin, admin_token, ids) = setup(&server).await;
    let before = snapshot(&server, &admin_token, &ids).await;
    let lifetime = server.idp.config().token_lifetime_seconds;
    server
        .clock
        .advance(chrono::Duration::seconds(lifetime - 1));
    let response = server.api(&admin_token).list_agents("").await;
    assert_eq!(
        response.status, 200,
        "a second before expiry the token still works: {}",
        response.text
    );
    server.clock.advance(chrono::Duration::seconds(1));
    expect_401_everywhere(&server, &ids, Some(&admin_token), true).await;

    // Nothing the expired token attempted happened: the only new event is the fresh token's.
    let fresh = server.admin_token(&admin).await;
    let after = snapshot(&server, &fresh, &ids).await;
    assert_eq!(
        (&after.0, &after.1, &after.2, &after.4),
        (&before.0, &before.1, &before.2, &before.4)
    );
    assert_eq!(after.3.len(), before.3.len() + 1, "{:#?}", after.3);
    assert_eq!(after.3[0]["action"], "token.issued");
    assert_eq!(after.3[1..], before.3[..]);
}

async fn a_revoked_token_is_refused_on_every_endpoint(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (_, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write", "audit:read"])
        .await;
    let response = server.api(&writer).list_agents("").await;
    assert_eq!(response.status, 200, "{}", response.text);

    let revoked = server.api(&admin_token).revoke_token(&writer).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let before = snapshot(&server, &admin_token, &ids).await;
    expect_401_everywhere(&server, &ids, Some(&writer), true).await;
    assert_eq!(
        snapshot(&server, &admin_token, &ids).await,
        before,
        "a revoked token changed something"
    );
}

async fn a_read_only_token_can_list_and_get_agents_and_nothing_else(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (reader_id, reader) = server
        .agent_with_token(&admin_token, "reader", &["agents:read"])
        .await;
    let before = snapshot(&server, &admin_token, &ids).await;

    let as_reader = server.api(&reader);
    let listed = as_reader.list_agents("limit=100").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(
        listed.body, before.0,
        "the reader sees the same listing as the admin"
    );
    let got = as_reader.get_agent(&ids.agent_id).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body, before.1);
    let own = as_reader.get_agent(&reader_id).await;
    assert_eq!(own.status, 200, "{}", own.text);

    for ((method, path, body), scope) in endpoints(&ids).into_iter().zip(REQUIRED) {
        if scope == "agents:read" {
            continue;
        }
        let what = format!("{method} {path}");
        let response = server.call(method, &path, Some(&reader), body).await;
        assert_insufficient_scope(&response, scope, &what);
    }
    // Scope comes before input: ids that do not exist and bodies that are invalid still get 403,
    // so a reader learns nothing about what exists.
    let missing = Ids {
        agent_id: uuid::Uuid::new_v4().to_string(),
        credential_id: uuid::Uuid::new_v4().to_string(),
        event_id: uuid::Uuid::new_v4().to_string(),
        resource_id: uuid::Uuid::new_v4().to_string(),
    };
    for ((method, path, _), scope) in endpoints(&missing).into_iter().zip(REQUIRED) {
        if scope == "agents:read" {
            continue;
        }
        let what = format!("{method} {path} (unknown ids, invalid body)");
        let response = server
            .call(method, &path, Some(&reader), Some(json!({"name": 42})))
            .await;
        assert_insufficient_scope(&response, scope, &what);
    }
    // The reader cannot change itself either.
    let response = as_reader
        .update_agent(&reader_id, json!({"scopes": ["agents:write"]}))
        .await;
    assert_insufficient_scope(&response, "agents:write", "PATCH own agent");

    assert_eq!(
        snapshot(&server, &admin_token, &ids).await,
        before,
        "a refused call changed something"
    );
}

async fn agents_write_implies_agents_read_but_not_audit_read(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (_, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write"])
        .await;
    let as_writer = server.api(&writer);

    let listed = as_writer.list_agents("").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let got = as_writer.get_agent(&ids.agent_id).await;
    assert_eq!(got.status, 200, "{}", got.text);

    let created = server
        .create_agent(&writer, "made-by-writer", &["weather:read"])
        .await;
    let patched = as_writer
        .update_agent(&created, json!({"description": "by the writer"}))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["description"], "by the writer");
    let (credential_id, _, _) = server.create_credential(&writer, &created).await;
    let credentials = as_writer.list_credentials(&created, "").await;
    assert_eq!(credentials.status, 200, "{}", credentials.text);
    assert_eq!(credentials.body["total"], 1);
    let rotated = as_writer.rotate(&created, &credential_id).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let revoked = as_writer.revoke_credential(&created, &credential_id).await;
    assert_eq!(revoked.status, 204, "{}", revoked.text);
    let decommissioned = as_writer.delete_agent(&created).await;
    assert_eq!(decommissioned.status, 204, "{}", decommissioned.text);

    let audit = as_writer.audit("").await;
    assert_insufficient_scope(&audit, "audit:read", "GET /api/v1/audit");
    let event = as_writer.audit_event(&ids.event_id).await;
    assert_insufficient_scope(&event, "audit:read", "GET /api/v1/audit/{eventId}");
}

async fn audit_read_alone_opens_the_audit_trail_and_nothing_else(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (_, auditor) = server
        .agent_with_token(&admin_token, "auditor", &["audit:read"])
        .await;
    let before = snapshot(&server, &admin_token, &ids).await;

    let listed = server.api(&auditor).audit("").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        before.3.len()
    );
    let event = server.api(&auditor).audit_event(&ids.event_id).await;
    assert_eq!(event.status, 200, "{}", event.text);
    assert_eq!(event.body["eventId"], ids.event_id.as_str());

    for ((method, path, body), scope) in endpoints(&ids).into_iter().zip(REQUIRED) {
        if scope == "audit:read" {
            continue;
        }
        let what = format!("{method} {path}");
        let response = server.call(method, &path, Some(&auditor), body).await;
        assert_insufficient_scope(&response, scope, &what);
    }
    assert_eq!(
        snapshot(&server, &admin_token, &ids).await,
        before,
        "a refused call changed something"
    );
}

async fn a_token_with_no_management_scope_is_refused_everywhere(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (_, outsider) = server
        .agent_with_token(&admin_token, "outsider", &["weather:read", "agents:admin"])
        .await;
    let before = snapshot(&server, &admin_token, &ids).await;
    for ((method, path, body), scope) in endpoints(&ids).into_iter().zip(REQUIRED) {
        let what = format!("{method} {path}");
        let response = server.call(method, &path, Some(&outsider), body).await;
        assert_insufficient_scope(&response, scope, &what);
    }
    assert_eq!(
        snapshot(&server, &admin_token, &ids).await,
        before,
        "a refused call changed something"
    );
}

/// The `scope` attribute of an `insufficient_scope` challenge names scopes (RFC 6750 §3), if it
/// is there at all.
fn assert_challenge_names_only_scopes(response: &Response, what: &str) {
    let Some(challenge) = response.header("www-authenticate") else {
        return;
    };
    let Some((_, rest)) = challenge.split_once("scope=\"") else {
        return;
    };
    let value = rest.split('"').next().unwrap();
    for token in value.split(' ') {
        assert!(
            agentidp_core::domain::scope::MANAGEMENT_SCOPES.contains(&token),
            "{what}: the challenge's scope attribute holds {token:?}, not a scope: {challenge}"
        );
    }
}

async fn a_caller_cannot_grant_a_management_scope_it_lacks(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (_, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write"])
        .await;
    let before = snapshot(&server, &admin_token, &ids).await;

    for scopes in [
        json!(["audit:read"]),
        json!(["agents:write", "audit:read"]),
        json!(["weather:read", "audit:read"]),
    ] {
        let what = format!("create with {scopes}");
        let response = server
            .api(&writer)
            .create_agent(json!({"name": "escalated", "scopes": scopes}))
            .await;
        assert_eq!(response.status, 403, "{what}: {}", response.text);
        assert_eq!(
            response.code(),
            "INSUFFICIENT_SCOPE",
            "{what}: {}",
            response.text
        );
        assert!(
            response.body["message"]
                .as_str()
                .unwrap()
                .contains("audit:read"),
            "{what}: {}",
            response.text
        );

        let what = format!("patch to {scopes}");
        let response = server
            .api(&writer)
            .update_agent(&ids.agent_id, json!({"scopes": scopes}))
            .await;
        assert_eq!(response.status, 403, "{what}: {}", response.text);
        assert_eq!(
            response.code(),
            "INSUFFICIENT_SCOPE",
            "{what}: {}",
            response.text
        );
    }
    // Nothing was created or changed, and the refused name was not taken.
    assert_eq!(
        snapshot(&server, &admin_token, &ids).await,
        before,
        "a refused grant changed something"
    );

    // What the writer holds, and free-form scopes, it may grant.
    let granted = server
        .create_agent(&writer, "escalated", &["agents:write", "weather:read"])
        .await;
    let got = server.api(&writer).get_agent(&granted).await;
    assert_eq!(got.body["scopes"], json!(["agents:write", "weather:read"]));
    // The admin holds audit:read, so it may grant it.
    let audited = server
        .create_agent(&admin_token, "audited", &["audit:read"])
        .await;
    let patched = server
        .api(&admin_token)
        .update_agent(&audited, json!({"scopes": ["audit:read", "agents:write"]}))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
}

async fn a_refused_grant_names_only_real_scopes_in_its_challenge(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (_, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write"])
        .await;
    let response = server
        .api(&writer)
        .create_agent(json!({"name": "escalated", "scopes": ["audit:read"]}))
        .await;
    assert_eq!(response.status, 403, "{}", response.text);
    assert_challenge_names_only_scopes(&response, "create");
    assert!(
        response
            .header("www-authenticate")
            .unwrap()
            .contains(r#"scope="audit:read""#),
        "the challenge names the scope that cannot be granted: {:?}",
        response.header("www-authenticate")
    );
    let response = server
        .api(&writer)
        .update_agent(&ids.agent_id, json!({"scopes": ["audit:read"]}))
        .await;
    assert_eq!(response.status, 403, "{}", response.text);
    assert_challenge_names_only_scopes(&response, "patch");
}

async fn a_token_requested_with_fewer_scopes_is_held_to_them(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let agent = server
        .create_agent(
            &admin_token,
            "narrowed",
            &["agents:read", "agents:write", "audit:read"],
        )
        .await;
    let (_, client_id, secret) = server.create_credential(&admin_token, &agent).await;
    let response = server
        .token_request(&client_id, &secret, Some("agents:read"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["scope"], "agents:read");
    let reader = response.str("access_token");
    let before = snapshot(&server, &admin_token, &ids).await;
    for ((method, path, body), scope) in endpoints(&ids).into_iter().zip(REQUIRED) {
        let what = format!("{method} {path}");
        let response = server.call(method, &path, Some(&reader), body).await;
        if scope == "agents:read" {
            assert_eq!(response.status, 200, "{what}: {}", response.text);
        } else {
            assert_insufficient_scope(&response, scope, &what);
        }
    }
    assert_eq!(
        snapshot(&server, &admin_token, &ids).await,
        before,
        "a refused call changed something"
    );
}

async fn a_suspended_agents_token_cannot_call_the_management_api(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, admin_token, ids) = setup(&server).await;
    let (writer_id, writer) = server
        .agent_with_token(&admin_token, "writer", &["agents:write", "audit:read"])
        .await;
    let (as_admin, as_writer) = (server.api(&admin_token), server.api(&writer));
    let response = as_writer.list_agents("").await;
    assert_eq!(response.status, 200, "{}", response.text);

    let suspended = as_admin.suspend(&writer_id).await;
    assert_eq!(suspended.status, 200, "{}", suspended.text);
    let before = snapshot(&server, &admin_token, &ids).await;
    expect_401_everywhere(&server, &ids, Some(&writer), true).await;
    // It cannot reactivate itself.
    let response = as_writer.reactivate(&writer_id).await;
    assert_invalid_token(&response, "self-reactivation");
    assert_eq!(
        snapshot(&server, &admin_token, &ids).await,
        before,
        "a suspended agent's call changed something"
    );

    // Reactivated, its unexpired token is honoured again.
    let reactivated = as_admin.reactivate(&writer_id).await;
    assert_eq!(reactivated.status, 200, "{}", reactivated.text);
    let response = as_writer.list_agents("").await;
    assert_eq!(response.status, 200, "{}", response.text);

    // Decommissioned, never again.
    let gone = as_admin.delete_agent(&writer_id).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    expect_401_everywhere(&server, &ids, Some(&writer), true).await;
}

agentidp_testkit::per_store!(
    a_call_without_a_token_is_refused_with_a_bearer_challenge,
    a_garbage_token_is_refused_on_every_endpoint,
    an_expired_token_is_refused_on_every_endpoint,
    a_revoked_token_is_refused_on_every_endpoint,
    a_read_only_token_can_list_and_get_agents_and_nothing_else,
    agents_write_implies_agents_read_but_not_audit_read,
    audit_read_alone_opens_the_audit_trail_and_nothing_else,
    a_token_with_no_management_scope_is_refused_everywhere,
    a_caller_cannot_grant_a_management_scope_it_lacks,
    a_refused_grant_names_only_real_scopes_in_its_challenge,
    a_token_requested_with_fewer_scopes_is_held_to_them,
    a_suspended_agents_token_cannot_call_the_management_api,
);
