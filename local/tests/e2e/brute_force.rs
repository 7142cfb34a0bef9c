//! Brute-force protection at the token endpoint, and the per-organization request rate of the
//! management API. Counters live in the store, so every instance sees the same counts.

use std::sync::Arc;

use agentidp_shared::store::Store;
use reqwest::Method;

use crate::support::TestServer;

const WRONG: &str = "sk_live_00000000000000000000000000000000";

async fn a_client_is_locked_out_after_repeated_failures_even_with_the_right_secret(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start_with(store, |c| {
        c.throttle.client_failures = 3;
        c.throttle.lockout_window_seconds = 600;
    })
    .await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    for _ in 0..3 {
        assert_eq!(
            server.token_request(&client_id, WRONG, None).await.status,
            401
        );
    }
    let verifications_before = server.idp.hasher.verifications();
    for _ in 0..5 {
        let locked = server.token_request(&client_id, &secret, None).await;
        assert_eq!(
            (locked.status, locked.oauth_error()),
            (429, "slow_down"),
            "{}",
            locked.text
        );
        let retry_after: u64 = locked.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=600).contains(&retry_after), "{retry_after}");
        assert_eq!(locked.header("cache-control"), Some("no-store"));
    }
    assert_eq!(
        server.idp.hasher.verifications(),
        verifications_before,
        "a locked-out request runs no bcrypt"
    );

    // Three wrong secrets audited one by one; the five refusals of the lockout once.
    let events = server
        .audit_events(&token, &format!("&agentId={agent}&action=token.denied"))
        .await;
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "invalid_client_secret")
            .count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| **r == "locked_out").count(),
        1,
        "{reasons:?}"
    );

    // Another client of the same organization is not affected.
    let (_, other_client, other_secret) = server.create_credential(&token, &agent).await;
    assert_eq!(
        server
            .token_request(&other_client, &other_secret, None)
            .await
            .status,
        200
    );

    // The lockout lifts by itself when its window ends.
    server.clock.advance(chrono::Duration::seconds(601));
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        200
    );
}

async fn an_address_guessing_many_client_ids_is_locked_out(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |c| c.throttle.address_failures = 5).await;
    let admin = server.new_org("acme").await;
    // Every test calls from 127.0.0.1 and the DynamoDB run shares its tables, so this address
    // may carry others' failures already: it must be locked within five guesses, not at
    // exactly five.
    let mut guesses = 0;
    loop {
        let guess = server
            .token_request(&uuid::Uuid::new_v4().to_string(), WRONG, None)
            .await;
        if guess.status == 429 {
            break;
        }
        assert_eq!(guess.status, 401);
        guesses += 1;
        assert!(guesses <= 5, "still not locked after {guesses} failures");
    }
    let locked = server
        .token_request(&admin.client_id, &admin.client_secret, None)
        .await;
    assert_eq!((locked.status, locked.oauth_error()), (429, "slow_down"));
    let introspect = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/introspect")
                .basic_auth(&admin.client_id, Some(&admin.client_secret))
                .form(&[("token", "x")]),
        )
        .await;
    assert_eq!(
        introspect.status, 429,
        "every client authentication is behind the same lockout"
    );
}

async fn a_right_secret_for_an_unusable_credential_is_not_counted_as_a_guess(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start_with(store, |c| c.throttle.client_failures = 2).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(&token),
            Some(serde_json::json!({"status": "suspended"})),
        )
        .await;
    for _ in 0..4 {
        assert_eq!(
            server.token_request(&client_id, &secret, None).await.status,
            401
        );
    }
    server
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(&token),
            Some(serde_json::json!({"status": "active"})),
        )
        .await;
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        200
    );
}

async fn an_organization_over_its_request_rate_gets_429_until_the_minute_ends(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start_with(store, |c| c.throttle.org_requests_per_minute = 5).await;
    let admin = server.new_org("acme").await;
    let other = server.new_org("other").await;
    let token = server.admin_token(&admin).await;
    let other_token = server.admin_token(&other).await;
    for _ in 0..5 {
        assert_eq!(
            server
                .call(Method::GET, "/api/v1/agents", Some(&token), None)
                .await
                .status,
            200
        );
    }
    let limited = server
        .call(Method::GET, "/api/v1/agents", Some(&token), None)
        .await;
    assert_eq!((limited.status, limited.code()), (429, "RATE_LIMITED"));
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= 60
    );
    let refused_write = server
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(&token),
            Some(serde_json::json!({"name": "x"})),
        )
        .await;
    assert_eq!(refused_write.status, 429);
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/agents", Some(&other_token), None)
            .await
            .status,
        200,
        "other organizations are unaffected"
    );
    server.clock.advance(chrono::Duration::seconds(61));
    let token = server.admin_token(&admin).await;
    let listed = server
        .call(Method::GET, "/api/v1/agents", Some(&token), None)
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["total"], 1, "the refused create wrote nothing");
}

crate::per_store!(
    a_client_is_locked_out_after_repeated_failures_even_with_the_right_secret,
    an_address_guessing_many_client_ids_is_locked_out,
    a_right_secret_for_an_unusable_credential_is_not_counted_as_a_guess,
    an_organization_over_its_request_rate_gets_429_until_the_minute_ends,
);
