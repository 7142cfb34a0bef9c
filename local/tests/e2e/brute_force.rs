//! Brute-force protection at the token endpoint, and the per-organization request rate of the
//! management API. Counters live in the store, so every instance sees the same counts. Clients
//! at other addresses are clients bound to other loopback addresses (127.0.0.0/8 is all local).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use agentidp_core::store::Store;

use crate::support::{Response, TestServer};

const WRONG: &str = "sk_live_00000000000000000000000000000000";

/// An HTTP client whose connections leave from 127.0.0.`host`: to the server, another machine.
/// Tests other than these call from 127.0.0.1, so an address of its own keeps a test's address
/// counters apart from theirs on the shared DynamoDB tables.
pub(crate) fn from_host(host: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
        .build()
        .unwrap()
}

/// `POST /token` with client_secret_basic, sent through `http`.
async fn token_request_via(
    server: &TestServer,
    http: &reqwest::Client,
    client_id: &str,
    secret: &str,
) -> Response {
    server
        .send(
            http.post(format!("{}/api/v1/token", server.base))
                .basic_auth(client_id, Some(secret))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await
}

/// Another instance over the same store, with nothing in its verified-secret cache, its clock
/// set to `server`'s so both count in the same windows.
async fn cold_instance_beside(server: &TestServer, store: Arc<dyn Store>) -> TestServer {
    let cold = TestServer::start(store).await;
    cold.clock.advance(server.clock_now() - cold.clock_now());
    cold
}

/// Seconds from the server's clock to the end of the fixed window of `seconds` it is in.
fn seconds_to_window_end(server: &TestServer, seconds: i64) -> u64 {
    let now = server.clock_now().timestamp_millis();
    let end = (now.div_euclid(seconds * 1000) + 1) * seconds * 1000;
    u64::try_from((end - now + 999) / 1000).unwrap()
}

async fn token_denials(server: &TestServer, token: &str, agent: &str) -> Vec<String> {
    server
        .audit_events(token, &format!("&agentId={agent}&action=token.denied"))
        .await
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap().to_owned())
        .collect()
}

async fn repeated_failures_lock_a_client_out_at_their_address_even_with_the_right_secret(
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
    let verifications_before = server.idp.hasher().verifications();
    for _ in 0..5 {
        let locked = server.token_request(&client_id, &secret, None).await;
        assert_eq!(
            (locked.status, locked.oauth_error()),
            (429, "slow_down"),
            "{}",
            locked.text
        );
        assert_eq!(
            locked.header("retry-after"),
            Some(seconds_to_window_end(&server, 600).to_string().as_str()),
            "Retry-After counts to the end of the lockout window"
        );
        assert_eq!(locked.header("cache-control"), Some("no-store"));
    }
    assert_eq!(
        server.idp.hasher().verifications(),
        verifications_before,
        "a locked-out request runs no bcrypt"
    );

    // Three wrong secrets audited one by one; the five refusals of the lockout once.
    let reasons = token_denials(&server, &token, &agent).await;
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "invalid_client_secret")
            .count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| *r == "locked_out").count(),
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

async fn guesses_from_one_address_do_not_lock_the_client_out_at_another(store: Arc<dyn Store>) {
    let server = TestServer::start(store.clone()).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    let attacker = from_host(2);
    // The client id is public (every token's `client_id` claim): the attacker fails 15 times.
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(
            token_request_via(&server, &attacker, &client_id, WRONG)
                .await
                .status,
        );
    }
    assert_eq!(statuses, [[401; 10].as_slice(), &[429; 5]].concat());
    // Hammering on while locked out costs no bcrypt, and spends none of the client's budget.
    let verifications = server.idp.hasher().verifications();
    for _ in 0..40 {
        assert_eq!(
            token_request_via(&server, &attacker, &client_id, WRONG)
                .await
                .status,
            429
        );
    }
    assert_eq!(server.idp.hasher().verifications(), verifications);

    // Another instance, whose cache has never seen the secret.
    let cold = cold_instance_beside(&server, store).await;
    let at_attacker = token_request_via(&cold, &attacker, &client_id, &secret).await;
    assert_eq!(
        (at_attacker.status, at_attacker.oauth_error()),
        (429, "slow_down"),
        "a cold instance cannot tell the right secret from a guess without bcrypt"
    );
    assert_eq!(cold.idp.hasher().verifications(), 0);
    let agent_token = cold.token(&client_id, &secret).await;
    let as_client = cold.api_as_client(&client_id, &secret);
    let introspected = as_client.introspect(&agent_token).await;
    assert_eq!(introspected.body["active"], true, "{}", introspected.text);
    let revoked = as_client.revoke_token(&agent_token).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);

    // Now warm: the verified secret passes even from the attacker's address, guesses do not.
    let warm = token_request_via(&cold, &attacker, &client_id, &secret).await;
    assert_eq!(warm.status, 200, "{}", warm.text);
    let verifications = cold.idp.hasher().verifications();
    let guess = token_request_via(&cold, &attacker, &client_id, WRONG).await;
    assert_eq!((guess.status, guess.oauth_error()), (429, "slow_down"));
    assert_eq!(cold.idp.hasher().verifications(), verifications);

    let reasons = token_denials(&server, &token, &agent).await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "locked_out").count(),
        1,
        "the lockout of the attacker's address is audited once: {reasons:?}"
    );
}

async fn guessing_one_client_from_twenty_addresses_still_meets_429s(store: Arc<dyn Store>) {
    let server = TestServer::start(store.clone()).await;
    let budget = server.idp.config().throttle.client_failures_per_minute;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    server.token(&client_id, &secret).await;
    let attackers: Vec<reqwest::Client> = (10..30).map(from_host).collect();
    let verifications = server.idp.hasher().verifications();
    // Three guesses from each address: below every address's own lockout.
    let mut refused = Vec::new();
    let mut denied: u64 = 0;
    for _ in 0..3 {
        for attacker in &attackers {
            let guess = token_request_via(&server, attacker, &client_id, WRONG).await;
            match guess.status {
                401 => denied += 1,
                429 => refused.push(guess),
                other => panic!("{other}: {}", guess.text),
            }
        }
    }
    assert_eq!(
        (denied, refused.len() as u64),
        (budget, 60 - budget),
        "the client's budget of failures per minute is spent, then guesses are refused"
    );
    assert_eq!(
        server.idp.hasher().verifications() - verifications,
        budget,
        "a refused guess costs no bcrypt"
    );
    for response in &refused {
        assert_eq!(response.oauth_error(), "slow_down");
        assert_eq!(
            response.header("retry-after"),
            Some(seconds_to_window_end(&server, 60).to_string().as_str()),
            "Retry-After counts to the end of the minute"
        );
    }

    // The instance that has verified the secret still serves the client, from anywhere.
    assert_eq!(
        token_request_via(&server, &attackers[0], &client_id, &secret)
            .await
            .status,
        200
    );
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        200
    );
    // One that has not must wait out the minute like a guess, then gets its token.
    let cold = cold_instance_beside(&server, store).await;
    let waiting = cold.token_request(&client_id, &secret, None).await;
    assert_eq!((waiting.status, waiting.oauth_error()), (429, "slow_down"));
    let retry_after: i64 = waiting.header("retry-after").unwrap().parse().unwrap();
    cold.clock.advance(chrono::Duration::seconds(retry_after));
    assert_eq!(
        cold.token_request(&client_id, &secret, None).await.status,
        200
    );

    let reasons = token_denials(&server, &token, &agent).await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "slowed_down").count(),
        1,
        "the spent budget is audited once a minute: {reasons:?}"
    );
}

async fn an_address_guessing_many_client_ids_is_locked_out_but_secrets_already_verified_pass(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start_with(store, |c| c.throttle.address_failures = 5).await;
    // 127.0.0.1 carries other tests' failures on the shared DynamoDB tables: this test's
    // clients use addresses of their own, so the lockout comes at exactly five guesses.
    let (egress, elsewhere) = (from_host(3), from_host(4));
    let admin = server.new_org("acme").await;
    let token = token_request_via(&server, &elsewhere, &admin.client_id, &admin.client_secret)
        .await
        .str("access_token");
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    // A client behind the same egress address, its secret already verified by this instance.
    assert_eq!(
        token_request_via(&server, &egress, &client_id, &secret)
            .await
            .status,
        200
    );
    for _ in 0..5 {
        let guess =
            token_request_via(&server, &egress, &uuid::Uuid::new_v4().to_string(), WRONG).await;
        assert_eq!(guess.status, 401, "{}", guess.text);
    }
    let verifications = server.idp.hasher().verifications();
    let guess = token_request_via(&server, &egress, &uuid::Uuid::new_v4().to_string(), WRONG).await;
    assert_eq!((guess.status, guess.oauth_error()), (429, "slow_down"));
    assert_eq!(
        guess.header("retry-after"),
        Some(seconds_to_window_end(&server, 900).to_string().as_str())
    );
    // A secret this instance has not verified would cost bcrypt: refused like any guess.
    let (_, unverified_client, unverified_secret) = server.create_credential(&token, &agent).await;
    let cold = token_request_via(&server, &egress, &unverified_client, &unverified_secret).await;
    assert_eq!((cold.status, cold.oauth_error()), (429, "slow_down"));
    let introspect = server
        .send(
            egress
                .post(format!("{}/api/v1/token/introspect", server.base))
                .basic_auth(&unverified_client, Some(&unverified_secret))
                .form(&[("token", "x")]),
        )
        .await;
    assert_eq!(
        introspect.status, 429,
        "every client authentication is behind the same lockout"
    );
    assert_eq!(server.idp.hasher().verifications(), verifications);
    // One it has verified costs nothing and reveals nothing: the lockout does not stop it.
    let warm = token_request_via(&server, &egress, &client_id, &secret).await;
    assert_eq!(warm.status, 200, "{}", warm.text);
    assert_eq!(
        token_request_via(&server, &elsewhere, &unverified_client, &unverified_secret)
            .await
            .status,
        200,
        "other addresses are not affected"
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
    server.api(&token).suspend(&agent).await;
    for _ in 0..4 {
        assert_eq!(
            server.token_request(&client_id, &secret, None).await.status,
            401
        );
    }
    server.api(&token).reactivate(&agent).await;
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
        assert_eq!(server.api(&token).list_agents("").await.status, 200);
    }
    let limited = server.api(&token).list_agents("").await;
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
        .api(&token)
        .create_agent(serde_json::json!({"name": "x"}))
        .await;
    assert_eq!(refused_write.status, 429);
    assert_eq!(
        server.api(&other_token).list_agents("").await.status,
        200,
        "other organizations are unaffected"
    );
    server.clock.advance(chrono::Duration::seconds(61));
    let token = server.admin_token(&admin).await;
    let listed = server.api(&token).list_agents("").await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["total"], 1, "the refused create wrote nothing");
}

agentidp_testkit::per_store!(
    repeated_failures_lock_a_client_out_at_their_address_even_with_the_right_secret,
    guesses_from_one_address_do_not_lock_the_client_out_at_another,
    guessing_one_client_from_twenty_addresses_still_meets_429s,
    an_address_guessing_many_client_ids_is_locked_out_but_secrets_already_verified_pass,
    a_right_secret_for_an_unusable_credential_is_not_counted_as_a_guess,
    an_organization_over_its_request_rate_gets_429_until_the_minute_ends,
);
