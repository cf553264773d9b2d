//! Local stand-ins for the platform APIs the gateway's pollers call. A platform's remote API
//! cannot be reached from the tests, so each stand-in speaks the shape its platform documents
//! (the module names the document) and enforces the platform's documented quota, counting
//! every call and every violation.
//!
//! All stand-ins serve one [`Mailbox`] of buyer and seller messages, each platform rendering it in
//! its own response shape. The tests start them in-process ([`Standin::start`]); the
//! `platform-standins` binary serves them for a newcomer trying `deploy/examples/connectors.toml`.
//! Every stand-in also answers `GET /_standin/stats` (calls and violations per quota key) and
//! `POST /_standin/messages` (a JSON array of [`Message`]s to add).

pub mod aliexpress;
pub mod chat_send;
pub mod ebay;
pub mod ebay_post_order;
pub mod etsy;
pub mod indiamart;
pub mod marketplace_send;
pub mod meta;
pub mod quota;
mod server;
pub mod shopee;
pub mod shopee_push;
pub mod tiktok;
pub mod whatsapp_send;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use quota::{Admission, KeyStats, QuotaRule, Quotas};
pub use server::Standin;

/// One message of a conversation, as the platform stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// Seller account (page id, shop id, user name).
    pub account: String,
    /// Conversation (thread, order) id.
    pub conversation: String,
    /// Message id.
    pub id: String,
    /// The buyer's platform user id.
    pub buyer_id: String,
    /// The buyer's display name.
    #[serde(default)]
    pub buyer_name: String,
    /// Text.
    pub text: String,
    /// When it was sent, Unix seconds.
    pub created: i64,
    /// Sent by the seller (a reply), not the buyer.
    #[serde(default)]
    pub from_seller: bool,
    /// Order the message is about.
    #[serde(default)]
    pub order_id: Option<String>,
    /// Buyer's country (ISO 3166-1 alpha-2).
    #[serde(default)]
    pub country: Option<String>,
}

/// The messages a stand-in serves.
#[derive(Debug, Default, Clone)]
pub struct Mailbox {
    messages: Arc<Mutex<Vec<Message>>>,
}

impl Mailbox {
    /// Adds a message.
    pub fn add(&self, message: Message) {
        self.messages.lock().expect("mailbox lock").push(message);
    }

    /// Every message of `account`, oldest first (ties by id).
    pub fn of_account(&self, account: &str) -> Vec<Message> {
        let mut messages: Vec<Message> =
            self.messages.lock().expect("mailbox lock").iter().filter(|m| m.account == account).cloned().collect();
        messages.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        messages
    }

    /// Every message, in the order they were added.
    pub fn all(&self) -> Vec<Message> {
        self.messages.lock().expect("mailbox lock").clone()
    }

    /// Buyer messages (not the seller's replies) of every account.
    pub fn buyer_messages(&self) -> usize {
        self.messages.lock().expect("mailbox lock").iter().filter(|m| !m.from_seller).count()
    }
}

/// An HTTP request as a stand-in sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, upper case.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query parameters (percent-decoded).
    pub query: BTreeMap<String, String>,
    /// Headers, names lower case.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: bytes::Bytes,
}

impl Request {
    /// Header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// A stand-in's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers to send besides the content type.
    pub headers: Vec<(String, String)>,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply { status, headers: Vec::new(), content_type: "application/json", body: body.to_string() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl ToString) -> Reply {
        self.headers.push((name.to_owned(), value.to_string()));
        self
    }
}

/// A platform API: how it authenticates, counts its quota, throttles and answers.
pub trait Platform: Send + Sync + 'static {
    /// Name (`etsy`, `meta`, `ebay`, `shopee`, `tiktok`, `aliexpress`, `indiamart`, ...).
    fn name(&self) -> &'static str;

    /// The documented quota.
    fn documented_quota(&self) -> QuotaRule;

    /// Whether the platform counts calls per second (a window) rather than in a bucket that
    /// lets a burst through after a quiet spell.
    fn counts_per_second(&self) -> bool {
        false
    }

    /// The answer to a request outside the API's quota (an OAuth token endpoint), if it is one.
    fn outside_quota(&self, _request: &Request) -> Option<Reply> {
        None
    }

    /// The key the platform counts the quota under (the app's API key, the page id), or the
    /// answer to a request that does not authenticate or names no known operation.
    fn quota_key(&self, request: &Request) -> Result<String, Reply>;

    /// The answer to a call over the quota.
    fn throttled(&self, admission: &Admission) -> Reply;

    /// The answer to a call within quota; `base` is the stand-in's own URL (for next-page links).
    fn serve(&self, request: &Request, mailbox: &Mailbox, admission: &Admission, base: &str) -> Reply;
}

/// Every platform the binary can serve, by name.
pub fn platform(name: &str) -> Option<Arc<dyn Platform>> {
    match name {
        "meta" => Some(Arc::new(meta::Meta::default())),
        "etsy" => Some(Arc::new(etsy::Etsy::default())),
        "ebay" => Some(Arc::new(ebay::Ebay::default())),
        "shopee" => Some(Arc::new(shopee::Shopee::default())),
        "tiktok" => Some(Arc::new(tiktok::Tiktok::default())),
        "shopee_push" => Some(Arc::new(shopee_push::ShopeePush::default())),
        "aliexpress" => Some(Arc::new(aliexpress::Aliexpress::default())),
        "whatsapp_send" => Some(Arc::new(whatsapp_send::WhatsappSend::default())),
        "ebay_post_order" => Some(Arc::new(ebay_post_order::EbayPostOrder::default())),
        "indiamart" => Some(Arc::new(indiamart::Indiamart::default())),
        _ => None,
    }
}

/// The names [`platform`] knows, in the order the binary serves them on 127.0.0.1:18101+ (meta
/// 18101, etsy 18102, ebay 18103, shopee 18104, tiktok 18105, shopee_push 18106, aliexpress 18107,
/// whatsapp_send 18108, ebay_post_order 18109, indiamart 18110).
pub const PLATFORMS: &[&str] = &[
    "meta",
    "etsy",
    "ebay",
    "shopee",
    "tiktok",
    "shopee_push",
    "aliexpress",
    "whatsapp_send",
    "ebay_post_order",
    "indiamart",
];

/// The address a stand-in listens on.
pub type Addr = SocketAddr;

/// Helpers for the stand-ins' unit tests: requests built by the real pollers, and whole polling
/// cycles run in-process (stand-in `quota_key` and `serve`, poller `parse`).
#[cfg(test)]
pub(crate) mod testing {
    use inquiry_connectors::poll::{PollCredentials, PollPosition, PollRequest, PollTarget, Poller};
    use inquiry_connectors::NormalizeContext;
    use time::OffsetDateTime;

    use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Quotas, Request};

    /// A `Request` as the server would see `wanted`.
    pub fn request_from(wanted: &PollRequest) -> Request {
        let (path, query) = wanted.path_and_query.split_once('?').unwrap_or((&wanted.path_and_query, ""));
        Request {
            method: format!("{:?}", wanted.method).to_uppercase(),
            path: crate::server::percent_decode(path),
            query: query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (crate::server::percent_decode(k), crate::server::percent_decode(v))
                })
                .collect(),
            headers: wanted.headers.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect(),
            body: bytes::Bytes::from(wanted.body.clone()),
        }
    }

    /// The first request of a cycle of `poller`, made now.
    pub fn request_of(
        poller: &dyn Poller,
        account: &str,
        token: &str,
        app_key: Option<&str>,
        app_secret: Option<&str>,
        cursor: Option<&str>,
    ) -> Request {
        let target = PollTarget {
            account,
            credentials: PollCredentials { access_token: token, app_key, app_secret },
            now: OffsetDateTime::now_utc(),
            wants_answers: false,
        };
        request_from(&poller.request(&target, &PollPosition { cursor, page: None }))
    }

    /// An admission within quota.
    pub fn admission() -> Admission {
        Quotas::new(QuotaRule { per_second: 1.0, burst: 1, per_day: Some(10) }).admit("k")
    }

    /// Runs two polling cycles of `poller_name` against `platform` serving two buyer messages and
    /// a seller reply for `account`: returns the first cycle's (inquiries, ignored) and checks the
    /// second cycle, from the first one's cursor, takes nothing again.
    pub fn exchange(
        platform: &dyn Platform,
        poller_name: &str,
        account: &str,
        token: &str,
        app_key: Option<&str>,
        app_secret: Option<&str>,
    ) -> (usize, usize) {
        let poller = inquiry_connectors::poll::find(poller_name).expect("registered poller");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mailbox = Mailbox::default();
        let message = |id: &str, conversation: &str, from_seller: bool, ago: i64, text: &str| Message {
            account: account.to_owned(),
            conversation: conversation.to_owned(),
            id: id.to_owned(),
            buyer_id: if conversation == "3000000001" { "100000001" } else { "100000002" }.to_owned(),
            buyer_name: "Test Buyer".to_owned(),
            text: text.to_owned(),
            created: now - ago,
            from_seller,
            order_id: None,
            country: Some("DE".to_owned()),
        };
        mailbox.add(message("910001", "3000000001", false, 600, "Do you sell 200 aprons in blue?"));
        mailbox.add(message("910002", "3000000001", true, 300, "Yes, we do."));
        mailbox.add(message("910003", "3000000002", false, 120, "Can you ship to Vienna & Graz?"));
        let credentials = PollCredentials { access_token: token, app_key, app_secret };
        let mut cursor: Option<String> = None;
        let mut first = None;
        for _cycle in 0..2 {
            let (mut inquiries, mut ignored, mut page_token, mut next_cursor) = (0, 0, None::<String>, cursor.clone());
            let mut ids = Vec::new();
            for _page in 0..50 {
                let target = PollTarget { account, credentials, now: OffsetDateTime::now_utc(), wants_answers: false };
                let position = PollPosition { cursor: cursor.as_deref(), page: page_token.as_deref() };
                let request = request_from(&poller.request(&target, &position));
                platform.quota_key(&request).unwrap_or_else(|r| panic!("refused: {}", r.body));
                let reply = platform.serve(&request, &mailbox, &admission(), "http://127.0.0.1:1");
                assert_eq!(reply.status, 200, "{}", reply.body);
                let mut context = || NormalizeContext { received_at: OffsetDateTime::now_utc(), trace_id: "t" };
                let page = poller.parse(reply.body.as_bytes(), &target, &position, &mut context).expect("parses");
                inquiries += page.inquiries.len();
                ids.extend(page.inquiries.iter().map(|i| i.id));
                ignored += page.ignored;
                next_cursor = page.cursor.or(next_cursor);
                page_token = page.next_page;
                if page_token.is_none() {
                    break;
                }
            }
            assert!(page_token.is_none(), "the cycle ends");
            cursor = next_cursor;
            match &first {
                None => first = Some((inquiries, ignored, ids)),
                // Within a poller's look-back a message may come again (the pipeline's dedup drops
                // it); nothing new may.
                Some((_, _, taken)) => assert!(
                    ids.iter().all(|id| taken.contains(id)),
                    "a second cycle from the cursor takes nothing it did not take before"
                ),
            }
        }
        first.map(|(inquiries, ignored, _)| (inquiries, ignored)).expect("one cycle ran")
    }
}
