//! Key schema: the one place that names tables' keys, indexes and TTL attributes, and the
//! table names and creation that read it.

use std::convert::Infallible;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::BehaviorVersion;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use agentidp_core::store::{StoreError, StoreResult};

use crate::errors::{build_error, sdk_error};

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
    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, agentidp_core::config::ConfigError> {
        Self::build(|spec| agentidp_core::config::required(lookup, spec.env_var))
    }

    /// Whether `lookup` names any table at all: a local server with none uses its own names,
    /// while one with only some would silently mix them, so that is an error.
    pub fn any_named(lookup: &impl Fn(&str) -> Option<String>) -> bool {
        TABLE_SPECS
            .iter()
            .any(|spec| lookup(spec.env_var).is_some())
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
    Err(StoreError::Unavailable {
        context: format!("table {name} did not become active within 2 minutes"),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
