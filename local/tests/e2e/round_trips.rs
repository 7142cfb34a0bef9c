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

use crate::private_key_jwt::{AgentKey, assertion_claims, token_with_assertion};
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
    let api = server.api(&token);
    server
        .create_resource(&token, "https://mcp.example.com/mcp", &["data:read"])
        .await;
    let key = AgentKey::new(agentidp_core::signing::SigningAlgorithm::ES256);
    let keyed = api
        .generate_credential(
            &agent,
            json!({"type": "private_key_jwt", "jwks": key.jwks()}),
        )
        .await;
    let keyed_client = keyed.str("clientId");
    let first = key.sign(&assertion_claims(&server, &keyed_client));
    assert_eq!(token_with_assertion(&server, &first, &[]).await.status, 200);
    let cluster_key = AgentKey::new(agentidp_core::signing::SigningAlgorithm::RS256);
    let cluster = "https://kubernetes.default.svc.cluster.local";
    let trusted = server
        .call(
            Method::POST,
            "/api/v1/trusted-issuers",
            Some(&token),
            Some(json!({"issuer": cluster, "audience": "agentidp", "jwks": cluster_key.jwks()})),
        )
        .await;
    assert_eq!(trusted.status, 201, "{}", trusted.text);
    let issuer_path = format!("/api/v1/trusted-issuers/{}", trusted.str("issuerId"));
    let federated_client = api
        .generate_credential(
            &agent,
            json!({"type": "federated", "issuer": cluster, "subject": "system:serviceaccount:a:b"}),
        )
        .await
        .str("clientId");
    let now = server.clock_now().timestamp();
    let platform_token = cluster_key.sign(&json!({
        "iss": cluster, "sub": "system:serviceaccount:a:b", "aud": "agentidp",
        "iat": now, "exp": now + 600,
    }));
    // A chain of three actors for the agent: what the last link's checks must read at once.
    let mut actors = Vec::new();
    for name in ["first", "second", "third"] {
        let actor = server.create_agent(&token, name, &[]).await;
        let (_, actor_client, actor_secret) = server.create_credential(&token, &actor).await;
        actors.push((actor, actor_client, actor_secret));
    }
    let may_act: Vec<&str> = actors.iter().map(|(id, _, _)| id.as_str()).collect();
    api.update_agent(&agent, json!({"delegation": {"mayAct": may_act}}))
        .await;
    let exchange = |subject: String, actor: usize| {
        let (server, actors) = (&server, &actors);
        async move {
            let (_, actor_client, actor_secret) = &actors[actor];
            server
                .send(
                    server
                        .request(Method::POST, "/api/v1/token")
                        .basic_auth(actor_client, Some(actor_secret))
                        .form(&[
                            (
                                "grant_type",
                                "urn:ietf:params:oauth:grant-type:token-exchange",
                            ),
                            ("subject_token", subject.as_str()),
                            (
                                "subject_token_type",
                                "urn:ietf:params:oauth:token-type:access_token",
                            ),
                        ]),
                )
                .await
        }
    };
    let first_link = exchange(agent_token.clone(), 0).await.str("access_token");
    let second_link = exchange(first_link, 1).await.str("access_token");
    let event_id = api.audit("limit=1").await.body["data"][0]["eventId"]
        .as_str()
        .unwrap()
        .to_owned();

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
        "POST /api/v1/token (warm client, resource)",
        server
            .send(
                server
                    .request(Method::POST, "/api/v1/token")
                    .basic_auth(&client_id, Some(&secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("resource", "https://mcp.example.com/mcp"),
                    ]),
            )
            .await
    );
    measure!(
        "POST /api/v1/token (private_key_jwt)",
        token_with_assertion(
            &server,
            &key.sign(&assertion_claims(&server, &keyed_client)),
            &[]
        )
        .await
    );
    measure!(
        "POST /api/v1/token (jwt-bearer, federated)",
        server
            .send(server.request(Method::POST, "/api/v1/token").form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("client_id", federated_client.as_str()),
                ("assertion", platform_token.as_str()),
            ]))
            .await
    );
    let dpop_key = crate::dpop::DpopKey::new();
    let bound_token = measure!(
        "POST /api/v1/token (warm client, DPoP)",
        crate::dpop::token_with_proofs(
            &server,
            &admin.client_id,
            &admin.client_secret,
            &[&dpop_key.proof(&server, "POST", "/api/v1/token", None)],
        )
        .await
    )
    .str("access_token");
    let agent_path = format!("/api/v1/agents/{agent}");
    measure!(
        "GET /api/v1/agents/{agentId} (DPoP)",
        crate::dpop::call_with(
            &server,
            Method::GET,
            &agent_path,
            &format!("DPoP {bound_token}"),
            &[&dpop_key.proof(&server, "GET", &agent_path, Some(&bound_token))],
        )
        .await
    );
    measure!(
        "POST /api/v1/token/introspect (bearer)",
        api.introspect(&agent_token).await
    );
    let third_link = measure!(
        "POST /api/v1/token (token exchange, third link)",
        exchange(second_link, 2).await
    )
    .str("access_token");
    measure!(
        "POST /api/v1/token/introspect (bearer, a token three actors deep)",
        api.introspect(&third_link).await
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
        api.create_agent(json!({"name": "another"})).await
    );
    measure!("GET /api/v1/agents", api.list_agents("").await);
    measure!("GET /api/v1/agents/{agentId}", api.get_agent(&agent).await);
    measure!(
        "PATCH /api/v1/agents/{agentId} (fields)",
        api.update_agent(&agent, json!({"description": "d"})).await
    );
    measure!(
        "PATCH /api/v1/agents/{agentId} (status)",
        api.suspend(&agent).await
    );
    api.reactivate(&agent).await;
    measure!(
        "POST /api/v1/agents/{agentId}/credentials",
        api.generate_credential(&agent, json!({})).await
    );
    measure!(
        "GET /api/v1/agents/{agentId}/credentials",
        api.list_credentials(&agent, "").await
    );
    measure!(
        "POST .../credentials/{credentialId}/rotate",
        api.rotate(&agent, &credential).await
    );
    measure!(
        "DELETE .../credentials/{credentialId}",
        api.revoke_credential(&agent, &credential).await
    );
    measure!("GET /api/v1/audit", api.audit("limit=20").await);
    measure!(
        "GET /api/v1/audit/{eventId}",
        api.audit_event(&event_id).await
    );
    measure!(
        "POST /api/v1/token/revoke (bearer)",
        api.revoke_token(&agent_token).await
    );
    measure!(
        "DELETE /api/v1/agents/{agentId}",
        api.delete_agent(&agent).await
    );
    let resource = measure!(
        "POST /api/v1/resources",
        api.create_resource(
            json!({"identifier": "https://counted.example.com/", "name": "counted"})
        )
        .await
    )
    .str("resourceId");
    measure!("GET /api/v1/resources", api.list_resources("").await);
    measure!(
        "GET /api/v1/resources/{resourceId}",
        api.get_resource(&resource).await
    );
    measure!(
        "PATCH /api/v1/resources/{resourceId}",
        api.update_resource(&resource, json!({"scopes": ["tools:call"]}))
            .await
    );
    measure!(
        "DELETE /api/v1/resources/{resourceId}",
        api.delete_resource(&resource).await
    );
    measure!(
        "GET /api/v1/trusted-issuers",
        server
            .call(Method::GET, "/api/v1/trusted-issuers", Some(&token), None)
            .await
    );
    measure!(
        "PATCH /api/v1/trusted-issuers/{issuerId}",
        server
            .call(
                Method::PATCH,
                &issuer_path,
                Some(&token),
                Some(json!({"audience": "sts.agentidp"}))
            )
            .await
    );
    measure!(
        "DELETE /api/v1/trusted-issuers/{issuerId}",
        server
            .call(Method::DELETE, &issuer_path, Some(&token), None)
            .await
    );
    measure!(
        "POST /api/v1/trusted-issuers",
        server
            .call(
                Method::POST,
                "/api/v1/trusted-issuers",
                Some(&token),
                Some(
                    json!({"issuer": cluster, "audience": "agentidp", "jwks": cluster_key.jwks()})
                )
            )
            .await
    );

    for (name, count) in &measured {
        println!("| {name} | {count} |");
    }
    let expected: Vec<(&str, usize)> = vec![
        ("POST /api/v1/token (warm client)", 2),
        ("POST /api/v1/token (warm client, resource)", 2),
        // The assertion's single use is one more item of the token's one transaction.
        ("POST /api/v1/token (private_key_jwt)", 2),
        // The trusted issuer is a second read: its id comes from the credential.
        ("POST /api/v1/token (jwt-bearer, federated)", 3),
        // The proof's single use is one more item of the token's one transaction.
        ("POST /api/v1/token (warm client, DPoP)", 2),
        // One more than with a bearer token: the proof's single use, a write of its own.
        ("GET /api/v1/agents/{agentId} (DPoP)", 4),
        ("POST /api/v1/token/introspect (bearer)", 2),
        // The client's standing, the subject token's standing (its whole chain), the commit.
        ("POST /api/v1/token (token exchange, third link)", 3),
        // Every token id and agent of the chain in the one BatchGetItem of a plain token.
        (
            "POST /api/v1/token/introspect (bearer, a token three actors deep)",
            2,
        ),
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
        ("POST /api/v1/resources", 3),
        ("GET /api/v1/resources", 3),
        ("GET /api/v1/resources/{resourceId}", 3),
        ("PATCH /api/v1/resources/{resourceId}", 4),
        ("DELETE /api/v1/resources/{resourceId}", 4),
        ("GET /api/v1/trusted-issuers", 3),
        ("PATCH /api/v1/trusted-issuers/{issuerId}", 4),
        ("DELETE /api/v1/trusted-issuers/{issuerId}", 4),
        ("POST /api/v1/trusted-issuers", 3),
    ];
    assert_eq!(measured, expected);
}
