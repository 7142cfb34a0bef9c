//! [`Commit`]: a batch of writes as one `TransactWriteItems`, and the transaction items and
//! conditions each write becomes.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Delete, Put, TransactWriteItem, Update,
};
use uuid::Uuid;

use agentidp_core::store::{Commit, StoreError, StoreResult, Write};

use crate::DynamoStore;
use crate::codec::{
    COUNT, PLAN, RESOURCE_ID, VERSION, agent_item, audit_item, credential_item, n, org_item,
    resource_item, s, target_item, time, trusted_issuer_item,
};
use crate::errors::{build_error, is_throttling_code, sdk_cause, sdk_error};
use crate::keys::{
    AGENT_COUNTER_SK, Item, ItemId, ORG_SK, RESOURCE_COUNTER_SK, TRUSTED_ISSUER_COUNTER_SK,
    agent_sk, audit_sk, identifier_sk, name_sk, resource_sk, token_counter_sk, trusted_issuer_sk,
    ttl_seconds,
};
use crate::schema::{EXPIRES_AT, PK, TableRole};

/// DynamoDB's limit on items per transaction.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Attempts at a transaction that DynamoDB cancels for a conflict with a concurrent one.
const TRANSACTION_ATTEMPTS: u32 = 4;
/// Times a batch is sent again with a counter decrement switched to its other form.
const MAX_DECREMENT_SWITCHES: u32 = 4;

impl DynamoStore {
    /// The request for one write. `decrement` says how a decrement of a counter of agents or
    /// resources is sent this time (see [`Decrement`]); other writes ignore it.
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
            Write::PutResource {
                resource,
                expected_version,
            } => put(
                &tables.orgs,
                resource_item(resource),
                version_guard(*expected_version),
            ),
            Write::PutTrustedIssuer {
                issuer,
                expected_version,
            } => put(
                &tables.orgs,
                trusted_issuer_item(issuer),
                version_guard(*expected_version),
            ),
            Write::DeleteResource {
                expected_version, ..
            }
            | Write::DeleteTrustedIssuer {
                expected_version, ..
            } => {
                let expressions = Expressions::condition("#version = :expected")
                    .name("#version", VERSION)
                    .value(":expected", n(expected_version));
                delete_if(&tables.orgs, id.key(), expressions)
            }
            Write::ClaimResourceIdentifier(target) => {
                let expressions =
                    Expressions::condition("attribute_not_exists(#pk) OR #resource = :resource")
                        .name("#pk", PK)
                        .name("#resource", RESOURCE_ID)
                        .value(":resource", s(target.resource_id.to_string()));
                put(&tables.orgs, target_item(target), expressions)
            }
            Write::ReleaseResourceIdentifier { .. } => delete(&tables.orgs, id.key()),
            Write::CountAgents { delta, limit, .. }
            | Write::CountResources { delta, limit, .. }
            | Write::CountTrustedIssuers { delta, limit, .. } => {
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
            Write::UseClientAssertion { expires_at, .. }
            | Write::UseDpopProof { expires_at, .. } => {
                let mut item = id.key();
                item.insert(EXPIRES_AT.into(), n(ttl_seconds(expires_at)));
                item.insert("expiresAtTime".into(), time(expires_at));
                put(&tables.throttle, item, absent())
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
        Write::PutResource { resource, .. } => {
            org_item(&resource.org_id, resource_sk(resource.resource_id))
        }
        Write::DeleteResource {
            org_id,
            resource_id,
            ..
        } => org_item(org_id, resource_sk(*resource_id)),
        Write::PutTrustedIssuer { issuer, .. } => {
            org_item(&issuer.org_id, trusted_issuer_sk(issuer.issuer_id))
        }
        Write::DeleteTrustedIssuer {
            org_id, issuer_id, ..
        } => org_item(org_id, trusted_issuer_sk(*issuer_id)),
        Write::CountTrustedIssuers { org_id, .. } => {
            org_item(org_id, TRUSTED_ISSUER_COUNTER_SK.into())
        }
        Write::ClaimResourceIdentifier(target) => {
            org_item(&target.org_id, identifier_sk(&target.identifier))
        }
        Write::ReleaseResourceIdentifier { org_id, identifier } => {
            org_item(org_id, identifier_sk(identifier))
        }
        Write::CountAgents { org_id, .. } => org_item(org_id, AGENT_COUNTER_SK.into()),
        Write::CountResources { org_id, .. } => org_item(org_id, RESOURCE_COUNTER_SK.into()),
        Write::CountTokenRequest { org_id, month, .. } => org_item(org_id, token_counter_sk(month)),
        Write::RevokeToken { jti, .. } => ItemId::new(TableRole::RevokedTokens, jti.clone(), None),
        Write::Tally { key, .. } => ItemId::new(TableRole::Throttle, key.clone(), None),
        Write::UseClientAssertion { client_id, jti, .. } => ItemId::new(
            TableRole::Throttle,
            format!("assertion#{client_id}#{jti}"),
            None,
        ),
        Write::UseDpopProof {
            key_thumbprint,
            jti,
            ..
        } => ItemId::new(
            TableRole::Throttle,
            format!("dpop#{key_thumbprint}#{jti}"),
            None,
        ),
        Write::Audit(event) => ItemId::new(
            TableRole::Audit,
            event.org_id.to_string(),
            Some(audit_sk(&event.timestamp, event.event_id)),
        ),
    }
}

/// How a decrement of a counter of agents or resources is sent. The count never goes below zero, which no
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
    matches!(
        write,
        Write::CountAgents { delta, .. }
            | Write::CountResources { delta, .. }
            | Write::CountTrustedIssuers { delta, .. } if *delta < 0
    )
}

#[async_trait]
impl Commit for DynamoStore {
    /// One `TransactWriteItems`, sent again only in two cases:
    /// - DynamoDB cancels it for a conflict with a concurrent transaction on one of its items: up
    ///   to three more attempts after short jittered pauses. If it still conflicts, the result is
    ///   [`StoreError::Unavailable`], not `ConditionFailed`: no condition was found false, and a
    ///   caller must not read a lost race into it (for a quota counter, `ConditionFailed` means
    ///   "limit reached").
    /// - The first failed condition is that of a counter decrement (see [`Decrement`]):
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
            return Err(StoreError::broken(format!(
                "a batch of {} writes exceeds DynamoDB's {MAX_TRANSACTION_ITEMS} items per transaction",
                writes.len()
            )));
        }
        let mut seen: HashMap<ItemId, usize> = HashMap::with_capacity(writes.len());
        for (index, write) in writes.iter().enumerate() {
            if let Some(first) = seen.insert(item_id(write), index) {
                return Err(StoreError::broken(format!(
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
            // The SDK resends a request whose answer was lost with the same token, and DynamoDB
            // answers it as the first success rather than running it again: else a batch's own
            // conditions (an assertion's single use) would fail against its first run. A new
            // token per attempt of this loop, whose items may differ.
            let idempotency = Uuid::new_v4().to_string();
            let err = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(idempotency)
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
                        return Err(StoreError::Unavailable {
                            context: format!(
                                "TransactWriteItems: the counter of write {index} kept changing"
                            ),
                            source: sdk_cause(err),
                        });
                    }
                    switches += 1;
                    decrements[index] = decrements[index].other();
                }
                Cancellation::Condition(index) => {
                    return Err(match writes.get(index) {
                        Some(write) => write.condition_failed(index),
                        None => StoreError::Internal {
                            context: format!(
                                "TransactWriteItems cancelled write {index} of a batch of {}",
                                writes.len()
                            ),
                            source: sdk_cause(err),
                        },
                    });
                }
                Cancellation::Conflict(index) => {
                    conflicts += 1;
                    if conflicts == TRANSACTION_ATTEMPTS {
                        return Err(StoreError::Unavailable {
                            context: format!(
                                "TransactWriteItems: write {index} kept conflicting with concurrent \
                                 transactions ({TRANSACTION_ATTEMPTS} attempts)"
                            ),
                            source: sdk_cause(err),
                        });
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                }
                Cancellation::Throttled(codes) => {
                    return Err(StoreError::Unavailable {
                        context: format!("TransactWriteItems throttled: {codes}"),
                        source: sdk_cause(err),
                    });
                }
                Cancellation::Other(codes) => {
                    return Err(StoreError::Internal {
                        context: format!("TransactWriteItems cancelled: {codes}"),
                        source: sdk_cause(err),
                    });
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
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 20u64 << attempt.saturating_sub(1).min(6);
    let jitter = u64::from(getrandom::u32().unwrap_or_default()) % (base + 1);
    Duration::from_millis(base + jitter)
}

// ---------------------------------------------------------------------------------------------
// Transaction items and their conditions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
pub(crate) struct Expressions {
    pub(crate) condition: Option<String>,
    update: Option<String>,
    pub(crate) names: HashMap<String, String>,
    pub(crate) values: HashMap<String, AttributeValue>,
}

impl Expressions {
    pub(crate) fn condition(expression: &str) -> Self {
        Self {
            condition: Some(expression.to_owned()),
            ..Self::default()
        }
    }

    fn update(mut self, expression: &str) -> Self {
        self.update = Some(expression.to_owned());
        self
    }

    pub(crate) fn name(mut self, placeholder: &str, attribute: &str) -> Self {
        self.names
            .insert(placeholder.to_owned(), attribute.to_owned());
        self
    }

    pub(crate) fn value(mut self, placeholder: &str, value: AttributeValue) -> Self {
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
    delete_if(table, key, Expressions::default())
}

fn delete_if(table: &str, key: Item, expressions: Expressions) -> StoreResult<TransactWriteItem> {
    let Expressions {
        condition,
        update: _,
        names,
        values,
    } = expressions;
    let delete = Delete::builder()
        .table_name(table)
        .set_key(Some(key))
        .set_condition_expression(condition)
        .set_expression_attribute_names(non_empty(names))
        .set_expression_attribute_values(non_empty(values))
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

#[cfg(test)]
mod tests {
    use super::*;

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
