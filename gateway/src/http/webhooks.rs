//! `POST /webhooks/{connector}/{account}` and its `GET` handshake: platform pushes, verified by
//! the platform's signature over the raw body before anything is parsed or stored.

use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use inquiry_connectors::webhook::{self, VerifyError, WebhookRequest, WebhookSecrets};
use metrics::counter;
use serde_json::json;
use time::OffsetDateTime;

use super::api::{read_body, submit_error, ApiState};
use super::error::{json_response, ApiError};
use crate::compliance::requests::{Jurisdiction, SubjectSpec};
use crate::pipeline::{AckStatus, Submission};
use crate::telemetry::{self, Hop};

/// Answers a webhook request for `connector` and `account`, and counts its outcome per endpoint
/// (`inquiry_gateway_webhook_requests_total{connector, account, outcome}`: `ok` or the refusal's
/// code; `account` is `unknown` for an endpoint that is not configured).
pub async fn handle(
    state: &ApiState,
    req: Request<Incoming>,
    connector: &str,
    account: &str,
    trace_id: &str,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let result = answer(state, req, connector, account, trace_id, started).await;
    // Only registered names become labels: the set stays small and fixed.
    let label = webhook::find(connector)
        .map(|hook| hook.name())
        .or((connector == super::shopify_compliance::CONNECTOR).then_some(super::shopify_compliance::CONNECTOR));
    if let Some(label) = label {
        let outcome = result.as_ref().map_or_else(|err| err.code, |_| "ok");
        let configured = state.webhook(connector, account).is_some();
        let account = if configured { account.to_owned() } else { "unknown".to_owned() };
        counter!(telemetry::WEBHOOK_REQUESTS, "connector" => label, "account" => account, "outcome" => outcome)
            .increment(1);
    }
    result
}

async fn answer(
    state: &ApiState,
    req: Request<Incoming>,
    connector: &str,
    account: &str,
    trace_id: &str,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    // An endpoint that is not configured does not exist, whatever the connector.
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "unknown_webhook", "no such webhook endpoint");
    if connector == super::shopify_compliance::CONNECTOR {
        let config = state.webhook(connector, account).ok_or_else(not_found)?;
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed("POST"));
        }
        let headers = req.headers().clone();
        let body = read_body(req, state.max_body_bytes).await?;
        return super::shopify_compliance::handle(state, &headers, &body, account, &config.secret).await;
    }
    let hook = webhook::find(connector).ok_or_else(not_found)?;
    let config = state.webhook(connector, account).ok_or_else(not_found)?;
    let mut secrets = WebhookSecrets {
        secret: &config.secret,
        app_key: config.app_key.as_deref(),
        verify_token: config.verify_token.as_deref(),
        endpoint_url: config.endpoint_url.as_deref(),
        public_key: config.public_key.as_deref(),
    };
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();

    if req.method() == Method::GET {
        let request = WebhookRequest { headers, query: &query, body: b"" };
        return match hook.handshake(&request, &secrets) {
            Some(Ok(answer)) => {
                let mut response = Response::new(Full::new(Bytes::from(answer.body)));
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
                Ok(response)
            }
            Some(Err(err)) => Err(refused(&err, StatusCode::FORBIDDEN)),
            None => Err(ApiError::method_not_allowed("POST")),
        };
    }
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed(if hook.has_handshake() { "POST, GET" } else { "POST" }));
    }

    let body = read_body(req, state.max_body_bytes).await?;
    let request = WebhookRequest { headers, query: &query, body: &body };
    // A platform that signs with keys published by id (eBay): the key, cached or fetched.
    let fetched_key;
    if let Some(kid) = hook.key_id(&request) {
        let template = config.public_key_url.as_deref().unwrap_or(super::public_keys::EBAY_KEY_URL);
        let credential = match (&config.app_oauth, &config.app_token) {
            (Some(oauth), _) => super::public_keys::Credential::Minted(oauth),
            (None, Some(token)) => super::public_keys::Credential::Static(token),
            (None, None) => super::public_keys::Credential::None,
        };
        fetched_key = state.public_keys.get(template, &kid, credential).await.map_err(|e| match e {
            super::public_keys::KeyError::Unknown => refused(&VerifyError::BadSignature, StatusCode::UNAUTHORIZED),
            super::public_keys::KeyError::Unavailable | super::public_keys::KeyError::Unauthorized => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "signing_key_unavailable",
                "the platform's signing key could not be fetched; retry later",
            )
            .retry_after(30),
        })?;
        secrets.public_key = Some(&fetched_key);
    }
    hook.verify(&request, &secrets, OffsetDateTime::now_utc()).map_err(|e| match e {
        // A setting missing on our side: the platform should retry once it is fixed.
        VerifyError::NotConfigured(_) => refused(&e, StatusCode::SERVICE_UNAVAILABLE).retry_after(60),
        _ => refused(&e, StatusCode::UNAUTHORIZED),
    })?;

    // A token the signature covers is good for one delivery: claimed now, before anything is
    // stored, so that concurrent copies cannot all pass; released if this delivery fails (the
    // platform's retry of it comes again).
    let replay = match hook.replay_key(&request) {
        Some(token) => {
            Some(state.replays.claim((connector.to_owned(), account.to_owned(), token)).ok_or_else(|| {
                ApiError::new(StatusCode::CONFLICT, "signature_replayed", "this signed token was already used")
            })?)
        }
        None => None,
    };

    let normalize_started = Instant::now();
    let received_at = OffsetDateTime::now_utc();
    let mut context = || inquiry_connectors::NormalizeContext { received_at, trace_id };
    let parsed = hook.parse(&request, account, &mut context)?;
    // Each inquiry's account is the URL's or one of the endpoint's `accounts` (a Meta endpoint
    // without them: any page or number of the app, which the app secret already proves).
    let serves = |named: &str| {
        named == account
            || config.accounts.iter().any(|a| a == named)
            || (config.accounts.is_empty() && hook.any_account_by_default())
    };
    if parsed.inquiries.iter().any(|i| !serves(&i.account)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "the delivery names a shop or page that is neither this endpoint's account nor one of its accounts",
        )
        .field_name("account"));
    }
    let channel = hook.channel();
    telemetry::record_hop(Hop::Normalize, channel, normalize_started.elapsed(), parsed.inquiries.len());
    if parsed.ignored > 0 {
        counter!(telemetry::WEBHOOK_EVENTS_IGNORED, "channel" => channel.as_str()).increment(parsed.ignored as u64);
    }
    let erasure_requests = open_erasures(state, connector, account, channel, &parsed.erasures).await?;
    let count = parsed.inquiries.len();
    let (accepted, duplicates, ids) = if count == 0 {
        (0, 0, Vec::new())
    } else {
        // The delivery is kept as the original payload only when it is one buyer's message alone:
        // erasing one buyer must not leave their message inside another's payload.
        // Ignored events (receipts, reactions, other users' read events) can name other buyers too.
        let keep_raw = count == 1 && parsed.ignored == 0;
        let actor = format!("webhook:{connector}/{account}");
        let submissions = parsed
            .inquiries
            .into_iter()
            .map(|mut i| {
                i.assume_country(config.buyer_country.as_deref());
                Submission::seal(i, &body, keep_raw, None, &actor, &state.subjects)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(super::api::store_error)?;
        let acks = state.pipeline.submit(submissions).await.map_err(submit_error)?;
        telemetry::record_hop(Hop::Ingest, channel, started.elapsed(), count);
        let accepted = acks.iter().filter(|a| a.status == AckStatus::Accepted).count();
        (accepted, count - accepted, acks.iter().map(|a| a.id.to_string()).collect())
    };
    // After the delivery's own inquiries: an answer in the same delivery answers them too.
    let answered = record_replies(state, connector, account, channel, &parsed.replies).await?;
    if let Some(claim) = replay {
        claim.keep();
    }
    // Platforms only look at the status; the body helps operators replaying deliveries by hand.
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "accepted": accepted,
            "duplicates": duplicates,
            "ignored": parsed.ignored,
            "ids": ids,
            "erasure_requests": erasure_requests,
            "answered": answered,
            "trace_id": trace_id,
        }),
    ))
}

/// Carries out an erasure request for each platform user the platform asked to erase (eBay
/// account deletion) whom the gateway holds data on. eBay sends these app-wide, for every user
/// who deletes an account: a user never seen here leaves no trace (recording one would store a
/// stranger's ids). Returns the request ids. Acknowledged only once the requests are durable.
async fn open_erasures(
    state: &ApiState,
    connector: &str,
    account: &str,
    channel: inquiry_connectors::Channel,
    user_ids: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut opened = Vec::with_capacity(user_ids.len());
    // The platform deletes the user everywhere (eBay sends one notification per app): their data
    // under every seller account of that platform here goes, not only under the URL's.
    let mut accounts = state.accounts_of(channel);
    accounts.insert(account.to_owned());
    for user_id in user_ids {
        for held_by in &accounts {
            let spec = SubjectSpec {
                email: None,
                channel: Some(channel.as_str().to_owned()),
                account: Some(held_by.clone()),
                user_id: Some(user_id.clone()),
                pseudonym: None,
                pseudonyms: Vec::new(),
                identities: Vec::new(),
            };
            if !state.requests.holds(&spec).map_err(super::api::request_error)? {
                continue;
            }
            let source = format!("{connector}:{held_by}:account_deletion");
            let by = format!("webhook:{connector}/{account}");
            let record = state
                .requests
                .erase(&spec, Jurisdiction::Gdpr, &source, &by)
                .await
                .map_err(super::api::request_error)?;
            opened.push(record.id.to_string());
        }
    }
    Ok(opened)
}

/// Records the seller's answers on the platform itself (Messenger and Instagram echoes) as first
/// responses ([`crate::reach::replies::record_seller_replies`]), audited as `inquiry.replied` by
/// `webhook:<connector>/<endpoint account>`.
async fn record_replies(
    state: &ApiState,
    connector: &str,
    endpoint: &str,
    channel: inquiry_connectors::Channel,
    replies: &[webhook::SellerReply],
) -> Result<usize, ApiError> {
    let Some(reach) = &state.reach else { return Ok(0) };
    let actor = format!("webhook:{connector}/{endpoint}");
    use crate::reach::replies::{record_seller_replies, SellerReplyError};
    // Meta marks the gateway's own messages (their metadata): the parser has dropped them.
    record_seller_replies(reach, &state.requests, &state.pipeline, &actor, channel, replies, true).await.map_err(|e| {
        match e {
            SellerReplyError::Request(err) => super::api::request_error(err),
            SellerReplyError::Submit(err) => submit_error(err),
        }
    })
}

/// Tokens of signed webhook deliveries already taken, remembered for ten minutes (twice the
/// platforms' replay window), at most 100,000 at once.
#[derive(Default)]
pub struct ReplayGuard {
    used: dashmap::DashMap<(String, String, String), Instant>,
}

impl ReplayGuard {
    const TTL: std::time::Duration = std::time::Duration::from_secs(600);
    const MAX: usize = 100_000;

    /// Takes `key` (connector, account, token) unless it was taken within the last ten minutes:
    /// at most one delivery holds it. The claim is given back when dropped without
    /// [`ReplayClaim::keep`].
    pub fn claim(&self, key: (String, String, String)) -> Option<ReplayClaim<'_>> {
        if self.used.len() >= Self::MAX {
            self.used.retain(|_, at| at.elapsed() < Self::TTL);
        }
        match self.used.entry(key.clone()) {
            dashmap::Entry::Occupied(taken) if taken.get().elapsed() < Self::TTL => return None,
            dashmap::Entry::Occupied(mut expired) => {
                expired.insert(Instant::now());
            }
            dashmap::Entry::Vacant(free) => {
                free.insert(Instant::now());
            }
        }
        Some(ReplayClaim { guard: self, key: Some(key) })
    }
}

/// A token claimed by one delivery (see [`ReplayGuard::claim`]).
pub struct ReplayClaim<'a> {
    guard: &'a ReplayGuard,
    key: Option<(String, String, String)>,
}

impl ReplayClaim<'_> {
    /// The delivery went through: the token stays taken.
    pub fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for ReplayClaim<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.guard.used.remove(&key);
        }
    }
}

fn refused(err: &VerifyError, status: StatusCode) -> ApiError {
    ApiError::new(status, err.code(), err.to_string())
}

#[cfg(test)]
mod replay_tests {
    use super::*;

    #[test]
    fn a_token_is_held_by_one_delivery_and_given_back_if_it_fails() {
        let guard = ReplayGuard::default();
        let key = || ("mailgun".to_owned(), "shop".to_owned(), "token-1".to_owned());
        let first = guard.claim(key()).expect("free");
        assert!(guard.claim(key()).is_none(), "a concurrent copy is refused while the first is stored");
        drop(first); // the first delivery failed: its retry may come
        let retry = guard.claim(key()).expect("given back");
        retry.keep();
        assert!(guard.claim(key()).is_none(), "a delivery that went through keeps its token");
    }
}
