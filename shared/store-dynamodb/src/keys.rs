//! Keys: the sort-key shapes, the composite index keys, and the TTL value.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use agentidp_core::domain::AuditAction;

use crate::codec::s;
use crate::schema::{JTI, PK, SK, TableRole};

// Sort-key shapes.
pub(crate) const ORG_SK: &str = "ORG";
pub(crate) const AGENT_COUNTER_SK: &str = "USAGE#AGENTS";
pub(crate) const AGENT_SK_PREFIX: &str = "AGENT#";
pub(crate) const RESOURCE_COUNTER_SK: &str = "USAGE#RESOURCES";
pub(crate) const RESOURCE_SK_PREFIX: &str = "RESOURCE#";
pub(crate) const TRUSTED_ISSUER_COUNTER_SK: &str = "USAGE#TRUSTED_ISSUERS";
pub(crate) const TRUSTED_ISSUER_SK_PREFIX: &str = "TRUSTED_ISSUER#";

pub(crate) type Item = HashMap<String, AttributeValue>;

/// The table and key of one write, to refuse a batch that touches an item twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ItemId {
    table: TableRole,
    partition: String,
    sort: Option<String>,
}

impl ItemId {
    pub(crate) fn new(table: TableRole, partition: String, sort: Option<String>) -> Self {
        Self {
            table,
            partition,
            sort,
        }
    }

    pub(crate) fn key(&self) -> Item {
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

pub(crate) fn pk_sk(partition: String, sort: &str) -> Item {
    HashMap::from([(PK.to_owned(), s(partition)), (SK.to_owned(), s(sort))])
}

pub(crate) fn agent_sk(agent_id: Uuid) -> String {
    format!("{AGENT_SK_PREFIX}{agent_id}")
}

pub(crate) fn name_sk(name_key: &str) -> String {
    format!("NAME#{name_key}")
}

pub(crate) fn resource_sk(resource_id: Uuid) -> String {
    format!("{RESOURCE_SK_PREFIX}{resource_id}")
}

pub(crate) fn trusted_issuer_sk(issuer_id: Uuid) -> String {
    format!("{TRUSTED_ISSUER_SK_PREFIX}{issuer_id}")
}

/// The organization's claim of a resource identifier (normalised, ASCII, at most 512 bytes, well
/// within a sort key's 1,024).
pub(crate) fn identifier_sk(identifier: &str) -> String {
    format!("IDENTIFIER#{identifier}")
}

pub(crate) fn token_counter_sk(month: &str) -> String {
    format!("USAGE#TOKENS#{month}")
}

pub(crate) fn agent_key(org_id: Uuid, agent_id: Uuid) -> String {
    format!("{org_id}#{agent_id}")
}

pub(crate) fn action_key(org_id: Uuid, action: AuditAction) -> String {
    format!("{org_id}#{}", action.as_str())
}

/// Milliseconds since the epoch, zero-padded to 13 digits so that string order is time order
/// (until the year 2286), then the event id, whose hyphenated lowercase form sorts like its bytes.
pub(crate) fn audit_sk(timestamp: &DateTime<Utc>, event_id: Uuid) -> String {
    format!("{:013}#{event_id}", timestamp.timestamp_millis().max(0))
}

/// Sorts before every key of the millisecond `at` falls in.
pub(crate) fn audit_sk_floor(at: &DateTime<Utc>) -> String {
    format!("{:013}", at.timestamp_millis().max(0))
}

/// Sorts after every key of the millisecond `at` falls in (`~` follows `#`, digits and letters).
pub(crate) fn audit_sk_ceiling(at: &DateTime<Utc>) -> String {
    format!("{:013}#~", at.timestamp_millis().max(0))
}

/// TTL attributes are whole seconds; rounding up means DynamoDB never deletes an item before
/// it has expired.
pub(crate) fn ttl_seconds(at: &DateTime<Utc>) -> i64 {
    let seconds = at.timestamp();
    if at.timestamp_subsec_nanos() > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    }
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
}
