//! What to do with a request for a URL's key set, given what was kept from earlier fetches.
//!
//! Synchronous and without a clock of its own: every decision takes `now`, so the rules are
//! tested by stepping a time forward rather than by sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentidp_core::client_keys::ClientKeySet;
use agentidp_core::remote_keys::RemoteKeysError;

/// The timing rules, a copy of those in the fetch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CachePolicy {
    pub default_freshness: Duration,
    pub min_freshness: Duration,
    pub max_freshness: Duration,
    pub refetch_interval: Duration,
    pub failure_backoff: Duration,
    pub stale_grace: Duration,
    pub max_urls: usize,
}

/// What a caller is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Fresh(Arc<ClientKeySet>),
    /// Past its freshness, within the grace: a fetch of it failed.
    Stale(Arc<ClientKeySet>),
    Failed(RemoteKeysError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Answer(Answer),
    Fetch,
}

#[derive(Debug)]
struct Good {
    set: Arc<ClientKeySet>,
    fetched_at: Instant,
    freshness: Duration,
}

#[derive(Debug)]
struct Failure {
    error: RemoteKeysError,
    at: Instant,
}

#[derive(Debug)]
struct Entry {
    good: Option<Good>,
    /// When the last fetch, good or failed, ended: what the unknown-kid refetch interval and the
    /// eviction order count from.
    last_fetch: Instant,
    /// The last fetch's error, if it failed.
    failure: Option<Failure>,
}

/// Elapsed times are compared rather than deadlines computed, so that no setting, however
/// large, can overflow an `Instant`.
fn elapsed(since: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(since)
}

impl Entry {
    fn fresh_set(&self, now: Instant) -> Option<&Arc<ClientKeySet>> {
        self.good
            .as_ref()
            .filter(|good| elapsed(good.fetched_at, now) < good.freshness)
            .map(|good| &good.set)
    }

    /// The last good set, if the grace after its freshness has not run out yet.
    fn stale_set(&self, now: Instant, grace: Duration) -> Option<&Arc<ClientKeySet>> {
        self.good
            .as_ref()
            .filter(|good| elapsed(good.fetched_at, now) < good.freshness.saturating_add(grace))
            .map(|good| &good.set)
    }

    fn answer_after_failure(
        &self,
        error: &RemoteKeysError,
        now: Instant,
        policy: &CachePolicy,
    ) -> Answer {
        if let Some(set) = self.fresh_set(now) {
            Answer::Fresh(Arc::clone(set))
        } else if let Some(set) = self.stale_set(now, policy.stale_grace) {
            Answer::Stale(Arc::clone(set))
        } else {
            Answer::Failed(error.clone())
        }
    }
}

/// Key sets and failed fetches by URL, bounded to `max_urls` URLs.
#[derive(Debug)]
pub(crate) struct KeySetCache {
    policy: CachePolicy,
    entries: HashMap<String, Entry>,
}

impl KeySetCache {
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a request for `url` is answered from what is kept or needs a fetch.
    pub fn decide(&self, url: &str, wanted_key: Option<&str>, now: Instant) -> Decision {
        let Some(entry) = self.entries.get(url) else {
            return Decision::Fetch;
        };
        let backing_off = entry
            .failure
            .as_ref()
            .filter(|failure| elapsed(failure.at, now) < self.policy.failure_backoff);
        if let Some(set) = entry.fresh_set(now) {
            let lacks_wanted = wanted_key.is_some_and(|kid| !set.has_key(kid));
            let may_refetch = backing_off.is_none()
                && elapsed(entry.last_fetch, now) >= self.policy.refetch_interval;
            return if lacks_wanted && may_refetch {
                Decision::Fetch
            } else {
                Decision::Answer(Answer::Fresh(Arc::clone(set)))
            };
        }
        match backing_off {
            Some(failure) => {
                Decision::Answer(entry.answer_after_failure(&failure.error, now, &self.policy))
            }
            None => Decision::Fetch,
        }
    }

    /// The freshness a response's `Cache-Control` (all its values, joined with commas) gives,
    /// within the policy's bounds. `no-store` and `no-cache` ask a cache not to serve without
    /// checking; the minimum is the closest this cache comes, to bound the fetches one URL costs.
    pub fn freshness(&self, cache_control: Option<&str>) -> Duration {
        let policy = &self.policy;
        let clamp = |wanted: Duration| wanted.clamp(policy.min_freshness, policy.max_freshness);
        let Some(header) = cache_control else {
            return clamp(policy.default_freshness);
        };
        let mut max_age = None;
        for directive in header.split(',') {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return policy.min_freshness;
            }
            if name.eq_ignore_ascii_case("max-age") && max_age.is_none() {
                let value = value.unwrap_or_default();
                // RFC 9111 §1.2.2: a value too large to represent is taken as very large; one
                // that is not a number makes the response stale at once.
                max_age = Some(
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        Duration::ZERO
                    } else {
                        value
                            .parse::<u64>()
                            .map_or(Duration::MAX, Duration::from_secs)
                    },
                );
            }
        }
        clamp(max_age.unwrap_or(policy.default_freshness))
    }

    pub fn record_success(
        &mut self,
        url: &str,
        set: Arc<ClientKeySet>,
        freshness: Duration,
        now: Instant,
    ) -> Answer {
        self.make_room_for(url);
        self.entries.insert(
            url.to_owned(),
            Entry {
                good: Some(Good {
                    set: Arc::clone(&set),
                    fetched_at: now,
                    freshness,
                }),
                last_fetch: now,
                failure: None,
            },
        );
        Answer::Fresh(set)
    }

    /// Remembers a failed fetch, so none is tried again before the backoff ends, and answers
    /// with the last good set while it is fresh or within the grace.
    pub fn record_failure(&mut self, url: &str, error: RemoteKeysError, now: Instant) -> Answer {
        self.make_room_for(url);
        let entry = self.entries.entry(url.to_owned()).or_insert(Entry {
            good: None,
            last_fetch: now,
            failure: None,
        });
        entry.last_fetch = now;
        let answer = entry.answer_after_failure(&error, now, &self.policy);
        entry.failure = Some(Failure { error, at: now });
        answer
    }

    /// Evicts the least recently fetched URL when `url` is new and the cache is full: a flood of
    /// registered URLs costs bounded memory, and what it pushes out is simply fetched again.
    fn make_room_for(&mut self, url: &str) {
        if self.entries.contains_key(url) || self.entries.len() < self.policy.max_urls {
            return;
        }
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_fetch)
            .map(|(url, _)| url.clone());
        if let Some(oldest) = oldest {
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const URL: &str = "https://keys.example.com/jwks.json";
    const SECOND: Duration = Duration::from_secs(1);

    fn policy() -> CachePolicy {
        CachePolicy {
            default_freshness: 300 * SECOND,
            min_freshness: 60 * SECOND,
            max_freshness: 24 * 3600 * SECOND,
            refetch_interval: 60 * SECOND,
            failure_backoff: 30 * SECOND,
            stale_grace: 3600 * SECOND,
            max_urls: 3,
        }
    }

    /// A set with one Ed25519 key named `kid` (the key's value is never used here).
    fn set(kid: &str) -> Arc<ClientKeySet> {
        let jwks = json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": kid,
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        }]});
        Arc::new(ClientKeySet::from_published_jwks(&jwks).unwrap())
    }

    fn fresh(set: &Arc<ClientKeySet>) -> Decision {
        Decision::Answer(Answer::Fresh(Arc::clone(set)))
    }

    #[test]
    fn an_unknown_url_is_fetched() {
        let cache = KeySetCache::new(policy());
        assert_eq!(cache.decide(URL, None, Instant::now()), Decision::Fetch);
    }

    #[test]
    fn a_set_is_served_while_fresh_and_fetched_again_after() {
        let start = Instant::now();
        let mut cache = KeySetCache::new(policy());
        let one = set("one");
        cache.record_success(URL, Arc::clone(&one), 120 * SECOND, start);
        assert_eq!(cache.decide(URL, None, start + 119 * SECOND), fresh(&one));
        assert_eq!(
            cache.decide(URL, Some("one"), start + 119 * SECOND),
            fresh(&one)
        );
        assert_eq!(
            cache.decide(URL, None, start + 120 * SECOND),
            Decision::Fetch
        );
    }

    #[test]
    fn a_missing_kid_refetches_at_most_once_per_interval() {
        let start = Instant::now();
        let mut cache = KeySetCache::new(policy());
        let one = set("one");
        cache.record_success(URL, Arc::clone(&one), 3600 * SECOND, start);
        assert_eq!(
            cache.decide(URL, Some("two"), start + 59 * SECOND),
            fresh(&one)
        );
        assert_eq!(
            cache.decide(URL, Some("two"), start + 60 * SECOND),
            Decision::Fetch
        );
        // The refetch found the same set: the next made-up kid waits another interval.
        cache.record_success(URL, Arc::clone(&one), 3600 * SECOND, start + 61 * SECOND);
        assert_eq!(
            cache.decide(URL, Some("two"), start + 62 * SECOND),
            fresh(&one)
        );
        assert_eq!(
            cache.decide(URL, Some("two"), start + 121 * SECOND),
            Decision::Fetch
        );
    }

    #[test]
    fn a_failed_refetch_for_a_missing_kid_keeps_serving_the_fresh_set() {
        let start = Instant::now();
        let mut cache = KeySetCache::new(policy());
        let one = set("one");
        cache.record_success(URL, Arc::clone(&one), 3600 * SECOND, start);
        let answer = cache.record_failure(URL, RemoteKeysError::Status(503), start + 60 * SECOND);
        assert_eq!(answer, Answer::Fresh(Arc::clone(&one)));
        // Neither the backoff nor the refetch interval has run out.
        assert_eq!(
            cache.decide(URL, Some("two"), start + 89 * SECOND),
            fresh(&one)
        );
        assert_eq!(
            cache.decide(URL, Some("two"), start + 119 * SECOND),
            fresh(&one)
        );
        assert_eq!(
            cache.decide(URL, Some("two"), start + 120 * SECOND),
            Decision::Fetch
        );
    }

    #[test]
    fn a_failure_without_a_good_set_is_remembered_for_the_backoff() {
        let start = Instant::now();
        let mut cache = KeySetCache::new(policy());
        let answer = cache.record_failure(URL, RemoteKeysError::TimedOut, start);
        assert_eq!(answer, Answer::Failed(RemoteKeysError::TimedOut));
        assert_eq!(
            cache.decide(URL, None, start + 29 * SECOND),
            Decision::Answer(Answer::Failed(RemoteKeysError::TimedOut))
        );
        assert_eq!(
            cache.decide(URL, None, start + 30 * SECOND),
            Decision::Fetch
        );
    }

    #[test]
    fn a_stale_set_is_served_within_the_grace_after_a_failed_refetch_and_refused_after() {
        let start = Instant::now();
        let mut cache = KeySetCache::new(policy());
        let one = set("one");
        cache.record_success(URL, Arc::clone(&one), 60 * SECOND, start);
        let failed_at = start + 100 * SECOND;
        let answer = cache.record_failure(URL, RemoteKeysError::Status(500), failed_at);
        assert_eq!(answer, Answer::Stale(Arc::clone(&one)));
        assert_eq!(
            cache.decide(URL, None, failed_at + 10 * SECOND),
            Decision::Answer(Answer::Stale(Arc::clone(&one)))
        );
        assert_eq!(
            cache.decide(URL, None, failed_at + 30 * SECOND),
            Decision::Fetch
        );
        // The grace counts from the end of freshness, not from the failure: a set is never
        // served more than its freshness and the grace after it was fetched.
        let late = start + (60 + 3600) * SECOND;
        assert_eq!(
            cache.record_failure(URL, RemoteKeysError::Status(500), late),
            Answer::Failed(RemoteKeysError::Status(500))
        );
        assert_eq!(
            cache.decide(URL, None, late + SECOND),
            Decision::Answer(Answer::Failed(RemoteKeysError::Status(500)))
        );
    }

    #[test]
    fn a_good_fetch_clears_the_remembered_failure() {
        let start = Instant::now();
        let mut cache = KeySetCache::new(policy());
        cache.record_failure(URL, RemoteKeysError::TimedOut, start);
        let one = set("one");
        cache.record_success(URL, Arc::clone(&one), 60 * SECOND, start + 31 * SECOND);
        assert_eq!(cache.decide(URL, None, start + 32 * SECOND), fresh(&one));
    }

    #[test]
    fn the_least_recently_fetched_url_is_evicted_when_full() {
        let start = Instant::now();
        let mut cache = KeySetCache::new(policy());
        let url = |n: u32| format!("https://keys{n}.example.com/jwks");
        for n in 0..3 {
            cache.record_success(&url(n), set("one"), 3600 * SECOND, start + n * SECOND);
        }
        // The oldest is fetched again, so the second oldest is the one evicted next.
        cache.record_success(&url(0), set("one"), 3600 * SECOND, start + 10 * SECOND);
        cache.record_failure(&url(3), RemoteKeysError::TimedOut, start + 11 * SECOND);
        assert_eq!(cache.len(), 3);
        let now = start + 12 * SECOND;
        assert_eq!(cache.decide(&url(1), None, now), Decision::Fetch);
        assert!(matches!(
            cache.decide(&url(0), None, now),
            Decision::Answer(_)
        ));
        assert!(matches!(
            cache.decide(&url(2), None, now),
            Decision::Answer(_)
        ));
        assert!(matches!(
            cache.decide(&url(3), None, now),
            Decision::Answer(_)
        ));
    }

    #[test]
    fn cache_control_max_age_is_honoured_within_the_bounds() {
        let cache = KeySetCache::new(policy());
        let freshness = |header| cache.freshness(header);
        assert_eq!(freshness(None), 300 * SECOND);
        assert_eq!(freshness(Some("public, max-age=600")), 600 * SECOND);
        assert_eq!(freshness(Some("MAX-AGE = \"900\"")), 900 * SECOND);
        assert_eq!(freshness(Some("max-age=5")), 60 * SECOND);
        assert_eq!(freshness(Some("max-age=0")), 60 * SECOND);
        assert_eq!(freshness(Some("max-age=31536000")), 24 * 3600 * SECOND);
        assert_eq!(
            freshness(Some("max-age=99999999999999999999999")),
            24 * 3600 * SECOND
        );
        assert_eq!(freshness(Some("max-age=soon")), 60 * SECOND);
        assert_eq!(freshness(Some("max-age=-1")), 60 * SECOND);
        assert_eq!(freshness(Some("public")), 300 * SECOND);
        assert_eq!(freshness(Some("max-age=600,max-age=5")), 600 * SECOND);
    }

    #[test]
    fn no_store_and_no_cache_give_the_minimum_freshness() {
        let cache = KeySetCache::new(policy());
        assert_eq!(cache.freshness(Some("no-store")), 60 * SECOND);
        assert_eq!(cache.freshness(Some("max-age=600, no-cache")), 60 * SECOND);
        assert_eq!(cache.freshness(Some("No-Store,max-age=600")), 60 * SECOND);
        assert_eq!(
            cache.freshness(Some("no-cache=\"set-cookie\"")),
            60 * SECOND
        );
    }
}
