//! Tokens bound to a resource (RFC 8707): the `resource` parameter of the token endpoint gives a
//! token whose `aud` is that registered resource and whose scopes are the ones it shares with
//! the agent; an unregistered, foreign, malformed or repeated resource is `invalid_target`.

use std::sync::Arc;

use agentidp_core::store::Store;
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Response, TestServer};

const MCP: &str = "https://mcp.example.com/mcp";

/// A token request by client_secret_basic with `params` (each may repeat).
async fn token_request(
    server: &TestServer,
    client_id: &str,
    secret: &str,
    params: &[(&str, &str)],
) -> Response {
    let mut form = vec![("grant_type", "client_credentials")];
    form.extend_from_slice(params);
    server
        .send(
            server
                .request(Method::POST, "/api/v1/token")
                .basic_auth(client_id, Some(secret))
                .form(&form),
        )
        .await
}

/// The claims of a JWT, unverified: what a test needs to read `aud`.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// An organization with the MCP resource registered (`resource_scopes`) and an agent holding
/// `agent_scopes`: the admin's token, and the agent's client id and secret.
async fn organization_with_resource(
    server: &TestServer,
    name: &str,
    resource_scopes: &[&str],
    agent_scopes: &[&str],
) -> (String, String, String) {
    let admin = server.new_org(name).await;
    let admin_token = server.admin_token(&admin).await;
    server
        .create_resource(&admin_token, MCP, resource_scopes)
        .await;
    let agent = server
        .create_agent(&admin_token, "caller", agent_scopes)
        .await;
    let (_, client_id, secret) = server.create_credential(&admin_token, &agent).await;
    (admin_token, client_id, secret)
}

async fn a_token_for_a_resource_is_audienced_to_it_with_the_scopes_it_shares(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let (admin_token, client_id, secret) = organization_with_resource(
        &server,
        "bound",
        &["tools:call", "tools:list"],
        &["tools:call", "data:read", "agents:read"],
    )
    .await;

    let granted = token_request(&server, &client_id, &secret, &[("resource", MCP)]).await;
    assert_eq!(granted.status, 200, "{}", granted.text);
    assert_eq!(
        granted.body["scope"], "tools:call",
        "only what the resource has"
    );
    let token = granted.str("access_token");
    assert_eq!(claims(&token)["aud"], MCP);
    assert_eq!(claims(&token)["scope"], "tools:call");
    let org_issuer = format!(
        "{}/orgs/{}",
        server.base,
        claims(&admin_token)["org_id"].as_str().unwrap()
    );
    assert_eq!(claims(&token)["iss"], json!(org_issuer));

    // Requested scopes are narrowed the same way; scheme and host case do not matter.
    let narrowed = token_request(
        &server,
        &client_id,
        &secret,
        &[
            ("resource", "HTTPS://MCP.Example.COM/mcp"),
            ("scope", "tools:call data:read"),
        ],
    )
    .await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.text);
    assert_eq!(narrowed.body["scope"], "tools:call");
    assert_eq!(claims(&narrowed.str("access_token"))["aud"], MCP);

    let introspected = server.introspect(&admin_token, &token).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected["aud"], MCP);
    assert_eq!(introspected["iss"], json!(org_issuer));
    assert_eq!(introspected["scope"], "tools:call");

    let issued = server
        .audit_events(&admin_token, "&action=token.issued")
        .await;
    let with_resource: Vec<&Value> = issued
        .iter()
        .filter(|e| e["details"]["resource"] == MCP)
        .collect();
    assert_eq!(with_resource.len(), 2, "{issued:?}");
    // Without `resource`, a token is the management API's, as before.
    let plain = token_request(&server, &client_id, &secret, &[]).await;
    assert_eq!(
        claims(&plain.str("access_token"))["aud"],
        json!(server.base)
    );
    assert_eq!(
        claims(&plain.str("access_token"))["iss"],
        json!(server.base),
        "the management API's tokens are the platform issuer's"
    );
    assert_eq!(plain.body["scope"], "agents:read data:read tools:call");
}

/// What an MCP server does with a token (FastMCP's `JWTVerifier`, jose's `jwtVerify`): the
/// signature against the published JWKS, then exactly the `iss` and `aud` it was configured
/// with. Nothing else: a resource server cannot be relied on to check `org_id`.
async fn resource_server_accepts(
    server: &TestServer,
    token: &str,
    issuer: &str,
    audience: &str,
) -> bool {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(
        server
            .send(server.request(Method::GET, "/.well-known/jwks.json"))
            .await
            .body,
    )
    .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .is_ok()
}

/// The issuer an organization's resource servers are configured with, as its operator finds it:
/// from the organization's RFC 8414 metadata.
async fn organization_issuer(server: &TestServer, org_id: &str) -> String {
    let metadata = server
        .send(server.request(
            Method::GET,
            &format!("/.well-known/oauth-authorization-server/orgs/{org_id}"),
        ))
        .await;
    assert_eq!(metadata.status, 200, "{}", metadata.text);
    metadata.str("issuer")
}

async fn another_organization_registering_the_same_identifier_gets_tokens_the_resource_refuses(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let (victim_admin_token, victim_id, victim_secret) =
        organization_with_resource(&server, "victim", &["tools:call"], &["tools:call"]).await;
    // Identifiers are unique per organization only: the attacker registers the victim's URL.
    let (_, attacker_id, attacker_secret) =
        organization_with_resource(&server, "attacker", &["tools:call"], &["tools:call"]).await;
    let victim_org = claims(&victim_admin_token)["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim_issuer = organization_issuer(&server, &victim_org).await;

    let victims = token_request(&server, &victim_id, &victim_secret, &[("resource", MCP)]).await;
    assert_eq!(victims.status, 200, "{}", victims.text);
    assert!(
        resource_server_accepts(&server, &victims.str("access_token"), &victim_issuer, MCP).await,
        "the victim's own agent is accepted"
    );
    let attackers = token_request(
        &server,
        &attacker_id,
        &attacker_secret,
        &[("resource", MCP)],
    )
    .await;
    assert_eq!(attackers.status, 200, "{}", attackers.text);
    let forged = attackers.str("access_token");
    assert_eq!(claims(&forged)["aud"], MCP, "the same audience");
    assert!(
        !resource_server_accepts(&server, &forged, &victim_issuer, MCP).await,
        "another organization's token for the same identifier is refused: {:?}",
        claims(&forged)
    );
    // Nor is the platform's own issuer one a resource server can be configured with.
    assert!(!resource_server_accepts(&server, &forged, &server.base, MCP).await);
    assert!(
        !resource_server_accepts(&server, &victims.str("access_token"), &server.base, MCP).await
    );
}

async fn the_management_api_refuses_a_token_for_a_resource(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, client_id, secret) =
        organization_with_resource(&server, "audience", &[], &["agents:read"]).await;
    let for_mcp = token_request(&server, &client_id, &secret, &[("resource", MCP)]).await;
    assert_eq!(for_mcp.status, 200, "{}", for_mcp.text);
    assert_eq!(
        for_mcp.body["scope"], "",
        "a resource without scopes takes audience-only tokens"
    );
    let refused = server
        .api(&for_mcp.str("access_token"))
        .list_agents("")
        .await;
    assert_eq!(
        refused.status, 401,
        "not this API's audience: {}",
        refused.text
    );
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|c| c.contains("invalid_token")),
        "{:?}",
        refused.headers
    );
    // The same agent's token for this API works.
    let plain = token_request(&server, &client_id, &secret, &[]).await;
    assert_eq!(
        server
            .api(&plain.str("access_token"))
            .list_agents("")
            .await
            .status,
        200
    );
}

async fn an_unregistered_or_foreign_resource_is_an_invalid_target_and_issues_nothing(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let (victim_admin_token, _, _) =
        organization_with_resource(&server, "victim", &["tools:call"], &["tools:call"]).await;
    let attacker = server.new_org("attacker").await;
    let attacker_token = server.admin_token(&attacker).await;
    let agent = server
        .create_agent(&attacker_token, "thief", &["tools:call"])
        .await;
    let (_, client_id, secret) = server.create_credential(&attacker_token, &agent).await;
    let victim_events_before = server.audit_events(&victim_admin_token, "").await.len();

    for resource in [MCP, "https://never-registered.example.com/"] {
        let refused = token_request(&server, &client_id, &secret, &[("resource", resource)]).await;
        assert_eq!(refused.status, 400, "{resource}: {}", refused.text);
        assert_eq!(refused.oauth_error(), "invalid_target", "{resource}");
        assert!(refused.body.get("access_token").is_none());
    }
    let denied = server
        .audit_events(&attacker_token, "&action=token.denied")
        .await;
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(
        denied
            .iter()
            .all(|e| e["details"]["reason"] == "resource_not_registered")
    );
    assert_eq!(
        server
            .audit_events(&attacker_token, "&action=token.issued")
            .await
            .len(),
        1,
        "only the admin's own token"
    );
    assert_eq!(
        server.audit_events(&victim_admin_token, "").await.len(),
        victim_events_before,
        "nothing is filed with the organization whose resource it named"
    );
}

async fn malformed_or_repeated_resources_are_invalid_targets(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (admin_token, client_id, secret) =
        organization_with_resource(&server, "malformed", &["tools:call"], &["tools:call"]).await;
    let fragment = format!("{MCP}#part");
    for params in [
        vec![("resource", "/mcp")],
        vec![("resource", fragment.as_str())],
        vec![("resource", "http://mcp.example.com/mcp")],
        vec![("resource", "urn:example:mcp")],
        vec![("resource", "")],
        vec![
            ("resource", MCP),
            ("resource", "https://other.example.com/"),
        ],
        vec![("resource", MCP), ("resource", MCP)],
    ] {
        let refused = token_request(&server, &client_id, &secret, &params).await;
        assert_eq!(refused.status, 400, "{params:?}: {}", refused.text);
        assert_eq!(refused.oauth_error(), "invalid_target", "{params:?}");
    }
    // A resource the agent shares no scope with is refused too, as a scope it may not have.
    let other = server
        .create_agent(&admin_token, "unrelated", &["data:read"])
        .await;
    let (_, other_id, other_secret) = server.create_credential(&admin_token, &other).await;
    let no_shared_scope =
        token_request(&server, &other_id, &other_secret, &[("resource", MCP)]).await;
    assert_eq!(no_shared_scope.status, 400, "{}", no_shared_scope.text);
    assert_eq!(no_shared_scope.oauth_error(), "invalid_scope");
    assert_eq!(
        server
            .audit_events(&admin_token, "&action=token.issued")
            .await
            .len(),
        1,
        "only the admin's own token"
    );
}

async fn a_resource_token_is_revoked_and_introspected_only_by_its_organization(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let (admin_token, client_id, secret) =
        organization_with_resource(&server, "revoking", &["tools:call"], &["tools:call"]).await;
    let token = token_request(&server, &client_id, &secret, &[("resource", MCP)])
        .await
        .str("access_token");
    let stranger = server.new_org("stranger").await;
    let stranger_token = server.admin_token(&stranger).await;
    assert_eq!(
        server.introspect(&stranger_token, &token).await,
        json!({"active": false})
    );
    assert_eq!(
        server
            .api(&stranger_token)
            .revoke_token(&token)
            .await
            .status,
        200
    );
    assert_eq!(
        server.introspect(&admin_token, &token).await["active"],
        true
    );

    // A resource token is no credential at these endpoints: they take this API's tokens.
    let as_bearer = server.api(&token);
    assert_eq!(as_bearer.introspect(&token).await.status, 401);
    assert_eq!(as_bearer.revoke_token(&token).await.status, 401);
    assert_eq!(
        server.introspect(&admin_token, &token).await["active"],
        true
    );
    // `resource` means nothing at introspection: repeated, it is only a repeated parameter.
    let repeated = server
        .send(
            server
                .request(Method::POST, "/api/v1/token/introspect")
                .basic_auth(&client_id, Some(&secret))
                .form(&[
                    ("token", token.as_str()),
                    ("resource", MCP),
                    ("resource", MCP),
                ]),
        )
        .await;
    assert_eq!(repeated.status, 400, "{}", repeated.text);
    assert_eq!(repeated.oauth_error(), "invalid_request");

    let revoked = server
        .api_as_client(&client_id, &secret)
        .revoke_token(&token)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(
        server.introspect(&admin_token, &token).await,
        json!({"active": false})
    );
}

async fn this_apis_own_audience_cannot_be_registered_as_a_resource(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("own-audience").await;
    let admin_token = server.admin_token(&admin).await;
    let api = server.api(&admin_token);
    // In another case: identifiers are compared normalised.
    let own = server.base.replacen("http", "HTTP", 1);
    let refused = api
        .create_resource(json!({"identifier": own, "name": "this API", "scopes": ["x:y"]}))
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.body["details"][0]["field"], "identifier");
    let registered = server
        .create_resource(&admin_token, &format!("{}/mcp", server.base), &["x:y"])
        .await;
    let moved = api
        .update_resource(&registered, json!({"identifier": server.base}))
        .await;
    assert_eq!(moved.status, 400, "{}", moved.text);
    assert_eq!(
        api.list_resources("").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

agentidp_testkit::per_store!(
    another_organization_registering_the_same_identifier_gets_tokens_the_resource_refuses,
    this_apis_own_audience_cannot_be_registered_as_a_resource,
    a_token_for_a_resource_is_audienced_to_it_with_the_scopes_it_shares,
    the_management_api_refuses_a_token_for_a_resource,
    an_unregistered_or_foreign_resource_is_an_invalid_target_and_issues_nothing,
    malformed_or_repeated_resources_are_invalid_targets,
    a_resource_token_is_revoked_and_introspected_only_by_its_organization,
);
