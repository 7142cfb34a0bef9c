//! Throttles counted in the store, so they hold across Lambda instances: the lockouts that
//! answer repeated failed client authentications, and a per-organization request rate on the
//! management API. Windows are fixed and named in the counter keys, so a lockout lifts by itself
//! when its window ends.
//!
//! A client id is public (it is in every token), so no lockout may be one that anyone can set
//! off for a client everywhere: the hard lockout is of a client at one source address, and the
//! limit on one client from every address together lasts a minute at most. A secret the
//! instance has already verified passes every lockout (see `authenticate_client`).

use std::net::{IpAddr, Ipv6Addr};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Caller, Idp, ServiceError, ServiceResult};
use crate::store::Write;
use crate::store::{Commit, OrgReader, ThrottleReader};

/// The window of the per-client limit, which `client_failures_per_minute` names.
const CLIENT_WINDOW_SECONDS: i64 = 60;

/// A fixed window of time: which one `now` is in, and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub index: i64,
    pub ends_at: DateTime<Utc>,
}

impl Window {
    pub fn containing(now: DateTime<Utc>, seconds: i64) -> Self {
        let seconds = seconds.max(1);
        let index = now.timestamp().div_euclid(seconds);
        let ends_at = DateTime::from_timestamp((index + 1) * seconds, 0).unwrap_or(now);
        Self { index, ends_at }
    }

    /// Whole seconds until the window ends, at least one: the `Retry-After` value.
    pub fn retry_after(&self, now: DateTime<Utc>) -> u64 {
        let millis = (self.ends_at - now).num_milliseconds();
        u64::try_from((millis + 999).div_euclid(1000))
            .unwrap_or(1)
            .max(1)
    }
}

/// What a counter that refuses attempts limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// One client id at one source address, for the lockout window.
    ClientAtAddress,
    /// One source address, whatever the client id, for the lockout window.
    Address,
    /// One client id from every address together, for the rest of the minute.
    Client,
}

impl LockKind {
    /// The `token.denied` reason of the first refusal of a window. The address's lockout is
    /// not audited: it belongs to no organization.
    pub fn audit_reason(self) -> Option<&'static str> {
        match self {
            LockKind::ClientAtAddress => Some("locked_out"),
            LockKind::Client => Some("slowed_down"),
            LockKind::Address => None,
        }
    }
}

/// A failure counter in the store, and how many failures in its window it takes to refuse.
#[derive(Debug, Clone)]
pub(crate) struct Counter {
    kind: LockKind,
    key: String,
    window: Window,
    limit: u64,
}

impl Counter {
    fn tally(&self) -> Write {
        Write::Tally {
            key: self.key.clone(),
            expires_at: self.window.ends_at,
        }
    }
}

/// The counters one client authentication attempt touches. Of two locks that end together, the
/// first in this order is the one reported.
#[derive(Debug, Clone)]
pub(crate) struct AuthCounters(Vec<Counter>);

impl AuthCounters {
    fn keys(&self) -> Vec<String> {
        self.0.iter().map(|c| c.key.clone()).collect()
    }

    /// One more failure on each counter: what a guess costs.
    pub fn tallies(&self) -> Vec<Write> {
        self.0.iter().map(Counter::tally).collect()
    }
}

/// An attempt refused before it runs, unless the instance has verified its secret already.
#[derive(Debug, Clone)]
pub(crate) struct Lock {
    pub kind: LockKind,
    pub retry_after: u64,
    pub until: DateTime<Utc>,
    pub limit: u64,
    /// The first refusal of this counter's window, the one that is audited: its counter is then
    /// raised past the limit ([`Lock::first_refusal`]), so later refusals write nothing.
    pub first: bool,
    counter: Counter,
}

impl Lock {
    /// The write that marks the first refusal as made.
    pub fn first_refusal(&self) -> Write {
        self.counter.tally()
    }
}

/// The address an attempt is counted under. An IPv6 address counts by its /64, which one
/// subscriber usually holds whole: hopping within it gains an attacker nothing. Anything that
/// is not an address (no front end of ours passes one) is not counted by address.
fn counted_address(source_ip: &str) -> Option<String> {
    match source_ip.trim().parse::<IpAddr>().ok()?.to_canonical() {
        IpAddr::V4(v4) => Some(v4.to_string()),
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !u128::from(u64::MAX);
            Some(format!("{}/64", Ipv6Addr::from(network)))
        }
    }
}

impl<S: OrgReader + ThrottleReader + Commit + ?Sized> Idp<S> {
    pub(crate) fn auth_counters(&self, client_id: &str, source_ip: Option<&str>) -> AuthCounters {
        let limits = self.config.throttle;
        let now = self.now();
        let window = Window::containing(now, limits.lockout_window_seconds);
        let minute = Window::containing(now, CLIENT_WINDOW_SECONDS);
        let address = source_ip.and_then(counted_address);
        // A client id that is not a UUID cannot be a client; it is counted only by address,
        // which also keeps keys bounded in size.
        let client = Uuid::parse_str(client_id).ok();
        let mut counters = Vec::with_capacity(3);
        if let Some(id) = client {
            let at = address.as_deref().unwrap_or("-");
            counters.push(Counter {
                kind: LockKind::ClientAtAddress,
                key: format!("auth-client-address#{id}#{at}#{}", window.index),
                window,
                limit: limits.client_failures,
            });
        }
        if let Some(address) = &address {
            counters.push(Counter {
                kind: LockKind::Address,
                key: format!("auth-address#{address}#{}", window.index),
                window,
                limit: limits.address_failures,
            });
        }
        if let Some(id) = client {
            counters.push(Counter {
                kind: LockKind::Client,
                key: format!("auth-client-minute#{id}#{}", minute.index),
                window: minute,
                limit: limits.client_failures_per_minute,
            });
        }
        AuthCounters(counters)
    }

    /// The client id's credential, the lock, if any, its attempt meets, and the claim of
    /// `resource` when asked for, from one read round trip.
    pub(crate) async fn client_standing(
        &self,
        client_id: Option<Uuid>,
        counters: &AuthCounters,
        resource: Option<(Uuid, &str)>,
    ) -> ServiceResult<(
        Option<crate::domain::Credential>,
        Option<Lock>,
        Option<crate::domain::ResourceTarget>,
    )> {
        let now = self.now();
        let standing = self
            .store
            .client_standing(client_id, &counters.keys(), resource, now)
            .await?;
        // The lock that lasts longest: `Retry-After` must not send the client back too early.
        let lock = counters
            .0
            .iter()
            .zip(standing.tallies)
            .filter(|(counter, count)| *count >= counter.limit)
            .min_by_key(|(counter, _)| std::cmp::Reverse(counter.window.ends_at))
            .map(|(counter, count)| Lock {
                kind: counter.kind,
                retry_after: counter.window.retry_after(now),
                until: counter.window.ends_at,
                limit: counter.limit,
                first: count == counter.limit,
                counter: counter.clone(),
            });
        Ok((standing.credential, lock, standing.resource))
    }

    /// Counts one management request of the caller's organization, refusing it past the
    /// per-minute limit.
    pub async fn admit_org_request(&self, caller: &Caller) -> ServiceResult<()> {
        let now = self.now();
        let window = Window::containing(now, 60);
        let key = format!("org-requests#{}#{}", caller.org_id, window.index);
        // Counting first and checking the new value is one round trip; a refused request is
        // counted too, which only keeps a flooding organization refused.
        let count = self.store.add_tally(&key, window.ends_at).await?;
        if count > self.config.throttle.org_requests_per_minute {
            return Err(ServiceError::RateLimited {
                retry_after: window.retry_after(now),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_by_ipv4_address_and_ipv6_64() {
        assert_eq!(
            counted_address("203.0.113.7").as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            counted_address("::ffff:203.0.113.7").as_deref(),
            Some("203.0.113.7"),
            "an IPv4 client seen over IPv6 is the same client"
        );
        assert_eq!(
            counted_address("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
            counted_address("2001:db8:1:2::1"),
        );
        assert_eq!(
            counted_address("2001:db8:1:2::1").as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_ne!(
            counted_address("2001:db8:1:2::1"),
            counted_address("2001:db8:1:3::1")
        );
        assert_eq!(counted_address("not an address"), None);
        assert_eq!(counted_address(&"1".repeat(10_000)), None);
    }

    #[test]
    fn windows_are_aligned_and_retry_after_counts_to_their_end() {
        let at = DateTime::from_timestamp(1_000_000_005, 0).unwrap();
        let window = Window::containing(at, 10);
        assert_eq!(window.index, 100_000_000);
        assert_eq!(window.ends_at.timestamp(), 1_000_000_010);
        assert_eq!(window.retry_after(at), 5);
        assert_eq!(
            Window::containing(window.ends_at, 10).index,
            window.index + 1
        );
    }
}
