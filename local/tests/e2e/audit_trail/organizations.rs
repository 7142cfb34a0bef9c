//! The events of an operator's actions through `agentidp-admin`: an organization created with
//! its bootstrap admin credential, its plan changed.

use std::sync::Arc;

use agentidp_core::domain::Plan;
use agentidp_core::store::Store;
use serde_json::Value;

use super::{assert_event_snapshot, org};
use crate::support::TestServer;

/// The one event of `events` with `action`.
fn only<'a>(events: &'a [Value], action: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["action"] == action).collect();
    assert_eq!(found.len(), 1, "{action}: {events:#?}");
    found[0]
}

async fn creating_an_organization_records_organization_created_and_its_bootstrap_credential(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let events = server.audit_events(&org.token, "").await;
    // One commit writes the first two; the admin's first token writes the third.
    let mut actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        [
            "credential.generated",
            "organization.created",
            "token.issued"
        ]
    );
    assert_event_snapshot(
        "organization_created",
        &org,
        only(&events, "organization.created"),
        &[],
    );
    assert_event_snapshot(
        "credential_generated_bootstrap",
        &org,
        only(&events, "credential.generated"),
        &[],
    );
}

async fn changing_the_plan_records_organization_plan_changed(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    server
        .idp
        .set_plan(org.admin.org_id.parse().unwrap(), Plan::Enterprise)
        .await
        .unwrap();
    let events = server
        .audit_events(&org.token, "&action=organization.plan_changed")
        .await;
    assert_event_snapshot(
        "organization_plan_changed",
        &org,
        only(&events, "organization.plan_changed"),
        &[],
    );
}

agentidp_testkit::per_store!(
    creating_an_organization_records_organization_created_and_its_bootstrap_credential,
    changing_the_plan_records_organization_plan_changed,
);
