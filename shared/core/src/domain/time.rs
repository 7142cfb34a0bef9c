//! Time as the API shows it, and the clock that expiry logic reads.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The clock is injected so expiry, retention and quota months are testable without sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// How long to sleep for `at` to have come: real time for the system clock; a manual
    /// clock moves there itself, and needs none.
    fn wait_until(&self, at: DateTime<Utc>) -> std::time::Duration;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn wait_until(&self, at: DateTime<Utc>) -> std::time::Duration {
        (at - Utc::now()).to_std().unwrap_or_default()
    }
}

/// A clock that stands still until a test moves it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            millis: Arc::new(AtomicI64::new(start.timestamp_millis())),
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.millis
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.millis.load(Ordering::SeqCst)).unwrap_or_default()
    }

    fn wait_until(&self, at: DateTime<Utc>) -> std::time::Duration {
        self.millis
            .fetch_max(at.timestamp_millis(), Ordering::SeqCst);
        std::time::Duration::ZERO
    }
}

/// RFC 3339, UTC, milliseconds: `2026-03-28T09:00:00.000Z`.
pub fn format_timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The calendar month (UTC) that a free-tier token counter belongs to, as `YYYY-MM`.
pub fn usage_month(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m").to_string()
}

/// Whole seconds from `now` to the start of the next calendar month (UTC), at least one: when a
/// monthly quota resets.
pub fn seconds_until_next_month(now: DateTime<Utc>) -> u64 {
    use chrono::{Datelike, TimeZone};
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .map_or(3600, |start| {
            u64::try_from((start - now).num_seconds())
                .unwrap_or(1)
                .max(1)
        })
}

/// Serde helpers so every timestamp in a response has the documented shape.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        parse_timestamp(&text).ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.serialize_str(&format_timestamp(at)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| {
                parse_timestamp(&t)
                    .ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
            })
            .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_month_starts_at_midnight_utc_on_the_first_and_december_rolls_the_year() {
        let late_december = parse_timestamp("2026-12-31T23:59:00.000Z").unwrap();
        assert_eq!(seconds_until_next_month(late_december), 60);
        let mid_november = parse_timestamp("2026-11-15T00:00:00.000Z").unwrap();
        assert_eq!(seconds_until_next_month(mid_november), 16 * 86_400);
    }

    #[test]
    fn usage_months_are_calendar_months_in_utc() {
        assert_eq!(
            usage_month(&parse_timestamp("2026-11-30T23:59:59.999-01:00").unwrap()),
            "2026-12"
        );
    }
}
