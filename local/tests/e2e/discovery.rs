//! Discovery at both well-known paths, and the authorization endpoint the metadata names: it
//! supports no response type, so it refuses every request in its body and never redirects.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Response, TestServer};

async fn get(server: &TestServer, path: &str) -> Response {
    server.send(server.request(Method::GET, path)).await
}

async fn the_openid_configuration_is_the_authorization_server_metadata(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let oauth = get(&server, "/.well-known/oauth-authorization-server").await;
    let openid = get(&server, "/.well-known/openid-configuration").await;
    assert_eq!((oauth.status, openid.status), (200, 200));
    assert_eq!(openid.body, oauth.body, "one document at both paths");
    assert_eq!(openid.body["issuer"], json!(server.base));
    assert_eq!(
        openid.body["authorization_endpoint"],
        json!(format!("{}/api/v1/authorize", server.base))
    );
    assert_eq!(openid.body["response_types_supported"], json!([]));
    let members: Vec<&String> = openid.body.as_object().unwrap().keys().collect();
    assert!(
        !members
            .iter()
            .any(|m| m.starts_with("id_token") || m.as_str() == "subject_types_supported"),
        "no OpenID Provider claims for ID tokens it never issues: {members:?}"
    );
    assert_eq!(
        openid.headers["cache-control"], oauth.headers["cache-control"],
        "cached like the RFC 8414 document"
    );
}

async fn each_organization_has_its_own_issuer_discoverable_at_every_path_derived_from_it(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("discovered").await;
    let platform = get(&server, "/.well-known/oauth-authorization-server").await;
    let issuer = format!("{}/orgs/{}", server.base, admin.org_id);
    for path in [
        format!(
            "/.well-known/oauth-authorization-server/orgs/{}",
            admin.org_id
        ),
        format!("/.well-known/openid-configuration/orgs/{}", admin.org_id),
        format!("/orgs/{}/.well-known/openid-configuration", admin.org_id),
    ] {
        let document = get(&server, &path).await;
        assert_eq!(document.status, 200, "{path}: {}", document.text);
        assert_eq!(document.body["issuer"], json!(issuer), "{path}");
        // The endpoints and keys are the platform's; the management scopes are not this
        // issuer's to grant.
        let mut expected = platform.body.clone();
        expected["issuer"] = json!(issuer);
        expected.as_object_mut().unwrap().remove("scopes_supported");
        assert_eq!(document.body, expected, "{path}");
        assert_eq!(
            document.headers["cache-control"], platform.headers["cache-control"],
            "{path}"
        );
    }
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_owned()] {
        for path in [
            format!("/.well-known/oauth-authorization-server/orgs/{unknown}"),
            format!("/.well-known/openid-configuration/orgs/{unknown}"),
            format!("/orgs/{unknown}/.well-known/openid-configuration"),
        ] {
            let missing = get(&server, &path).await;
            assert_eq!(missing.status, 404, "{path}: {}", missing.text);
            assert_eq!(missing.code(), "NOT_FOUND", "{path}");
        }
    }
}

/// A request to the authorization endpoint, with redirects never followed: a redirect would be
/// the failure.
async fn authorize(
    server: &TestServer,
    method: Method,
    query: &str,
    form: Option<&str>,
) -> Response {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request =
        no_redirects.request(method, format!("{}/api/v1/authorize?{query}", server.base));
    if let Some(form) = form {
        request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
    }
    server.send(request).await
}

fn assert_refused(response: &Response, error: &str) {
    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(response.body["error"], error, "{}", response.text);
    assert!(
        response.headers.get("location").is_none(),
        "never a redirect"
    );
    assert_eq!(response.headers["cache-control"], "no-store");
}

async fn the_authorization_endpoint_refuses_in_its_body_and_never_redirects(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("authorize").await;
    let attack = "response_type=code&redirect_uri=https%3A%2F%2Fattacker.example%2Fcb&state=%3Cscript%3E&client_id=";
    let with_real_client = authorize(
        &server,
        Method::GET,
        &format!("{attack}{}", admin.client_id),
        None,
    )
    .await;
    assert_refused(&with_real_client, "unsupported_response_type");
    for echoed in ["attacker.example", "<script>", &admin.client_id] {
        assert!(
            !with_real_client.text.contains(echoed),
            "{echoed} echoed: {}",
            with_real_client.text
        );
    }
    let with_unknown_client = authorize(
        &server,
        Method::GET,
        &format!("{attack}{}", uuid::Uuid::new_v4()),
        None,
    )
    .await;
    assert_eq!(
        with_unknown_client.body, with_real_client.body,
        "the answer does not tell whether a client exists"
    );

    assert_refused(
        &authorize(&server, Method::GET, "response_type=token", None).await,
        "unsupported_response_type",
    );
    assert_refused(
        &authorize(&server, Method::GET, "client_id=x", None).await,
        "invalid_request",
    );
    assert_refused(
        &authorize(
            &server,
            Method::GET,
            "response_type=code&response_type=token",
            None,
        )
        .await,
        "invalid_request",
    );
    assert_refused(
        &authorize(
            &server,
            Method::POST,
            "",
            Some("response_type=code&client_id=x"),
        )
        .await,
        "unsupported_response_type",
    );
    assert_refused(
        &authorize(&server, Method::POST, "", Some("client_id=x")).await,
        "invalid_request",
    );
    let plain = server
        .send(
            server
                .request(Method::POST, "/api/v1/authorize")
                .header("content-type", "text/plain")
                .body("response_type=code"),
        )
        .await;
    assert_eq!(plain.status, 415, "{}", plain.text);
    assert_eq!(plain.body["error"], "invalid_request");

    // Nothing it refuses is a token request: no audit event, no usage.
    let token = server.admin_token(&admin).await;
    let events = server.api(&token).audit("limit=50").await;
    let actions: Vec<&Value> = events.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["action"])
        .collect();
    assert!(actions.iter().all(|a| *a != "token.denied"), "{actions:?}");
}

agentidp_testkit::per_store!(
    each_organization_has_its_own_issuer_discoverable_at_every_path_derived_from_it,
    the_openid_configuration_is_the_authorization_server_metadata,
    the_authorization_endpoint_refuses_in_its_body_and_never_redirects,
);
