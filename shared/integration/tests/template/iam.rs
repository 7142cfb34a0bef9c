//! IAM: granted (from the template) against used (observed on DynamoDB Local).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use agentidp_http::FunctionGroup;
use agentidp_store_dynamodb::{DynamoStore, TABLE_SPECS, TableNames, ensure_tables};
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
use serde_yaml_ng::Value;
use uuid::Uuid;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::fixture::{self, EventCase, Expected, Target};
use crate::support::{
    Grant, binary_of, functions_by_binary, get, granted, of_type, reference, template,
};

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
async fn each_functions_iam_policy_grants_exactly_the_dynamodb_access_its_events_and_a_dpop_request_use()
 {
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
    let dpop = FreshDpop::obtain(&cases, &names).await;
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
        // What no event can hold: a fresh DPoP proof (its use is a conditional write).
        let (status, body) = fixture::invoke(&idp, group, &dpop.event(&cases, group)).await;
        if status != 200 {
            problems.push(format!(
                "a DPoP request to {group:?}: expected 200, got {status}: {body}"
            ));
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

/// A DPoP key, and a token of the admin bound to it, got from the tokens function before the
/// measured runs: with them each function gets a request no event can hold, a fresh proof.
struct FreshDpop {
    key: EcdsaKeyPair,
    token: String,
}

impl FreshDpop {
    async fn obtain(cases: &[EventCase], names: &TableNames) -> Self {
        let store = DynamoStore::new(agentidp_testkit::dynamodb_client(), names.clone());
        let idp = fixture::idp(Arc::new(store));
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let mut this = Self {
            key,
            token: String::new(),
        };
        let event = this.event(cases, FunctionGroup::Tokens);
        let (status, body) = fixture::invoke(&idp, FunctionGroup::Tokens, &event).await;
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["token_type"], "DPoP");
        this.token = body["access_token"].as_str().unwrap().to_owned();
        this
    }

    /// A proof for `method` `path`, with `ath` when a token goes with it.
    fn proof(&self, method: &str, path: &str, token: Option<&str>) -> String {
        let point = self.key.public_key().as_ref();
        let header = serde_json::json!({
            "typ": "dpop+jwt",
            "alg": "ES256",
            "jwk": {
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            },
        });
        let mut claims = serde_json::json!({
            "jti": Uuid::new_v4().to_string(),
            "htm": method,
            "htu": format!("{}{path}", fixture::config().public_url),
            "iat": chrono::Utc::now().timestamp(),
        });
        if let Some(token) = token {
            claims["ath"] = serde_json::json!(agentidp_core::dpop::access_token_hash(token));
        }
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// `group`'s request with a fresh proof: the admin's token request, or a read of the
    /// management API with the bound token.
    fn event(&self, cases: &[EventCase], group: FunctionGroup) -> serde_json::Value {
        let (name, path) = match group {
            FunctionGroup::Tokens => ("tokens/token.json", "/api/v1/token".to_owned()),
            FunctionGroup::Agents => (
                "agents/get-agent.json",
                format!("/api/v1/agents/{}", fixture::AGENT_ADMIN),
            ),
            FunctionGroup::Credentials => (
                "credentials/list-credentials.json",
                format!("/api/v1/agents/{}/credentials", fixture::AGENT_ADMIN),
            ),
            FunctionGroup::Audit => ("audit/list-audit.json", "/api/v1/audit".to_owned()),
        };
        let mut event = cases
            .iter()
            .find(|case| case.name == name)
            .unwrap_or_else(|| panic!("events/{name} is gone"))
            .json
            .clone();
        let method = event["requestContext"]["http"]["method"]
            .as_str()
            .unwrap()
            .to_owned();
        event["rawPath"] = serde_json::json!(path);
        event["requestContext"]["http"]["path"] = serde_json::json!(path);
        if group == FunctionGroup::Tokens {
            // Every scope the admin holds, for the reads of the other functions.
            let form = "grant_type=client_credentials";
            event["body"] = serde_json::json!(STANDARD.encode(form));
            event["headers"]["content-length"] = serde_json::json!(form.len().to_string());
        }
        let token = (group != FunctionGroup::Tokens).then_some(self.token.as_str());
        if let Some(token) = token {
            event["headers"]["authorization"] = serde_json::json!(format!("DPoP {token}"));
        }
        event["headers"]["dpop"] = serde_json::json!(self.proof(&method, &path, token));
        event
    }
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
