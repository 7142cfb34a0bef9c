//! Agents through their lifecycle: register, read, change, suspend, reactivate, decommission.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::json;

use crate::support::TestServer;

async fn registering_an_agent_returns_every_field_and_names_are_unique(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let body = json!({
        "name": "invoice-reader",
        "description": "Reads invoices",
        "owner": "finance@acme.example",
        "capabilities": ["invoices.read", "summarize"],
        "scopes": ["invoices:read"],
        "metadata": {"team": "finance"}
    });
    let api = server.api(&token);
    let created = api.create_agent(body.clone()).await;
    assert_eq!(created.status, 201, "{}", created.text);
    for field in [
        "name",
        "description",
        "owner",
        "capabilities",
        "scopes",
        "metadata",
    ] {
        assert_eq!(created.body[field], body[field], "{field}");
    }
    assert_eq!(created.body["status"], "active");
    assert_eq!(created.body["decommissionedAt"], json!(null));
    let agent_id = created.str("agentId");

    let fetched = api.get_agent(&agent_id).await;
    assert_eq!(fetched.body, created.body);

    let same_name = api.create_agent(json!({"name": "Invoice-Reader"})).await;
    assert_eq!(
        (same_name.status, same_name.code()),
        (409, "AGENT_NAME_TAKEN")
    );

    let listed = api.list_agents("status=active").await;
    assert_eq!(listed.status, 200);
    // The bootstrap admin agent and the new one.
    assert_eq!(listed.body["total"], 2);
}

async fn invalid_agent_bodies_are_refused_field_by_field(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "a".repeat(129)}), "name"),
        (json!({"name": "a\u{202E}b"}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "ok", "scopes": ["has space"]}), "scopes[0]"),
        (json!({"name": "ok", "capabilities": "x"}), "capabilities"),
        (json!({"name": "ok", "metadata": {"k": 1}}), "metadata.k"),
        (json!({"name": "ok", "colour": "red"}), "colour"),
    ] {
        let refused = server.api(&token).create_agent(body.clone()).await;
        assert_eq!(
            (refused.status, refused.code()),
            (400, "VALIDATION_ERROR"),
            "{body}"
        );
        assert_eq!(
            refused.body["details"][0]["field"], field,
            "{body}: {}",
            refused.text
        );
    }
    let not_json = server
        .send(
            server
                .request(Method::POST, "/api/v1/agents")
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    assert_eq!(
        (not_json.status, not_json.code()),
        (400, "VALIDATION_ERROR")
    );
    let wrong_type = server
        .send(
            server
                .request(Method::POST, "/api/v1/agents")
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(
        (wrong_type.status, wrong_type.code()),
        (415, "UNSUPPORTED_MEDIA_TYPE")
    );
    let too_large = server
        .send(
            server
                .request(Method::POST, "/api/v1/agents")
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(format!("{{\"name\":\"{}\"}}", "a".repeat(70 * 1024))),
        )
        .await;
    assert_eq!(
        (too_large.status, too_large.code()),
        (413, "PAYLOAD_TOO_LARGE")
    );
    let listed = server.api(&token).list_agents("").await;
    assert_eq!(listed.body["total"], 1, "nothing was written");
}

async fn patch_changes_fields_and_renames_free_the_old_name(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "alpha", &[]).await;
    let api = server.api(&token);
    let changed = api
        .update_agent(
            &agent,
            json!({"name": "beta", "description": "second", "metadata": {"a": "b"}}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(
        (
            changed.body["name"].as_str(),
            changed.body["description"].as_str()
        ),
        (Some("beta"), Some("second"))
    );
    let cleared = api.update_agent(&agent, json!({"description": null})).await;
    assert_eq!(cleared.body["description"], json!(null));
    // The old name is free again; the new one is taken.
    server.create_agent(&token, "alpha", &[]).await;
    let taken = api.create_agent(json!({"name": "beta"})).await;
    assert_eq!(taken.code(), "AGENT_NAME_TAKEN");
    let bad = api
        .update_agent(&agent, json!({"status": "decommissioned"}))
        .await;
    assert_eq!((bad.status, bad.code()), (400, "VALIDATION_ERROR"));
}

async fn a_suspended_agent_gets_no_tokens_and_its_tokens_are_inactive_until_reactivated(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &["data:read"]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    let agent_token = server.token(&client_id, &secret).await;

    let suspended = server.api(&token).suspend(&agent).await;
    assert_eq!(
        (suspended.status, suspended.body["status"].as_str()),
        (200, Some("suspended"))
    );
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        401
    );
    assert_eq!(
        server.introspect(&token, &agent_token).await,
        json!({"active": false})
    );

    let reactivated = server.api(&token).reactivate(&agent).await;
    assert_eq!(reactivated.body["status"], "active");
    assert_eq!(
        server.introspect(&token, &agent_token).await["active"],
        true
    );
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        200
    );
}

async fn decommissioning_revokes_every_credential_for_good_and_keeps_the_record(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_a, secret_a) = server.create_credential(&token, &agent).await;
    let (_, client_b, secret_b) = server.create_credential(&token, &agent).await;
    let agent_token = server.token(&client_a, &secret_a).await;
    let path = format!("/api/v1/agents/{agent}");

    let api = server.api(&token);
    let deleted = api.delete_agent(&agent).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        server
            .token_request(&client_a, &secret_a, None)
            .await
            .status,
        401
    );
    assert_eq!(
        server
            .token_request(&client_b, &secret_b, None)
            .await
            .status,
        401
    );
    assert_eq!(
        server.introspect(&token, &agent_token).await,
        json!({"active": false})
    );

    let kept = api.get_agent(&agent).await;
    assert_eq!(kept.body["status"], "decommissioned");
    assert!(kept.body["decommissionedAt"].is_string());
    let credentials = api.list_credentials(&agent, "status=revoked").await;
    assert_eq!(credentials.body["total"], 2);

    for (method, body) in [
        (Method::PATCH, Some(json!({"status": "active"}))),
        (Method::DELETE, None),
    ] {
        let refused = server.call(method, &path, Some(&token), body).await;
        assert_eq!(
            (refused.status, refused.code()),
            (409, "INVALID_STATUS_TRANSITION")
        );
    }
    let renamed = api.update_agent(&agent, json!({"name": "other"})).await;
    assert_eq!((renamed.status, renamed.code()), (409, "AGENT_NOT_ACTIVE"));
    // Its name is free for a new agent.
    server.create_agent(&token, "bot", &[]).await;
}

async fn a_scope_taken_from_an_agent_stops_opening_the_management_api_at_once(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let manager = server
        .create_agent(&token, "manager", &["agents:read", "agents:write"])
        .await;
    let (_, client_id, secret) = server.create_credential(&token, &manager).await;
    let manager_token = server.token(&client_id, &secret).await;
    let as_manager = server.api(&manager_token);
    assert_eq!(
        as_manager.create_agent(json!({"name": "a"})).await.status,
        201
    );

    let narrowed = server
        .api(&token)
        .update_agent(&manager, json!({"scopes": ["agents:read"]}))
        .await;
    assert_eq!(narrowed.status, 200);
    let refused = as_manager.create_agent(json!({"name": "b"})).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "INSUFFICIENT_SCOPE"),
        "the issued token no longer writes"
    );
    let regrant = as_manager
        .update_agent(&manager, json!({"scopes": ["agents:write"]}))
        .await;
    assert_eq!(regrant.status, 403, "nor can it give itself the scope back");
    assert_eq!(as_manager.list_agents("").await.status, 200);
}

agentidp_testkit::per_store!(
    a_scope_taken_from_an_agent_stops_opening_the_management_api_at_once,
    registering_an_agent_returns_every_field_and_names_are_unique,
    invalid_agent_bodies_are_refused_field_by_field,
    patch_changes_fields_and_renames_free_the_old_name,
    a_suspended_agent_gets_no_tokens_and_its_tokens_are_inactive_until_reactivated,
    decommissioning_revokes_every_credential_for_good_and_keeps_the_record,
);
