//! Fetches the key sets published at URLs (a client's `jwksUri`) for the operations, through
//! the port [`RemoteKeySets`].
//!
//! The URL is chosen by whoever registers a client, so a fetch must not be a way to reach what
//! the IdP can reach and they cannot: every address a host resolves to is checked against the
//! [`KeyFetchNetwork`], redirects are not followed, no proxy is used, and time and size are
//! bounded. And since a token request must not cost a fetch, sets are kept per URL for as long
//! as their server allows, within bounds, with one fetch at a time per URL.

mod cache;
mod fetch;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use agentidp_core::client_keys::ClientKeySet;
use agentidp_core::remote_keys::{JwksUri, KeyFetchNetwork, RemoteKeySets, RemoteKeysError};
use async_trait::async_trait;

use crate::cache::{Answer, CachePolicy, Decision, KeySetCache};

/// The limits and cache timings. The defaults are the production ones; tests shorten them.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// Until the TCP (and TLS) connection is up.
    pub connect_timeout: Duration,
    /// For the whole fetch, from resolving the host to the body's last byte: a server that
    /// drips its answer holds a token request no longer than this.
    pub response_timeout: Duration,
    /// Real key sets are a few KiB; past this the body is abandoned, whatever its
    /// Content-Length said.
    pub max_body_bytes: usize,
    /// How long a set is used without a fetch when its response has no `Cache-Control` max-age.
    pub default_freshness: Duration,
    /// The least a set is kept, whatever `Cache-Control` says (also for `no-store`, `no-cache`
    /// and `max-age=0`): what bounds the fetches one URL can cause.
    pub min_freshness: Duration,
    /// The most a set is kept, however long its server allows: a key the owner withdrew
    /// stops working within this.
    pub max_freshness: Duration,
    /// A fresh set without the kid an assertion names is fetched again at most this often per
    /// URL, so a rotated key works at once and made-up kids do not cause a fetch each.
    pub unknown_kid_refetch_interval: Duration,
    /// After a failed fetch, none of the same URL before this has passed: a broken key server
    /// is not hammered by every token request of its client.
    pub failure_backoff: Duration,
    /// After a set's freshness ends, while fetching it again fails, it is still served this
    /// long (counted from the end of freshness), so that a key server's short outage does not
    /// stop its clients.
    pub stale_grace: Duration,
    /// The URLs kept at most; the least recently fetched is evicted first.
    pub max_cached_urls: usize,
    /// DER certificates trusted besides Mozilla's roots: for a test's self-signed server.
    pub extra_root_certificates: Vec<Vec<u8>>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(3),
            max_body_bytes: 64 * 1024,
            default_freshness: 5 * MINUTE,
            min_freshness: MINUTE,
            max_freshness: 24 * 60 * MINUTE,
            unknown_kid_refetch_interval: MINUTE,
            failure_backoff: Duration::from_secs(30),
            stale_grace: 60 * MINUTE,
            max_cached_urls: 1024,
            extra_root_certificates: Vec::new(),
        }
    }
}

impl fmt::Debug for FetchSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchSettings")
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("default_freshness", &self.default_freshness)
            .field("min_freshness", &self.min_freshness)
            .field("max_freshness", &self.max_freshness)
            .field(
                "unknown_kid_refetch_interval",
                &self.unknown_kid_refetch_interval,
            )
            .field("failure_backoff", &self.failure_backoff)
            .field("stale_grace", &self.stale_grace)
            .field("max_cached_urls", &self.max_cached_urls)
            .field(
                "extra_root_certificates",
                &self.extra_root_certificates.len(),
            )
            .finish()
    }
}

impl FetchSettings {
    fn check(&self) -> Result<(), FetcherBuildError> {
        let problem = if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            "the timeouts must be longer than zero"
        } else if self.max_body_bytes == 0 {
            "the body size limit must be at least one byte"
        } else if self.min_freshness > self.max_freshness {
            "the minimum freshness must not exceed the maximum"
        } else if self.max_cached_urls == 0 {
            "at least one URL must be cacheable"
        } else {
            return Ok(());
        };
        Err(FetcherBuildError::Settings(problem))
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy {
            default_freshness: self.default_freshness,
            min_freshness: self.min_freshness,
            max_freshness: self.max_freshness,
            refetch_interval: self.unknown_kid_refetch_interval,
            failure_backoff: self.failure_backoff,
            stale_grace: self.stale_grace,
            max_urls: self.max_cached_urls,
        }
    }
}

/// Why a fetcher could not be built: a configuration error, found at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetcherBuildError {
    #[error("the key fetch settings are inconsistent: {0}")]
    Settings(&'static str),
    #[error("an extra root certificate is not usable: {0}")]
    RootCertificate(String),
    #[error("the TLS configuration could not be built: {0}")]
    Tls(String),
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

/// Fetches key sets over HTTPS and keeps them per URL. One is built per process and shared:
/// the cache and the connection pool are its point.
pub struct KeySetFetcher {
    network: KeyFetchNetwork,
    settings: FetchSettings,
    client: reqwest::Client,
    cache: Mutex<KeySetCache>,
    /// One lock per URL being fetched, so that callers arriving during a fetch wait for its
    /// result instead of fetching too.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for KeySetFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySetFetcher")
            .field("network", &self.network)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The guarded data stays consistent at every point a panic could occur, so a poisoned lock
/// is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KeySetFetcher {
    /// A fetcher with the production limits.
    pub fn new(network: KeyFetchNetwork) -> Result<Self, FetcherBuildError> {
        Self::with_settings(network, FetchSettings::default())
    }

    pub fn with_settings(
        network: KeyFetchNetwork,
        settings: FetchSettings,
    ) -> Result<Self, FetcherBuildError> {
        settings.check()?;
        let client = fetch::build_client(network, &settings)?;
        Ok(Self {
            network,
            cache: Mutex::new(KeySetCache::new(settings.cache_policy())),
            settings,
            client,
            flights: Mutex::new(HashMap::new()),
        })
    }

    pub fn network(&self) -> KeyFetchNetwork {
        self.network
    }

    fn decide(&self, url: &str, wanted_key: Option<&str>) -> Decision {
        lock(&self.cache).decide(url, wanted_key, Instant::now())
    }

    /// The lock that makes fetches of `url` one at a time. Locks nobody holds or waits for are
    /// dropped once there are as many as URLs kept, which bounds the map without a clean-up
    /// step that a cancelled caller could skip.
    fn flight_lock(&self, url: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = lock(&self.flights);
        if !flights.contains_key(url) && flights.len() >= self.settings.max_cached_urls {
            flights.retain(|_, flight| Arc::strong_count(flight) > 1);
        }
        Arc::clone(flights.entry(url.to_owned()).or_default())
    }

    async fn fetch(&self, uri: &JwksUri) -> Answer {
        let result = match fetch::check_destination(uri, self.network) {
            Err(error) => Err(error),
            Ok(()) => tokio::time::timeout(
                self.settings.response_timeout,
                fetch::download(&self.client, uri, self.settings.max_body_bytes),
            )
            .await
            .unwrap_or(Err(RemoteKeysError::TimedOut)),
        };
        let now = Instant::now();
        match result {
            Ok(fetched) => {
                let keys = fetched.set.key_ids().len();
                let (answer, freshness) = {
                    let mut cache = lock(&self.cache);
                    let freshness = cache.freshness(fetched.cache_control.as_deref());
                    let set = Arc::new(fetched.set);
                    (
                        cache.record_success(uri.as_str(), set, freshness, now),
                        freshness,
                    )
                };
                tracing::info!(
                    url = %uri,
                    keys,
                    fresh_for_seconds = freshness.as_secs(),
                    "fetched a published key set"
                );
                answer
            }
            Err(error) => {
                tracing::warn!(
                    url = %uri,
                    reason = error.as_str(),
                    error = %error,
                    "could not fetch a published key set"
                );
                let answer = lock(&self.cache).record_failure(uri.as_str(), error, now);
                if let Answer::Stale(_) = answer {
                    tracing::warn!(
                        url = %uri,
                        "serving the last good key set past its freshness, within the grace"
                    );
                }
                answer
            }
        }
    }
}

fn into_result(answer: Answer) -> Result<Arc<ClientKeySet>, RemoteKeysError> {
    match answer {
        Answer::Fresh(set) | Answer::Stale(set) => Ok(set),
        Answer::Failed(error) => Err(error),
    }
}

#[async_trait]
impl RemoteKeySets for KeySetFetcher {
    async fn key_set(
        &self,
        uri: &JwksUri,
        wanted_key: Option<&str>,
    ) -> Result<Arc<ClientKeySet>, RemoteKeysError> {
        let url = uri.as_str();
        if let Decision::Answer(answer) = self.decide(url, wanted_key) {
            if let Answer::Failed(error) = &answer {
                tracing::debug!(url, reason = error.as_str(), "a recent fetch failed");
            }
            return into_result(answer);
        }
        let flight = self.flight_lock(url);
        let _one_at_a_time = flight.lock().await;
        // Whoever held the lock before may have fetched what this caller needs.
        let answer = match self.decide(url, wanted_key) {
            Decision::Answer(answer) => answer,
            Decision::Fetch => self.fetch(uri).await,
        };
        into_result(answer)
    }
}
