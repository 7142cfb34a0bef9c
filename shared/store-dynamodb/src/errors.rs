//! DynamoDB errors as [`StoreError`]s.

use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};

use agentidp_core::error::Cause;
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
/// The context names the operation, the kind of failure and the HTTP status; the source is the
/// SDK's error beneath it (DynamoDB's error code and message, or the connection's failure).
pub(crate) fn sdk_error<E>(operation: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|response| response.status());
    let unavailable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            status.is_some_and(|s| s.is_server_error())
                || err.code().is_some_and(is_throttling_code)
        }
        _ => false,
    };
    let context = match status {
        Some(status) => format!("{operation}: {err} (HTTP {})", status.as_u16()),
        None => format!("{operation}: {err}"),
    };
    let source = sdk_cause(err);
    if unavailable {
        StoreError::Unavailable { context, source }
    } else {
        StoreError::Internal { context, source }
    }
}

/// The error beneath an SDK error, without the raw HTTP response the SDK keeps beside it: a
/// response it could not parse may hold items, and with them credentials' secret hashes.
pub(crate) fn sdk_cause<E>(err: SdkError<E>) -> Option<Cause>
where
    E: std::error::Error + Send + Sync + 'static,
{
    err.into_source().ok()
}

pub(crate) fn build_error(err: BuildError) -> StoreError {
    StoreError::internal("building a DynamoDB request", err)
}
