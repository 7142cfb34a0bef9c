//! The events of a resource's life: created, updated, deleted. Each is about no agent, and the
//! audit filter finds it by its action.

use std::sync::Arc;

use agentidp_core::store::Store;
use serde_json::{Value, json};

use super::{Expected, assert_event_snapshot, exactly_one_event, org, tick};
use crate::support::TestServer;

/// The events `action` filters to, which must hold `event`.
async fn assert_filtered_by_action(server: &TestServer, token: &str, action: &str, event: &Value) {
    let found = server
        .audit_events(token, &format!("&action={action}"))
        .await;
    assert_eq!(found, std::slice::from_ref(event), "action={action}");
}

async fn registering_a_resource_records_resource_created_with_its_identifier_and_scopes(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();

    let before = tick(&server, t).await;
    let response = server
        .api(t)
        .create_resource(json!({
            "identifier": "https://MCP.example.com/mcp",
            "name": "Weather MCP",
            "scopes": ["tools:call", "weather:read"],
        }))
        .await;
    assert_eq!(response.status, 201, "{}", response.text);
    let resource = response.str("resourceId");
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "resource.created",
            outcome: "success",
            actor: org.actor(),
            agent_id: None,
            resource: format!("resource/{resource}"),
        },
    )
    .await;
    assert_eq!(
        event["details"]["identifier"],
        "https://mcp.example.com/mcp"
    );
    assert_eq!(event["timestamp"], response.body["createdAt"], "{event}");
    assert_filtered_by_action(&server, t, "resource.created", &event).await;
    assert_event_snapshot(
        "resource_created",
        &org,
        &event,
        &[(&resource, "[resource]")],
    );
}

async fn changing_a_resource_records_resource_updated_with_the_changed_fields(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let resource = server
        .create_resource(t, "https://mcp.example.com/mcp", &["tools:call"])
        .await;

    let before = tick(&server, t).await;
    let response = server
        .api(t)
        .update_resource(
            &resource,
            json!({"identifier": "https://mcp.example.com/v2", "scopes": ["tools:list"]}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "resource.updated",
            outcome: "success",
            actor: org.actor(),
            agent_id: None,
            resource: format!("resource/{resource}"),
        },
    )
    .await;
    assert_eq!(
        event["details"]["changed"],
        json!(["identifier", "scopes"]),
        "{event}"
    );
    assert_filtered_by_action(&server, t, "resource.updated", &event).await;
    assert_event_snapshot(
        "resource_updated",
        &org,
        &event,
        &[(&resource, "[resource]")],
    );

    // A change to nothing records nothing.
    let before = tick(&server, t).await;
    let same = server
        .api(t)
        .update_resource(&resource, json!({"scopes": ["tools:list"]}))
        .await;
    assert_eq!(same.status, 200, "{}", same.text);
    assert_eq!(server.audit_events(t, "").await, before);
}

async fn deleting_a_resource_records_resource_deleted(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let resource = server
        .create_resource(t, "https://mcp.example.com/mcp", &["tools:call"])
        .await;

    let before = tick(&server, t).await;
    let response = server.api(t).delete_resource(&resource).await;
    assert_eq!(response.status, 204, "{}", response.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &response,
        Expected {
            action: "resource.deleted",
            outcome: "success",
            actor: org.actor(),
            agent_id: None,
            resource: format!("resource/{resource}"),
        },
    )
    .await;
    assert_filtered_by_action(&server, t, "resource.deleted", &event).await;
    assert_event_snapshot(
        "resource_deleted",
        &org,
        &event,
        &[(&resource, "[resource]")],
    );
}

agentidp_testkit::per_store!(
    registering_a_resource_records_resource_created_with_its_identifier_and_scopes,
    changing_a_resource_records_resource_updated_with_the_changed_fields,
    deleting_a_resource_records_resource_deleted,
);
