//! The poll runner: calls a [`Poller`]'s API under governor rate limiters, follows the limits
//! the platform reports in its response headers, backs off when the platform throttles, and
//! keeps a durable cursor that moves only together with the inquiries it covers (one atomic store
//! write), so a restart neither skips nor re-imports anything.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inquiry_connectors::poll::{
    PollCredentials, PollMethod, PollPosition, PollQuota, PollTarget, Poller, QuotaScope, RateHeaders,
};
use inquiry_connectors::NormalizeContext;
use metrics::{counter, gauge, histogram};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::config::PollerConfig;
use crate::pipeline::{Pipeline, Submission};
use crate::poll_leases::LeaseHandle;
use crate::poll_tokens::PollTokens;
use crate::retry::{sleep_or_stop, Backoff};
use crate::store::Store;
use crate::telemetry::{self, Hop};

/// Share of a quota the limiters use: platforms count calls by their arrival, and a call delayed
/// on the way arrives closer to the next one than it was sent; 2% below the quota absorbs that.
const HEADROOM: f64 = 0.98;
/// How long a quota whose day is used up is paused before it is tried again.
const DAILY_CAP_PAUSE: Duration = Duration::from_secs(3600);
/// How many inquiry ids a poller remembers having handed to the pipeline.
const HANDED_OVER_MEMORY: usize = 100_000;
/// The largest platform response read (a page of messages is far smaller).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// The most pages one cycle reads before it ends (the cursor is kept; the next cycle goes on).
const MAX_PAGES_PER_CYCLE: u32 = 10_000;

/// A rate-limit key: (platform, app, account or `*` for app-wide quotas, operation).
pub type QuotaKey = (&'static str, String, String, String);

/// One limiter with the rate it was built for (so a new rate from the platform replaces it).
struct Limiter {
    per_second: f64,
    burst: u32,
    bucket: DefaultDirectRateLimiter,
}

impl Limiter {
    /// A limiter of `per_second` with `burst`, holding `available` (at most `burst`) calls at
    /// once. New limiters start (almost) empty: the platform may still count calls made just
    /// before a restart, so a restart must not add a fresh burst on top of them.
    fn with_available(per_second: f64, burst: u32, available: u32) -> Limiter {
        let period = Duration::from_secs_f64(1.0 / (per_second * HEADROOM).max(1e-6));
        let burst = burst.max(1);
        let quota =
            Quota::with_period(period).expect("period is positive").allow_burst(NonZeroU32::new(burst).expect(">= 1"));
        let bucket = RateLimiter::direct(quota);
        if let Some(used) = NonZeroU32::new(burst - available.min(burst)) {
            let _ = bucket.check_n(used);
        }
        Limiter { per_second, burst, bucket }
    }
}

/// Rate limiters shared by every poller of the process, one per key (the per-second quota and,
/// where the platform has one, the daily cap), plus a pause per key set when the platform
/// throttles.
#[derive(Default)]
pub struct QuotaRegistry {
    limiters: DashMap<QuotaKey, Arc<Limiter>>,
    paused_until: DashMap<QuotaKey, Instant>,
    /// The lease epoch each key's limiter was last emptied for (pollers of one app share a
    /// key and a lease: the first of them to start empties it, once).
    reset_for: DashMap<QuotaKey, i64>,
}

impl QuotaRegistry {
    /// Replaces the limiter of `key` when the platform reports a rate more than 1% away from
    /// it; the new one holds `available` calls at once (none unless the platform said how many
    /// are left).
    fn follow(&self, key: &QuotaKey, per_second: f64, burst: u32, available: u32) -> bool {
        let current = self.limiters.get(key).map(|l| (l.per_second, l.burst));
        let changed = current.is_none_or(|(rate, b)| (rate - per_second).abs() > rate * 0.01 || b != burst);
        if changed {
            self.limiters.insert(key.clone(), Arc::new(Limiter::with_available(per_second, burst, available)));
        }
        changed
    }

    /// Waits until `keys` (the per-second key, then the daily one) may make one more call: each
    /// key's throttle pause, then its limiter. Returns the time waited.
    async fn acquire(&self, keys: &[QuotaKey]) -> Duration {
        let started = Instant::now();
        for key in keys {
            let pause = self.paused_until.get(key).map(|until| *until);
            if let Some(until) = pause {
                tokio::time::sleep_until(until.into()).await;
            }
        }
        for key in keys {
            let limiter = self.limiters.get(key).map(|l| l.clone());
            if let Some(limiter) = limiter {
                limiter.bucket.until_ready().await;
            }
        }
        started.elapsed()
    }

    /// Pauses `key` for `delay` (the platform said the quota is used up), unless a longer pause is set.
    fn pause(&self, key: &QuotaKey, delay: Duration) {
        let until = Instant::now() + delay;
        self.paused_until.entry(key.clone()).and_modify(|u| *u = (*u).max(until)).or_insert(until);
    }
}

/// The quota one poller runs under: its keys and the configured (or published) rates.
struct PollerQuota {
    per_second_key: QuotaKey,
    daily_key: Option<QuotaKey>,
    quota: PollQuota,
    /// The daily limiter was set to what the platform said is left today.
    daily_synced: bool,
}

impl PollerQuota {
    fn new(poller: &dyn Poller, config: &PollerConfig, registry: &QuotaRegistry) -> PollerQuota {
        let published = poller.default_quota();
        let quota = PollQuota {
            per_second: config.requests_per_second.unwrap_or(published.per_second),
            burst: config.burst.unwrap_or(published.burst),
            per_day: config.per_day.or(published.per_day),
        };
        let scope = match poller.quota_scope() {
            QuotaScope::Account => config.account.clone(),
            QuotaScope::App => "*".to_owned(),
        };
        let per_second_key = (poller.name(), config.app.clone(), scope.clone(), poller.operation().to_owned());
        // The configured rate replaces one a poller of an earlier config left (a reload).
        registry.follow(&per_second_key, quota.per_second, quota.burst, 0);
        // The day starts with one call: calls made before a restart are unknown, so the bucket
        // starts almost empty, but one call lets a platform that reports what is left say so.
        let daily_key = quota.per_day.map(|per_day| {
            let key = (poller.name(), config.app.clone(), scope, format!("{}:daily", poller.operation()));
            registry.follow(&key, daily_rate(per_day), daily_burst(per_day), 1);
            key
        });
        PollerQuota { per_second_key, daily_key, quota, daily_synced: false }
    }

    /// Empties the limiters of this poller's keys (a fresh lease: calls made by the replica that
    /// held it before are unknown here).
    fn reset(&self, registry: &QuotaRegistry, epoch: i64) {
        let first = |key: &QuotaKey| registry.reset_for.insert(key.clone(), epoch) != Some(epoch);
        if first(&self.per_second_key) {
            let empty = Limiter::with_available(self.quota.per_second, self.quota.burst, 0);
            registry.limiters.insert(self.per_second_key.clone(), Arc::new(empty));
        }
        if let (Some(key), Some(per_day)) = (&self.daily_key, self.quota.per_day) {
            if first(key) {
                let empty = Limiter::with_available(daily_rate(per_day), daily_burst(per_day), 1);
                registry.limiters.insert(key.clone(), Arc::new(empty));
            }
        }
    }

    fn keys(&self) -> Vec<QuotaKey> {
        std::iter::once(self.per_second_key.clone()).chain(self.daily_key.clone()).collect()
    }

    /// Follows what the platform's headers say: a new rate replaces the limiter, an exhausted
    /// day pauses the daily key for one refill period.
    fn follow(&mut self, registry: &QuotaRegistry, headers: &RateHeaders, name: &'static str, account: &str) {
        if let Some(per_second) = headers.per_second {
            if registry.follow(&self.per_second_key, per_second, self.quota.burst, 0) {
                tracing::info!(poller = name, per_second, "following the rate the platform reports");
                self.quota.per_second = per_second;
            }
        }
        if let (Some(per_day), Some(key)) = (headers.per_day.or(self.quota.per_day.map(u64::from)), &self.daily_key) {
            let per_day = u32::try_from(per_day).unwrap_or(u32::MAX);
            let left = headers.remaining_today.map(|r| u32::try_from(r).unwrap_or(u32::MAX));
            if !self.daily_synced && left.is_some() {
                // First answer that says what is left today: start the day from it.
                registry.limiters.remove(key);
                self.daily_synced = true;
            }
            // Once the platform says what is left, that may be used at once (it counts, not this
            // bucket); without its word the bucket alone keeps any 24 hours under the cap. (An
            // answer without the headers, a 404 or a proxy's 5xx, keeps the bucket as it is.)
            let burst = if self.daily_synced { per_day } else { daily_burst(per_day) };
            if registry.follow(key, daily_rate(per_day), burst, left.unwrap_or(0)) {
                tracing::info!(poller = name, per_day, left, "following the daily cap the platform reports");
                self.quota.per_day = Some(per_day);
            }
        }
        if let Some(remaining) = headers.remaining_today {
            gauge!(telemetry::POLL_QUOTA_REMAINING, "connector" => name, "account" => account.to_owned())
                .set(remaining as f64);
            if remaining == 0 {
                let refill = Duration::from_secs_f64(86_400.0 / f64::from(self.quota.per_day.unwrap_or(86_400)));
                registry.pause(self.daily_key.as_ref().unwrap_or(&self.per_second_key), refill);
            }
        }
    }
}

/// A daily cap as a rate: `per_day` calls refilled evenly over 24 hours.
fn daily_rate(per_day: u32) -> f64 {
    f64::from(per_day.max(1)) / 86_400.0
}

/// The calls a daily cap lets through at once after a quiet spell, when the platform does not
/// say how many are left: in any 24 hours a bucket lets its burst plus its rate's day through
/// (`HEADROOM` of the cap), so a burst of the rest (2%) keeps every 24 hours, and so every
/// calendar day, under the cap. A burst of the whole cap would allow nearly twice it.
fn daily_burst(per_day: u32) -> u32 {
    ((f64::from(per_day) * (1.0 - HEADROOM)).floor() as u32).max(1)
}

/// The HTTP client of the pollers.
pub(crate) type PollClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// An HTTP(S) client for platform APIs and alert targets.
pub(crate) fn client() -> PollClient {
    Client::builder(TokioExecutor::new())
        .build(hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build())
}

/// Makes `wanted` against `base_url` (unless its path is a full URL): the status, headers and
/// body (599 and nothing when the platform cannot be reached). One 30 s deadline for the whole
/// exchange, headers and body, so a server that trickles its body cannot hold the poller; bodies
/// are read up to [`MAX_RESPONSE_BYTES`]. An error only for a request that cannot be built.
pub(crate) async fn exchange(
    client: &PollClient,
    base_url: &str,
    wanted: inquiry_connectors::poll::PollRequest,
    user_agent: &str,
) -> Result<(u16, hyper::HeaderMap, Bytes), hyper::http::Error> {
    let url = format!("{}{}", base_url.trim_end_matches('/'), wanted.path_and_query);
    let mut request = hyper::Request::builder()
        .method(match wanted.method {
            PollMethod::Get => hyper::Method::GET,
            PollMethod::Post => hyper::Method::POST,
        })
        .uri(&url)
        .header(hyper::header::USER_AGENT, user_agent);
    for (header, value) in &wanted.headers {
        request = request.header(header.as_str(), value.as_str());
    }
    let request = request.body(Full::new(Bytes::from(wanted.body)))?;
    let answer = async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await.ok()?.to_bytes();
        Some((status, headers, body))
    };
    Ok(tokio::time::timeout(Duration::from_secs(30), answer).await.ok().flatten().unwrap_or((
        599,
        Default::default(),
        Bytes::new(),
    )))
}

/// The access tokens this process's pollers use now, by poller and account (the cursor's name,
/// `<poller>/<account>`). The acknowledgement senders of the same platforms answer buyers with
/// them: Shopee, TikTok Shop and eBay tokens expire within hours and only the poller refreshes them.
#[derive(Clone, Default)]
pub struct LiveTokens(Arc<dashmap::DashMap<String, String>>);

impl LiveTokens {
    /// Records the token the poller named `cursor_name` uses now.
    fn publish(&self, cursor_name: &str, token: &str) {
        if !token.is_empty() && self.0.get(cursor_name).is_none_or(|current| current.value() != token) {
            self.0.insert(cursor_name.to_owned(), token.to_owned());
        }
    }

    /// The token `poller` uses for `account`, if it runs in this process and has one.
    pub fn get(&self, poller: &str, account: &str) -> Option<String> {
        self.0.get(&format!("{poller}/{account}")).map(|t| t.value().clone())
    }
}

impl std::fmt::Debug for LiveTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTokens").field("entries", &self.0.len()).finish_non_exhaustive()
    }
}

/// Withdraws a poller's token from [`LiveTokens`] when the poller stops (or its lease moves):
/// another replica may rotate it from then on.
struct Published<'a> {
    tokens: &'a LiveTokens,
    cursor_name: &'a str,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.tokens.0.remove(self.cursor_name);
    }
}

/// What one poller works with, whoever holds its lease.
pub struct PollerParts {
    /// The platform's poller.
    pub poller: &'static dyn Poller,
    /// Its `[[pollers]]` entry.
    pub config: PollerConfig,
    /// The process's rate limiters.
    pub quotas: Arc<QuotaRegistry>,
    /// Where its inquiries go.
    pub pipeline: Pipeline,
    /// The embedded store (cursors and token grants when polling is local).
    pub store: Store,
    /// Seals buyers' personal data.
    pub subjects: Arc<crate::compliance::subjects::Subjects>,
    /// The User-Agent of its requests (the gateway's version and replica).
    pub user_agent: String,
    /// Where it publishes its current access token (for the acknowledgement senders).
    pub live_tokens: LiveTokens,
    /// Where the seller's own answers it sees go (reach-out's SLA clocks), when reach-out runs.
    pub replies: Option<PollReplies>,
}

/// What a poller needs to record the seller's answers it sees as first responses.
#[derive(Clone)]
pub struct PollReplies {
    /// Reach-out (the SLA clocks).
    pub reach: Arc<crate::reach::Reach>,
    /// Finds the buyers the answers went to.
    pub requests: Arc<crate::compliance::requests::SubjectRequests>,
}

/// Where a poller keeps its cursor and token grant while it polls.
pub enum Place<'a> {
    /// The embedded store (`[polling] coordination = "local"`).
    Local,
    /// Its group's lease row in the CQL store, fenced by the epoch the lease is held under.
    Leased {
        /// The group's lease.
        lease: &'a LeaseHandle,
        /// The epoch it is held under.
        epoch: i64,
    },
}

impl Place<'_> {
    /// Stores a sealed token grant where the next poll of this account will look for it
    /// (shared: only over `previous`, the grant it was refreshed from).
    pub async fn keep_grant(
        &self,
        store: &Store,
        name: &str,
        account: &str,
        sealed: &[u8],
        previous: Option<&[u8]>,
    ) -> Result<(), String> {
        match self {
            Place::Local => {
                let mut batch = store.batch();
                batch.put_secret(name, sealed);
                batch.commit().map_err(|e| e.to_string())
            }
            Place::Leased { lease, .. } => {
                // Fenced by the grant it replaces, not by the epoch: the platform has retired
                // the old refresh token, so the new grant must be kept even if the lease moved.
                for _ in 0..5 {
                    match lease.save_grant(account, sealed, previous).await {
                        Ok(true) => return Ok(()),
                        Ok(false) => return Err("another grant was stored meanwhile".to_owned()),
                        Err(err) => tracing::warn!(error = %err, "cannot store the token grant; retrying"),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err("the cql store did not take the token grant".to_owned())
            }
        }
    }
}

/// Shows a poller (or a mailbox reader) as polling here (`inquiry_gateway_poller_active`) while
/// alive.
pub(crate) struct Active {
    gauge: metrics::Gauge,
}

impl Active {
    /// Sets the gauge of (`connector`, `account`) to 1 until dropped.
    pub(crate) fn new(connector: &'static str, account: &str) -> Active {
        let gauge = gauge!(telemetry::POLLER_ACTIVE, "connector" => connector, "account" => account.to_owned());
        gauge.set(1.0);
        Active { gauge }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.gauge.set(0.0);
    }
}

/// How a period of polling ended.
enum Ended {
    /// `stop` fired (shutdown, or the lease was lost) or the lease was handed on.
    Stopped,
    /// The poller cannot run (its state is unreadable, it builds invalid requests).
    Broken,
}

/// `Ended::Stopped`, after storing a refreshed grant the store has not taken yet (a few tries,
/// whatever stops the poller: the platform has retired the refresh token the store holds, and a
/// grant dropped here would leave the account unable to poll until the shop authorizes again).
/// Fenced by the grant it replaces, not by the lease: kept even when the lease moved on.
async fn stop_keeping(tokens: &mut PollTokens, store: &Store, account: &str, place: &Place<'_>) -> Ended {
    for attempt in 0..3 {
        if !tokens.has_unsaved() {
            break;
        }
        match tokens.keep_unsaved(store, account, place).await {
            Ok(()) => break,
            Err(err) if attempt == 2 => {
                tracing::error!(error = %err, "a refreshed token was not stored before the poller stopped; \
                    the account may need authorizing again")
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    Ended::Stopped
}

/// Polls one (connector, account) until `stop` fires: at once when polling is local, else
/// whenever this replica holds the lease of its group.
pub async fn run(parts: PollerParts, lease: Option<LeaseHandle>, mut stop: watch::Receiver<()>) {
    let Some(mut lease) = lease else {
        poll(&parts, Place::Local, stop).await;
        return;
    };
    loop {
        let Some((epoch, _polling)) = lease.acquire(&mut stop).await else { return };
        let (period_tx, period_stop) = watch::channel(());
        let polled = poll(&parts, Place::Leased { lease: &lease, epoch }, period_stop);
        tokio::pin!(polled);
        let lost = async {
            let shutdown = tokio::select! {
                _ = stop.changed() => true,
                _ = lease.ended(epoch, false) => false,
            };
            let _ = period_tx.send(());
            shutdown
        };
        tokio::pin!(lost);
        let (ended, shutdown) = tokio::select! {
            ended = &mut polled => (ended, false),
            shutdown = &mut lost => ((&mut polled).await, shutdown),
        };
        if matches!(ended, Ended::Broken) {
            // Let a replica where it works have the group.
            lease.give_up();
            return;
        }
        if shutdown {
            return;
        }
    }
}

/// Polls until `stop` fires or, when leased, until the lease is handed on at a cycle's end.
async fn poll(parts: &PollerParts, place: Place<'_>, mut stop: watch::Receiver<()>) -> Ended {
    let PollerParts { poller, config, quotas, pipeline, store, subjects, user_agent, live_tokens, replies } = parts;
    let poller = *poller;
    let name = poller.name();
    let account = config.account.clone();
    let mut quota = PollerQuota::new(poller, config, quotas);
    if let Place::Leased { epoch, .. } = &place {
        // A replica that held the group before kept a limiter that refilled while another
        // replica used the quota: start from an empty one, as after a restart.
        quota.reset(quotas, *epoch);
    }
    let cursor_name = format!("{}/{}", name, config.account);
    let _active = Active::new(name, &account);
    let _published = Published { tokens: live_tokens, cursor_name: &cursor_name };
    // (cursor, grant, the grant stored where this place keeps them: what a new grant replaces)
    type Stored = (Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
    let local = || -> Result<Stored, String> {
        let cursor = store.cursor(&cursor_name).map_err(|e| e.to_string())?;
        let grant = store.secret(&format!("poll-token/{cursor_name}")).map_err(|e| e.to_string())?;
        Ok((cursor, grant.clone(), grant))
    };
    let stored = match &place {
        Place::Local => local(),
        Place::Leased { lease, .. } => loop {
            // A read that fails (a timeout, contention) is tried again while the lease lasts.
            match lease.state_of(&account).await {
                Ok((cursor, grant)) => {
                    // A group polled locally before (coordination was `local`) starts from
                    // this replica's own cursor and grant; a new grant still replaces the
                    // lease's (none), not the local one.
                    let earlier = if cursor.is_none() || grant.is_none() { local() } else { Ok((None, None, None)) };
                    break earlier.map(|(local_cursor, local_grant, _)| {
                        (cursor.or(local_cursor), grant.clone().or(local_grant), grant)
                    });
                }
                Err(err) => {
                    tracing::warn!(poller = name, error = %err, "cannot read the poll lease's cursor; retrying");
                    if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                        return Ended::Stopped;
                    }
                }
            }
        },
    };
    let (mut cursor, grant, replaced) = match stored {
        Ok(stored) => stored,
        Err(err) => {
            tracing::error!(poller = name, error = %err, "cannot read the cursor or token; poller not started");
            return Ended::Broken;
        }
    };
    let client = client();
    let mut tokens = PollTokens::load(config, &cursor_name, grant, subjects.vault());
    tokens.replacing(replaced);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut handed_over = std::collections::HashSet::new();
    let actor = format!("poller:{name}/{account}");
    tracing::info!(
        poller = name,
        per_second = quota.quota.per_second,
        burst = quota.quota.burst,
        per_day = quota.quota.per_day,
        "poller started"
    );
    // Counted from the start: a poller that never completes a cycle (a revoked token, a platform
    // answering in a shape it cannot read) shows as stalled, like a mailbox reader.
    let cycle_completed = gauge!(telemetry::POLL_CYCLE_COMPLETED, "connector" => name, "account" => account.clone());
    cycle_completed.set(OffsetDateTime::now_utc().unix_timestamp() as f64);

    loop {
        let mut page_token: Option<String> = None;
        let mut next_cursor = cursor.clone();
        let mut pages = 0u32;
        let mut failed = false;
        // The seller's answers seen in this cycle: recorded once the whole cycle's questions are
        // stored (a conversation is read newest first, so an answer may come a page before the
        // question it answers).
        let mut answers: Vec<inquiry_connectors::webhook::SellerReply> = Vec::new();
        loop {
            let keys = quota.keys();
            let waited = tokio::select! {
                waited = quotas.acquire(&keys) => waited,
                _ = stop.changed() => return stop_keeping(&mut tokens, store, &config.account, &place).await,
            };
            histogram!(telemetry::POLL_LIMITER_WAIT, "connector" => name).record(waited.as_secs_f64());
            if let Place::Leased { lease, epoch } = &place {
                if !lease.may_call(*epoch) {
                    return stop_keeping(&mut tokens, store, &config.account, &place).await;
                }
            }
            // A refresh whose grant the store did not take is stored before any call; then a
            // token due is refreshed. Not cancelled once started: a platform that rotates
            // refresh tokens has retired the old one when it answers, and the new grant must
            // reach the store.
            let token_work = if tokens.has_unsaved() {
                Some(tokens.keep_unsaved(store, &config.account, &place).await)
            } else if tokens.needs_refresh(OffsetDateTime::now_utc()) {
                Some(tokens.refresh(poller, config, &client, store, &place, subjects.vault()).await)
            } else {
                None
            };
            if let Some(Err(err)) = token_work {
                if let Place::Leased { lease, .. } = &place {
                    // Another replica may have rotated the token meanwhile: take its grant.
                    if let Ok((_, Some(sealed))) = lease.state_of(&account).await {
                        tokens.adopt(sealed, subjects.vault());
                    }
                }
                let delay = backoff.next();
                tracing::warn!(poller = name, error = %err, delay_ms = delay.as_millis() as u64, "token refresh failed; retrying");
                if sleep_or_stop(delay, &mut stop).await {
                    return stop_keeping(&mut tokens, store, &config.account, &place).await;
                }
                continue;
            }
            live_tokens.publish(&cursor_name, tokens.access());
            let credentials = PollCredentials {
                access_token: tokens.access(),
                app_key: config.app_key.as_deref(),
                app_secret: config.app_secret.as_deref(),
            };
            let target = PollTarget {
                account: &account,
                credentials,
                now: OffsetDateTime::now_utc(),
                wants_answers: replies.is_some(),
            };
            let position = PollPosition { cursor: cursor.as_deref(), page: page_token.as_deref() };
            let started = Instant::now();
            let (status, headers, body) = tokio::select! {
                answer = exchange(&client, &config.base_url, poller.request(&target, &position), user_agent) => match answer {
                    Ok(answer) => answer,
                    Err(err) => {
                        tracing::error!(poller = name, error = %err, "the poller built an invalid request; stopped");
                        return Ended::Broken;
                    }
                },
                _ = stop.changed() => return stop_keeping(&mut tokens, store, &config.account, &place).await,
            };
            if poller.is_token_refused(status, &body) && tokens.can_refresh() && !tokens.just_refreshed() {
                // Revoked or expired before its time: refresh at once, then ask again.
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "unauthorized").increment(1);
                tokens.expire();
                continue;
            }
            let rate = RateHeaders::parse(
                headers.iter().filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
                OffsetDateTime::now_utc(),
            );
            quota.follow(quotas, &rate, name, &account);
            if status == 429 || poller.is_throttled(status, &body) {
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "throttled").increment(1);
                // A zero or past Retry-After is no reason to hammer: never less than the backoff.
                // A day's cap used up pauses the quota for an hour (retrying by seconds would
                // spend the day on refusals).
                let daily = poller.is_daily_cap(status, &body);
                let delay =
                    rate.retry_after.unwrap_or_default().max(if daily { DAILY_CAP_PAUSE } else { backoff.next() });
                quotas.pause(quota.daily_key.as_ref().filter(|_| daily).unwrap_or(&quota.per_second_key), delay);
                tracing::warn!(
                    poller = name,
                    status,
                    delay_ms = delay.as_millis() as u64,
                    "platform throttled; pausing"
                );
                continue;
            }
            let received_at = OffsetDateTime::now_utc();
            let trace_id = crate::http::new_trace_id();
            let mut context = || NormalizeContext { received_at, trace_id: &trace_id };
            let parsed = if (200..300).contains(&status) {
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "ok").increment(1);
                poller.parse(&body, &target, &position, &mut context)
            } else if let Some(page) = poller.step_over(status, &target, &position, &mut context) {
                // One item the platform refuses (gone, not visible): the poller goes on without it.
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "stepped_over").increment(1);
                tracing::warn!(poller = name, status, "the platform refused one item; going on without it");
                page
            } else {
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "error").increment(1);
                let delay = rate.retry_after.unwrap_or_default().max(backoff.next());
                tracing::warn!(poller = name, status, delay_ms = delay.as_millis() as u64, "poll failed; retrying");
                if sleep_or_stop(delay, &mut stop).await {
                    return stop_keeping(&mut tokens, store, &config.account, &place).await;
                }
                continue;
            };
            let mut page = match parsed {
                Ok(page) => page,
                Err(err) => {
                    counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "unparsable").increment(1);
                    tracing::error!(poller = name, error = %err, "unparsable response; cycle abandoned, cursor kept");
                    failed = true;
                    break;
                }
            };
            backoff.reset();
            if let Some(refused) = page.refused.take() {
                counter!(telemetry::POLL_REFUSED_PARTS, "connector" => name).increment(1);
                tracing::warn!(poller = name, refused, "the platform refused a part of the cycle; going on without it");
            }
            let count = page.inquiries.len();
            if page.ignored > 0 {
                counter!(telemetry::POLL_ITEMS_IGNORED, "connector" => name).increment(page.ignored as u64);
            }
            if let Some(newest) = page.inquiries.iter().map(|i| i.occurred_at).max() {
                let lag = (received_at - newest).as_seconds_f64().max(0.0);
                histogram!(telemetry::POLL_LAG, "connector" => name).record(lag);
            }
            counter!(telemetry::POLL_ITEMS, "connector" => name).increment(count as u64);
            telemetry::record_hop(Hop::Normalize, poller.channel(), started.elapsed(), count);
            if page.cursor.is_some() {
                next_cursor = page.cursor.clone();
            }
            let last_page = page.next_page.is_none();
            // The cursor moves with the cycle's last page only: a crash mid-cycle re-polls the cycle.
            let moved = if last_page && next_cursor != cursor { next_cursor.clone() } else { None };
            // A page holds many buyers' messages: it is not kept as any one inquiry's payload.
            // What this poller already handed over (the look-back and cycle boundaries fetch
            // messages again) is skipped before the costly sealing; the pipeline's dedup still
            // drops what a restart fetches again.
            if replies.is_some() {
                answers.append(&mut page.replies);
            }
            let fresh: Vec<_> = page.inquiries.into_iter().filter(|i| !handed_over.contains(&i.id)).collect();
            let fresh_ids: Vec<uuid::Uuid> = fresh.iter().map(|i| i.id).collect();
            let sealed: Result<Vec<Submission>, _> = fresh
                .into_iter()
                .map(|mut i| {
                    i.assume_country(config.buyer_country.as_deref());
                    Submission::seal(i, &body, false, None, &actor, subjects)
                })
                .collect();
            let submissions = match sealed {
                Ok(submissions) => submissions,
                Err(err) => {
                    tracing::error!(poller = name, error = %err, "sealing failed; cycle abandoned, cursor kept");
                    failed = true;
                    break;
                }
            };
            // Local: the cursor is written in the same store batch as the inquiries it covers.
            // Leased: into the lease row, once the inquiries are durable here (a crash in between
            // makes the next holder fetch them again, with the same inquiry ids).
            // With answers to record, the cycle's cursor is written after them: a crash in between
            // reads the cycle again rather than skipping its answers.
            let answers_first = last_page && !answers.is_empty();
            let local_cursor = match &place {
                Place::Local if !answers_first => moved.clone().map(|c| (cursor_name.clone(), c)),
                Place::Local | Place::Leased { .. } => None,
            };
            if !submissions.is_empty() || local_cursor.is_some() {
                loop {
                    match pipeline.submit_with_cursor(submissions.clone(), local_cursor.clone()).await {
                        Ok(_) => {
                            if handed_over.len() + fresh_ids.len() > HANDED_OVER_MEMORY {
                                handed_over.clear();
                            }
                            handed_over.extend(fresh_ids.iter().copied());
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(poller = name, error = %err, "pipeline refused the page; retrying");
                            if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                                return stop_keeping(&mut tokens, store, &config.account, &place).await;
                            }
                        }
                    }
                }
            }
            // The seller's answers on the platform, once the cycle's questions are stored; then the
            // cursor that covers them.
            if let (Some(replies), true) = (replies, answers_first) {
                loop {
                    let recorded = crate::reach::replies::record_seller_replies(
                        &replies.reach,
                        &replies.requests,
                        pipeline,
                        &actor,
                        poller.channel(),
                        &answers,
                        false,
                    )
                    .await;
                    match recorded {
                        Ok(_) => break,
                        Err(err) => {
                            counter!(telemetry::REPLIES, "source" => "platform", "outcome" => "error").increment(1);
                            tracing::warn!(poller = name, error = %err, "the seller's answers not recorded; retrying");
                            if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                                return stop_keeping(&mut tokens, store, &config.account, &place).await;
                            }
                        }
                    }
                }
                answers.clear();
                if let (Place::Local, Some(moved)) = (&place, &moved) {
                    let cursor = Some((cursor_name.clone(), moved.clone()));
                    while let Err(err) = pipeline.submit_with_cursor(Vec::new(), cursor.clone()).await {
                        tracing::warn!(poller = name, error = %err, "cursor not stored; retrying");
                        if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                            return stop_keeping(&mut tokens, store, &config.account, &place).await;
                        }
                    }
                }
            }
            if let (Place::Leased { lease, epoch }, Some(moved)) = (&place, &moved) {
                loop {
                    match lease.save_cursor(*epoch, &account, moved).await {
                        Ok(true) => break,
                        Ok(false) => {
                            tracing::warn!(poller = name, "the poll lease moved to another replica; cursor not stored");
                            lease.lost(*epoch);
                            return stop_keeping(&mut tokens, store, &config.account, &place).await;
                        }
                        Err(err) => {
                            tracing::warn!(poller = name, error = %err, "cannot store the cursor; retrying");
                            if sleep_or_stop(Duration::from_millis(500), &mut stop).await {
                                return stop_keeping(&mut tokens, store, &config.account, &place).await;
                            }
                        }
                    }
                }
            }
            if moved.is_some() {
                gauge!(telemetry::POLL_CURSOR_UPDATED, "connector" => name, "account" => account.clone())
                    .set(OffsetDateTime::now_utc().unix_timestamp() as f64);
            }
            if last_page {
                cursor = next_cursor.clone();
                break;
            }
            pages += 1;
            if page.next_page == page_token || pages >= MAX_PAGES_PER_CYCLE {
                // A platform that answers "more" without moving on would hold the poller in one
                // cycle forever, with its cursor never stored: end the cycle here instead.
                counter!(telemetry::POLL_REQUESTS, "connector" => name, "outcome" => "stuck").increment(1);
                tracing::error!(
                    poller = name,
                    pages,
                    "the platform's paging does not advance; cycle ended, cursor kept"
                );
                failed = true;
                break;
            }
            page_token = page.next_page;
        }
        if !failed {
            cycle_completed.set(OffsetDateTime::now_utc().unix_timestamp() as f64);
        }
        // A cycle that failed waits at least the backoff: a response that never parses (an expired
        // credential answered with 200 and an error body) must not be asked for at the quota's pace.
        let pause = Duration::from_millis(config.interval_ms);
        let pause = if failed { pause.max(backoff.next()) } else { pause };
        // Between cycles is where a lease being handed on is let go: the cursor covers
        // everything handed over.
        let handed_on = async {
            match &place {
                Place::Local => std::future::pending().await,
                Place::Leased { lease, epoch } => lease.ended(*epoch, true).await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return stop_keeping(&mut tokens, store, &config.account, &place).await,
            _ = handed_on => return stop_keeping(&mut tokens, store, &config.account, &place).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(op: &str) -> QuotaKey {
        ("test", "app".into(), "*".into(), op.into())
    }

    #[tokio::test]
    async fn a_new_limiter_starts_empty_and_a_reported_rate_replaces_it() {
        let registry = QuotaRegistry::default();
        registry.follow(&key("a"), 20.0, 2, 0);
        let waited = registry.acquire(&[key("a")]).await;
        assert!(waited >= Duration::from_millis(40), "an empty bucket waits one period, waited {waited:?}");
        assert!(!registry.follow(&key("a"), 20.1, 2, 0), "within 1%: kept");
        assert!(registry.follow(&key("a"), 5.0, 2, 0), "a new rate replaces the limiter");
        let waited = registry.acquire(&[key("a")]).await;
        assert!(waited >= Duration::from_millis(190), "the new rate applies at once, waited {waited:?}");
    }

    #[tokio::test]
    async fn a_followed_daily_cap_keeps_the_calls_the_platform_says_are_left() {
        let registry = QuotaRegistry::default();
        assert!(registry.follow(&key("d"), daily_rate(6), 6, 2));
        let started = Instant::now();
        registry.acquire(&[key("d")]).await;
        registry.acquire(&[key("d")]).await;
        assert!(started.elapsed() < Duration::from_millis(50), "the two calls left are there at once");
        let third = tokio::time::timeout(Duration::from_millis(200), registry.acquire(&[key("d")])).await;
        assert!(third.is_err(), "the third waits for the day to refill");
    }

    /// The most calls a limiter of (`per_second`, `burst`) lets through in any `window` seconds:
    /// its burst, then one per period of the rate it runs at.
    fn most_calls_in(per_second: f64, burst: u32, window: f64) -> f64 {
        f64::from(burst) + (window * per_second * HEADROOM).floor()
    }

    #[test]
    fn no_pollers_default_quota_lets_more_than_its_rate_through_in_any_second_or_its_cap_in_any_day() {
        let pollers = inquiry_connectors::poll::REGISTRY;
        assert!(pollers.len() >= 9, "every poller is checked");
        for poller in pollers {
            let quota = poller.default_quota();
            let in_a_second = most_calls_in(quota.per_second, quota.burst, 1.0);
            assert!(
                in_a_second <= quota.per_second.ceil(),
                "{}: {in_a_second} calls in one second under {quota:?}",
                poller.name()
            );
            if let Some(per_day) = quota.per_day {
                let in_a_day = most_calls_in(daily_rate(per_day), daily_burst(per_day), 86_400.0);
                assert!(in_a_day <= f64::from(per_day), "{}: {in_a_day} calls in 24 hours", poller.name());
            }
        }
        // The burst that used to be configured: nearly twice the rate, nearly twice the cap.
        assert_eq!(most_calls_in(10.0, 10, 1.0), 19.0);
        assert_eq!(most_calls_in(daily_rate(5_000), 5_000, 86_400.0), 9_900.0);
    }

    #[tokio::test]
    async fn after_a_quiet_spell_a_burst_of_one_keeps_any_second_within_the_rate() {
        let registry = QuotaRegistry::default();
        registry.follow(&key("q"), 10.0, 1, 1);
        tokio::time::sleep(Duration::from_millis(1_500)).await; // quiet: the bucket refills
        let started = Instant::now();
        let mut calls = 0;
        let window = Duration::from_millis(950);
        while let Ok(_) =
            tokio::time::timeout(window.saturating_sub(started.elapsed()), registry.acquire(&[key("q")])).await
        {
            calls += 1;
        }
        assert!((9..=10).contains(&calls), "{calls} calls in 0.95 s at 10/s");
    }

    #[test]
    fn a_daily_cap_follows_what_the_platform_says_is_left_and_an_answer_without_it_keeps_the_bucket() {
        let config: PollerConfig =
            toml::from_str("connector = \"etsy_receipts\"\naccount = \"shop\"\nbase_url = \"http://127.0.0.1:1\"\n")
                .unwrap();
        let poller = inquiry_connectors::poll::find("etsy_receipts").unwrap();
        let registry = QuotaRegistry::default();
        let mut quota = PollerQuota::new(poller, &config, &registry);
        let daily = quota.daily_key.clone().unwrap();
        let limiter = || {
            let limiter = registry.limiters.get(&daily).unwrap();
            (limiter.burst, Arc::as_ptr(&limiter) as usize)
        };
        assert_eq!(limiter().0, 200, "2% of Etsy's 10,000 a day until the platform says what is left");
        let before = limiter();
        quota.follow(&registry, &RateHeaders::default(), "etsy_receipts", "shop");
        assert_eq!(limiter(), before, "nothing said: the bucket stays");

        let told = RateHeaders { per_day: Some(10_000), remaining_today: Some(9_000), ..RateHeaders::default() };
        quota.follow(&registry, &told, "etsy_receipts", "shop");
        let synced = limiter();
        assert_eq!(synced.0, 10_000, "what is left may be used at once");
        assert_eq!(registry.limiters.get(&daily).unwrap().bucket.check_n(NonZeroU32::new(8_999).unwrap()), Ok(Ok(())));
        // A 404 or a proxy's 5xx carries no quota headers: the synced bucket is not replaced.
        quota.follow(&registry, &RateHeaders::default(), "etsy_receipts", "shop");
        assert_eq!(limiter(), synced);
        quota.follow(&registry, &told, "etsy_receipts", "shop");
        assert_eq!(limiter(), synced, "the same report again: kept");

        // The entry reloaded with a lower rate: its poller starts again under the new one.
        let slower: PollerConfig = toml::from_str(
            "connector = \"etsy_receipts\"\naccount = \"shop\"\nbase_url = \"http://127.0.0.1:1\"\nrequests_per_second = 2.0\n",
        )
        .unwrap();
        let quota = PollerQuota::new(poller, &slower, &registry);
        assert_eq!(registry.limiters.get(&quota.per_second_key).unwrap().per_second, 2.0);
    }

    #[tokio::test]
    async fn a_pause_holds_every_call_of_its_key() {
        let registry = QuotaRegistry::default();
        registry.follow(&key("b"), 1000.0, 1000, 1000);
        registry.pause(&key("b"), Duration::from_millis(150));
        registry.pause(&key("b"), Duration::from_millis(10)); // a shorter pause does not cut it
        let waited = registry.acquire(&[key("b")]).await;
        assert!(waited >= Duration::from_millis(150), "waited {waited:?}");
    }
}
