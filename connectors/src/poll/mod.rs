//! Pull connectors: platform APIs polled under their published quotas.
//!
//! A [`Poller`] is pure: it builds the request for a page ([`PollRequest`]: method, path,
//! headers, body, signed where the platform wants it) and parses the response into inquiries, a
//! next-page token and a new cursor. The gateway's poll runner owns the HTTP calls, the governor
//! rate limiters, the live adjustment of limits from response headers ([`RateHeaders`]), backoff
//! on throttling, and the durable cursor. Adding a poller: one module, one line in [`REGISTRY`],
//! fixtures under `connectors/tests/fixtures/pollers/<name>/`, a config example and a stand-in
//! under `tests/standins`.

mod aliexpress_messages;
pub(crate) mod ebay_member_messages;
mod ebay_post_order;
mod etsy_receipts;
mod indiamart_leads;
mod json_ids;
mod meta_conversations;
mod rate_headers;
pub(crate) mod shopee_chat;
mod shopee_lost_push;
pub(crate) mod tiktok_customer_service;
mod walk;
mod watermark;

pub use ebay_member_messages::answer_key as ebay_answer_key;
pub use rate_headers::RateHeaders;

use time::OffsetDateTime;

use crate::error::InputError;
use crate::inquiry::{Channel, Inquiry};
use crate::NormalizeContext;

/// How far before its cursor a time-based poller looks again: platforms stamp an item with the
/// time it was written, and an item written just before a page was read can become visible just
/// after. What is read twice is dropped by the pipeline's dedup.
pub const LOOKBACK: time::Duration = time::Duration::minutes(1);

/// Every pull connector, by name.
pub const REGISTRY: &[&dyn Poller] = &[
    &meta_conversations::MetaConversations,
    &etsy_receipts::EtsyReceipts,
    &ebay_member_messages::EbayMemberMessages,
    &ebay_post_order::EbayPostOrderInquiries,
    &shopee_chat::ShopeeChat,
    &shopee_lost_push::ShopeeLostPush,
    &tiktok_customer_service::TiktokCustomerService,
    &aliexpress_messages::AliexpressMessages,
    &indiamart_leads::IndiamartLeads,
];

/// The poller registered under `name`.
pub fn find(name: &str) -> Option<&'static dyn Poller> {
    REGISTRY.iter().copied().find(|p| p.name() == name)
}

/// A platform's published request quota for one operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollQuota {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period, on top of the rate: in any one second a
    /// bucket lets `burst` plus `per_second` through, so a platform that counts calls per second
    /// (a window, not a bucket) needs 1 here to stay within `per_second`.
    pub burst: u32,
    /// Requests per day, where the platform caps them.
    pub per_day: Option<u32>,
}

/// Who shares a quota: each seller account has its own, or every account of one app (API key,
/// partner id) draws from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    /// One quota per (app, account, operation).
    Account,
    /// One quota per (app, operation), shared by every account of the app.
    App,
}

/// The credentials of one polled account, from config.
#[derive(Clone, Copy, Default)]
pub struct PollCredentials<'a> {
    /// The account's access token (OAuth bearer, eBay user token, Shopee/TikTok shop token,
    /// AliExpress seller session).
    pub access_token: &'a str,
    /// The app's public id where the platform wants it (Etsy `x-api-key`, Shopee `partner_id`,
    /// TikTok Shop and AliExpress `app_key`, eBay app id).
    pub app_key: Option<&'a str>,
    /// The app's secret where the platform signs requests with it (Shopee partner key, TikTok
    /// Shop and AliExpress app secret).
    pub app_secret: Option<&'a str>,
}

impl std::fmt::Debug for PollCredentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollCredentials").field("app_key", &self.app_key).finish_non_exhaustive()
    }
}

/// A credential a poller may need besides the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// [`PollCredentials::app_key`].
    AppKey,
    /// [`PollCredentials::app_secret`].
    AppSecret,
}

/// What is polled: one account with its credentials, at one moment.
#[derive(Debug, Clone, Copy)]
pub struct PollTarget<'a> {
    /// The seller account (page id, shop id, user name).
    pub account: &'a str,
    /// Its credentials.
    pub credentials: PollCredentials<'a>,
    /// When the request is made (signed timestamps).
    pub now: OffsetDateTime,
    /// Whether the seller's own answers are wanted (reach-out runs and stops SLA clocks with
    /// them): a poller that needs extra calls to see them (eBay) makes them only then.
    pub wants_answers: bool,
}

/// Where a request stands in a polling cycle.
#[derive(Debug, Clone, Copy, Default)]
pub struct PollPosition<'a> {
    /// The durable cursor the cycle started from (`None`: never polled).
    pub cursor: Option<&'a str>,
    /// The page token returned by the previous page of this cycle (`None`: the first page).
    pub page: Option<&'a str>,
}

/// HTTP method of a poll request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PollMethod {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// One API call, as a poller wants it made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PollRequest {
    /// Method.
    pub method: PollMethod,
    /// Path and query, appended to the configured base URL.
    pub path_and_query: String,
    /// Headers to send (authorization, content type, the platform's call headers).
    pub headers: Vec<(String, String)>,
    /// Body (empty for GET).
    pub body: String,
}

impl PollRequest {
    /// A GET of `path_and_query` with `Authorization: Bearer <token>`.
    pub fn get_bearer(path_and_query: String, token: &str) -> PollRequest {
        PollRequest {
            method: PollMethod::Get,
            path_and_query,
            headers: vec![("authorization".to_owned(), format!("Bearer {token}"))],
            body: String::new(),
        }
    }
}

/// A new access token from a platform's token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The access token to send from now on.
    pub access_token: String,
    /// Seconds until it expires, where the platform says.
    pub expires_in_seconds: Option<i64>,
    /// A new refresh token, where the platform rotates them (the old one may stop working).
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant").field("expires_in_seconds", &self.expires_in_seconds).finish_non_exhaustive()
    }
}

/// The error of a token endpoint's answer that holds no token.
pub(crate) fn no_token(what: &str) -> InputError {
    InputError::new(crate::error::InputErrorCode::MissingField, format!("the token answer holds no {what}"))
        .field("access_token")
}

/// An RFC 6749 token answer: `{"access_token", "expires_in", "refresh_token"}`.
pub(crate) fn oauth_grant(body: &[u8]) -> Result<TokenGrant, InputError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<i64>,
        #[serde(default)]
        refresh_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(InputError::from_json)?;
    Ok(TokenGrant {
        access_token: answer.access_token.filter(|t| !t.is_empty()).ok_or_else(|| no_token("access_token"))?,
        expires_in_seconds: answer.expires_in,
        refresh_token: answer.refresh_token.filter(|t| !t.is_empty()),
    })
}

/// A form-encoded body (`application/x-www-form-urlencoded`).
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// One parsed response.
#[derive(Debug, Default)]
pub struct PollPage {
    /// New buyer messages, normalized.
    pub inquiries: Vec<Inquiry>,
    /// Items that are not buyer messages (the seller's own replies, old messages).
    pub ignored: usize,
    /// The seller's own messages to buyers on the platform (counted in `ignored` too): the
    /// first response to those buyers' open inquiries.
    pub replies: Vec<crate::webhook::SellerReply>,
    /// Token of the next page of this cycle, if the platform has more that may be new. Opaque to
    /// the runner: a poller that needs several calls per item (a list, then each conversation's
    /// messages) keeps its work list here.
    pub next_page: Option<String>,
    /// The cursor to keep once the cycle's inquiries are durable. The runner keeps the last one
    /// any page of the cycle returned (`None`: keep what was there) and stores it with the
    /// cycle's last page.
    pub cursor: Option<String>,
    /// A part of the cycle the platform refused and the poller stepped over (eBay's answers
    /// phase): why, for the runner to log and count; the cycle goes on.
    pub refused: Option<String>,
}

/// A platform API polled for buyer messages.
pub trait Poller: Sync {
    /// Name in config and metrics.
    fn name(&self) -> &'static str;

    /// Channel of the inquiries it produces.
    fn channel(&self) -> Channel;

    /// The operation polled (the last part of the rate-limit key).
    fn operation(&self) -> &'static str;

    /// The published quota of that operation.
    fn default_quota(&self) -> PollQuota;

    /// Whether accounts of one app share the quota.
    fn quota_scope(&self) -> QuotaScope {
        QuotaScope::Account
    }

    /// Whether config must give an access token (partner-level APIs have none).
    fn needs_access_token(&self) -> bool {
        true
    }

    /// The credentials besides the access token that config must give.
    fn required_credentials(&self) -> &'static [Credential] {
        &[]
    }

    /// The request for `position`.
    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest;

    /// Scheme and host of the platform's token endpoint where it is not the API's (config
    /// `token_url` overrides it).
    fn token_base_url(&self) -> Option<&'static str> {
        None
    }

    /// The request that trades `refresh_token` for a new access token, for platforms whose access
    /// tokens expire (`None`: tokens do not expire, or are not refreshed by the gateway).
    fn refresh_request(&self, _target: &PollTarget<'_>, _refresh_token: &str) -> Option<PollRequest> {
        None
    }

    /// Parses the token endpoint's answer to [`Poller::refresh_request`], received at `now`.
    fn parse_refresh(&self, _body: &[u8], _now: OffsetDateTime) -> Result<TokenGrant, InputError> {
        Err(no_token("access token"))
    }

    /// True if a throttled response says the day's calls are used up (not just this second's):
    /// the runner then pauses the quota for an hour instead of backing off by seconds.
    fn is_daily_cap(&self, _status: u16, _body: &[u8]) -> bool {
        false
    }

    /// True if a response says the caller is over its quota (429 is always taken as throttling).
    fn is_throttled(&self, status: u16, body: &[u8]) -> bool;

    /// True if a response refuses the access token (expired or revoked): the poller refreshes it
    /// and asks again. HTTP 401 by default; platforms that answer otherwise say so here.
    fn is_token_refused(&self, status: u16, _body: &[u8]) -> bool {
        status == 401
    }

    /// The answer to a refusal (an HTTP 4xx other than throttling) of the request for `position`
    /// that the poller can step over: an item the platform no longer shows. `Some` is taken like a
    /// parsed page (the cycle goes on); `None` (the default) retries the same request with backoff.
    fn step_over<'c>(
        &self,
        _status: u16,
        _target: &PollTarget<'_>,
        _position: &PollPosition<'_>,
        _context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Option<Result<PollPage, InputError>> {
        None
    }

    /// Parses a successful response to the request for `position`.
    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError>;
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
