//! Client secrets: generated from the OS CSPRNG, stored only as bcrypt hashes, compared in
//! constant time, and never printed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// `sk_live_` and 32 lowercase hex characters: 128 bits from the OS CSPRNG.
pub const SECRET_PREFIX: &str = "sk_live_";
const SECRET_RANDOM_BYTES: usize = 16;
/// bcrypt reads at most 72 bytes; anything longer would be silently truncated, so it is refused.
pub const MAX_PRESENTED_SECRET_BYTES: usize = 72;

/// A client secret in plain text. `Debug` and `Display` redact it; the value is reachable only
/// through [`ClientSecret::expose`], which the few places that must send or hash it call.
pub struct ClientSecret(Zeroizing<String>);

impl ClientSecret {
    pub fn generate() -> Result<Self, SecretError> {
        let mut random = [0u8; SECRET_RANDOM_BYTES];
        getrandom::fill(&mut random).map_err(|_| SecretError::Randomness)?;
        Ok(Self(Zeroizing::new(format!(
            "{SECRET_PREFIX}{}",
            hex::encode(random)
        ))))
    }

    /// Wraps a secret a client presented. Length is checked at verification.
    pub fn presented(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

impl fmt::Display for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the OS random number generator failed")]
    Randomness,
    #[error("bcrypt failed: {0}")]
    Hash(String),
}

/// Hashes and verifies secrets at one bcrypt cost, and counts the verifications it runs.
#[derive(Debug)]
pub struct SecretHasher {
    cost: u32,
    /// A hash of a random secret, verified against when a client id is unknown so that an
    /// unknown client costs the same time as a wrong secret.
    dummy_hash: String,
    verifications: AtomicU64,
}

impl SecretHasher {
    pub fn new(cost: u32) -> Result<Self, SecretError> {
        let throwaway = ClientSecret::generate()?;
        let dummy_hash =
            bcrypt::hash(throwaway.expose(), cost).map_err(|e| SecretError::Hash(e.to_string()))?;
        Ok(Self {
            cost,
            dummy_hash,
            verifications: AtomicU64::new(0),
        })
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub fn hash(&self, secret: &ClientSecret) -> Result<String, SecretError> {
        bcrypt::hash(secret.expose(), self.cost).map_err(|e| SecretError::Hash(e.to_string()))
    }

    /// True when `presented` matches `stored_hash`. bcrypt's own comparison of the derived hash
    /// is constant time; an over-long secret is refused before hashing. A malformed stored hash
    /// counts as a mismatch.
    pub fn verify(&self, presented: &ClientSecret, stored_hash: &str) -> bool {
        if presented.expose().len() > MAX_PRESENTED_SECRET_BYTES {
            return false;
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        bcrypt::verify(presented.expose(), stored_hash).unwrap_or(false)
    }

    /// Spends one verification's time for a client that does not exist.
    pub fn verify_against_dummy(&self, presented: &ClientSecret) -> bool {
        let dummy = self.dummy_hash.clone();
        let _ = self.verify(presented, &dummy);
        false
    }

    /// How many bcrypt verifications this instance has run.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }
}

/// Constant-time equality for secrets and digests.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let secret = ClientSecret::generate().unwrap();
        let value = secret.expose();
        assert!(value.starts_with(SECRET_PREFIX));
        let random = &value[SECRET_PREFIX.len()..];
        assert_eq!(random.len(), 32);
        assert!(
            random
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn generated_secrets_differ() {
        let a = ClientSecret::generate().unwrap();
        let b = ClientSecret::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_and_display_redact_the_secret() {
        let secret = ClientSecret::generate().unwrap();
        assert!(!format!("{secret:?}").contains(secret.expose()));
        assert!(!format!("{secret}").contains(secret.expose()));
    }

    #[test]
    fn a_hash_verifies_its_secret_and_no_other() {
        let hasher = SecretHasher::new(4).unwrap();
        let secret = ClientSecret::generate().unwrap();
        let hash = hasher.hash(&secret).unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(hasher.verify(&secret, &hash));
        assert!(!hasher.verify(&ClientSecret::generate().unwrap(), &hash));
    }

    #[test]
    fn a_secret_longer_than_bcrypt_reads_is_refused_not_truncated() {
        let hasher = SecretHasher::new(4).unwrap();
        let base = "a".repeat(MAX_PRESENTED_SECRET_BYTES);
        let hash = hasher.hash(&ClientSecret::presented(base.clone())).unwrap();
        assert!(hasher.verify(&ClientSecret::presented(base.clone()), &hash));
        assert!(!hasher.verify(&ClientSecret::presented(format!("{base}b")), &hash));
    }

    #[test]
    fn a_malformed_stored_hash_is_a_mismatch() {
        let hasher = SecretHasher::new(4).unwrap();
        assert!(!hasher.verify(&ClientSecret::presented("x".into()), "not-a-hash"));
    }

    #[test]
    fn verifications_are_counted() {
        let hasher = SecretHasher::new(4).unwrap();
        let secret = ClientSecret::generate().unwrap();
        hasher.verify_against_dummy(&secret);
        hasher.verify_against_dummy(&secret);
        assert_eq!(hasher.verifications(), 2);
    }
}
