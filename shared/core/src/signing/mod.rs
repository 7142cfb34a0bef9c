//! Access tokens: RFC 9068 JWTs signed with a key set that keeps previous keys, so a rotation
//! never breaks a token already issued, and rendered as a JWKS (RFC 7517).
//!
//! By concern: `keys` (the algorithms, the key-set document and the loaded [`KeySet`]), `jwks`
//! (the public keys), `tokens` (the claims, signing and verifying) and `source` (where a running
//! function gets its key set). Everything is used as `signing::X`, from the re-exports here.

mod jwks;
mod keys;
mod source;
#[cfg(test)]
mod test_support;
mod tokens;

pub use jwks::{Jwks, PublicJwk};
pub use keys::{KeySet, KeySetDocument, SigningAlgorithm, StoredKey, generate_key};
pub use source::{CachedKeys, KeySecret, KeySource, UNKNOWN_KID_REREAD_INTERVAL};
pub use tokens::{
    ACCESS_TOKEN_TYPE, AccessTokenClaims, ActorClaim, Confirmation, MAX_TOKEN_BYTES, TokenPolicy,
    TokenRejection,
};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generation,
    #[error("the key set is malformed: {0}")]
    Malformed(String),
    #[error("the key set holds no key")]
    Empty,
    #[error("signing failed: {0}")]
    Signing(String),
    /// The key secret or file cannot be read now (or holds no key yet): worth retrying later.
    /// `source` is the error reading it, `None` when the read worked but found nothing usable.
    #[error("the key source is unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<crate::error::Cause>,
    },
    /// The set was loaded from public keys only (the functions that verify and never sign).
    #[error("this key set holds public keys only and cannot sign")]
    VerifyOnly,
}
