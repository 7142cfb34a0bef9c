//! The DynamoDB store against the shared conformance suite, on DynamoDB Local, plus what only
//! this store can show: table creation, its refusals, round trips, and an unreachable endpoint.
//!
//! `scripts/test.sh` starts DynamoDB Local and sets `AWS_ENDPOINT_URL_DYNAMODB`; without it these
//! tests fail rather than pass without having run. Each test process creates its own tables under
//! a unique prefix in that (in-memory) DynamoDB Local, so runs never see each other's data.

mod conformance;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentidp_core::domain::{AuditAction, Outcome, Plan};
use agentidp_core::store::{
    AgentReader, AuditQuery, AuditReader, Commit, CredentialReader, OrgReader, ResourceReader,
    RevocationReader, StoreError, Write,
};
use agentidp_store_dynamodb::{
    DynamoStore, MAX_TRANSACTION_ITEMS, TABLE_SPECS, TableNames, client_from_env, ensure_tables,
};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{self, ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::TimeToLiveStatus;
use uuid::Uuid;

/// DynamoDB Local's configuration with timeouts that fail a stuck request within the test.
fn local_config() -> config::Builder {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(20))
        .build();
    agentidp_testkit::dynamodb_config()
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard())
}

fn local_client() -> Client {
    Client::from_conf(local_config().build())
}

/// The store on this test process's tables (see `agentidp_testkit::dynamodb_tables`).
async fn dynamo_store() -> DynamoStore {
    DynamoStore::new(local_client(), agentidp_testkit::dynamodb_tables().await)
}

conformance::conformance_suite!(dynamo_store());

/// Counts the HTTP requests a client sends (every attempt), to check the round trips that
/// `docs/dynamodb-tables.md` gives for each operation.
#[derive(Debug, Clone, Default)]
struct RequestCounter(Arc<AtomicUsize>);

impl RequestCounter {
    fn take(&self) -> usize {
        self.0.swap(0, Ordering::SeqCst)
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn counted_store() -> (DynamoStore, RequestCounter) {
    let tables = agentidp_testkit::dynamodb_tables().await;
    let counter = RequestCounter::default();
    let client = Client::from_conf(local_config().interceptor(counter.clone()).build());
    (DynamoStore::new(client, tables), counter)
}

#[tokio::test]
async fn each_read_takes_the_round_trips_the_table_design_gives() {
    let (store, requests) = counted_store().await;
    let org = conformance::org(Plan::Free);
    let agent = conformance::agent(org.org_id, "counted", conformance::now_ms());
    let credential = conformance::credential(org.org_id, agent.agent_id, conformance::now_ms());
    store
        .commit(vec![
            Write::CreateOrg(org.clone()),
            Write::PutAgent {
                agent: agent.clone(),
                expected_version: None,
            },
            Write::PutCredential {
                credential: credential.clone(),
                expected_version: None,
            },
            Write::CountAgents {
                org_id: org.org_id,
                delta: 1,
                limit: 10,
            },
        ])
        .await
        .unwrap();
    assert_eq!(requests.take(), 1, "commit");

    store.get_org(org.org_id).await.unwrap();
    assert_eq!(requests.take(), 1, "get_org");
    store.usage(org.org_id, "2026-03").await.unwrap();
    assert_eq!(requests.take(), 1, "usage");
    store.get_agent(org.org_id, agent.agent_id).await.unwrap();
    assert_eq!(requests.take(), 1, "get_agent");
    store.list_agents(org.org_id).await.unwrap();
    assert_eq!(requests.take(), 1, "list_agents");
    store
        .credential_by_client_id(credential.client_id)
        .await
        .unwrap();
    assert_eq!(requests.take(), 1, "credential_by_client_id");
    let id = credential.credential_id;
    store
        .get_credential(org.org_id, agent.agent_id, id)
        .await
        .unwrap();
    assert_eq!(requests.take(), 2, "get_credential");
    store
        .list_credentials(org.org_id, agent.agent_id)
        .await
        .unwrap();
    assert_eq!(requests.take(), 1, "list_credentials");
    store.is_token_revoked("no-such-jti").await.unwrap();
    assert_eq!(requests.take(), 1, "is_token_revoked");
    store
        .get_resource(org.org_id, Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(requests.take(), 1, "get_resource");
    store.list_resources(org.org_id).await.unwrap();
    assert_eq!(requests.take(), 1, "list_resources");
    store
        .resource_by_identifier(org.org_id, "https://mcp.example.com/")
        .await
        .unwrap();
    assert_eq!(requests.take(), 1, "resource_by_identifier");
    store.commit(Vec::new()).await.unwrap();
    assert_eq!(requests.take(), 0, "an empty commit");
}

#[tokio::test]
async fn an_audit_page_takes_one_request_and_a_filtered_one_a_few() {
    let (store, requests) = counted_store().await;
    let org_id = Uuid::new_v4();
    let now = conformance::now_ms();
    // Every tenth event failed.
    let events: Vec<_> = (0..100)
        .map(|i| {
            let at = now - chrono::Duration::minutes(10) + chrono::Duration::milliseconds(i);
            let outcome = if i % 10 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            conformance::audit_event(org_id, at, AuditAction::TokenIssued, outcome, None)
        })
        .collect();
    for chunk in events.chunks(25) {
        store
            .commit(chunk.iter().cloned().map(Write::Audit).collect())
            .await
            .unwrap();
    }
    requests.take();

    let mut query = AuditQuery {
        limit: 10,
        ..conformance::audit_query(org_id, now)
    };
    let mut pages = 0;
    loop {
        let page = store.query_audit(&query).await.unwrap();
        pages += 1;
        assert_eq!(requests.take(), 1, "page {pages}");
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 10);

    // Three failures (and the one that decides `next`) are spread over the newest 40 events:
    // requests of 4, 8, 16 and 32 items.
    let failures = AuditQuery {
        limit: 3,
        outcome: Some(Outcome::Failure),
        ..conformance::audit_query(org_id, now)
    };
    let page = store.query_audit(&failures).await.unwrap();
    assert_eq!(page.events.len(), 3);
    assert!(page.next.is_some());
    assert_eq!(requests.take(), 4);
}

#[tokio::test]
async fn ensure_tables_creates_the_keys_indexes_and_ttl_of_the_schema_and_can_run_again() {
    let store_client = local_client();
    let names = TableNames::with_prefix(&format!("agentidp-schema-{}", Uuid::new_v4().simple()));
    ensure_tables(&store_client, &names).await.unwrap();
    ensure_tables(&store_client, &names).await.unwrap();

    for spec in &TABLE_SPECS {
        let name = names.name(spec.role);
        let described = store_client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .unwrap();
        let table = described.table().unwrap();
        let keys: Vec<&str> = table
            .key_schema()
            .iter()
            .map(|k| k.attribute_name())
            .collect();
        let expected: Vec<&str> = std::iter::once(spec.key.partition)
            .chain(spec.key.sort)
            .collect();
        assert_eq!(keys, expected, "{name}");

        let mut indexes: Vec<(String, Vec<String>)> = table
            .global_secondary_indexes()
            .iter()
            .map(|index| {
                let keys = index
                    .key_schema()
                    .iter()
                    .map(|k| k.attribute_name().to_owned())
                    .collect();
                (index.index_name().unwrap_or_default().to_owned(), keys)
            })
            .collect();
        indexes.sort();
        let mut expected: Vec<(String, Vec<String>)> = spec
            .indexes
            .iter()
            .map(|index| {
                let keys = std::iter::once(index.key.partition)
                    .chain(index.key.sort)
                    .map(str::to_owned)
                    .collect();
                (index.name.to_owned(), keys)
            })
            .collect();
        expected.sort();
        assert_eq!(indexes, expected, "{name}");

        let ttl = store_client
            .describe_time_to_live()
            .table_name(name)
            .send()
            .await
            .unwrap();
        let ttl = ttl.time_to_live_description().unwrap();
        match spec.ttl_attribute {
            Some(attribute) => {
                assert_eq!(
                    ttl.time_to_live_status(),
                    Some(&TimeToLiveStatus::Enabled),
                    "{name}"
                );
                assert_eq!(ttl.attribute_name(), Some(attribute), "{name}");
            }
            None => assert_ne!(
                ttl.time_to_live_status(),
                Some(&TimeToLiveStatus::Enabled),
                "{name}"
            ),
        }
    }
}

#[tokio::test]
async fn a_batch_that_touches_one_item_twice_is_refused_before_anything_is_written() {
    let store = dynamo_store().await;
    let org_id = Uuid::new_v4();
    let batch = vec![
        Write::CountTokenRequest {
            org_id,
            month: "2026-03".into(),
            limit: 10,
        },
        Write::CountAgents {
            org_id,
            delta: 1,
            limit: 10,
        },
        Write::CountTokenRequest {
            org_id,
            month: "2026-03".into(),
            limit: 10,
        },
    ];
    let result = store.commit(batch).await;
    assert!(
        matches!(&result, Err(StoreError::Internal { context, .. }) if context.contains("writes 0 and 2")),
        "{result:?}"
    );
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().agents, 0);
}

#[tokio::test]
async fn a_batch_over_the_transaction_limit_is_refused() {
    let store = dynamo_store().await;
    let org = conformance::org(Plan::Free);
    let mut batch: Vec<Write> = (0..MAX_TRANSACTION_ITEMS)
        .map(|_| Write::RevokeToken {
            jti: Uuid::new_v4().to_string(),
            org_id: org.org_id,
            expires_at: conformance::now_ms(),
        })
        .collect();
    batch.push(Write::CreateOrg(org.clone()));
    assert!(matches!(
        store.commit(batch).await,
        Err(StoreError::Internal { .. })
    ));
    assert_eq!(store.get_org(org.org_id).await.unwrap(), None);

    let full: Vec<Write> = (0..MAX_TRANSACTION_ITEMS)
        .map(|_| Write::RevokeToken {
            jti: Uuid::new_v4().to_string(),
            org_id: org.org_id,
            expires_at: conformance::now_ms(),
        })
        .collect();
    store.commit(full).await.unwrap();
}

#[tokio::test]
async fn a_closed_port_makes_reads_and_writes_unavailable_quickly() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_millis(500))
        .operation_timeout(Duration::from_secs(3))
        .build();
    let retries = RetryConfig::standard().with_max_attempts(2);
    let client = Client::from_conf(
        agentidp_testkit::dynamodb_config_at(&closed)
            .timeout_config(timeouts)
            .retry_config(retries)
            .build(),
    );
    // No request reaches a table: any names do.
    let store = DynamoStore::new(client, TableNames::with_prefix("agentidp-closed-port"));

    let started = Instant::now();
    let read = store.get_org(Uuid::new_v4()).await;
    assert!(
        matches!(read, Err(StoreError::Unavailable { .. })),
        "{read:?}"
    );
    // The SDK's error stays beneath the store's, for the log.
    let cause = read.as_ref().err().and_then(std::error::Error::source);
    assert!(cause.is_some(), "{read:?}");
    let write = store
        .commit(vec![Write::CreateOrg(conformance::org(Plan::Free))])
        .await;
    assert!(
        matches!(write, Err(StoreError::Unavailable { .. })),
        "{write:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_client_from_the_environment_reaches_the_endpoint_it_names() {
    // Fails first without DynamoDB Local, before the client from the environment reaches for AWS.
    agentidp_testkit::dynamodb_endpoint();
    let client = client_from_env().await;
    let store = dynamo_store().await;
    let org = conformance::org(Plan::Enterprise);
    store
        .commit(vec![Write::CreateOrg(org.clone())])
        .await
        .unwrap();

    let from_env = DynamoStore::new(client, agentidp_testkit::dynamodb_tables().await);
    assert_eq!(from_env.get_org(org.org_id).await.unwrap(), Some(org));
}
