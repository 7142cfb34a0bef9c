//! Failing dependencies: DynamoDB unreachable mid-run, Secrets Manager unreachable at cold start.
//! A switchable TCP proxy stands between the service and DynamoDB Local (or moto), so a test can
//! cut the connection and restore it without restarting anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentidp_aws::SecretsManagerSecret;
use agentidp_core::signing::{CachedKeys, KeySetDocument, KeySource, SigningAlgorithm};
use agentidp_core::store::{AuditQuery, Store};
use agentidp_store_dynamodb::DynamoStore;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::support::{Response, TestServer};

/// Forwards loopback connections to `target` while up; while down, refuses new ones and has
/// cut the open ones.
struct Proxy {
    address: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(target: SocketAddr, up: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let flag = Arc::new(AtomicBool::new(up));
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (accept_flag, accept_open) = (flag.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_open.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            address,
            up: flag,
            open,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for task in self.open.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// The address behind a service's endpoint URL, for the proxy to forward to.
fn target_of(url: &str) -> SocketAddr {
    let host_port = url.trim_start_matches("http://").trim_end_matches('/');
    host_port.parse().unwrap()
}

/// A DynamoDB client that gives up fast, so an outage answers within a second or two.
fn quick_dynamodb(endpoint: &str) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{retry::RetryConfig, timeout::TimeoutConfig};
    let config = agentidp_testkit::dynamodb_config_at(endpoint)
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500))
                .operation_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// What the organization holds, read past the proxy.
async fn snapshot(store: &dyn Store, org_id: uuid::Uuid) -> Value {
    let agents = store.list_agents(org_id).await.unwrap();
    let mut credentials = Vec::new();
    for agent in &agents {
        for c in store
            .list_credentials(org_id, agent.agent_id)
            .await
            .unwrap()
        {
            credentials.push(json!([
                c.credential_id,
                c.status.as_str(),
                c.proof.secret_hash(),
                c.version
            ]));
        }
    }
    let now = chrono::Utc::now();
    let audit = store
        .query_audit(&AuditQuery {
            org_id,
            agent_id: None,
            actor_agent_id: None,
            action: None,
            outcome: None,
            not_before: now - chrono::Duration::days(1),
            until: None,
            now,
            limit: 1000,
            after: None,
        })
        .await
        .unwrap();
    json!({
        "agents": agents.iter().map(|a| json!([a.agent_id, a.name, a.status.as_str(), a.version])).collect::<Vec<_>>(),
        "credentials": credentials,
        "audit": audit.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
    })
}

fn assert_unavailable(response: &Response, what: &str) {
    assert_eq!(response.status, 503, "{what}: {}", response.text);
    assert!(
        response.header("retry-after").is_some(),
        "{what}: Retry-After"
    );
    let documented = response.code() == "SERVICE_UNAVAILABLE"
        || response.oauth_error() == "temporarily_unavailable";
    assert!(documented, "{what}: {}", response.text);
    assert!(
        !response.text.contains("dispatch") && !response.text.contains("127.0.0.1"),
        "{what}: no internal detail leaks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dynamodb_unreachable_every_endpoint_answers_503_and_nothing_is_half_written() {
    let direct = agentidp_testkit::dynamodb_store().await;
    let proxy = Proxy::start(target_of(&agentidp_testkit::dynamodb_endpoint()), true).await;
    let tables = agentidp_testkit::dynamodb_tables().await;
    let proxied: Arc<dyn Store> = Arc::new(DynamoStore::new(quick_dynamodb(&proxy.url()), tables));
    let server = TestServer::start(proxied).await;
    let admin = server.new_org("faulty").await;
    let org_id: uuid::Uuid = admin.org_id.parse().unwrap();
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &["x:y"]).await;
    let (credential_id, client_id, secret) = server.create_credential(&token, &agent).await;
    let agent_token = server.token(&client_id, &secret).await;
    let before = snapshot(&*direct, org_id).await;

    proxy.set_up(false);
    let api = server.api(&token);
    let event_id = uuid::Uuid::new_v4().to_string();
    let calls: Vec<(&str, Response)> = vec![
        ("create agent", api.create_agent(json!({"name": "n"})).await),
        ("list agents", api.list_agents("").await),
        ("get agent", api.get_agent(&agent).await),
        (
            "patch agent",
            api.update_agent(&agent, json!({"description": "d"})).await,
        ),
        ("delete agent", api.delete_agent(&agent).await),
        ("generate", api.generate_credential(&agent, json!({})).await),
        ("list credentials", api.list_credentials(&agent, "").await),
        ("rotate", api.rotate(&agent, &credential_id).await),
        (
            "revoke credential",
            api.revoke_credential(&agent, &credential_id).await,
        ),
        (
            "token",
            server.token_request(&client_id, &secret, None).await,
        ),
        ("introspect", api.introspect(&agent_token).await),
        ("revoke token", api.revoke_token(&agent_token).await),
        ("list audit", api.audit("").await),
        ("get audit", api.audit_event(&event_id).await),
    ];
    for (what, response) in &calls {
        assert_unavailable(response, what);
    }

    proxy.set_up(true);
    assert_eq!(
        snapshot(&*direct, org_id).await,
        before,
        "the outage changed nothing"
    );
    // And the service recovers without a restart.
    let listed = api.list_agents("").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(
        server.introspect(&token, &agent_token).await["active"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_secrets_manager_unreachable_at_cold_start_tokens_answer_503_then_recover() {
    let moto = target_of(&agentidp_testkit::moto_endpoint());
    let proxy = Proxy::start(moto, false).await;
    let sdk = |endpoint: String| {
        aws_sdk_secretsmanager::Client::from_conf(
            agentidp_testkit::secrets_manager_config_at(&endpoint)
                .retry_config(
                    aws_sdk_secretsmanager::config::retry::RetryConfig::standard()
                        .with_max_attempts(1),
                )
                .build(),
        )
    };
    let secret_id = format!("agentidp-faults-{}", uuid::Uuid::new_v4().simple());
    let document = KeySetDocument::generate(SigningAlgorithm::RS256, chrono::Utc::now()).unwrap();
    sdk(format!("http://{moto}"))
        .create_secret()
        .name(&secret_id)
        .secret_string(document.to_json().unwrap())
        .send()
        .await
        .unwrap();
    let keys = KeySource::Cached(CachedKeys::signing(
        SecretsManagerSecret::new(sdk(proxy.url()), secret_id),
        Duration::from_secs(300),
    ));
    let server = TestServer::start_with_keys(
        agentidp_testkit::embedded_store_in(env!("CARGO_TARGET_TMPDIR")),
        keys,
        |_| {},
    )
    .await;
    let admin = server.new_org("cold").await;

    let refused = server
        .token_request(&admin.client_id, &admin.client_secret, None)
        .await;
    assert_unavailable(&refused, "token at cold start");
    let jwks = server
        .send(server.request(Method::GET, "/.well-known/jwks.json"))
        .await;
    assert_unavailable(&jwks, "jwks at cold start");

    proxy.set_up(true);
    let token = server.admin_token(&admin).await;
    let listed = server.api(&token).list_agents("").await;
    assert_eq!(listed.status, 200, "recovered without a restart");
}
