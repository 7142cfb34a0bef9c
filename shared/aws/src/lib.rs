//! AWS set-up shared by the functions, the local server and the CLI: the SDK configuration,
//! signing keys read from Secrets Manager, and the key rotation (`rotation`).

pub mod rotation;

use std::time::Duration;

use agentidp_core::signing::{CachedKeys, KeyError, KeySecret, KeySource};
use aws_config::BehaviorVersion;
pub use aws_config::SdkConfig;
use aws_config::timeout::TimeoutConfig;
pub use aws_sdk_secretsmanager::Client as SecretsManagerClient;

/// How long a warm instance uses the signing keys it read before reading them again, so a
/// rotation reaches every instance within this time.
pub const KEY_REFRESH: Duration = Duration::from_secs(300);

/// The secret holding the private key set: read by the function that signs tokens.
pub const SIGNING_KEY_SECRET_VAR: &str = "AGENTIDP_SIGNING_KEY_SECRET_ID";
/// The secret holding the public key set (a JWKS): written by the rotation, read by the
/// functions that only verify tokens, which may not read the private one.
pub const PUBLIC_KEYS_SECRET_VAR: &str = "AGENTIDP_PUBLIC_KEYS_SECRET_ID";

/// The SDK configuration from the environment, with timeouts short enough that an unreachable
/// dependency fails a request quickly (503) instead of hanging until Lambda's own timeout.
pub async fn sdk_config() -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(12))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await
}

/// A Secrets Manager secret holding a key set, read at its `AWSCURRENT` stage.
pub struct SecretsManagerSecret {
    client: SecretsManagerClient,
    secret_id: String,
}

impl SecretsManagerSecret {
    pub fn new(client: SecretsManagerClient, secret_id: String) -> Self {
        Self { client, secret_id }
    }
}

#[async_trait::async_trait]
impl KeySecret for SecretsManagerSecret {
    async fn read_current(&self) -> Result<String, KeyError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .map_err(|e| KeyError::Unavailable {
                context: format!("GetSecretValue: {e}"),
                // Only the error beneath: the raw response the SDK keeps beside it may be one
                // it could not parse, holding the secret.
                source: e.into_source().ok(),
            })?;
        out.secret_string()
            .map(str::to_owned)
            .ok_or_else(|| KeyError::Malformed("the secret holds no string".into()))
    }

    fn name(&self) -> &str {
        &self.secret_id
    }
}

/// The private key set of the secret `secret_id`: what the tokens function signs with.
pub fn signing_keys(client: SecretsManagerClient, secret_id: String) -> KeySource {
    KeySource::Cached(CachedKeys::signing(
        SecretsManagerSecret::new(client, secret_id),
        KEY_REFRESH,
    ))
}

/// The public key set of the secret `secret_id`, which verifies and cannot sign: what the
/// functions that only verify bearer tokens read.
pub fn verifying_keys(client: SecretsManagerClient, secret_id: String) -> KeySource {
    KeySource::Cached(CachedKeys::verify_only(
        SecretsManagerSecret::new(client, secret_id),
        KEY_REFRESH,
    ))
}
