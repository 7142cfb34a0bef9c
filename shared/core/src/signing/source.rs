//! Where a running function gets its key set: fixed (the local server's file), or read from a
//! secret that a rotation changes, cached, and re-read on schedule or for an unknown key id.

use std::sync::Arc;

use chrono::Utc;

use super::{Jwks, KeyError, KeySet, KeySetDocument, MAX_TOKEN_BYTES, SigningAlgorithm};
use crate::error::Chain;

/// Where the key set comes from. A secret (Secrets Manager on AWS) is read lazily and re-read after
/// `refresh_after`, so a rotation reaches warm instances, and a failed read at cold start is
/// retried on the next call instead of needing a restart. A token whose `kid` the cached set
/// does not hold triggers an early re-read (see [`KeySource::keys_for_token`]).
pub enum KeySource {
    Fixed(Arc<KeySet>),
    /// Read from a secret that a rotation changes, and cached.
    Cached(CachedKeys),
}

/// A secret holding a key set, as a store of record outside this process (Secrets Manager on
/// AWS, in `agentidp-aws`) presents it: one read of its current text.
#[async_trait::async_trait]
pub trait KeySecret: Send + Sync {
    /// The secret's current text; [`KeyError::Unavailable`] when it cannot be read now.
    async fn read_current(&self) -> Result<String, KeyError>;
    /// How errors and logs name the secret.
    fn name(&self) -> &str;
}

/// What a secret holds, and so what the set loaded from it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretContents {
    /// A [`KeySetDocument`]: private keys, which sign.
    PrivateKeys,
    /// A [`Jwks`]: public keys, which only verify.
    PublicKeys,
}

/// A key set read from a [`KeySecret`], kept for `refresh_after`, re-read by one request at a
/// time, and re-read early when a token names a key the cached set lacks.
pub struct CachedKeys {
    secret: Box<dyn KeySecret>,
    contents: SecretContents,
    refresh_after: std::time::Duration,
    cached: tokio::sync::RwLock<Option<(Arc<KeySet>, std::time::Instant)>>,
    /// Held by the one request re-reading the secret on schedule.
    reading: tokio::sync::Mutex<()>,
    /// When an unknown `kid` last made this instance re-read the secret early.
    last_early_read: std::sync::Mutex<Option<std::time::Instant>>,
}

/// At most one early re-read per this interval per instance, so tokens with made-up key ids
/// cannot turn into a stream of Secrets Manager calls.
pub const UNKNOWN_KID_REREAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl CachedKeys {
    /// The private key set `secret` holds (a [`KeySetDocument`]): it signs and verifies.
    pub fn signing(secret: impl KeySecret + 'static, refresh_after: std::time::Duration) -> Self {
        Self::reading(Box::new(secret), SecretContents::PrivateKeys, refresh_after)
    }

    /// The public key set `secret` holds (a [`Jwks`], as the rotation publishes it): it
    /// verifies, and [`KeySet::sign`] refuses with [`KeyError::VerifyOnly`]. What the functions
    /// that only verify tokens use, so that they never hold a private key.
    pub fn verify_only(
        secret: impl KeySecret + 'static,
        refresh_after: std::time::Duration,
    ) -> Self {
        Self::reading(Box::new(secret), SecretContents::PublicKeys, refresh_after)
    }

    fn reading(
        secret: Box<dyn KeySecret>,
        contents: SecretContents,
        refresh_after: std::time::Duration,
    ) -> Self {
        Self {
            secret,
            contents,
            refresh_after,
            cached: tokio::sync::RwLock::new(None),
            reading: tokio::sync::Mutex::new(()),
            last_early_read: std::sync::Mutex::new(None),
        }
    }

    /// Re-reads the secret before `refresh_after` because a token names a key the cached set
    /// lacks: after a rotation, a new instance signs with the new key while warm instances still
    /// hold the set from before it. `None` when nothing newer could be had (not a plausible new
    /// key id, rate-limited, or the read failed), and the caller keeps the set it has.
    ///
    /// Anyone can present a token, so the checks come before any lock: the key id must not be
    /// older than the newest key held (ours begin with their creation time), and at most one early
    /// read per [`UNKNOWN_KID_REREAD_INTERVAL`] runs. The read itself holds no lock, so requests
    /// go on with the cached set meanwhile.
    async fn reread_for(&self, kid: &str, held: &KeySet) -> Option<Arc<KeySet>> {
        if !held.could_be_newer(kid) {
            return None;
        }
        {
            let mut last = self.last_early_read.lock().ok()?;
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_REREAD_INTERVAL) {
                return None;
            }
            *last = Some(std::time::Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                *self.cached.write().await = Some((keys.clone(), std::time::Instant::now()));
                Some(keys)
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "re-reading the signing keys for an unknown key id failed");
                None
            }
        }
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, KeyError> {
        let json = self.secret.read_current().await?;
        let json = json.as_str();
        let loaded = match self.contents {
            SecretContents::PrivateKeys => KeySet::from_document(&KeySetDocument::parse(json)?),
            SecretContents::PublicKeys => KeySet::from_jwks(&Jwks::parse(json)?),
        };
        match loaded {
            Ok(keys) => Ok(Arc::new(keys)),
            // A new stack's secrets hold no key until its first rotation, and the public one also
            // until a rotation after the upgrade that added it (docs/deploy.md): not ready yet
            // (503), rather than broken (500).
            Err(KeyError::Empty) => Err(KeyError::Unavailable {
                context: format!("the key secret {} holds no key yet", self.secret.name()),
                source: None,
            }),
            Err(e) => Err(e),
        }
    }

    async fn get(&self) -> Result<Arc<KeySet>, KeyError> {
        let cached = self.cached.read().await.clone();
        let stale = match cached {
            Some((keys, loaded)) if loaded.elapsed() < self.refresh_after => return Ok(keys),
            Some((keys, _)) => Some(keys),
            None => None,
        };
        // One request re-reads the secret. While it waits for Secrets Manager, the others go on
        // with the set they have; only when there is none yet (a cold start) do they wait.
        let _reading = match (&stale, self.reading.try_lock()) {
            (_, Ok(reading)) => reading,
            (Some(keys), Err(_)) => return Ok(keys.clone()),
            (None, Err(_)) => self.reading.lock().await,
        };
        // Another request may have read it while this one waited.
        if let Some((keys, loaded)) = self.cached.read().await.as_ref()
            && loaded.elapsed() < self.refresh_after
        {
            return Ok(keys.clone());
        }
        match self.fetch().await {
            Ok(keys) => {
                *self.cached.write().await = Some((keys.clone(), std::time::Instant::now()));
                Ok(keys)
            }
            // A stale key set still verifies and signs correctly; keep serving it while the
            // secret cannot be read, and try again on the next call.
            Err(e) => match stale {
                Some(keys) => {
                    tracing::warn!(error = %Chain(&e), "re-reading the signing keys failed; using the cached set");
                    Ok(keys)
                }
                None => Err(e),
            },
        }
    }
}

impl KeySource {
    pub async fn keys(&self) -> Result<Arc<KeySet>, KeyError> {
        match self {
            KeySource::Fixed(keys) => Ok(keys.clone()),
            KeySource::Cached(source) => source.get().await,
        }
    }

    /// The key set to verify `token` with: the cached one, or, when the token's `kid` is not in
    /// it, the secret's current set read again (at most once per
    /// [`UNKNOWN_KID_REREAD_INTERVAL`]), so a token signed by a key newer than this instance's
    /// cache verifies without waiting for the regular refresh.
    pub async fn keys_for_token(&self, token: &str) -> Result<Arc<KeySet>, KeyError> {
        let keys = self.keys().await?;
        let KeySource::Cached(source) = self else {
            return Ok(keys);
        };
        let kid = (token.len() <= MAX_TOKEN_BYTES)
            .then(|| jsonwebtoken::decode_header(token).ok())
            .flatten()
            .and_then(|header| header.kid);
        match kid {
            Some(kid) if !keys.holds(&kid) => {
                Ok(source.reread_for(&kid, &keys).await.unwrap_or(keys))
            }
            _ => Ok(keys),
        }
    }

    /// The local server's keys: `path` if it exists, else a new key written there (mode 0600).
    pub fn load_or_create_file(
        path: &std::path::Path,
        alg: SigningAlgorithm,
    ) -> Result<Self, KeyError> {
        let document = match std::fs::read_to_string(path) {
            Ok(json) => KeySetDocument::parse(&json)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let document = KeySetDocument::generate(alg, Utc::now())?;
                crate::files::write_private(path, document.to_json()?.as_bytes()).map_err(|e| {
                    KeyError::Unavailable {
                        context: format!("writing {}", path.display()),
                        source: Some(Box::new(e)),
                    }
                })?;
                document
            }
            Err(e) => {
                return Err(KeyError::Unavailable {
                    context: format!("reading {}", path.display()),
                    source: Some(Box::new(e)),
                });
            }
        };
        Ok(KeySource::Fixed(Arc::new(KeySet::from_document(
            &document,
        )?)))
    }
}
