//! `template.yaml` held to the code:
//!
//! - every route of `ROUTES` is routed by the template to the function of its group, and the
//!   template routes nothing else;
//! - every table of `TABLE_SPECS` exists with the same keys, indexes and TTL attribute (and the
//!   settings every data table must have), and there is no other table;
//! - each function's environment names every table, and the bootstrap command in the outputs
//!   names every table;
//! - only the token and rotation functions can read the private signing keys and decrypt them
//!   (IAM, and the policy of the KMS key that encrypts them); the functions that only verify
//!   tokens read the public keys, and each function is told only of the secret it reads;
//! - the routes that authenticate clients with bcrypt share the token route's throttling;
//! - each function's IAM policy grants exactly the DynamoDB actions, on exactly the tables and
//!   indexes, that the function uses. What it uses is observed, not listed by hand: every sample
//!   event of the function (`events/`) runs on DynamoDB Local through the real `DynamoStore`,
//!   whose SDK client records each request's operation, table and index. The events cover every
//!   route and the error paths that reach the store, so a new store call on any path shows up
//!   here as a missing grant, and a grant nothing uses as a surplus one.
//!
//! The IAM part needs DynamoDB Local (`AWS_ENDPOINT_URL_DYNAMODB`, which `scripts/test.sh`
//! starts); without it that test fails rather than pass without having run.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly on the first surprise"
)]

#[expect(
    dead_code,
    reason = "the template checks use the fixture's records, not its tokens"
)]
mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use agentidp_http::{FunctionGroup, ROUTES};
use agentidp_store_dynamodb::{DynamoStore, TABLE_SPECS, TableNames, TableSpec, ensure_tables};
use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput;
use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
use aws_sdk_dynamodb::operation::get_item::GetItemInput;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::operation::query::QueryInput;
use aws_sdk_dynamodb::operation::scan::ScanInput;
use aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsInput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
use fixture::{Expected, Target};
use serde_yaml_ng::Value;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Reading the template: plain YAML, with CloudFormation's short-form tags (!Ref, !GetAtt, !Sub,
// !If, ...) kept as tagged values.
// ---------------------------------------------------------------------------------------------

fn template() -> Value {
    let path = fixture::repo_root().join("template.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tag's name without `!`, and the tagged value; `None` for an untagged value.
fn tagged(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        _ => None,
    }
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value:?}"))
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn resources(template: &Value) -> Vec<(String, &Value)> {
    template
        .get("Resources")
        .and_then(Value::as_mapping)
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k).to_owned(), v))
        .collect()
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template)
        .into_iter()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
        .collect()
}

fn resource<'a>(template: &'a Value, name: &str) -> &'a Value {
    get(template, &["Resources", name]).unwrap_or_else(|| panic!("no resource {name}"))
}

/// A list, or a single value as a list of one.
fn list(value: &Value) -> Vec<&Value> {
    match value {
        Value::Sequence(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// The logical id a `!Ref X`, `!GetAtt X.Arn` or `!Sub "${X}..."` names first, with the rest
/// of a `!Sub` after the reference.
fn reference(value: &Value) -> (String, String) {
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
fn tables(template: &Value) -> BTreeMap<String, &'static TableSpec> {
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
fn functions_by_binary(template: &Value) -> BTreeMap<String, String> {
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

fn binary_of(group: FunctionGroup) -> String {
    format!("agentidp-{}", group.as_str())
}

// ---------------------------------------------------------------------------------------------
// Structure
// ---------------------------------------------------------------------------------------------

/// How an integration of the API names the function it invokes: the ARN of a function of this
/// account and region by its name.
const FUNCTION_INVOCATION: (&str, &str) = (
    "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:",
    "/invocations",
);

/// The HTTP API: the template's one `AWS::Serverless::HttpApi`, `sam local start-api` serves it.
fn http_api(template: &Value) -> &Value {
    let apis = of_type(template, "AWS::Serverless::HttpApi");
    assert_eq!(apis.len(), 1, "one HTTP API");
    assert_eq!(apis[0].0, "HttpApi");
    apis[0].1
}

/// The API's routes (`METHOD /path`, and `$default` for what none matches) and the logical id
/// of the function each invokes, from its OpenAPI definition.
fn routes(template: &Value) -> BTreeMap<String, String> {
    let by_name: BTreeMap<String, String> = of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .filter_map(|(logical, function)| {
            let name = get(function, &["Properties", "FunctionName"])?;
            let (tag, name) = tagged(name).unwrap();
            assert_eq!(tag, "Sub", "{logical}: FunctionName");
            Some((text(name).to_owned(), logical))
        })
        .collect();
    let paths = get(
        http_api(template),
        &["Properties", "DefinitionBody", "paths"],
    )
    .and_then(Value::as_mapping)
    .expect("the API's definition has paths");
    let mut routed = BTreeMap::new();
    for (path, operations) in paths {
        for (method, operation) in operations.as_mapping().unwrap() {
            let key = match (text(path), text(method)) {
                ("$default", "x-amazon-apigateway-any-method") => "$default".to_owned(),
                (path, method) => format!("{} {path}", method.to_uppercase()),
            };
            let integration = operation
                .get("x-amazon-apigateway-integration")
                .unwrap_or_else(|| panic!("{key}: no integration"));
            assert_eq!(integration["type"].as_str(), Some("aws_proxy"), "{key}");
            // Lambda's Invoke API is a POST, whatever the route's method.
            assert_eq!(integration["httpMethod"].as_str(), Some("POST"), "{key}");
            assert_eq!(
                integration["payloadFormatVersion"].as_str(),
                Some("2.0"),
                "{key}: the functions read payload format 2.0"
            );
            let (tag, uri) = tagged(&integration["uri"]).unwrap();
            assert_eq!(tag, "Sub", "{key}: uri");
            let name = text(uri)
                .strip_prefix(FUNCTION_INVOCATION.0)
                .and_then(|rest| rest.strip_suffix(FUNCTION_INVOCATION.1))
                .unwrap_or_else(|| {
                    panic!("{key}: {uri:?} invokes no function of this stack's account and region")
                });
            let function = by_name
                .get(name)
                .unwrap_or_else(|| panic!("{key}: no function of the template is named {name}"));
            assert!(
                routed.insert(key.clone(), function.clone()).is_none(),
                "{key} routed twice"
            );
        }
    }
    routed
}

#[test]
fn every_route_is_routed_to_its_groups_function_and_nothing_else_is() {
    let template = template();
    let functions = functions_by_binary(&template);
    // Nothing routes but the API's definition: no plain API Gateway resource (which `sam local`
    // would not serve) and no function event (SAM would make an API of its own for it).
    for (name, resource) in resources(&template) {
        let kind = resource
            .get("Type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(!kind.starts_with("AWS::ApiGateway"), "{name}: {kind}");
    }
    for (name, function) in of_type(&template, "AWS::Serverless::Function") {
        assert!(
            get(function, &["Properties", "Events"]).is_none(),
            "{name}: Events"
        );
    }
    let mut expected = BTreeMap::new();
    for (method, template_path, _, group) in ROUTES {
        let function = functions
            .get(&binary_of(group))
            .unwrap_or_else(|| panic!("no function runs {}", binary_of(group)));
        expected.insert(format!("{method} {template_path}"), function.clone());
    }
    // What no route matches gets the router's documented 404 or 405 from the function with the
    // least access, rather than API Gateway's own body.
    expected.insert("$default".to_owned(), functions["agentidp-audit"].clone());
    assert_eq!(
        routes(&template),
        expected,
        "template routes (left) vs ROUTES (right)"
    );
}

#[test]
fn api_gateway_may_invoke_each_routed_function_only_through_this_api() {
    let template = template();
    let routed: BTreeSet<String> = routes(&template).into_values().collect();
    let mut permitted = BTreeSet::new();
    for (name, permission) in of_type(&template, "AWS::Lambda::Permission") {
        let p = permission.get("Properties").unwrap();
        if p["Principal"].as_str() != Some("apigateway.amazonaws.com") {
            continue;
        }
        assert_eq!(
            p["Action"].as_str(),
            Some("lambda:InvokeFunction"),
            "{name}"
        );
        // Any route and stage of this API, and nothing else: no other API, no other account.
        let (tag, source) = tagged(&p["SourceArn"]).unwrap_or_else(|| panic!("{name}: SourceArn"));
        assert_eq!(
            (tag.as_str(), text(source)),
            (
                "Sub",
                "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/*"
            ),
            "{name}"
        );
        let function = reference(&p["FunctionName"]).0;
        assert!(
            permitted.insert(function.clone()),
            "{function}: two permissions"
        );
    }
    assert_eq!(
        permitted, routed,
        "functions API Gateway may invoke (left) vs routed (right)"
    );
}

#[test]
fn the_api_is_an_http_api_whose_only_stage_throttles_the_token_endpoint_harder() {
    let template = template();
    let api = http_api(&template).get("Properties").unwrap();
    assert!(api.get("CorsConfiguration").is_none());
    // lambda_http puts a named stage in front of every path, which no route would match.
    assert_eq!(
        api.get("StageName").and_then(Value::as_str),
        Some("$default")
    );
    assert!(get(api, &["DefaultRouteSettings", "ThrottlingRateLimit"]).is_some());
    let token = get(api, &["RouteSettings", "POST /api/v1/token"]).unwrap();
    assert_eq!(
        reference(token.get("ThrottlingRateLimit").unwrap()).0,
        "TokenThrottleRate"
    );
    assert_eq!(
        reference(get(api, &["AccessLogSettings", "DestinationArn"]).unwrap()).0,
        "ApiAccessLogGroup"
    );
    assert!(
        ROUTES
            .iter()
            .any(|(m, p, _, _)| format!("{m} {p}") == "POST /api/v1/token")
    );
}

#[test]
fn the_deployed_functions_are_given_no_endpoint_of_their_own() {
    // The endpoint variables are there for `sam local` to set; on AWS a value would send every
    // request of the functions, signed and carrying secrets, wherever it names.
    let template = template();
    let (tag, equals) = tagged(get(&template, &["Conditions", "SamLocalOnly"]).unwrap()).unwrap();
    assert_eq!(tag, "Equals");
    let equals = equals.as_sequence().unwrap();
    assert_eq!(reference(&equals[0]).0, "AWS::URLSuffix");
    assert_eq!(equals[1].as_str(), Some(""), "never true on AWS");
    let mut environments = vec![
        get(
            &template,
            &["Globals", "Function", "Environment", "Variables"],
        )
        .unwrap(),
    ];
    for (_, function) in of_type(&template, "AWS::Serverless::Function") {
        environments.extend(get(function, &["Properties", "Environment", "Variables"]));
    }
    let mut declared = BTreeSet::new();
    for (name, value) in environments.iter().flat_map(|v| v.as_mapping().unwrap()) {
        let name = text(name);
        if !name.starts_with("AWS_ENDPOINT_URL") {
            continue;
        }
        let (tag, choice) =
            tagged(value).unwrap_or_else(|| panic!("{name} is set on AWS: {value:?}"));
        assert_eq!(tag, "If", "{name}");
        let choice = choice.as_sequence().unwrap();
        assert_eq!(choice[0].as_str(), Some("SamLocalOnly"), "{name}");
        assert_eq!(reference(&choice[2]).0, "AWS::NoValue", "{name}");
        declared.insert(name.to_owned());
    }
    // The two services the functions call.
    assert_eq!(
        declared,
        BTreeSet::from([
            "AWS_ENDPOINT_URL_DYNAMODB".to_owned(),
            "AWS_ENDPOINT_URL_SECRETS_MANAGER".to_owned()
        ])
    );
}

#[test]
fn the_functions_are_the_workspaces_lambda_binaries_for_arm64_on_al2023() {
    let template = template();
    let globals = get(&template, &["Globals", "Function"]).unwrap();
    assert_eq!(
        globals.get("Runtime").and_then(Value::as_str),
        Some("provided.al2023")
    );
    assert_eq!(
        globals
            .get("Architectures")
            .and_then(Value::as_sequence)
            .map(|a| a.len()),
        Some(1)
    );
    assert_eq!(globals["Architectures"][0].as_str(), Some("arm64"));
    // Every binary of functions/*/ and nothing else.
    let mut binaries = BTreeSet::new();
    for entry in std::fs::read_dir(fixture::repo_root().join("functions")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let parsed: toml_bins::Manifest = toml_bins::parse(&text);
        binaries.extend(parsed.bins);
    }
    let declared: BTreeSet<String> = functions_by_binary(&template).into_keys().collect();
    assert_eq!(
        declared, binaries,
        "template functions (left) vs functions/*/ binaries (right)"
    );
    for group in FunctionGroup::ALL {
        assert!(declared.contains(&binary_of(group)), "{group:?}");
    }
    for (name, function) in of_type(&template, "AWS::Serverless::Function") {
        let properties = function.get("Properties").unwrap();
        assert_eq!(
            properties.get("CodeUri").and_then(Value::as_str),
            Some("."),
            "{name}"
        );
        for setting in ["MemorySize", "Timeout"] {
            assert!(
                properties.get(setting).is_some(),
                "{name}: {setting} is chosen per function"
            );
        }
    }
}

/// Just enough of a Cargo manifest: the `name` of each `[[bin]]`.
mod toml_bins {
    pub struct Manifest {
        pub bins: Vec<String>,
    }

    pub fn parse(text: &str) -> Manifest {
        let mut bins = Vec::new();
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(value) = line.strip_prefix("name") {
                let value = value.trim_start().trim_start_matches('=').trim();
                bins.push(value.trim_matches('"').to_owned());
            }
        }
        Manifest { bins }
    }
}

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

#[test]
fn the_functions_environment_names_every_table() {
    let template = template();
    let tables = tables(&template);
    let variables = get(
        &template,
        &["Globals", "Function", "Environment", "Variables"],
    )
    .unwrap();
    let command = get(&template, &["Outputs", "CreateOrgCommand", "Value"]).unwrap();
    let (tag, command) = tagged(command).unwrap();
    assert_eq!(tag, "Sub");
    let command = text(command);
    assert!(command.contains("agentidp-admin -- --store dynamodb create-org"));
    for spec in &TABLE_SPECS {
        let (logical, _) = tables
            .iter()
            .find(|(_, s)| s.suffix == spec.suffix)
            .unwrap();
        let value = variables
            .get(spec.env_var)
            .unwrap_or_else(|| panic!("Globals set no {}", spec.env_var));
        assert_eq!(
            reference(value),
            (logical.clone(), String::new()),
            "{}",
            spec.env_var
        );
        assert!(
            command.contains(&format!("{}=${{{logical}}}", spec.env_var)),
            "the CreateOrgCommand output sets no {}",
            spec.env_var
        );
    }
    // Every AGENTIDP_ variable the template sets is one the code reads (a misspelt name would
    // be ignored silently, leaving the default), and the issuer, which has no default on
    // Lambda, is set. Settings with good defaults need not be parameters.
    let mut read = BTreeSet::new();
    let mut sources: Vec<_> = std::fs::read_dir(fixture::repo_root().join("shared"))
        .unwrap()
        .map(|crate_dir| crate_dir.unwrap().path().join("src"))
        .collect();
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            sources.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let code = std::fs::read_to_string(&path).unwrap();
            for piece in code.split('"').skip(1).step_by(2) {
                if piece.starts_with("AGENTIDP_")
                    && piece.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                {
                    read.insert(piece.to_owned());
                }
            }
        }
    }
    assert!(variables.get("AGENTIDP_ISSUER").is_some());
    let mut set = vec![variables];
    for (_, function) in of_type(&template, "AWS::Serverless::Function") {
        set.extend(get(function, &["Properties", "Environment", "Variables"]));
    }
    for (name, _) in set.iter().flat_map(|v| v.as_mapping().unwrap()) {
        let name = text(name);
        if name.starts_with("AGENTIDP_") {
            assert!(
                read.contains(name),
                "the template sets {name}, which no code reads"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IAM: granted (from the template) against used (observed on DynamoDB Local)
// ---------------------------------------------------------------------------------------------

/// One permission: an IAM action on a resource, the resource written as `table:<suffix>`,
/// `table:<suffix>/index/<name>`, `private-keys` (the signing-key secret), `public-keys` (the
/// secret with the public key set) or `kms-key` (the key that encrypts the private keys).
type Grant = (String, String);

/// The logical id of the role SAM makes for a function that names no `Role`.
fn role_of(function: &str) -> String {
    format!("{function}Role")
}

/// Every IAM policy document that applies to a function's role: the function's `Policies`, and
/// each `AWS::IAM::Policy` resource attached to its role (the way a policy may name a resource
/// whose own policy names the role, without a circular dependency).
fn policy_documents<'a>(template: &'a Value, function: &str) -> Vec<&'a Value> {
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

fn granted(template: &Value, function: &str) -> BTreeSet<Grant> {
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

fn grants(pairs: &[(&str, &str)]) -> BTreeSet<Grant> {
    pairs
        .iter()
        .map(|(action, resource)| ((*action).to_owned(), (*resource).to_owned()))
        .collect()
}

/// Records, for every DynamoDB request, the IAM permissions it needs.
#[derive(Debug, Clone, Default)]
struct Recorder {
    names: Arc<BTreeMap<String, &'static str>>,
    used: Arc<Mutex<BTreeSet<Grant>>>,
}

impl Recorder {
    fn new(tables: &TableNames) -> Self {
        let names = TABLE_SPECS
            .iter()
            .map(|spec| (tables.name(spec.role).to_owned(), spec.suffix))
            .collect();
        Self {
            names: Arc::new(names),
            used: Arc::default(),
        }
    }

    fn note(&self, action: &str, table: &str, index: Option<&str>) {
        let suffix = self
            .names
            .get(table)
            .unwrap_or_else(|| panic!("a request to an unknown table {table}"));
        let resource = match index {
            Some(index) => format!("table:{suffix}/index/{index}"),
            None => format!("table:{suffix}"),
        };
        self.used
            .lock()
            .unwrap()
            .insert((format!("dynamodb:{action}"), resource));
    }

    fn take(&self) -> BTreeSet<Grant> {
        std::mem::take(&mut *self.used.lock().unwrap())
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "IamRecorder"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let table = |name: Option<&str>| name.unwrap_or_default().to_owned();
        if let Some(i) = input.downcast_ref::<GetItemInput>() {
            self.note("GetItem", &table(i.table_name()), None);
        } else if let Some(i) = input.downcast_ref::<QueryInput>() {
            self.note("Query", &table(i.table_name()), i.index_name());
        } else if let Some(i) = input.downcast_ref::<ScanInput>() {
            self.note("Scan", &table(i.table_name()), i.index_name());
        } else if let Some(i) = input.downcast_ref::<PutItemInput>() {
            self.note("PutItem", &table(i.table_name()), None);
        } else if let Some(i) = input.downcast_ref::<UpdateItemInput>() {
            self.note("UpdateItem", &table(i.table_name()), None);
        } else if let Some(i) = input.downcast_ref::<DeleteItemInput>() {
            self.note("DeleteItem", &table(i.table_name()), None);
        } else if let Some(i) = input.downcast_ref::<BatchGetItemInput>() {
            for name in i.request_items().into_iter().flat_map(|m| m.keys()) {
                self.note("BatchGetItem", name, None);
            }
        } else if let Some(i) = input.downcast_ref::<BatchWriteItemInput>() {
            for name in i.request_items().into_iter().flat_map(|m| m.keys()) {
                self.note("BatchWriteItem", name, None);
            }
        } else if let Some(i) = input.downcast_ref::<TransactGetItemsInput>() {
            // Each item of a transaction needs the permission of its single-item action.
            for item in i.transact_items() {
                if let Some(get) = item.get() {
                    self.note("GetItem", get.table_name(), None);
                }
            }
        } else if let Some(i) = input.downcast_ref::<TransactWriteItemsInput>() {
            for item in i.transact_items() {
                if let Some(put) = item.put() {
                    self.note("PutItem", put.table_name(), None);
                }
                if let Some(update) = item.update() {
                    self.note("UpdateItem", update.table_name(), None);
                }
                if let Some(delete) = item.delete() {
                    self.note("DeleteItem", delete.table_name(), None);
                }
                if let Some(check) = item.condition_check() {
                    self.note("ConditionCheckItem", check.table_name(), None);
                }
            }
        } else {
            panic!(
                "the store sent a DynamoDB request this test does not map to IAM actions: {input:?}"
            );
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_functions_iam_policy_grants_exactly_the_dynamodb_access_its_events_use() {
    let template = template();
    let functions = functions_by_binary(&template);
    let names = TableNames::with_prefix(&format!("agentidp-iam-{}", Uuid::new_v4().simple()));
    let plain = agentidp_testkit::dynamodb_client();
    ensure_tables(&plain, &names).await.unwrap();
    fixture::seed(&DynamoStore::new(plain, names.clone()), chrono::Utc::now()).await;

    let recorder = Recorder::new(&names);
    let recording = aws_sdk_dynamodb::Client::from_conf(
        agentidp_testkit::dynamodb_config()
            .interceptor(recorder.clone())
            .build(),
    );
    let cases = fixture::load_events();
    let mut problems = Vec::new();
    for group in FunctionGroup::ALL {
        // An Idp per function, as each function has instances of its own: what one has cached
        // (organizations, keys) another reads for itself.
        let idp = fixture::idp(Arc::new(DynamoStore::new(recording.clone(), names.clone())));
        recorder.take();
        // The events of one function, in name order, on the one seeded table set: they are
        // written not to depend on each other (see shared/integration/tests/fixture/mod.rs).
        for case in cases.iter().filter(|c| c.target == Target::Api(group)) {
            let (status, body) = fixture::invoke(&idp, group, &case.json).await;
            if Expected::Status(status) != case.expected {
                problems.push(format!(
                    "events/{} on DynamoDB: expected {:?}, got {status}: {body}",
                    case.name, case.expected
                ));
            }
        }
        let used = recorder.take();
        let function = &functions[&binary_of(group)];
        let granted = granted(&template, function);
        let granted_dynamodb: BTreeSet<Grant> = granted
            .iter()
            .filter(|(action, _)| action.starts_with("dynamodb:"))
            .cloned()
            .collect();
        for missing in used.difference(&granted_dynamodb) {
            problems.push(format!(
                "{function} uses {missing:?}, which its policy does not grant"
            ));
        }
        for surplus in granted_dynamodb.difference(&used) {
            problems.push(format!(
                "{function} is granted {surplus:?}, which none of its events uses"
            ));
        }
        // The tokens function signs: it reads the private key set, which the KMS key decrypts.
        // The others only verify bearer tokens: they read the public key set and nothing else.
        let keys: BTreeSet<Grant> = granted
            .iter()
            .filter(|(action, _)| !action.starts_with("dynamodb:"))
            .cloned()
            .collect();
        let expected = match group {
            FunctionGroup::Tokens => grants(&[
                ("secretsmanager:GetSecretValue", "private-keys"),
                ("kms:Decrypt", "kms-key"),
            ]),
            FunctionGroup::Agents | FunctionGroup::Credentials | FunctionGroup::Audit => {
                grants(&[("secretsmanager:GetSecretValue", "public-keys")])
            }
        };
        assert_eq!(keys, expected, "{function}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_the_rotation_function_writes_the_secret_and_it_touches_no_table() {
    let template = template();
    let functions = functions_by_binary(&template);
    let rotation = &functions["agentidp-key-rotation"];
    let granted = granted(&template, rotation);
    let expected = grants(&[
        ("secretsmanager:DescribeSecret", "private-keys"),
        ("secretsmanager:GetSecretValue", "private-keys"),
        ("secretsmanager:PutSecretValue", "private-keys"),
        ("secretsmanager:UpdateSecretVersionStage", "private-keys"),
        ("kms:Decrypt", "kms-key"),
        ("kms:GenerateDataKey", "kms-key"),
        // It publishes the public key set, comparing it with what is there first.
        ("secretsmanager:GetSecretValue", "public-keys"),
        ("secretsmanager:PutSecretValue", "public-keys"),
    ]);
    assert_eq!(granted, expected);
    let schedule = of_type(&template, "AWS::SecretsManager::RotationSchedule");
    assert_eq!(schedule.len(), 1);
    let properties = schedule[0].1.get("Properties").unwrap();
    assert_eq!(reference(&properties["RotationLambdaARN"]).0, *rotation);
    assert_eq!(reference(&properties["SecretId"]).0, "SigningKeySecret");
    assert_eq!(
        properties
            .get("RotateImmediatelyOnUpdate")
            .and_then(Value::as_bool),
        Some(true),
        "the first key comes from a rotation right after the stack creates the secret"
    );
    assert_eq!(
        reference(get(properties, &["RotationRules", "AutomaticallyAfterDays"]).unwrap()).0,
        "KeyRotationDays"
    );
}

// ---------------------------------------------------------------------------------------------
// Signing keys: who may read the private key set
// ---------------------------------------------------------------------------------------------

/// The functions whose grants include an action on `resource` (in [`Grant`]'s naming).
fn functions_granted(template: &Value, resource: &str, action: &str) -> BTreeSet<String> {
    of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .filter(|(name, _)| {
            granted(template, name)
                .iter()
                .any(|(a, r)| r == resource && a == action)
        })
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn only_the_token_and_rotation_functions_can_read_the_private_signing_keys() {
    let template = template();
    let functions = functions_by_binary(&template);
    let signers = BTreeSet::from([
        functions["agentidp-tokens"].clone(),
        functions["agentidp-key-rotation"].clone(),
    ]);
    // Every grant in the stack is one that `granted` sees: policies sit on the functions' own
    // roles, and nothing else (a role, a managed policy, a secret's resource policy) can grant.
    for kind in [
        "AWS::IAM::Role",
        "AWS::IAM::ManagedPolicy",
        "AWS::SecretsManager::ResourcePolicy",
    ] {
        assert!(of_type(&template, kind).is_empty(), "a {kind} in the stack");
    }
    let roles: BTreeSet<String> = functions.values().map(|f| role_of(f)).collect();
    for (name, policy) in of_type(&template, "AWS::IAM::Policy") {
        for role in list(get(policy, &["Properties", "Roles"]).unwrap()) {
            let role = reference(role).0;
            assert!(roles.contains(&role), "{name} is attached to {role}");
        }
    }
    assert_eq!(
        functions_granted(&template, "private-keys", "secretsmanager:GetSecretValue"),
        signers,
        "readers of the private key set"
    );
    assert_eq!(
        functions_granted(&template, "kms-key", "kms:Decrypt"),
        signers,
        "decrypters of the private key set"
    );
    for (binary, function) in &functions {
        let granted = granted(&template, function);
        if !signers.contains(function) {
            assert!(
                granted
                    .iter()
                    .all(|(_, r)| r != "private-keys" && r != "kms-key"),
                "{binary}: {granted:?}"
            );
            assert!(
                granted.contains(&(
                    "secretsmanager:GetSecretValue".to_owned(),
                    "public-keys".to_owned()
                )),
                "{binary} verifies tokens with the public key set"
            );
        }
    }
    // Each function is told only of the secret it reads: the tokens function of the private key
    // set; the verifying functions and the rotation (which writes it) of the public one.
    let globals = get(
        &template,
        &["Globals", "Function", "Environment", "Variables"],
    )
    .unwrap();
    for variable in [
        "AGENTIDP_SIGNING_KEY_SECRET_ID",
        "AGENTIDP_PUBLIC_KEYS_SECRET_ID",
    ] {
        assert!(globals.get(variable).is_none(), "Globals set {variable}");
    }
    for (binary, function) in &functions {
        let variables = get(
            resource(&template, function),
            &["Properties", "Environment", "Variables"],
        );
        let secret_of = |variable: &str| {
            variables
                .and_then(|v| v.get(variable))
                .map(|v| reference(v).0)
        };
        let (private, public) = match binary.as_str() {
            "agentidp-tokens" => (Some("SigningKeySecret"), None),
            _ => (None, Some("PublicKeysSecret")),
        };
        assert_eq!(
            secret_of("AGENTIDP_SIGNING_KEY_SECRET_ID").as_deref(),
            private,
            "{binary}"
        );
        assert_eq!(
            secret_of("AGENTIDP_PUBLIC_KEYS_SECRET_ID").as_deref(),
            public,
            "{binary}"
        );
    }
}

/// A condition's value, by operator and key.
fn condition<'a>(statement: &'a Value, operator: &str, key: &str) -> Option<&'a Value> {
    get(statement, &["Condition", operator, key])
}

#[test]
fn the_private_key_set_is_encrypted_with_a_key_only_the_token_and_rotation_roles_decrypt_with() {
    let template = template();
    let secret = resource(&template, "SigningKeySecret");
    let key_id = get(secret, &["Properties", "KmsKeyId"]).expect("the secret names its KMS key");
    let key_name = reference(key_id).0;
    assert_eq!(key_name, "SigningKeyEncryptionKey");
    let key = resource(&template, &key_name);
    assert_eq!(
        key.get("Type").and_then(Value::as_str),
        Some("AWS::KMS::Key")
    );
    let functions = functions_by_binary(&template);
    let signer_roles = BTreeSet::from([
        role_of(&functions["agentidp-tokens"]),
        role_of(&functions["agentidp-key-rotation"]),
    ]);
    let statements = get(key, &["Properties", "KeyPolicy", "Statement"])
        .and_then(Value::as_sequence)
        .unwrap();
    // Actions that reveal what the key encrypted, directly or by granting it to another.
    let reveals =
        |action: &str| ["kms:Decrypt", "kms:ReEncryptFrom", "kms:CreateGrant"].contains(&action);
    let via_secrets_manager = |statement: &Value| {
        condition(statement, "StringEquals", "kms:ViaService").is_some_and(|service| {
            let (tag, value) = tagged(service).unwrap();
            tag == "Sub" && text(value) == "secretsmanager.${AWS::Region}.amazonaws.com"
        })
    };
    let mut decrypting_roles = BTreeSet::new();
    for statement in statements {
        let sid = statement.get("Sid").and_then(Value::as_str).unwrap_or("?");
        assert_eq!(
            statement.get("Effect").and_then(Value::as_str),
            Some("Allow"),
            "{sid}"
        );
        assert!(statement.get("NotAction").is_none() && statement.get("NotPrincipal").is_none());
        // The account is the only principal: a statement admits no role of itself, and the
        // account's IAM policies decide which of its principals act on the key, within the
        // conditions below.
        let principal = get(statement, &["Principal", "AWS"]).unwrap();
        let (tag, principal) = tagged(principal).unwrap();
        assert_eq!(
            (tag.as_str(), text(principal)),
            ("Sub", "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"),
            "{sid}"
        );
        let actions: Vec<&str> = list(&statement["Action"]).into_iter().map(text).collect();
        for action in &actions {
            assert!(!action.contains('*'), "{sid}: wildcard action {action}");
        }
        let crypto = actions.iter().any(|a| {
            reveals(a) || a.starts_with("kms:Encrypt") || a.starts_with("kms:GenerateDataKey")
        });
        if !crypto {
            assert!(
                statement.get("Condition").is_none(),
                "{sid}: administration"
            );
            continue;
        }
        assert!(
            via_secrets_manager(statement),
            "{sid}: the key is used only through Secrets Manager"
        );
        if !actions.iter().any(|a| reveals(a)) {
            continue;
        }
        let validation = condition(
            statement,
            "StringEquals",
            "kms:EncryptionContext:SecretVersionId",
        )
        .and_then(Value::as_str);
        match condition(statement, "ArnEquals", "aws:PrincipalArn") {
            Some(roles) => {
                assert!(validation.is_none(), "{sid}");
                for role in list(roles) {
                    let role = reference(role).0;
                    assert!(
                        signer_roles.contains(&role),
                        "{sid}: {role} may decrypt the private key set"
                    );
                    decrypting_roles.insert(role);
                }
            }
            // Secrets Manager checks that whoever sets a secret's key may use it, with a
            // Decrypt under this encryption context; it decrypts nothing of the secret.
            None => assert_eq!(
                validation,
                Some("RequestToValidateKeyAccess"),
                "{sid}: a decrypt for anyone but the token and rotation roles"
            ),
        }
    }
    assert_eq!(decrypting_roles, signer_roles);
}

#[test]
fn the_introspection_and_revocation_routes_have_the_token_routes_throttling() {
    let template = template();
    let settings = get(http_api(&template), &["Properties", "RouteSettings"]).unwrap();
    let routes = routes(&template);
    // Each authenticates a client as the token route does (a bcrypt verification for a secret
    // the instance has not seen), so each gets the token route's tighter limits.
    for key in [
        "POST /api/v1/token",
        "POST /api/v1/token/introspect",
        "POST /api/v1/token/revoke",
    ] {
        assert!(
            ROUTES.iter().any(|(m, p, _, _)| format!("{m} {p}") == key),
            "{key}"
        );
        // Route settings may only name routes of the API.
        assert!(routes.contains_key(key), "{key}: not a route of the API");
        let route = settings
            .get(key)
            .unwrap_or_else(|| panic!("no route settings for {key}"));
        assert_eq!(
            reference(&route["ThrottlingRateLimit"]).0,
            "TokenThrottleRate",
            "{key}"
        );
        assert_eq!(
            reference(&route["ThrottlingBurstLimit"]).0,
            "TokenThrottleBurst",
            "{key}"
        );
    }
}
