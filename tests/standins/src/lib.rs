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

pub mod etsy;
pub mod meta;
pub mod quota;
mod server;

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
    /// Name (`etsy`, `meta`).
    fn name(&self) -> &'static str;

    /// The documented quota.
    fn documented_quota(&self) -> QuotaRule;

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
        _ => None,
    }
}

/// The names [`platform`] knows.
pub const PLATFORMS: &[&str] = &["meta", "etsy"];

/// The address a stand-in listens on.
pub type Addr = SocketAddr;
