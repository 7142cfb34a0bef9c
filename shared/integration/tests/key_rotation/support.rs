//! What the rotation tests share: clients of moto_server, the secrets they rotate and read, and
//! tokens to sign and verify.

use std::time::Duration;

use agentidp_aws::SecretsManagerSecret;
use agentidp_aws::rotation::{RotationStep, Rotator};
use agentidp_core::signing::{
    AccessTokenClaims, CachedKeys, KeySetDocument, KeySource, TokenPolicy,
};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use agentidp_testkit::moto_endpoint;

pub fn client_for(endpoint: &str, timeouts: TimeoutConfig, retries: RetryConfig) -> Client {
    let config = agentidp_testkit::secrets_manager_config_at(endpoint)
        .timeout_config(timeouts)
        .retry_config(retries)
        .build();
    Client::from_conf(config)
}

pub fn moto_client() -> Client {
    client_for(
        &moto_endpoint(),
        TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(20))
            .build(),
        RetryConfig::standard(),
    )
}

pub async fn new_secret(client: &Client, document: &KeySetDocument) -> String {
    let name = format!("agentidp-rotation-test-{}", Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string(document.to_json().unwrap())
        .send()
        .await
        .unwrap();
    name
}

pub async fn document_at(client: &Client, secret: &str, stage: &str) -> KeySetDocument {
    let out = client
        .get_secret_value()
        .secret_id(secret)
        .version_stage(stage)
        .send()
        .await
        .unwrap();
    KeySetDocument::parse(out.secret_string().unwrap()).unwrap()
}

pub async fn stages(client: &Client, secret: &str) -> Vec<(String, Vec<String>)> {
    let mut versions: Vec<(String, Vec<String>)> = client
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages()
        .unwrap()
        .iter()
        .map(|(id, stages)| {
            let mut stages = stages.clone();
            stages.sort();
            (id.clone(), stages)
        })
        .collect();
    versions.sort();
    versions
}

/// Secrets Manager's part: the four steps, in order, for a new version id.
pub async fn rotate(rotator: &Rotator, secret: &str, now: DateTime<Utc>) -> String {
    let token = Uuid::new_v4().to_string();
    for step in RotationStep::ALL {
        rotator
            .run(step.as_str(), secret, &token, now)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", step.as_str()));
    }
    token
}

pub fn policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "https://idp.example.test".into(),
        audience: "https://idp.example.test".into(),
        lifetime_seconds: 3600,
    }
}

pub fn claims(now: DateTime<Utc>) -> AccessTokenClaims {
    let id = Uuid::new_v4().to_string();
    AccessTokenClaims {
        iss: policy().issuer,
        sub: id.clone(),
        aud: policy().audience,
        exp: now.timestamp() + 3600,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: id.clone(),
        client_id: id.clone(),
        scope: "agents:read".into(),
        org_id: id,
        act: None,
        may_act: None,
        chain_jtis: Vec::new(),
        chain_iat: None,
        cnf: None,
    }
}

pub fn kids(document: &KeySetDocument) -> Vec<String> {
    document.keys.iter().map(|k| k.kid.clone()).collect()
}

/// A public-key secret as the stack creates it: no key until a rotation publishes some.
pub async fn new_public_secret(client: &Client) -> String {
    let name = format!("agentidp-public-keys-test-{}", Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string("{\"keys\":[]}")
        .send()
        .await
        .unwrap();
    name
}

pub fn verifying_source(client: Client, secret: &str, refresh_after: Duration) -> KeySource {
    KeySource::Cached(CachedKeys::verify_only(
        SecretsManagerSecret::new(client, secret.to_owned()),
        refresh_after,
    ))
}
