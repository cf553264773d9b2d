//! Quota enforcement as the platforms document it: a token bucket per quota key (requests per
//! second with a burst), for platforms that count calls per second also a window (no more than
//! the rate's calls in any one second, whatever the bucket holds after a quiet spell) and, where
//! the platform has one, a cap on the calls of the last 24 hours.
//! Every call is counted; a call over the quota is a violation and is answered the way the
//! platform answers it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A platform's documented quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaRule {
    /// Requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
    /// Requests per rolling 24 hours, where the platform caps them.
    pub per_day: Option<u32>,
}

/// Clock slack granted to callers of a token bucket: requests leave a client evenly spaced but
/// may arrive closer together after a delay on the way. On a loaded two-core machine running
/// several gateways at once, a first request (which also opens the connection) was seen arriving
/// more than 20 ms late. The slack never accumulates: a call let in early leaves the bucket below
/// zero, so a caller that is steadily too fast is still refused.
const SLACK: Duration = Duration::from_millis(100);

/// Slack of a per-recipient pause. Unlike the bucket's, it is granted on every message, so it
/// stays small: a sender pacing a little too fast must still be caught.
const PAUSE_SLACK: Duration = Duration::from_millis(20);

/// A platform's minimum pause between two messages to one recipient (Telegram: one a second
/// per chat; WhatsApp: one per 6 s per business number and buyer), and the messages it refused.
#[derive(Debug, Default)]
pub struct RecipientPause {
    /// Messages refused for arriving too soon after the previous one to the same recipient.
    pub violations: AtomicU64,
    last: Mutex<HashMap<String, Instant>>,
}

impl RecipientPause {
    /// Records a message to `recipient` now; false (and counted) when it arrived less than
    /// `pause` after the previous one (less the usual slack).
    pub fn admit(&self, recipient: &str, pause: Duration) -> bool {
        let mut last = self.last.lock().expect("recipient lock");
        let now = Instant::now();
        if last.get(recipient).is_some_and(|at| now.duration_since(*at) + PAUSE_SLACK < pause) {
            self.violations.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        last.insert(recipient.to_owned(), now);
        true
    }
}

/// What one quota key did so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyStats {
    /// Every request that reached the quota check.
    pub calls: u64,
    /// Requests over the quota (answered as throttled).
    pub violations: u64,
    /// Seconds from the first to the last request.
    pub span_seconds: f64,
    /// Requests served within quota.
    pub served: u64,
    /// Requests the rule allows over `span_seconds` at the sustained rate (one at the start plus
    /// one per period), also capped by the daily limit spread over the day.
    pub allowed: f64,
    /// Calls per caller (the User-Agent each call named).
    pub callers: BTreeMap<String, u64>,
    /// How often a call came from another caller than the call before it: once per handover
    /// when callers take turns, far more when two poll the same key at the same time.
    pub handovers: u64,
}

/// One key's bucket and counters.
struct KeyState {
    tokens: f64,
    refilled: Instant,
    day: VecDeque<Instant>,
    /// Calls of the last second (platforms that count calls per second).
    second: VecDeque<Instant>,
    first: Option<Instant>,
    last: Option<Instant>,
    last_caller: Option<String>,
    stats: KeyStats,
}

/// Quota state of every key of one stand-in.
pub struct Quotas {
    rule: QuotaRule,
    /// The platform counts calls per second: at most `per_second` (rounded up) in any second.
    per_second_window: bool,
    keys: BTreeMap<String, KeyState>,
}

/// The result of a quota check.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// The call is within quota.
    pub allowed: bool,
    /// Calls left in the current second (whole tokens).
    pub remaining_this_second: u64,
    /// Calls left in the rolling day, where there is a daily cap.
    pub remaining_today: Option<u64>,
    /// The rule enforced.
    pub rule: QuotaRule,
}

impl Quotas {
    /// Quotas under `rule`.
    pub fn new(rule: QuotaRule) -> Quotas {
        Quotas { rule, per_second_window: false, keys: BTreeMap::new() }
    }

    /// Also counts the calls of every second (Etsy: "10 requests per second"): a bucket full
    /// after a quiet spell must not let its burst and its rate through in the same second.
    pub fn counting_seconds(mut self, per_second_window: bool) -> Quotas {
        self.per_second_window = per_second_window;
        self
    }

    /// The rule enforced.
    pub fn rule(&self) -> QuotaRule {
        self.rule
    }

    /// Counts one call of `key` and says whether it is within quota.
    pub fn admit(&mut self, key: &str) -> Admission {
        let rule = self.rule;
        let now = Instant::now();
        let state = self.keys.entry(key.to_owned()).or_insert_with(|| KeyState {
            tokens: f64::from(rule.burst),
            refilled: now,
            day: VecDeque::new(),
            second: VecDeque::new(),
            first: None,
            last: None,
            last_caller: None,
            stats: KeyStats::default(),
        });
        let elapsed = (now - state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rule.per_second).min(f64::from(rule.burst));
        state.refilled = now;
        while state.day.front().is_some_and(|t| now - *t >= Duration::from_secs(86_400)) {
            state.day.pop_front();
        }
        // The window is a second less the slack, like the bucket's: calls spaced evenly at the
        // rate, delayed a little on the way, still pass.
        let window = Duration::from_secs(1) - SLACK;
        while state.second.front().is_some_and(|t| now - *t >= window) {
            state.second.pop_front();
        }
        state.first.get_or_insert(now);
        state.last = Some(now);
        state.stats.calls += 1;
        let within_second = state.tokens + SLACK.as_secs_f64() * rule.per_second >= 1.0;
        let within_window = !self.per_second_window || (state.second.len() as f64) < rule.per_second.ceil();
        let within_day = rule.per_day.is_none_or(|cap| state.day.len() < cap as usize);
        let allowed = within_second && within_window && within_day;
        if allowed {
            state.tokens -= 1.0;
            state.day.push_back(now);
            state.second.push_back(now);
            state.stats.served += 1;
        } else {
            state.stats.violations += 1;
        }
        Admission {
            allowed,
            remaining_this_second: state.tokens.max(0.0) as u64,
            remaining_today: rule.per_day.map(|cap| u64::from(cap).saturating_sub(state.day.len() as u64)),
            rule,
        }
    }

    /// Records who made the call just admitted for `key`.
    pub fn record_caller(&mut self, key: &str, caller: &str) {
        let Some(state) = self.keys.get_mut(key) else { return };
        *state.stats.callers.entry(caller.to_owned()).or_default() += 1;
        if state.last_caller.as_deref().is_some_and(|last| last != caller) {
            state.stats.handovers += 1;
        }
        state.last_caller = Some(caller.to_owned());
    }

    /// Counters of every key.
    pub fn stats(&self) -> BTreeMap<String, KeyStats> {
        self.keys
            .iter()
            .map(|(key, state)| {
                let span = match (state.first, state.last) {
                    (Some(first), Some(last)) => (last - first).as_secs_f64(),
                    _ => 0.0,
                };
                let mut allowed = 1.0 + span * self.rule.per_second;
                if let Some(cap) = self.rule.per_day {
                    allowed = allowed.min(1.0 + span * f64::from(cap) / 86_400.0).max(1.0);
                }
                (key.clone(), KeyStats { span_seconds: span, allowed, ..state.stats.clone() })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_and_counts_violations() {
        let mut quotas = Quotas::new(QuotaRule { per_second: 1.0, burst: 2, per_day: None });
        assert!(quotas.admit("a").allowed);
        assert!(quotas.admit("a").allowed);
        assert!(!quotas.admit("a").allowed);
        assert!(quotas.admit("b").allowed, "keys are separate");
        for caller in ["x", "x", "y", "x"] {
            quotas.record_caller("a", caller);
        }
        let stats = &quotas.stats()["a"];
        assert_eq!((stats.callers["x"], stats.callers["y"], stats.handovers), (3, 1, 2));
        let stats = quotas.stats();
        assert_eq!((stats["a"].calls, stats["a"].served, stats["a"].violations), (3, 2, 1));
    }

    #[test]
    fn a_platform_counting_seconds_refuses_a_full_bucket_and_its_rate_in_one_second() {
        let rule = QuotaRule { per_second: 10.0, burst: 10, per_day: None };
        let (mut bucket, mut windowed) = (Quotas::new(rule), Quotas::new(rule).counting_seconds(true));
        let started = Instant::now();
        // A full bucket's burst, then calls at the rate for the rest of the second.
        let mut admitted = (0, 0);
        for call in 0..16 {
            if call >= 10 {
                std::thread::sleep(Duration::from_millis(105));
            }
            admitted.0 += u32::from(bucket.admit("k").allowed);
            admitted.1 += u32::from(windowed.admit("k").allowed);
        }
        assert!(started.elapsed() < Duration::from_secs(1) - SLACK, "one window: {:?}", started.elapsed());
        assert_eq!(admitted, (16, 10), "the bucket alone lets 16 through in one second, the window 10");
        // Evenly spaced at the rate, the window never refuses.
        let mut even = Quotas::new(rule).counting_seconds(true);
        for _ in 0..15 {
            assert!(even.admit("k").allowed);
            std::thread::sleep(Duration::from_millis(101));
        }
    }

    #[test]
    fn a_daily_cap_refuses_past_its_count() {
        let mut quotas = Quotas::new(QuotaRule { per_second: 1000.0, burst: 1000, per_day: Some(3) });
        let admissions: Vec<_> = (0..4).map(|_| quotas.admit("app")).collect();
        assert!(admissions[..3].iter().all(|a| a.allowed));
        assert!(!admissions[3].allowed);
        assert_eq!(admissions[2].remaining_today, Some(0));
    }
}
