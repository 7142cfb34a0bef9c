//! The OAuth endpoints as the RFCs describe them: token (6749 §4.4), introspection (7662),
//! revocation (7009), JWKS (7517) and metadata (8414), with RFC 9068 access tokens.

use futures_util::future::join_all;
use std::sync::Arc;

use agentidp_core::store::Store;
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestServer;

async fn setup(store: Arc<dyn Store>) -> (TestServer, String, String, String, String) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server
        .create_agent(&token, "bot", &["data:read", "data:write"])
        .await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    (server, token, agent, client_id, secret)
}

async fn both_client_authentication_methods_get_a_token_with_the_documented_shape(
    store: Arc<dyn Store>,
) {
    let (server, _, agent, client_id, secret) = setup(store).await;
    let basic = server.token_request(&client_id, &secret, None).await;
    assert_eq!(basic.status, 200, "{}", basic.text);
    assert_eq!(basic.header("cache-control"), Some("no-store"));
    assert_eq!(basic.header("pragma"), Some("no-cache"));
    assert_eq!(basic.body["token_type"], "Bearer");
    assert_eq!(basic.body["expires_in"], 3600);
    assert_eq!(basic.body["scope"], "data:read data:write");

    let post = server
        .send(server.request(Method::POST, "/api/v1/token").form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", "data:read"),
        ]))
        .await;
    assert_eq!(post.status, 200, "{}", post.text);
    assert_eq!(post.body["scope"], "data:read");

    let json_body = server
        .send(server.request(Method::POST, "/api/v1/token").json(&json!({
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret
        })))
        .await;
    assert_eq!(json_body.status, 200, "{}", json_body.text);

    // The token is an RFC 9068 JWT that verifies offline with the published JWKS.
    let access_token = basic.str("access_token");
    let header = jsonwebtoken::decode_header(&access_token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwks: jsonwebtoken::jwk::JwkSet = server
        .send(server.request(Method::GET, "/.well-known/jwks.json"))
        .await
        .body
        .as_object()
        .map(|o| serde_json::from_value(Value::Object(o.clone())).unwrap())
        .unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[&server.base]);
    validation.set_audience(&[&server.base]);
    let claims = jsonwebtoken::decode::<Value>(
        &access_token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], json!(agent));
    assert_eq!(claims["client_id"], json!(client_id));
    for claim in ["iss", "aud", "exp", "iat", "jti", "scope", "org_id"] {
        assert!(!claims[claim].is_null(), "{claim}");
    }
}

async fn failed_client_authentication_never_says_why(store: Arc<dyn Store>) {
    let (server, _, _, client_id, secret) = setup(store).await;
    let wrong_secret = server
        .token_request(&client_id, "sk_live_00000000000000000000000000000000", None)
        .await;
    let unknown_client = server
        .token_request(&uuid::Uuid::new_v4().to_string(), &secret, None)
        .await;
    let not_a_uuid = server.token_request("nobody", &secret, None).await;
    for response in [&wrong_secret, &unknown_client, &not_a_uuid] {
        assert_eq!(response.status, 401);
        assert_eq!(response.oauth_error(), "invalid_client");
        assert!(
            response
                .header("www-authenticate")
                .unwrap()
                .starts_with("Basic")
        );
        assert_eq!(response.header("cache-control"), Some("no-store"));
        assert_eq!(
            response.body["error_description"],
            wrong_secret.body["error_description"]
        );
    }
    let post = server
        .send(server.request(Method::POST, "/api/v1/token").form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", "wrong"),
        ]))
        .await;
    assert_eq!((post.status, post.oauth_error()), (401, "invalid_client"));
    assert!(post.header("www-authenticate").is_none());
    let too_long = server
        .token_request(&client_id, &format!("{secret}{}", "x".repeat(80)), None)
        .await;
    assert_eq!(
        too_long.status, 401,
        "a secret beyond bcrypt's 72 bytes is refused, not truncated"
    );
}

async fn malformed_token_requests_get_rfc_6749_errors(store: Arc<dyn Store>) {
    let (server, _, _, client_id, secret) = setup(store).await;
    let basic = |form: &[(&str, &str)]| {
        server
            .request(Method::POST, "/api/v1/token")
            .basic_auth(&client_id, Some(&secret))
            .form(form)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (basic(&[]), 400, "invalid_request"),
        (
            basic(&[("grant_type", "password")]),
            400,
            "unsupported_grant_type",
        ),
        (
            basic(&[
                ("grant_type", "client_credentials"),
                ("scope", "admin:everything"),
            ]),
            400,
            "invalid_scope",
        ),
        (
            basic(&[
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ]),
            400,
            "invalid_request",
        ),
        (
            server
                .request(Method::POST, "/api/v1/token")
                .basic_auth(&client_id, Some(&secret))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", secret.as_str()),
                ]),
            400,
            "invalid_request",
        ),
        (
            server
                .request(Method::POST, "/api/v1/token")
                .basic_auth(&client_id, Some(&secret))
                .body("grant_type=client_credentials"),
            415,
            "invalid_request",
        ),
        (
            server
                .request(Method::POST, "/api/v1/token")
                .form(&[("grant_type", "client_credentials")]),
            401,
            "invalid_client",
        ),
        (
            server
                .request(Method::POST, "/api/v1/token")
                .header("content-type", "application/json")
                .body("[1]"),
            400,
            "invalid_request",
        ),
    ];
    for (request, status, error) in cases {
        let response = server.send(request).await;
        assert_eq!(
            (response.status, response.oauth_error()),
            (status, error),
            "{}",
            response.text
        );
        assert_eq!(response.header("cache-control"), Some("no-store"));
        assert!(response.body["error_description"].is_string());
    }
}

async fn introspection_reports_active_tokens_and_only_active_false_otherwise(
    store: Arc<dyn Store>,
) {
    let (server, admin_token, agent, client_id, secret) = setup(store).await;
    let agent_token = server.token(&client_id, &secret).await;
    let by_bearer = server.introspect(&admin_token, &agent_token).await;
    assert_eq!(by_bearer["active"], true);
    assert_eq!(by_bearer["sub"], json!(agent));
    assert_eq!(by_bearer["client_id"], json!(client_id));
    assert_eq!(by_bearer["token_type"], "Bearer");
    for claim in ["scope", "exp", "iat", "iss", "jti"] {
        assert!(!by_bearer[claim].is_null(), "{claim}");
    }
    let by_client = server
        .api_as_client(&client_id, &secret)
        .introspect(&agent_token)
        .await;
    assert_eq!(by_client.body["active"], true);

    for garbage in [
        "x",
        "a.b.c",
        &agent_token[..agent_token.len() - 4],
        &format!("{agent_token}x"),
    ] {
        assert_eq!(
            server.introspect(&admin_token, garbage).await,
            json!({"active": false})
        );
    }
    server.clock.advance(chrono::Duration::seconds(3601));
    let fresh_admin = server.token(&client_id, &secret).await;
    assert_eq!(
        server.introspect(&fresh_admin, &agent_token).await,
        json!({"active": false}),
        "expired"
    );

    let unauthenticated = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/introspect")
                .form(&[("token", agent_token.as_str())]),
        )
        .await;
    assert_eq!(
        (unauthenticated.status, unauthenticated.oauth_error()),
        (401, "invalid_client")
    );
    let missing_token = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/introspect")
                .bearer_auth(&fresh_admin)
                .form(&[("x", "y")]),
        )
        .await;
    assert_eq!(
        (missing_token.status, missing_token.oauth_error()),
        (400, "invalid_request")
    );
}

async fn introspection_reports_only_the_scopes_the_agent_still_holds(store: Arc<dyn Store>) {
    let (server, admin_token, agent, client_id, secret) = setup(store).await;
    let agent_token = server.token(&client_id, &secret).await;
    let set_scopes = |scopes: Value| {
        server
            .api(&admin_token)
            .update_agent(&agent, json!({ "scopes": scopes }))
    };
    let by_client = || {
        server
            .api_as_client(&client_id, &secret)
            .introspect(&agent_token)
    };
    assert_eq!(
        server.introspect(&admin_token, &agent_token).await["scope"],
        "data:read data:write"
    );

    assert_eq!(set_scopes(json!(["data:read"])).await.status, 200);
    assert_eq!(
        server.introspect(&admin_token, &agent_token).await["scope"],
        "data:read",
        "a resource server stops honouring a removed scope at once"
    );
    let answer = by_client().await;
    assert_eq!(
        (answer.body["active"].clone(), answer.body["scope"].clone()),
        (json!(true), json!("data:read")),
        "{}",
        answer.text
    );

    // A scope granted after issue is not in the token; one granted again is, as issued.
    assert_eq!(
        set_scopes(json!(["data:write", "data:admin"])).await.status,
        200
    );
    assert_eq!(
        server.introspect(&admin_token, &agent_token).await["scope"],
        "data:write"
    );
}

async fn revocation_takes_effect_at_once_and_answers_200_for_unknown_tokens(store: Arc<dyn Store>) {
    let (server, admin_token, agent, client_id, secret) = setup(store).await;
    let agent_token = server.token(&client_id, &secret).await;
    let as_admin = server.api(&admin_token);
    // A token revoked by the client it was issued to.
    let own = server
        .api_as_client(&client_id, &secret)
        .revoke_token(&agent_token)
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(
        server.introspect(&admin_token, &agent_token).await,
        json!({"active": false})
    );

    // A token revoked by an admin bearer of the same organization.
    let second = server.token(&client_id, &secret).await;
    assert_eq!(as_admin.revoke_token(&second).await.status, 200);
    assert_eq!(
        server.introspect(&admin_token, &second).await,
        json!({"active": false})
    );

    // Unknown or garbage tokens: 200 and nothing changes.
    assert_eq!(as_admin.revoke_token("not-a-token").await.status, 200);

    // A token without agents:write cannot revoke others' tokens.
    let reader = server
        .create_agent(&admin_token, "reader", &["agents:read"])
        .await;
    let (_, reader_client, reader_secret) = server.create_credential(&admin_token, &reader).await;
    let reader_token = server.token(&reader_client, &reader_secret).await;
    let third = server.token(&client_id, &secret).await;
    let refused = server.api(&reader_token).revoke_token(&third).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        server.introspect(&admin_token, &third).await["active"],
        true
    );

    // Revoked tokens cannot call the management API either.
    assert_eq!(as_admin.revoke_token(&admin_token).await.status, 200);
    let after = as_admin.get_agent(&agent).await;
    assert_eq!(after.status, 401);
}

async fn discovery_metadata_and_jwks_describe_the_server(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let metadata = server
        .send(server.request(Method::GET, "/.well-known/oauth-authorization-server"))
        .await;
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.body["issuer"], json!(server.base));
    assert_eq!(
        metadata.body["token_endpoint"],
        json!(format!("{}/api/v1/token", server.base))
    );
    assert_eq!(
        metadata.body["jwks_uri"],
        json!(format!("{}/.well-known/jwks.json", server.base))
    );
    assert_eq!(
        metadata.body["grant_types_supported"],
        json!([
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    assert_eq!(
        metadata.body["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ])
    );
    assert_eq!(
        metadata.body["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS256", "PS256", "ES256", "EdDSA", "Ed25519"])
    );
    let jwks = server
        .send(server.request(Method::GET, "/.well-known/jwks.json"))
        .await;
    let key = &jwks.body["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["alg"].as_str(),
            key["use"].as_str()
        ),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    assert!(key.get("d").is_none(), "no private part");
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key["n"].as_str().unwrap())
        .unwrap();
    assert_eq!(n.len(), 256, "a 2048-bit modulus");
}

async fn simultaneous_first_requests_from_one_client_share_one_bcrypt_verification(
    store: Arc<dyn Store>,
) {
    // At cost 12 a verification takes about 200 ms, long enough for every
    // request sent together to arrive while the first one's bcrypt still runs.
    let server = TestServer::start_with(store, |c| c.bcrypt_cost = 12).await;
    let admin = server.new_org("acme").await;
    let token = server.admin_token(&admin).await;
    let agent = server.create_agent(&token, "bot", &[]).await;
    let (_, client_id, secret) = server.create_credential(&token, &agent).await;
    let before = server.idp.hasher().verifications();
    let wrong =
        join_all((0..8).map(|_| server.token_request(&client_id, "sk_live_wrong", None))).await;
    assert!(wrong.iter().all(|r| r.status == 401));
    let right = join_all((0..16).map(|_| server.token_request(&client_id, &secret, None))).await;
    assert!(right.iter().all(|r| r.status == 200));
    assert_eq!(
        server.idp.hasher().verifications() - before,
        2,
        "one verification for the eight wrong secrets sent together, one for the sixteen right"
    );
    assert_eq!(
        server.idp.hasher().in_flight.running(),
        0,
        "nothing is left behind"
    );
}

async fn a_warm_instance_runs_bcrypt_once_per_client_and_rotation_or_revocation_defeat_the_cache(
    store: Arc<dyn Store>,
) {
    let (server, admin_token, agent, client_id, secret) = setup(store).await;
    let before = server.idp.hasher().verifications();
    for _ in 0..20 {
        assert_eq!(
            server.token_request(&client_id, &secret, None).await.status,
            200
        );
    }
    assert_eq!(
        server.idp.hasher().verifications() - before,
        1,
        "one bcrypt verification for twenty requests"
    );

    let as_admin = server.api(&admin_token);
    let credential_id = as_admin.list_credentials(&agent, "").await.body["data"][0]["credentialId"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = as_admin.rotate(&agent, &credential_id).await;
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        401,
        "the cached old secret no longer works"
    );
    let new_secret = rotated.str("clientSecret");
    assert_eq!(
        server
            .token_request(&client_id, &new_secret, None)
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .token_request(&client_id, &new_secret, None)
            .await
            .status,
        200
    );

    let revoked = as_admin.revoke_credential(&agent, &credential_id).await;
    assert_eq!(revoked.status, 204);
    assert_eq!(
        server
            .token_request(&client_id, &new_secret, None)
            .await
            .status,
        401,
        "a cached secret of a revoked credential is refused"
    );
}

agentidp_testkit::per_store!(
    a_warm_instance_runs_bcrypt_once_per_client_and_rotation_or_revocation_defeat_the_cache,
    simultaneous_first_requests_from_one_client_share_one_bcrypt_verification,
    both_client_authentication_methods_get_a_token_with_the_documented_shape,
    failed_client_authentication_never_says_why,
    malformed_token_requests_get_rfc_6749_errors,
    introspection_reports_active_tokens_and_only_active_false_otherwise,
    introspection_reports_only_the_scopes_the_agent_still_holds,
    revocation_takes_effect_at_once_and_answers_200_for_unknown_tokens,
    discovery_metadata_and_jwks_describe_the_server,
);
