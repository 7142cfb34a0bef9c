//! Resources (RFC 8707 audiences) through the API: their lifecycle, identifier rules, scopes,
//! the free plan's limit and races, on both stores.

use std::sync::Arc;

use agentidp_core::domain::Plan;
use agentidp_core::domain::ResourceTarget;
use agentidp_core::store::Store;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::support::{Response, TestServer};

fn assert_status(response: &Response, status: u16, code: &str) {
    assert_eq!(
        (response.status, response.code()),
        (status, code),
        "{}",
        response.text
    );
}

/// What the store's claim of `identifier` in `org_id` says: the token endpoint reads this.
async fn claim_of(server: &TestServer, org_id: &str, identifier: &str) -> Option<ResourceTarget> {
    server
        .store
        .resource_by_identifier(org_id.parse().unwrap(), identifier)
        .await
        .unwrap()
}

async fn a_resource_is_registered_read_listed_changed_and_deleted(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let api = server.api(&token);

    let created = api
        .create_resource(json!({
            "identifier": "HTTPS://MCP.Example.com/Weather/mcp",
            "name": "Weather MCP",
            "description": "Forecasts",
            "scopes": ["tools:call", "weather:read"],
        }))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.str("resourceId");
    // Scheme and host lowercased, the rest as given.
    let identifier = "https://mcp.example.com/Weather/mcp";
    let mut keys: Vec<&String> = created.body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "createdAt",
            "description",
            "identifier",
            "name",
            "resourceId",
            "scopes",
            "updatedAt"
        ]
    );
    assert_eq!(created.body["identifier"], identifier);
    assert_eq!(created.body["name"], "Weather MCP");
    assert_eq!(created.body["description"], "Forecasts");
    assert_eq!(
        created.body["scopes"],
        json!(["tools:call", "weather:read"])
    );
    assert_eq!(created.body["createdAt"], created.body["updatedAt"]);
    assert_eq!(api.get_resource(&id).await.body, created.body);
    assert_eq!(
        claim_of(&server, &admin.org_id, identifier).await,
        Some(ResourceTarget {
            org_id: admin.org_id.parse().unwrap(),
            resource_id: id.parse().unwrap(),
            identifier: identifier.into(),
            scopes: vec!["tools:call".into(), "weather:read".into()],
        })
    );

    // Listed like the agents: page and limit, oldest first.
    server.clock.advance(chrono::Duration::seconds(1));
    let second = server
        .create_resource(&token, "http://localhost:8000/mcp", &[])
        .await;
    let listed = api.list_resources("").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.body["total"], 2);
    assert_eq!(
        (&listed.body["page"], &listed.body["limit"]),
        (&json!(1), &json!(20))
    );
    assert_eq!(listed.body["data"][0], created.body);
    let page_two = api.list_resources("page=2&limit=1").await;
    assert_eq!(page_two.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(page_two.body["data"][0]["resourceId"], second.as_str());

    // A change: the new scopes reach the claim in the same commit.
    server.clock.advance(chrono::Duration::seconds(1));
    let changed = api
        .update_resource(&id, json!({"name": "Weather", "scopes": ["tools:list"]}))
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.body["name"], "Weather");
    assert_eq!(changed.body["scopes"], json!(["tools:list"]));
    assert_eq!(changed.body["createdAt"], created.body["createdAt"]);
    assert_ne!(changed.body["updatedAt"], created.body["updatedAt"]);
    assert_eq!(api.get_resource(&id).await.body, changed.body);
    assert_eq!(
        claim_of(&server, &admin.org_id, identifier)
            .await
            .map(|claim| claim.scopes),
        Some(vec!["tools:list".to_owned()])
    );
    // The same values again change nothing, not even the time.
    server.clock.advance(chrono::Duration::seconds(1));
    let unchanged = api
        .update_resource(&id, json!({"name": "Weather", "identifier": identifier}))
        .await;
    assert_eq!(unchanged.body, changed.body);
    let cleared = api.update_resource(&id, json!({"description": null})).await;
    assert_eq!(cleared.body["description"], Value::Null);

    // A new identifier moves the claim: the old one is free at once.
    let moved_to = "https://mcp.example.com/weather/v2";
    let moved = api
        .update_resource(&id, json!({"identifier": moved_to}))
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(moved.body["identifier"], moved_to);
    assert_eq!(claim_of(&server, &admin.org_id, identifier).await, None);
    assert!(claim_of(&server, &admin.org_id, moved_to).await.is_some());
    let reuse = server.create_resource(&token, identifier, &[]).await;

    // Deleted: gone, and its identifier free again.
    let deleted = api.delete_resource(&id).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(deleted.text, "");
    assert_status(&api.get_resource(&id).await, 404, "RESOURCE_NOT_FOUND");
    assert_status(&api.delete_resource(&id).await, 404, "RESOURCE_NOT_FOUND");
    assert_status(
        &api.update_resource(&id, json!({"name": "back"})).await,
        404,
        "RESOURCE_NOT_FOUND",
    );
    assert_eq!(claim_of(&server, &admin.org_id, moved_to).await, None);
    server.create_resource(&token, moved_to, &[]).await;
    let listed: Vec<Value> = api.list_resources("").await.body["data"]
        .as_array()
        .unwrap()
        .clone();
    let ids: Vec<&str> = listed
        .iter()
        .map(|r| r["resourceId"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&id.as_str()) && ids.contains(&reuse.as_str()));
    assert_eq!(ids.len(), 3);
}

async fn an_identifier_is_unique_in_its_organization_once_normalised(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let api = server.api(&token);
    let first = server
        .create_resource(&token, "https://api.example.com/x", &[])
        .await;

    let same = api
        .create_resource(json!({"identifier": "HTTPS://API.EXAMPLE.COM/x", "name": "again"}))
        .await;
    assert_status(&same, 409, "RESOURCE_IDENTIFIER_TAKEN");
    assert_eq!(
        same.body["details"],
        json!([{"field": "identifier", "message": "is already registered"}])
    );
    // Path case, a trailing slash and a default port written out make other URIs (RFC 3986).
    for other in [
        "https://api.example.com/X",
        "https://api.example.com/x/",
        "https://api.example.com:443/x",
    ] {
        server.create_resource(&token, other, &[]).await;
    }
    let second = server
        .create_resource(&token, "https://api.example.com/y", &[])
        .await;
    let before = api.list_resources("").await.body;
    let onto_first = api
        .update_resource(&second, json!({"identifier": "https://API.example.com/x"}))
        .await;
    assert_status(&onto_first, 409, "RESOURCE_IDENTIFIER_TAKEN");
    assert_eq!(api.list_resources("").await.body, before);
    assert_eq!(api.get_resource(&first).await.status, 200);
}

async fn resource_scopes_are_their_own_and_writing_implies_reading(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let admin_token = server.admin_token(&admin).await;
    let resource = server
        .create_resource(&admin_token, "https://mcp.example.com/", &["tools:call"])
        .await;
    let (_, agents_writer) = server
        .agent_with_token(
            &admin_token,
            "agents-writer",
            &["agents:write", "audit:read"],
        )
        .await;
    let (_, reader) = server
        .agent_with_token(&admin_token, "resources-reader", &["resources:read"])
        .await;
    let (_, writer) = server
        .agent_with_token(&admin_token, "resources-writer", &["resources:write"])
        .await;
    let before = server.api(&admin_token).list_resources("").await.body;
    let body = json!({"identifier": "https://other.example.com/", "name": "other"});

    let refused = |response: &Response, scope: &str| {
        assert_status(response, 403, "INSUFFICIENT_SCOPE");
        assert_eq!(
            response.header("www-authenticate"),
            Some(
                format!(r#"Bearer realm="agentidp", error="insufficient_scope", scope="{scope}""#)
                    .as_str()
            )
        );
    };
    // agents:write opens nothing of the resources.
    let api = server.api(&agents_writer);
    refused(&api.create_resource(body.clone()).await, "resources:write");
    refused(&api.list_resources("").await, "resources:read");
    refused(&api.get_resource(&resource).await, "resources:read");
    refused(
        &api.update_resource(&resource, json!({"name": "x"})).await,
        "resources:write",
    );
    refused(&api.delete_resource(&resource).await, "resources:write");
    // resources:read reads, and only that.
    let api = server.api(&reader);
    assert_eq!(api.list_resources("").await.body, before);
    assert_eq!(api.get_resource(&resource).await.status, 200);
    refused(&api.create_resource(body.clone()).await, "resources:write");
    refused(
        &api.update_resource(&resource, json!({"name": "x"})).await,
        "resources:write",
    );
    refused(&api.delete_resource(&resource).await, "resources:write");
    refused(&api.list_agents("").await, "agents:read");
    assert_eq!(
        server.api(&admin_token).list_resources("").await.body,
        before
    );
    // resources:write does everything to resources, and nothing to agents.
    let api = server.api(&writer);
    assert_eq!(api.list_resources("").await.status, 200);
    assert_eq!(api.get_resource(&resource).await.status, 200);
    let made = api.create_resource(body).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let renamed = api
        .update_resource(&resource, json!({"name": "renamed"}))
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(
        api.delete_resource(&made.str("resourceId")).await.status,
        204
    );
    refused(&api.list_agents("").await, "agents:read");

    // The resource scopes are management scopes: a caller cannot grant them without holding
    // them, and a resource cannot list any management scope.
    let grant = server
        .api(&agents_writer)
        .create_agent(json!({"name": "escalated", "scopes": ["resources:write"]}))
        .await;
    assert_status(&grant, 403, "INSUFFICIENT_SCOPE");
    for scope in [
        "agents:read",
        "agents:write",
        "audit:read",
        "resources:read",
        "resources:write",
    ] {
        let listed = server
            .api(&admin_token)
            .create_resource(json!({
                "identifier": "https://escalate.example.com/",
                "name": "escalate",
                "scopes": ["tools:call", scope],
            }))
            .await;
        assert_status(&listed, 400, "VALIDATION_ERROR");
        assert_eq!(listed.body["details"][0]["field"], "scopes[1]");
        assert!(
            listed.body["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains(scope),
            "{}",
            listed.text
        );
    }
}

async fn the_free_plan_allows_ten_resources_per_organization_and_refuses_the_eleventh(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let attacker = server.new_org("attacker").await;
    let token = server.admin_token(&admin).await;
    let attacker_token = server.admin_token(&attacker).await;
    // Another organization filling its own plan takes no place of this one's.
    for i in 0..10 {
        server
            .create_resource(&attacker_token, &format!("https://a{i}.example.com/"), &[])
            .await;
    }
    let api = server.api(&token);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            server
                .create_resource(&token, &format!("https://r{i}.example.com/"), &[])
                .await,
        );
    }
    let listed = api.list_resources("").await.body;
    let audit = server.audit_events(&token, "").await;

    for identifier in ["https://r10.example.com/", "https://r11.example.com/"] {
        let refused = api
            .create_resource(json!({"identifier": identifier, "name": "one more"}))
            .await;
        assert_status(&refused, 403, "PLAN_LIMIT_EXCEEDED");
        assert_eq!(
            refused.body["details"],
            json!([{"limit": "maxResources", "max": 10, "current": 10}])
        );
    }
    let full = server
        .api(&attacker_token)
        .create_resource(json!({"identifier": "https://more.example.com/", "name": "more"}))
        .await;
    assert_status(&full, 403, "PLAN_LIMIT_EXCEEDED");
    // The refusals wrote nothing: no resource, no claim, no event, no count.
    assert_eq!(api.list_resources("").await.body, listed);
    assert_eq!(server.audit_events(&token, "").await, audit);
    assert_eq!(
        claim_of(&server, &admin.org_id, "https://r10.example.com/").await,
        None
    );

    // A deleted resource frees its place.
    assert_eq!(api.delete_resource(&ids[0]).await.status, 204);
    server
        .create_resource(&token, "https://r10.example.com/", &[])
        .await;
    assert_status(
        &api.create_resource(json!({"identifier": "https://r11.example.com/", "name": "x"}))
            .await,
        403,
        "PLAN_LIMIT_EXCEEDED",
    );
    // Enterprise has no resource limit.
    server
        .idp
        .set_plan(admin.org_id.parse().unwrap(), Plan::Enterprise)
        .await
        .unwrap();
    server
        .create_resource(&token, "https://r11.example.com/", &[])
        .await;
    assert_eq!(api.list_resources("").await.body["total"], 11);
}

async fn parallel_creates_of_one_identifier_let_exactly_one_win(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let attempts = join_all((0..12).map(|i| {
        server.api(&token).create_resource(json!({
            "identifier": "https://contested.example.com/mcp",
            "name": format!("contender {i}"),
        }))
    }))
    .await;
    let created: Vec<&Response> = attempts.iter().filter(|r| r.status == 201).collect();
    let taken = attempts
        .iter()
        .filter(|r| r.status == 409 && r.code() == "RESOURCE_IDENTIFIER_TAKEN")
        .count();
    assert_eq!((created.len(), taken), (1, 11));
    let listed = server.api(&token).list_resources("").await;
    assert_eq!(listed.body["total"], 1);
    assert_eq!(listed.body["data"][0], created[0].body);
    assert_eq!(
        claim_of(&server, &admin.org_id, "https://contested.example.com/mcp")
            .await
            .map(|claim| claim.resource_id.to_string()),
        Some(created[0].str("resourceId"))
    );
    // The losers took no place in the plan.
    let month = agentidp_core::domain::time::usage_month(&server.clock_now());
    let usage = server
        .store
        .usage(admin.org_id.parse().unwrap(), &month)
        .await
        .unwrap();
    assert_eq!(usage.resources, 1);
    assert_eq!(
        server
            .audit_events(&token, "&action=resource.created")
            .await
            .len(),
        1
    );
}

async fn parallel_creates_never_exceed_the_resource_limit(store: Arc<dyn Store>) {
    let server = Arc::new(
        TestServer::start_with(store, |config| config.free_limits.max_resources = 4).await,
    );
    let admin = server.new_org("race").await;
    let token = server.admin_token(&admin).await;
    let attempts = join_all((0..10).map(|i| {
        server.api(&token).create_resource(json!({
            "identifier": format!("https://racer{i}.example.com/"),
            "name": "racer",
        }))
    }))
    .await;
    let created = attempts.iter().filter(|r| r.status == 201).count();
    for refused in attempts.iter().filter(|r| r.status != 201) {
        assert_status(refused, 403, "PLAN_LIMIT_EXCEEDED");
        assert_eq!(refused.body["details"][0]["max"], 4);
    }
    assert_eq!(created, 4);
    assert_eq!(server.api(&token).list_resources("").await.body["total"], 4);
}

agentidp_testkit::per_store!(
    a_resource_is_registered_read_listed_changed_and_deleted,
    an_identifier_is_unique_in_its_organization_once_normalised,
    resource_scopes_are_their_own_and_writing_implies_reading,
    the_free_plan_allows_ten_resources_per_organization_and_refuses_the_eleventh,
    parallel_creates_of_one_identifier_let_exactly_one_win,
    parallel_creates_never_exceed_the_resource_limit,
);
