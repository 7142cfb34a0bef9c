//! The credential guide's flows, step by step: generate, list, rotate, revoke.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::json;

use crate::support::TestServer;

const SECRET_SHAPE_LEN: usize = "sk_live_".len() + 32;

fn assert_secret_shape(secret: &str) {
    assert!(secret.starts_with("sk_live_"), "{secret}");
    assert_eq!(secret.len(), SECRET_SHAPE_LEN);
    assert!(
        secret["sk_live_".len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}

async fn generating_returns_the_secret_once_and_listing_never_shows_it(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server
        .create_agent(&token, "billing-bot", &["invoices:read"])
        .await;

    let created = server
        .api(&token)
        .generate_credential(&agent, json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let body = created.body.as_object().unwrap();
    let mut fields: Vec<&str> = body.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "clientId",
            "clientSecret",
            "createdAt",
            "credentialId",
            "expiresAt",
            "revokedAt",
            "status",
            "type"
        ]
    );
    assert_eq!(created.body["type"], "client_secret");
    assert_secret_shape(&created.str("clientSecret"));
    assert_eq!(created.body["status"], "active");
    assert_eq!(created.body["expiresAt"], json!(null));
    assert_eq!(created.body["revokedAt"], json!(null));
    assert_eq!(
        created.str("createdAt").len(),
        "2026-03-28T09:00:00.000Z".len()
    );

    let listed = server.api(&token).list_credentials(&agent, "").await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["total"], 1);
    assert_eq!(listed.body["page"], 1);
    assert_eq!(listed.body["limit"], 20);
    let item = &listed.body["data"][0];
    assert_eq!(item["credentialId"], created.body["credentialId"]);
    assert!(item.get("clientSecret").is_none());
    assert!(!listed.text.contains(&created.str("clientSecret")));
    assert!(!listed.text.contains("$2b$"), "no hash in listings");

    let issued = server
        .token_request(&created.str("clientId"), &created.str("clientSecret"), None)
        .await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert_eq!(issued.body["scope"], "invoices:read");
}

async fn an_expiry_in_the_future_is_kept_and_one_in_the_past_or_unparseable_is_refused(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let api = server.api(&token);

    let future = (server.clock_now() + chrono::Duration::days(30))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let created = api
        .generate_credential(&agent, json!({ "expiresAt": future }))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["expiresAt"], json!(future));

    for bad in [
        json!({"expiresAt": "2020-01-01T00:00:00.000Z"}),
        json!({"expiresAt": "next tuesday"}),
        json!({"expiresAt": 5}),
    ] {
        let refused = api.generate_credential(&agent, bad.clone()).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text);
        assert_eq!(refused.code(), "VALIDATION_ERROR");
        assert_eq!(refused.body["details"][0]["field"], "expiresAt");
    }
    let listed = api.list_credentials(&agent, "").await;
    assert_eq!(listed.body["total"], 1, "refused requests wrote nothing");
}

async fn an_expired_credential_gets_no_tokens_and_its_listing_shows_it(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let expiry = (server.clock_now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let created = server
        .api(&token)
        .generate_credential(&agent, json!({ "expiresAt": expiry }))
        .await;
    let (client_id, secret) = (created.str("clientId"), created.str("clientSecret"));
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        200
    );

    server.clock.advance(chrono::Duration::hours(2));
    let token = server.admin_token(&admin).await;
    let refused = server.token_request(&client_id, &secret, None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.oauth_error(), "invalid_client");
    let expired = server
        .api(&token)
        .list_credentials(&agent, "status=expired")
        .await;
    assert_eq!(expired.body["total"], 1);
    assert_eq!(expired.body["data"][0]["status"], "expired");
    let active = server
        .api(&token)
        .list_credentials(&agent, "status=active")
        .await;
    assert_eq!(active.body["total"], 0);
}

async fn an_agent_holds_several_active_credentials_for_zero_downtime_rotation(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (old_id, old_client, old_secret) = server.create_credential(&token, &agent).await;
    let (_, new_client, new_secret) = server.create_credential(&token, &agent).await;
    assert_eq!(
        server
            .token_request(&old_client, &old_secret, None)
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .token_request(&new_client, &new_secret, None)
            .await
            .status,
        200
    );
    let revoked = server.api(&token).revoke_credential(&agent, &old_id).await;
    assert_eq!(revoked.status, 204);
    assert_eq!(
        server
            .token_request(&old_client, &old_secret, None)
            .await
            .status,
        401
    );
    assert_eq!(
        server
            .token_request(&new_client, &new_secret, None)
            .await
            .status,
        200
    );
}

async fn listing_paginates_and_filters_by_status(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(server.create_credential(&token, &agent).await.0);
        // Listings are oldest first; the manual clock stands still unless moved.
        server.clock.advance(chrono::Duration::milliseconds(1));
    }
    let api = server.api(&token);
    api.revoke_credential(&agent, &ids[0]).await;

    let page2 = api.list_credentials(&agent, "page=2&limit=2").await;
    assert_eq!(page2.status, 200);
    assert_eq!(
        (
            page2.body["total"].as_u64(),
            page2.body["page"].as_u64(),
            page2.body["limit"].as_u64()
        ),
        (Some(5), Some(2), Some(2))
    );
    let page_ids: Vec<&str> = page2.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["credentialId"].as_str().unwrap())
        .collect();
    assert_eq!(page_ids, [ids[2].as_str(), ids[3].as_str()]);

    let revoked = api.list_credentials(&agent, "status=revoked").await;
    assert_eq!(revoked.body["total"], 1);
    assert_eq!(revoked.body["data"][0]["credentialId"], json!(ids[0]));
    assert!(revoked.body["data"][0]["revokedAt"].is_string());
    let active = api.list_credentials(&agent, "status=active&limit=50").await;
    assert_eq!(active.body["total"], 4);

    for bad in [
        "page=0",
        "limit=0",
        "limit=101",
        "page=-1",
        "limit=ten",
        "status=lost",
        "page=1&page=2",
    ] {
        let refused = api.list_credentials(&agent, bad).await;
        assert_eq!(refused.status, 400, "{bad}");
        assert_eq!(refused.code(), "VALIDATION_ERROR");
    }
}

async fn rotation_keeps_the_ids_replaces_the_secret_and_leaves_issued_tokens_valid(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (credential_id, client_id, old_secret) = server.create_credential(&token, &agent).await;
    let token_before = server.token(&client_id, &old_secret).await;

    let rotated = server.api(&token).rotate(&agent, &credential_id).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!(rotated.str("credentialId"), credential_id);
    assert_eq!(rotated.str("clientId"), client_id);
    assert_eq!(rotated.body["status"], "active");
    let new_secret = rotated.str("clientSecret");
    assert_secret_shape(&new_secret);
    assert_ne!(new_secret, old_secret);

    let old = server.token_request(&client_id, &old_secret, None).await;
    assert_eq!(old.status, 401, "the old secret is invalid at once");
    assert_eq!(
        server
            .token_request(&client_id, &new_secret, None)
            .await
            .status,
        200
    );
    assert_eq!(
        server.introspect(&token, &token_before).await["active"],
        true,
        "tokens are not revoked by rotation"
    );
}

async fn a_revoked_credential_is_kept_cannot_be_used_rotated_or_revoked_again(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (credential_id, client_id, secret) = server.create_credential(&token, &agent).await;
    let issued = server.token(&client_id, &secret).await;
    let api = server.api(&token);

    let revoked = api.revoke_credential(&agent, &credential_id).await;
    assert_eq!(revoked.status, 204);
    assert!(revoked.text.is_empty());

    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        401
    );
    assert_eq!(
        server.introspect(&token, &issued).await["active"],
        true,
        "issued tokens live until they expire"
    );
    let rotate = api.rotate(&agent, &credential_id).await;
    assert_eq!((rotate.status, rotate.code()), (409, "CREDENTIAL_REVOKED"));
    let again = api.revoke_credential(&agent, &credential_id).await;
    assert_eq!((again.status, again.code()), (409, "CREDENTIAL_REVOKED"));

    let listed = api.list_credentials(&agent, "").await;
    assert_eq!(
        listed.body["data"][0]["status"], "revoked",
        "the record is retained"
    );
}

async fn unknown_and_malformed_ids_answer_not_found(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let random = uuid::Uuid::new_v4();
    for (method, path, code) in [
        (
            Method::POST,
            format!("/api/v1/agents/{random}/credentials"),
            "AGENT_NOT_FOUND",
        ),
        (
            Method::GET,
            "/api/v1/agents/not-a-uuid/credentials".to_owned(),
            "AGENT_NOT_FOUND",
        ),
        (
            Method::POST,
            format!("/api/v1/agents/{agent}/credentials/{random}/rotate"),
            "CREDENTIAL_NOT_FOUND",
        ),
        (
            Method::DELETE,
            format!("/api/v1/agents/{agent}/credentials/xyz"),
            "CREDENTIAL_NOT_FOUND",
        ),
    ] {
        let response = server
            .call(method.clone(), &path, Some(&token), Some(json!({})))
            .await;
        assert_eq!(
            (response.status, response.code()),
            (404, code),
            "{method} {path}"
        );
    }
}

async fn a_suspended_agent_cannot_receive_credentials(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let api = server.api(&token);
    let suspended = api.suspend(&agent).await;
    assert_eq!(suspended.status, 200);
    let refused = api.generate_credential(&agent, json!({})).await;
    assert_eq!((refused.status, refused.code()), (409, "AGENT_NOT_ACTIVE"));
}

agentidp_testkit::per_store!(
    generating_returns_the_secret_once_and_listing_never_shows_it,
    an_expiry_in_the_future_is_kept_and_one_in_the_past_or_unparseable_is_refused,
    an_expired_credential_gets_no_tokens_and_its_listing_shows_it,
    an_agent_holds_several_active_credentials_for_zero_downtime_rotation,
    listing_paginates_and_filters_by_status,
    rotation_keeps_the_ids_replaces_the_secret_and_leaves_issued_tokens_valid,
    a_revoked_credential_is_kept_cannot_be_used_rotated_or_revoked_again,
    unknown_and_malformed_ids_answer_not_found,
    a_suspended_agent_cannot_receive_credentials,
);
