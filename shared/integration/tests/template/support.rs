//! Reading the template: plain YAML, with CloudFormation's short-form tags (!Ref, !GetAtt, !Sub,
//! !If, ...) kept as tagged values; and what IAM grants each function.

use std::collections::{BTreeMap, BTreeSet};

use agentidp_http::FunctionGroup;
use agentidp_store_dynamodb::{TABLE_SPECS, TableSpec};
use serde_yaml_ng::Value;

use crate::fixture;

pub fn template() -> Value {
    let path = fixture::repo_root().join("template.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tag's name without `!`, and the tagged value; `None` for an untagged value.
pub fn tagged(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        _ => None,
    }
}

pub fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value:?}"))
}

pub fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

pub fn resources(template: &Value) -> Vec<(String, &Value)> {
    template
        .get("Resources")
        .and_then(Value::as_mapping)
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k).to_owned(), v))
        .collect()
}

pub fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template)
        .into_iter()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
        .collect()
}

pub fn resource<'a>(template: &'a Value, name: &str) -> &'a Value {
    get(template, &["Resources", name]).unwrap_or_else(|| panic!("no resource {name}"))
}

/// A list, or a single value as a list of one.
pub fn list(value: &Value) -> Vec<&Value> {
    match value {
        Value::Sequence(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// The logical id a `!Ref X`, `!GetAtt X.Arn` or `!Sub "${X}..."` names first, with the rest
/// of a `!Sub` after the reference.
pub fn reference(value: &Value) -> (String, String) {
    let (tag, inner) = tagged(value).unwrap_or_else(|| panic!("expected a reference: {value:?}"));
    match tag.as_str() {
        "Ref" => (text(inner).to_owned(), String::new()),
        "GetAtt" => {
            let target = text(inner);
            let (name, attribute) = target.split_once('.').unwrap_or((target, ""));
            assert_eq!(attribute, "Arn", "{value:?}");
            (name.to_owned(), String::new())
        }
        "Sub" => {
            let text = text(inner);
            let start = text
                .find("${")
                .unwrap_or_else(|| panic!("{text}: no reference"));
            assert_eq!(start, 0, "{text}: must start with the reference");
            let end = text.find('}').unwrap();
            let name = text[2..end].trim_end_matches(".Arn").to_owned();
            (name, text[end + 1..].to_owned())
        }
        other => panic!("unexpected tag !{other} in {value:?}"),
    }
}

/// The table resources by the `TableSpec` each is for, from the suffix of its name.
pub fn tables(template: &Value) -> BTreeMap<String, &'static TableSpec> {
    let mut found = BTreeMap::new();
    for (name, table) in of_type(template, "AWS::DynamoDB::Table") {
        let table_name = get(table, &["Properties", "TableName"]).unwrap();
        let (tag, pattern) = tagged(table_name).unwrap();
        assert_eq!(tag, "Sub", "{name}: TableName");
        let pattern = text(pattern);
        let spec = TABLE_SPECS
            .iter()
            .find(|spec| pattern == format!("agentidp-${{Stage}}-{}", spec.suffix))
            .unwrap_or_else(|| panic!("{name}: `{pattern}` names no table of TABLE_SPECS"));
        found.insert(name, spec);
    }
    found
}

/// The functions' logical ids by the binary each runs.
pub fn functions_by_binary(template: &Value) -> BTreeMap<String, String> {
    of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .map(|(name, function)| {
            assert_eq!(
                get(function, &["Metadata", "BuildMethod"]).and_then(Value::as_str),
                Some("rust-cargolambda"),
                "{name}"
            );
            let binary = get(function, &["Metadata", "BuildProperties", "Binary"])
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{name}: no BuildProperties.Binary"));
            (binary.to_owned(), name)
        })
        .collect()
}

pub fn binary_of(group: FunctionGroup) -> String {
    format!("agentidp-{}", group.as_str())
}

/// One permission: an IAM action on a resource, the resource written as `table:<suffix>`,
/// `table:<suffix>/index/<name>`, `private-keys` (the signing-key secret), `public-keys` (the
/// secret with the public key set) or `kms-key` (the key that encrypts the private keys).
pub type Grant = (String, String);

/// The logical id of the role SAM makes for a function that names no `Role`.
pub fn role_of(function: &str) -> String {
    format!("{function}Role")
}

/// Every IAM policy document that applies to a function's role: the function's `Policies`, and
/// each `AWS::IAM::Policy` resource attached to its role (the way a policy may name a resource
/// whose own policy names the role, without a circular dependency).
pub fn policy_documents<'a>(template: &'a Value, function: &str) -> Vec<&'a Value> {
    let policies = get(resource(template, function), &["Properties", "Policies"]);
    let mut documents: Vec<&Value> = policies
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{function}: no Policies"))
        .iter()
        .collect();
    let role = role_of(function);
    for (name, policy) in of_type(template, "AWS::IAM::Policy") {
        let roles =
            get(policy, &["Properties", "Roles"]).unwrap_or_else(|| panic!("{name}: no Roles"));
        if list(roles).into_iter().any(|r| reference(r).0 == role) {
            documents.push(get(policy, &["Properties", "PolicyDocument"]).unwrap());
        }
    }
    documents
}

pub fn granted(template: &Value, function: &str) -> BTreeSet<Grant> {
    let tables = tables(template);
    let mut grants = BTreeSet::new();
    for policy in policy_documents(template, function) {
        let statements = policy
            .get("Statement")
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("{function}: only inline policy documents, got {policy:?}"));
        for statement in statements {
            assert_eq!(
                statement.get("Effect").and_then(Value::as_str),
                Some("Allow")
            );
            assert!(statement.get("Condition").is_none() && statement.get("NotAction").is_none());
            let actions: Vec<&str> = list(&statement["Action"]).into_iter().map(text).collect();
            for target in list(&statement["Resource"]) {
                assert!(
                    tagged(target).is_some(),
                    "{function}: a literal resource {target:?}"
                );
                let (logical, rest) = reference(target);
                let resource = match logical.as_str() {
                    "SigningKeySecret" => "private-keys".to_owned(),
                    "PublicKeysSecret" => "public-keys".to_owned(),
                    "SigningKeyEncryptionKey" => "kms-key".to_owned(),
                    _ => {
                        let spec = tables
                            .get(&logical)
                            .unwrap_or_else(|| panic!("{function}: {logical} is not a table"));
                        format!("table:{}{rest}", spec.suffix)
                    }
                };
                assert!(
                    rest.is_empty() || resource.starts_with("table:"),
                    "{target:?}"
                );
                for action in &actions {
                    assert!(
                        !action.contains('*'),
                        "{function}: wildcard action {action}"
                    );
                    grants.insert(((*action).to_owned(), resource.clone()));
                }
            }
        }
    }
    grants
}
