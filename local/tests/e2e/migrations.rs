//! The migration that gives existing full admins the resource scopes, on both stores: an
//! organization as an older version left it is written straight into the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentidp_core::domain::{Agent, AgentStatus, Organization, Plan};
use agentidp_core::store::{Store, Write};
use serde_json::json;
use uuid::Uuid;

use crate::support::TestServer;

const OLD_ADMIN_SCOPES: [&str; 3] = ["agents:read", "agents:write", "audit:read"];

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Takes the resource scopes away from `agent_id` and from its credentials' copies, as an
/// organization created before resources has them.
async fn as_before_resources(server: &TestServer, org_id: &str, agent_id: &str) {
    let (org_id, agent_id): (Uuid, Uuid) = (org_id.parse().unwrap(), agent_id.parse().unwrap());
    let agent = server
        .store
        .get_agent(org_id, agent_id)
        .await
        .unwrap()
        .unwrap();
    let mut writes = vec![Write::PutAgent {
        agent: Agent {
            scopes: scopes(&OLD_ADMIN_SCOPES),
            version: agent.version + 1,
            ..agent.clone()
        },
        expected_version: Some(agent.version),
    }];
    for credential in server
        .store
        .list_credentials(org_id, agent_id)
        .await
        .unwrap()
    {
        let mut old = credential.clone();
        old.agent_scopes = scopes(&OLD_ADMIN_SCOPES);
        old.version += 1;
        writes.push(Write::PutCredential {
            credential: old,
            expected_version: Some(credential.version),
        });
    }
    server.store.commit(writes).await.unwrap();
}

async fn an_old_full_admin_is_given_the_resource_scopes_once_and_others_are_left_alone(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("older").await;
    as_before_resources(&server, &admin.org_id, &admin.agent_id).await;
    let token = server.admin_token(&admin).await;
    assert_eq!(
        server.introspect(&token, &token).await["scope"],
        "agents:read agents:write audit:read"
    );
    let refused = server.api(&token).list_resources("").await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    // Another full admin, a writer, and a decommissioned full admin.
    let other_admin = server
        .create_agent(
            &token,
            "second-admin",
            &["agents:read", "agents:write", "audit:read", "weather:read"],
        )
        .await;
    let writer = server
        .create_agent(&token, "writer", &["agents:write"])
        .await;
    let retired = server
        .create_agent(&token, "retired", &OLD_ADMIN_SCOPES)
        .await;
    assert_eq!(server.api(&token).delete_agent(&retired).await.status, 204);
    // An organization whose only agent is called bootstrap-admin but holds agents:write alone:
    // it is known by what it holds, never by its name.
    let impostor_org = Organization {
        org_id: Uuid::new_v4(),
        name: "named".into(),
        plan: Plan::Free,
        created_at: server.clock_now(),
    };
    let impostor = Agent {
        agent_id: Uuid::new_v4(),
        org_id: impostor_org.org_id,
        name: "bootstrap-admin".into(),
        description: None,
        owner: None,
        capabilities: Vec::new(),
        scopes: scopes(&["agents:write"]),
        metadata: BTreeMap::new(),
        status: AgentStatus::Active,
        created_at: server.clock_now(),
        updated_at: server.clock_now(),
        decommissioned_at: None,
        active_credentials: 0,
        delegation: None,
        tokens_not_before: None,
        require_dpop: false,
        version: 1,
    };
    server
        .store
        .commit(vec![
            Write::CreateOrg(impostor_org.clone()),
            Write::PutAgent {
                agent: impostor.clone(),
                expected_version: None,
            },
        ])
        .await
        .unwrap();
    server.clock.advance(chrono::Duration::seconds(1));
    let audit_before = server.audit_events(&token, "").await;

    let org_id: Uuid = admin.org_id.parse().unwrap();
    let mut granted = server
        .idp
        .grant_new_management_scopes(org_id)
        .await
        .unwrap();
    granted.sort_by(|a, b| a.name.cmp(&b.name));
    let summary: Vec<(String, String, Vec<String>)> = granted
        .iter()
        .map(|g| (g.agent_id.to_string(), g.name.clone(), g.added.clone()))
        .collect();
    let added = scopes(&["resources:read", "resources:write"]);
    assert_eq!(
        summary,
        [
            (
                admin.agent_id.clone(),
                "bootstrap-admin".to_owned(),
                added.clone()
            ),
            (
                other_admin.clone(),
                "second-admin".to_owned(),
                added.clone()
            ),
        ]
    );
    assert!(
        server
            .idp
            .grant_new_management_scopes(impostor_org.org_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        server
            .store
            .get_agent(impostor_org.org_id, impostor.agent_id)
            .await
            .unwrap(),
        Some(impostor)
    );

    // The admin's existing credential gets a token with the new scopes, which opens resources.
    let token = server.admin_token(&admin).await;
    assert_eq!(
        server.introspect(&token, &token).await["scope"],
        "agents:read agents:write audit:read resources:read resources:write"
    );
    let listed = server.api(&token).list_resources("").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let api = server.api(&token);
    assert_eq!(
        api.get_agent(&other_admin).await.body["scopes"],
        json!([
            "agents:read",
            "agents:write",
            "audit:read",
            "weather:read",
            "resources:read",
            "resources:write"
        ])
    );
    assert_eq!(
        api.get_agent(&writer).await.body["scopes"],
        json!(["agents:write"])
    );
    assert_eq!(
        api.get_agent(&retired).await.body["scopes"],
        json!(OLD_ADMIN_SCOPES)
    );

    // Each change is an agent.updated of the operator.
    let audit = server.audit_events(&token, "").await;
    let mut updates: Vec<_> = audit
        .iter()
        .filter(|e| !audit_before.contains(e) && e["action"] == "agent.updated")
        .collect();
    updates.sort_by_key(|e| e["agentId"].as_str().unwrap().to_owned());
    let mut expected_agents = vec![admin.agent_id.clone(), other_admin.clone()];
    expected_agents.sort();
    assert_eq!(
        updates
            .iter()
            .map(|e| e["agentId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        expected_agents
    );
    for event in &updates {
        assert_eq!(
            event["actor"],
            json!({"type": "operator", "agentId": null, "clientId": null})
        );
        assert_eq!(event["outcome"], "success");
        assert_eq!(
            event["details"],
            json!({"changed": ["scopes"], "status": "active", "addedScopes": added})
        );
    }

    // Run again: nothing left to do, nothing written.
    assert!(
        server
            .idp
            .grant_new_management_scopes(org_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(server.audit_events(&token, "").await, audit);
}

agentidp_testkit::per_store!(
    an_old_full_admin_is_given_the_resource_scopes_once_and_others_are_left_alone,
);
