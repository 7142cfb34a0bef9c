//! Every file in `events/` is a real invocation of one of the functions, checked here, so no
//! sample event can go stale:
//!
//! - each API Gateway event runs through `agentidp_lambda::handle` with the function
//!   group of its directory, on an `Idp` over a freshly seeded in-memory store, and must answer
//!   the status `events/expected-status.json` gives it;
//! - each rotation event runs through the rotation steps on moto_server's Secrets Manager
//!   (`AGENTIDP_TEST_MOTO_ENDPOINT`, which `scripts/test.sh` starts; without it this test fails);
//! - every route of `ROUTES` has an event that succeeds (the authorization endpoint, which
//!   supports no response type, an event it refuses), and every event looks as API Gateway
//!   would send it for its route;
//! - a file that is in `events/` but not in `expected-status.json` (or the reverse) fails.
//!
//! The ignored tests are tools: `seed_dynamodb_fixture` writes the fixture into the tables
//! named by `AGENTIDP_*_TABLE` (the packaging script's runtime loop), `print_fixture_tokens`
//! signs the events' access tokens again.

#[expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on the first surprise"
)]
mod fixture;

use std::collections::BTreeSet;
use std::sync::Arc;

use agentidp_aws::rotation::Rotator;
use agentidp_core::signing::{SigningAlgorithm, TokenPolicy, TokenRejection};
use agentidp_http::{Endpoint, FunctionGroup, ROUTES, route};
use agentidp_store_sqlite::SqliteStore;
use chrono::Utc;
use fixture::{EventCase, Expected, Target};
use http::Method;
use serde_json::Value;

fn text<'a>(event: &'a Value, pointer: &str) -> &'a str {
    event
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn api_cases() -> Vec<(EventCase, FunctionGroup)> {
    fixture::load_events()
        .into_iter()
        .filter_map(|case| match case.target {
            Target::Api(group) => Some((case, group)),
            Target::KeyRotation => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_event_answers_its_expected_status_on_a_seeded_store() {
    let cases = api_cases();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for (case, group) in &cases {
        // A fresh store per event: each event's outcome depends only on the fixture.
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        fixture::seed(store.as_ref(), Utc::now()).await;
        let idp = fixture::idp(store);
        let (status, body) = fixture::invoke(&idp, *group, &case.json).await;
        if Expected::Status(status) != case.expected {
            failures.push(format!(
                "events/{}: expected {:?}, got {status}: {body}",
                case.name, case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_route_has_an_event_that_succeeds_and_events_look_as_api_gateway_sends_them() {
    let cases = api_cases();
    let mut problems = Vec::new();
    let mut succeeded = BTreeSet::new();
    for (case, group) in &cases {
        let event = &case.json;
        let method = text(event, "/requestContext/http/method");
        let raw_path = text(event, "/rawPath");
        if event.get("version").and_then(Value::as_str) != Some("2.0") {
            problems.push(format!("events/{}: version is not \"2.0\"", case.name));
        }
        if text(event, "/requestContext/http/path") != raw_path {
            problems.push(format!(
                "events/{}: requestContext.http.path differs from rawPath",
                case.name
            ));
        }
        if text(event, "/requestContext/stage") != "$default" {
            problems.push(format!(
                "events/{}: the API has only the $default stage",
                case.name
            ));
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            problems.push(format!("events/{}: bad method", case.name));
            continue;
        };
        let Ok(matched) = route(&method, raw_path) else {
            problems.push(format!(
                "events/{}: {method} {raw_path} is no route; API Gateway would not deliver it",
                case.name
            ));
            continue;
        };
        let route_key = format!("{method} {}", matched.template);
        let route_group = &matched.group;
        for pointer in ["/routeKey", "/requestContext/routeKey"] {
            if text(event, pointer) != route_key {
                problems.push(format!(
                    "events/{}: {pointer} should be `{route_key}`",
                    case.name
                ));
            }
        }
        if route_group != group {
            problems.push(format!(
                "events/{}: {route_key} is served by the {} function, not {}",
                case.name,
                route_group.as_str(),
                group.as_str()
            ));
        }
        let answers_as_designed = match matched.endpoint {
            // Supports no response type: its best answer is its documented refusal.
            Endpoint::Authorize => 400..401,
            _ => 200..300,
        };
        if let Expected::Status(status) = case.expected
            && answers_as_designed.contains(&status)
        {
            succeeded.insert(route_key);
        }
    }
    for (method, template, _, _) in ROUTES {
        let key = format!("{method} {template}");
        if !succeeded.contains(&key) {
            problems.push(format!(
                "route {key} has no event in events/ that is expected to succeed"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The tokens in the events are the fixture's: signed by its key set, with the claims the
/// fixture says. A new key set or changed ids without new tokens fails here, not as 401s.
#[test]
fn the_events_tokens_are_the_fixtures() {
    let keys = fixture::key_set();
    let config = fixture::config();
    let policy = TokenPolicy {
        issuer: config.issuer.clone(),
        audience: config.audience.clone(),
        lifetime_seconds: config.token_lifetime_seconds,
    };
    let known = fixture::fixture_token_by_jti();
    let mut seen = BTreeSet::new();
    for (case, _) in api_cases() {
        let mut tokens = Vec::new();
        let authorization = text(&case.json, "/headers/authorization");
        if let Some(token) = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("DPoP "))
        {
            tokens.push(token.to_owned());
        }
        let body = text(&case.json, "/body");
        let body = if case.json.get("isBase64Encoded") == Some(&Value::Bool(true)) {
            use base64::Engine;
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .unwrap(),
            )
            .unwrap()
        } else {
            body.to_owned()
        };
        for (name, value) in form_urlencoded::parse(body.as_bytes()) {
            if name == "token" {
                tokens.push(value.into_owned());
            }
        }
        for token in tokens {
            let Ok(header) = jsonwebtoken::decode_header(&token) else {
                assert!(
                    case.name.contains("malformed"),
                    "events/{}: the token is not a JWT",
                    case.name
                );
                continue;
            };
            assert!(header.kid.is_some(), "events/{}", case.name);
            let claims = match keys.verify(&token, &policy, Utc::now()) {
                Ok(claims) => claims,
                Err(TokenRejection::Expired) => {
                    // Valid in its own hour; the claims are compared with the fixture below.
                    let then =
                        chrono::DateTime::from_timestamp(fixture::ISSUED_AT + 60, 0).unwrap();
                    keys.verify(&token, &policy, then).unwrap_or_else(|e| {
                        panic!(
                            "events/{}: expired token fails otherwise too: {e}",
                            case.name
                        )
                    })
                }
                Err(e) => panic!(
                    "events/{}: token refused by the fixture keys: {e}",
                    case.name
                ),
            };
            let fixture = known
                .get(claims.jti.as_str())
                .unwrap_or_else(|| panic!("events/{}: unknown jti {}", case.name, claims.jti));
            assert_eq!(
                claims,
                fixture::claims(fixture, &config),
                "events/{}",
                case.name
            );
            seen.insert(claims.jti);
        }
    }
    for token in fixture::TOKENS {
        assert!(
            seen.contains(token.jti),
            "the fixture token `{}` is used by no event",
            token.name
        );
    }
}

/// The rotation events, in file-name order (create, set, test, finish, then the errors), on a
/// fresh secret holding the fixture key set: the `SecretId` of each event is replaced by it.
#[tokio::test]
async fn every_rotation_event_succeeds_or_fails_as_expected_on_moto() {
    let client = agentidp_testkit::secrets_manager_client();
    let name = format!("agentidp-events-{}", uuid::Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string(fixture::key_document().to_json().unwrap())
        .send()
        .await
        .unwrap();
    let rotator = Rotator::new(client.clone(), SigningAlgorithm::ES256);
    let cases: Vec<EventCase> = fixture::load_events()
        .into_iter()
        .filter(|case| case.target == Target::KeyRotation)
        .collect();
    assert!(
        cases.len() >= 4,
        "the four rotation steps need an event each"
    );
    let mut steps_done = BTreeSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        for field in ["Step", "SecretId", "ClientRequestToken"] {
            assert!(
                case.json.get(field).is_some_and(Value::is_string),
                "events/{}: {field} is missing",
                case.name
            );
        }
        let step = text(&case.json, "/Step");
        let token = text(&case.json, "/ClientRequestToken");
        let result = rotator.run(step, &name, token, Utc::now()).await;
        match (&case.expected, &result) {
            (Expected::RotationOk, Ok(_)) => {
                steps_done.insert(step.to_owned());
            }
            (Expected::RotationError, Err(_)) => {}
            _ => failures.push(format!(
                "events/{}: expected {:?}, got {result:?}",
                case.name, case.expected
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        steps_done,
        BTreeSet::from(
            ["createSecret", "setSecret", "testSecret", "finishSecret"].map(str::to_owned)
        ),
        "every step has an event that succeeds"
    );
    // The rotation events together made a real rotation: the fixture's key still verifies, and
    // a new one signs.
    // The stage is named: moto answers a read without one with the version the secret was
    // created with, not with AWSCURRENT as Secrets Manager does.
    let current = client
        .get_secret_value()
        .secret_id(&name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    let document =
        agentidp_core::signing::KeySetDocument::parse(current.secret_string().unwrap()).unwrap();
    let old = fixture::key_document();
    assert_eq!(document.keys.len(), old.keys.len() + 1);
    assert_eq!(document.keys[1].kid, old.keys[0].kid);
}

/// For `scripts/check-packaging.sh`: writes the fixture into the DynamoDB tables named by
/// `AGENTIDP_*_TABLE`, at the endpoint of `AWS_ENDPOINT_URL_DYNAMODB`.
#[tokio::test]
#[ignore = "a tool of scripts/check-packaging.sh, not a test"]
async fn seed_dynamodb_fixture() {
    let tables =
        agentidp_store_dynamodb::TableNames::from_lookup(&agentidp_core::config::process_env)
            .unwrap();
    let client = agentidp_store_dynamodb::client_from_env().await;
    let store = agentidp_store_dynamodb::DynamoStore::new(client, tables);
    fixture::seed(&store, Utc::now()).await;
}

/// Prints the events' access tokens, signed with `events/fixture/signing-keys.json`, for when
/// the fixture's keys or ids change.
#[test]
#[ignore = "a tool for updating events/, not a test"]
fn print_fixture_tokens() {
    let keys = fixture::key_set();
    let config = fixture::config();
    for token in fixture::TOKENS {
        println!(
            "{}\t{}",
            token.jti,
            keys.sign(&fixture::claims(&token, &config)).unwrap()
        );
    }
}
