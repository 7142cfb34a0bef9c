//! The DynamoDB store: five tables, every change one `TransactWriteItems`.
//!
//! `docs/dynamodb-tables.md` describes the tables, every access pattern and its round trips.
//! The key schema lives in one place, [`TABLE_SPECS`]: table creation ([`ensure_tables`]) reads
//! it, and so can a check of the deployment template.
//!
//! Items are never logged and never copied into error messages: a credential item holds a
//! bcrypt hash. Errors name the operation, the attribute or the error code, nothing else.

mod codec;
mod commit;
mod errors;
mod keys;
mod reads;
mod schema;

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::KeysAndAttributes;

use agentidp_core::store::{StoreError, StoreResult};

pub use crate::commit::MAX_TRANSACTION_ITEMS;
pub use crate::schema::{
    ACTION_KEY, AGENT_KEY, AUDIT_BY_ACTION_INDEX, AUDIT_BY_AGENT_INDEX, AUDIT_BY_EVENT_ID_INDEX,
    CREDENTIAL_ID, CREDENTIALS_BY_AGENT_INDEX, EVENT_ID, EXPIRES_AT, IndexSpec, JTI, KeySchema, PK,
    SK, TABLE_SPECS, TableNames, TableRole, TableSpec, client_from_env, ensure_tables,
};

use crate::commit::backoff;
use crate::errors::sdk_error;
use crate::keys::Item;

/// Attempts at a `BatchGetItem` whose keys come back unprocessed (throttling).
const BATCH_GET_ATTEMPTS: u32 = 4;

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
        Err(StoreError::Unavailable {
            context: "BatchGetItem: keys stayed unprocessed (throttled)".into(),
            source: None,
        })
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
}
