//! The events of tokens: issued, denied (with why), revoked.

use std::sync::Arc;

use agentidp_core::store::Store;

use super::{Expected, assert_event_snapshot, client_actor, exactly_one_event, jti_of, org, tick};
use crate::support::TestServer;

/// The actor is the client, the subject the agent, the resource the token's jti.
async fn issuing_a_token_records_token_issued_by_the_client_for_its_jti(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (credential, client_id, secret) = server.create_credential(t, &agent).await;

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
    assert_event_snapshot(
        "token_issued",
        &org,
        &event,
        &[
            (&agent, "[agent]"),
            (&credential, "[credential]"),
            (&client_id, "[client]"),
            (&jti, "[jti]"),
        ],
    );
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
    assert_event_snapshot(
        "token_denied_invalid_client_secret",
        &org,
        &event,
        &[
            (&agent, "[agent]"),
            (&credential, "[credential]"),
            (&client_id, "[client]"),
        ],
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
    let (credential, client_id, secret) = server.create_credential(t, &agent).await;
    let access_token = server.token(&client_id, &secret).await;
    let jti = jti_of(&server, t, &access_token).await;

    let before = tick(&server, t).await;
    let response = server.api(t).revoke_token(&access_token).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let event = exactly_one_event(
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
    assert_event_snapshot(
        "token_revoked",
        &org,
        &event,
        &[
            (&agent, "[agent]"),
            (&credential, "[credential]"),
            (&client_id, "[client]"),
            (&jti, "[jti]"),
        ],
    );
    // Revoking it again changes nothing and records nothing.
    let before = tick(&server, t).await;
    let response = server.api(t).revoke_token(&access_token).await;
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
    let ids = [
        (agent.as_str(), "[agent]"),
        (credential.as_str(), "[credential]"),
        (client_id.as_str(), "[client]"),
    ];

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
    assert_event_snapshot("token_denied_scope_not_allowed", &org, &event, &ids);

    // A suspended agent.
    let suspended = server.api(t).suspend(&agent).await;
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
    assert_event_snapshot("token_denied_agent_not_active", &org, &event, &ids);

    // A revoked credential.
    let reactivated = server.api(t).reactivate(&agent).await;
    assert_eq!(reactivated.status, 200);
    let revoked = server.api(t).revoke_credential(&agent, &credential).await;
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
    assert_event_snapshot("token_denied_credential_revoked", &org, &event, &ids);

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
