//! The signing-key rotation function: Secrets Manager invokes it four times per rotation
//! (`createSecret`, `setSecret`, `testSecret`, `finishSecret`). The steps live in
//! `agentidp_aws::rotation`; this binary only reads its event and reports the outcome. It
//! publishes the public keys to the secret of `AGENTIDP_PUBLIC_KEYS_SECRET_ID`.

use agentidp_aws::rotation::Rotator;
use agentidp_core::config;
use agentidp_core::error::Chain;
use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde::Deserialize;

/// What Secrets Manager sends. It also sends `RotationToken`, which only a function that
/// rotates a secret in another account needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RotationEvent {
    step: String,
    secret_id: String,
    client_request_token: String,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    agentidp_core::telemetry::init(true);
    let env = config::process_env;
    let algorithm = config::signing_algorithm(&env)?;
    let public_keys = config::required(&env, agentidp_aws::PUBLIC_KEYS_SECRET_VAR)?;
    let sdk = agentidp_aws::sdk_config().await;
    let rotator = Rotator::new(agentidp_aws::SecretsManagerClient::new(&sdk), algorithm)
        .publishing_to(public_keys);
    lambda_runtime::run(service_fn(|event: LambdaEvent<RotationEvent>| {
        let rotator = &rotator;
        async move {
            let RotationEvent {
                step,
                secret_id,
                client_request_token,
            } = event.payload;
            // A failed step is the invocation's error: Secrets Manager then retries the rotation
            // later, and AWSCURRENT stays where it was.
            match rotator
                .run(&step, &secret_id, &client_request_token, chrono::Utc::now())
                .await
            {
                Ok(outcome) => {
                    tracing::info!(step = %step, version = %client_request_token, outcome = ?outcome, "rotation step done");
                    Ok(())
                }
                Err(e) => {
                    let error = Chain(&e).to_string();
                    tracing::error!(step = %step, version = %client_request_token, error = %error, "rotation step failed");
                    Err(Error::from(error))
                }
            }
        }
    }))
    .await
}
