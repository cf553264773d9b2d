//! What a platform's response headers say about the caller's quota, so the runner can follow the
//! platform's live limits instead of only the published defaults.
//!
//! - Amazon SP-API: `x-amzn-RateLimit-Limit` (requests per second granted to this caller for the
//!   operation; <https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits>).
//! - Etsy Open API v3: `x-limit-per-second`, `x-remaining-this-second`, `x-limit-per-day`,
//!   `x-remaining-today` (<https://developers.etsy.com/documentation/essentials/rate-limits>).
//! - Any platform: `Retry-After` in seconds or as an HTTP date (RFC 9110 §10.2.3).

use std::time::Duration;

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// The lowest per-second rate taken from a header (one call a day).
const MIN_RATE: f64 = 1.0 / 86_400.0;
/// The highest per-second rate taken from a header (what config allows).
const MAX_RATE: f64 = 10_000.0;

/// The quota facts found in one response's headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    /// Requests per second the platform grants now.
    pub per_second: Option<f64>,
    /// Requests per day the platform grants.
    pub per_day: Option<u64>,
    /// Requests left today.
    pub remaining_today: Option<u64>,
    /// How long the platform asks the caller to wait.
    pub retry_after: Option<Duration>,
}

impl RateHeaders {
    /// Reads the headers (`(name, value)`, names in any case) of a response received at `now`.
    pub fn parse<'h>(headers: impl IntoIterator<Item = (&'h str, &'h str)>, now: OffsetDateTime) -> RateHeaders {
        let mut found = RateHeaders::default();
        for (name, value) in headers {
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "x-amzn-ratelimit-limit" | "x-limit-per-second" => {
                    found.per_second = value.parse::<f64>().ok().filter(|r| (MIN_RATE..=MAX_RATE).contains(r));
                }
                "x-limit-per-day" => found.per_day = value.parse().ok().filter(|d| *d > 0),
                "x-remaining-today" => found.remaining_today = value.parse().ok(),
                "retry-after" => found.retry_after = retry_after(value, now),
                _ => {}
            }
        }
        found
    }
}

/// `Retry-After`: delay seconds, or an HTTP date (a date in the past means now). At most a day.
fn retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = OffsetDateTime::parse(&value.replace(" GMT", " +0000"), &Rfc2822).ok()?;
            Duration::try_from(at - now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(Duration::from_secs(86_400)))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-12-03 08:00:00 UTC);

    #[test]
    fn amazon_and_etsy_limits_are_read_in_any_header_case() {
        let amazon = RateHeaders::parse([("X-Amzn-RateLimit-Limit", "0.5000"), ("content-type", "x")], NOW);
        assert_eq!(amazon.per_second, Some(0.5));
        let etsy = RateHeaders::parse(
            [
                ("x-limit-per-second", "10"),
                ("x-remaining-this-second", "9"),
                ("x-limit-per-day", "10000"),
                ("x-remaining-today", "0"),
            ],
            NOW,
        );
        assert_eq!(
            etsy,
            RateHeaders { per_second: Some(10.0), per_day: Some(10_000), remaining_today: Some(0), retry_after: None }
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_ignores_nonsense() {
        let seconds = RateHeaders::parse([("Retry-After", "7")], NOW);
        assert_eq!(seconds.retry_after, Some(Duration::from_secs(7)));
        let date = RateHeaders::parse([("retry-after", "Thu, 03 Dec 2026 08:00:30 GMT")], NOW);
        assert_eq!(date.retry_after, Some(Duration::from_secs(30)));
        let past = RateHeaders::parse([("retry-after", "Thu, 03 Dec 2026 07:00:00 GMT")], NOW);
        assert_eq!(past.retry_after, Some(Duration::ZERO));
        let junk = RateHeaders::parse([("retry-after", "soon"), ("x-amzn-ratelimit-limit", "-1")], NOW);
        assert_eq!(junk, RateHeaders::default());
        let junk = RateHeaders::parse([("x-limit-per-second", "1e10"), ("x-amzn-ratelimit-limit", "0")], NOW);
        assert_eq!(junk, RateHeaders::default());
        let huge = RateHeaders::parse([("retry-after", "99999999")], NOW);
        assert_eq!(huge.retry_after, Some(Duration::from_secs(86_400)));
    }
}
