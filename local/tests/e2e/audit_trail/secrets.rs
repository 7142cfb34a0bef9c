//! No event ever holds a client secret, an access token or a secret hash.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;

use super::{ids, org};
use crate::support::TestServer;

async fn events_never_contain_a_secret_or_a_token(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "secrets").await;
    let t = org.token.as_str();
    let mut secrets = vec![org.admin.client_secret.clone()];
    let mut tokens = vec![org.token.clone()];

    let agent = server.create_agent(t, "holder", &["weather:read"]).await;
    let (credential, client_id, secret) = server.create_credential(t, &agent).await;
    secrets.push(secret.clone());
    tokens.push(server.token(&client_id, &secret).await);
    // client_secret_post too.
    let posted = server
        .send(server.request(Method::POST, "/api/v1/token").form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
        ]))
        .await;
    assert_eq!(posted.status, 200, "{}", posted.text);
    tokens.push(posted.str("access_token"));
    let rotated = server.api(t).rotate(&agent, &credential).await;
    let new_secret = rotated.str("clientSecret");
    secrets.push(new_secret.clone());
    tokens.push(server.token(&client_id, &new_secret).await);
    // A wrong secret presented, the old secret presented, a revoked token.
    let wrong = format!("sk_wrong_{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        server.token_request(&client_id, &wrong, None).await.status,
        401
    );
    secrets.push(wrong);
    assert_eq!(
        server.token_request(&client_id, &secret, None).await.status,
        401
    );
    let revoke = server.api(t).revoke_token(&tokens[1]).await;
    assert_eq!(revoke.status, 200);
    // Revocation by the client itself, with client_secret_post.
    let revoke = server
        .send(server.request(Method::POST, "/api/v1/token/revoke").form(&[
            ("token", tokens[2].as_str()),
            ("client_id", client_id.as_str()),
            ("client_secret", new_secret.as_str()),
        ]))
        .await;
    assert_eq!(revoke.status, 200, "{}", revoke.text);
    let (_, other_client, other_secret) = server.create_credential(t, &agent).await;
    secrets.push(other_secret.clone());
    tokens.push(server.token(&other_client, &other_secret).await);
    let gone = server.api(t).delete_agent(&agent).await;
    assert_eq!(gone.status, 204);

    let events = server.audit_events(t, "").await;
    assert!(events.iter().any(|e| e["action"] == "token.revoked"));
    let mut texts = vec![serde_json::to_string(&events).unwrap()];
    for id in ids(&events) {
        texts.push(server.api(t).audit_event(&id).await.text);
    }
    for text in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "an event holds a client secret: {text}"
            );
        }
        for token in &tokens {
            assert!(
                !text.contains(token.as_str()),
                "an event holds an access token: {text}"
            );
            let signature = token.rsplit('.').next().unwrap();
            assert!(
                !text.contains(signature),
                "an event holds a token's signature: {text}"
            );
        }
        for hash_prefix in ["$2a$", "$2b$", "$2y$"] {
            assert!(
                !text.contains(hash_prefix),
                "an event holds a bcrypt hash: {text}"
            );
        }
    }
}

agentidp_testkit::per_store!(events_never_contain_a_secret_or_a_token);
