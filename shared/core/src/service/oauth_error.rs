//! The OAuth endpoints' error: RFC 6749 §5.2 (and RFC 8707's `invalid_target`) for what a
//! client is told, and the store's, keys' or service's error as the source of what it is not.

use super::{LimitExceeded, ServiceError};
use crate::error::Cause;
use crate::signing::KeyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// Never says which check failed. `basic` asks for `WWW-Authenticate: Basic`.
    #[error("invalid_client")]
    InvalidClient { basic: bool },
    /// The grant is not valid here: a jwt-bearer grant's assertion (RFC 7523 §3.1) or a token
    /// exchange's subject or actor (RFC 8693 §2.2.2). The description never says which check
    /// failed.
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// RFC 8707 §2: the `resource` is malformed, repeated, or not one the client may ask for.
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// RFC 9449 §5: the DPoP proof is missing where one is required, or is not valid.
    #[error("invalid_dpop_proof: {0}")]
    InvalidDpopProof(String),
    /// RFC 9449 §8: the proof must carry a server nonce; `nonce` is a fresh one.
    #[error("use_dpop_nonce")]
    UseDpopNonce { nonce: String },
    #[error("quota exceeded")]
    /// The month's token quota is used up; `retry_after` counts (by the service's clock) to
    /// the start of the next calendar month, when it resets.
    QuotaExceeded {
        limit: LimitExceeded,
        retry_after: u64,
    },
    /// Too many failed authentications of this client or from this address.
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    /// A dependency cannot be reached now; as [`ServiceError::Unavailable`].
    #[error("unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Cause,
    },
    /// Logged, never shown to clients; as [`ServiceError::Internal`].
    #[error("internal: {context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        OAuthError::from(ServiceError::from(e))
    }
}

impl From<ServiceError> for OAuthError {
    /// The OAuth endpoints call operations that refuse in their own terms (`OAuthError`); what
    /// reaches here from the shared operations is a dependency failing, a throttle, or a bug.
    /// Every variant is named, so a new one has to be placed. A dependency's failure or a bug
    /// keeps its context and source as they are; any other refusal is unexpected here and
    /// becomes the source of an `Internal`.
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Unavailable { context, source } => {
                OAuthError::Unavailable { context, source }
            }
            ServiceError::Internal { context, source } => OAuthError::Internal { context, source },
            ServiceError::RateLimited { retry_after } => OAuthError::RateLimited { retry_after },
            ServiceError::Validation(_)
            | ServiceError::Unauthenticated(_)
            | ServiceError::InsufficientScope { .. }
            | ServiceError::AgentNotFound
            | ServiceError::CredentialNotFound
            | ServiceError::AuditEventNotFound
            | ServiceError::ResourceNotFound
            | ServiceError::TrustedIssuerNotFound
            | ServiceError::IssuerAlreadyTrusted
            | ServiceError::AgentNotActive(_)
            | ServiceError::CredentialRevoked
            | ServiceError::AgentNameTaken
            | ServiceError::ResourceIdentifierTaken
            | ServiceError::InvalidStatusTransition { .. }
            | ServiceError::PlanLimit(_)
            | ServiceError::Contended => OAuthError::Internal {
                context: "an operation refused unexpectedly".into(),
                source: Some(Box::new(e)),
            },
        }
    }
}

impl From<KeyError> for OAuthError {
    fn from(e: KeyError) -> Self {
        OAuthError::from(ServiceError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;
    use crate::error::Chain;

    fn disk_failure() -> std::io::Error {
        std::io::Error::other("disk sector 7 unreadable")
    }

    /// The store error an error's source is, if it is one.
    fn store_source<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a StoreError> {
        e.source()
            .and_then(|source| source.downcast_ref::<StoreError>())
    }

    #[test]
    fn a_store_errors_source_survives_the_conversion_to_service_and_oauth_errors() {
        let service = ServiceError::from(StoreError::internal("reading agents", disk_failure()));
        let store = store_source(&service);
        assert!(
            matches!(store, Some(StoreError::Internal { .. })),
            "{service:?}"
        );
        let cause = store.and_then(Error::source);
        assert!(
            cause.is_some_and(|e| e.is::<std::io::Error>()),
            "{service:?}"
        );

        let oauth = OAuthError::from(service);
        assert!(matches!(oauth, OAuthError::Internal { .. }), "{oauth:?}");
        let cause = store_source(&oauth).and_then(Error::source);
        assert_eq!(
            cause.map(ToString::to_string).as_deref(),
            Some("disk sector 7 unreadable")
        );
        assert_eq!(
            Chain(&oauth).to_string(),
            "internal: the store failed: store failure: reading agents: disk sector 7 unreadable"
        );
    }

    #[test]
    fn an_unavailable_store_stays_unavailable_with_its_source_through_both_conversions() {
        let oauth = OAuthError::from(StoreError::unavailable("GetItem", disk_failure()));
        assert!(matches!(oauth, OAuthError::Unavailable { .. }), "{oauth:?}");
        assert!(
            matches!(store_source(&oauth), Some(StoreError::Unavailable { .. })),
            "{oauth:?}"
        );
        assert_eq!(
            Chain(&oauth).to_string(),
            "unavailable: the store: store unavailable: GetItem: disk sector 7 unreadable"
        );
    }

    #[test]
    fn an_unreadable_key_file_keeps_its_cause_through_the_conversions() {
        let unreadable = KeyError::Unavailable {
            context: "reading keys.json".into(),
            source: Some(Box::new(disk_failure())),
        };
        let oauth = OAuthError::from(unreadable);
        let keys = oauth
            .source()
            .and_then(|source| source.downcast_ref::<KeyError>());
        assert!(
            matches!(keys, Some(KeyError::Unavailable { .. })),
            "{oauth:?}"
        );
        assert_eq!(
            Chain(&oauth).to_string(),
            "unavailable: the signing keys: the key source is unavailable: reading keys.json: \
             disk sector 7 unreadable"
        );
    }

    #[test]
    fn an_unexpected_refusal_reaching_an_oauth_endpoint_is_the_source_of_its_internal_error() {
        let oauth = OAuthError::from(ServiceError::Contended);
        let refusal = oauth
            .source()
            .and_then(|source| source.downcast_ref::<ServiceError>());
        assert!(
            matches!(refusal, Some(ServiceError::Contended)),
            "{oauth:?}"
        );
    }
}
