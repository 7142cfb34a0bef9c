//! The events of trust in an outside issuer: created, updated, deleted (about no agent), and the
//! token a federated credential gets, which names the issuer and the external subject.

use std::sync::Arc;

use agentidp_core::signing::SigningAlgorithm;
use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::json;

use super::{Expected, assert_event_snapshot, client_actor, exactly_one_event, org, tick};
use crate::private_key_jwt::AgentKey;
use crate::support::TestServer;

const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";
const SUBJECT: &str = "system:serviceaccount:agents:summarizer";

async fn each_change_of_trust_records_its_event_and_a_federated_token_names_its_subject(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let org = org(&server, "audited").await;
    let t = org.token.as_str();
    let key = AgentKey::new(SigningAlgorithm::ES256);
    let kid = key.kid().to_owned();

    let before = tick(&server, t).await;
    let created = server
        .call(
            Method::POST,
            "/api/v1/trusted-issuers",
            Some(t),
            Some(json!({"issuer": CLUSTER, "audience": "agentidp", "jwks": key.jwks()})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let issuer = created.str("issuerId");
    let resource = format!("trusted-issuer/{issuer}");
    let names = [(issuer.as_str(), "[issuer]"), (kid.as_str(), "[kid]")];
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &created,
        Expected {
            action: "trusted_issuer.created",
            outcome: "success",
            actor: org.actor(),
            agent_id: None,
            resource: resource.clone(),
        },
    )
    .await;
    assert_event_snapshot("trusted_issuer_created", &org, &event, &names);

    let agent = server.create_agent(t, "summarizer", &["agents:read"]).await;
    let credential = server
        .api(t)
        .generate_credential(
            &agent,
            json!({"type": "federated", "issuer": CLUSTER, "subject": SUBJECT}),
        )
        .await;
    let client_id = credential.str("clientId");
    let before = tick(&server, t).await;
    let now = server.clock_now().timestamp();
    let platform_token = key.sign(&json!({
        "iss": CLUSTER, "sub": SUBJECT, "aud": "agentidp", "iat": now, "exp": now + 600,
    }));
    let granted = server
        .send(server.request(Method::POST, "/api/v1/token").form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", client_id.as_str()),
            ("assertion", platform_token.as_str()),
        ]))
        .await;
    assert_eq!(granted.status, 200, "{}", granted.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &granted,
        Expected {
            action: "token.issued",
            outcome: "success",
            actor: client_actor(&client_id),
            agent_id: Some(&agent),
            resource: format!(
                "token/{}",
                server.introspect(t, &granted.str("access_token")).await["jti"]
                    .as_str()
                    .unwrap()
            ),
        },
    )
    .await;
    assert_event_snapshot(
        "token_issued_federated",
        &org,
        &event,
        &[
            (agent.as_str(), "[agent]"),
            (client_id.as_str(), "[client]"),
            (kid.as_str(), "[kid]"),
            (event["resource"].as_str().unwrap(), "token/[jti]"),
        ],
    );

    let path = format!("/api/v1/trusted-issuers/{issuer}");
    let before = tick(&server, t).await;
    let updated = server
        .call(
            Method::PATCH,
            &path,
            Some(t),
            Some(json!({"audience": "sts.agentidp", "description": "the cluster"})),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &updated,
        Expected {
            action: "trusted_issuer.updated",
            outcome: "success",
            actor: org.actor(),
            agent_id: None,
            resource: resource.clone(),
        },
    )
    .await;
    assert_event_snapshot("trusted_issuer_updated", &org, &event, &names);

    let before = tick(&server, t).await;
    let deleted = server.call(Method::DELETE, &path, Some(t), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let event = exactly_one_event(
        &server,
        t,
        &before,
        &deleted,
        Expected {
            action: "trusted_issuer.deleted",
            outcome: "success",
            actor: org.actor(),
            agent_id: None,
            resource,
        },
    )
    .await;
    assert_event_snapshot("trusted_issuer_deleted", &org, &event, &names);
}

agentidp_testkit::per_store!(
    each_change_of_trust_records_its_event_and_a_federated_token_names_its_subject,
);
