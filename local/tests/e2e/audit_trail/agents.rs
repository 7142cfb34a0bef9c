//! The events of an agent's life: created, updated, suspended, reactivated, decommissioned.

use std::sync::Arc;

use agentidp_core::store::Store;
use serde_json::json;

use super::{Expected, assert_event_snapshot, exactly_one_event, org, tick};
use crate::support::TestServer;

async fn creating_an_agent_records_agent_created_with_its_name_and_scopes(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();

    let before = tick(&server, t).await;
    let response = server
        .api(t)
        .create_agent(json!({"name": "subject", "scopes": ["weather:read", "weather:write"]}))
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
    assert_event_snapshot("agent_created", &org, &event, &[(&agent, "[agent]")]);
}

async fn updating_an_agent_records_agent_updated_with_the_changed_fields(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;

    let before = tick(&server, t).await;
    let response = server
        .api(t)
        .update_agent(&agent, json!({"description": "now described"}))
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
    assert_event_snapshot("agent_updated", &org, &event, &[(&agent, "[agent]")]);
}

async fn suspending_an_agent_records_agent_suspended(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;

    let before = tick(&server, t).await;
    let response = server.api(t).suspend(&agent).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let event = exactly_one_event(
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
    assert_event_snapshot("agent_suspended", &org, &event, &[(&agent, "[agent]")]);
}

async fn reactivating_an_agent_records_agent_reactivated(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    let suspended = server.api(t).suspend(&agent).await;
    assert_eq!(suspended.status, 200, "{}", suspended.text);

    let before = tick(&server, t).await;
    let response = server.api(t).reactivate(&agent).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let event = exactly_one_event(
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
    assert_event_snapshot("agent_reactivated", &org, &event, &[(&agent, "[agent]")]);
}

/// One event, even though decommissioning revokes the agent's credentials too.
async fn decommissioning_an_agent_records_one_event_naming_the_credentials_it_revoked(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &["weather:read"]).await;
    // A credential revoked beforehand: the event names only those the decommissioning revoked.
    let (first, _, _) = server.create_credential(t, &agent).await;
    let revoked = server.api(t).revoke_credential(&agent, &first).await;
    assert_eq!(revoked.status, 204, "{}", revoked.text);
    let (second, _, _) = server.create_credential(t, &agent).await;

    let before = tick(&server, t).await;
    let response = server.api(t).delete_agent(&agent).await;
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
    assert_event_snapshot(
        "agent_decommissioned",
        &org,
        &event,
        &[(&agent, "[agent]"), (&second, "[credential]")],
    );
}

agentidp_testkit::per_store!(
    creating_an_agent_records_agent_created_with_its_name_and_scopes,
    updating_an_agent_records_agent_updated_with_the_changed_fields,
    suspending_an_agent_records_agent_suspended,
    reactivating_an_agent_records_agent_reactivated,
    decommissioning_an_agent_records_one_event_naming_the_credentials_it_revoked,
);
