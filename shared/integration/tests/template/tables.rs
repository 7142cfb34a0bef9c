//! The tables: every table of `TABLE_SPECS`, with its keys, indexes and TTL attribute.

use std::collections::{BTreeMap, BTreeSet};

use agentidp_store_dynamodb::TABLE_SPECS;
use serde_yaml_ng::Value;

use crate::support::{get, resource, tables, template, text};

#[test]
fn every_table_of_table_specs_exists_with_its_keys_indexes_and_ttl() {
    let template = template();
    let tables = tables(&template);
    let specs: BTreeSet<&str> = TABLE_SPECS.iter().map(|s| s.suffix).collect();
    let declared: BTreeSet<&str> = tables.values().map(|s| s.suffix).collect();
    assert_eq!(
        declared, specs,
        "template tables (left) vs TABLE_SPECS (right)"
    );
    assert_eq!(tables.len(), TABLE_SPECS.len(), "a table is declared twice");
    for (name, spec) in &tables {
        let table = resource(&template, name);
        for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
            assert_eq!(
                table.get(policy).and_then(Value::as_str),
                Some("Retain"),
                "{name}: {policy}"
            );
        }
        let p = table.get("Properties").unwrap();
        assert_eq!(
            p.get("BillingMode").and_then(Value::as_str),
            Some("PAY_PER_REQUEST")
        );
        assert_eq!(
            get(
                p,
                &[
                    "PointInTimeRecoverySpecification",
                    "PointInTimeRecoveryEnabled"
                ]
            )
            .and_then(Value::as_bool),
            Some(true),
            "{name}: point-in-time recovery"
        );
        assert_eq!(
            get(p, &["SSESpecification", "SSEEnabled"]).and_then(Value::as_bool),
            Some(true),
            "{name}: encryption with a KMS key"
        );
        assert_eq!(
            key_schema(p.get("KeySchema").unwrap()),
            key_of(&spec.key),
            "{name}"
        );
        let mut attributes = BTreeMap::new();
        for definition in p
            .get("AttributeDefinitions")
            .and_then(Value::as_sequence)
            .unwrap()
        {
            attributes.insert(
                text(&definition["AttributeName"]).to_owned(),
                text(&definition["AttributeType"]).to_owned(),
            );
        }
        let mut wanted = BTreeMap::new();
        for key in std::iter::once(&spec.key).chain(spec.indexes.iter().map(|i| &i.key)) {
            for attribute in std::iter::once(key.partition).chain(key.sort) {
                wanted.insert(attribute.to_owned(), "S".to_owned());
            }
        }
        assert_eq!(attributes, wanted, "{name}: AttributeDefinitions");
        let mut indexes = BTreeMap::new();
        for index in p
            .get("GlobalSecondaryIndexes")
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            assert_eq!(
                get(index, &["Projection", "ProjectionType"]).and_then(Value::as_str),
                Some("ALL"),
                "{name}: every index projects everything"
            );
            indexes.insert(
                text(&index["IndexName"]).to_owned(),
                key_schema(&index["KeySchema"]),
            );
        }
        let wanted: BTreeMap<String, Vec<(String, String)>> = spec
            .indexes
            .iter()
            .map(|i| (i.name.to_owned(), key_of(&i.key)))
            .collect();
        assert_eq!(indexes, wanted, "{name}: GlobalSecondaryIndexes");
        let ttl = p.get("TimeToLiveSpecification").map(|ttl| {
            assert_eq!(
                ttl.get("Enabled").and_then(Value::as_bool),
                Some(true),
                "{name}"
            );
            text(&ttl["AttributeName"]).to_owned()
        });
        assert_eq!(ttl.as_deref(), spec.ttl_attribute, "{name}: TTL attribute");
    }
}

fn key_schema(value: &Value) -> Vec<(String, String)> {
    value
        .as_sequence()
        .unwrap()
        .iter()
        .map(|k| {
            (
                text(&k["AttributeName"]).to_owned(),
                text(&k["KeyType"]).to_owned(),
            )
        })
        .collect()
}

fn key_of(key: &agentidp_store_dynamodb::KeySchema) -> Vec<(String, String)> {
    std::iter::once((key.partition.to_owned(), "HASH".to_owned()))
        .chain(key.sort.map(|s| (s.to_owned(), "RANGE".to_owned())))
        .collect()
}
