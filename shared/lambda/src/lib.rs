//! The Lambda front end: API Gateway HTTP API (payload 2.0) events in, responses out. Each
//! function's `main` builds an [`Idp`] once per cold start and hands every event here.

use std::sync::Arc;

pub use agentidp_core::telemetry;
pub use agentidp_http::FunctionGroup;

use lambda_http::request::RequestContext as GatewayContext;
use lambda_http::{Body, Request, RequestExt, Response};

use agentidp_aws::{PUBLIC_KEYS_SECRET_VAR, SIGNING_KEY_SECRET_VAR, secret_id_from_env};
use agentidp_core::service::Idp;
use agentidp_http::{ApiRequest, Origin};

/// Turns an API Gateway event into the request every endpoint takes.
pub fn api_request(request: Request) -> ApiRequest {
    let origin = match request.request_context_ref() {
        Some(GatewayContext::ApiGatewayV2(context)) => Origin {
            request_id: context.request_id.clone(),
            source_ip: context.http.source_ip.clone(),
            user_agent: context.http.user_agent.clone(),
        },
        _ => Origin::default(),
    };
    let (parts, body) = request.into_parts();
    ApiRequest::from_parts(parts, body.to_vec(), origin)
}

pub async fn handle(
    idp: &Arc<Idp>,
    group: FunctionGroup,
    request: Request,
) -> Result<Response<Body>, std::convert::Infallible> {
    let response = agentidp_http::handle(idp, Some(group), api_request(request)).await;
    let (parts, body) = response.into_parts();
    let body = if body.is_empty() {
        Body::Empty
    } else {
        Body::Text(String::from_utf8_lossy(&body).into_owned())
    };
    Ok(Response::from_parts(parts, body))
}

/// Why a function could not start. Its `Debug` is its message, because that is what a failed
/// `main` prints to the function's log: `Error: environment variable … is required but not
/// set`, not a quoted string or a struct.
#[derive(thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] agentidp_core::config::ConfigError),
    #[error("the secret hasher cannot be built: {0}")]
    Hasher(#[from] agentidp_core::secret::SecretError),
}

impl std::fmt::Debug for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Everything a function needs, from its environment: the configuration, DynamoDB tables named
/// by `AGENTIDP_*_TABLE`, and its keys. The tokens function signs, so it reads the private key
/// set (`AGENTIDP_SIGNING_KEY_SECRET_ID`); the others only verify bearer tokens and read the
/// public key set the rotation publishes (`AGENTIDP_PUBLIC_KEYS_SECRET_ID`), which cannot sign:
/// their roles may not read the private one. The keys are read lazily, so a cold start with
/// Secrets Manager unreachable still starts, answers 503, and recovers on a later call.
pub async fn idp_from_env(group: FunctionGroup) -> Result<Arc<Idp>, StartupError> {
    let config = agentidp_core::config::Config::from_env()?;
    let tables = agentidp_store_dynamodb::TableNames::from_env()?;
    let sdk = agentidp_aws::sdk_config().await;
    let secrets = agentidp_aws::SecretsManagerClient::new(&sdk);
    let keys = match group {
        FunctionGroup::Tokens => {
            agentidp_aws::signing_keys(secrets, secret_id_from_env(SIGNING_KEY_SECRET_VAR)?)
        }
        FunctionGroup::Agents | FunctionGroup::Credentials | FunctionGroup::Audit => {
            agentidp_aws::verifying_keys(secrets, secret_id_from_env(PUBLIC_KEYS_SECRET_VAR)?)
        }
    };
    let store =
        agentidp_store_dynamodb::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), tables);
    let idp = Idp::new(
        config,
        Arc::new(store),
        keys,
        Arc::new(agentidp_core::domain::time::SystemClock),
    )?;
    Ok(Arc::new(idp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_prints_its_message_unquoted_naming_the_variable() {
        let failed: lambda_http::Error = Box::new(StartupError::from(
            agentidp_core::config::ConfigError::Missing("AGENTIDP_ISSUER"),
        ));
        // What `main` returning this error prints after `Error: `.
        assert_eq!(
            format!("{failed:?}"),
            "environment variable AGENTIDP_ISSUER is required but not set"
        );
    }
}
