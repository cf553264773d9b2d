//! The poll runner: calls a [`Poller`]'s API under governor rate limiters, backs off when the
//! platform throttles, and keeps a durable cursor that moves only together with the inquiries
//! it covers (one atomic store write), so a restart neither skips nor re-imports anything.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inquiry_connectors::poll::{PollQuota, PollTarget, Poller};
use inquiry_connectors::NormalizeContext;
use metrics::counter;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::config::PollerConfig;
use crate::pipeline::{Pipeline, Submission};
use crate::retry::{sleep_or_stop, Backoff};
use crate::store::Store;
use crate::telemetry::{self, Hop};

/// A rate-limit key: (platform, app, account, operation).
pub type QuotaKey = (&'static str, String, String, String);

/// Rate limiters shared by every poller of the process, one per key, each with its own quota;
/// plus a pause per key set when the platform throttles.
#[derive(Default)]
pub struct QuotaRegistry {
    limiters: DashMap<QuotaKey, Arc<DefaultDirectRateLimiter>>,
    paused_until: DashMap<QuotaKey, Instant>,
}

impl QuotaRegistry {
    /// The limiter of `key`, created with `quota` on first use. A new limiter starts with an
    /// empty bucket: the platform may still count calls made just before a restart, so a restart
    /// must not add a fresh burst on top of them.
    fn limiter(&self, key: &QuotaKey, quota: Quota) -> Arc<DefaultDirectRateLimiter> {
        self.limiters
            .entry(key.clone())
            .or_insert_with(|| {
                let limiter = RateLimiter::direct(quota);
                let _ = limiter.check_n(quota.burst_size());
                Arc::new(limiter)
            })
            .clone()
    }

    /// Waits until `key` may make one more call: the throttle pause, then every limiter.
    async fn acquire(&self, key: &QuotaKey, limiters: &[Arc<DefaultDirectRateLimiter>]) {
        let pause = self.paused_until.get(key).map(|until| *until);
        if let Some(until) = pause {
            tokio::time::sleep_until(until.into()).await;
        }
        for limiter in limiters {
            limiter.until_ready_with_jitter(Jitter::up_to(Duration::from_millis(20))).await;
        }
    }

    /// Pauses `key` for `delay` (the platform said the quota is used up).
    fn pause(&self, key: &QuotaKey, delay: Duration) {
        self.paused_until.insert(key.clone(), Instant::now() + delay);
    }
}

/// The governor quota for `requests_per_second` with `burst`.
fn rate_quota(per_second: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
    Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst >= 1"))
}

/// A daily cap as a token bucket: `per_day` calls, refilled evenly over 24 hours.
fn daily_quota(per_day: u32) -> Quota {
    let period = Duration::from_secs(86_400) / per_day.max(1);
    Quota::with_period(period).expect("period is positive").allow_burst(NonZeroU32::new(per_day.max(1)).expect(">= 1"))
}

/// Polls one (connector, account) until `stop` fires.
pub async fn run(
    poller: &'static dyn Poller,
    config: PollerConfig,
    quotas: Arc<QuotaRegistry>,
    pipeline: Pipeline,
    store: Store,
    subjects: Arc<crate::compliance::subjects::Subjects>,
    mut stop: watch::Receiver<()>,
) {
    let name = poller.name();
    let published = poller.default_quota();
    let quota = PollQuota {
        per_second: config.requests_per_second.unwrap_or(published.per_second),
        burst: config.burst.unwrap_or(published.burst),
        per_day: config.per_day.or(published.per_day),
    };
    let key: QuotaKey = (name, config.app.clone(), config.account.clone(), poller.operation().to_owned());
    let mut limiters = vec![quotas.limiter(&key, rate_quota(quota.per_second, quota.burst))];
    if let Some(per_day) = quota.per_day {
        let daily_key = (name, config.app.clone(), config.account.clone(), format!("{}:daily", poller.operation()));
        limiters.push(quotas.limiter(&daily_key, daily_quota(per_day)));
    }
    let cursor_name = format!("{}/{}", name, config.account);
    let mut cursor = match store.cursor(&cursor_name) {
        Ok(cursor) => cursor,
        Err(err) => {
            tracing::error!(poller = name, error = %err, "cannot read the cursor; poller not started");
            return;
        }
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build());
    let target = PollTarget { account: &config.account };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    tracing::info!(poller = name, per_second = quota.per_second, burst = quota.burst, "poller started");

    'cycles: loop {
        let mut page_token: Option<String> = None;
        let mut next_cursor = cursor.clone();
        loop {
            tokio::select! {
                () = quotas.acquire(&key, &limiters) => {}
                _ = stop.changed() => return,
            }
            let url = format!(
                "{}{}",
                config.base_url.trim_end_matches('/'),
                poller.request(&target, cursor.as_deref(), page_token.as_deref())
            );
            let request = hyper::Request::get(&url)
                .header(hyper::header::AUTHORIZATION, format!("Bearer {}", config.access_token))
                .body(Empty::new())
                .expect("a valid request");
            let started = Instant::now();
            // One deadline for the whole exchange, headers and body: a server that trickles its
            // body cannot hold the poller.
            let exchange = async {
                let response = client.request(request).await.ok()?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.ok()?.to_bytes();
                Some((status, body))
            };
            let (status, body) = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(30), exchange) => r.ok().flatten().unwrap_or((599, Bytes::new())),
                _ = stop.changed() => return,
            };
            if poller.is_throttled(status, &body) {
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "throttled").increment(1);
                let delay = backoff.next();
                quotas.pause(&key, delay);
                tracing::warn!(
                    poller = name,
                    status,
                    delay_ms = delay.as_millis() as u64,
                    "platform throttled; pausing"
                );
                continue;
            }
            if !(200..300).contains(&status) {
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "error").increment(1);
                let delay = backoff.next();
                tracing::warn!(poller = name, status, delay_ms = delay.as_millis() as u64, "poll failed; retrying");
                if sleep_or_stop(delay, &mut stop).await {
                    return;
                }
                continue;
            }
            counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "ok").increment(1);
            backoff.reset();

            let received_at = OffsetDateTime::now_utc();
            let trace_id = crate::http::new_trace_id();
            let mut context = || NormalizeContext { received_at, trace_id: &trace_id };
            let page = match poller.parse(&body, &target, cursor.as_deref(), &mut context) {
                Ok(page) => page,
                Err(err) => {
                    counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "unparsable").increment(1);
                    tracing::error!(poller = name, error = %err, "unparsable response; cycle abandoned, cursor kept");
                    break;
                }
            };
            let count = page.inquiries.len();
            if page.ignored > 0 {
                counter!(telemetry::POLL_ITEMS_IGNORED, "connector" => name).increment(page.ignored as u64);
            }
            telemetry::record_hop(Hop::Normalize, poller.channel(), started.elapsed(), count);
            // Items come newest first: the first page of a cycle carries its newest cursor.
            if page_token.is_none() {
                next_cursor = page.cursor.clone().or(next_cursor);
            }
            let last_page = page.next_page.is_none();
            // The cursor moves with the cycle's last page only: a crash mid-cycle re-polls the cycle.
            let cursor_update = if last_page { next_cursor.clone().map(|c| (cursor_name.clone(), c)) } else { None };
            // A page holds many buyers' messages: it is not kept as any one inquiry's payload.
            let actor = format!("poller:{name}/{}", config.account);
            let sealed: Result<Vec<Submission>, _> = page
                .inquiries
                .into_iter()
                .map(|i| Submission::seal(i, &body, false, None, &actor, &subjects))
                .collect();
            let submissions = match sealed {
                Ok(submissions) => submissions,
                Err(err) => {
                    tracing::error!(poller = name, error = %err, "sealing failed; cycle abandoned, cursor kept");
                    break;
                }
            };
            loop {
                match pipeline.submit_with_cursor(submissions.clone(), cursor_update.clone()).await {
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(poller = name, error = %err, "pipeline refused the page; retrying");
                        if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                            return;
                        }
                    }
                }
            }
            if last_page {
                cursor = next_cursor.clone();
                break;
            }
            page_token = page.next_page;
        }
        if sleep_or_stop(Duration::from_millis(config.interval_ms), &mut stop).await {
            break 'cycles;
        }
    }
}
