//! The end-to-end harness: a real local server on a loopback port, over the embedded store or
//! DynamoDB Local, called over real HTTP. The clock is a manual one, so expiry is testable. The
//! stores and `per_store!` come from `agentidp_testkit`.

use agentidp_remote_keys::KeySetFetcher;
use std::sync::{Arc, LazyLock};

use agentidp_core::config::Config;
use agentidp_core::domain::Plan;
use agentidp_core::domain::time::ManualClock;
use agentidp_core::service::Idp;
use agentidp_core::signing::{KeySet, KeySetDocument, KeySource, SigningAlgorithm};
use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::Value;

pub const TEST_BCRYPT_COST: u32 = 4;

/// A key set made once per test process: RSA key generation is the slow part of start-up.
static KEYS: LazyLock<Arc<KeySet>> = LazyLock::new(|| {
    let document = KeySetDocument::generate(SigningAlgorithm::RS256, chrono::Utc::now()).unwrap();
    Arc::new(KeySet::from_document(&document).unwrap())
});

pub struct Admin {
    pub org_id: String,
    pub agent_id: String,
    pub credential_id: String,
    pub client_id: String,
    pub client_secret: String,
}

pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    pub fn oauth_error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    pub fn str(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field} in {}", self.text))
            .to_owned()
    }
}

pub struct TestServer {
    pub base: String,
    pub idp: Arc<Idp>,
    /// The server's store, for what a test checks beneath the API.
    pub store: Arc<dyn Store>,
    pub clock: ManualClock,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestServer {
    pub async fn start(store: Arc<dyn Store>) -> Self {
        Self::start_with(store, |_| {}).await
    }

    pub async fn start_with(store: Arc<dyn Store>, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_keys(store, KeySource::Fixed(KEYS.clone()), adjust).await
    }

    pub async fn start_with_keys(
        store: Arc<dyn Store>,
        keys: KeySource,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = Config::from_lookup(|name| match name {
            "AGENTIDP_ISSUER" => Some(base.clone()),
            "AGENTIDP_BCRYPT_COST" => Some(TEST_BCRYPT_COST.to_string()),
            "AGENTIDP_KEY_FETCH_NETWORK" => Some("development".to_owned()),
            _ => None,
        })
        .unwrap();
        // Every test calls from 127.0.0.1, and on DynamoDB they share the tables: an address
        // lockout would leak between tests. The tests of that lockout lower it again.
        config.throttle.address_failures = 1_000_000;
        adjust(&mut config);
        let clock = ManualClock::starting_at(chrono::Utc::now());
        let remote_keys = KeySetFetcher::new(config.key_fetch_network).unwrap();
        let idp = Arc::new(
            Idp::new(
                config,
                Arc::clone(&store),
                keys,
                Arc::new(remote_keys),
                Arc::new(clock.clone()),
            )
            .unwrap(),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = idp.clone();
        tokio::spawn(async move {
            agentidp_local::serve(listener, served, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            base,
            idp,
            store,
            clock,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
        }
    }

    /// A new organization with its bootstrap admin, as `agentidp-admin create-org` makes it.
    pub async fn new_org(&self, name: &str) -> Admin {
        let created = self.idp.create_org(name, Plan::Free).await.unwrap();
        Admin {
            org_id: created.org.org_id.to_string(),
            agent_id: created.admin.credential.agent_id.to_string(),
            credential_id: created.admin.credential.credential_id.to_string(),
            client_id: created.admin.credential.client_id.to_string(),
            client_secret: created.admin.client_secret.expose().to_owned(),
        }
    }

    /// Sends the request. When `AGENTIDP_E2E_RESPONSE_LOG` names a file, appends one JSON line
    /// per exchange to it (method, path, query, status, the headers the OpenAPI spec describes,
    /// the body as text), which `tests/docs/` checks against `docs/openapi.yaml`.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Response {
        let (client, request) = request.build_split();
        let request = request.unwrap();
        let log = std::env::var_os("AGENTIDP_E2E_RESPONSE_LOG")
            .filter(|path| !path.is_empty())
            .map(|path| {
                (
                    path,
                    request.method().as_str().to_owned(),
                    request.url().path().to_owned(),
                    request.url().query().unwrap_or_default().to_owned(),
                )
            });
        let response = client.execute(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        if let Some((log_path, method, path, query)) = log {
            use std::io::Write;
            let logged_headers: serde_json::Map<String, Value> = [
                "content-type",
                "cache-control",
                "pragma",
                "www-authenticate",
                "retry-after",
                "allow",
                "x-request-id",
            ]
            .into_iter()
            .filter_map(|name| {
                headers
                    .get(name)
                    .map(|v| (name.to_owned(), Value::from(v.to_str().unwrap())))
            })
            .collect();
            let mut line = serde_json::to_vec(&serde_json::json!({
                "method": method,
                "path": path,
                "query": query,
                "status": status,
                "headers": logged_headers,
                "body": text,
            }))
            .unwrap();
            line.push(b'\n');
            // One write of one line with O_APPEND: lines of concurrent tests never interleave.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap()
                .write_all(&line)
                .unwrap();
        }
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Response {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// A management call with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut request = self.request(method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// `POST /token` with client_secret_basic.
    pub async fn token_request(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Response {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        self.send(
            self.request(Method::POST, "/api/v1/token")
                .basic_auth(client_id, Some(secret))
                .form(&form),
        )
        .await
    }

    pub async fn token(&self, client_id: &str, secret: &str) -> String {
        let response = self.token_request(client_id, secret, None).await;
        assert_eq!(response.status, 200, "{}", response.text);
        response.str("access_token")
    }

    pub async fn admin_token(&self, admin: &Admin) -> String {
        self.token(&admin.client_id, &admin.client_secret).await
    }

    pub async fn introspect(&self, caller_token: &str, token: &str) -> Value {
        let response = self.api(caller_token).introspect(token).await;
        assert_eq!(response.status, 200, "{}", response.text);
        response.body
    }

    /// Registers an agent and returns its id.
    pub async fn create_agent(&self, token: &str, name: &str, scopes: &[&str]) -> String {
        let response = self
            .api(token)
            .create_agent(serde_json::json!({"name": name, "scopes": scopes}))
            .await;
        assert_eq!(response.status, 201, "{}", response.text);
        response.str("agentId")
    }

    /// An agent holding exactly `scopes`, and an access token of it carrying them all:
    /// (agentId, token).
    pub async fn agent_with_token(
        &self,
        admin_token: &str,
        name: &str,
        scopes: &[&str],
    ) -> (String, String) {
        let agent_id = self.create_agent(admin_token, name, scopes).await;
        let (_, client_id, secret) = self.create_credential(admin_token, &agent_id).await;
        let token = self.token(&client_id, &secret).await;
        (agent_id, token)
    }

    /// Registers a resource and returns its id.
    pub async fn create_resource(&self, token: &str, identifier: &str, scopes: &[&str]) -> String {
        let response = self
            .api(token)
            .create_resource(serde_json::json!({
                "identifier": identifier,
                "name": identifier,
                "scopes": scopes,
            }))
            .await;
        assert_eq!(response.status, 201, "{}", response.text);
        response.str("resourceId")
    }

    /// Generates a credential and returns (credentialId, clientId, clientSecret).
    pub async fn create_credential(&self, token: &str, agent_id: &str) -> (String, String, String) {
        let response = self
            .api(token)
            .generate_credential(agent_id, serde_json::json!({}))
            .await;
        assert_eq!(response.status, 201, "{}", response.text);
        (
            response.str("credentialId"),
            response.str("clientId"),
            response.str("clientSecret"),
        )
    }

    /// Every audit event of the caller's organization, newest first, following cursors.
    pub async fn audit_events(&self, token: &str, query: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut page = format!("limit=200{query}");
            if let Some(c) = &cursor {
                page.push_str(&format!("&cursor={c}"));
            }
            let response = self.api(token).audit(&page).await;
            assert_eq!(response.status, 200, "{}", response.text);
            events.extend(response.body["data"].as_array().unwrap().iter().cloned());
            match response.body["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return events,
            }
        }
    }
}

impl TestServer {
    pub fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use agentidp_core::domain::time::Clock;
        self.clock.now()
    }
}
