//! Whole requests through `agentidp_http::handle`, the code every front end calls: parsing, client or bearer
//! authentication, the store (SQLite in memory, so no disk and no fsync), signing, and the
//! response. The HTTP server and the network are not in these figures; `bench/load.sh` measures
//! those.
//!
//! `cargo bench -p agentidp-integration --bench requests`

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark stops on its first surprise"
)]

use std::sync::Arc;

use agentidp_core::config::Config;
use agentidp_core::domain::audit::RequestContext;
use agentidp_core::domain::time::SystemClock;
use agentidp_core::service::Idp;
use agentidp_core::signing::{KeySet, KeySetDocument, KeySource, SigningAlgorithm};
use agentidp_http::ApiRequest;
use agentidp_store_sqlite::SqliteStore;
use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;

const FORM: &str = "application/x-www-form-urlencoded";

fn request(
    method: Method,
    path: &str,
    query: &str,
    authorization: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiRequest {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(authorization).unwrap(),
    );
    if let Some(content_type) = content_type {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
    }
    headers.insert(header::USER_AGENT, HeaderValue::from_static("bench"));
    ApiRequest {
        method,
        path: path.into(),
        query: query.into(),
        headers,
        body: body.to_vec(),
        context: RequestContext {
            request_id: uuid::Uuid::new_v4().to_string(),
            source_ip: Some("127.0.0.1".into()),
            user_agent: Some("bench".into()),
        },
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    idp: Arc<Idp>,
    basic: String,
    bearer: String,
    /// A token to introspect.
    token: String,
}

fn world() -> World {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (idp, basic, bearer, token) = runtime.block_on(async {
        // The production bcrypt cost: the warm path must not run it at all.
        let mut config = Config::from_lookup(|name| {
            (name == "AGENTIDP_ISSUER").then(|| "http://127.0.0.1:3000".to_owned())
        })
        .unwrap();
        // The benchmark sends far more management requests a minute than the default allows.
        config.throttle.org_requests_per_minute = 10_000_000;
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
            .create_org("bench", agentidp_core::domain::Plan::Enterprise)
            .await
            .unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                org.admin.credential.client_id,
                org.admin.client_secret.expose()
            ))
        );
        let response = agentidp_http::handle(
            &idp,
            None,
            request(
                Method::POST,
                "/api/v1/token",
                "",
                &basic,
                Some(FORM),
                b"grant_type=client_credentials",
            ),
        )
        .await;
        assert_eq!(response.status(), 200);
        let token = serde_json::from_slice::<Value>(response.body()).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        // A few agents, so the list has something to render.
        for i in 0..10 {
            let body = format!(r#"{{"name":"agent-{i}","scopes":["weather:read"]}}"#);
            let created = agentidp_http::handle(
                &idp,
                None,
                request(
                    Method::POST,
                    "/api/v1/agents",
                    "",
                    &format!("Bearer {token}"),
                    Some("application/json"),
                    body.as_bytes(),
                ),
            )
            .await;
            assert_eq!(created.status(), 201);
        }
        (idp, basic, format!("Bearer {token}"), token)
    });
    World {
        runtime,
        idp,
        basic,
        bearer,
        token,
    }
}

/// Not timed: how many bcrypt verifications a client new to this instance costs when its first
/// `burst` token requests arrive together, as they do when a fleet of workers starts at once.
fn first_requests_together(w: &World, burst: usize) -> u64 {
    w.runtime.block_on(async {
        let created = agentidp_http::handle(
            &w.idp,
            None,
            request(
                Method::POST,
                "/api/v1/agents",
                "",
                &w.bearer,
                Some("application/json"),
                format!(r#"{{"name":"burst-{burst}"}}"#).as_bytes(),
            ),
        )
        .await;
        assert_eq!(created.status(), 201);
        let agent = serde_json::from_slice::<Value>(created.body()).unwrap()["agentId"]
            .as_str()
            .unwrap()
            .to_owned();
        let credential = agentidp_http::handle(
            &w.idp,
            None,
            request(
                Method::POST,
                &format!("/api/v1/agents/{agent}/credentials"),
                "",
                &w.bearer,
                Some("application/json"),
                b"{}",
            ),
        )
        .await;
        assert_eq!(credential.status(), 201);
        let credential: Value = serde_json::from_slice(credential.body()).unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                credential["clientId"].as_str().unwrap(),
                credential["clientSecret"].as_str().unwrap()
            ))
        );
        let before = w.idp.hasher().verifications();
        let calls = (0..burst).map(|_| {
            let idp = Arc::clone(&w.idp);
            let req = request(
                Method::POST,
                "/api/v1/token",
                "",
                &basic,
                Some(FORM),
                b"grant_type=client_credentials",
            );
            tokio::spawn(async move { agentidp_http::handle(&idp, None, req).await.status() })
        });
        for call in calls.collect::<Vec<_>>() {
            assert_eq!(call.await.unwrap(), 200);
        }
        w.idp.hasher().verifications() - before
    })
}

fn requests(c: &mut Criterion) {
    let w = world();
    for burst in [1, 8, 32] {
        println!(
            "a new client's first {burst} token requests at once: {} bcrypt verifications",
            first_requests_together(&w, burst)
        );
    }
    let verifications_before = w.idp.hasher().verifications();
    let mut group = c.benchmark_group("request");
    // A warm token request takes about a millisecond: 100 samples need more than the default 5 s.
    group.measurement_time(std::time::Duration::from_secs(8));
    let call = |req: ApiRequest, status: u16| {
        let response = w.runtime.block_on(agentidp_http::handle(&w.idp, None, req));
        assert_eq!(
            response.status(),
            status,
            "{:?}",
            String::from_utf8_lossy(response.body())
        );
    };

    // Token endpoint, warm client: parse, credential read, cached secret check, agent read,
    // RS256 signature, usage count and audit event committed.
    group.bench_function("token_warm_client", |b| {
        b.iter(|| {
            call(
                request(
                    Method::POST,
                    "/api/v1/token",
                    "",
                    &w.basic,
                    Some(FORM),
                    b"grant_type=client_credentials",
                ),
                200,
            )
        })
    });
    // A request refused while parsing, before any store access: the parser's own cost.
    group.bench_function("token_refused_at_parsing", |b| {
        b.iter(|| {
            call(
                request(
                    Method::POST,
                    "/api/v1/token",
                    "",
                    &w.basic,
                    Some(FORM),
                    b"grant_type=password",
                ),
                400,
            )
        })
    });
    let introspect_body = format!("token={}", w.token);
    group.bench_function("introspect_basic_client", |b| {
        b.iter(|| {
            call(
                request(
                    Method::POST,
                    "/api/v1/token/introspect",
                    "",
                    &w.basic,
                    Some(FORM),
                    introspect_body.as_bytes(),
                ),
                200,
            )
        })
    });
    // Management: bearer check (RS256 verify, revocation and agent reads), the organization's
    // request tally (a write), the page read and its JSON.
    group.bench_function("list_agents", |b| {
        b.iter(|| {
            call(
                request(
                    Method::GET,
                    "/api/v1/agents",
                    "limit=20",
                    &w.bearer,
                    None,
                    b"",
                ),
                200,
            )
        })
    });
    group.bench_function("audit_query", |b| {
        b.iter(|| {
            call(
                request(
                    Method::GET,
                    "/api/v1/audit",
                    "action=token.issued&limit=50",
                    &w.bearer,
                    None,
                    b"",
                ),
                200,
            )
        })
    });
    group.finish();
    assert_eq!(
        w.idp.hasher().verifications(),
        verifications_before,
        "the warm client's secret was verified with bcrypt again"
    );
}

criterion_group!(benches, requests);
criterion_main!(benches);
