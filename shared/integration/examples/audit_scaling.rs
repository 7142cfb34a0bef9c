//! Shows that a filtered audit query costs what its page costs, not what the table holds: the
//! same queries against one organization's trail at 10,000 and at 200,000 events, on DynamoDB
//! Local (`AWS_ENDPOINT_URL_DYNAMODB`, as `scripts/test-services.sh` starts it).
//!
//! `source scripts/test-services.sh && start_test_services &&
//!  cargo run --example audit_scaling -p agentidp-integration [-- SMALL LARGE]`
//!
//! For each size and query it prints the median time of 20 runs and the DynamoDB requests one
//! query takes (counted by an SDK interceptor).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentidp_core::domain::{Actor, AuditAction, AuditEvent, Outcome};
use agentidp_core::store::{AuditQuery, AuditReader, Commit, Write};
use agentidp_store_dynamodb::{DynamoStore, TableNames, ensure_tables};
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use chrono::{Duration as Span, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, Default)]
struct Requests(Arc<AtomicUsize>);

impl Intercept for Requests {
    fn name(&self) -> &'static str {
        "Requests"
    }

    fn read_before_attempt(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// 1 in 100 events is an `agent.created`, 1 in 20 a failure, 1 in 50 about the watched agent;
/// the rest are issued tokens of other agents, spread over 85 days.
fn event(org_id: Uuid, watched: Uuid, i: usize, total: usize) -> AuditEvent {
    let now = Utc::now();
    let timestamp =
        now - Span::milliseconds(((total - i) as i64) * (85 * 86_400_000 / total as i64));
    let action = if i.is_multiple_of(100) {
        AuditAction::AgentCreated
    } else {
        AuditAction::TokenIssued
    };
    let outcome = if i % 20 == 7 {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    let subject = if i % 50 == 3 { watched } else { Uuid::new_v4() };
    AuditEvent {
        event_id: Uuid::new_v4(),
        org_id,
        timestamp,
        action,
        outcome,
        actor: Actor::client(Some(Uuid::new_v4())),
        subject_agent_id: Some(subject),
        resource: format!("token/{}", Uuid::new_v4()),
        request_id: format!("load-{i}"),
        source_ip: Some("10.0.0.1".into()),
        user_agent: Some("audit-scaling".into()),
        details: serde_json::Map::new(),
        expires_at: timestamp + Span::days(90),
    }
}

async fn load(
    store: &DynamoStore,
    org_id: Uuid,
    watched: Uuid,
    from: usize,
    to: usize,
    total: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut i = from;
    while i < to {
        let end = (i + 100).min(to);
        store
            .commit(
                (i..end)
                    .map(|n| Write::Audit(event(org_id, watched, n, total)))
                    .collect(),
            )
            .await?;
        i = end;
    }
    Ok(())
}

fn queries(org_id: Uuid, watched: Uuid) -> Vec<(&'static str, AuditQuery)> {
    let now = Utc::now();
    let base = AuditQuery {
        org_id,
        agent_id: None,
        actor_agent_id: None,
        action: None,
        outcome: None,
        not_before: now - Span::days(90),
        until: None,
        now,
        limit: 50,
        after: None,
    };
    vec![
        ("newest 50, no filter", base.clone()),
        (
            "action=agent.created (1%)",
            AuditQuery {
                action: Some(AuditAction::AgentCreated),
                ..base.clone()
            },
        ),
        (
            "agentId=<one agent> (2%)",
            AuditQuery {
                agent_id: Some(watched),
                actor_agent_id: None,
                ..base.clone()
            },
        ),
        (
            "outcome=failure (5%)",
            AuditQuery {
                outcome: Some(Outcome::Failure),
                ..base.clone()
            },
        ),
        (
            "last 7 days",
            AuditQuery {
                not_before: now - Span::days(7),
                ..base
            },
        ),
    ]
}

async fn measure(
    store: &DynamoStore,
    requests: &Requests,
    label: usize,
    list: &[(&'static str, AuditQuery)],
) -> Result<(), Box<dyn std::error::Error>> {
    for (name, query) in list {
        let mut times = Vec::new();
        let mut per_query = 0;
        let mut returned = 0;
        for _ in 0..20 {
            requests.0.store(0, Ordering::SeqCst);
            let started = Instant::now();
            let page = store.query_audit(query).await?;
            times.push(started.elapsed());
            per_query = requests.0.load(Ordering::SeqCst);
            returned = page.events.len();
        }
        times.sort();
        let median: Duration = times[times.len() / 2];
        println!(
            "| {label:>7} | {name:<28} | {:>7.2} ms | {per_query} | {returned} |",
            median.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let small: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let large: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    // Read here rather than with `agentidp_testkit::dynamodb_endpoint`, which panics: a tool run
    // by hand says what is missing and exits.
    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .map_err(|_| "AWS_ENDPOINT_URL_DYNAMODB is not set: start DynamoDB Local first")?;
    let requests = Requests::default();
    let config = agentidp_testkit::dynamodb_config_at(&endpoint)
        .interceptor(requests.clone())
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let tables = TableNames::with_prefix(&format!("audit-scaling-{}", Uuid::new_v4().simple()));
    ensure_tables(&client, &tables).await?;
    let store = DynamoStore::new(client, tables);
    println!("| events | query | median of 20 | requests | returned |");
    println!("| --- | --- | --- | --- | --- |");
    // Two organizations with trails of the same shape over the same 85 days, one of each size,
    // in the same tables: the large one is measured with both loaded.
    for size in [small, large] {
        let (org_id, watched) = (Uuid::new_v4(), Uuid::new_v4());
        let started = Instant::now();
        load(&store, org_id, watched, 0, size, size).await?;
        eprintln!(
            "loaded {size} events in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        measure(&store, &requests, size, &queries(org_id, watched)).await?;
    }
    Ok(())
}
