//! Property tests: whatever a client sends, the request parsers answer with a documented 4xx
//! (or success), never a 5xx or a panic, and the body keeps its documented shape.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::sync::{Arc, LazyLock};

use agentidp_core::config::Config;
use agentidp_core::domain::audit::RequestContext;
use agentidp_core::domain::time::SystemClock;
use agentidp_core::service::Idp;
use agentidp_core::signing::{KeySet, KeySetDocument, KeySource, SigningAlgorithm};
use agentidp_http::ApiRequest;
use agentidp_store_sqlite::SqliteStore;
use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use serde_json::Value;

struct World {
    runtime: tokio::runtime::Runtime,
    idp: Arc<Idp>,
    token: String,
    agent_id: String,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (idp, token, agent_id) = runtime.block_on(async {
        let config = Config::from_lookup(|name| match name {
            "AGENTIDP_ISSUER" => Some("http://localhost:3000".into()),
            "AGENTIDP_BCRYPT_COST" => Some("4".into()),
            _ => None,
        })
        .unwrap();
        let keys = KeySet::from_document(
            &KeySetDocument::generate(SigningAlgorithm::RS256, chrono::Utc::now()).unwrap(),
        )
        .unwrap();
        let idp = Arc::new(
            Idp::new(
                config,
                Arc::new(SqliteStore::in_memory().unwrap()),
                KeySource::Fixed(Arc::new(keys)),
                Arc::new(
                    agentidp_remote_keys::KeySetFetcher::new(
                        agentidp_core::remote_keys::KeyFetchNetwork::Development,
                    )
                    .unwrap(),
                ),
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        let org = idp
            .create_org("fuzz", agentidp_core::domain::Plan::Free)
            .await
            .unwrap();
        let basic = base64_basic(
            &org.admin.credential.client_id.to_string(),
            org.admin.client_secret.expose(),
        );
        let response = call(
            &idp,
            Method::POST,
            "/api/v1/token",
            "",
            Some(&basic),
            Some("application/x-www-form-urlencoded"),
            b"grant_type=client_credentials",
        )
        .await;
        let token = serde_json::from_slice::<Value>(response.body()).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let bearer = format!("Bearer {token}");
        let created = call(
            &idp,
            Method::POST,
            "/api/v1/agents",
            "",
            Some(&bearer),
            Some("application/json"),
            br#"{"name":"target"}"#,
        )
        .await;
        let agent_id = serde_json::from_slice::<Value>(created.body()).unwrap()["agentId"]
            .as_str()
            .unwrap()
            .to_owned();
        (idp, token, agent_id)
    });
    World {
        runtime,
        idp,
        token,
        agent_id,
    }
});

fn base64_basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

async fn call(
    idp: &Arc<Idp>,
    method: Method,
    path: &str,
    query: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> agentidp_http::ApiResponse {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if let Some(value) = content_type.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    let request = ApiRequest {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: body.to_vec(),
        context: RequestContext {
            request_id: "prop".into(),
            source_ip: None,
            user_agent: None,
        },
    };
    agentidp_http::handle(idp, None, request).await
}

/// A status below 500, and a body of the documented shape for its kind of endpoint.
fn assert_answer_is_documented(response: &agentidp_http::ApiResponse, oauth: bool) {
    let status = response.status().as_u16();
    assert!(
        status < 500,
        "status {status}: {}",
        String::from_utf8_lossy(response.body())
    );
    if status >= 400 {
        let body: Value = serde_json::from_slice(response.body()).expect("error bodies are JSON");
        if oauth {
            assert!(
                body["error"].is_string() && body["error_description"].is_string(),
                "{body}"
            );
            assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
        } else {
            assert!(
                body["code"].is_string()
                    && body["message"].is_string()
                    && body["details"].is_array(),
                "{body}"
            );
        }
    }
}

fn content_types() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("text/plain".to_owned())),
        ".{0,40}".prop_map(Some),
    ]
}

/// Bodies that are mostly almost-valid: JSON objects with known and unknown keys and values of
/// every type, forms with repeated keys, and raw bytes.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let json_value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,200}".prop_map(Value::from),
        prop::collection::vec(".{0,20}".prop_map(Value::from), 0..5).prop_map(Value::from),
    ];
    let keys = prop_oneof![
        Just("name".to_owned()),
        Just("scopes".to_owned()),
        Just("metadata".to_owned()),
        Just("status".to_owned()),
        Just("expiresAt".to_owned()),
        Just("capabilities".to_owned()),
        Just("grant_type".to_owned()),
        Just("client_id".to_owned()),
        Just("client_secret".to_owned()),
        Just("scope".to_owned()),
        Just("token".to_owned()),
        "[a-zA-Z_]{1,12}",
    ];
    prop_oneof![
        prop::collection::btree_map(keys.clone(), json_value, 0..6)
            .prop_map(|m| serde_json::to_vec(&m).unwrap()),
        prop::collection::vec((keys, ".{0,30}"), 0..6).prop_map(|pairs| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
                .into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn paths(agent_id: String) -> impl Strategy<Value = (Method, String)> {
    let id = prop_oneof![Just(agent_id), "[0-9a-f-]{0,40}", ".{0,10}"];
    (id.clone(), id).prop_flat_map(|(a, c)| {
        prop::sample::select(vec![
            (Method::POST, "/api/v1/agents".to_owned()),
            (Method::GET, "/api/v1/agents".to_owned()),
            (Method::GET, format!("/api/v1/agents/{a}")),
            (Method::PATCH, format!("/api/v1/agents/{a}")),
            (Method::DELETE, format!("/api/v1/agents/{c}")),
            (Method::POST, format!("/api/v1/agents/{a}/credentials")),
            (Method::GET, format!("/api/v1/agents/{a}/credentials")),
            (
                Method::POST,
                format!("/api/v1/agents/{a}/credentials/{c}/rotate"),
            ),
            (
                Method::DELETE,
                format!("/api/v1/agents/{a}/credentials/{c}"),
            ),
            (Method::POST, "/api/v1/token".to_owned()),
            (Method::POST, "/api/v1/token/introspect".to_owned()),
            (Method::POST, "/api/v1/token/revoke".to_owned()),
            (Method::GET, "/api/v1/audit".to_owned()),
            (Method::GET, format!("/api/v1/audit/{c}")),
            (Method::PUT, format!("/api/v1/{a}")),
        ])
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_request_body_gets_a_documented_answer_and_never_a_server_error(
        (method, path) in paths(WORLD.agent_id.clone()),
        content_type in content_types(),
        body in bodies(),
        authenticated in any::<bool>(),
    ) {
        let world = &*WORLD;
        let bearer = format!("Bearer {}", world.token);
        let oauth = path.starts_with("/api/v1/token");
        let response = world.runtime.block_on(call(
            &world.idp, method, &path, "", authenticated.then_some(bearer.as_str()), content_type.as_deref(), &body,
        ));
        assert_answer_is_documented(&response, oauth);
    }

    #[test]
    fn any_query_string_gets_a_documented_answer(
        path in prop::sample::select(vec!["/api/v1/agents", "/api/v1/audit"]),
        pairs in prop::collection::vec((
            prop_oneof![Just("page"), Just("limit"), Just("status"), Just("cursor"), Just("agentId"), Just("action"), Just("outcome"), Just("from"), Just("to"), Just("zzz")],
            prop_oneof![".{0,30}", "-?[0-9]{1,25}", "[A-Za-z0-9_-]{0,80}"],
        ), 0..6),
    ) {
        let world = &*WORLD;
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let bearer = format!("Bearer {}", world.token);
        let response = world.runtime.block_on(call(&world.idp, Method::GET, path, &query, Some(&bearer), None, b""));
        assert_answer_is_documented(&response, false);
    }

    #[test]
    fn any_authorization_header_gets_a_documented_answer(header in ".{0,300}", basic_id in ".{0,40}", basic_secret in ".{0,100}") {
        let world = &*WORLD;
        for authorization in [header.clone(), base64_basic(&basic_id, &basic_secret), format!("Bearer {header}")] {
            let token = world.runtime.block_on(call(
                &world.idp, Method::POST, "/api/v1/token", "", Some(&authorization),
                Some("application/x-www-form-urlencoded"), b"grant_type=client_credentials",
            ));
            assert_answer_is_documented(&token, true);
            let listed = world.runtime.block_on(call(&world.idp, Method::GET, "/api/v1/agents", "", Some(&authorization), None, b""));
            assert_answer_is_documented(&listed, false);
        }
    }
}
