//! Credentials without a shared secret (RFC 7523 §2.2): the agent registers public keys and
//! authenticates with assertions signed by its private key. Each attack on an assertion is
//! refused as `invalid_client`, audited with its reason, and issues nothing.

use std::sync::Arc;

use agentidp_core::signing::{KeySet, KeySetDocument, SigningAlgorithm, StoredKey, generate_key};
use agentidp_core::store::Store;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::brute_force::from_host;
use crate::support::{Response, TestServer};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An agent's key pair: the private half stays with the test, the public half is registered.
pub(crate) struct AgentKey {
    stored: StoredKey,
}

impl AgentKey {
    pub(crate) fn new(alg: SigningAlgorithm) -> Self {
        Self {
            stored: generate_key(alg, chrono::Utc::now()).unwrap(),
        }
    }

    pub(crate) fn kid(&self) -> &str {
        &self.stored.kid
    }

    /// The public JWK, as a client would publish it.
    pub(crate) fn public_jwk(&self) -> Value {
        let document = KeySetDocument {
            keys: vec![self.stored.clone()],
        };
        let jwks = serde_json::to_value(KeySet::from_document(&document).unwrap().jwks()).unwrap();
        jwks["keys"][0].clone()
    }

    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    fn encoding_key(&self) -> (Algorithm, EncodingKey) {
        let pem = self.stored.private_key_pem.as_bytes();
        match self.stored.alg {
            SigningAlgorithm::RS256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem).unwrap()),
            SigningAlgorithm::ES256 => (Algorithm::ES256, EncodingKey::from_ec_pem(pem).unwrap()),
            SigningAlgorithm::EdDSA => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem).unwrap()),
        }
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        let (alg, key) = self.encoding_key();
        let mut header = Header::new(alg);
        header.kid = Some(self.kid().to_owned());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// A JWS of `claims` under exactly `header` (whatever its `alg` says, the signature is this
    /// key's own algorithm's): for headers `jsonwebtoken` cannot express, and forgeries.
    pub(crate) fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let (alg, key) = self.encoding_key();
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, alg).unwrap();
        format!("{signed}.{signature}")
    }
}

/// Claims a well-behaved client signs: for the token endpoint, valid for a minute.
pub(crate) fn assertion_claims(server: &TestServer, client_id: &str) -> Value {
    let now = server.clock_now().timestamp();
    json!({
        "iss": client_id,
        "sub": client_id,
        "aud": format!("{}/api/v1/token", server.base),
        "iat": now,
        "exp": now + 60,
        "jti": Uuid::new_v4().to_string(),
    })
}

pub(crate) async fn token_with_assertion(
    server: &TestServer,
    assertion: &str,
    extra: &[(&str, &str)],
) -> Response {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    server
        .send(server.request(Method::POST, "/api/v1/token").form(&form))
        .await
}

/// An organization's admin token, and an agent with `scopes` holding a key credential of
/// `key`: (admin token, agent id, credential id, client id).
async fn agent_with_key(
    server: &TestServer,
    org: &str,
    key: &AgentKey,
    scopes: &[&str],
) -> (String, String, String, String) {
    let admin = server.new_org(org).await;
    let admin_token = server.admin_token(&admin).await;
    let agent = server.create_agent(&admin_token, "keyholder", scopes).await;
    let created = server
        .api(&admin_token)
        .generate_credential(
            &agent,
            json!({"type": "private_key_jwt", "jwks": key.jwks()}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    (
        admin_token,
        agent,
        created.str("credentialId"),
        created.str("clientId"),
    )
}

async fn an_agent_with_only_public_keys_gets_and_uses_tokens(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    for alg in [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ] {
        let key = AgentKey::new(alg);
        let admin = server.new_org(&format!("keys-{alg:?}")).await;
        let admin_token = server.admin_token(&admin).await;
        let agent = server
            .create_agent(&admin_token, "keyholder", &["agents:read"])
            .await;
        let created = server
            .api(&admin_token)
            .generate_credential(
                &agent,
                json!({"type": "private_key_jwt", "jwks": key.jwks()}),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        assert_eq!(created.body["type"], "private_key_jwt");
        assert_eq!(created.body["keyIds"], json!([key.kid()]));
        assert!(
            created.body.get("clientSecret").is_none(),
            "{}",
            created.text
        );
        let client_id = created.str("clientId");

        let listed = server.api(&admin_token).list_credentials(&agent, "").await;
        let entry = &listed.body["data"][0];
        assert_eq!(entry["type"], "private_key_jwt");
        assert_eq!(entry["keyIds"], json!([key.kid()]));
        assert!(
            !listed.text.contains("\"x\""),
            "never the keys: {}",
            listed.text
        );

        let granted = token_with_assertion(
            &server,
            &key.sign(&assertion_claims(&server, &client_id)),
            &[],
        )
        .await;
        assert_eq!(granted.status, 200, "{alg:?}: {}", granted.text);
        let token = granted.str("access_token");
        assert_eq!(server.api(&token).list_agents("").await.status, 200);

        // Introspection takes the same client authentication (with the issuer as audience).
        let mut claims = assertion_claims(&server, &client_id);
        claims["aud"] = json!(server.base);
        let introspected = server
            .send(
                server
                    .request(Method::POST, "/api/v1/token/introspect")
                    .form(&[
                        ("token", token.as_str()),
                        ("client_assertion_type", JWT_BEARER),
                        ("client_assertion", key.sign(&claims).as_str()),
                    ]),
            )
            .await;
        assert_eq!(introspected.status, 200, "{}", introspected.text);
        assert_eq!(introspected.body["active"], true);

        let issued = server
            .audit_events(&admin_token, "&action=token.issued")
            .await;
        let by_key: Vec<&Value> = issued
            .iter()
            .filter(|e| e["details"]["clientAuthMethod"] == "private_key_jwt")
            .collect();
        assert_eq!(by_key.len(), 1, "{issued:?}");
        assert_eq!(by_key[0]["details"]["keyId"], key.kid());
    }
}

async fn a_replayed_assertion_is_refused_and_audited(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let (admin_token, _, _, client_id) =
        agent_with_key(&server, "replay", &key, &["agents:read"]).await;
    let assertion = key.sign(&assertion_claims(&server, &client_id));
    assert_eq!(
        token_with_assertion(&server, &assertion, &[]).await.status,
        200
    );
    let replayed = token_with_assertion(&server, &assertion, &[]).await;
    assert_eq!(replayed.status, 401, "{}", replayed.text);
    assert_eq!(replayed.oauth_error(), "invalid_client");
    let denied = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["details"]["reason"], "assertion_replayed");
    let issued = server
        .audit_events(&admin_token, "&action=token.issued")
        .await;
    assert_eq!(
        issued.len(),
        2,
        "the admin's token and the first assertion's only"
    );
}

/// The signing input of a JWS with this header and these claims, unsigned.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

async fn assertions_that_break_a_rule_issue_nothing(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let (admin_token, _, _, client_id) =
        agent_with_key(&server, "victim", &key, &["agents:read", "agents:write"]).await;
    // Another organization's agent with a key of its own, which it controls.
    let attacker_key = AgentKey::new(SigningAlgorithm::ES256);
    agent_with_key(&server, "attacker", &attacker_key, &["agents:read"]).await;

    let good = assertion_claims(&server, &client_id);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };
    let now = server.clock_now().timestamp();
    let mut cases: Vec<(&str, String)> = vec![
        (
            "assertion_lifetime_too_long",
            key.sign(&with(&|c| c["exp"] = json!(now + 600))),
        ),
        (
            "assertion_expired",
            key.sign(&with(&|c| c["exp"] = json!(now - 120))),
        ),
        (
            "assertion_wrong_audience",
            key.sign(&with(&|c| {
                c["aud"] = json!("https://elsewhere.example.com/token")
            })),
        ),
        (
            "assertion_missing_jti",
            key.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            })),
        ),
        (
            "assertion_missing_expiry",
            key.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
        ),
        // Signed by the attacker's key, under the victim's key id.
        ("assertion_bad_signature", {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(key.kid().to_owned());
            let pem = attacker_key.stored.private_key_pem.as_bytes();
            jsonwebtoken::encode(&header, &good, &EncodingKey::from_ec_pem(pem).unwrap()).unwrap()
        }),
        // The attacker's own key id: not a key of this credential.
        ("assertion_unknown_key", attacker_key.sign(&good)),
        // alg none: no signature at all.
        (
            "assertion_algorithm_not_allowed",
            format!(
                "{}.",
                unsigned(&json!({"alg": "none", "kid": key.kid()}), &good)
            ),
        ),
    ];
    // HS256 with the public key as the HMAC secret, the classic confusion attack.
    let public = key.public_jwk().to_string();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid().to_owned());
    cases.push((
        "assertion_algorithm_not_allowed",
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(public.as_bytes())).unwrap(),
    ));

    for (reason, assertion) in &cases {
        let refused = token_with_assertion(&server, assertion, &[]).await;
        assert_eq!(refused.status, 401, "{reason}: {}", refused.text);
        assert_eq!(refused.oauth_error(), "invalid_client", "{reason}");
        assert!(refused.body.get("access_token").is_none());
    }
    // iss other than sub: the client the assertion names is not the one it claims to be.
    let mismatched = key.sign(&with(&|c| c["iss"] = json!(Uuid::new_v4().to_string())));
    let refused = token_with_assertion(&server, &mismatched, &[("client_id", &client_id)]).await;
    assert_eq!(refused.status, 401, "{}", refused.text);

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
    assert_eq!(
        server
            .audit_events(&admin_token, "&action=token.issued")
            .await
            .len(),
        1,
        "only the admin's own token"
    );
}

async fn a_secret_for_a_key_credential_or_an_assertion_for_a_secret_one_is_refused(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let key = AgentKey::new(SigningAlgorithm::EdDSA);
    let (admin_token, agent, _, key_client) =
        agent_with_key(&server, "methods", &key, &["agents:read"]).await;
    let wrong_method = server
        .token_request(
            &key_client,
            "sk_live_00000000000000000000000000000000",
            None,
        )
        .await;
    assert_eq!(wrong_method.status, 401, "{}", wrong_method.text);
    // A secret credential of the same agent: an assertion signed with the agent's key for it.
    let (_, secret_client, _) = server.create_credential(&admin_token, &agent).await;
    let for_secret = key.sign(&assertion_claims(&server, &secret_client));
    let refused = token_with_assertion(&server, &for_secret, &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    let denied = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    assert!(
        denied
            .iter()
            .all(|e| e["details"]["reason"] == "authentication_method_not_allowed"),
        "{denied:?}"
    );
    assert_eq!(denied.len(), 2);
}

async fn private_or_weak_keys_are_refused_and_nothing_is_created(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("refused-keys").await;
    let admin_token = server.admin_token(&admin).await;
    let agent = server
        .create_agent(&admin_token, "keyholder", &["agents:read"])
        .await;
    let mut private = AgentKey::new(SigningAlgorithm::ES256).public_jwk();
    private["d"] = json!("3JCLbyKVXeu7eZW3u8x0VSB6prZP9d_3fETsqNVmGkc");
    for (jwks, field) in [
        (json!({"keys": [private]}), "jwks.keys[0].d"),
        (
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}),
            "jwks.keys[0]",
        ),
        (json!({"keys": []}), "jwks.keys"),
        (json!("not a set"), "jwks"),
    ] {
        let refused = server
            .api(&admin_token)
            .generate_credential(&agent, json!({"type": "private_key_jwt", "jwks": jwks}))
            .await;
        assert_eq!(refused.status, 400, "{jwks}: {}", refused.text);
        assert_eq!(refused.code(), "VALIDATION_ERROR");
        let fields: Vec<&str> = refused.body["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.iter().any(|f| f.starts_with(field)),
            "{field} in {fields:?}"
        );
    }
    for body in [
        json!({"type": "private_key_jwt"}),
        json!({"type": "client_secret", "jwks": AgentKey::new(SigningAlgorithm::ES256).jwks()}),
        json!({"type": "password"}),
    ] {
        let refused = server
            .api(&admin_token)
            .generate_credential(&agent, body.clone())
            .await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.text);
    }
    let listed = server.api(&admin_token).list_credentials(&agent, "").await;
    assert_eq!(listed.body["total"], 0, "{}", listed.text);
}

async fn rotating_a_key_credential_replaces_its_keys_at_once(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let old = AgentKey::new(SigningAlgorithm::ES256);
    let (admin_token, agent, credential, client_id) =
        agent_with_key(&server, "rotation", &old, &["agents:read"]).await;
    let new = AgentKey::new(SigningAlgorithm::EdDSA);
    let path = format!("/api/v1/agents/{agent}/credentials/{credential}/rotate");
    let without_keys = server
        .call(Method::POST, &path, Some(&admin_token), Some(json!({})))
        .await;
    assert_eq!(without_keys.status, 400, "{}", without_keys.text);
    let rotated = server
        .call(
            Method::POST,
            &path,
            Some(&admin_token),
            Some(json!({"jwks": new.jwks()})),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!(rotated.str("credentialId"), credential);
    assert_eq!(rotated.str("clientId"), client_id);
    assert_eq!(rotated.body["keyIds"], json!([new.kid()]));

    let by_old = token_with_assertion(
        &server,
        &old.sign(&assertion_claims(&server, &client_id)),
        &[],
    )
    .await;
    assert_eq!(
        by_old.status, 401,
        "the old key stops at once: {}",
        by_old.text
    );
    let by_new = token_with_assertion(
        &server,
        &new.sign(&assertion_claims(&server, &client_id)),
        &[],
    )
    .await;
    assert_eq!(by_new.status, 200, "{}", by_new.text);

    // A secret credential is not rotated into keys.
    let (secret_credential, _, _) = server.create_credential(&admin_token, &agent).await;
    let into_keys = server
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/credentials/{secret_credential}/rotate"),
            Some(&admin_token),
            Some(json!({"jwks": new.jwks()})),
        )
        .await;
    assert_eq!(into_keys.status, 400, "{}", into_keys.text);
}

/// A token request with `assertion`, sent through `http` (another source address).
async fn token_with_assertion_via(
    server: &TestServer,
    http: &reqwest::Client,
    assertion: &str,
) -> Response {
    server
        .send(http.post(format!("{}/api/v1/token", server.base)).form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ]))
        .await
}

async fn whoever_knows_the_client_id_cannot_lock_out_a_client_with_keys(store: Arc<dyn Store>) {
    let server = TestServer::start_with(store, |c| {
        c.throttle.client_failures = 3;
        c.throttle.client_failures_per_minute = 5;
    })
    .await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let (admin_token, _, _, client_id) =
        agent_with_key(&server, "lockout", &key, &["agents:read"]).await;
    // The attacker names the client in assertions it signs with a key of its own, from three
    // addresses, until the client is locked at each of them and everywhere for the minute.
    let attacker_key = AgentKey::new(SigningAlgorithm::ES256);
    let mut refusals = Vec::new();
    for host in [61, 62, 63] {
        let http = from_host(host);
        for _ in 0..4 {
            let forged = attacker_key.sign(&assertion_claims(&server, &client_id));
            refusals.push(
                token_with_assertion_via(&server, &http, &forged)
                    .await
                    .status,
            );
        }
    }
    assert!(
        refusals.contains(&429),
        "the lockouts were reached: {refusals:?}"
    );
    // The client itself still gets tokens, at a locked address and at a fresh one.
    for host in [61, 64] {
        let genuine = key.sign(&assertion_claims(&server, &client_id));
        let granted = token_with_assertion_via(&server, &from_host(host), &genuine).await;
        assert_eq!(granted.status, 200, "from 127.0.0.{host}: {}", granted.text);
    }
    // And the attacker is still refused.
    let forged = attacker_key.sign(&assertion_claims(&server, &client_id));
    let refused = token_with_assertion_via(&server, &from_host(61), &forged).await;
    assert!(
        [401, 429].contains(&refused.status),
        "{}: {}",
        refused.status,
        refused.text
    );
    let issued = server
        .audit_events(&admin_token, "&action=token.issued")
        .await;
    assert_eq!(issued.len(), 3, "the admin's token and the client's two");
}

async fn a_deployment_may_accept_longer_lived_assertions(store: Arc<dyn Store>) {
    // Authlib's PrivateKeyJWT signs assertions valid for an hour.
    let server = TestServer::start_with(store, |config| {
        config.client_assertion_max_lifetime_seconds = 3600;
    })
    .await;
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let (_, _, _, client_id) = agent_with_key(&server, "hour", &key, &["agents:read"]).await;
    let now = server.clock_now().timestamp();
    let mut claims = assertion_claims(&server, &client_id);
    claims["exp"] = json!(now + 3600);
    let granted = token_with_assertion(&server, &key.sign(&claims), &[]).await;
    assert_eq!(granted.status, 200, "{}", granted.text);
    claims["exp"] = json!(now + 3600 + 31);
    claims["jti"] = json!(Uuid::new_v4().to_string());
    let beyond = token_with_assertion(&server, &key.sign(&claims), &[]).await;
    assert_eq!(beyond.status, 401, "{}", beyond.text);
}

agentidp_testkit::per_store!(
    whoever_knows_the_client_id_cannot_lock_out_a_client_with_keys,
    a_deployment_may_accept_longer_lived_assertions,
    an_agent_with_only_public_keys_gets_and_uses_tokens,
    a_replayed_assertion_is_refused_and_audited,
    assertions_that_break_a_rule_issue_nothing,
    a_secret_for_a_key_credential_or_an_assertion_for_a_secret_one_is_refused,
    private_or_weak_keys_are_refused_and_nothing_is_created,
    rotating_a_key_credential_replaces_its_keys_at_once,
);
