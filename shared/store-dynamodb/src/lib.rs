//! The DynamoDB store: five tables, every change one `TransactWriteItems`.
//!
//! `docs/dynamodb-tables.md` describes the tables, every access pattern and its round trips.
//! The key schema lives in one place, [`TABLE_SPECS`]: table creation ([`ensure_tables`]) reads
//! it, and so can a check of the deployment template.
//!
//! Items are never logged and never copied into error messages: a credential item holds a
//! bcrypt hash. Errors name the operation, the attribute or the error code, nothing else.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::BehaviorVersion;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, Delete,
    GlobalSecondaryIndex, KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType,
    Put, ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
    TransactWriteItem, Update,
};
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use agentidp_core::domain::{
    Actor, Agent, AgentStatus, AuditAction, AuditEvent, Credential, CredentialStatus, Organization,
    Outcome, Plan,
};
use agentidp_core::store::{
    AgentReader, AuditPage, AuditPosition, AuditQuery, AuditReader, Commit, CredentialReader,
    OrgReader, RevocationReader, StoreError, StoreResult, ThrottleReader, Usage, Write,
};

// ---------------------------------------------------------------------------------------------
// Key schema: the one place that names tables' keys, indexes and TTL attributes.
// ---------------------------------------------------------------------------------------------

/// Partition key of the orgs, agents, credentials and audit tables.
pub const PK: &str = "pk";
/// Sort key of the orgs, agents and audit tables (and of the audit table's agent and action
/// indexes, which share its order).
pub const SK: &str = "sk";
/// Partition key of the revoked-tokens table.
pub const JTI: &str = "jti";
/// `<orgId>#<agentId>`: partition key of the credentials' and the audit events' agent index.
pub const AGENT_KEY: &str = "agentKey";
/// `<orgId>#<action>`: partition key of the audit events' action index.
pub const ACTION_KEY: &str = "actionKey";
/// Sort key of the credentials' agent index.
pub const CREDENTIAL_ID: &str = "credentialId";
/// Partition key of the audit events' event-id index.
pub const EVENT_ID: &str = "eventId";
/// The TTL attribute (epoch seconds, rounded up) of the audit and revoked-tokens tables.
pub const EXPIRES_AT: &str = "expiresAt";

pub const CREDENTIALS_BY_AGENT_INDEX: &str = "byAgent";
pub const AUDIT_BY_AGENT_INDEX: &str = "byAgent";
pub const AUDIT_BY_ACTION_INDEX: &str = "byAction";
pub const AUDIT_BY_EVENT_ID_INDEX: &str = "byEventId";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableRole {
    Orgs,
    Agents,
    Credentials,
    Audit,
    RevokedTokens,
    Throttle,
}

/// A key: partition attribute and optional sort attribute. Every key attribute is a string (S).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchema {
    pub partition: &'static str,
    pub sort: Option<&'static str>,
}

/// A global secondary index. Every index projects ALL attributes, so a query on it needs no
/// follow-up reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: &'static str,
    pub key: KeySchema,
}

/// One table. All tables bill per request (`PAY_PER_REQUEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub role: TableRole,
    /// The environment variable that holds the table's name in a deployment.
    pub env_var: &'static str,
    /// What [`TableNames::with_prefix`] appends to the prefix.
    pub suffix: &'static str,
    pub key: KeySchema,
    pub indexes: &'static [IndexSpec],
    pub ttl_attribute: Option<&'static str>,
}

pub const TABLE_SPECS: [TableSpec; 6] = [
    TableSpec {
        role: TableRole::Orgs,
        env_var: "AGENTIDP_ORGS_TABLE",
        suffix: "orgs",
        key: KeySchema {
            partition: PK,
            sort: Some(SK),
        },
        indexes: &[],
        ttl_attribute: None,
    },
    TableSpec {
        role: TableRole::Agents,
        env_var: "AGENTIDP_AGENTS_TABLE",
        suffix: "agents",
        key: KeySchema {
            partition: PK,
            sort: Some(SK),
        },
        indexes: &[],
        ttl_attribute: None,
    },
    TableSpec {
        role: TableRole::Credentials,
        env_var: "AGENTIDP_CREDENTIALS_TABLE",
        suffix: "credentials",
        key: KeySchema {
            partition: PK,
            sort: None,
        },
        indexes: &[IndexSpec {
            name: CREDENTIALS_BY_AGENT_INDEX,
            key: KeySchema {
                partition: AGENT_KEY,
                sort: Some(CREDENTIAL_ID),
            },
        }],
        ttl_attribute: None,
    },
    TableSpec {
        role: TableRole::Audit,
        env_var: "AGENTIDP_AUDIT_TABLE",
        suffix: "audit",
        key: KeySchema {
            partition: PK,
            sort: Some(SK),
        },
        indexes: &[
            IndexSpec {
                name: AUDIT_BY_AGENT_INDEX,
                key: KeySchema {
                    partition: AGENT_KEY,
                    sort: Some(SK),
                },
            },
            IndexSpec {
                name: AUDIT_BY_ACTION_INDEX,
                key: KeySchema {
                    partition: ACTION_KEY,
                    sort: Some(SK),
                },
            },
            IndexSpec {
                name: AUDIT_BY_EVENT_ID_INDEX,
                key: KeySchema {
                    partition: EVENT_ID,
                    sort: None,
                },
            },
        ],
        ttl_attribute: Some(EXPIRES_AT),
    },
    TableSpec {
        role: TableRole::RevokedTokens,
        env_var: "AGENTIDP_REVOKED_TOKENS_TABLE",
        suffix: "revoked-tokens",
        key: KeySchema {
            partition: JTI,
            sort: None,
        },
        indexes: &[],
        ttl_attribute: Some(EXPIRES_AT),
    },
    TableSpec {
        role: TableRole::Throttle,
        env_var: "AGENTIDP_THROTTLE_TABLE",
        suffix: "throttle",
        key: KeySchema {
            partition: PK,
            sort: None,
        },
        indexes: &[],
        ttl_attribute: Some(EXPIRES_AT),
    },
];

// Sort-key shapes.
const ORG_SK: &str = "ORG";
const AGENT_COUNTER_SK: &str = "USAGE#AGENTS";
const AGENT_SK_PREFIX: &str = "AGENT#";

// Attributes that expressions name.
const VERSION: &str = "version";
const COUNT: &str = "count";
const PLAN: &str = "plan";
const ACTION: &str = "action";
const OUTCOME: &str = "outcome";

/// DynamoDB's limit on items per transaction.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Attempts at a transaction that DynamoDB cancels for a conflict with a concurrent one.
const TRANSACTION_ATTEMPTS: u32 = 4;
/// Times a batch is sent again with an agent-counter decrement switched to its other form.
const MAX_DECREMENT_SWITCHES: u32 = 4;
/// Attempts at a `BatchGetItem` whose keys come back unprocessed (throttling).
const BATCH_GET_ATTEMPTS: u32 = 4;
/// Items a single audit query may evaluate; DynamoDB's own 1 MB page bounds it further.
const MAX_AUDIT_QUERY_LIMIT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    pub orgs: String,
    pub agents: String,
    pub credentials: String,
    pub audit: String,
    pub revoked_tokens: String,
    pub throttle: String,
}

impl TableNames {
    /// The names a deployment passes in `AGENTIDP_*_TABLE`; the error names a missing variable.
    pub fn from_env() -> Result<Self, String> {
        Self::build(|spec| {
            std::env::var(spec.env_var)
                .map_err(|_| format!("environment variable {} is not set", spec.env_var))
        })
    }

    /// `<prefix>-orgs`, `<prefix>-agents`, …: for tests and the local server.
    pub fn with_prefix(prefix: &str) -> Self {
        Self::build(|spec| Ok::<_, Infallible>(format!("{prefix}-{}", spec.suffix)))
            .unwrap_or_else(|never| match never {})
    }

    fn build<E>(mut name: impl FnMut(&TableSpec) -> Result<String, E>) -> Result<Self, E> {
        let [orgs, agents, credentials, audit, revoked_tokens, throttle] = &TABLE_SPECS;
        Ok(Self {
            orgs: name(orgs)?,
            agents: name(agents)?,
            credentials: name(credentials)?,
            audit: name(audit)?,
            revoked_tokens: name(revoked_tokens)?,
            throttle: name(throttle)?,
        })
    }

    pub fn name(&self, role: TableRole) -> &str {
        match role {
            TableRole::Orgs => &self.orgs,
            TableRole::Agents => &self.agents,
            TableRole::Credentials => &self.credentials,
            TableRole::Audit => &self.audit,
            TableRole::RevokedTokens => &self.revoked_tokens,
            TableRole::Throttle => &self.throttle,
        }
    }
}

/// A client configured from the environment (region, credentials, and an endpoint override such
/// as `AWS_ENDPOINT_URL_DYNAMODB`), with timeouts that keep a request path from hanging on an
/// unreachable backend: such a request fails as [`StoreError::Unavailable`] instead.
pub async fn client_from_env() -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(12))
        .build();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await;
    Client::new(&config)
}

/// Creates every table of `names` that does not exist yet, with its keys and indexes, waits
/// until it is active, and turns its TTL on if it is not. Existing tables keep their keys.
pub async fn ensure_tables(client: &Client, names: &TableNames) -> StoreResult<()> {
    for spec in &TABLE_SPECS {
        let name = names.name(spec.role);
        create_table_if_missing(client, spec, name).await?;
        wait_until_active(client, name).await?;
        if let Some(attribute) = spec.ttl_attribute {
            enable_ttl(client, name, attribute).await?;
        }
    }
    Ok(())
}

async fn create_table_if_missing(client: &Client, spec: &TableSpec, name: &str) -> StoreResult<()> {
    match client.describe_table().table_name(name).send().await {
        Ok(_) => return Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) => {}
        Err(err) => return Err(sdk_error("DescribeTable", err)),
    }
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(attribute_definitions(spec)?))
        .set_key_schema(Some(key_schema(&spec.key)?))
        .set_global_secondary_indexes(global_secondary_indexes(spec)?)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another process created it between the describe and the create.
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(err) => Err(sdk_error("CreateTable", err)),
    }
}

/// Checked first, because DynamoDB refuses to enable a TTL that is already on.
async fn enable_ttl(client: &Client, name: &str, attribute: &str) -> StoreResult<()> {
    let described = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .map_err(|err| sdk_error("DescribeTimeToLive", err))?;
    let status = described
        .time_to_live_description()
        .and_then(|ttl| ttl.time_to_live_status());
    if matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .map_err(build_error)?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(|err| sdk_error("UpdateTimeToLive", err))?;
    Ok(())
}

fn attribute_definitions(spec: &TableSpec) -> StoreResult<Vec<AttributeDefinition>> {
    let mut attributes: Vec<&str> = Vec::new();
    for key in std::iter::once(&spec.key).chain(spec.indexes.iter().map(|index| &index.key)) {
        for attribute in std::iter::once(key.partition).chain(key.sort) {
            if !attributes.contains(&attribute) {
                attributes.push(attribute);
            }
        }
    }
    attributes
        .into_iter()
        .map(|name| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        })
        .collect()
}

fn key_schema(key: &KeySchema) -> StoreResult<Vec<KeySchemaElement>> {
    std::iter::once((key.partition, KeyType::Hash))
        .chain(key.sort.map(|sort| (sort, KeyType::Range)))
        .map(|(name, kind)| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_error)
        })
        .collect()
}

fn global_secondary_indexes(spec: &TableSpec) -> StoreResult<Option<Vec<GlobalSecondaryIndex>>> {
    if spec.indexes.is_empty() {
        return Ok(None);
    }
    spec.indexes
        .iter()
        .map(|index| {
            GlobalSecondaryIndex::builder()
                .index_name(index.name)
                .set_key_schema(Some(key_schema(&index.key)?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(build_error)
        })
        .collect::<StoreResult<Vec<_>>>()
        .map(Some)
}

async fn wait_until_active(client: &Client, name: &str) -> StoreResult<()> {
    // A new on-demand table is usually active within seconds; DynamoDB Local's at once.
    for _ in 0..240 {
        let described = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|err| sdk_error("DescribeTable", err))?;
        let table = described.table();
        let indexes_active = table
            .map(|t| t.global_secondary_indexes())
            .unwrap_or_default()
            .iter()
            .all(|index| index.index_status().is_none_or(|s| s.as_str() == "ACTIVE"));
        if table.and_then(|t| t.table_status()) == Some(&TableStatus::Active) && indexes_active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Unavailable(format!(
        "table {name} did not become active within 2 minutes"
    )))
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    tables: TableNames,
}

impl DynamoStore {
    pub fn new(client: Client, tables: TableNames) -> Self {
        Self { client, tables }
    }

    /// One consistent `GetItem`.
    async fn get_item(&self, table: &str, key: Item) -> StoreResult<Option<Item>> {
        let output = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| sdk_error("GetItem", err))?;
        Ok(output.item)
    }

    /// Runs a `BatchGetItem` to completion: keys DynamoDB returns unprocessed (throttling) are
    /// asked for again after a short pause, a bounded number of times. Items by table name.
    async fn batch_get(
        &self,
        mut request: HashMap<String, KeysAndAttributes>,
    ) -> StoreResult<HashMap<String, Vec<Item>>> {
        let mut found: HashMap<String, Vec<Item>> = HashMap::new();
        for attempt in 1..=BATCH_GET_ATTEMPTS {
            let output = self
                .client
                .batch_get_item()
                .set_request_items(Some(request))
                .send()
                .await
                .map_err(|err| sdk_error("BatchGetItem", err))?;
            for (table, items) in output.responses.unwrap_or_default() {
                found.entry(table).or_default().extend(items);
            }
            match output.unprocessed_keys.filter(|keys| !keys.is_empty()) {
                None => return Ok(found),
                Some(unprocessed) => {
                    request = unprocessed;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(StoreError::Unavailable(
            "BatchGetItem: keys stayed unprocessed (throttled)".into(),
        ))
    }

    /// Every item a query matches, one request per 1 MB page.
    async fn query_all(query: QueryFluentBuilder) -> StoreResult<Vec<Item>> {
        query
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|err| sdk_error("Query", err))
    }

    /// The request for one write. `decrement` says how a decrement of the agent counter is sent
    /// this time (see [`Decrement`]); other writes ignore it.
    fn transact_item(&self, write: &Write, decrement: Decrement) -> StoreResult<TransactWriteItem> {
        let tables = &self.tables;
        let id = item_id(write);
        match write {
            Write::CreateOrg(org) => put(&tables.orgs, org_item(org), absent()),
            Write::SetPlan { plan, .. } => {
                let expressions = Expressions::condition("attribute_exists(#pk)")
                    .name("#pk", PK)
                    .update("SET #plan = :plan")
                    .name("#plan", PLAN)
                    .value(":plan", s(plan.as_str()));
                update(&tables.orgs, id.key(), expressions)
            }
            Write::PutAgent {
                agent,
                expected_version,
            } => put(
                &tables.agents,
                agent_item(agent),
                version_guard(*expected_version),
            ),
            Write::ClaimAgentName { agent_id, .. } => {
                let mut item = id.key();
                item.insert("agentId".into(), s(agent_id.to_string()));
                put(&tables.agents, item, absent())
            }
            Write::ReleaseAgentName { .. } => delete(&tables.agents, id.key()),
            Write::PutCredential {
                credential,
                expected_version,
            } => put(
                &tables.credentials,
                credential_item(credential),
                version_guard(*expected_version),
            ),
            Write::CountAgents { delta, limit, .. } => {
                let expressions = match u64::try_from(*delta) {
                    Ok(increment) => counter_increment(increment, *limit),
                    Err(_) => counter_decrement(delta.unsigned_abs(), decrement),
                };
                update(&tables.orgs, id.key(), expressions)
            }
            Write::CountTokenRequest { limit, .. } => {
                update(&tables.orgs, id.key(), counter_increment(1, *limit))
            }
            Write::RevokeToken {
                org_id, expires_at, ..
            } => {
                let mut item = id.key();
                item.insert("orgId".into(), s(org_id.to_string()));
                item.insert(EXPIRES_AT.into(), n(ttl_seconds(expires_at)));
                item.insert("expiresAtTime".into(), time(expires_at));
                put(&tables.revoked_tokens, item, Expressions::default())
            }
            Write::Audit(event) => put(&tables.audit, audit_item(event), Expressions::default()),
            Write::Tally { expires_at, .. } => {
                let expressions = Expressions::default()
                    .update("ADD #count :one SET #ttl = :ttl, #time = :time")
                    .name("#count", COUNT)
                    .name("#ttl", EXPIRES_AT)
                    .name("#time", "expiresAtTime")
                    .value(":one", n(1))
                    .value(":ttl", n(ttl_seconds(expires_at)))
                    .value(":time", time(expires_at));
                update(&tables.throttle, id.key(), expressions)
            }
        }
    }
}

/// The item a write touches.
fn item_id(write: &Write) -> ItemId {
    let org_item =
        |org_id: &Uuid, sk: String| ItemId::new(TableRole::Orgs, org_id.to_string(), Some(sk));
    let agents_item =
        |org_id: &Uuid, sk: String| ItemId::new(TableRole::Agents, org_id.to_string(), Some(sk));
    match write {
        Write::CreateOrg(org) => org_item(&org.org_id, ORG_SK.into()),
        Write::SetPlan { org_id, .. } => org_item(org_id, ORG_SK.into()),
        Write::PutAgent { agent, .. } => agents_item(&agent.org_id, agent_sk(agent.agent_id)),
        Write::ClaimAgentName {
            org_id, name_key, ..
        }
        | Write::ReleaseAgentName { org_id, name_key } => agents_item(org_id, name_sk(name_key)),
        Write::PutCredential { credential, .. } => ItemId::new(
            TableRole::Credentials,
            credential.client_id.to_string(),
            None,
        ),
        Write::CountAgents { org_id, .. } => org_item(org_id, AGENT_COUNTER_SK.into()),
        Write::CountTokenRequest { org_id, month, .. } => org_item(org_id, token_counter_sk(month)),
        Write::RevokeToken { jti, .. } => ItemId::new(TableRole::RevokedTokens, jti.clone(), None),
        Write::Tally { key, .. } => ItemId::new(TableRole::Throttle, key.clone(), None),
        Write::Audit(event) => ItemId::new(
            TableRole::Audit,
            event.org_id.to_string(),
            Some(audit_sk(&event.timestamp, event.event_id)),
        ),
    }
}

/// How a decrement of the agent counter is sent. The count never goes below zero, which no
/// single update expression can say, so a decrement is one of two conditional updates whose
/// conditions are each other's negation: subtract when the count covers the decrement, or set
/// zero when it does not. The first attempt subtracts; if exactly that condition fails, the
/// transaction is sent again with the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decrement {
    Subtract,
    Floor,
}

impl Decrement {
    fn other(self) -> Self {
        match self {
            Decrement::Subtract => Decrement::Floor,
            Decrement::Floor => Decrement::Subtract,
        }
    }
}

fn is_decrement(write: &Write) -> bool {
    matches!(write, Write::CountAgents { delta, .. } if *delta < 0)
}

#[async_trait]
impl Commit for DynamoStore {
    /// One `TransactWriteItems`, sent again only in two cases:
    /// - DynamoDB cancels it for a conflict with a concurrent transaction on one of its items: up
    ///   to three more attempts after short jittered pauses. If it still conflicts, the result is
    ///   [`StoreError::Unavailable`], not `ConditionFailed`: no condition was found false, and a
    ///   caller must not read a lost race into it (for a quota counter, `ConditionFailed` means
    ///   "limit reached").
    /// - The first failed condition is that of an agent-counter decrement (see [`Decrement`]):
    ///   the decrement is switched to its other form and the batch sent again, at most four
    ///   times, after which the counter is taken to be too busy (`Unavailable`).
    ///
    /// A batch that touches one item twice is refused as `Internal` before anything is sent:
    /// DynamoDB rejects such a transaction, and no caller needs one.
    async fn commit(&self, writes: Vec<Write>) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        if writes.len() > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::Internal(format!(
                "a batch of {} writes exceeds DynamoDB's {MAX_TRANSACTION_ITEMS} items per transaction",
                writes.len()
            )));
        }
        let mut seen: HashMap<ItemId, usize> = HashMap::with_capacity(writes.len());
        for (index, write) in writes.iter().enumerate() {
            if let Some(first) = seen.insert(item_id(write), index) {
                return Err(StoreError::Internal(format!(
                    "writes {first} and {index} of the batch touch the same item, which one DynamoDB transaction cannot"
                )));
            }
        }

        let mut decrements = vec![Decrement::Subtract; writes.len()];
        let mut conflicts = 0;
        let mut switches = 0;
        loop {
            let items = writes
                .iter()
                .zip(&decrements)
                .map(|(write, decrement)| self.transact_item(write, *decrement))
                .collect::<StoreResult<Vec<_>>>()?;
            let err = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                err.as_service_error()
            else {
                return Err(sdk_error("TransactWriteItems", err));
            };
            match cancellation(cancelled.cancellation_reasons()) {
                Cancellation::Condition(index) if is_decrement(&writes[index]) => {
                    if switches == MAX_DECREMENT_SWITCHES {
                        return Err(StoreError::Unavailable(format!(
                            "TransactWriteItems: the agent counter of write {index} kept changing"
                        )));
                    }
                    switches += 1;
                    decrements[index] = decrements[index].other();
                }
                Cancellation::Condition(index) => {
                    return Err(match writes.get(index) {
                        Some(write) => write.condition_failed(index),
                        None => StoreError::Internal(format!(
                            "TransactWriteItems cancelled write {index} of a batch of {}",
                            writes.len()
                        )),
                    });
                }
                Cancellation::Conflict(index) => {
                    conflicts += 1;
                    if conflicts == TRANSACTION_ATTEMPTS {
                        return Err(StoreError::Unavailable(format!(
                            "TransactWriteItems: write {index} kept conflicting with concurrent transactions \
                             ({TRANSACTION_ATTEMPTS} attempts)"
                        )));
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                }
                Cancellation::Throttled(codes) => {
                    return Err(StoreError::Unavailable(format!(
                        "TransactWriteItems throttled: {codes}"
                    )));
                }
                Cancellation::Other(codes) => {
                    return Err(StoreError::Internal(format!(
                        "TransactWriteItems cancelled: {codes}"
                    )));
                }
            }
        }
    }
}

enum Cancellation {
    /// Index of the first write whose condition failed.
    Condition(usize),
    /// Index of the first write that conflicted with another transaction.
    Conflict(usize),
    Throttled(String),
    Other(String),
}

/// Reads the per-item reasons (one per write, in order) of a cancelled transaction. A failed
/// condition wins over everything else, because it is the answer the caller acts on.
fn cancellation(reasons: &[CancellationReason]) -> Cancellation {
    let code = |reason: &CancellationReason| reason.code().unwrap_or("None").to_owned();
    if let Some(index) = reasons
        .iter()
        .position(|r| r.code() == Some("ConditionalCheckFailed"))
    {
        return Cancellation::Condition(index);
    }
    if let Some(index) = reasons
        .iter()
        .position(|r| r.code() == Some("TransactionConflict"))
    {
        return Cancellation::Conflict(index);
    }
    let codes = reasons.iter().map(code).collect::<Vec<_>>().join(", ");
    if reasons
        .iter()
        .any(|r| r.code().is_some_and(is_throttling_code))
    {
        Cancellation::Throttled(codes)
    } else {
        Cancellation::Other(codes)
    }
}

/// 20, 40, 80 ms, each plus up to as much again at random, so that two writers that conflicted
/// do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = 20u64 << attempt.saturating_sub(1).min(6);
    let jitter = u64::from(getrandom::u32().unwrap_or_default()) % (base + 1);
    Duration::from_millis(base + jitter)
}

#[async_trait]
impl OrgReader for DynamoStore {
    /// One consistent `GetItem`.
    async fn get_org(&self, org_id: Uuid) -> StoreResult<Option<Organization>> {
        let key = pk_sk(org_id.to_string(), ORG_SK);
        self.get_item(&self.tables.orgs, key)
            .await?
            .map(|item| org_from(&item))
            .transpose()
    }

    /// A consistent `Scan` of the orgs table, one request per 1 MB page, keeping the `ORG`
    /// records. Operator use only.
    async fn list_orgs(&self) -> StoreResult<Vec<Organization>> {
        let items = self
            .client
            .scan()
            .table_name(&self.tables.orgs)
            .consistent_read(true)
            .filter_expression("#sk = :org")
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":org", s(ORG_SK))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|err| sdk_error("Scan", err))?;
        let mut orgs = items
            .iter()
            .map(org_from)
            .collect::<StoreResult<Vec<_>>>()?;
        orgs.sort_by_key(|org| (org.created_at, org.org_id));
        Ok(orgs)
    }

    /// One consistent `BatchGetItem` of the two counters (repeated only for keys DynamoDB
    /// returns unprocessed under throttling). A counter never written counts zero.
    async fn usage(&self, org_id: Uuid, month: &str) -> StoreResult<Usage> {
        let table = &self.tables.orgs;
        let agents_sk = AGENT_COUNTER_SK.to_owned();
        let tokens_sk = token_counter_sk(month);
        let keys = KeysAndAttributes::builder()
            .keys(pk_sk(org_id.to_string(), &agents_sk))
            .keys(pk_sk(org_id.to_string(), &tokens_sk))
            .consistent_read(true)
            .build()
            .map_err(build_error)?;
        let mut found = self
            .batch_get(HashMap::from([(table.clone(), keys)]))
            .await?;
        let mut usage = Usage::default();
        for item in found.remove(table).unwrap_or_default() {
            let reader = ItemReader::new(&item, "usage counter");
            // A decrement that ran before its increment could leave -1 for a moment; the usage
            // shown never goes below zero.
            let count = u64::try_from(reader.i64(COUNT)?).unwrap_or(0);
            let sk = reader.s(SK)?;
            if sk == agents_sk {
                usage.agents = count;
            } else if sk == tokens_sk {
                usage.token_requests = count;
            }
        }
        Ok(usage)
    }
}

#[async_trait]
impl AgentReader for DynamoStore {
    /// One consistent `GetItem`.
    async fn get_agent(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Option<Agent>> {
        let key = pk_sk(org_id.to_string(), &agent_sk(agent_id));
        self.get_item(&self.tables.agents, key)
            .await?
            .map(|item| agent_from(&item))
            .transpose()
    }

    /// A consistent `Query` (begins_with `AGENT#`), one request per 1 MB page.
    async fn list_agents(&self, org_id: Uuid) -> StoreResult<Vec<Agent>> {
        let query = self
            .client
            .query()
            .table_name(&self.tables.agents)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(org_id.to_string()))
            .expression_attribute_values(":prefix", s(AGENT_SK_PREFIX));
        let items = Self::query_all(query).await?;
        let mut agents = items
            .iter()
            .map(agent_from)
            .collect::<StoreResult<Vec<_>>>()?;
        agents.sort_by_key(|agent| (agent.created_at, agent.agent_id));
        Ok(agents)
    }
}

#[async_trait]
impl CredentialReader for DynamoStore {
    /// One consistent `GetItem` by client id.
    async fn credential_by_client_id(&self, client_id: Uuid) -> StoreResult<Option<Credential>> {
        let key = HashMap::from([(PK.to_owned(), s(client_id.to_string()))]);
        self.get_item(&self.tables.credentials, key)
            .await?
            .map(|item| credential_from(&item))
            .transpose()
    }

    /// Two round trips: a `Query` of the agent index finds the client id (eventually
    /// consistent), then a consistent `GetItem` reads the authoritative record.
    async fn get_credential(
        &self,
        org_id: Uuid,
        agent_id: Uuid,
        credential_id: Uuid,
    ) -> StoreResult<Option<Credential>> {
        let found = self
            .client
            .query()
            .table_name(&self.tables.credentials)
            .index_name(CREDENTIALS_BY_AGENT_INDEX)
            .key_condition_expression("#agent = :agent AND #credential = :credential")
            .expression_attribute_names("#agent", AGENT_KEY)
            .expression_attribute_names("#credential", CREDENTIAL_ID)
            .expression_attribute_values(":agent", s(agent_key(org_id, agent_id)))
            .expression_attribute_values(":credential", s(credential_id.to_string()))
            .send()
            .await
            .map_err(|err| sdk_error("Query", err))?;
        let Some(indexed) = found.items().first() else {
            return Ok(None);
        };
        let client_id = ItemReader::new(indexed, "credential").uuid(PK)?;
        let credential = self.credential_by_client_id(client_id).await?;
        Ok(credential.filter(|c| {
            c.org_id == org_id && c.agent_id == agent_id && c.credential_id == credential_id
        }))
    }

    /// A `Query` of the agent index, one request per 1 MB page. Eventually consistent: a
    /// credential written a moment ago may be missing or show its previous version.
    async fn list_credentials(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Vec<Credential>> {
        let query = self
            .client
            .query()
            .table_name(&self.tables.credentials)
            .index_name(CREDENTIALS_BY_AGENT_INDEX)
            .key_condition_expression("#agent = :agent")
            .expression_attribute_names("#agent", AGENT_KEY)
            .expression_attribute_values(":agent", s(agent_key(org_id, agent_id)));
        let items = Self::query_all(query).await?;
        let mut credentials = items
            .iter()
            .map(credential_from)
            .collect::<StoreResult<Vec<_>>>()?;
        credentials.sort_by_key(|c| (c.created_at, c.credential_id));
        Ok(credentials)
    }
}

#[async_trait]
impl RevocationReader for DynamoStore {
    /// One consistent `BatchGetItem` over the revoked-tokens and agents tables (repeated only
    /// for keys DynamoDB returns unprocessed under throttling).
    async fn token_standing(
        &self,
        jti: &str,
        org_id: Uuid,
        agent_id: Uuid,
    ) -> StoreResult<(bool, Option<Agent>)> {
        let revoked_table = &self.tables.revoked_tokens;
        let agents_table = &self.tables.agents;
        let revoked_keys = KeysAndAttributes::builder()
            .keys(HashMap::from([(JTI.to_owned(), s(jti))]))
            .consistent_read(true)
            .build()
            .map_err(build_error)?;
        let agent_keys = KeysAndAttributes::builder()
            .keys(pk_sk(org_id.to_string(), &agent_sk(agent_id)))
            .consistent_read(true)
            .build()
            .map_err(build_error)?;
        let mut found = self
            .batch_get(HashMap::from([
                (revoked_table.clone(), revoked_keys),
                (agents_table.clone(), agent_keys),
            ]))
            .await?;
        let revoked = found
            .remove(revoked_table)
            .is_some_and(|items| !items.is_empty());
        let agent = found
            .remove(agents_table)
            .and_then(|items| items.into_iter().next())
            .map(|item| agent_from(&item))
            .transpose()?;
        Ok((revoked, agent))
    }

    /// One consistent `GetItem` that projects only the key.
    async fn is_token_revoked(&self, jti: &str) -> StoreResult<bool> {
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.revoked_tokens)
            .key(JTI, s(jti))
            .consistent_read(true)
            .projection_expression("#jti")
            .expression_attribute_names("#jti", JTI)
            .send()
            .await
            .map_err(|err| sdk_error("GetItem", err))?;
        Ok(output.item.is_some())
    }
}

#[async_trait]
impl ThrottleReader for DynamoStore {
    /// One `UpdateItem` that adds and returns the new count.
    async fn add_tally(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<u64> {
        let output = self
            .client
            .update_item()
            .table_name(&self.tables.throttle)
            .key(PK, s(key))
            .update_expression("ADD #count :one SET #ttl = :ttl, #time = :time")
            .expression_attribute_names("#count", COUNT)
            .expression_attribute_names("#ttl", EXPIRES_AT)
            .expression_attribute_names("#time", "expiresAtTime")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(ttl_seconds(&expires_at)))
            .expression_attribute_values(":time", time(&expires_at))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|err| sdk_error("UpdateItem", err))?;
        let attributes = output.attributes.unwrap_or_default();
        let reader = ItemReader::new(&attributes, "throttle counter");
        Ok(u64::try_from(reader.i64(COUNT)?).unwrap_or(0))
    }

    /// As [`ThrottleReader::client_standing`] without a credential.
    async fn tallies(&self, keys: &[String], now: DateTime<Utc>) -> StoreResult<Vec<u64>> {
        Ok(self.client_standing(None, keys, now).await?.1)
    }

    /// One consistent `BatchGetItem` over the credentials and throttle tables (repeated only
    /// for keys DynamoDB returns unprocessed under throttling). TTL deletes lazily, so expired
    /// counters are skipped here.
    async fn client_standing(
        &self,
        client_id: Option<Uuid>,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<(Option<Credential>, Vec<u64>)> {
        let throttle_table = &self.tables.throttle;
        let credentials_table = &self.tables.credentials;
        let mut unique: Vec<&String> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        let mut request = HashMap::new();
        if !unique.is_empty() {
            let mut throttle_keys = KeysAndAttributes::builder().consistent_read(true);
            for key in unique {
                throttle_keys =
                    throttle_keys.keys(HashMap::from([(PK.to_owned(), s(key.clone()))]));
            }
            request.insert(
                throttle_table.clone(),
                throttle_keys.build().map_err(build_error)?,
            );
        }
        if let Some(id) = client_id {
            let credential_keys = KeysAndAttributes::builder()
                .keys(HashMap::from([(PK.to_owned(), s(id.to_string()))]))
                .consistent_read(true)
                .build()
                .map_err(build_error)?;
            request.insert(credentials_table.clone(), credential_keys);
        }
        if request.is_empty() {
            return Ok((None, vec![0; keys.len()]));
        }
        let mut found = self.batch_get(request).await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for item in found.remove(throttle_table).unwrap_or_default() {
            let reader = ItemReader::new(&item, "throttle counter");
            if reader.time("expiresAtTime")? > now {
                counts.insert(
                    reader.s(PK)?.to_owned(),
                    u64::try_from(reader.i64(COUNT)?).unwrap_or(0),
                );
            }
        }
        let credential = found
            .remove(credentials_table)
            .and_then(|items| items.into_iter().next())
            .map(|item| credential_from(&item))
            .transpose()?;
        Ok((
            credential,
            keys.iter()
                .map(|k| counts.get(k).copied().unwrap_or(0))
                .collect(),
        ))
    }
}

#[async_trait]
impl AuditReader for DynamoStore {
    /// `Query` requests, newest first, on the table (consistent) or on the agent or action index
    /// (eventually consistent). The window and the cursor are key conditions; outcome, TTL and
    /// the second of agent and action are filters. The first request asks for `limit + 1` items,
    /// the one extra deciding `next`; if filters drop items, further requests continue from
    /// `LastEvaluatedKey` with a limit that doubles each time (at most 1000), so a selective
    /// filter costs few round trips and a page never reads more than about twice what it
    /// evaluates. Usually one round trip.
    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<AuditPage> {
        let empty = AuditPage {
            events: Vec::new(),
            next: None,
        };
        if query.limit == 0 {
            return Ok(empty);
        }
        let org = query.org_id;
        let (index, partition_attribute, partition) = match (query.agent_id, query.action) {
            (Some(agent_id), _) => (
                Some(AUDIT_BY_AGENT_INDEX),
                AGENT_KEY,
                agent_key(org, agent_id),
            ),
            (None, Some(action)) => (
                Some(AUDIT_BY_ACTION_INDEX),
                ACTION_KEY,
                action_key(org, action),
            ),
            (None, None) => (None, PK, org.to_string()),
        };
        let low = audit_sk_floor(&query.not_before);
        // Upper bound, inclusive (BETWEEN is the only two-sided key condition): the last key of
        // the `until` millisecond, or the cursor's own key, which the loop below skips.
        let after_key = query
            .after
            .map(|after| audit_sk(&after.timestamp, after.event_id));
        let high = [
            query.until.as_ref().map(audit_sk_ceiling),
            after_key.clone(),
        ]
        .into_iter()
        .flatten()
        .min();

        let mut expressions = Expressions::condition(match high {
            Some(_) => "#p = :p AND #sk BETWEEN :low AND :high",
            None => "#p = :p AND #sk >= :low",
        })
        .name("#p", partition_attribute)
        .name("#sk", SK)
        .value(":p", s(partition))
        .value(":low", s(low.clone()));
        if let Some(high) = &high {
            if *high < low {
                return Ok(empty);
            }
            expressions = expressions.value(":high", s(high.clone()));
        }
        // TTL deletes lazily, so expired events are filtered out here; the exact check below
        // compares the full-precision expiry.
        let mut filters = vec!["#expiresAt > :now"];
        expressions = expressions
            .name("#expiresAt", EXPIRES_AT)
            .value(":now", n(query.now.timestamp()));
        if let Some(outcome) = query.outcome {
            filters.push("#outcome = :outcome");
            expressions = expressions
                .name("#outcome", OUTCOME)
                .value(":outcome", s(outcome.as_str()));
        }
        if let (Some(_), Some(action)) = (query.agent_id, query.action) {
            filters.push("#action = :action");
            expressions = expressions
                .name("#action", ACTION)
                .value(":action", s(action.as_str()));
        }

        let want = query.limit.saturating_add(1);
        let mut found: Vec<AuditEvent> = Vec::with_capacity(want.min(MAX_AUDIT_QUERY_LIMIT));
        let mut start_key = None;
        // With a cursor, the cursor's own item is read and skipped: one more item, so that a page
        // after the first still takes one request.
        let mut request_limit = want
            .saturating_add(usize::from(after_key.is_some()))
            .min(MAX_AUDIT_QUERY_LIMIT);
        'pages: loop {
            let output = self
                .client
                .query()
                .table_name(&self.tables.audit)
                .set_index_name(index.map(str::to_owned))
                .consistent_read(index.is_none())
                .scan_index_forward(false)
                .key_condition_expression(expressions.condition.clone().unwrap_or_default())
                .filter_expression(filters.join(" AND "))
                .set_expression_attribute_names(Some(expressions.names.clone()))
                .set_expression_attribute_values(Some(expressions.values.clone()))
                .limit(i32::try_from(request_limit).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|err| sdk_error("Query", err))?;
            for item in output.items() {
                let event = audit_from(item)?;
                if after_key.as_deref() == Some(audit_sk(&event.timestamp, event.event_id).as_str())
                {
                    continue;
                }
                if event_matches(query, &event) {
                    found.push(event);
                    if found.len() == want {
                        break 'pages;
                    }
                }
            }
            match output.last_evaluated_key.filter(|key| !key.is_empty()) {
                Some(key) => start_key = Some(key),
                None => break,
            }
            request_limit = (request_limit * 2)
                .max(want - found.len())
                .min(MAX_AUDIT_QUERY_LIMIT);
        }

        let next = if found.len() > query.limit {
            found.truncate(query.limit);
            found.last().map(|event| AuditPosition {
                timestamp: event.timestamp,
                event_id: event.event_id,
            })
        } else {
            None
        };
        Ok(AuditPage {
            events: found,
            next,
        })
    }

    /// One `Query` of the event-id index (eventually consistent: events never change, so only
    /// an event written a moment ago can be missed).
    async fn get_audit_event(
        &self,
        org_id: Uuid,
        event_id: Uuid,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<AuditEvent>> {
        let output = self
            .client
            .query()
            .table_name(&self.tables.audit)
            .index_name(AUDIT_BY_EVENT_ID_INDEX)
            .key_condition_expression("#event = :event")
            .expression_attribute_names("#event", EVENT_ID)
            .expression_attribute_values(":event", s(event_id.to_string()))
            .send()
            .await
            .map_err(|err| sdk_error("Query", err))?;
        for item in output.items() {
            let event = audit_from(item)?;
            if event.org_id == org_id && event.timestamp >= not_before && event.expires_at > now {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

/// The exact filter, at full timestamp precision; the key conditions and filter expression only
/// narrow what is read.
fn event_matches(query: &AuditQuery, event: &AuditEvent) -> bool {
    event.org_id == query.org_id
        && event.expires_at > query.now
        && event.timestamp >= query.not_before
        && query.until.is_none_or(|until| event.timestamp <= until)
        && query
            .agent_id
            .is_none_or(|agent| event.subject_agent_id == Some(agent))
        && query.action.is_none_or(|action| event.action == action)
        && query.outcome.is_none_or(|outcome| event.outcome == outcome)
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

type Item = HashMap<String, AttributeValue>;

/// The table and key of one write, to refuse a batch that touches an item twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ItemId {
    table: TableRole,
    partition: String,
    sort: Option<String>,
}

impl ItemId {
    fn new(table: TableRole, partition: String, sort: Option<String>) -> Self {
        Self {
            table,
            partition,
            sort,
        }
    }

    fn key(&self) -> Item {
        let partition_attribute = if self.table == TableRole::RevokedTokens {
            JTI
        } else {
            PK
        };
        let mut key = HashMap::from([(partition_attribute.to_owned(), s(self.partition.clone()))]);
        if let Some(sort) = &self.sort {
            key.insert(SK.to_owned(), s(sort.clone()));
        }
        key
    }
}

fn pk_sk(partition: String, sort: &str) -> Item {
    HashMap::from([(PK.to_owned(), s(partition)), (SK.to_owned(), s(sort))])
}

fn agent_sk(agent_id: Uuid) -> String {
    format!("{AGENT_SK_PREFIX}{agent_id}")
}

fn name_sk(name_key: &str) -> String {
    format!("NAME#{name_key}")
}

fn token_counter_sk(month: &str) -> String {
    format!("USAGE#TOKENS#{month}")
}

fn agent_key(org_id: Uuid, agent_id: Uuid) -> String {
    format!("{org_id}#{agent_id}")
}

fn action_key(org_id: Uuid, action: AuditAction) -> String {
    format!("{org_id}#{}", action.as_str())
}

/// Milliseconds since the epoch, zero-padded to 13 digits so that string order is time order
/// (until the year 2286), then the event id, whose hyphenated lowercase form sorts like its bytes.
fn audit_sk(timestamp: &DateTime<Utc>, event_id: Uuid) -> String {
    format!("{:013}#{event_id}", timestamp.timestamp_millis().max(0))
}

/// Sorts before every key of the millisecond `at` falls in.
fn audit_sk_floor(at: &DateTime<Utc>) -> String {
    format!("{:013}", at.timestamp_millis().max(0))
}

/// Sorts after every key of the millisecond `at` falls in (`~` follows `#`, digits and letters).
fn audit_sk_ceiling(at: &DateTime<Utc>) -> String {
    format!("{:013}#~", at.timestamp_millis().max(0))
}

/// TTL attributes are whole seconds; rounding up means DynamoDB never deletes an item before
/// it has expired.
fn ttl_seconds(at: &DateTime<Utc>) -> i64 {
    let seconds = at.timestamp();
    if at.timestamp_subsec_nanos() > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    }
}

// ---------------------------------------------------------------------------------------------
// Transaction items and their conditions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Expressions {
    condition: Option<String>,
    update: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expressions {
    fn condition(expression: &str) -> Self {
        Self {
            condition: Some(expression.to_owned()),
            ..Self::default()
        }
    }

    fn update(mut self, expression: &str) -> Self {
        self.update = Some(expression.to_owned());
        self
    }

    fn name(mut self, placeholder: &str, attribute: &str) -> Self {
        self.names
            .insert(placeholder.to_owned(), attribute.to_owned());
        self
    }

    fn value(mut self, placeholder: &str, value: AttributeValue) -> Self {
        self.values.insert(placeholder.to_owned(), value);
        self
    }
}

/// `PutAgent`/`PutCredential`: a new record must not exist yet; an update must find exactly the
/// version it read (a missing item has no version, so that fails too).
fn version_guard(expected: Option<u64>) -> Expressions {
    match expected {
        None => absent(),
        Some(version) => Expressions::condition("#version = :expected")
            .name("#version", VERSION)
            .value(":expected", n(version)),
    }
}

/// `ADD` creates a missing counter at zero plus the increment. The count before must be below
/// `limit`; a counter never written counts zero, which is below any limit but zero.
fn counter_increment(increment: u64, limit: u64) -> Expressions {
    let condition = if limit == 0 {
        "#count < :limit"
    } else {
        "attribute_not_exists(#count) OR #count < :limit"
    };
    Expressions::condition(condition)
        .update("ADD #count :delta")
        .name("#count", COUNT)
        .value(":delta", n(increment))
        .value(":limit", n(limit))
}

/// One of the two forms of a decrement by `magnitude` (see [`Decrement`]).
fn counter_decrement(magnitude: u64, decrement: Decrement) -> Expressions {
    let expressions = match decrement {
        Decrement::Subtract => Expressions::condition("#count >= :magnitude")
            .update("ADD #count :delta")
            .value(":delta", n(format!("-{magnitude}"))),
        Decrement::Floor => {
            Expressions::condition("attribute_not_exists(#count) OR #count < :magnitude")
                .update("SET #count = :zero")
                .value(":zero", n(0))
        }
    };
    expressions
        .name("#count", COUNT)
        .value(":magnitude", n(magnitude))
}

/// A create: no item with this key exists yet.
fn absent() -> Expressions {
    Expressions::condition("attribute_not_exists(#pk)").name("#pk", PK)
}

/// DynamoDB rejects empty name and value maps, so an empty map is sent as none.
fn non_empty<V>(map: HashMap<String, V>) -> Option<HashMap<String, V>> {
    (!map.is_empty()).then_some(map)
}

fn put(table: &str, item: Item, expressions: Expressions) -> StoreResult<TransactWriteItem> {
    let Expressions {
        condition,
        update: _,
        names,
        values,
    } = expressions;
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(condition)
        .set_expression_attribute_names(non_empty(names))
        .set_expression_attribute_values(non_empty(values))
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn update(table: &str, key: Item, expressions: Expressions) -> StoreResult<TransactWriteItem> {
    let Expressions {
        condition,
        update,
        names,
        values,
    } = expressions;
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key))
        .set_update_expression(update)
        .set_condition_expression(condition)
        .set_expression_attribute_names(non_empty(names))
        .set_expression_attribute_values(non_empty(values))
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().update(update).build())
}

fn delete(table: &str, key: Item) -> StoreResult<TransactWriteItem> {
    let delete = Delete::builder()
        .table_name(table)
        .set_key(Some(key))
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

// ---------------------------------------------------------------------------------------------
// Records ⇄ items. Optional fields are left out of the item when absent. Timestamps are stored
// as RFC 3339 strings at full precision, so that a record reads back exactly as written.
// ---------------------------------------------------------------------------------------------

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn time(at: &DateTime<Utc>) -> AttributeValue {
    s(at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn string_list(values: &[String]) -> AttributeValue {
    AttributeValue::L(values.iter().map(|value| s(value.clone())).collect())
}

fn insert_opt(item: &mut Item, name: &str, value: Option<AttributeValue>) {
    if let Some(value) = value {
        item.insert(name.to_owned(), value);
    }
}

fn org_item(org: &Organization) -> Item {
    let mut item = pk_sk(org.org_id.to_string(), ORG_SK);
    item.insert("name".into(), s(org.name.clone()));
    item.insert(PLAN.into(), s(org.plan.as_str()));
    item.insert("createdAt".into(), time(&org.created_at));
    item
}

fn org_from(item: &Item) -> StoreResult<Organization> {
    let r = ItemReader::new(item, "organization");
    Ok(Organization {
        org_id: r.uuid(PK)?,
        name: r.s("name")?.to_owned(),
        plan: r.parse(PLAN, Plan::parse)?,
        created_at: r.time("createdAt")?,
    })
}

fn agent_item(agent: &Agent) -> Item {
    let mut item = pk_sk(agent.org_id.to_string(), &agent_sk(agent.agent_id));
    item.insert("agentId".into(), s(agent.agent_id.to_string()));
    item.insert("name".into(), s(agent.name.clone()));
    insert_opt(&mut item, "description", agent.description.clone().map(s));
    insert_opt(&mut item, "owner", agent.owner.clone().map(s));
    item.insert("capabilities".into(), string_list(&agent.capabilities));
    item.insert("scopes".into(), string_list(&agent.scopes));
    item.insert(
        "metadata".into(),
        AttributeValue::M(
            agent
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), s(v.clone())))
                .collect(),
        ),
    );
    item.insert("status".into(), s(agent.status.as_str()));
    item.insert("createdAt".into(), time(&agent.created_at));
    item.insert("updatedAt".into(), time(&agent.updated_at));
    insert_opt(
        &mut item,
        "decommissionedAt",
        agent.decommissioned_at.as_ref().map(time),
    );
    item.insert("activeCredentials".into(), n(agent.active_credentials));
    item.insert(VERSION.into(), n(agent.version));
    item
}

fn agent_from(item: &Item) -> StoreResult<Agent> {
    let r = ItemReader::new(item, "agent");
    Ok(Agent {
        agent_id: r.uuid("agentId")?,
        org_id: r.uuid(PK)?,
        name: r.s("name")?.to_owned(),
        description: r.opt_s("description")?.map(str::to_owned),
        owner: r.opt_s("owner")?.map(str::to_owned),
        capabilities: r.string_list("capabilities")?,
        scopes: r.string_list("scopes")?,
        metadata: r.string_map("metadata")?,
        status: r.parse("status", AgentStatus::parse)?,
        created_at: r.time("createdAt")?,
        updated_at: r.time("updatedAt")?,
        decommissioned_at: r.opt_time("decommissionedAt")?,
        active_credentials: r.u64("activeCredentials")?,
        version: r.u64(VERSION)?,
    })
}

fn credential_item(credential: &Credential) -> Item {
    let mut item = HashMap::from([(PK.to_owned(), s(credential.client_id.to_string()))]);
    item.insert(
        AGENT_KEY.into(),
        s(agent_key(credential.org_id, credential.agent_id)),
    );
    item.insert(
        CREDENTIAL_ID.into(),
        s(credential.credential_id.to_string()),
    );
    item.insert("orgId".into(), s(credential.org_id.to_string()));
    item.insert("agentId".into(), s(credential.agent_id.to_string()));
    item.insert("secretHash".into(), s(credential.secret_hash.clone()));
    item.insert("status".into(), s(credential.status.as_str()));
    item.insert("agentStatus".into(), s(credential.agent_status.as_str()));
    item.insert("agentScopes".into(), string_list(&credential.agent_scopes));
    item.insert("createdAt".into(), time(&credential.created_at));
    // A string, so that it could never be taken for a TTL attribute: an expired credential must
    // stay listable as `expired`.
    insert_opt(
        &mut item,
        "expiresAt",
        credential.expires_at.as_ref().map(time),
    );
    insert_opt(
        &mut item,
        "revokedAt",
        credential.revoked_at.as_ref().map(time),
    );
    insert_opt(
        &mut item,
        "rotatedAt",
        credential.rotated_at.as_ref().map(time),
    );
    item.insert(VERSION.into(), n(credential.version));
    item
}

fn credential_from(item: &Item) -> StoreResult<Credential> {
    let r = ItemReader::new(item, "credential");
    Ok(Credential {
        credential_id: r.uuid(CREDENTIAL_ID)?,
        client_id: r.uuid(PK)?,
        agent_id: r.uuid("agentId")?,
        org_id: r.uuid("orgId")?,
        secret_hash: r.s("secretHash")?.to_owned(),
        status: r.parse("status", CredentialStatus::parse)?,
        agent_status: r.parse("agentStatus", AgentStatus::parse)?,
        agent_scopes: r.string_list("agentScopes")?,
        created_at: r.time("createdAt")?,
        expires_at: r.opt_time("expiresAt")?,
        revoked_at: r.opt_time("revokedAt")?,
        rotated_at: r.opt_time("rotatedAt")?,
        version: r.u64(VERSION)?,
    })
}

fn audit_item(event: &AuditEvent) -> Item {
    let mut item = pk_sk(
        event.org_id.to_string(),
        &audit_sk(&event.timestamp, event.event_id),
    );
    item.insert(EVENT_ID.into(), s(event.event_id.to_string()));
    insert_opt(
        &mut item,
        AGENT_KEY,
        event
            .subject_agent_id
            .map(|agent| s(agent_key(event.org_id, agent))),
    );
    item.insert(ACTION_KEY.into(), s(action_key(event.org_id, event.action)));
    item.insert("timestamp".into(), time(&event.timestamp));
    item.insert(ACTION.into(), s(event.action.as_str()));
    item.insert(OUTCOME.into(), s(event.outcome.as_str()));
    let mut actor = HashMap::from([("type".to_owned(), s(event.actor.kind.clone()))]);
    insert_opt(
        &mut actor,
        "agentId",
        event.actor.agent_id.map(|id| s(id.to_string())),
    );
    insert_opt(
        &mut actor,
        "clientId",
        event.actor.client_id.map(|id| s(id.to_string())),
    );
    item.insert("actor".into(), AttributeValue::M(actor));
    insert_opt(
        &mut item,
        "subjectAgentId",
        event.subject_agent_id.map(|id| s(id.to_string())),
    );
    item.insert("resource".into(), s(event.resource.clone()));
    item.insert("requestId".into(), s(event.request_id.clone()));
    insert_opt(&mut item, "sourceIp", event.source_ip.clone().map(s));
    insert_opt(&mut item, "userAgent", event.user_agent.clone().map(s));
    // JSON text: DynamoDB numbers and maps would not give back every JSON value unchanged.
    item.insert(
        "details".into(),
        s(serde_json::Value::Object(event.details.clone()).to_string()),
    );
    item.insert(EXPIRES_AT.into(), n(ttl_seconds(&event.expires_at)));
    item.insert("expiresAtTime".into(), time(&event.expires_at));
    item
}

fn audit_from(item: &Item) -> StoreResult<AuditEvent> {
    let r = ItemReader::new(item, "audit event");
    let actor = r.map("actor")?;
    let actor_reader = ItemReader::new(actor, "audit event actor");
    let details = match serde_json::from_str::<serde_json::Value>(r.s("details")?) {
        Ok(serde_json::Value::Object(details)) => details,
        _ => return Err(r.malformed("details")),
    };
    Ok(AuditEvent {
        event_id: r.uuid(EVENT_ID)?,
        org_id: r.uuid(PK)?,
        timestamp: r.time("timestamp")?,
        action: r.parse(ACTION, AuditAction::parse)?,
        outcome: r.parse(OUTCOME, Outcome::parse)?,
        actor: Actor {
            kind: actor_reader.s("type")?.to_owned(),
            agent_id: actor_reader.opt_uuid("agentId")?,
            client_id: actor_reader.opt_uuid("clientId")?,
        },
        subject_agent_id: r.opt_uuid("subjectAgentId")?,
        resource: r.s("resource")?.to_owned(),
        request_id: r.s("requestId")?.to_owned(),
        source_ip: r.opt_s("sourceIp")?.map(str::to_owned),
        user_agent: r.opt_s("userAgent")?.map(str::to_owned),
        details,
        expires_at: r.time("expiresAtTime")?,
    })
}

/// Typed access to an item's attributes; errors name the record kind and attribute, never the
/// value.
struct ItemReader<'a> {
    item: &'a Item,
    what: &'static str,
}

impl<'a> ItemReader<'a> {
    fn new(item: &'a Item, what: &'static str) -> Self {
        Self { item, what }
    }

    fn malformed(&self, name: &str) -> StoreError {
        StoreError::Internal(format!(
            "{} item: attribute {name} is missing or malformed",
            self.what
        ))
    }

    fn get(&self, name: &str) -> Option<&'a AttributeValue> {
        self.item
            .get(name)
            .filter(|value| !matches!(value, AttributeValue::Null(_)))
    }

    fn s(&self, name: &str) -> StoreResult<&'a str> {
        self.opt_s(name)?.ok_or_else(|| self.malformed(name))
    }

    fn opt_s(&self, name: &str) -> StoreResult<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text)),
            Some(_) => Err(self.malformed(name)),
        }
    }

    fn parse<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> StoreResult<T> {
        parse(self.s(name)?).ok_or_else(|| self.malformed(name))
    }

    fn uuid(&self, name: &str) -> StoreResult<Uuid> {
        self.parse(name, |text| Uuid::parse_str(text).ok())
    }

    fn opt_uuid(&self, name: &str) -> StoreResult<Option<Uuid>> {
        self.opt_s(name)?
            .map(|text| Uuid::parse_str(text).map_err(|_| self.malformed(name)))
            .transpose()
    }

    fn time(&self, name: &str) -> StoreResult<DateTime<Utc>> {
        self.opt_time(name)?.ok_or_else(|| self.malformed(name))
    }

    fn opt_time(&self, name: &str) -> StoreResult<Option<DateTime<Utc>>> {
        self.opt_s(name)?
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| self.malformed(name))
            })
            .transpose()
    }

    fn number(&self, name: &str) -> StoreResult<&'a str> {
        match self.get(name) {
            Some(AttributeValue::N(number)) => Ok(number),
            _ => Err(self.malformed(name)),
        }
    }

    fn u64(&self, name: &str) -> StoreResult<u64> {
        self.number(name)?.parse().map_err(|_| self.malformed(name))
    }

    fn i64(&self, name: &str) -> StoreResult<i64> {
        self.number(name)?.parse().map_err(|_| self.malformed(name))
    }

    fn map(&self, name: &str) -> StoreResult<&'a Item> {
        match self.get(name) {
            Some(AttributeValue::M(map)) => Ok(map),
            _ => Err(self.malformed(name)),
        }
    }

    fn string_list(&self, name: &str) -> StoreResult<Vec<String>> {
        match self.get(name) {
            Some(AttributeValue::L(values)) => values
                .iter()
                .map(|value| value.as_s().cloned().map_err(|_| self.malformed(name)))
                .collect(),
            _ => Err(self.malformed(name)),
        }
    }

    fn string_map(&self, name: &str) -> StoreResult<BTreeMap<String, String>> {
        self.map(name)?
            .iter()
            .map(|(key, value)| {
                Ok((
                    key.clone(),
                    value.as_s().map_err(|_| self.malformed(name))?.clone(),
                ))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Error codes that mean "try again later" rather than "this request is wrong".
fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ThrottlingError"
            | "ProvisionedThroughputExceeded"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "TransactionInProgressException"
    )
}

/// Unreachable endpoint, timeout, throttling or a 5xx: `Unavailable`. Anything else: `Internal`.
/// The detail holds the operation, the error code and DynamoDB's message, never an item.
fn sdk_error<E>(operation: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            StoreError::Unavailable(format!("{operation}: {}", DisplayErrorContext(&err)))
        }
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = err.raw_response().map(|response| response.status());
            let code = err.code().unwrap_or("unknown");
            let detail = format!(
                "{operation}: {code} (HTTP {}): {}",
                status.map_or(0, |s| s.as_u16()),
                err.message().unwrap_or("no message")
            );
            if status.is_some_and(|s| s.is_server_error()) || is_throttling_code(code) {
                StoreError::Unavailable(detail)
            } else {
                StoreError::Internal(detail)
            }
        }
        _ => StoreError::Internal(format!("{operation}: {}", DisplayErrorContext(&err))),
    }
}

fn build_error(err: BuildError) -> StoreError {
    StoreError::Internal(format!("building a DynamoDB request: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn audit_keys_sort_like_the_newest_first_order() {
        let id_low = Uuid::from_u128(1);
        let id_high = Uuid::from_u128(u128::MAX - 1);
        let early = Utc.timestamp_millis_opt(999).single().unwrap_or_default();
        let late = Utc.timestamp_millis_opt(1_000).single().unwrap_or_default();
        assert!(audit_sk(&early, id_high) < audit_sk(&late, id_low));
        assert!(audit_sk(&late, id_low) < audit_sk(&late, id_high));
        assert!(audit_sk_floor(&late) < audit_sk(&late, id_low));
        assert!(audit_sk(&late, id_high) < audit_sk_ceiling(&late));
        assert!(audit_sk_ceiling(&early) < audit_sk_floor(&late));
    }

    #[test]
    fn ttl_seconds_round_up() {
        let whole = Utc.timestamp_opt(100, 0).single().unwrap_or_default();
        let fraction = Utc.timestamp_opt(100, 1).single().unwrap_or_default();
        assert_eq!(ttl_seconds(&whole), 100);
        assert_eq!(ttl_seconds(&fraction), 101);
    }

    #[test]
    fn every_key_attribute_is_defined_once() {
        for spec in &TABLE_SPECS {
            let definitions = attribute_definitions(spec).unwrap_or_default();
            let mut names: Vec<&str> = definitions
                .iter()
                .map(AttributeDefinition::attribute_name)
                .collect();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "{:?}", spec.role);
            assert!(names.contains(&spec.key.partition));
        }
    }

    #[test]
    fn with_prefix_names_each_table() {
        let names = TableNames::with_prefix("t1");
        assert_eq!(names.orgs, "t1-orgs");
        assert_eq!(names.revoked_tokens, "t1-revoked-tokens");
    }

    #[test]
    fn a_condition_failure_wins_over_a_conflict_and_keeps_its_index() {
        let reason = |code: &str| CancellationReason::builder().code(code).build();
        let reasons = [
            reason("None"),
            reason("TransactionConflict"),
            reason("ConditionalCheckFailed"),
        ];
        assert!(matches!(cancellation(&reasons), Cancellation::Condition(2)));
        assert!(matches!(
            cancellation(&reasons[..2]),
            Cancellation::Conflict(1)
        ));
        assert!(matches!(
            cancellation(&[reason("ThrottlingError")]),
            Cancellation::Throttled(_)
        ));
        assert!(matches!(
            cancellation(&[reason("ValidationError")]),
            Cancellation::Other(_)
        ));
    }
}
