//! DynamoDB round trips per endpoint, counted by an SDK interceptor on a warm instance (its
//! organization cache filled, the client's secret verified once). The table in
//! docs/performance.md comes from this test; a change in any count fails it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentidp_core::store::Store;
use agentidp_store_dynamodb::DynamoStore;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use reqwest::Method;
use serde_json::json;

use crate::support::TestServer;

#[derive(Debug, Clone, Default)]
struct RequestCounter(Arc<AtomicUsize>);

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_takes_the_documented_number_of_dynamodb_round_trips() {
    let tables = agentidp_testkit::dynamodb_tables().await;
    let counter = RequestCounter::default();
    let config = agentidp_testkit::dynamodb_config()
        .interceptor(counter.clone())
        .build();
    let store: Arc<dyn Store> = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        tables,
    ));
    let server = TestServer::start(store).await;
    let admin = server.new_org("round-trips").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "counted", &["data:read"]).await;
    let (credential, client_id, secret) = server.create_credential(&token, &agent).await;
    // Warm: the client's secret has passed bcrypt once, the organization is cached.
    let agent_token = server.token(&client_id, &secret).await;
    let event_id = server
        .call(Method::GET, "/api/v1/audit?limit=1", Some(&token), None)
        .await
        .body["data"][0]["eventId"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent_path = format!("/api/v1/agents/{agent}");
    let credentials = format!("{agent_path}/credentials");

    let mut measured: Vec<(&str, usize)> = Vec::new();
    macro_rules! measure {
        ($name:expr, $call:expr) => {{
            counter.0.store(0, Ordering::SeqCst);
            let response = $call;
            assert!(response.status < 400, "{}: {}", $name, response.text);
            measured.push(($name, counter.0.load(Ordering::SeqCst)));
            response
        }};
    }
    measure!(
        "POST /api/v1/token (warm client)",
        server.token_request(&client_id, &secret, None).await
    );
    measure!(
        "POST /api/v1/token/introspect (bearer)",
        server
            .send(
                server
                    .request(Method::POST, "/api/v1/token/introspect")
                    .bearer_auth(&token)
                    .form(&[("token", agent_token.as_str())])
            )
            .await
    );
    measure!(
        "GET /.well-known/jwks.json",
        server
            .send(server.request(Method::GET, "/.well-known/jwks.json"))
            .await
    );
    measure!(
        "GET /.well-known/oauth-authorization-server",
        server
            .send(server.request(Method::GET, "/.well-known/oauth-authorization-server"))
            .await
    );
    measure!(
        "POST /api/v1/agents",
        server
            .call(
                Method::POST,
                "/api/v1/agents",
                Some(&token),
                Some(json!({"name": "another"}))
            )
            .await
    );
    measure!(
        "GET /api/v1/agents",
        server
            .call(Method::GET, "/api/v1/agents", Some(&token), None)
            .await
    );
    measure!(
        "GET /api/v1/agents/{agentId}",
        server
            .call(Method::GET, &agent_path, Some(&token), None)
            .await
    );
    measure!(
        "PATCH /api/v1/agents/{agentId} (fields)",
        server
            .call(
                Method::PATCH,
                &agent_path,
                Some(&token),
                Some(json!({"description": "d"}))
            )
            .await
    );
    measure!(
        "PATCH /api/v1/agents/{agentId} (status)",
        server
            .call(
                Method::PATCH,
                &agent_path,
                Some(&token),
                Some(json!({"status": "suspended"}))
            )
            .await
    );
    server
        .call(
            Method::PATCH,
            &agent_path,
            Some(&token),
            Some(json!({"status": "active"})),
        )
        .await;
    measure!(
        "POST /api/v1/agents/{agentId}/credentials",
        server
            .call(Method::POST, &credentials, Some(&token), Some(json!({})))
            .await
    );
    measure!(
        "GET /api/v1/agents/{agentId}/credentials",
        server
            .call(Method::GET, &credentials, Some(&token), None)
            .await
    );
    measure!(
        "POST .../credentials/{credentialId}/rotate",
        server
            .call(
                Method::POST,
                &format!("{credentials}/{credential}/rotate"),
                Some(&token),
                Some(json!({}))
            )
            .await
    );
    measure!(
        "DELETE .../credentials/{credentialId}",
        server
            .call(
                Method::DELETE,
                &format!("{credentials}/{credential}"),
                Some(&token),
                None
            )
            .await
    );
    measure!(
        "GET /api/v1/audit",
        server
            .call(Method::GET, "/api/v1/audit?limit=20", Some(&token), None)
            .await
    );
    measure!(
        "GET /api/v1/audit/{eventId}",
        server
            .call(
                Method::GET,
                &format!("/api/v1/audit/{event_id}"),
                Some(&token),
                None
            )
            .await
    );
    measure!(
        "POST /api/v1/token/revoke (bearer)",
        server
            .send(
                server
                    .request(Method::POST, "/api/v1/token/revoke")
                    .bearer_auth(&token)
                    .form(&[("token", agent_token.as_str())])
            )
            .await
    );
    measure!(
        "DELETE /api/v1/agents/{agentId}",
        server
            .call(Method::DELETE, &agent_path, Some(&token), None)
            .await
    );

    for (name, count) in &measured {
        println!("| {name} | {count} |");
    }
    let expected: Vec<(&str, usize)> = vec![
        ("POST /api/v1/token (warm client)", 2),
        ("POST /api/v1/token/introspect (bearer)", 2),
        ("GET /.well-known/jwks.json", 0),
        ("GET /.well-known/oauth-authorization-server", 0),
        ("POST /api/v1/agents", 3),
        ("GET /api/v1/agents", 3),
        ("GET /api/v1/agents/{agentId}", 3),
        ("PATCH /api/v1/agents/{agentId} (fields)", 4),
        ("PATCH /api/v1/agents/{agentId} (status)", 5),
        ("POST /api/v1/agents/{agentId}/credentials", 4),
        ("GET /api/v1/agents/{agentId}/credentials", 4),
        ("POST .../credentials/{credentialId}/rotate", 6),
        ("DELETE .../credentials/{credentialId}", 6),
        ("GET /api/v1/audit", 3),
        ("GET /api/v1/audit/{eventId}", 3),
        ("POST /api/v1/token/revoke (bearer)", 3),
        ("DELETE /api/v1/agents/{agentId}", 5),
    ];
    assert_eq!(measured, expected);
}
