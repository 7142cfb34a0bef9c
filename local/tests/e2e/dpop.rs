//! Sender-constrained tokens (RFC 9449 DPoP): a token asked for with a proof is bound to the
//! proof's key, and is honoured only with a fresh proof from that key, naming the request and the
//! token. Every refusal case of §4.3 and §7, at the token endpoint and at the management API;
//! an agent that requires DPoP; server nonces; token exchange keeping the binding.

use std::sync::Arc;

use agentidp_core::signing::SigningAlgorithm;
use agentidp_core::store::Store;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::private_key_jwt::AgentKey;
use crate::support::{Response, TestServer};

/// A client's DPoP key pair and the proofs it makes.
pub(crate) struct DpopKey(AgentKey);

impl DpopKey {
    pub(crate) fn new() -> Self {
        Self(AgentKey::new(SigningAlgorithm::ES256))
    }

    /// RFC 7638, computed here rather than by the server's code.
    fn thumbprint(&self) -> String {
        let jwk = self.0.public_jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        sha256(&canonical)
    }

    fn header(&self) -> Value {
        json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": self.0.public_jwk() })
    }

    /// What a well-behaved client signs for `method` `path` (with `ath` for `token`).
    fn claims(&self, server: &TestServer, method: &str, path: &str, token: Option<&str>) -> Value {
        let mut claims = json!({
            "jti": Uuid::new_v4().to_string(),
            "htm": method,
            "htu": format!("{}{path}", server.base),
            "iat": server.clock_now().timestamp(),
        });
        if let Some(token) = token {
            claims["ath"] = json!(sha256(token));
        }
        claims
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        self.0.sign_with_header(header, claims)
    }

    pub(crate) fn proof(
        &self,
        server: &TestServer,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> String {
        self.sign(&self.header(), &self.claims(server, method, path, token))
    }
}

fn sha256(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        text.as_bytes(),
    ))
}

const TOKEN_PATH: &str = "/api/v1/token";

/// `POST /token` (client_credentials, client_secret_basic) with these `DPoP` headers.
pub(crate) async fn token_with_proofs(
    server: &TestServer,
    client_id: &str,
    secret: &str,
    proofs: &[&str],
) -> Response {
    let mut request = server
        .request(Method::POST, TOKEN_PATH)
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")]);
    for proof in proofs {
        request = request.header("DPoP", *proof);
    }
    server.send(request).await
}

async fn dpop_token(server: &TestServer, client_id: &str, secret: &str, key: &DpopKey) -> String {
    let proof = key.proof(server, "POST", TOKEN_PATH, None);
    let response = token_with_proofs(server, client_id, secret, &[&proof]).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.str("token_type"), "DPoP");
    response.str("access_token")
}

/// A management call presenting `token` in `scheme`, with these `DPoP` headers.
pub(crate) async fn call_with(
    server: &TestServer,
    method: Method,
    path: &str,
    authorization: &str,
    proofs: &[&str],
) -> Response {
    let mut request = server
        .request(method, path)
        .header("Authorization", authorization);
    for proof in proofs {
        request = request.header("DPoP", *proof);
    }
    server.send(request).await
}

/// The `WWW-Authenticate` challenges of a response, one per header.
fn challenges(response: &Response) -> Vec<String> {
    response
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn a_bound_token_works_only_with_a_fresh_proof_from_its_key(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("dpop").await;
    let key = DpopKey::new();
    let token = dpop_token(&server, &admin.client_id, &admin.client_secret, &key).await;
    assert_eq!(claims_of(&token)["cnf"], json!({ "jkt": key.thumbprint() }));

    let path = format!("/api/v1/agents/{}", admin.agent_id);
    let authorization = format!("DPoP {token}");
    let proof = key.proof(&server, "GET", &path, Some(&token));
    let ok = call_with(&server, Method::GET, &path, &authorization, &[&proof]).await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    // The same proof again: each is single use.
    let replayed = call_with(&server, Method::GET, &path, &authorization, &[&proof]).await;
    assert_eq!(replayed.status, 401, "{}", replayed.text);
    assert_eq!(replayed.code(), "UNAUTHORIZED");
    assert!(challenges(&replayed)[0].contains(r#"error="invalid_dpop_proof""#));

    // A thief holding the token but not the key.
    let as_bearer = server.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(as_bearer.status, 401, "{}", as_bearer.text);
    assert_eq!(challenges(&as_bearer).len(), 1);
    assert!(challenges(&as_bearer)[0].starts_with("DPoP "));
    assert!(challenges(&as_bearer)[0].contains(r#"error="invalid_token""#));
    let thief = DpopKey::new();
    let thiefs_proof = thief.proof(&server, "GET", &path, Some(&token));
    let refused = call_with(
        &server,
        Method::GET,
        &path,
        &authorization,
        &[&thiefs_proof],
    )
    .await;
    assert_eq!(refused.status, 401);
    assert!(challenges(&refused)[0].contains(r#"error="invalid_dpop_proof""#));
    let no_proof = call_with(&server, Method::GET, &path, &authorization, &[]).await;
    assert_eq!(no_proof.status, 401);
    assert!(challenges(&no_proof)[0].contains(r#"error="invalid_dpop_proof""#));

    // Proofs that name another request or another token.
    let other_token = server.admin_token(&admin).await;
    let mut refusals = Vec::new();
    for (what, claims) in [
        (
            "a proof for another token",
            key.claims(&server, "GET", &path, Some(&other_token)),
        ),
        (
            "a proof with no ath",
            key.claims(&server, "GET", &path, None),
        ),
        (
            "a proof for another method",
            key.claims(&server, "DELETE", &path, Some(&token)),
        ),
        (
            "a proof for another path",
            key.claims(&server, "GET", "/api/v1/agents", Some(&token)),
        ),
    ] {
        let proof = key.sign(&key.header(), &claims);
        let response = call_with(&server, Method::GET, &path, &authorization, &[&proof]).await;
        refusals.push((what, response.status));
    }
    assert!(
        refusals.iter().all(|(_, status)| *status == 401),
        "{refusals:?}"
    );

    // An unbound token in the DPoP scheme is not a DPoP token.
    let unbound = call_with(
        &server,
        Method::GET,
        &path,
        &format!("DPoP {other_token}"),
        &[&key.proof(&server, "GET", &path, Some(&other_token))],
    )
    .await;
    assert_eq!(unbound.status, 401);
    assert!(challenges(&unbound)[0].contains(r#"error="invalid_token""#));

    // No token at all: both schemes are offered, DPoP with the algorithms it takes.
    let anonymous = server.call(Method::GET, &path, None, None).await;
    let offered = challenges(&anonymous);
    assert_eq!(offered.len(), 2, "{offered:?}");
    assert!(offered[0].starts_with("Bearer "));
    assert!(offered[1].starts_with("DPoP ") && offered[1].contains("ES256"));

    // The OAuth endpoints that take an access token as the caller's credential refuse the
    // bound token as Bearer too, and in the DPoP scheme want its proof.
    for endpoint in ["/api/v1/token/introspect", "/api/v1/token/revoke"] {
        let as_bearer = server
            .send(
                server
                    .request(Method::POST, endpoint)
                    .bearer_auth(&token)
                    .form(&[("token", other_token.as_str())]),
            )
            .await;
        assert_eq!(as_bearer.status, 401, "{endpoint}: {}", as_bearer.text);
        let wrong_ath = key.proof(&server, "POST", endpoint, Some(&other_token));
        let refused = server
            .send(
                server
                    .request(Method::POST, endpoint)
                    .header("Authorization", format!("DPoP {token}"))
                    .header("DPoP", wrong_ath)
                    .form(&[("token", other_token.as_str())]),
            )
            .await;
        assert_eq!(refused.status, 401, "{endpoint}: {}", refused.text);
        assert_eq!(refused.oauth_error(), "invalid_client");
    }
    let introspected_with_proof = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/introspect")
                .header("Authorization", format!("DPoP {token}"))
                .header(
                    "DPoP",
                    key.proof(&server, "POST", "/api/v1/token/introspect", Some(&token)),
                )
                .form(&[("token", other_token.as_str())]),
        )
        .await;
    assert_eq!(
        introspected_with_proof.body["active"], true,
        "{}",
        introspected_with_proof.text
    );

    // Introspection names the key; revocation by the key's holder works like any other.
    let introspected = server.introspect(&other_token, &token).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected["token_type"], "DPoP");
    assert_eq!(introspected["cnf"]["jkt"], key.thumbprint());
    let plain = server.introspect(&other_token, &other_token).await;
    assert_eq!(plain["token_type"], "Bearer");
    assert!(plain.get("cnf").is_none());
}

async fn every_bad_proof_is_refused_at_the_token_endpoint_and_issues_nothing(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("dpop-refusals").await;
    let admin_token = server.admin_token(&admin).await;
    let key = DpopKey::new();
    let now = server.clock_now().timestamp();
    let good = || key.claims(&server, "POST", TOKEN_PATH, None);
    let with = |name: &str, value: Value| {
        let mut claims = good();
        claims[name] = value;
        key.sign(&key.header(), &claims)
    };
    let with_header = |name: &str, value: Value| {
        let mut header = key.header();
        header[name] = value;
        key.sign(&header, &good())
    };
    let unsigned = |alg: &str| {
        let header = json!({ "typ": "dpop+jwt", "alg": alg, "jwk": key.0.public_jwk() });
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(good().to_string())
        )
    };
    // The forgery HS256 invites: an HMAC keyed with the public key, which anyone can read.
    let hmac_forgery = {
        let jwk = key.0.public_jwk();
        let header = json!({ "typ": "dpop+jwt", "alg": "HS256", "jwk": jwk });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(good().to_string())
        );
        let secret = jsonwebtoken::EncodingKey::from_secret(jwk.to_string().as_bytes());
        let signature =
            jsonwebtoken::crypto::sign(signed.as_bytes(), &secret, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{signed}.{signature}")
    };
    let mut private_jwk = key.0.public_jwk();
    private_jwk["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let used = key.proof(&server, "POST", TOKEN_PATH, None);
    assert_eq!(
        token_with_proofs(&server, &admin.client_id, &admin.client_secret, &[&used])
            .await
            .status,
        200
    );
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("wrong htm", vec![with("htm", json!("GET"))]),
        (
            "wrong htu",
            vec![with(
                "htu",
                json!(format!("{}/api/v1/token/introspect", server.base)),
            )],
        ),
        (
            "another server's htu",
            vec![with("htu", json!("https://evil.example/api/v1/token"))],
        ),
        ("old iat", vec![with("iat", json!(now - 61))]),
        ("future iat", vec![with("iat", json!(now + 61))]),
        ("no jti", vec![with("jti", json!(""))]),
        ("alg none", vec![unsigned("none")]),
        ("HS256", vec![hmac_forgery]),
        (
            "a private key in the header",
            vec![with_header("jwk", private_jwk)],
        ),
        ("typ JWT", vec![with_header("typ", json!("JWT"))]),
        (
            "a key that did not sign it",
            vec![with_header("jwk", DpopKey::new().0.public_jwk())],
        ),
        ("not a JWT", vec!["not-a-jwt".to_owned()]),
        (
            "two proofs",
            vec![good_proof(&key, &server), good_proof(&key, &server)],
        ),
        ("a replayed proof", vec![used.clone()]),
    ];
    let issued = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["action"] == "token.issued")
            .count()
    };
    let issued_before = issued(&server.audit_events(&admin_token, "").await);
    for (what, proofs) in &cases {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let response =
            token_with_proofs(&server, &admin.client_id, &admin.client_secret, &proofs).await;
        assert_eq!(response.status, 400, "{what}: {}", response.text);
        assert_eq!(response.oauth_error(), "invalid_dpop_proof", "{what}");
        if what.starts_with("alg") || *what == "HS256" {
            assert!(
                response.str("error_description").contains("alg"),
                "{what}: refused for its algorithm, {}",
                response.text
            );
        }
        assert_eq!(response.header("cache-control"), Some("no-store"), "{what}");
    }
    assert_eq!(
        issued(&server.audit_events(&admin_token, "").await),
        issued_before,
        "no refused request issued a token"
    );
    let denials = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    let reasons: Vec<&str> = denials
        .iter()
        .filter_map(|e| e["details"]["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["dpop_proof_replayed"],
        "only the replay is the client's to audit"
    );
}

fn good_proof(key: &DpopKey, server: &TestServer) -> String {
    key.proof(server, "POST", TOKEN_PATH, None)
}

async fn a_jti_spent_with_another_key_does_not_block_the_keys_holder(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("dpop-jti").await;
    let (victim, attacker) = (DpopKey::new(), DpopKey::new());
    let mut claims = victim.claims(&server, "POST", TOKEN_PATH, None);
    // The attacker saw the victim's jti and spends it first, with its own key.
    let spent = attacker.sign(&attacker.header(), &claims);
    let first = token_with_proofs(&server, &admin.client_id, &admin.client_secret, &[&spent]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let victims = victim.sign(&victim.header(), &claims);
    let second =
        token_with_proofs(&server, &admin.client_id, &admin.client_secret, &[&victims]).await;
    assert_eq!(second.status, 200, "{}", second.text);
    // Past its window a proof is refused for its age, whatever became of its replay record.
    claims["jti"] = json!("fresh");
    let later = victim.sign(&victim.header(), &claims);
    server.clock.advance(chrono::Duration::seconds(61));
    let stale = token_with_proofs(&server, &admin.client_id, &admin.client_secret, &[&later]).await;
    assert_eq!(stale.oauth_error(), "invalid_dpop_proof");
}

async fn an_agent_that_requires_dpop_gets_no_bearer_token_and_its_old_ones_stop(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("dpop-required").await;
    let admin_token = server.admin_token(&admin).await;
    let agent = server
        .create_agent(&admin_token, "worker", &["agents:read"])
        .await;
    let (_, client_id, secret) = server.create_credential(&admin_token, &agent).await;
    let bearer = server.token(&client_id, &secret).await;

    let flagged = server
        .api(&admin_token)
        .update_agent(&agent, json!({ "requireDpop": true }))
        .await;
    assert_eq!(flagged.status, 200, "{}", flagged.text);
    assert_eq!(flagged.body["requireDpop"], true);

    let refused = server.token_request(&client_id, &secret, None).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.oauth_error(), "invalid_dpop_proof");
    let denials = server
        .audit_events(
            &admin_token,
            &format!("&action=token.denied&agentId={agent}"),
        )
        .await;
    assert_eq!(denials[0]["details"]["reason"], "dpop_required");
    // The bearer token it had before is no longer honoured.
    assert_eq!(
        server.introspect(&admin_token, &bearer).await["active"],
        false
    );
    let listed = server.api(&bearer).list_agents("").await;
    assert_eq!(listed.status, 401);

    let key = DpopKey::new();
    let bound = dpop_token(&server, &client_id, &secret, &key).await;
    assert_eq!(
        server.introspect(&admin_token, &bound).await["active"],
        true
    );
    // Beyond its scopes, it is told so in the scheme it used as well.
    let path = "/api/v1/agents";
    let beyond = call_with(
        &server,
        Method::POST,
        path,
        &format!("DPoP {bound}"),
        &[&key.proof(&server, "POST", path, Some(&bound))],
    )
    .await;
    assert_eq!(beyond.status, 403, "{}", beyond.text);
    assert!(
        challenges(&beyond)
            .iter()
            .any(|c| c.starts_with("DPoP ") && c.contains(r#"error="insufficient_scope""#)),
        "{:?}",
        challenges(&beyond)
    );

    // Someone who may manage credentials but holds fewer scopes than the admin cannot take
    // the requirement off the admin.
    let (_, manager_token) = server
        .agent_with_token(&admin_token, "manager", &["agents:read", "agents:write"])
        .await;
    let admin_required = server
        .api(&admin_token)
        .update_agent(&admin.agent_id, json!({ "requireDpop": true }))
        .await;
    assert_eq!(admin_required.status, 200, "{}", admin_required.text);
    let lifted = server
        .api(&manager_token)
        .update_agent(&admin.agent_id, json!({ "requireDpop": false }))
        .await;
    assert_eq!(lifted.status, 403, "{}", lifted.text);
    let bad = server
        .api(&manager_token)
        .update_agent(&agent, json!({ "requireDpop": "yes" }))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["details"][0]["field"], "requireDpop");
}

async fn with_nonces_on_a_proof_must_carry_a_fresh_server_nonce(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| config.dpop.nonces = true).await;
    let admin = server.new_org("dpop-nonces").await;
    let key = DpopKey::new();
    let first = token_with_proofs(
        &server,
        &admin.client_id,
        &admin.client_secret,
        &[&key.proof(&server, "POST", TOKEN_PATH, None)],
    )
    .await;
    assert_eq!(first.status, 400, "{}", first.text);
    assert_eq!(first.oauth_error(), "use_dpop_nonce");
    let nonce = first.header("dpop-nonce").unwrap().to_owned();

    let with_nonce = |nonce: &str| {
        let mut claims = key.claims(&server, "POST", TOKEN_PATH, None);
        claims["nonce"] = json!(nonce);
        key.sign(&key.header(), &claims)
    };
    let retried = token_with_proofs(
        &server,
        &admin.client_id,
        &admin.client_secret,
        &[&with_nonce(&nonce)],
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert!(
        retried.header("dpop-nonce").is_some(),
        "the next nonce comes with the token"
    );

    // The current window, with a tag the server did not make.
    let window = server.clock_now().timestamp().div_euclid(300);
    let forged = URL_SAFE_NO_PAD.encode([window.to_be_bytes().as_slice(), &[7u8; 16]].concat());
    let refused = token_with_proofs(
        &server,
        &admin.client_id,
        &admin.client_secret,
        &[&with_nonce(&forged)],
    )
    .await;
    assert_eq!(refused.oauth_error(), "use_dpop_nonce");

    // A nonce lives for one to two windows of five minutes.
    server.clock.advance(chrono::Duration::minutes(11));
    let expired = token_with_proofs(
        &server,
        &admin.client_id,
        &admin.client_secret,
        &[&with_nonce(&nonce)],
    )
    .await;
    assert_eq!(expired.oauth_error(), "use_dpop_nonce");
}

async fn the_proofs_url_is_the_configured_public_url(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |config| {
        config.public_url = "https://idp.example.com/agents-idp".into();
    })
    .await;
    let admin = server.new_org("dpop-public-url").await;
    let key = DpopKey::new();
    // The address the request reached is not what the client was told to call.
    let reached = key.proof(&server, "POST", TOKEN_PATH, None);
    let refused =
        token_with_proofs(&server, &admin.client_id, &admin.client_secret, &[&reached]).await;
    assert_eq!(
        refused.oauth_error(),
        "invalid_dpop_proof",
        "{}",
        refused.text
    );
    let mut claims = key.claims(&server, "POST", TOKEN_PATH, None);
    claims["htu"] = json!("https://idp.example.com/agents-idp/api/v1/token");
    let public = key.sign(&key.header(), &claims);
    let accepted =
        token_with_proofs(&server, &admin.client_id, &admin.client_secret, &[&public]).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let metadata = server
        .send(server.request(Method::GET, "/.well-known/oauth-authorization-server"))
        .await;
    assert_eq!(
        metadata.body["token_endpoint"],
        "https://idp.example.com/agents-idp/api/v1/token"
    );
    assert_eq!(metadata.body["issuer"], server.base);
    assert!(
        metadata.body["dpop_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("ES256"))
    );
}

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn token_exchange_never_drops_a_binding(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("dpop-exchange").await;
    let admin_token = server.admin_token(&admin).await;
    let actor = server
        .create_agent(&admin_token, "actor", &["agents:read"])
        .await;
    let (_, actor_client, actor_secret) = server.create_credential(&admin_token, &actor).await;
    let subject = server
        .create_agent(&admin_token, "subject", &["agents:read"])
        .await;
    let (_, subject_client, subject_secret) =
        server.create_credential(&admin_token, &subject).await;
    let policy = server
        .api(&admin_token)
        .update_agent(&subject, json!({ "delegation": { "mayAct": [actor] } }))
        .await;
    assert_eq!(policy.status, 200, "{}", policy.text);

    let subject_key = DpopKey::new();
    let subject_token = dpop_token(&server, &subject_client, &subject_secret, &subject_key).await;
    let exchange = |proof: Option<String>| {
        let mut request = server
            .request(Method::POST, TOKEN_PATH)
            .basic_auth(&actor_client, Some(&actor_secret))
            .form(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", subject_token.as_str()),
                ("subject_token_type", ACCESS_TOKEN),
            ]);
        if let Some(proof) = proof {
            request = request.header("DPoP", proof);
        }
        server.send(request)
    };
    let unbound = exchange(None).await;
    assert_eq!(unbound.status, 400, "{}", unbound.text);
    assert_eq!(unbound.oauth_error(), "invalid_dpop_proof");

    let actor_key = DpopKey::new();
    let bound = exchange(Some(actor_key.proof(&server, "POST", TOKEN_PATH, None))).await;
    assert_eq!(bound.status, 200, "{}", bound.text);
    assert_eq!(bound.str("token_type"), "DPoP");
    let delegated = bound.str("access_token");
    let claims = claims_of(&delegated);
    assert_eq!(
        claims["cnf"]["jkt"],
        actor_key.thumbprint(),
        "bound to the actor's key"
    );
    assert_eq!(claims["act"]["sub"], actor);
    let introspected = server.introspect(&admin_token, &delegated).await;
    assert_eq!(introspected["cnf"]["jkt"], actor_key.thumbprint());

    // The delegated token works at the management API with the actor's key only.
    let path = format!("/api/v1/agents/{subject}");
    let ok = call_with(
        &server,
        Method::GET,
        &path,
        &format!("DPoP {delegated}"),
        &[&actor_key.proof(&server, "GET", &path, Some(&delegated))],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let with_subjects_key = call_with(
        &server,
        Method::GET,
        &path,
        &format!("DPoP {delegated}"),
        &[&subject_key.proof(&server, "GET", &path, Some(&delegated))],
    )
    .await;
    assert_eq!(with_subjects_key.status, 401);

    // An unbound chain is honoured until an agent of it requires DPoP: then the token its
    // actor holds stops, as the subject's own unbound tokens would.
    let plain_subject_token = server.token(&subject_client, &subject_secret).await;
    let unbound_exchange = server
        .send(
            server
                .request(Method::POST, TOKEN_PATH)
                .basic_auth(&actor_client, Some(&actor_secret))
                .form(&[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", plain_subject_token.as_str()),
                    ("subject_token_type", ACCESS_TOKEN),
                ]),
        )
        .await;
    assert_eq!(unbound_exchange.status, 200, "{}", unbound_exchange.text);
    assert_eq!(unbound_exchange.str("token_type"), "Bearer");
    let held = unbound_exchange.str("access_token");
    assert_eq!(server.introspect(&admin_token, &held).await["active"], true);
    let flagged = server
        .api(&admin_token)
        .update_agent(&actor, json!({ "requireDpop": true }))
        .await;
    assert_eq!(flagged.status, 200, "{}", flagged.text);
    assert_eq!(
        server.introspect(&admin_token, &held).await["active"],
        false
    );
    assert_eq!(
        server.introspect(&admin_token, &plain_subject_token).await["active"],
        true,
        "the subject's own token does not depend on its actor"
    );
}

agentidp_testkit::per_store!(
    a_bound_token_works_only_with_a_fresh_proof_from_its_key,
    every_bad_proof_is_refused_at_the_token_endpoint_and_issues_nothing,
    a_jti_spent_with_another_key_does_not_block_the_keys_holder,
    an_agent_that_requires_dpop_gets_no_bearer_token_and_its_old_ones_stop,
    with_nonces_on_a_proof_must_carry_a_fresh_server_nonce,
    the_proofs_url_is_the_configured_public_url,
    token_exchange_never_drops_a_binding,
);
