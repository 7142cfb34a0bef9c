//! DynamoDB errors as [`StoreError`]s.

use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};

use agentidp_core::store::StoreError;

/// Error codes that mean "try again later" rather than "this request is wrong".
pub(crate) fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ThrottlingError"
            | "ProvisionedThroughputExceeded"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "TransactionInProgressException"
    )
}

/// Unreachable endpoint, timeout, throttling or a 5xx: `Unavailable`. Anything else: `Internal`.
/// The detail holds the operation, the error code and DynamoDB's message, never an item.
pub(crate) fn sdk_error<E>(operation: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            StoreError::Unavailable(format!("{operation}: {}", DisplayErrorContext(&err)))
        }
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = err.raw_response().map(|response| response.status());
            let code = err.code().unwrap_or("unknown");
            let detail = format!(
                "{operation}: {code} (HTTP {}): {}",
                status.map_or(0, |s| s.as_u16()),
                err.message().unwrap_or("no message")
            );
            if status.is_some_and(|s| s.is_server_error()) || is_throttling_code(code) {
                StoreError::Unavailable(detail)
            } else {
                StoreError::Internal(detail)
            }
        }
        _ => StoreError::Internal(format!("{operation}: {}", DisplayErrorContext(&err))),
    }
}

pub(crate) fn build_error(err: BuildError) -> StoreError {
    StoreError::Internal(format!("building a DynamoDB request: {err}"))
}
