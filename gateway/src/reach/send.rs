//! Sending auto-acknowledgements: e-mail over SMTP (lettre), WhatsApp, Messenger/Instagram,
//! Telegram, LINE, and the marketplaces' chats (Shopee, TikTok Shop, eBay questions; requests
//! built by `inquiry_connectors::outbound`, with the pollers' current tokens), each under its
//! outbound quota (governor: messages per second per sender and account, and a pause between two
//! messages to the same buyer), at most once per inquiry, every send audited.
//!
//! An acknowledgement is marked `sending` (fsynced) before it leaves: a gateway that stops while
//! sending marks it `uncertain` at its next start and never sends it again. An answer that does
//! not say whether the message left (a timeout, a dropped connection after the request went out)
//! is `uncertain` too, and not retried: a buyer is never acknowledged twice (LINE alone takes a
//! repeat once, by its retry key, so it is retried). An explicit refusal that may pass later (a
//! throttle, a 5xx, a relay that refused the connection) is rescheduled with backoff; anything
//! else fails for good. Failure reasons hold status and error codes only, never an answer's text.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use inquiry_connectors::outbound::{self, ChatReply, ReplyOutcome};
use inquiry_connectors::poll::{PollMethod, PollRequest};
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use metrics::counter;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use super::ack::{AckState, AckStatus, Rendered};
use super::Reach;
use crate::compliance::audit::AuditEvent;
use crate::compliance::subjects::Subjects;
use crate::config::{SenderConfig, SmtpTls};
use crate::pipeline::{Pipeline, StoredInquiry};
use crate::poll::{exchange, LiveTokens, PollClient};
use crate::retry::sleep_or_stop;
use crate::store::{Store, StoreError, Timeline};
use crate::telemetry;

/// Most attempts before an acknowledgement fails for good.
const MAX_ATTEMPTS: u32 = 6;
/// WhatsApp and Messenger accept free-form messages only within 24 hours of the buyer's last message.
const WHATSAPP_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Why a send did not go through.
#[derive(Debug)]
pub enum SendError {
    /// Refused for now: retried with backoff.
    Retry(String),
    /// Will not pass: failed for good.
    Permanent(String),
    /// It may or may not have left: recorded uncertain, never retried.
    Unknown(String),
}

/// One configured sender, ready to send.
enum Channel {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: lettre::message::Mailbox,
    },
    Whatsapp {
        client: PollClient,
        base_url: String,
        access_token: String,
    },
    /// Messenger/Instagram, Telegram and LINE: a JSON POST with a token per account.
    Chat {
        api: ChatApi,
        client: PollClient,
        base_url: String,
        tokens: std::collections::BTreeMap<String, String>,
    },
    /// Shopee, TikTok Shop and eBay: signed calls with the account's token from config or from
    /// the account's poller.
    Marketplace {
        market: Market,
        client: PollClient,
        base_url: String,
        app_key: String,
        app_secret: String,
        tokens: std::collections::BTreeMap<String, String>,
        /// TikTok Shop: the shop cipher of a shop id.
        ciphers: std::collections::BTreeMap<String, String>,
        live: LiveTokens,
    },
}

/// The marketplaces answered through their own chat APIs.
#[derive(Debug, Clone, Copy)]
enum Market {
    Shopee,
    Tiktok,
    Ebay,
}

impl Market {
    /// The pollers whose tokens reach the same accounts.
    fn pollers(self) -> &'static [&'static str] {
        match self {
            Market::Shopee => &["shopee_chat"],
            Market::Tiktok => &["tiktok_customer_service"],
            Market::Ebay => &["ebay_member_messages", "ebay_post_order_inquiries"],
        }
    }
}

/// Where an acknowledgement goes: the account it leaves from, the buyer, and the platform's
/// references the marketplaces need (the conversation, the message answered, the listing).
#[derive(Debug, Clone, Copy)]
pub struct Addressee<'a> {
    /// The seller account, as the platform names it ([`Sender::platform_account`]).
    pub account: &'a str,
    /// The buyer (an address, a platform user id).
    pub recipient: &'a str,
    /// The platform's conversation id.
    pub conversation_id: &'a str,
    /// The platform's id of the buyer's message.
    pub message_id: &'a str,
    /// The listing the message is about.
    pub item_id: Option<&'a str>,
}

/// The chat APIs that take a token per account.
#[derive(Debug, Clone, Copy)]
enum ChatApi {
    Messenger,
    Telegram,
    Line,
}

/// A sender with its quotas.
struct Sender {
    channel: Channel,
    /// Per account (the business number, the relay).
    rate: std::sync::Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    per_second: f64,
    /// Per recipient (a hash of the address): the pause between two messages to one buyer.
    pair: Option<DefaultKeyedRateLimiter<[u8; 16]>>,
    /// The pause itself, made exact by one lane per recipient: sends run concurrently, so the
    /// limiter's check (before the message is marked and built) is only a first cut.
    pause: Duration,
    lanes: Gates<[u8; 16]>,
    /// Per account: the rate held at departure too, since storing the `sending` mark between the
    /// decision and the departure takes a varying time.
    departures: Gates<String>,
}

/// Gates by key (a buyer, an account): messages under one key pass one at a time, each not before
/// the time its predecessor set. A sender that sets it from the platform's answer (which comes
/// after the platform received the message) keeps arrivals apart however long each took on the
/// way.
struct Gates<K>(std::sync::Mutex<HashMap<K, Gate>>);

/// One key's gate: when the next message may pass.
type Gate = Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>;

/// Passage through a gate: held while the message is sent; set its time to space the next one.
type Pass = tokio::sync::OwnedMutexGuard<Option<tokio::time::Instant>>;

impl<K: std::hash::Hash + Eq> Default for Gates<K> {
    fn default() -> Gates<K> {
        Gates(Default::default())
    }
}

impl<K: std::hash::Hash + Eq> Gates<K> {
    /// Waits for `key`'s gate and for the time its last passage set.
    async fn pass(&self, key: K) -> Pass {
        let gate = self.0.lock().expect("gates lock").entry(key).or_default().clone();
        let pass = gate.lock_owned().await;
        if let Some(at) = *pass {
            tokio::time::sleep_until(at).await;
        }
        pass
    }

    /// Forgets the gates nobody holds whose time has passed (they would grow without end).
    fn forget_open(&self) {
        let now = tokio::time::Instant::now();
        self.0.lock().expect("gates lock").retain(|_, gate| {
            // Kept while in use (cloned under this lock, or locked) or its time is to come.
            Arc::strong_count(gate) > 1
                || match gate.try_lock() {
                    Err(_) => true,
                    Ok(next) => next.is_some_and(|at| at > now),
                }
        });
    }
}

impl Sender {
    fn new(config: &SenderConfig, live: &LiveTokens) -> Result<Sender, String> {
        let (channel, per_second, pair_seconds) = match config {
            SenderConfig::Smtp { host, port, tls, username, password, from, per_second, .. } => {
                let builder = match tls {
                    SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                    SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)),
                }
                .map_err(|e| format!("smtp relay {host}: {e}"))?;
                let mut builder = builder.port(*port).timeout(Some(Duration::from_secs(30)));
                if let (Some(user), Some(pass)) = (username, password) {
                    builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                        user.clone(),
                        pass.clone(),
                    ));
                }
                let from = from.parse().map_err(|e| format!("smtp from: {e}"))?;
                (Channel::Smtp { transport: builder.build(), from }, *per_second, 0.0)
            }
            SenderConfig::Whatsapp { base_url, access_token, per_second, per_recipient_seconds } => {
                let channel = Channel::Whatsapp {
                    client: crate::poll::client(),
                    base_url: base_url.trim_end_matches('/').to_owned(),
                    access_token: access_token.clone(),
                };
                (channel, *per_second, *per_recipient_seconds)
            }
            SenderConfig::Messenger { base_url, page_tokens: tokens, per_second, .. } => {
                (chat(ChatApi::Messenger, base_url, tokens), *per_second, 0.0)
            }
            SenderConfig::Telegram { base_url, bot_tokens: tokens, per_second, per_recipient_seconds } => {
                (chat(ChatApi::Telegram, base_url, tokens), *per_second, *per_recipient_seconds)
            }
            SenderConfig::Line { base_url, channel_tokens: tokens, per_second } => {
                (chat(ChatApi::Line, base_url, tokens), *per_second, 0.0)
            }
            SenderConfig::Shopee { base_url, partner_id, partner_key, shop_tokens, per_second } => {
                let app = (partner_id, partner_key);
                (marketplace(Market::Shopee, base_url, app, shop_tokens, &Default::default(), live), *per_second, 0.0)
            }
            SenderConfig::TiktokShop { base_url, app_key, app_secret, shop_tokens, shop_ciphers, per_second } => {
                let channel =
                    marketplace(Market::Tiktok, base_url, (app_key, app_secret), shop_tokens, shop_ciphers, live);
                (channel, *per_second, 0.0)
            }
            SenderConfig::Ebay { base_url, user_tokens, per_second } => {
                let none = String::new();
                let channel =
                    marketplace(Market::Ebay, base_url, (&none, &none), user_tokens, &Default::default(), live);
                (channel, *per_second, 0.0)
            }
        };
        let pair = (pair_seconds > 0.0).then(|| {
            // A little over the pause: the platform measures arrivals, not departures.
            let period = Duration::from_secs_f64(pair_seconds * 1.02);
            RateLimiter::keyed(Quota::with_period(period).expect("positive period"))
        });
        let pause = Duration::from_secs_f64(pair_seconds * 1.02);
        Ok(Sender {
            channel,
            rate: Default::default(),
            per_second,
            pair,
            pause,
            lanes: Default::default(),
            departures: Default::default(),
        })
    }

    /// How long to wait before a message from `account` to `recipient` keeps both quotas;
    /// `None`: go now (and the calls are counted).
    fn wait(&self, account: &str, recipient: &str) -> Option<Duration> {
        let per_second = self.per_second;
        let rate = self
            .rate
            .lock()
            .expect("rate lock")
            .entry(account.to_owned())
            .or_insert_with(|| {
                // 98% of the quota, like the pollers, and no burst: a platform that counts calls per
                // second must not see the bucket's burst on top of the steady rate.
                let period = Duration::from_secs_f64(1.0 / (per_second * 0.98));
                let quota = Quota::with_period(period).expect("positive").allow_burst(NonZeroU32::MIN);
                Arc::new(RateLimiter::direct(quota))
            })
            .clone();
        let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
        // The account's rate first: a refusal there must not spend the buyer's pause.
        if let Err(not_until) = rate.check() {
            return Some(not_until.wait_time_from(now));
        }
        let key: [u8; 16] = Sha256::digest(recipient.as_bytes())[..16].try_into().expect("16 bytes");
        if let Some(pair) = &self.pair {
            if let Err(not_until) = pair.check_key(&key) {
                return Some(not_until.wait_time_from(now));
            }
        }
        None
    }

    /// Forgets the buyers and accounts whose pause is over (they would grow without end).
    fn forget_old_recipients(&self) {
        if let Some(pair) = &self.pair {
            pair.retain_recent();
        }
        self.lanes.forget_open();
        self.departures.forget_open();
    }

    /// Waits for the recipient's lane: the pause after the platform answered the previous message
    /// to the same buyer. The caller holds the pass while it sends; [`Sender::answered`] sets it.
    async fn space(&self, recipient: &str) -> Option<Pass> {
        if self.pause.is_zero() {
            return None;
        }
        let key: [u8; 16] = Sha256::digest(recipient.as_bytes())[..16].try_into().expect("16 bytes");
        Some(self.lanes.pass(key).await)
    }

    /// The account as the platform counts it (TikTok Shop: the shop cipher of a shop id), the key
    /// of the account's rate.
    fn platform_account<'a>(&'a self, account: &'a str) -> &'a str {
        match &self.channel {
            Channel::Marketplace { ciphers, .. } => ciphers.get(account).map_or(account, String::as_str),
            _ => account,
        }
    }

    /// Waits for `account`'s turn: one period of the account's rate after the previous message
    /// left or, at slow rates, after the platform answered it. The caller holds the pass while it
    /// checks quiet hours and marks the message, then hands it to [`Sender::depart`].
    async fn turn(&self, account: &str) -> Pass {
        self.departures.pass(account.to_owned()).await
    }

    /// The message leaves now: the next one of the account may leave one period from now or, at
    /// slow rates (10 a second or less: Shopee, TikTok Shop, eBay), one period after the platform
    /// answered this one (then the caller keeps the pass while it sends, and [`Sender::answered`]
    /// sets it).
    fn depart(&self, mut pass: Pass) -> Option<Pass> {
        *pass = Some(tokio::time::Instant::now() + self.period());
        self.paced_by_answers().then_some(pass)
    }

    /// Slow rates (10 a second or less: Shopee, TikTok Shop, eBay): the account's next message
    /// waits a period from the platform's answer, not from the departure.
    fn paced_by_answers(&self) -> bool {
        self.per_second <= 10.0
    }

    /// Sets the passes a message held when the platform answered it: the buyer's pause and, at
    /// slow rates, the account's period start now.
    fn answered(&self, lane: Option<Pass>, departure: Option<Pass>) {
        let now = tokio::time::Instant::now();
        if let Some(mut lane) = lane {
            *lane = Some(now + self.pause);
        }
        if let Some(mut departure) = departure {
            *departure = Some(now + self.period());
        }
    }

    /// One period of the account's rate (at 98% of it, like the limiter).
    fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / (self.per_second * 0.98))
    }

    /// The access token a marketplace sender uses for `account`: the one its poller uses now (it
    /// refreshes it), else the config's; `None` when neither is there.
    fn marketplace_token(&self, account: &str) -> Option<String> {
        let Channel::Marketplace { market, tokens, live, .. } = &self.channel else { return None };
        market.pollers().iter().find_map(|poller| live.get(poller, account)).or_else(|| tokens.get(account).cloned())
    }

    /// False when this replica cannot send for `account` now (a marketplace account whose token
    /// only another replica's poller holds): it must not claim the acknowledgement either.
    fn can_send(&self, account: &str) -> bool {
        !matches!(self.channel, Channel::Marketplace { .. }) || self.marketplace_token(account).is_some()
    }

    async fn send(&self, to: &Addressee<'_>, message: &Rendered, id: Uuid) -> Result<String, SendError> {
        let (account, recipient) = (to.account, to.recipient);
        match &self.channel {
            Channel::Smtp { transport, from } => {
                let to =
                    recipient.parse().map_err(|_| SendError::Permanent("the buyer's address is invalid".into()))?;
                let email = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(message.subject.clone().unwrap_or_default())
                    // The same id on every attempt: a relay or mailbox that got it twice sees one.
                    .message_id(Some(format!("<ack-{id}@inquiry-gateway>")))
                    .header(ContentType::TEXT_PLAIN)
                    .body(message.body.clone())
                    .map_err(|e| SendError::Permanent(format!("message: {e}")))?;
                match transport.send(email).await {
                    Ok(response) => Ok(format!("smtp {}", response.code())),
                    Err(err) => Err(smtp_outcome(&err)),
                }
            }
            Channel::Whatsapp { client, base_url, access_token } => {
                let body = serde_json::json!({
                    "messaging_product": "whatsapp", "recipient_type": "individual", "to": recipient,
                    "type": "text", "text": { "preview_url": false, "body": message.body },
                });
                let request = PollRequest {
                    method: PollMethod::Post,
                    path_and_query: format!("{base_url}/{account}/messages"),
                    headers: vec![
                        ("authorization".to_owned(), format!("Bearer {access_token}")),
                        ("content-type".to_owned(), "application/json".to_owned()),
                    ],
                    body: body.to_string(),
                };
                let agent = concat!("inquiry-gateway/", env!("CARGO_PKG_VERSION"));
                let (status, _, answer) =
                    exchange(client, "", request, agent).await.map_err(|e| SendError::Permanent(e.to_string()))?;
                whatsapp_outcome(status, &answer)
            }
            Channel::Chat { api, client, base_url, tokens } => {
                let token =
                    tokens.get(account).ok_or_else(|| SendError::Permanent("no token for the account".into()))?;
                let text = &message.body;
                let (request, read): (PollRequest, fn(u16, &[u8]) -> Result<String, SendError>) = match api {
                    ChatApi::Messenger => {
                        let body = messenger_body(recipient, text);
                        (
                            json_post(format!("{base_url}/{account}/messages"), Some(token), &body, &[]),
                            messenger_outcome,
                        )
                    }
                    ChatApi::Telegram => {
                        let body = serde_json::json!({ "chat_id": recipient, "text": text });
                        (json_post(format!("{base_url}/bot{token}/sendMessage"), None, &body, &[]), telegram_outcome)
                    }
                    ChatApi::Line => {
                        let body =
                            serde_json::json!({ "to": recipient, "messages": [{ "type": "text", "text": text }] });
                        // The retry key makes LINE take a retried push once (it answers 409 to a repeat).
                        let retry_key = ("x-line-retry-key".to_owned(), id.to_string());
                        let url = format!("{base_url}/v2/bot/message/push");
                        (json_post(url, Some(token), &body, &[retry_key]), line_outcome)
                    }
                };
                // The error of an unbuildable request could quote the URL (Telegram's carries the token).
                let (status, _, answer) = exchange(client, "", request, AGENT)
                    .await
                    .map_err(|_| SendError::Permanent("the request could not be built".into()))?;
                read(status, &answer)
            }
            Channel::Marketplace { market, client, base_url, app_key, app_secret, .. } => {
                let Some(token) = self.marketplace_token(account) else {
                    return Err(SendError::Retry("no token for the account (config or a running poller)".into()));
                };
                let reply = ChatReply {
                    account,
                    access_token: &token,
                    app_key,
                    app_secret,
                    buyer_id: recipient,
                    conversation_id: to.conversation_id,
                    message_id: to.message_id,
                    item_id: to.item_id,
                    text: &message.body,
                    now: time::OffsetDateTime::now_utc(),
                };
                let (built, read): (_, fn(u16, &[u8]) -> ReplyOutcome) = match market {
                    Market::Shopee => (outbound::shopee_send_message(&reply), outbound::shopee_outcome),
                    Market::Tiktok => (outbound::tiktok_send_message(&reply), outbound::tiktok_outcome),
                    Market::Ebay => (outbound::ebay_answer_question(&reply), outbound::ebay_outcome),
                };
                let mut request = match built {
                    Ok(request) => request,
                    Err(refusal) => return reply_result(refusal),
                };
                request.path_and_query = format!("{base_url}{}", request.path_and_query);
                // The error of an unbuildable request could quote the URL (Shopee's carries the token).
                let (status, _, answer) = exchange(client, "", request, AGENT)
                    .await
                    .map_err(|_| SendError::Permanent("the request could not be built".into()))?;
                reply_result(read(status, &answer))
            }
        }
    }
}

/// A marketplace's outcome as a send's: throttling and a refused token (the poller may refresh
/// it meanwhile) are tried again.
fn reply_result(outcome: ReplyOutcome) -> Result<String, SendError> {
    match outcome {
        ReplyOutcome::Sent(id) => Ok(id),
        ReplyOutcome::Throttled(reason) | ReplyOutcome::TokenRefused(reason) => Err(SendError::Retry(reason)),
        ReplyOutcome::Unknown(reason) => Err(SendError::Unknown(reason)),
        ReplyOutcome::Failed(reason) => Err(SendError::Permanent(reason)),
    }
}

/// A marketplace sender at `base_url` with the app's (id, secret) and tokens per account.
fn marketplace(
    market: Market,
    base_url: &str,
    (app_key, app_secret): (&String, &String),
    tokens: &std::collections::BTreeMap<String, String>,
    ciphers: &std::collections::BTreeMap<String, String>,
    live: &LiveTokens,
) -> Channel {
    Channel::Marketplace {
        market,
        client: crate::poll::client(),
        base_url: base_url.trim_end_matches('/').to_owned(),
        app_key: app_key.clone(),
        app_secret: app_secret.clone(),
        tokens: tokens.clone(),
        ciphers: ciphers.clone(),
        live: live.clone(),
    }
}

/// A chat sender for `api` at `base_url` with a token per account.
fn chat(api: ChatApi, base_url: &str, tokens: &std::collections::BTreeMap<String, String>) -> Channel {
    Channel::Chat {
        api,
        client: crate::poll::client(),
        base_url: base_url.trim_end_matches('/').to_owned(),
        tokens: tokens.clone(),
    }
}

/// The User-Agent of outbound messages.
const AGENT: &str = concat!("inquiry-gateway/", env!("CARGO_PKG_VERSION"));

/// A JSON POST, with a bearer token where the API wants one.
fn json_post(url: String, bearer: Option<&str>, body: &serde_json::Value, extra: &[(String, String)]) -> PollRequest {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(token) = bearer {
        headers.push(("authorization".to_owned(), format!("Bearer {token}")));
    }
    headers.extend(extra.iter().cloned());
    PollRequest { method: PollMethod::Post, path_and_query: url, headers, body: body.to_string() }
}

/// A Messenger Send API body: a text answer to the buyer's message, marked as the gateway's own
/// (`metadata`, echoed back by Meta) so that its echo is not taken for an agent's first response.
fn messenger_body(recipient: &str, text: &str) -> serde_json::Value {
    serde_json::json!({
        "recipient": { "id": recipient },
        "messaging_type": "RESPONSE",
        "message": { "text": text, "metadata": inquiry_connectors::webhook::AUTO_ACK_METADATA },
    })
}

/// Reads a Send API answer (<https://developers.facebook.com/docs/messenger-platform/reference/send-api/>,
/// error codes in <https://developers.facebook.com/docs/messenger-platform/error-codes>): the
/// message id; rate limits (4, 32, 613), temporary errors (1200, 2) and 5xx are retried; outside
/// the messaging window (10 / 2018278), a person not available (551) and the rest fail.
pub fn messenger_outcome(status: u16, body: &[u8]) -> Result<String, SendError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(json["message_id"].as_str().unwrap_or("accepted").to_owned());
    }
    let code = json["error"]["code"].as_i64().unwrap_or(0);
    let reason = format!("messenger answered {status}, error {code}");
    if status == 599 {
        Err(SendError::Unknown("no answer from messenger".to_owned()))
    } else if status == 429 || status >= 500 || matches!(code, 2 | 4 | 32 | 613 | 1200 | 80002 | 80006) {
        Err(SendError::Retry(reason))
    } else {
        Err(SendError::Permanent(reason))
    }
}

/// Reads a Bot API answer (<https://core.telegram.org/bots/api#making-requests>): `ok` with the
/// message id; 429 (flood control, `retry_after`) and 5xx are retried; a blocked bot (403) and
/// other 4xx fail.
pub fn telegram_outcome(status: u16, body: &[u8]) -> Result<String, SendError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(json["result"]["message_id"].to_string());
    }
    let reason = format!("telegram answered {status}, error {}", json["error_code"]);
    if status == 599 {
        Err(SendError::Unknown("no answer from telegram".to_owned()))
    } else if status == 429 || status >= 500 {
        Err(SendError::Retry(reason))
    } else {
        Err(SendError::Permanent(reason))
    }
}

/// Reads a LINE push answer (<https://developers.line.biz/en/reference/messaging-api/#send-push-message>):
/// 200 with `sentMessages`; 409 means this retry key was accepted before (sent); 429 and 5xx are
/// retried; other 4xx fail, with the status only (LINE's `message` may quote the request).
pub fn line_outcome(status: u16, body: &[u8]) -> Result<String, SendError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match status {
        200..=299 => Ok(json["sentMessages"][0]["id"].as_str().unwrap_or_default().to_owned()),
        409 => Ok(json["sentMessages"][0]["id"].as_str().unwrap_or("accepted before").to_owned()),
        429 | 500.. => Err(SendError::Retry(format!("line answered {status}"))),
        _ => Err(SendError::Permanent(format!("line answered {status}"))),
    }
}

/// Classifies an SMTP failure by its code and kind only (the relay's text may quote the address).
fn smtp_outcome(err: &lettre::transport::smtp::Error) -> SendError {
    let code = err.status().map(|c| c.to_string()).unwrap_or_default();
    if err.is_permanent() || err.is_client() {
        return SendError::Permanent(format!("smtp refused {code}"));
    }
    if err.is_transient() || err.is_tls() {
        // An explicit 4xx, or a handshake that failed before the message: nothing left.
        return SendError::Retry(format!("smtp refused for now {code}"));
    }
    let refused = std::error::Error::source(err).and_then(|e| e.downcast_ref::<std::io::Error>()).is_some_and(|e| {
        matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable)
    });
    if refused {
        SendError::Retry("smtp relay refused the connection".to_owned())
    } else {
        SendError::Unknown("smtp connection lost or timed out while sending".to_owned())
    }
}

/// Reads a Cloud API answer: the message id, or whether the refusal may pass later.
/// <https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes>: 130429
/// (throughput reached), 131056 (pair rate limit), 131048 (spam rate limit), 80007 and 4 (rate
/// limits) and 5xx are retried; 131047 (more than 24 hours since the buyer wrote) and the rest fail.
pub fn whatsapp_outcome(status: u16, body: &[u8]) -> Result<String, SendError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(json["messages"][0]["id"].as_str().unwrap_or("accepted").to_owned());
    }
    let code = json["error"]["code"].as_i64().unwrap_or(0);
    let reason = format!("whatsapp answered {status}, error {code}");
    if status == 599 {
        Err(SendError::Unknown("no answer from whatsapp".to_owned()))
    } else if status == 429 || status >= 500 || matches!(code, 4 | 80007 | 130429 | 131048 | 131056) {
        Err(SendError::Retry(reason))
    } else {
        Err(SendError::Permanent(reason))
    }
}

/// Claims in the CQL store that replicas share: an inquiry that reached two replicas (a webhook
/// redelivered to another one, a client retrying elsewhere) has the same id on both and is
/// acknowledged by the first to claim it (`INSERT ... IF NOT EXISTS`, kept 30 days).
pub struct AckClaims {
    config: crate::config::CqlConfig,
    holder: String,
    cql: tokio::sync::OnceCell<(
        scylla::client::session::Session,
        scylla::statement::prepared::PreparedStatement,
        scylla::statement::prepared::PreparedStatement,
    )>,
}

impl AckClaims {
    /// Claims for `holder` (this replica's name) in the cluster of `config`.
    pub fn new(config: &crate::config::CqlConfig, holder: &str) -> AckClaims {
        AckClaims { config: config.clone(), holder: holder.to_owned(), cql: tokio::sync::OnceCell::new() }
    }

    /// The session and the prepared claim and read statements (made on first use).
    async fn statements(
        &self,
    ) -> Result<
        &(
            scylla::client::session::Session,
            scylla::statement::prepared::PreparedStatement,
            scylla::statement::prepared::PreparedStatement,
        ),
        String,
    > {
        self.cql
            .get_or_try_init(|| async {
                let session = crate::sinks::cql::connect(&self.config).await.map_err(|e| e.to_string())?;
                let ks = &self.config.keyspace;
                let mut insert = session
                    .prepare(format!(
                        "INSERT INTO {ks}.ack_claims (inquiry_id, holder, at) VALUES (?, ?, ?) IF NOT EXISTS"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                insert.set_serial_consistency(Some(scylla::statement::SerialConsistency::Serial));
                let mut read = session
                    .prepare(format!("SELECT holder FROM {ks}.ack_claims WHERE inquiry_id = ?"))
                    .await
                    .map_err(|e| e.to_string())?;
                read.set_consistency(scylla::statement::Consistency::Serial);
                Ok::<_, String>((session, insert, read))
            })
            .await
    }

    /// Gives up this replica's claim of inquiry `id` (it cannot send it); failing that, the claim
    /// stays and no replica sends it (logged).
    async fn release(&self, id: Uuid) {
        let released = async {
            let (session, _, _) = self.statements().await?;
            let ks = &self.config.keyspace;
            let mut delete = scylla::statement::unprepared::Statement::new(format!(
                "DELETE FROM {ks}.ack_claims WHERE inquiry_id = ? IF holder = ?"
            ));
            delete.set_serial_consistency(Some(scylla::statement::SerialConsistency::Serial));
            session.query_unpaged(delete, (id, &self.holder)).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        if let Err(err) = released.await {
            tracing::warn!(inquiry_id = %id, error = %err, "acknowledgement claim not released");
        }
    }

    /// The replica holding inquiry `id`'s claim, if one does.
    async fn holder(&self, id: Uuid) -> Result<Option<String>, String> {
        let (session, _, read) = self.statements().await?;
        let holder = session.execute_unpaged(read, (id,)).await.map_err(|e| e.to_string())?;
        let holder = holder
            .into_rows_result()
            .map_err(|e| e.to_string())?
            .maybe_first_row::<(Option<String>,)>()
            .map_err(|e| e.to_string())?;
        Ok(holder.and_then(|(h,)| h))
    }

    /// True if this replica may send inquiry `id`'s acknowledgement: it claimed it now, or had
    /// claimed it before (a restart between the claim and the send).
    async fn claim(&self, id: Uuid) -> Result<bool, String> {
        let (session, insert, _) = self.statements().await?;
        let at =
            scylla::value::CqlTimestamp((time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64);
        let result = session.execute_unpaged(insert, (id, &self.holder, at)).await.map_err(|e| e.to_string())?;
        let rows = result.into_rows_result().map_err(|e| e.to_string())?;
        let applied = rows
            .rows::<scylla::value::Row>()
            .map_err(|e| e.to_string())?
            .next()
            .and_then(Result::ok)
            .and_then(|row| row.columns.into_iter().next().flatten());
        if matches!(applied, Some(scylla::value::CqlValue::Boolean(true))) {
            return Ok(true);
        }
        Ok(self.holder(id).await?.as_deref() == Some(self.holder.as_str()))
    }
}

/// What the senders share with the rest of the process.
pub struct SenderParts {
    /// With a CQL store: the claims that let one replica alone acknowledge an inquiry.
    pub claims: Option<Arc<AckClaims>>,
    /// The pollers' current access tokens (the marketplace senders use them).
    pub live_tokens: LiveTokens,
}

/// Sends due acknowledgements until `stop` fires.
pub async fn run_acks(
    reach: Arc<Reach>,
    store: Store,
    subjects: Arc<Subjects>,
    pipeline: Pipeline,
    parts: SenderParts,
    mut stop: watch::Receiver<()>,
) {
    let SenderParts { claims, live_tokens } = parts;
    let senders: Vec<Option<Sender>> = reach
        .acks()
        .senders()
        .iter()
        .map(|config| {
            Sender::new(config, &live_tokens)
                .map_err(|err| tracing::error!(error = %err, "acknowledgement sender unusable; its messages fail"))
                .ok()
        })
        .collect();
    if let Err(err) = recover_sending(&store, &pipeline).await {
        tracing::error!(error = %err, "cannot check for interrupted acknowledgements");
    }
    let mut last_sweep = std::time::Instant::now();
    loop {
        let now = reach.clock.now_ms();
        let due = match store.due_timers(Timeline::Ack, now, 64) {
            Ok(due) => due,
            Err(err) => {
                tracing::error!(error = %err, "acknowledgement timers unreadable; retrying");
                if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        // Several at once: a slow relay must not hold the other channels.
        let (reach, store, subjects, pipeline, senders) = (&reach, &store, &subjects, &pipeline, &senders);
        let claims = claims.as_deref();
        futures_util::stream::iter(due)
            .for_each_concurrent(16, |(due_ms, id)| async move {
                let sent = send_one(reach, store, subjects, pipeline, claims, senders, due_ms, id).await;
                if let Err(err) = sent {
                    tracing::error!(inquiry_id = %id, error = %err, "acknowledgement not recorded; retrying in 5 s");
                    let later = reach.clock.now_ms() + 5000;
                    let _ = reach.update_ack(id, Some(due_ms), |state| {
                        // Only a scheduled one has a timer to move; one left `sending` (its
                        // outcome not recorded) becomes uncertain at the next start.
                        if state.status != AckStatus::Scheduled {
                            return false;
                        }
                        state.not_before_ms = later;
                        true
                    });
                }
            })
            .await;
        if last_sweep.elapsed() > Duration::from_secs(60) {
            senders.iter().flatten().for_each(Sender::forget_old_recipients);
            last_sweep = std::time::Instant::now();
        }
        let next = store.next_due(Timeline::Ack).ok().flatten().map_or(1000, |at| (at - now).clamp(0, 1000));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(next.max(5) as u64)) => {}
            _ = reach.acks_changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Acknowledgements left `sending` by a stop become `uncertain`: never sent again.
async fn recover_sending(store: &Store, pipeline: &Pipeline) -> Result<(), StoreError> {
    for (id, bytes) in store.timeline_states(Timeline::Ack)? {
        let Ok(mut state) = serde_json::from_slice::<AckState>(&bytes) else { continue };
        if state.status != AckStatus::Sending {
            continue;
        }
        state.status = AckStatus::Uncertain;
        let mut batch = store.batch();
        batch.put_timeline_state(Timeline::Ack, id, &serde_json::to_vec(&state).expect("states serialize"));
        batch.commit()?;
        counter!(telemetry::ACKS, "channel" => channel_label(&state.channel), "outcome" => "uncertain").increment(1);
        audit_ack(pipeline, ack_event("ack.uncertain", &state, None)).await;
    }
    Ok(())
}

/// Sends (or reschedules, or fails) the acknowledgement of inquiry `id` whose timer is `due_ms`.
/// Every change of its state goes through [`Reach::update_ack`], so a reply that cancels it
/// cannot be overwritten.
#[allow(clippy::too_many_arguments)]
async fn send_one(
    reach: &Reach,
    store: &Store,
    subjects: &Subjects,
    pipeline: &Pipeline,
    claims: Option<&AckClaims>,
    senders: &[Option<Sender>],
    due_ms: i64,
    id: Uuid,
) -> Result<(), StoreError> {
    let now = reach.clock.now_ms();
    let scheduled = |state: &AckState| state.status == AckStatus::Scheduled;
    let state = store.timeline_state(Timeline::Ack, id)?.and_then(|b| serde_json::from_slice::<AckState>(&b).ok());
    let Some(state) = state.filter(scheduled) else {
        // Done, cancelled or gone: only its timer is left to remove.
        reach.update_ack(id, Some(due_ms), |_| false)?;
        return Ok(());
    };
    let fail = |reason: &str| finish(reach, pipeline, id, due_ms, AckStatus::Failed { reason: reason.to_owned() });
    // What to send, to whom: opened from the sealed inquiry now, never kept.
    let stored = StoredInquiry::load(store, id)?;
    let personal = match &stored {
        Some(stored) => subjects.open(&stored.inquiry)?,
        None => None,
    };
    let (Some(stored), Some(personal)) = (stored, personal) else { return fail("erased").await };
    let recipient = match state.channel.as_str() {
        "whatsapp" | "telegram" | "line" | "messenger" | "instagram" | "shopee" | "tiktok_shop" | "ebay" => {
            personal.platform_user_id.clone()
        }
        _ => personal.email.clone(),
    };
    if state.channel == "ebay" && stored.inquiry.attributes.contains_key("inquiry_id") {
        // A Post-Order inquiry is answered inside the inquiry, not by member message.
        return fail("an eBay Post-Order inquiry has no member-message answer").await;
    }
    let Some(recipient) = recipient else { return fail("no recipient").await };
    if matches!(state.channel.as_str(), "whatsapp" | "messenger" | "instagram") {
        // WhatsApp's customer service window and Meta's standard messaging window: free-form
        // messages only within 24 hours of the buyer's last message.
        let wrote_ms = (stored.inquiry.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64;
        if now - wrote_ms > WHATSAPP_WINDOW_MS {
            return fail("outside the 24-hour messaging window").await;
        }
    }
    // Quiet hours hold when it leaves, not only when it was planned: a wait for the quota, a retry
    // or a backlog may have carried it into the buyer's night. Checked now, again after the
    // waits below (before the claim) and once more with the mark.
    let country = stored.inquiry.buyer.country.as_deref();
    let held_for_quiet_hours = |now: i64| -> Result<bool, StoreError> {
        let allowed = reach.acks().quiet_until(now, country);
        if allowed > now {
            reach.update_ack(id, Some(due_ms), |state| {
                state.not_before_ms = allowed;
                scheduled(state)
            })?;
        }
        Ok(allowed > now)
    };
    if held_for_quiet_hours(now)? {
        return Ok(());
    }
    // The sender configured for the channel now (the config may have changed since the plan).
    let Some(sender) = reach.acks().sender_for(&state.channel).and_then(|i| senders.get(i)).and_then(Option::as_ref)
    else {
        return fail("no sender").await;
    };
    let platform_account = sender.platform_account(&state.account);
    if let Some(wait) = sender.wait(platform_account, &recipient) {
        // Over the quota: the same acknowledgement a little later.
        let later = now + wait.as_millis() as i64 + 1;
        reach.update_ack(id, Some(due_ms), |state| {
            state.not_before_ms = later;
            scheduled(state)
        })?;
        return Ok(());
    }
    let sla_deadline = reach.load(id)?.map(|sla| super::sla::rfc3339(sla.deadline_ms)).unwrap_or_default();
    let values = HashMap::from([
        ("buyer_name", personal.name.clone().unwrap_or_default()),
        ("order_id", stored.inquiry.order_id.clone().unwrap_or_default()),
        ("account", stored.inquiry.account.clone()),
        ("inquiry_id", id.to_string()),
        ("first_response_by", sla_deadline),
    ]);
    let Some(message) = reach.acks().render(&state, &values) else { return fail("no template").await };
    if reach.dry_run() {
        // The wording it would have sent is recorded all the same.
        reach.update_ack(id, None, |state| {
            state.template_sha256 = message.template_sha256.clone();
            true
        })?;
        return finish(reach, pipeline, id, due_ms, AckStatus::DryRun).await;
    }
    // A replica that cannot send now (no token for the account here) neither waits for the
    // buyer's lane nor claims: the one whose poller has the token may.
    if !sender.can_send(platform_account) {
        let waits = state.no_token_waits + 1;
        if waits >= MAX_ATTEMPTS {
            // Sent by the replica whose poller has the token, if one claimed it.
            if let Some(claims) = claims {
                match claims.holder(id).await {
                    Ok(Some(holder)) if holder != claims.holder => return fail(super::ack::CLAIMED_ELSEWHERE).await,
                    // Claimed here before the token moved on (a retry after the lease went):
                    // let go, so that the replica with the token may claim it.
                    Ok(Some(_)) => claims.release(id).await,
                    _ => {}
                }
            }
            return fail("no token for the account (config or a running poller)").await;
        }
        let later = reach.clock.now_ms() + (1000i64 << waits.min(10));
        reach.update_ack(id, Some(due_ms), |state| {
            state.no_token_waits = waits;
            state.not_before_ms = later;
            scheduled(state)
        })?;
        return Ok(());
    }
    // Its turn among the messages to this buyer first: a stop or a reply while it waits leaves
    // it scheduled or cancelled, not half-sent. At slow rates (paced by the platform's answers)
    // the account's turn can take seconds: it is waited for before the mark too. At fast rates
    // it comes after the mark (a few periods at most), so that the mark's store write does not
    // slow the account's rate.
    let lane = sender.space(&recipient).await;
    let early_turn = match sender.paced_by_answers() {
        true => Some(sender.turn(platform_account).await),
        false => None,
    };
    if held_for_quiet_hours(reach.clock.now_ms())? {
        return Ok(());
    }
    // Another replica with the same inquiry acknowledges it, not this one (claimed after the
    // waits: one held for quiet hours meanwhile is not left claimed overnight). A slow sender
    // holds the account's turn through the claim's round trip.
    if let Some(claims) = claims {
        match claims.claim(id).await {
            Ok(true) => {}
            Ok(false) => {
                drop((lane, early_turn)); // the audit entry may wait for room: the others go on
                return fail(super::ack::CLAIMED_ELSEWHERE).await;
            }
            Err(err) => {
                tracing::warn!(inquiry_id = %id, error = %err, "cannot claim the acknowledgement; retrying");
                let later = reach.clock.now_ms() + 2000;
                reach.update_ack(id, Some(due_ms), |state| {
                    state.not_before_ms = later;
                    scheduled(state)
                })?;
                return Ok(());
            }
        }
    }
    // Durable before it leaves: a stop from here on never sends it again. A reply may have
    // cancelled it meanwhile.
    let marked = match mark_leaving(reach, id, due_ms, country, &message)? {
        Leaving::Now(marked) => marked,
        Leaving::HeldUntil(until_ms) => {
            tracing::debug!(inquiry_id = %id, until_ms, "acknowledgement held for the buyer's quiet hours");
            return Ok(());
        }
        Leaving::NotScheduled => return Ok(()),
    };
    let turn = match early_turn {
        Some(turn) => turn,
        None => sender.turn(platform_account).await,
    };
    let inquiry = &stored.inquiry;
    let to = Addressee {
        account: platform_account,
        recipient: &recipient,
        conversation_id: &inquiry.external.conversation_id,
        message_id: &inquiry.external.message_id,
        item_id: inquiry.product_ids.first().map(String::as_str),
    };
    let departure = sender.depart(turn);
    let outcome = sender.send(&to, &message, id).await;
    sender.answered(lane, departure);
    match outcome {
        Ok(provider_id) => finish(reach, pipeline, id, due_ms, AckStatus::Sent { provider_id }).await,
        Err(SendError::Retry(reason)) if marked.attempts < MAX_ATTEMPTS => {
            tracing::warn!(inquiry_id = %id, attempts = marked.attempts, reason, "acknowledgement refused for now; retrying");
            counter!(telemetry::ACKS, "channel" => channel_label(&state.channel), "outcome" => "retried").increment(1);
            // From the refusal, not from when the send began: waits may have taken longer.
            let later = reach.clock.now_ms() + (1000i64 << marked.attempts.min(10));
            reach.update_ack(id, Some(due_ms), |state| {
                // A reply while it was sending cancels the retry.
                state.status = if state.cancel_requested { AckStatus::Cancelled } else { AckStatus::Scheduled };
                state.not_before_ms = later;
                true
            })?;
            Ok(())
        }
        Err(SendError::Unknown(reason)) => {
            tracing::warn!(inquiry_id = %id, reason, "acknowledgement may or may not have left; not sent again");
            finish(reach, pipeline, id, due_ms, AckStatus::Uncertain).await
        }
        Err(SendError::Retry(reason) | SendError::Permanent(reason)) => {
            finish(reach, pipeline, id, due_ms, AckStatus::Failed { reason }).await
        }
    }
}

/// What [`mark_leaving`] decided.
#[derive(Debug)]
pub(crate) enum Leaving {
    /// Marked `sending`: it leaves now (the state as marked).
    Now(AckState),
    /// In the buyer's quiet hours now: scheduled again for this time (Unix ms).
    HeldUntil(i64),
    /// No longer scheduled (cancelled by a reply, or gone): not sent.
    NotScheduled,
}

/// Marks inquiry `id`'s acknowledgement `sending` with the variant `message` renders, just before
/// it leaves, unless it is in the quiet hours of a buyer in `country` by the clock now (then it
/// is scheduled for their end) or no longer scheduled. One store write under the reach lock.
pub(crate) fn mark_leaving(
    reach: &Reach,
    id: Uuid,
    due_ms: i64,
    country: Option<&str>,
    message: &Rendered,
) -> Result<Leaving, StoreError> {
    let now = reach.clock.now_ms();
    let allowed = reach.acks().quiet_until(now, country);
    let mut leaving = Leaving::NotScheduled;
    reach.update_ack(id, Some(due_ms), |state| {
        if state.status != AckStatus::Scheduled {
            return false;
        }
        if allowed > now {
            state.not_before_ms = allowed;
            leaving = Leaving::HeldUntil(allowed);
            return true;
        }
        state.status = AckStatus::Sending;
        state.attempts += 1;
        // What is sent is recorded: the variant in force now (a reload may have changed it
        // since the acknowledgement was planned).
        state.version = message.version;
        state.language = message.language.clone();
        state.template_sha256 = message.template_sha256.clone();
        leaving = Leaving::Now(state.clone());
        true
    })?;
    Ok(leaving)
}

/// Records the final status of inquiry `id`'s acknowledgement, counts and audits it.
async fn finish(
    reach: &Reach,
    pipeline: &Pipeline,
    id: Uuid,
    due_ms: i64,
    status: AckStatus,
) -> Result<(), StoreError> {
    let (kind, outcome, provider_id) = match &status {
        AckStatus::Sent { provider_id } => ("ack.sent", "sent", Some(provider_id.clone())),
        AckStatus::DryRun => ("ack.dry_run", "dry_run", None),
        AckStatus::Uncertain => ("ack.uncertain", "uncertain", None),
        _ => ("ack.failed", "failed", None),
    };
    if let AckStatus::Failed { reason } = &status {
        tracing::warn!(inquiry_id = %id, reason, "acknowledgement not sent");
    }
    let Some(state) = reach.update_ack(id, Some(due_ms), |state| {
        state.status = status;
        true
    })?
    else {
        return Ok(());
    };
    counter!(telemetry::ACKS, "channel" => channel_label(&state.channel), "outcome" => outcome).increment(1);
    audit_ack(pipeline, ack_event(kind, &state, provider_id)).await;
    Ok(())
}

/// Writes an acknowledgement's audit entry, in turn with ingest when the queue is full (every
/// send is audited; a busy ingest must not crowd it out). Only a failing store loses it, and
/// says so.
async fn audit_ack(pipeline: &Pipeline, event: AuditEvent) {
    let kind = event.kind.clone();
    if let Err(err) = pipeline.audit_in_turn(vec![event]).await {
        tracing::error!(error = %err, kind, "acknowledgement audit entry not written");
    }
}

/// The audit event of an acknowledgement: which template version went where (never the text or
/// the recipient).
fn ack_event(kind: &str, state: &AckState, provider_id: Option<String>) -> AuditEvent {
    AuditEvent::new(kind, "reach").inquiry(state.inquiry_id).detail(serde_json::json!({
        "template": state.template, "version": state.version, "language": state.language,
        "template_sha256": state.template_sha256,
        "channel": state.channel, "account": state.account, "attempts": state.attempts,
        "status": state.status, "provider_message_id": provider_id,
    }))
}

fn channel_label(channel: &str) -> &'static str {
    match channel {
        "whatsapp" => "whatsapp",
        "telegram" => "telegram",
        "line" => "line",
        "messenger" => "messenger",
        "instagram" => "instagram",
        "email" => "email",
        "web_form" => "web_form",
        "shopee" => "shopee",
        "tiktok_shop" => "tiktok_shop",
        "ebay" => "ebay",
        _ => "other",
    }
}
