//! Client secrets: generated from the OS CSPRNG, stored only as bcrypt hashes, compared in
//! constant time, and never printed.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

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
    /// unknown client costs the same time as a wrong secret. Made on first use, not at start-up:
    /// a cold start of a function that never meets an unknown client should not pay a bcrypt
    /// hash (about 200 ms of init at 512 MB).
    dummy_hash: std::sync::OnceLock<String>,
    verifications: AtomicU64,
    verified: VerifiedSecretCache,
    pub in_flight: InFlightVerifications,
}

/// How many credentials a warm instance remembers a verified secret for, and for how long.
pub const VERIFIED_CACHE_CAPACITY: usize = 10_000;
pub const VERIFIED_CACHE_LIFETIME: Duration = Duration::from_secs(600);

/// Makes bcrypt rare, not cheap: after a secret passes bcrypt against a credential's stored hash,
/// the instance keeps an HMAC of (credential id, stored hash, secret) under a random key that
/// exists only in this process's memory. A later request presenting the same secret while the
/// stored hash is unchanged matches that digest in constant time and skips bcrypt. A rotation
/// changes the stored hash and so misses; revocation, expiry and the agent's status are checked
/// on the record read for every request, outside this cache. See docs/security.md.
pub struct VerifiedSecretCache {
    key: aws_lc_rs::hmac::Key,
    entries: Mutex<HashMap<Uuid, (aws_lc_rs::hmac::Tag, Instant)>>,
    capacity: usize,
    lifetime: Duration,
}

impl fmt::Debug for VerifiedSecretCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedSecretCache")
            .field("capacity", &self.capacity)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl VerifiedSecretCache {
    pub fn new(capacity: usize, lifetime: Duration) -> Result<Self, SecretError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = aws_lc_rs::hmac::Key::generate(aws_lc_rs::hmac::HMAC_SHA256, &rng)
            .map_err(|_| SecretError::Randomness)?;
        Ok(Self {
            key,
            entries: Mutex::new(HashMap::new()),
            capacity,
            lifetime,
        })
    }

    fn digest(&self, parts: &[&[u8]]) -> aws_lc_rs::hmac::Tag {
        let mut context = aws_lc_rs::hmac::Context::with_key(&self.key);
        for part in parts {
            // Lengths keep the fields from running into each other.
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        context.sign()
    }

    fn entry_digest(
        &self,
        credential_id: Uuid,
        stored_hash: &str,
        secret: &ClientSecret,
    ) -> aws_lc_rs::hmac::Tag {
        self.digest(&[
            credential_id.as_bytes(),
            stored_hash.as_bytes(),
            secret.expose().as_bytes(),
        ])
    }

    pub fn contains(&self, credential_id: Uuid, stored_hash: &str, secret: &ClientSecret) -> bool {
        let digest = self.entry_digest(credential_id, stored_hash, secret);
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        entries.get(&credential_id).is_some_and(|(tag, at)| {
            at.elapsed() < self.lifetime && constant_time_eq(tag.as_ref(), digest.as_ref())
        })
    }

    pub fn remember(&self, credential_id: Uuid, stored_hash: &str, secret: &ClientSecret) {
        let digest = self.entry_digest(credential_id, stored_hash, secret);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&credential_id) {
            entries.retain(|_, (_, at)| at.elapsed() < self.lifetime);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(id, _)| *id)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(credential_id, (digest, Instant::now()));
    }
}

/// Which verification a request needs: a keyed digest of the client id as presented, the stored
/// hash it is checked against (none for an unknown client) and the secret. Keyed like the
/// verified-secret cache, so the map of running verifications holds nothing a memory dump could
/// test guesses against.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerificationKey([u8; 32]);

/// Verifications running now. Requests that need the same one wait for its answer instead of
/// each running bcrypt: without this, N requests from one client arriving together before the
/// first verification ends cost N verifications, and the cache only helps the ones after.
#[derive(Default)]
pub struct InFlightVerifications {
    running: Mutex<HashMap<VerificationKey, Arc<tokio::sync::OnceCell<bool>>>>,
}

impl fmt::Debug for InFlightVerifications {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightVerifications")
            .finish_non_exhaustive()
    }
}

impl InFlightVerifications {
    /// Runs `verify`, or waits for the identical verification already running. A failed run
    /// (`Err`) is shared with no one: each waiter then tries for itself.
    pub async fn share<F, Fut, E>(&self, key: VerificationKey, verify: F) -> Result<bool, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bool, E>>,
    {
        let joined = self
            .running
            .lock()
            .map(|mut running| running.entry(key).or_default().clone())
            .ok();
        let Some(cell) = joined else {
            return verify().await;
        };
        // Leaves the map when this request is done with it, also when its future is dropped
        // mid-way (a client that disconnects), so no entry outlives its last waiter.
        let _leave = Leave {
            running: &self.running,
            key,
            cell: &cell,
        };
        cell.get_or_try_init(verify).await.copied()
    }

    /// How many distinct verifications are running or awaited now.
    pub fn running(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or_default()
    }
}

struct Leave<'a> {
    running: &'a Mutex<HashMap<VerificationKey, Arc<tokio::sync::OnceCell<bool>>>>,
    key: VerificationKey,
    cell: &'a Arc<tokio::sync::OnceCell<bool>>,
}

impl Drop for Leave<'_> {
    /// The entry goes when the last request holding it lets go: clones are made only under the
    /// map's lock, so the count read under it is exact (the map's own reference and this one).
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock()
            && running
                .get(&self.key)
                .is_some_and(|c| Arc::ptr_eq(c, self.cell) && Arc::strong_count(c) == 2)
        {
            running.remove(&self.key);
        }
    }
}

impl SecretHasher {
    pub fn new(cost: u32) -> Result<Self, SecretError> {
        let verified = VerifiedSecretCache::new(VERIFIED_CACHE_CAPACITY, VERIFIED_CACHE_LIFETIME)?;
        Ok(Self {
            cost,
            dummy_hash: std::sync::OnceLock::new(),
            verifications: AtomicU64::new(0),
            verified,
            in_flight: InFlightVerifications::default(),
        })
    }

    pub fn verification_key(
        &self,
        client_id: &str,
        stored_hash: Option<&str>,
        presented: &ClientSecret,
    ) -> VerificationKey {
        let tag = self.verified.digest(&[
            b"in-flight",
            client_id.as_bytes(),
            stored_hash.unwrap_or_default().as_bytes(),
            presented.expose().as_bytes(),
        ]);
        let mut key = [0; 32];
        key.copy_from_slice(tag.as_ref());
        VerificationKey(key)
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

    /// Whether this instance verified exactly this secret against exactly this hash recently:
    /// then bcrypt need not run again.
    pub fn recently_verified(
        &self,
        credential_id: Uuid,
        presented: &ClientSecret,
        stored_hash: &str,
    ) -> bool {
        presented.expose().len() <= MAX_PRESENTED_SECRET_BYTES
            && self
                .verified
                .contains(credential_id, stored_hash, presented)
    }

    /// bcrypt, remembering a success for [`SecretHasher::recently_verified`].
    pub fn verify_and_remember(
        &self,
        credential_id: Uuid,
        presented: &ClientSecret,
        stored_hash: &str,
    ) -> bool {
        let matches = self.verify(presented, stored_hash);
        if matches {
            self.verified
                .remember(credential_id, stored_hash, presented);
        }
        matches
    }

    /// Spends one verification's time for a client that does not exist.
    pub fn verify_against_dummy(&self, presented: &ClientSecret) -> bool {
        let dummy = self.dummy_hash.get_or_init(|| {
            // A random secret's hash; should the OS refuse randomness, a fixed string hashes just
            // as slowly, and nothing can match a dummy either way.
            let throwaway = ClientSecret::generate()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default();
            bcrypt::hash(throwaway, self.cost).unwrap_or_default()
        });
        let _ = self.verify(presented, dummy);
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
    fn a_verified_secret_is_recognised_without_bcrypt_until_the_hash_changes() {
        let hasher = SecretHasher::new(4).unwrap();
        let id = Uuid::new_v4();
        let secret = ClientSecret::generate().unwrap();
        let hash = hasher.hash(&secret).unwrap();
        assert!(!hasher.recently_verified(id, &secret, &hash));
        assert!(hasher.verify_and_remember(id, &secret, &hash));
        assert!(hasher.recently_verified(id, &secret, &hash));
        assert_eq!(hasher.verifications(), 1);
        let wrong = ClientSecret::generate().unwrap();
        assert!(
            !hasher.recently_verified(id, &wrong, &hash),
            "another secret misses"
        );
        let rotated = hasher.hash(&ClientSecret::generate().unwrap()).unwrap();
        assert!(
            !hasher.recently_verified(id, &secret, &rotated),
            "a new stored hash misses"
        );
        assert!(
            !hasher.recently_verified(Uuid::new_v4(), &secret, &hash),
            "another credential misses"
        );
    }

    #[test]
    fn a_wrong_secret_is_never_remembered() {
        let hasher = SecretHasher::new(4).unwrap();
        let id = Uuid::new_v4();
        let hash = hasher.hash(&ClientSecret::generate().unwrap()).unwrap();
        let wrong = ClientSecret::generate().unwrap();
        assert!(!hasher.verify_and_remember(id, &wrong, &hash));
        assert!(!hasher.recently_verified(id, &wrong, &hash));
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_after_its_lifetime() {
        let cache = VerifiedSecretCache::new(2, Duration::from_millis(50)).unwrap();
        let secret = ClientSecret::generate().unwrap();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            cache.remember(*id, "h", &secret);
        }
        assert_eq!(cache.entries.lock().unwrap().len(), 2);
        assert!(
            !cache.contains(ids[0], "h", &secret),
            "the oldest was evicted"
        );
        assert!(cache.contains(ids[2], "h", &secret));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.contains(ids[2], "h", &secret), "entries expire");
    }

    #[tokio::test]
    async fn identical_verifications_running_together_share_one_run_and_different_ones_do_not() {
        let hasher = SecretHasher::new(4).unwrap();
        let secret = ClientSecret::generate().unwrap();
        let same = hasher.verification_key("client-a", Some("$2b$hash"), &secret);
        let other = hasher.verification_key("client-b", Some("$2b$hash"), &secret);
        let runs = AtomicU64::new(0);
        let verify = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(true)
        };
        let answers = futures_util::future::join_all((0..10).map(|i| {
            hasher
                .in_flight
                .share(if i < 9 { same } else { other }, verify)
        }))
        .await;
        assert!(answers.iter().all(|a| *a == Ok(true)));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(hasher.in_flight.running(), 0);
        // Once the shared run is over, the next request verifies afresh.
        assert_eq!(hasher.in_flight.share(same, verify).await, Ok(true));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        // A request given up on mid-way (its client went away) leaves nothing behind.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(10),
            hasher.in_flight.share(other, || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, ()>(true)
            }),
        )
        .await;
        assert!(abandoned.is_err());
        assert_eq!(hasher.in_flight.running(), 0);
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
