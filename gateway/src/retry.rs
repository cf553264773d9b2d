//! Retrying: exponential backoff with jitter, and a sleep that a shutdown cuts short. Shared by
//! the sink forwarders and the pollers.

use std::time::Duration;

use tokio::sync::watch;

/// Exponential backoff with jitter: `base` doubling up to `max`, each delay 50-100% of its step.
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, attempt: 0 }
    }

    /// The next delay.
    pub fn next(&mut self) -> Duration {
        let step = self.base.saturating_mul(1 << self.attempt.min(7)).min(self.max);
        self.attempt += 1;
        let jitter = 0.5 + (uuid::Uuid::new_v4().as_u128() % 500) as f64 / 1000.0;
        step.mul_f64(jitter)
    }

    /// Starts again from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps for `delay`; returns true (at once) if `stop` fires first.
pub async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<()>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.changed() => true,
    }
}

/// Runs `tick` every `interval` until `stop` fires. A failure is logged once, as `what` failing,
/// and so is the recovery, not every tick (a shared table that is down for an hour).
pub async fn every<F, Fut>(interval: Duration, mut stop: watch::Receiver<()>, what: &'static str, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut failing = false;
    loop {
        match tick().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(what, "working again");
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(what, error = %err, "failed; retrying at every tick");
            }
            _ => {}
        }
        if sleep_or_stop(interval, &mut stop).await {
            return;
        }
    }
}

/// Runs a pipeline job, waiting out a full queue (up to 10 s): rare work (a subject request, a
/// retention sweep's audit entry) must not fail half done because ingest is busy.
pub async fn patiently<T, F, Fut>(mut job: F) -> Result<T, crate::pipeline::SubmitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::pipeline::SubmitError>>,
{
    for _ in 0..200 {
        match job().await {
            Err(crate::pipeline::SubmitError::Overloaded) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other,
        }
    }
    job().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next()).collect();
        for (delay, step) in delays.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            let step = Duration::from_millis(step);
            assert!(*delay >= step / 2 && *delay <= step, "{delay:?} outside 50-100% of {step:?}");
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
    }
}
