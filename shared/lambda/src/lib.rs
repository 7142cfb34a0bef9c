//! The Lambda front end: API Gateway HTTP API (payload 2.0) events in, responses out. Each
//! function's `main` builds an [`Idp`] once per cold start and hands every event here.

use std::sync::Arc;

pub use agentidp_core::telemetry;
pub use agentidp_http::FunctionGroup;

use lambda_http::request::RequestContext as GatewayContext;
use lambda_http::{Body, Request, RequestExt, Response};

use agentidp_aws::{PUBLIC_KEYS_SECRET_VAR, SIGNING_KEY_SECRET_VAR};
use agentidp_core::config::{self, Config};
use agentidp_core::service::Idp;
use agentidp_core::store::Store;
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

/// Why a function could not start. Its `Debug` is its message and its causes, because that is what a failed
/// `main` prints to the function's log: `Error: environment variable … is required but not
/// set`, not a quoted string or a struct.
#[derive(thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] agentidp_core::config::ConfigError),
    #[error("the secret hasher cannot be built")]
    Hasher(#[from] agentidp_core::secret::SecretError),
    #[error("the key set fetcher cannot be built")]
    KeyFetcher(#[from] agentidp_remote_keys::FetcherBuildError),
}

impl std::fmt::Debug for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&agentidp_core::error::Chain(self), f)
    }
}

/// Everything a function needs, from its environment: the configuration, DynamoDB tables named
/// by `AGENTIDP_*_TABLE`, and its keys. The tokens function signs, so it reads the private key
/// set (`AGENTIDP_SIGNING_KEY_SECRET_ID`); the others only verify bearer tokens and read the
/// public key set the rotation publishes (`AGENTIDP_PUBLIC_KEYS_SECRET_ID`), which cannot sign:
/// their roles may not read the private one. The keys are read lazily, so a cold start with
/// Secrets Manager unreachable still starts, answers 503, and recovers on a later call.
pub async fn idp_from_env(group: FunctionGroup) -> Result<Arc<Idp>, StartupError> {
    idp_from(group, &config::process_env).await
}

/// [`idp_from_env`] with the variables read through `lookup`. Every variable is read before
/// the SDK is set up, so a missing one fails the cold start at once, by name.
async fn idp_from(
    group: FunctionGroup,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Arc<Idp>, StartupError> {
    let config = Config::from_lookup(lookup)?;
    let tables = agentidp_store_dynamodb::TableNames::from_lookup(lookup)?;
    let signs = match group {
        FunctionGroup::Tokens => true,
        FunctionGroup::Agents | FunctionGroup::Credentials | FunctionGroup::Audit => false,
    };
    let key_secret = if signs {
        config::required(lookup, SIGNING_KEY_SECRET_VAR)?
    } else {
        config::required(lookup, PUBLIC_KEYS_SECRET_VAR)?
    };
    let sdk = agentidp_aws::sdk_config().await;
    let secrets = agentidp_aws::SecretsManagerClient::new(&sdk);
    let keys = if signs {
        agentidp_aws::signing_keys(secrets, key_secret)
    } else {
        agentidp_aws::verifying_keys(secrets, key_secret)
    };
    let store: Arc<dyn Store> = Arc::new(agentidp_store_dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        tables,
    ));
    let remote_keys = agentidp_remote_keys::KeySetFetcher::new(config.key_fetch_network)?;
    let idp = Idp::new(
        config,
        store,
        keys,
        Arc::new(remote_keys),
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

    fn deployment_without(missing: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name| {
            let value = match name {
                "AGENTIDP_ISSUER" => "https://idp.example.com",
                _ if name == missing => return None,
                _ if name.ends_with("_TABLE") || name.ends_with("_SECRET_ID") => "named",
                _ => return None,
            };
            Some(value.to_owned())
        }
    }

    /// Why a start from `lookup` fails, if it does.
    async fn start_failure(
        group: FunctionGroup,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        idp_from(group, &lookup).await.err().map(|e| e.to_string())
    }

    fn missing(variable: &str) -> Option<String> {
        Some(format!(
            "environment variable {variable} is required but not set"
        ))
    }

    #[tokio::test]
    async fn only_the_tokens_function_needs_the_private_key_secret() {
        let without_private = || deployment_without(SIGNING_KEY_SECRET_VAR);
        assert_eq!(
            start_failure(FunctionGroup::Tokens, without_private()).await,
            missing(SIGNING_KEY_SECRET_VAR)
        );
        for group in [
            FunctionGroup::Agents,
            FunctionGroup::Credentials,
            FunctionGroup::Audit,
        ] {
            assert_eq!(
                start_failure(group, without_private()).await,
                None,
                "{group:?}"
            );
            assert_eq!(
                start_failure(group, deployment_without(PUBLIC_KEYS_SECRET_VAR)).await,
                missing(PUBLIC_KEYS_SECRET_VAR),
                "{group:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_table_name_fails_the_start_by_name() {
        assert_eq!(
            start_failure(
                FunctionGroup::Agents,
                deployment_without("AGENTIDP_AUDIT_TABLE")
            )
            .await,
            missing("AGENTIDP_AUDIT_TABLE")
        );
    }
}
