//! Measures client authentication at the token endpoint for an unknown client and for a known
//! client with a wrong secret, at the production bcrypt cost. Both should take the same path
//! (one bcrypt verification) and about the same time.
//!
//! `cargo run --example auth_timing -p agentidp-integration [-- ROUNDS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentidp_core::config::{Config, DEFAULT_BCRYPT_COST};
use agentidp_core::domain::audit::RequestContext;
use agentidp_core::domain::time::SystemClock;
use agentidp_core::service::Idp;
use agentidp_core::signing::{KeySet, KeySetDocument, KeySource, SigningAlgorithm};
use agentidp_http::ApiRequest;
use agentidp_store_sqlite::SqliteStore;
use base64::Engine;

fn token_request(client_id: &str, secret: &str) -> ApiRequest {
    let mut headers = http::HeaderMap::new();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Basic {basic}")
            .parse()
            .unwrap_or(http::HeaderValue::from_static("")),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    ApiRequest {
        method: http::Method::POST,
        path: "/api/v1/token".into(),
        query: String::new(),
        headers,
        body: b"grant_type=client_credentials".to_vec(),
        context: RequestContext {
            request_id: "timing".into(),
            source_ip: None,
            user_agent: None,
        },
    }
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    let p50 = samples[samples.len() / 2];
    let p90 = samples[samples.len() * 9 / 10];
    println!(
        "{label:<28} n={:<4} mean={:>7.2} ms  p50={:>7.2} ms  p90={:>7.2} ms",
        samples.len(),
        ms(mean),
        ms(p50),
        ms(p90)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40);
    let mut config = Config::from_lookup(|name| {
        (name == "AGENTIDP_ISSUER").then(|| "http://localhost:3000".to_owned())
    })?;
    // Lockout would stop a timing run after ten failures; this measures the bcrypt path.
    config.throttle.client_failures = u64::MAX;
    config.throttle.address_failures = u64::MAX;
    config.throttle.client_failures_per_minute = u64::MAX;
    let keys = KeySet::from_document(&KeySetDocument::generate(
        SigningAlgorithm::RS256,
        chrono::Utc::now(),
    )?)?;
    let idp = Arc::new(Idp::new(
        config,
        Arc::new(SqliteStore::in_memory()?),
        KeySource::Fixed(Arc::new(keys)),
        Arc::new(agentidp_remote_keys::KeySetFetcher::new(
            agentidp_core::remote_keys::KeyFetchNetwork::Development,
        )?),
        Arc::new(SystemClock),
    )?);
    let org = idp
        .create_org("timing", agentidp_core::domain::Plan::Enterprise)
        .await?;
    let known = org.admin.credential.client_id.to_string();
    let wrong = "sk_live_00000000000000000000000000000000";
    let (mut unknown_times, mut wrong_times) = (Vec::new(), Vec::new());
    // Interleaved, so machine noise falls on both alike.
    for _ in 0..rounds {
        let started = Instant::now();
        let response = agentidp_http::handle(
            &idp,
            None,
            token_request(&uuid::Uuid::new_v4().to_string(), wrong),
        )
        .await;
        unknown_times.push(started.elapsed());
        assert_eq!(response.status(), 401);
        let started = Instant::now();
        let response = agentidp_http::handle(&idp, None, token_request(&known, wrong)).await;
        wrong_times.push(started.elapsed());
        assert_eq!(response.status(), 401);
    }
    println!("bcrypt cost {DEFAULT_BCRYPT_COST}, {rounds} rounds, interleaved");
    summary("unknown client", unknown_times.clone());
    summary("known client, wrong secret", wrong_times.clone());
    let ratio =
        ms(unknown_times.iter().sum::<Duration>()) / ms(wrong_times.iter().sum::<Duration>());
    println!("mean ratio unknown / wrong secret: {ratio:.3}");
    println!("bcrypt verifications run: {}", idp.hasher().verifications());
    Ok(())
}
