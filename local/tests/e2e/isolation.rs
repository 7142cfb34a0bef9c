//! Tenant isolation: one organization's ids, tokens and audit trail are invisible to another.
//! A foreign id is answered exactly as an id that does not exist.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Admin, TestServer};

/// One organization with an agent, a credential, tokens and some audit history.
struct Tenant {
    admin: Admin,
    org_id: String,
    admin_token: String,
    admin_agent_id: String,
    agent_id: String,
    credential_id: String,
    client_id: String,
    secret: String,
    agent_token: String,
    event_ids: Vec<String>,
}

async fn tenant(server: &TestServer, name: &str) -> Tenant {
    let admin = server.new_org(name).await;
    let admin_token = server.admin_token(&admin).await;
    let own = server.introspect(&admin_token, &admin_token).await;
    let admin_agent_id = own["sub"].as_str().unwrap().to_owned();
    let org_id = own["org_id"].as_str().unwrap().to_owned();
    // The same agent name in both organizations: names are unique per organization only.
    let agent_id = server
        .create_agent(&admin_token, "worker", &["weather:read"])
        .await;
    let patched = server
        .api(&admin_token)
        .update_agent(&agent_id, json!({"description": name}))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let (credential_id, client_id, secret) =
        server.create_credential(&admin_token, &agent_id).await;
    let agent_token = server.token(&client_id, &secret).await;
    // A denied token request too, so both outcomes are in the trail.
    let denied = server.token_request(&client_id, "wrong-secret", None).await;
    assert_eq!(denied.status, 401, "{}", denied.text);
    let event_ids = server
        .audit_events(&admin_token, "")
        .await
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect();
    Tenant {
        admin,
        org_id,
        admin_token,
        admin_agent_id,
        agent_id,
        credential_id,
        client_id,
        secret,
        agent_token,
        event_ids,
    }
}

fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Everything `t` can see of itself, to show the other tenant's calls changed nothing.
async fn view_of(server: &TestServer, t: &Tenant) -> (Value, Value, Value, Vec<Value>) {
    let api = server.api(&t.admin_token);
    let agents = api.list_agents("limit=100").await;
    let agent = api.get_agent(&t.agent_id).await;
    let credentials = api.list_credentials(&t.agent_id, "").await;
    assert_eq!(
        (agents.status, agent.status, credentials.status),
        (200, 200, 200)
    );
    let events = server.audit_events(&t.admin_token, "").await;
    (agents.body, agent.body, credentials.body, events)
}

/// Calls `path_for(foreign)` and `path_for(random)` as `token`; both must answer the same status
/// and the same body.
async fn assert_same_as_missing(
    server: &TestServer,
    token: &str,
    method: Method,
    foreign_path: &str,
    missing_path: &str,
    body: Option<Value>,
    (expected_status, expected_code): (u16, &str),
) {
    let foreign = server
        .call(method.clone(), foreign_path, Some(token), body.clone())
        .await;
    let missing = server
        .call(method.clone(), missing_path, Some(token), body)
        .await;
    assert_eq!(
        missing.status, expected_status,
        "{method} {missing_path}: {}",
        missing.text
    );
    assert_eq!(
        missing.code(),
        expected_code,
        "{method} {missing_path}: {}",
        missing.text
    );
    assert_eq!(
        foreign.status, missing.status,
        "{method} {foreign_path}: {}",
        foreign.text
    );
    assert_eq!(
        foreign.body, missing.body,
        "{method} {foreign_path}: the body tells a foreign id from a missing one"
    );
    assert_eq!(foreign.text, missing.text, "{method} {foreign_path}");
}

async fn another_organizations_ids_answer_as_ids_that_do_not_exist(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let a = tenant(&server, "org-a").await;
    let b = tenant(&server, "org-b").await;
    let b_before = view_of(&server, &b).await;
    let a_before = view_of(&server, &a).await;

    let token = &a.admin_token;
    let (foreign_agent, foreign_cred) = (&b.agent_id, &b.credential_id);
    let missing_agent = random_id();
    let missing_cred = random_id();

    // Agents.
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"description": "taken over"}))),
        (Method::PATCH, Some(json!({"status": "suspended"}))),
        (Method::DELETE, None),
    ] {
        assert_same_as_missing(
            &server,
            token,
            method,
            &format!("/api/v1/agents/{foreign_agent}"),
            &format!("/api/v1/agents/{missing_agent}"),
            body,
            (404, "AGENT_NOT_FOUND"),
        )
        .await;
    }
    // The other organization's bootstrap admin too.
    assert_same_as_missing(
        &server,
        token,
        Method::GET,
        &format!("/api/v1/agents/{}", b.admin_agent_id),
        &format!("/api/v1/agents/{missing_agent}"),
        None,
        (404, "AGENT_NOT_FOUND"),
    )
    .await;

    // Credentials under the foreign agent.
    for (method, suffix, body) in [
        (Method::POST, "/credentials".to_owned(), Some(json!({}))),
        (Method::GET, "/credentials".to_owned(), None),
        (
            Method::POST,
            format!("/credentials/{foreign_cred}/rotate"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/credentials/{foreign_cred}"), None),
    ] {
        let missing_suffix = suffix.replace(foreign_cred.as_str(), &missing_cred);
        assert_same_as_missing(
            &server,
            token,
            method,
            &format!("/api/v1/agents/{foreign_agent}{suffix}"),
            &format!("/api/v1/agents/{missing_agent}{missing_suffix}"),
            body,
            (404, "AGENT_NOT_FOUND"),
        )
        .await;
    }
    // A foreign credential under the caller's own agent.
    for (method, suffix, body) in [
        (Method::POST, "/rotate", Some(json!({}))),
        (Method::DELETE, "", None),
    ] {
        assert_same_as_missing(
            &server,
            token,
            method,
            &format!(
                "/api/v1/agents/{}/credentials/{foreign_cred}{suffix}",
                a.agent_id
            ),
            &format!(
                "/api/v1/agents/{}/credentials/{missing_cred}{suffix}",
                a.agent_id
            ),
            body,
            (404, "CREDENTIAL_NOT_FOUND"),
        )
        .await;
    }

    // Audit events, one by one and filtered by a foreign agent.
    for event_id in &b.event_ids {
        assert_same_as_missing(
            &server,
            token,
            Method::GET,
            &format!("/api/v1/audit/{event_id}"),
            &format!("/api/v1/audit/{}", random_id()),
            None,
            (404, "AUDIT_EVENT_NOT_FOUND"),
        )
        .await;
    }
    assert_same_as_missing(
        &server,
        token,
        Method::GET,
        &format!("/api/v1/audit?agentId={foreign_agent}"),
        &format!("/api/v1/audit?agentId={missing_agent}"),
        None,
        (200, ""),
    )
    .await;
    let filtered = server
        .api(token)
        .audit(&format!("agentId={foreign_agent}"))
        .await;
    assert_eq!(filtered.body["data"], json!([]), "{}", filtered.text);
    assert_eq!(
        filtered.body["nextCursor"],
        Value::Null,
        "{}",
        filtered.text
    );

    // B is exactly as it was, and its credential still works with its own secret.
    assert_eq!(
        view_of(&server, &b).await,
        b_before,
        "org A's calls changed org B"
    );
    let still = server.token_request(&b.client_id, &b.secret, None).await;
    assert_eq!(still.status, 200, "{}", still.text);
    // A recorded nothing for those refused calls either.
    assert_eq!(
        view_of(&server, &a).await,
        a_before,
        "refused calls left a trace in org A"
    );
}

async fn a_token_of_one_organization_is_inactive_for_another(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let a = tenant(&server, "org-a").await;
    let b = tenant(&server, "org-b").await;

    for foreign in [&b.agent_token, &b.admin_token] {
        // With A's bearer token, and with A's client credentials.
        assert_eq!(
            server.introspect(&a.admin_token, foreign).await,
            json!({"active": false})
        );
        let by_client = server
            .api_as_client(&a.client_id, &a.secret)
            .introspect(foreign)
            .await;
        assert_eq!(by_client.status, 200, "{}", by_client.text);
        assert_eq!(by_client.body, json!({"active": false}));
        // The body is exactly that of a token that does not exist.
        assert_eq!(
            server.introspect(&a.admin_token, "no-such-token").await,
            json!({"active": false})
        );
    }
    // Each organization sees its own tokens as active.
    assert_eq!(
        server.introspect(&b.admin_token, &b.agent_token).await["active"],
        true
    );
    assert_eq!(
        server.introspect(&a.admin_token, &a.agent_token).await["active"],
        true
    );
    let own = server.introspect(&b.admin_token, &b.agent_token).await;
    assert_eq!(own["org_id"], b.org_id.as_str());

    // A's token does not open B's management API for A either way round.
    let response = server.api(&b.admin_token).get_agent(&a.agent_id).await;
    assert_eq!(response.status, 404, "{}", response.text);
}

async fn an_organization_cannot_revoke_another_organizations_token(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let a = tenant(&server, "org-a").await;
    let b = tenant(&server, "org-b").await;
    let a_before = view_of(&server, &a).await;
    let b_before = view_of(&server, &b).await;

    for foreign in [&b.agent_token, &b.admin_token] {
        // By bearer token (RFC 7009 answers 200 whatever the token) ...
        let response = server.api(&a.admin_token).revoke_token(foreign).await;
        assert_eq!(response.status, 200, "{}", response.text);
        assert_eq!(response.body, json!({}));
        // ... and by client credentials.
        let response = server
            .api_as_client(&a.client_id, &a.secret)
            .revoke_token(foreign)
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
        assert_eq!(response.body, json!({}));
    }

    // B's tokens are still active for B and still open B's API.
    assert_eq!(
        server.introspect(&b.admin_token, &b.agent_token).await["active"],
        true
    );
    assert_eq!(
        server.introspect(&b.admin_token, &b.admin_token).await["active"],
        true
    );
    let response = server.api(&b.admin_token).list_agents("").await;
    assert_eq!(response.status, 200, "{}", response.text);
    // Neither trail records a revocation.
    assert_eq!(
        view_of(&server, &b).await,
        b_before,
        "org A's revocation attempts changed org B"
    );
    assert_eq!(
        view_of(&server, &a).await,
        a_before,
        "org A's no-op revocations left a trace"
    );
}

/// Every id of `t` that must never appear in another organization's responses.
fn ids_of(t: &Tenant) -> Vec<String> {
    let mut ids = vec![
        t.org_id.clone(),
        t.admin.client_id.clone(),
        t.admin_agent_id.clone(),
        t.agent_id.clone(),
        t.credential_id.clone(),
        t.client_id.clone(),
    ];
    ids.extend(t.event_ids.iter().cloned());
    ids
}

async fn listings_and_audit_never_show_another_organizations_data(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let a = tenant(&server, "org-a").await;
    let b = tenant(&server, "org-b").await;

    for (me, other) in [(&a, &b), (&b, &a)] {
        let api = server.api(&me.admin_token);
        let agents = api.list_agents("limit=100").await;
        assert_eq!(agents.status, 200, "{}", agents.text);
        let mut listed: Vec<&str> = agents.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agentId"].as_str().unwrap())
            .collect();
        listed.sort_unstable();
        let mut own = vec![me.admin_agent_id.as_str(), me.agent_id.as_str()];
        own.sort_unstable();
        assert_eq!(listed, own, "{}", agents.text);
        assert_eq!(agents.body["total"], 2);
        // Filtered listings too.
        for status in ["active", "suspended", "decommissioned"] {
            let filtered = api.list_agents(&format!("status={status}")).await;
            assert_eq!(filtered.status, 200, "{}", filtered.text);
            for id in ids_of(other) {
                assert!(
                    !filtered.text.contains(&id),
                    "status={status} shows {id}: {}",
                    filtered.text
                );
            }
        }

        let credentials = api.list_credentials(&me.agent_id, "").await;
        assert_eq!(credentials.body["total"], 1, "{}", credentials.text);
        assert_eq!(
            credentials.body["data"][0]["credentialId"],
            me.credential_id.as_str()
        );

        let events = server.audit_events(&me.admin_token, "").await;
        assert!(!events.is_empty());
        let text = serde_json::to_string(&events).unwrap();
        for id in ids_of(other) {
            assert!(
                !text.contains(&id),
                "the audit trail shows the other organization's {id}: {text}"
            );
        }
        // Every event is about this organization's own agents and actors.
        let own_agents = [me.admin_agent_id.as_str(), me.agent_id.as_str()];
        let own_clients = [me.admin.client_id.as_str(), me.client_id.as_str()];
        for event in &events {
            if let Some(agent) = event["agentId"].as_str() {
                assert!(own_agents.contains(&agent), "{event}");
            }
            if let Some(client) = event["actor"]["clientId"].as_str() {
                assert!(own_clients.contains(&client), "{event}");
            }
        }
        // Filters cannot reach across either.
        for query in [
            "&action=token.issued",
            "&action=token.denied",
            "&outcome=failure",
            "&action=agent.created",
        ] {
            let filtered = server.audit_events(&me.admin_token, query).await;
            let text = serde_json::to_string(&filtered).unwrap();
            for id in ids_of(other) {
                assert!(
                    !text.contains(&id),
                    "{query} shows the other organization's {id}"
                );
            }
        }
        // Each organization sees exactly its own events, by id.
        let mut seen: Vec<String> = events
            .iter()
            .map(|e| e["eventId"].as_str().unwrap().to_owned())
            .collect();
        seen.sort_unstable();
        let mut expected = me.event_ids.clone();
        expected.sort_unstable();
        assert!(
            expected.iter().all(|id| seen.contains(id)),
            "own events are missing"
        );
        for id in &other.event_ids {
            assert!(!seen.contains(id));
        }
    }
}

async fn another_organizations_agent_name_is_free_and_its_changes_stay_there(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let a = tenant(&server, "org-a").await;
    let b = tenant(&server, "org-b").await;
    // B decommissions its "worker"; A's "worker" is untouched and its tokens still work.
    let gone = server.api(&b.admin_token).delete_agent(&b.agent_id).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    let got = server.api(&a.admin_token).get_agent(&a.agent_id).await;
    assert_eq!(got.body["status"], "active", "{}", got.text);
    assert_eq!(
        server.introspect(&a.admin_token, &a.agent_token).await["active"],
        true
    );
    // Creating a "worker" in B again does not clash with A's.
    let again = server.create_agent(&b.admin_token, "worker", &[]).await;
    assert_ne!(again, a.agent_id);
    // A still cannot create a second "worker" of its own.
    let clash = server
        .api(&a.admin_token)
        .create_agent(json!({"name": "worker", "scopes": []}))
        .await;
    assert_eq!(clash.status, 409, "{}", clash.text);
    assert_eq!(clash.code(), "AGENT_NAME_TAKEN");
}

/// An organization's resources as its admin sees them: the listing, one resource, the trail.
async fn resources_view(
    server: &TestServer,
    token: &str,
    resource_id: &str,
) -> (Value, Value, Vec<Value>) {
    let api = server.api(token);
    (
        api.list_resources("").await.body,
        api.get_resource(resource_id).await.body,
        server.audit_events(token, "").await,
    )
}

async fn another_organizations_resources_answer_as_missing_and_are_never_listed(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let a = server.new_org("org-a").await;
    let b = server.new_org("org-b").await;
    let a_token = server.admin_token(&a).await;
    let b_token = server.admin_token(&b).await;
    // The same identifier in both: identifiers are unique per organization only.
    let identifier = "https://shared.example.com/mcp";
    let own = server
        .create_resource(&a_token, identifier, &["tools:call"])
        .await;
    let foreign = server
        .create_resource(&b_token, identifier, &["tools:list"])
        .await;
    let b_before = resources_view(&server, &b_token, &foreign).await;

    let foreign_path = format!("/api/v1/resources/{foreign}");
    let missing_path = format!("/api/v1/resources/{}", random_id());
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "taken over"}))),
        (
            Method::PATCH,
            Some(json!({"identifier": "https://elsewhere.example.com/"})),
        ),
        (Method::DELETE, None),
    ] {
        assert_same_as_missing(
            &server,
            &a_token,
            method,
            &foreign_path,
            &missing_path,
            body,
            (404, "RESOURCE_NOT_FOUND"),
        )
        .await;
    }
    let listed = server.api(&a_token).list_resources("limit=100").await;
    assert_eq!(listed.body["total"], 1, "{}", listed.text);
    assert_eq!(listed.body["data"][0]["resourceId"], own.as_str());
    assert_eq!(
        resources_view(&server, &b_token, &foreign).await,
        b_before,
        "A's calls changed B's resources"
    );
    // A's own changes and deletion leave B's resource of the same identifier alone.
    let api = server.api(&a_token);
    assert_eq!(
        api.update_resource(&own, json!({"scopes": []}))
            .await
            .status,
        200
    );
    assert_eq!(api.delete_resource(&own).await.status, 204);
    assert_eq!(
        server.api(&b_token).get_resource(&foreign).await.body,
        b_before.1
    );
}

agentidp_testkit::per_store!(
    another_organizations_ids_answer_as_ids_that_do_not_exist,
    a_token_of_one_organization_is_inactive_for_another,
    an_organization_cannot_revoke_another_organizations_token,
    listings_and_audit_never_show_another_organizations_data,
    another_organizations_agent_name_is_free_and_its_changes_stay_there,
    another_organizations_resources_answer_as_missing_and_are_never_listed,
);
