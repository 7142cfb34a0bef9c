//! The events of a credential's life: generated, rotated, revoked.

use std::sync::Arc;

use agentidp_core::store::Store;
use serde_json::json;

use super::{Expected, assert_event_snapshot, exactly_one_event, org, tick};
use crate::support::TestServer;

async fn generating_a_credential_records_credential_generated_with_its_client_id(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;

    let before = tick(&server, t).await;
    let response = server.api(t).generate_credential(&agent, json!({})).await;
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
    assert_event_snapshot(
        "credential_generated",
        &org,
        &event,
        &[
            (&agent, "[agent]"),
            (&credential, "[credential]"),
            (&client_id, "[client]"),
        ],
    );
}

async fn rotating_a_credential_records_credential_rotated_with_its_client_id(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (credential, client_id, _) = server.create_credential(t, &agent).await;

    let before = tick(&server, t).await;
    let response = server.api(t).rotate(&agent, &credential).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert!(
        response.body["clientSecret"].is_string(),
        "{}",
        response.text
    );
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
    assert_event_snapshot(
        "credential_rotated",
        &org,
        &event,
        &[
            (&agent, "[agent]"),
            (&credential, "[credential]"),
            (&client_id, "[client]"),
        ],
    );
}

async fn revoking_a_credential_records_credential_revoked(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let (credential, client_id, _) = server.create_credential(t, &agent).await;

    let before = tick(&server, t).await;
    let response = server.api(t).revoke_credential(&agent, &credential).await;
    assert_eq!(response.status, 204, "{}", response.text);
    let event = exactly_one_event(
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
    assert_event_snapshot(
        "credential_revoked",
        &org,
        &event,
        &[
            (&agent, "[agent]"),
            (&credential, "[credential]"),
            (&client_id, "[client]"),
        ],
    );
}

agentidp_testkit::per_store!(
    generating_a_credential_records_credential_generated_with_its_client_id,
    rotating_a_credential_records_credential_rotated_with_its_client_id,
    revoking_a_credential_records_credential_revoked,
);
