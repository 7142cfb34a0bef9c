//! Throttles counted in the store, so they hold across Lambda instances: lockout of a client id
//! or a source address after repeated failed authentications, and a per-organization request
//! rate on the management API. Windows are fixed and named in the counter keys, so a lockout
//! lifts by itself when its window ends.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Caller, Idp, ServiceError, ServiceResult};
use crate::store::Write;

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

/// The counters one client authentication attempt touches. A client id that is not a UUID
/// cannot be a client; it is counted only by address, which also keeps keys bounded in size.
#[derive(Debug, Clone)]
pub(crate) struct AuthCounters {
    pub client: Option<String>,
    pub address: Option<String>,
    pub window: Window,
}

impl AuthCounters {
    fn keys(&self) -> Vec<String> {
        self.client
            .iter()
            .chain(self.address.iter())
            .cloned()
            .collect()
    }

    /// One more failure on each counter.
    pub fn tallies(&self) -> Vec<Write> {
        self.keys()
            .into_iter()
            .map(|key| Write::Tally {
                key,
                expires_at: self.window.ends_at,
            })
            .collect()
    }
}

/// The state of a client authentication attempt's counters before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lockout {
    Open,
    /// Locked until the window ends. `first` marks the first refused attempt of this window for
    /// the client, the one that is audited; later ones are only counted.
    Locked {
        retry_after: u64,
        first: bool,
    },
}

impl Idp {
    pub(crate) fn auth_counters(&self, client_id: &str, source_ip: Option<&str>) -> AuthCounters {
        let window = Window::containing(self.now(), self.config.throttle.lockout_window_seconds);
        AuthCounters {
            client: Uuid::parse_str(client_id)
                .ok()
                .map(|id| format!("auth-client#{id}#{}", window.index)),
            // Addresses are short; an absurd one from a misbehaving front end is not counted.
            address: source_ip
                .filter(|ip| ip.len() <= 64)
                .map(|ip| format!("auth-address#{ip}#{}", window.index)),
            window,
        }
    }

    /// The client id's credential and whether the attempt may run at all, from one read round
    /// trip. A locked-out attempt never runs bcrypt.
    pub(crate) async fn client_standing(
        &self,
        client_id: Option<Uuid>,
        counters: &AuthCounters,
    ) -> ServiceResult<(Option<crate::domain::Credential>, Lockout)> {
        let now = self.now();
        let (credential, counts) = self
            .store
            .client_standing(client_id, &counters.keys(), now)
            .await?;
        let limits = self.config.throttle;
        let mut counts = counts.into_iter();
        let client = counters
            .client
            .as_ref()
            .and_then(|_| counts.next())
            .unwrap_or(0);
        let address = counters
            .address
            .as_ref()
            .and_then(|_| counts.next())
            .unwrap_or(0);
        let lockout = if client >= limits.client_failures || address >= limits.address_failures {
            Lockout::Locked {
                retry_after: counters.window.retry_after(now),
                first: client == limits.client_failures,
            }
        } else {
            Lockout::Open
        };
        Ok((credential, lockout))
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
