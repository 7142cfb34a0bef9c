//! The signing-key rotation function: Secrets Manager invokes it four times per rotation
//! (`createSecret`, `setSecret`, `testSecret`, `finishSecret`). The steps live in
//! `agentidp_shared::rotation`; this binary only reads its event and reports the outcome.

use agentidp_shared::rotation::Rotator;
use aws_lambda_events::event::secretsmanager::SecretsManagerSecretRotationEvent;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    agentidp_shared::telemetry::init(true);
    let algorithm = agentidp_shared::rotation::algorithm_from_env()?;
    let sdk = agentidp_shared::aws::sdk_config().await;
    let rotator = Rotator::new(
        agentidp_shared::aws::SecretsManagerClient::new(&sdk),
        algorithm,
    );
    run(service_fn(
        |event: LambdaEvent<SecretsManagerSecretRotationEvent>| {
            let rotator = &rotator;
            async move {
                let SecretsManagerSecretRotationEvent {
                    step,
                    secret_id,
                    client_request_token,
                    ..
                } = event.payload;
                // A failed step is returned as the invocation's error: Secrets Manager then
                // retries the rotation and AWSCURRENT stays where it was.
                match rotator
                    .run(&step, &secret_id, &client_request_token, chrono::Utc::now())
                    .await
                {
                    Ok(outcome) => {
                        tracing::info!(step = %step, version = %client_request_token, outcome = ?outcome, "rotation step done");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(step = %step, version = %client_request_token, error = %e, "rotation step failed");
                        Err(Error::from(e.to_string()))
                    }
                }
            }
        },
    ))
    .await
}
