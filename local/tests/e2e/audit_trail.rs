//! Audit completeness: each state change leaves exactly its one event, reads leave none, the
//! filters and cursors work, retention ends visibility, and no secret or token is ever recorded.

use std::sync::Arc;

use agentidp_core::domain::time::format_timestamp;
use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Admin, Response, TestServer};

struct Org {
    admin: Admin,
    token: String,
    /// The bootstrap admin agent: the actor of every management call here.
    agent_id: String,
}

async fn org(server: &TestServer, name: &str) -> Org {
    let admin = server.new_org(name).await;
    let token = server.admin_token(&admin).await;
    let agent_id = server.introspect(&token, &token).await["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    Org {
        admin,
        token,
        agent_id,
    }
}

impl Org {
    fn actor(&self) -> Value {
        json!({"type": "agent", "agentId": self.agent_id, "clientId": self.admin.client_id})
    }
}

fn client_actor(client_id: &str) -> Value {
    json!({"type": "client", "agentId": null, "clientId": client_id})
}

/// The events of `after` that are not in `before`; every event of `before` must still be there,
/// unchanged.
fn new_events(before: &[Value], after: &[Value]) -> Vec<Value> {
    for event in before {
        assert!(
            after.contains(event),
            "an earlier event changed or vanished: {event}"
        );
    }
    after
        .iter()
        .filter(|e| !before.contains(e))
        .cloned()
        .collect()
}

/// What the one event of a step must say.
struct Expected<'a> {
    action: &'a str,
    outcome: &'a str,
    actor: Value,
    agent_id: Option<&'a str>,
    resource: String,
}

/// The one event a step wrote since `before`, checked against `expected`, against the response
/// that caused it (its request id), and against `GET /api/v1/audit/{eventId}`.
async fn exactly_one_event(
    server: &TestServer,
    token: &str,
    before: &[Value],
    response: &Response,
    expected: Expected<'_>,
) -> Value {
    let after = server.audit_events(token, "").await;
    let written = new_events(before, &after);
    assert_eq!(
        written.len(),
        1,
        "{} wrote {} events: {written:#?}",
        expected.action,
        written.len()
    );
    let event = written.into_iter().next().unwrap();
    let what = format!("{}: {event:#}", expected.action);
    assert_eq!(event["action"], expected.action, "{what}");
    assert_eq!(event["outcome"], expected.outcome, "{what}");
    assert_eq!(event["actor"], expected.actor, "{what}");
    assert_eq!(
        event["agentId"],
        expected.agent_id.map_or(Value::Null, |id| json!(id)),
        "{what}"
    );
    assert_eq!(event["resource"], expected.resource, "{what}");
    assert_eq!(
        event["timestamp"],
        format_timestamp(&server.idp.now()),
        "{what}"
    );
    assert_eq!(event["sourceIp"], "127.0.0.1", "{what}");
    assert!(event["details"].is_object(), "{what}");
    // The event names the request that caused it.
    let request_id = response.header("x-request-id").expect("X-Request-Id");
    assert_eq!(event["requestId"], request_id, "{what}");
    // And it can be fetched on its own, identical.
    let id = event["eventId"].as_str().unwrap();
    let fetched = server
        .call(
            Method::GET,
            &format!("/api/v1/audit/{id}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(fetched.status, 200, "{}", fetched.text);
    assert_eq!(fetched.body, event);
    event
}

/// Moves the clock one second on, so each step has its own instant, and returns the trail so far.
async fn tick(server: &TestServer, token: &str) -> Vec<Value> {
    server.clock.advance(chrono::Duration::seconds(1));
    server.audit_events(token, "").await
}

async fn jti_of(server: &TestServer, caller: &str, token: &str) -> String {
    server.introspect(caller, token).await["jti"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn each_state_change_leaves_exactly_its_one_event(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();

    // agent.created
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(t),
            Some(json!({"name": "subject", "scopes": ["weather:read", "weather:write"]})),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text);
    let agent = response.str("agentId");
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "agent.created",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("agent/{agent}"),
        },
    )
    .await;
    assert_eq!(event["details"]["name"], "subject");
    assert_eq!(event["timestamp"], response.body["createdAt"], "{event}");
    assert_eq!(
        event["details"]["scopes"],
        json!(["weather:read", "weather:write"])
    );

    // agent.updated
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            Some(json!({"description": "now described"})),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "agent.updated",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("agent/{agent}"),
        },
    )
    .await;
    assert_eq!(
        event["details"]["changed"],
        json!(["description"]),
        "{event}"
    );

    // agent.suspended
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "agent.suspended",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("agent/{agent}"),
        },
    )
    .await;

    // agent.reactivated
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "agent.reactivated",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("agent/{agent}"),
        },
    )
    .await;

    // credential.generated
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/credentials"),
            Some(t),
            Some(json!({})),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text);
    let (credential, client_id) = (response.str("credentialId"), response.str("clientId"));
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "credential.generated",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("credential/{credential}"),
        },
    )
    .await;
    assert_eq!(event["details"]["clientId"], client_id.as_str());
    assert_eq!(event["timestamp"], response.body["createdAt"], "{event}");

    // credential.rotated
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/credentials/{credential}/rotate"),
            Some(t),
            Some(json!({})),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let secret = response.str("clientSecret");
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "credential.rotated",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("credential/{credential}"),
        },
    )
    .await;
    assert_eq!(event["details"]["clientId"], client_id.as_str());

    // token.issued: the actor is the client, the subject the agent, the resource the token's jti.
    let before = tick(&server, t).await;
    let response = server
        .token_request(&client_id, &secret, Some("weather:read"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let access_token = response.str("access_token");
    let jti = jti_of(&server, t, &access_token).await;
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "token.issued",
            outcome: "success",
            actor: client_actor(&client_id),
            agent_id: Some(&agent),
            resource: format!("token/{jti}"),
        },
    )
    .await;
    assert_eq!(event["details"]["scope"], "weather:read", "{event}");

    // token.denied, with its reason.
    let before = tick(&server, t).await;
    let response = server
        .token_request(&client_id, "sk_not_the_secret", None)
        .await;
    assert_eq!(response.status, 401, "{}", response.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "token.denied",
            outcome: "failure",
            actor: client_actor(&client_id),
            agent_id: Some(&agent),
            resource: format!("credential/{credential}"),
        },
    )
    .await;
    assert_eq!(
        event["details"]["reason"], "invalid_client_secret",
        "{event}"
    );

    // token.revoked: the revoking caller is the actor, the token's agent the subject.
    let before = tick(&server, t).await;
    let response = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/revoke")
                .bearer_auth(t)
                .form(&[("token", access_token.as_str())]),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "token.revoked",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("token/{jti}"),
        },
    )
    .await;
    // Revoking it again changes nothing and records nothing.
    let before = tick(&server, t).await;
    let response = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/revoke")
                .bearer_auth(t)
                .form(&[("token", access_token.as_str())]),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(server.audit_events(t, "").await, before);

    // credential.revoked
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{agent}/credentials/{credential}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(response.status, 204, "{}", response.text);
    exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "credential.revoked",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("credential/{credential}"),
        },
    )
    .await;

    // agent.decommissioned: one event, even though it revokes the agent's credentials too.
    let (second, _, _) = server.create_credential(t, &agent).await;
    let before = tick(&server, t).await;
    let response = server
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(response.status, 204, "{}", response.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "agent.decommissioned",
            outcome: "success",
            actor: org.actor(),
            agent_id: Some(&agent),
            resource: format!("agent/{agent}"),
        },
    )
    .await;
    assert_eq!(
        event["details"]["revokedCredentialIds"],
        json!([second]),
        "{event}"
    );
}

async fn token_denials_record_why(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "denials").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (credential, client_id, secret) = server.create_credential(t, &agent).await;
    let resource = format!("credential/{credential}");

    // A scope the agent does not hold.
    let before = tick(&server, t).await;
    let response = server
        .token_request(&client_id, &secret, Some("weather:read payroll:write"))
        .await;
    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(response.oauth_error(), "invalid_scope");
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "token.denied",
            outcome: "failure",
            actor: client_actor(&client_id),
            agent_id: Some(&agent),
            resource: resource.clone(),
        },
    )
    .await;
    assert_eq!(event["details"]["reason"], "scope_not_allowed", "{event}");
    assert!(
        event["details"]["requestedScope"]
            .as_str()
            .unwrap()
            .contains("payroll:write"),
        "{event}"
    );

    // A suspended agent.
    let suspended = server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(suspended.status, 200);
    let before = tick(&server, t).await;
    let response = server.token_request(&client_id, &secret, None).await;
    assert_eq!(response.status, 401, "{}", response.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "token.denied",
            outcome: "failure",
            actor: client_actor(&client_id),
            agent_id: Some(&agent),
            resource: resource.clone(),
        },
    )
    .await;
    assert_eq!(event["details"]["reason"], "agent_not_active", "{event}");

    // A revoked credential.
    let reactivated = server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(reactivated.status, 200);
    let revoked = server
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{agent}/credentials/{credential}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    let before = tick(&server, t).await;
    let response = server.token_request(&client_id, &secret, None).await;
    assert_eq!(response.status, 401, "{}", response.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "token.denied",
            outcome: "failure",
            actor: client_actor(&client_id),
            agent_id: Some(&agent),
            resource: resource.clone(),
        },
    )
    .await;
    assert_eq!(event["details"]["reason"], "credential_revoked", "{event}");

    // An unknown client belongs to no organization: nothing is filed anywhere.
    let before = tick(&server, t).await;
    let response = server
        .token_request(&uuid::Uuid::new_v4().to_string(), "whatever", None)
        .await;
    assert_eq!(response.status, 401, "{}", response.text);
    assert_eq!(server.audit_events(t, "").await, before);
}

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
    ] {
        let response = server.call(Method::GET, &path, Some(t), None).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text);
    }
    // Introspection is a read too, by bearer token and by client credentials.
    assert_eq!(server.introspect(t, &agent_token).await["active"], true);
    let by_client = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/introspect")
                .basic_auth(&client_id, Some(&secret))
                .form(&[("token", agent_token.as_str())]),
        )
        .await;
    assert_eq!(by_client.body["active"], true, "{}", by_client.text);
    // A patch that changes nothing changes no state.
    let same = server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            Some(json!({"name": "subject"})),
        )
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
    let response = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/revoke")
                .bearer_auth(t)
                .form(&[("token", "not-a-token")]),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    // Revoking a revoked credential again is refused and records nothing new.
    let revoked = server
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{agent}/credentials/{credential}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    let after_revoke = server.audit_events(t, "").await;
    assert_eq!(new_events(&before, &after_revoke).len(), 1);
    let again = server
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{agent}/credentials/{credential}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(server.audit_events(t, "").await, after_revoke);
    let new: Vec<Value> = new_events(&before, &after_revoke);
    assert_eq!(new[0]["action"], "credential.revoked");
}

/// Each event of `all` the predicate keeps, in the same order.
fn keep(all: &[Value], predicate: impl Fn(&Value) -> bool) -> Vec<Value> {
    all.iter().filter(|e| predicate(e)).cloned().collect()
}

async fn the_filters_select_exactly_the_matching_events(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "filters").await;
    let t = org.token.as_str();
    let mut marks = Vec::new();
    let x = server.create_agent(t, "x", &["weather:read"]).await;
    server.clock.advance(chrono::Duration::seconds(10));
    let y = server.create_agent(t, "y", &["weather:read"]).await;
    for agent in [&x, &y] {
        server.clock.advance(chrono::Duration::seconds(10));
        marks.push(server.idp.now() - chrono::Duration::seconds(5));
        let (_, client_id, secret) = server.create_credential(t, agent).await;
        server.clock.advance(chrono::Duration::seconds(10));
        server.token(&client_id, &secret).await;
        server.clock.advance(chrono::Duration::seconds(10));
        assert_eq!(
            server.token_request(&client_id, "wrong", None).await.status,
            401
        );
        server.clock.advance(chrono::Duration::seconds(10));
        let patched = server
            .call(
                Method::PATCH,
                &format!("/api/v1/agents/{agent}"),
                Some(t),
                Some(json!({"owner": "ops"})),
            )
            .await;
        assert_eq!(patched.status, 200);
    }
    server.clock.advance(chrono::Duration::seconds(10));
    marks.push(server.idp.now() - chrono::Duration::seconds(5));
    let all = server.audit_events(t, "").await;
    assert!(all.len() >= 12, "{all:#?}");

    let at = |e: &Value| {
        agentidp_core::domain::time::parse_timestamp(e["timestamp"].as_str().unwrap()).unwrap()
    };
    let checks: Vec<(String, Vec<Value>)> = vec![
        (
            format!("&agentId={x}"),
            keep(&all, |e| e["agentId"] == x.as_str()),
        ),
        (
            format!("&agentId={y}"),
            keep(&all, |e| e["agentId"] == y.as_str()),
        ),
        (
            "&action=token.issued".into(),
            keep(&all, |e| e["action"] == "token.issued"),
        ),
        (
            "&action=agent.updated".into(),
            keep(&all, |e| e["action"] == "agent.updated"),
        ),
        ("&action=token.revoked".into(), vec![]),
        (
            "&outcome=failure".into(),
            keep(&all, |e| e["outcome"] == "failure"),
        ),
        (
            "&outcome=success".into(),
            keep(&all, |e| e["outcome"] == "success"),
        ),
        (
            format!("&agentId={y}&action=token.denied&outcome=failure"),
            keep(&all, |e| {
                e["agentId"] == y.as_str() && e["action"] == "token.denied"
            }),
        ),
        (
            format!("&agentId={x}&outcome=success&action=token.denied"),
            vec![],
        ),
        (
            format!("&from={}", format_timestamp(&marks[1])),
            keep(&all, |e| at(e) >= marks[1]),
        ),
        (
            format!("&to={}", format_timestamp(&marks[1])),
            keep(&all, |e| at(e) <= marks[1]),
        ),
        (
            format!(
                "&from={}&to={}",
                format_timestamp(&marks[0]),
                format_timestamp(&marks[1])
            ),
            keep(&all, |e| at(e) >= marks[0] && at(e) <= marks[1]),
        ),
        (
            format!(
                "&from={}&to={}&action=token.issued",
                format_timestamp(&marks[0]),
                format_timestamp(&marks[1])
            ),
            keep(&all, |e| {
                at(e) >= marks[0] && at(e) <= marks[1] && e["action"] == "token.issued"
            }),
        ),
        (format!("&from={}", format_timestamp(&marks[2])), vec![]),
    ];
    for (query, expected) in checks {
        let got = server.audit_events(t, &query.replace('+', "%2B")).await;
        assert_eq!(got, expected, "{query}");
    }
    // The windows hold what the steps wrote: x's credential, token, denial and update.
    let window = keep(&all, |e| at(e) >= marks[0] && at(e) <= marks[1]);
    let actions: Vec<&str> = window
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "agent.updated",
            "token.denied",
            "token.issued",
            "credential.generated"
        ],
        "{window:#?}"
    );

    // Malformed filters are refused.
    for query in [
        "agentId=not-a-uuid",
        "action=agent.exploded",
        "outcome=maybe",
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
    ] {
        let response = server
            .call(
                Method::GET,
                &format!("/api/v1/audit?{query}"),
                Some(t),
                None,
            )
            .await;
        assert_eq!(response.status, 400, "{query}: {}", response.text);
        assert_eq!(
            response.code(),
            "VALIDATION_ERROR",
            "{query}: {}",
            response.text
        );
    }
    let backwards = format!(
        "/api/v1/audit?from={}&to={}",
        format_timestamp(&marks[1]).replace('+', "%2B"),
        format_timestamp(&marks[0]).replace('+', "%2B")
    );
    let response = server.call(Method::GET, &backwards, Some(t), None).await;
    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(response.code(), "VALIDATION_ERROR");
}

/// Follows `nextCursor` with `limit`, returning each page.
async fn pages(server: &TestServer, token: &str, query: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/audit?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let response = server.call(Method::GET, &path, Some(token), None).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text);
        assert_eq!(response.body["limit"], limit, "{}", response.text);
        let data = response.body["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit);
        pages.push(data);
        match response.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 100, "the cursors never end");
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect()
}

async fn cursor_pagination_yields_each_event_once_newest_first(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "pages").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &[]).await;
    let (_, client_id, _) = server.create_credential(t, &agent).await;
    // 25 updates; some share an instant, so ties on the timestamp must page correctly too. Three
    // failures in between, for the filters that select few events among many.
    for i in 0..25 {
        if i % 3 != 0 {
            server.clock.advance(chrono::Duration::seconds(1));
        }
        let response = server
            .call(
                Method::PATCH,
                &format!("/api/v1/agents/{agent}"),
                Some(t),
                Some(json!({"description": format!("v{i}")})),
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
        if i % 8 == 4 {
            assert_eq!(
                server.token_request(&client_id, "wrong", None).await.status,
                401
            );
        }
    }
    let all = server.audit_events(t, "&action=agent.updated").await;
    assert_eq!(all.len(), 25);

    let paged = pages(&server, t, "&action=agent.updated", 10).await;
    assert_eq!(paged.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let flat: Vec<Value> = paged.concat();
    assert_eq!(flat, all, "paging gives the same sequence as one page");
    let mut unique = ids(&flat);
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 25, "an event appeared twice");
    let stamps: Vec<&str> = flat
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {stamps:?}"
    );
    assert!(stamps[0] > stamps[24]);

    // An exact multiple of the page size ends without an empty page.
    let paged = pages(&server, t, "&action=agent.updated", 5).await;
    assert_eq!(
        paged.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 5, 5, 5, 5]
    );
    assert_eq!(paged.concat(), all);

    // Unfiltered, over everything the organization has.
    let everything = server.audit_events(t, "").await;
    let paged = pages(&server, t, "", 10).await;
    assert_eq!(paged.concat(), everything);
    assert_eq!(paged.len(), everything.len().div_ceil(10));

    // Filters that select a few events among many, or many of one agent, page the same way.
    for (query, limit, sizes) in [
        ("&outcome=failure".to_owned(), 1, vec![1, 1, 1]),
        (format!("&agentId={agent}&outcome=failure"), 2, vec![2, 1]),
        (
            format!("&agentId={agent}&action=token.denied"),
            2,
            vec![2, 1],
        ),
        (format!("&agentId={agent}"), 7, vec![7, 7, 7, 7, 2]),
    ] {
        let whole = server.audit_events(t, &query).await;
        let paged = pages(&server, t, &query, limit).await;
        assert_eq!(
            paged.iter().map(Vec::len).collect::<Vec<_>>(),
            sizes,
            "{query}"
        );
        assert_eq!(paged.concat(), whole, "{query}");
    }

    // Events written while paging do not disturb the pages already promised.
    let first = server
        .call(
            Method::GET,
            "/api/v1/audit?limit=10&action=agent.updated",
            Some(t),
            None,
        )
        .await;
    server.clock.advance(chrono::Duration::seconds(1));
    let response = server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            Some(json!({"description": "late"})),
        )
        .await;
    assert_eq!(response.status, 200);
    let cursor = first.str("nextCursor");
    let second = server
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit=10&action=agent.updated&cursor={cursor}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(second.body["data"].as_array().unwrap()[..], all[10..20]);
}

async fn a_cursor_from_another_organization_or_other_filters_is_refused(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let a = org(&server, "org-a").await;
    let b = org(&server, "org-b").await;
    for o in [&a, &b] {
        for i in 0..3 {
            server
                .create_agent(&o.token, &format!("agent-{i}"), &[])
                .await;
        }
    }
    let first = server
        .call(Method::GET, "/api/v1/audit?limit=2", Some(&a.token), None)
        .await;
    let cursor = first.str("nextCursor");
    let filtered = server
        .call(
            Method::GET,
            "/api/v1/audit?limit=1&action=agent.created",
            Some(&a.token),
            None,
        )
        .await;
    let filtered_cursor = filtered.str("nextCursor");

    let assert_refused = |response: &Response, what: &str| {
        assert_eq!(response.status, 400, "{what}: {}", response.text);
        assert_eq!(
            response.code(),
            "VALIDATION_ERROR",
            "{what}: {}",
            response.text
        );
        assert_eq!(
            response.body["details"][0]["field"], "cursor",
            "{what}: {}",
            response.text
        );
    };
    // Another organization.
    let response = server
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit=2&cursor={cursor}"),
            Some(&b.token),
            None,
        )
        .await;
    assert_refused(&response, "org B with org A's cursor");
    let response = server
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit=1&action=agent.created&cursor={filtered_cursor}"),
            Some(&b.token),
            None,
        )
        .await;
    assert_refused(&response, "org B with org A's filtered cursor");
    // Other filters.
    for query in [
        "&action=agent.created",
        "&outcome=success",
        &format!("&agentId={}", a.agent_id),
        "&from=2020-01-01T00:00:00Z",
    ] {
        let response = server
            .call(
                Method::GET,
                &format!("/api/v1/audit?limit=2{query}&cursor={cursor}"),
                Some(&a.token),
                None,
            )
            .await;
        assert_refused(&response, query);
    }
    let response = server
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit=1&cursor={filtered_cursor}"),
            Some(&a.token),
            None,
        )
        .await;
    assert_refused(&response, "a filtered cursor without its filter");
    let response = server
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit=1&action=agent.updated&cursor={filtered_cursor}"),
            Some(&a.token),
            None,
        )
        .await;
    assert_refused(&response, "a filtered cursor under another action");
    // Garbage.
    for garbage in ["x", "e30", "bm90IGpzb24", "%00"] {
        let response = server
            .call(
                Method::GET,
                &format!("/api/v1/audit?cursor={garbage}"),
                Some(&a.token),
                None,
            )
            .await;
        assert_refused(&response, garbage);
    }
    // With its own filters, in its own organization, the cursor works.
    let response = server
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit=2&cursor={cursor}"),
            Some(&a.token),
            None,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let response = server
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit=1&action=agent.created&cursor={filtered_cursor}"),
            Some(&a.token),
            None,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
}

async fn events_older_than_ninety_days_are_gone_from_list_and_get(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "retention").await;
    let agent = server
        .create_agent(&org.token, "old", &["weather:read"])
        .await;
    server.create_credential(&org.token, &agent).await;
    let old = server.audit_events(&org.token, "").await;
    assert!(old.len() >= 4, "{old:#?}");

    // Day 89: all still there.
    server.clock.advance(chrono::Duration::days(89));
    let token = server.admin_token(&org.admin).await;
    let listed = server.audit_events(&token, "").await;
    assert_eq!(
        new_events(&old, &listed).len(),
        1,
        "only the new token's event is new"
    );
    for event in &old {
        let id = event["eventId"].as_str().unwrap();
        let response = server
            .call(
                Method::GET,
                &format!("/api/v1/audit/{id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
    }
    let day_89 = new_events(&old, &listed);

    // Day 91: the old events are past retention, whatever the filters say.
    server.clock.advance(chrono::Duration::days(2));
    let token = server.admin_token(&org.admin).await;
    let listed = server.audit_events(&token, "").await;
    let old_ids = ids(&old);
    assert!(
        ids(&listed).iter().all(|id| !old_ids.contains(id)),
        "{listed:#?}"
    );
    assert_eq!(
        listed.len(),
        2,
        "the day-89 and day-91 token events remain: {listed:#?}"
    );
    assert!(listed.contains(&day_89[0]));
    for query in [
        format!("&agentId={agent}"),
        "&action=agent.created".to_owned(),
        "&from=2000-01-01T00:00:00Z".to_owned(),
        format!(
            "&to={}",
            format_timestamp(&(server.idp.now() - chrono::Duration::days(30)))
        ),
    ] {
        let filtered = server.audit_events(&token, &query).await;
        assert!(
            ids(&filtered).iter().all(|id| !old_ids.contains(id)),
            "{query}: {filtered:#?}"
        );
    }
    let missing = server
        .call(
            Method::GET,
            &format!("/api/v1/audit/{}", uuid::Uuid::new_v4()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
    for id in &old_ids {
        let response = server
            .call(
                Method::GET,
                &format!("/api/v1/audit/{id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(response.status, 404, "{}", response.text);
        assert_eq!(response.code(), "AUDIT_EVENT_NOT_FOUND");
        assert_eq!(
            response.body, missing.body,
            "an expired event is answered as a missing one"
        );
    }
}

async fn events_never_contain_a_secret_or_a_token(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "secrets").await;
    let t = org.token.as_str();
    let mut secrets = vec![org.admin.client_secret.clone()];
    let mut tokens = vec![org.token.clone()];

    let agent = server.create_agent(t, "holder", &["weather:read"]).await;
    let (credential, client_id, secret) = server.create_credential(t, &agent).await;
    secrets.push(secret.clone());
    tokens.push(server.token(&client_id, &secret).await);
    // client_secret_post too.
    let posted = server
        .send(server.request(Method::POST, "/api/v1/token").form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
        ]))
        .await;
    assert_eq!(posted.status, 200, "{}", posted.text);
    tokens.push(posted.str("access_token"));
    let rotated = server
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/credentials/{credential}/rotate"),
            Some(t),
            Some(json!({})),
        )
        .await;
    let new_secret = rotated.str("clientSecret");
    secrets.push(new_secret.clone());
    tokens.push(server.token(&client_id, &new_secret).await);
    // A wrong secret presented, the old secret presented, a revoked token.
    let wrong = format!("sk_wrong_{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        server.token_request(&client_id, &wrong, None).await.status,
        401
    );
    secrets.push(wrong);
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        401
    );
    let revoke = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/revoke")
                .bearer_auth(t)
                .form(&[("token", tokens[1].as_str())]),
        )
        .await;
    assert_eq!(revoke.status, 200);
    // Revocation by the client itself, with client_secret_post.
    let revoke = server
        .send(server.request(Method::POST, "/api/v1/token/revoke").form(&[
            ("token", tokens[2].as_str()),
            ("client_id", client_id.as_str()),
            ("client_secret", new_secret.as_str()),
        ]))
        .await;
    assert_eq!(revoke.status, 200, "{}", revoke.text);
    let (_, other_client, other_secret) = server.create_credential(t, &agent).await;
    secrets.push(other_secret.clone());
    tokens.push(server.token(&other_client, &other_secret).await);
    let gone = server
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{agent}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(gone.status, 204);

    let events = server.audit_events(t, "").await;
    assert!(events.iter().any(|e| e["action"] == "token.revoked"));
    let mut texts = vec![serde_json::to_string(&events).unwrap()];
    for id in ids(&events) {
        texts.push(
            server
                .call(Method::GET, &format!("/api/v1/audit/{id}"), Some(t), None)
                .await
                .text,
        );
    }
    for text in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "an event holds a client secret: {text}"
            );
        }
        for token in &tokens {
            assert!(
                !text.contains(token.as_str()),
                "an event holds an access token: {text}"
            );
            let signature = token.rsplit('.').next().unwrap();
            assert!(
                !text.contains(signature),
                "an event holds a token's signature: {text}"
            );
        }
        for hash_prefix in ["$2a$", "$2b$", "$2y$"] {
            assert!(
                !text.contains(hash_prefix),
                "an event holds a bcrypt hash: {text}"
            );
        }
    }
}

crate::per_store!(
    each_state_change_leaves_exactly_its_one_event,
    token_denials_record_why,
    reads_and_refused_calls_leave_no_event,
    the_filters_select_exactly_the_matching_events,
    cursor_pagination_yields_each_event_once_newest_first,
    a_cursor_from_another_organization_or_other_filters_is_refused,
    events_older_than_ninety_days_are_gone_from_list_and_get,
    events_never_contain_a_secret_or_a_token,
);
