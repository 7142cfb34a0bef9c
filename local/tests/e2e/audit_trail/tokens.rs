//! The events of tokens: issued, denied (with why), revoked.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::json;

use super::{Expected, client_actor, exactly_one_event, jti_of, org, tick};
use crate::support::TestServer;

/// The actor is the client, the subject the agent, the resource the token's jti.
async fn issuing_a_token_records_token_issued_by_the_client_for_its_jti(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (_, client_id, secret) = server.create_credential(t, &agent).await;

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
}

async fn a_wrong_secret_records_token_denied_as_invalid_client_secret(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (credential, client_id, _) = server.create_credential(t, &agent).await;

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
}

/// The revoking caller is the actor, the token's agent the subject.
async fn revoking_a_token_records_token_revoked_once_and_revoking_it_again_records_nothing(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (_, client_id, secret) = server.create_credential(t, &agent).await;
    let access_token = server.token(&client_id, &secret).await;
    let jti = jti_of(&server, t, &access_token).await;

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

agentidp_testkit::per_store!(
    issuing_a_token_records_token_issued_by_the_client_for_its_jti,
    a_wrong_secret_records_token_denied_as_invalid_client_secret,
    revoking_a_token_records_token_revoked_once_and_revoking_it_again_records_nothing,
    token_denials_record_why,
);
