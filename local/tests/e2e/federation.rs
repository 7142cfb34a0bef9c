//! Workload identity federation (RFC 7523 §2.1) and key sets published at a URL: an outside
//! issuer (a Kubernetes cluster, GitHub Actions) vouches for a workload, whose token the agent
//! trades for its own; and the fetches of published keys cannot be aimed inside the network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentidp_core::remote_keys::KeyFetchNetwork;
use agentidp_core::signing::SigningAlgorithm;
use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::private_key_jwt::{AgentKey, assertion_claims, token_with_assertion};
use crate::support::{Response, TestServer};

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:agents:summarizer";
const AUDIENCE: &str = "agentidp";

/// A key server standing in for an outside issuer's JWKS endpoint: serves one set, and counts
/// its requests.
struct KeyServer {
    address: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl KeyServer {
    async fn start(jwks: Value) -> Self {
        Self::serving(jwks.to_string(), std::time::Duration::ZERO).await
    }

    /// Answers every request with `body`, after `delay`.
    async fn serving(body: String, delay: std::time::Duration) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, requests }
    }

    fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.address)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The token a platform gives its workload: about `subject`, for `audience`, valid a while.
fn workload_token(server: &TestServer, issuer: &str, subject: &str) -> Value {
    let now = server.clock_now().timestamp();
    json!({
        "iss": issuer,
        "sub": subject,
        "aud": [AUDIENCE, "https://kubernetes.default.svc"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io": { "namespace": "agents", "serviceaccount": { "name": "summarizer" } },
    })
}

async fn trade(
    server: &TestServer,
    client_id: &str,
    assertion: &str,
    extra: &[(&str, &str)],
) -> Response {
    let mut form = vec![
        ("grant_type", JWT_BEARER_GRANT),
        ("client_id", client_id),
        ("assertion", assertion),
    ];
    form.extend_from_slice(extra);
    server
        .send(server.request(Method::POST, "/api/v1/token").form(&form))
        .await
}

/// An organization trusting the cluster (its keys at `keys`: `{"jwks": ...}` or
/// `{"jwksUri": ...}`), and an agent with `scopes` federated to the service account:
/// (admin token, agent id, client id).
async fn federated_agent(
    server: &TestServer,
    org: &str,
    keys: Value,
    scopes: &[&str],
) -> (String, String, String) {
    let admin = server.new_org(org).await;
    let admin_token = server.admin_token(&admin).await;
    let mut body = json!({ "issuer": CLUSTER, "audience": AUDIENCE });
    body.as_object_mut()
        .unwrap()
        .extend(keys.as_object().unwrap().clone());
    let trusted = server
        .call(
            Method::POST,
            "/api/v1/trusted-issuers",
            Some(&admin_token),
            Some(body),
        )
        .await;
    assert_eq!(trusted.status, 201, "{}", trusted.text);
    let agent = server
        .create_agent(&admin_token, "summarizer", scopes)
        .await;
    let created = server
        .api(&admin_token)
        .generate_credential(
            &agent,
            json!({"type": "federated", "issuer": CLUSTER, "subject": SERVICE_ACCOUNT}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["type"], "federated");
    assert_eq!(created.body["subject"], SERVICE_ACCOUNT);
    assert!(
        created.body.get("clientSecret").is_none(),
        "{}",
        created.text
    );
    (admin_token, agent, created.str("clientId"))
}

async fn a_workload_trades_its_platform_token_for_its_agents_token(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let cluster_key = AgentKey::new(SigningAlgorithm::RS256);
    let key_server = KeyServer::start(cluster_key.jwks()).await;
    let (admin_token, agent, client_id) = federated_agent(
        &server,
        "federation",
        json!({ "jwksUri": key_server.uri() }),
        &["agents:read", "reports:write"],
    )
    .await;
    let token = cluster_key.sign(&workload_token(&server, CLUSTER, SERVICE_ACCOUNT));

    let granted = trade(&server, &client_id, &token, &[]).await;
    assert_eq!(granted.status, 200, "{}", granted.text);
    assert_eq!(granted.header("cache-control"), Some("no-store"));
    let access = granted.str("access_token");
    let introspected = server.introspect(&admin_token, &access).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(
        introspected["sub"], agent,
        "the agent's token, as from a secret"
    );
    assert_eq!(introspected["client_id"], client_id);
    assert_eq!(server.api(&access).list_agents("").await.status, 200);

    // The platform token is presented again until the platform replaces it: not single use.
    let again = trade(&server, &client_id, &token, &[("scope", "agents:read")]).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["scope"], "agents:read");
    assert_eq!(
        key_server.requests(),
        1,
        "the key set is fetched once and kept"
    );

    // RFC 8707 applies as to any other grant.
    let resource = server
        .create_resource(
            &admin_token,
            "https://reports.example.com/mcp",
            &["reports:write"],
        )
        .await;
    assert!(!resource.is_empty());
    let for_resource = trade(
        &server,
        &client_id,
        &token,
        &[("resource", "https://reports.example.com/mcp")],
    )
    .await;
    assert_eq!(for_resource.status, 200, "{}", for_resource.text);
    assert_eq!(for_resource.body["scope"], "reports:write");

    let issued = server
        .audit_events(&admin_token, "&action=token.issued")
        .await;
    let federated: Vec<&Value> = issued
        .iter()
        .filter(|e| e["details"]["clientAuthMethod"] == "federated")
        .collect();
    assert_eq!(federated.len(), 3, "{issued:?}");
    assert_eq!(federated[0]["details"]["externalSubject"], SERVICE_ACCOUNT);
    assert_eq!(federated[0]["details"]["issuer"], CLUSTER);
    assert_eq!(federated[0]["agentId"], agent);
}

async fn tokens_the_trusted_issuer_did_not_vouch_for_are_invalid_grant(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let cluster_key = AgentKey::new(SigningAlgorithm::ES256);
    let (admin_token, _, client_id) = federated_agent(
        &server,
        "vouching",
        json!({ "jwks": cluster_key.jwks() }),
        &["agents:read", "agents:write"],
    )
    .await;
    // Another issuer altogether, with a key of its own, which the attacker holds.
    let attacker_key = AgentKey::new(SigningAlgorithm::ES256);
    let good = workload_token(&server, CLUSTER, SERVICE_ACCOUNT);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };
    let now = server.clock_now().timestamp();
    let cases = [
        (
            "assertion_wrong_audience",
            cluster_key.sign(&with(&|c| c["aud"] = json!("https://vault.example.com"))),
        ),
        (
            "unknown_subject",
            cluster_key.sign(&with(&|c| {
                c["sub"] = json!("system:serviceaccount:agents:intruder")
            })),
        ),
        (
            "assertion_expired",
            cluster_key.sign(&with(&|c| c["exp"] = json!(now - 120))),
        ),
        (
            "assertion_missing_expiry",
            cluster_key.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
        ),
        (
            "assertion_not_yet_valid",
            cluster_key.sign(&with(&|c| c["nbf"] = json!(now + 600))),
        ),
        (
            "untrusted_issuer",
            cluster_key.sign(&with(&|c| {
                c["iss"] = json!("https://other-cluster.example.com")
            })),
        ),
        // The attacker's key, under its own kid: not one of the cluster's keys.
        ("assertion_unknown_key", attacker_key.sign(&good)),
    ];
    for (reason, assertion) in &cases {
        let refused = trade(&server, &client_id, assertion, &[]).await;
        assert_eq!(refused.status, 400, "{reason}: {}", refused.text);
        assert_eq!(refused.oauth_error(), "invalid_grant", "{reason}");
        assert!(refused.body.get("access_token").is_none());
    }
    // Another client authentication beside the assertion makes the request ambiguous.
    let good_token = cluster_key.sign(&good);
    let doubled = trade(
        &server,
        &client_id,
        &good_token,
        &[("client_secret", "sk_live_00000000000000000000000000000000")],
    )
    .await;
    assert_eq!(doubled.status, 400, "{}", doubled.text);
    assert_eq!(doubled.oauth_error(), "invalid_request");
    // An unknown client is invalid_client, as at every grant.
    let unknown = trade(&server, &Uuid::new_v4().to_string(), &good_token, &[]).await;
    assert_eq!(unknown.status, 401, "{}", unknown.text);
    assert_eq!(unknown.oauth_error(), "invalid_client");

    let denied = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    let mut reasons: Vec<&str> = denied
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap())
        .collect();
    reasons.sort_unstable();
    let mut expected: Vec<&str> = cases.iter().map(|(reason, _)| *reason).collect();
    expected.sort_unstable();
    assert_eq!(reasons, expected);
    assert!(
        denied
            .iter()
            .all(|e| e["details"]["clientAuthMethod"] == "federated")
    );
    assert_eq!(
        server
            .audit_events(&admin_token, "&action=token.issued")
            .await
            .len(),
        1,
        "only the admin's own token"
    );
    // The good token still works: refusals lock nothing out.
    assert_eq!(
        trade(&server, &client_id, &good_token, &[]).await.status,
        200
    );
}

async fn a_federated_credential_is_not_a_secret_or_key_credential(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let cluster_key = AgentKey::new(SigningAlgorithm::EdDSA);
    let (admin_token, agent, client_id) = federated_agent(
        &server,
        "methods",
        json!({ "jwks": cluster_key.jwks() }),
        &["agents:read"],
    )
    .await;
    let with_secret = server
        .token_request(&client_id, "sk_live_00000000000000000000000000000000", None)
        .await;
    assert_eq!(with_secret.status, 401, "{}", with_secret.text);
    // The platform token as a client assertion: its iss and sub are not the client id.
    let platform = cluster_key.sign(&workload_token(&server, CLUSTER, SERVICE_ACCOUNT));
    let as_assertion = token_with_assertion(&server, &platform, &[("client_id", &client_id)]).await;
    assert_eq!(as_assertion.status, 401, "{}", as_assertion.text);
    // A secret credential of the same agent is no federated one.
    let (_, secret_client, _) = server.create_credential(&admin_token, &agent).await;
    let refused = trade(&server, &secret_client, &platform, &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.oauth_error(), "invalid_client");
    // A key credential's assertion is not a platform token either.
    let agent_key = AgentKey::new(SigningAlgorithm::ES256);
    let keyed = server
        .api(&admin_token)
        .generate_credential(
            &agent,
            json!({"type": "private_key_jwt", "jwks": agent_key.jwks()}),
        )
        .await;
    let keyed_client = keyed.str("clientId");
    let own_assertion = agent_key.sign(&assertion_claims(&server, &keyed_client));
    assert_eq!(
        trade(&server, &keyed_client, &own_assertion, &[])
            .await
            .status,
        401
    );
}

async fn an_issuer_no_longer_trusted_stops_its_credentials_at_once(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let cluster_key = AgentKey::new(SigningAlgorithm::ES256);
    let (admin_token, _, client_id) = federated_agent(
        &server,
        "distrust",
        json!({ "jwks": cluster_key.jwks() }),
        &["agents:read"],
    )
    .await;
    let token = cluster_key.sign(&workload_token(&server, CLUSTER, SERVICE_ACCOUNT));
    assert_eq!(trade(&server, &client_id, &token, &[]).await.status, 200);

    let listed = server
        .call(
            Method::GET,
            "/api/v1/trusted-issuers",
            Some(&admin_token),
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.body["total"], 1);
    let issuer_id = listed.body["data"][0]["issuerId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(listed.body["data"][0]["keyIds"], json!([cluster_key.kid()]));
    let path = format!("/api/v1/trusted-issuers/{issuer_id}");

    // A new audience applies to the next token at once.
    let changed = server
        .call(
            Method::PATCH,
            &path,
            Some(&admin_token),
            Some(json!({"audience": "sts.agentidp.example"})),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let refused = trade(&server, &client_id, &token, &[]).await;
    assert_eq!(refused.oauth_error(), "invalid_grant", "{}", refused.text);

    let deleted = server
        .call(Method::DELETE, &path, Some(&admin_token), None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let refused = trade(&server, &client_id, &token, &[]).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    let denied = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    assert!(
        denied
            .iter()
            .any(|e| e["details"]["reason"] == "untrusted_issuer"),
        "{denied:?}"
    );
    let gone = server
        .call(Method::GET, &path, Some(&admin_token), None)
        .await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.code(), "TRUSTED_ISSUER_NOT_FOUND");
    let mut actions: Vec<String> = server
        .audit_events(&admin_token, "")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .filter(|a| a.starts_with("trusted_issuer."))
        .collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        [
            "trusted_issuer.created",
            "trusted_issuer.deleted",
            "trusted_issuer.updated"
        ]
    );
}

/// The privilege escalation this guards against: whoever may change an issuer's keys can mint
/// that issuer's tokens, and so become every agent federated to it, however privileged.
async fn changing_trust_needs_every_management_scope(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let cluster_key = AgentKey::new(SigningAlgorithm::ES256);
    let (admin_token, _, admin_client) = federated_agent(
        &server,
        "escalation",
        json!({ "jwks": cluster_key.jwks() }),
        &[
            "agents:read",
            "agents:write",
            "audit:read",
            "resources:read",
            "resources:write",
        ],
    )
    .await;
    // A credential manager: may write agents, but holds less than the federated admin agent.
    let (_, manager_token) = server
        .agent_with_token(&admin_token, "manager", &["agents:read", "agents:write"])
        .await;
    let attacker_key = AgentKey::new(SigningAlgorithm::ES256);
    let listed = server
        .call(
            Method::GET,
            "/api/v1/trusted-issuers",
            Some(&manager_token),
            None,
        )
        .await;
    assert_eq!(
        listed.status, 200,
        "reading is agents:read: {}",
        listed.text
    );
    let issuer_id = listed.body["data"][0]["issuerId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/trusted-issuers/{issuer_id}");
    let swapped = server
        .call(
            Method::PATCH,
            &path,
            Some(&manager_token),
            Some(json!({"jwks": attacker_key.jwks()})),
        )
        .await;
    assert_eq!(swapped.status, 403, "{}", swapped.text);
    assert_eq!(swapped.code(), "INSUFFICIENT_SCOPE");
    let removed = server
        .call(Method::DELETE, &path, Some(&manager_token), None)
        .await;
    assert_eq!(removed.status, 403, "{}", removed.text);
    let another = server
        .call(
            Method::POST,
            "/api/v1/trusted-issuers",
            Some(&manager_token),
            Some(
                json!({"issuer": "https://evil.example.com", "audience": AUDIENCE,
                        "jwks": attacker_key.jwks()}),
            ),
        )
        .await;
    assert_eq!(another.status, 403, "{}", another.text);
    // The attacker's token for the admin's subject still gets nothing.
    let forged = attacker_key.sign(&workload_token(&server, CLUSTER, SERVICE_ACCOUNT));
    assert_eq!(
        trade(&server, &admin_client, &forged, &[])
            .await
            .oauth_error(),
        "invalid_grant"
    );
    let refusals = server
        .audit_events(&admin_token, "&outcome=failure")
        .await
        .into_iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("trusted_issuer."))
        .count();
    assert_eq!(refusals, 3, "each refusal is audited");

    // Another organization sees none of it.
    let stranger = server.new_org("stranger").await;
    let stranger_token = server.admin_token(&stranger).await;
    let hidden = server
        .call(Method::GET, &path, Some(&stranger_token), None)
        .await;
    assert_eq!(hidden.status, 404, "{}", hidden.text);
    let none = server
        .call(
            Method::GET,
            "/api/v1/trusted-issuers",
            Some(&stranger_token),
            None,
        )
        .await;
    assert_eq!(none.body["total"], 0);
    // Nor may it federate its agents to an issuer it does not trust itself.
    let agent = server
        .create_agent(&stranger_token, "copycat", &["agents:read"])
        .await;
    let refused = server
        .api(&stranger_token)
        .generate_credential(
            &agent,
            json!({"type": "federated", "issuer": CLUSTER, "subject": SERVICE_ACCOUNT}),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.body["details"][0]["field"], "issuer");
}

async fn trusted_issuers_are_validated_unique_and_limited(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| {
        config.free_limits.max_trusted_issuers = 2;
    })
    .await;
    let admin = server.new_org("issuers").await;
    let admin_token = server.admin_token(&admin).await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let create = |body: Value| {
        let token = admin_token.clone();
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    "/api/v1/trusted-issuers",
                    Some(&token),
                    Some(body),
                )
                .await
        }
    };
    let mut private = key.jwks();
    private["keys"][0]["d"] = json!("3JCLbyKVXeu7eZW3u8x0VSB6prZP9d_3fETsqNVmGkc");
    for (body, field) in [
        (json!({"audience": AUDIENCE, "jwks": key.jwks()}), "issuer"),
        (json!({"issuer": CLUSTER, "jwks": key.jwks()}), "audience"),
        (json!({"issuer": CLUSTER, "audience": AUDIENCE}), "jwks"),
        (
            json!({"issuer": CLUSTER, "audience": AUDIENCE, "jwks": private}),
            "jwks.keys[0].d",
        ),
        (
            json!({"issuer": CLUSTER, "audience": AUDIENCE, "jwks": key.jwks(),
                   "jwksUri": "https://example.com/jwks"}),
            "jwksUri",
        ),
        (
            json!({"issuer": CLUSTER, "audience": AUDIENCE, "jwksUri": "ftp://example.com/jwks"}),
            "jwksUri",
        ),
    ] {
        let refused = create(body.clone()).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.text);
        assert!(
            refused.body["details"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["field"] == field),
            "{field}: {}",
            refused.text
        );
    }
    let first = create(json!({"issuer": CLUSTER, "audience": AUDIENCE, "jwks": key.jwks()})).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let twice = create(json!({"issuer": CLUSTER, "audience": "other", "jwks": key.jwks()})).await;
    assert_eq!(twice.status, 409, "{}", twice.text);
    assert_eq!(twice.code(), "ISSUER_ALREADY_TRUSTED");
    let second = create(json!({"issuer": "https://token.actions.githubusercontent.com",
        "audience": AUDIENCE, "jwksUri": "https://token.actions.githubusercontent.com/.well-known/jwks"}))
    .await;
    assert_eq!(second.status, 201, "{}", second.text);
    assert_eq!(
        second.body["jwksUri"],
        "https://token.actions.githubusercontent.com/.well-known/jwks"
    );
    let third = create(
        json!({"issuer": "https://third.example.com", "audience": AUDIENCE,
        "jwks": key.jwks()}),
    )
    .await;
    assert_eq!(third.status, 403, "{}", third.text);
    assert_eq!(
        third.body["details"][0]["limit"], "maxTrustedIssuers",
        "{}",
        third.text
    );
    // The issuer of a record never changes.
    let path = format!("/api/v1/trusted-issuers/{}", first.str("issuerId"));
    let renamed = server
        .call(
            Method::PATCH,
            &path,
            Some(&admin_token),
            Some(json!({"issuer": "https://renamed.example.com"})),
        )
        .await;
    assert_eq!(renamed.status, 400, "{}", renamed.text);
}

/// The published-keys fetch, aimed where it must not go: on the public network setting (what
/// Lambda runs with), loopback and private destinations are refused at registration when they
/// are literal, and at the fetch when a name resolves to them.
async fn published_keys_cannot_be_fetched_from_inside_the_network(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| {
        config.key_fetch_network = KeyFetchNetwork::Public;
    })
    .await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let key_server = KeyServer::start(key.jwks()).await;
    let admin = server.new_org("ssrf").await;
    let admin_token = server.admin_token(&admin).await;
    let agent = server
        .create_agent(&admin_token, "keyholder", &["agents:read"])
        .await;
    for uri in [
        key_server.uri(),
        "https://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
        "https://10.0.0.5/jwks.json".to_owned(),
        "https://[::1]/jwks.json".to_owned(),
    ] {
        let refused = server
            .api(&admin_token)
            .generate_credential(&agent, json!({"type": "private_key_jwt", "jwksUri": uri}))
            .await;
        assert_eq!(refused.status, 400, "{uri}: {}", refused.text);
        assert_eq!(refused.body["details"][0]["field"], "jwksUri");
    }
    // A name is checked where it leads, at every fetch: localhost leads to loopback.
    let by_name = format!("https://localhost:{}/jwks.json", key_server.address.port());
    let created = server
        .api(&admin_token)
        .generate_credential(
            &agent,
            json!({"type": "private_key_jwt", "jwksUri": by_name}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["jwksUri"], by_name);
    let client_id = created.str("clientId");
    let refused = token_with_assertion(
        &server,
        &key.sign(&assertion_claims(&server, &client_id)),
        &[],
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(
        key_server.requests(),
        0,
        "nothing reached the server inside"
    );
    let denied = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    assert_eq!(denied[0]["details"]["reason"], "jwks_destination_refused");
}

async fn a_key_credential_can_name_where_its_keys_are_published(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let key = AgentKey::new(SigningAlgorithm::EdDSA);
    let key_server = KeyServer::start(key.jwks()).await;
    let admin = server.new_org("published").await;
    let admin_token = server.admin_token(&admin).await;
    let agent = server
        .create_agent(&admin_token, "keyholder", &["agents:read"])
        .await;
    let created = server
        .api(&admin_token)
        .generate_credential(
            &agent,
            json!({"type": "private_key_jwt", "jwksUri": key_server.uri()}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(created.body.get("keyIds").is_none(), "{}", created.text);
    let client_id = created.str("clientId");
    let granted = token_with_assertion(
        &server,
        &key.sign(&assertion_claims(&server, &client_id)),
        &[],
    )
    .await;
    assert_eq!(granted.status, 200, "{}", granted.text);

    let listed = server.api(&admin_token).list_credentials(&agent, "").await;
    assert_eq!(listed.body["data"][0]["jwksUri"], key_server.uri());
    assert_eq!(key_server.requests(), 1);
    // An assertion naming a kid the kept set lacks is refused, and the refetch it may cause is
    // rate limited: a stream of made-up kids costs the key server nothing more.
    let stranger = AgentKey::new(SigningAlgorithm::EdDSA);
    for _ in 0..3 {
        let refused = token_with_assertion(
            &server,
            &stranger.sign(&assertion_claims(&server, &client_id)),
            &[],
        )
        .await;
        assert_eq!(refused.status, 401, "{}", refused.text);
    }
    assert_eq!(
        key_server.requests(),
        1,
        "fetched within the minute: no refetch"
    );
}

/// A key server that does not answer costs a token request its time limit, not a 5xx.
async fn an_unreachable_key_set_is_invalid_client_not_a_server_error(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let admin = server.new_org("unreachable").await;
    let admin_token = server.admin_token(&admin).await;
    let agent = server
        .create_agent(&admin_token, "keyholder", &["agents:read"])
        .await;
    let created = server
        .api(&admin_token)
        .generate_credential(
            &agent,
            json!({"type": "private_key_jwt",
                   "jwksUri": format!("http://127.0.0.1:{closed}/jwks.json")}),
        )
        .await;
    let client_id = created.str("clientId");
    let refused = token_with_assertion(
        &server,
        &key.sign(&assertion_claims(&server, &client_id)),
        &[],
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.oauth_error(), "invalid_client");
    let denied = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    assert_eq!(denied[0]["details"]["reason"], "jwks_unreachable");
}

/// A key server that answers too much, or too slowly, costs a token request its limits.
async fn an_oversized_or_slow_key_set_is_refused_within_its_limits(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let mut padded = key.jwks();
    padded["padding"] = json!("x".repeat(100 * 1024));
    let oversized = KeyServer::serving(padded.to_string(), std::time::Duration::ZERO).await;
    let slow = KeyServer::serving(key.jwks().to_string(), std::time::Duration::from_secs(10)).await;
    let admin = server.new_org("limits").await;
    let admin_token = server.admin_token(&admin).await;
    for (key_server, reason) in [(&oversized, "jwks_too_large"), (&slow, "jwks_timed_out")] {
        let agent = server
            .create_agent(&admin_token, reason, &["agents:read"])
            .await;
        let created = server
            .api(&admin_token)
            .generate_credential(
                &agent,
                json!({"type": "private_key_jwt", "jwksUri": key_server.uri()}),
            )
            .await;
        let client_id = created.str("clientId");
        let started = std::time::Instant::now();
        let refused = token_with_assertion(
            &server,
            &key.sign(&assertion_claims(&server, &client_id)),
            &[],
        )
        .await;
        assert_eq!(refused.status, 401, "{reason}: {}", refused.text);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6),
            "{reason}: held {:?}",
            started.elapsed()
        );
        let denied = server
            .audit_events(
                &admin_token,
                &format!("&action=token.denied&agentId={agent}"),
            )
            .await;
        assert_eq!(denied[0]["details"]["reason"], reason, "{denied:?}");
    }
}

agentidp_testkit::per_store!(
    an_oversized_or_slow_key_set_is_refused_within_its_limits,
    a_workload_trades_its_platform_token_for_its_agents_token,
    tokens_the_trusted_issuer_did_not_vouch_for_are_invalid_grant,
    a_federated_credential_is_not_a_secret_or_key_credential,
    an_issuer_no_longer_trusted_stops_its_credentials_at_once,
    changing_trust_needs_every_management_scope,
    trusted_issuers_are_validated_unique_and_limited,
    published_keys_cannot_be_fetched_from_inside_the_network,
    a_key_credential_can_name_where_its_keys_are_published,
    an_unreachable_key_set_is_invalid_client_not_a_server_error,
);
