//! Free-tier limits: agents, active credentials per agent, monthly token requests. A refused
//! call writes nothing, except the documented `token.denied` event of a refused token request.

use std::sync::Arc;

use agentidp_core::store::Store;
use chrono::{Datelike, TimeZone, Utc};
use serde_json::{Value, json};

use crate::support::{Response, TestServer};

/// The events of `after` that are not in `before`, asserting that every event of `before` is
/// still there, unchanged. Events written at one instant tie on their timestamp, so position in
/// the listing says nothing about which came last.
fn new_events(before: &[Value], after: &[Value]) -> Vec<Value> {
    for event in before {
        assert!(
            after.contains(event),
            "an earlier event changed or vanished: {event}"
        );
    }
    after
        .iter()
        .filter(|e| !before.contains(e))
        .cloned()
        .collect()
}

fn assert_plan_limit(response: &Response, limit: &str, max: u64, current: u64) {
    assert_eq!(response.status, 403, "{}", response.text);
    assert_eq!(response.code(), "PLAN_LIMIT_EXCEEDED", "{}", response.text);
    assert!(response.body["message"].is_string(), "{}", response.text);
    assert_eq!(
        response.body["details"],
        json!([{"limit": limit, "max": max, "current": current}]),
        "{}",
        response.text
    );
}

async fn agents_listing(server: &TestServer, token: &str) -> Value {
    let response = server.api(token).list_agents("limit=100").await;
    assert_eq!(response.status, 200, "{}", response.text);
    response.body
}

async fn credentials_listing(server: &TestServer, token: &str, agent_id: &str) -> Value {
    let response = server
        .api(token)
        .list_credentials(agent_id, "limit=100")
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    response.body
}

async fn create(server: &TestServer, token: &str, name: &str) -> Response {
    server
        .api(token)
        .create_agent(json!({"name": name, "scopes": []}))
        .await
}

async fn generate(server: &TestServer, token: &str, agent_id: &str) -> Response {
    server
        .api(token)
        .generate_credential(agent_id, json!({}))
        .await
}

async fn the_agent_limit_refuses_one_agent_more_and_writes_nothing(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| config.free_limits.max_agents = 3).await;
    let admin = server.new_org("limits").await;
    let token = server.admin_token(&admin).await;
    // The bootstrap admin is one of the three.
    let first = server.create_agent(&token, "first", &[]).await;
    let second = server.create_agent(&token, "second", &[]).await;
    let agents_before = agents_listing(&server, &token).await;
    let audit_before = server.audit_events(&token, "").await;
    assert_eq!(agents_before["total"], 3);

    let refused = create(&server, &token, "third").await;
    assert_plan_limit(&refused, "maxAgents", 3, 3);
    // Again: the refused attempt did not count.
    let refused = create(&server, &token, "another").await;
    assert_plan_limit(&refused, "maxAgents", 3, 3);
    assert_eq!(agents_listing(&server, &token).await, agents_before);
    assert_eq!(server.audit_events(&token, "").await, audit_before);

    // A suspended agent still holds its place.
    let suspended = server.api(&token).suspend(&first).await;
    assert_eq!(suspended.status, 200, "{}", suspended.text);
    assert_plan_limit(&create(&server, &token, "third").await, "maxAgents", 3, 3);

    // A decommissioned one does not: decommissioning frees a place, and the refused name was
    // never taken.
    let gone = server.api(&token).delete_agent(&second).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    let third = create(&server, &token, "third").await;
    assert_eq!(third.status, 201, "{}", third.text);
    assert_eq!(third.body["name"], "third");
    // Full again, and the count is exact: the decommissioned agent is still listed but not counted.
    let agents_full = agents_listing(&server, &token).await;
    assert_eq!(agents_full["total"], 4);
    let audit_full = server.audit_events(&token, "").await;
    assert_plan_limit(&create(&server, &token, "fourth").await, "maxAgents", 3, 3);
    assert_eq!(agents_listing(&server, &token).await, agents_full);
    assert_eq!(server.audit_events(&token, "").await, audit_full);

    // Decommissioning the suspended one frees another place.
    let gone = server.api(&token).delete_agent(&first).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    assert_eq!(create(&server, &token, "fourth").await.status, 201);
    assert_plan_limit(&create(&server, &token, "fifth").await, "maxAgents", 3, 3);
}

async fn the_agent_limit_is_per_organization(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| config.free_limits.max_agents = 2).await;
    let a = server.new_org("org-a").await;
    let b = server.new_org("org-b").await;
    let a_token = server.admin_token(&a).await;
    let b_token = server.admin_token(&b).await;
    server.create_agent(&a_token, "only", &[]).await;
    assert_plan_limit(&create(&server, &a_token, "more").await, "maxAgents", 2, 2);
    // B's place is its own.
    server.create_agent(&b_token, "only", &[]).await;
    assert_plan_limit(&create(&server, &b_token, "more").await, "maxAgents", 2, 2);
}

async fn concurrent_creations_never_exceed_the_agent_limit(store: Arc<dyn Store>) {
    let server =
        Arc::new(TestServer::start_with(store, |config| config.free_limits.max_agents = 4).await);
    let admin = server.new_org("race").await;
    let token = server.admin_token(&admin).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (server, token) = (server.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            create(&server, &token, &format!("racer-{i}")).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        let response = task.await.unwrap();
        match response.status {
            201 => created += 1,
            403 => assert_plan_limit(&response, "maxAgents", 4, 4),
            other => panic!("unexpected {other}: {}", response.text),
        }
    }
    assert_eq!(created, 3, "exactly the three free places are taken");
    assert_eq!(agents_listing(&server, &token).await["total"], 4);
    assert_eq!(
        server
            .audit_events(&token, "&action=agent.created")
            .await
            .len(),
        3
    );
}

async fn the_credential_limit_counts_active_credentials_per_agent(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| {
        config.free_limits.max_active_credentials_per_agent = 2
    })
    .await;
    let admin = server.new_org("limits").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "holder", &[]).await;
    let (first, first_client, _) = server.create_credential(&token, &agent).await;
    let (_, second_client, second_secret) = server.create_credential(&token, &agent).await;
    let credentials_before = credentials_listing(&server, &token, &agent).await;
    let agents_before = agents_listing(&server, &token).await;
    let audit_before = server.audit_events(&token, "").await;

    assert_plan_limit(
        &generate(&server, &token, &agent).await,
        "maxActiveCredentialsPerAgent",
        2,
        2,
    );
    assert_plan_limit(
        &generate(&server, &token, &agent).await,
        "maxActiveCredentialsPerAgent",
        2,
        2,
    );
    assert_eq!(
        credentials_listing(&server, &token, &agent).await,
        credentials_before
    );
    assert_eq!(agents_listing(&server, &token).await, agents_before);
    assert_eq!(server.audit_events(&token, "").await, audit_before);

    // Rotation replaces a secret; it does not add a credential.
    let rotated = server.api(&token).rotate(&agent, &first).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_plan_limit(
        &generate(&server, &token, &agent).await,
        "maxActiveCredentialsPerAgent",
        2,
        2,
    );

    // The limit is per agent: another agent has its own two.
    let other = server.create_agent(&token, "other", &[]).await;
    server.create_credential(&token, &other).await;
    server.create_credential(&token, &other).await;
    assert_plan_limit(
        &generate(&server, &token, &other).await,
        "maxActiveCredentialsPerAgent",
        2,
        2,
    );

    // Revoking one frees one.
    let revoked = server.api(&token).revoke_credential(&agent, &first).await;
    assert_eq!(revoked.status, 204, "{}", revoked.text);
    let third = generate(&server, &token, &agent).await;
    assert_eq!(third.status, 201, "{}", third.text);
    // Full again; the revoked one is still listed but not counted.
    let listed = credentials_listing(&server, &token, &agent).await;
    assert_eq!(listed["total"], 3);
    let audit_full = server.audit_events(&token, "").await;
    assert_plan_limit(
        &generate(&server, &token, &agent).await,
        "maxActiveCredentialsPerAgent",
        2,
        2,
    );
    assert_eq!(credentials_listing(&server, &token, &agent).await, listed);
    assert_eq!(server.audit_events(&token, "").await, audit_full);

    // The credentials in use keep working throughout; the revoked one does not.
    server.token(&second_client, &second_secret).await;
    let refused = server
        .token_request(
            &first_client,
            rotated.body["clientSecret"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
}

async fn concurrent_generations_never_exceed_the_credential_limit(store: Arc<dyn Store>) {
    let server = Arc::new(
        TestServer::start_with(store, |config| {
            config.free_limits.max_active_credentials_per_agent = 3
        })
        .await,
    );
    let admin = server.new_org("race").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "holder", &[]).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (server, token, agent) = (server.clone(), token.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            generate(&server, &token, &agent).await
        }));
    }
    let mut generated = 0;
    for task in tasks {
        let response = task.await.unwrap();
        match response.status {
            201 => generated += 1,
            403 => assert_plan_limit(&response, "maxActiveCredentialsPerAgent", 3, 3),
            other => panic!("unexpected {other}: {}", response.text),
        }
    }
    assert_eq!(generated, 3);
    assert_eq!(
        credentials_listing(&server, &token, &agent).await["total"],
        3
    );
    assert_eq!(
        server
            .audit_events(
                &token,
                &format!("&action=credential.generated&agentId={agent}")
            )
            .await
            .len(),
        3
    );
}

/// The refusal of a token request over the monthly quota (RFC 6749 §5.2 shape).
fn assert_quota_exceeded(response: &Response, max: u64, current: u64) {
    assert_eq!(response.status, 429, "{}", response.text);
    assert_eq!(
        response.oauth_error(),
        "quota_exceeded",
        "{}",
        response.text
    );
    assert!(
        response.body["error_description"].is_string(),
        "{}",
        response.text
    );
    assert_eq!(
        response.body["limit"], "monthlyTokenRequests",
        "{}",
        response.text
    );
    assert_eq!(response.body["max"], max, "{}", response.text);
    assert_eq!(response.body["current"], current, "{}", response.text);
    assert!(
        response.body.get("access_token").is_none(),
        "{}",
        response.text
    );
    let retry_after = response.header("retry-after").expect("Retry-After");
    let seconds: i64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is {retry_after:?}"));
    assert!(
        seconds > 0 && seconds <= 31 * 86_400,
        "Retry-After {seconds}"
    );
    assert_eq!(response.header("cache-control"), Some("no-store"));
}

/// The seconds from `now` until the next calendar month (UTC) begins.
fn seconds_until_next_month(now: chrono::DateTime<Utc>) -> i64 {
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    (Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).unwrap() - now).num_seconds()
}

async fn the_monthly_token_quota_refuses_with_429_and_resets_the_next_month(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| {
        config.free_limits.monthly_token_requests = 4
    })
    .await;
    let admin = server.new_org("quota").await;
    let other_org = server.new_org("other").await;
    let admin_token = server.admin_token(&admin).await; // 1
    let agent = server
        .create_agent(&admin_token, "caller", &["weather:read"])
        .await;
    let (credential_id, client_id, secret) = server.create_credential(&admin_token, &agent).await;
    server.token(&client_id, &secret).await; // 2
    server.token(&client_id, &secret).await; // 3
    server.token(&client_id, &secret).await; // 4
    let agents_before = agents_listing(&server, &admin_token).await;
    let audit_before = server.audit_events(&admin_token, "").await;

    let refused = server.token_request(&client_id, &secret, None).await;
    assert_quota_exceeded(&refused, 4, 4);
    assert_eq!(refused.header("pragma"), Some("no-cache"));
    let retry_after: i64 = refused.header("retry-after").unwrap().parse().unwrap();
    let expected = seconds_until_next_month(server.idp.now());
    assert!(
        (retry_after - expected).abs() <= 60,
        "Retry-After {retry_after}, the month ends in {expected} s"
    );

    // The one thing written is the documented token.denied event.
    let audit_after = server.audit_events(&admin_token, "").await;
    let written = new_events(&audit_before, &audit_after);
    assert_eq!(written.len(), 1, "{written:#?}");
    let denied = &written[0];
    assert_eq!(denied["action"], "token.denied", "{denied}");
    assert_eq!(denied["outcome"], "failure", "{denied}");
    assert_eq!(denied["agentId"], agent.as_str(), "{denied}");
    assert_eq!(
        denied["resource"],
        format!("credential/{credential_id}"),
        "{denied}"
    );
    assert_eq!(
        denied["details"]["reason"], "monthly_token_quota_exceeded",
        "{denied}"
    );
    assert_eq!(
        denied["details"]["clientId"],
        client_id.as_str(),
        "{denied}"
    );
    assert_eq!(agents_listing(&server, &admin_token).await, agents_before);

    // Refused requests do not count: the usage stays at 4. The quota is the organization's: the
    // admin is refused as well, and the admin's earlier token still works.
    assert_quota_exceeded(&server.token_request(&client_id, &secret, None).await, 4, 4);
    assert_quota_exceeded(
        &server
            .token_request(&admin.client_id, &admin.client_secret, None)
            .await,
        4,
        4,
    );
    let denials = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    assert_eq!(denials.len(), 3);
    assert_eq!(
        server
            .audit_events(&admin_token, "&action=token.issued")
            .await
            .len(),
        4
    );
    // Another organization has its own quota.
    server.admin_token(&other_org).await;

    // A wrong secret is still an authentication failure, not a quota answer.
    let wrong = server
        .token_request(&client_id, "not-the-secret", None)
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    assert_eq!(wrong.oauth_error(), "invalid_client");

    // Next month the count starts again from zero: four more, then refused again.
    server.clock.advance(chrono::Duration::days(32));
    let fresh_admin = server.admin_token(&admin).await; // 1
    server.token(&client_id, &secret).await; // 2
    server.token(&client_id, &secret).await; // 3
    server.token(&client_id, &secret).await; // 4
    assert_quota_exceeded(&server.token_request(&client_id, &secret, None).await, 4, 4);
    let issued = server
        .audit_events(&fresh_admin, "&action=token.issued")
        .await;
    assert_eq!(issued.len(), 8, "four tokens a month, two months");
}

async fn concurrent_token_requests_never_exceed_the_monthly_quota(store: Arc<dyn Store>) {
    let server = Arc::new(
        TestServer::start_with(store, |config| {
            config.free_limits.monthly_token_requests = 6
        })
        .await,
    );
    let admin = server.new_org("race").await;
    let admin_token = server.admin_token(&admin).await; // 1
    let agent = server.create_agent(&admin_token, "caller", &[]).await;
    let (_, client_id, secret) = server.create_credential(&admin_token, &agent).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (server, client_id, secret) = (server.clone(), client_id.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            server.token_request(&client_id, &secret, None).await
        }));
    }
    let mut issued = 0;
    for task in tasks {
        let response = task.await.unwrap();
        match response.status {
            200 => issued += 1,
            429 => assert_quota_exceeded(&response, 6, 6),
            other => panic!("unexpected {other}: {}", response.text),
        }
    }
    assert_eq!(issued, 5);
    assert_eq!(
        server
            .audit_events(&admin_token, "&action=token.issued")
            .await
            .len(),
        6
    );
    assert_eq!(
        server
            .audit_events(&admin_token, "&action=token.denied")
            .await
            .len(),
        7
    );
}

async fn the_quota_retry_after_counts_down_to_the_next_month_of_the_service_clock(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start_with(store, |config| {
        config.free_limits.monthly_token_requests = 1
    })
    .await;
    let admin = server.new_org("quota").await;
    // Well into another month than the wall clock's.
    server.clock.advance(chrono::Duration::days(45));
    server.admin_token(&admin).await;
    let refused = server
        .token_request(&admin.client_id, &admin.client_secret, None)
        .await;
    assert_quota_exceeded(&refused, 1, 1);
    let retry_after: i64 = refused.header("retry-after").unwrap().parse().unwrap();
    let expected = seconds_until_next_month(server.idp.now());
    assert!(
        (retry_after - expected).abs() <= 60,
        "Retry-After {retry_after}, but the service's month ends in {expected} s"
    );
}

agentidp_testkit::per_store!(
    the_agent_limit_refuses_one_agent_more_and_writes_nothing,
    the_agent_limit_is_per_organization,
    concurrent_creations_never_exceed_the_agent_limit,
    the_credential_limit_counts_active_credentials_per_agent,
    concurrent_generations_never_exceed_the_credential_limit,
    the_monthly_token_quota_refuses_with_429_and_resets_the_next_month,
    concurrent_token_requests_never_exceed_the_monthly_quota,
    the_quota_retry_after_counts_down_to_the_next_month_of_the_service_clock,
);
