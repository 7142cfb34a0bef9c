//! Races, run concurrently over HTTP on both stores: the outcomes the conditional writes promise.

use std::sync::Arc;

use agentidp_core::store::Store;
use futures_util::future::join_all;
use serde_json::json;

use crate::support::TestServer;

async fn twenty_parallel_rotations_leave_exactly_one_working_secret_and_every_rotation_audited(
    store: Arc<dyn Store>,
) {
    // Trying 21 secrets is 20 failed authentications: above the default lockout.
    let server = TestServer::start_with(store, |c| c.throttle.client_failures = 100).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (credential_id, client_id, first_secret) = server.create_credential(&token, &agent).await;
    let rotations =
        join_all((0..20).map(|_| server.api(&token).rotate(&agent, &credential_id))).await;
    let mut secrets = vec![first_secret];
    for rotation in &rotations {
        assert_eq!(rotation.status, 200, "{}", rotation.text);
        secrets.push(rotation.str("clientSecret"));
    }
    let mut working = 0;
    for secret in &secrets {
        if server.token_request(&client_id, secret, None).await.status == 200 {
            working += 1;
        }
    }
    assert_eq!(working, 1, "exactly one final secret works");
    let audited = server
        .audit_events(
            &token,
            &format!("&agentId={agent}&action=credential.rotated"),
        )
        .await;
    assert_eq!(audited.len(), 20, "every rotation is audited");
}

async fn parallel_creates_of_one_agent_name_let_exactly_one_win(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let attempts = join_all((0..12).map(|_| {
        server
            .api(&token)
            .create_agent(json!({"name": "contested"}))
    }))
    .await;
    let created = attempts.iter().filter(|r| r.status == 201).count();
    let taken = attempts
        .iter()
        .filter(|r| r.status == 409 && r.code() == "AGENT_NAME_TAKEN")
        .count();
    assert_eq!((created, taken), (1, 11));
    let listed = server.api(&token).list_agents("limit=100").await;
    let named: Vec<_> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "contested")
        .collect();
    assert_eq!(named.len(), 1);
}

async fn decommission_racing_credential_generation_leaves_no_active_credential(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let api = server.api(&token);
    for round in 0..3 {
        let agent = server
            .create_agent(&token, &format!("racer-{round}"), &[])
            .await;
        let generations = join_all((0..6).map(|_| api.generate_credential(&agent, json!({}))));
        let decommission = api.delete_agent(&agent);
        let (generated, decommissioned) = tokio::join!(generations, decommission);
        assert_eq!(decommissioned.status, 204, "{}", decommissioned.text);
        for response in &generated {
            assert!(
                response.status == 201
                    || (response.status == 409 && response.code() == "AGENT_NOT_ACTIVE"),
                "{}",
                response.text
            );
        }
        let active = api.list_credentials(&agent, "status=active").await;
        assert_eq!(
            active.body["total"], 0,
            "round {round}: an active credential survived decommissioning"
        );
        for response in generated.iter().filter(|r| r.status == 201) {
            let refused = server
                .token_request(
                    &response.str("clientId"),
                    &response.str("clientSecret"),
                    None,
                )
                .await;
            assert_eq!(refused.status, 401);
        }
    }
}

async fn parallel_token_requests_at_the_quota_edge_never_go_over_the_limit(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |c| c.free_limits.monthly_token_requests = 10).await;
    let admin = server.new_org("acme").await;
    // The bootstrap admin's own token takes one of the ten.
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    let responses =
        join_all((0..25).map(|_| server.token_request(&client_id, &secret, None))).await;
    let issued = responses.iter().filter(|r| r.status == 200).count();
    let refused = responses
        .iter()
        .filter(|r| r.status == 429 && r.oauth_error() == "quota_exceeded")
        .count();
    assert_eq!(
        issued + refused,
        25,
        "every request got one of the two answers"
    );
    assert_eq!(issued, 9, "exactly the quota's remainder was issued");
    let org_id = admin.org_id.parse().unwrap();
    let month = agentidp_core::domain::time::usage_month(&server.clock_now());
    assert_eq!(
        server
            .store
            .usage(org_id, &month)
            .await
            .unwrap()
            .token_requests,
        10
    );
}

agentidp_testkit::per_store!(
    twenty_parallel_rotations_leave_exactly_one_working_secret_and_every_rotation_audited,
    parallel_creates_of_one_agent_name_let_exactly_one_win,
    decommission_racing_credential_generation_leaves_no_active_credential,
    parallel_token_requests_at_the_quota_edge_never_go_over_the_limit,
);
