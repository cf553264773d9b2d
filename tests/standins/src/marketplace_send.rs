//! Answering buyers on the marketplaces' own chats, for the auto-acknowledgement tests.
//!
//! - Shopee Open Platform v2 `POST /api/v2/sellerchat/send_message?partner_id&timestamp&access_token&shop_id&sign`
//!   (sign: hex HMAC-SHA256(partner key, partner_id ‖ path ‖ timestamp ‖ access_token ‖ shop_id))
//!   with `{"to_id": <int>, "message_type": "text", "content": {"text"}}`; answers
//!   `{"request_id", "error": "", "message": "", "response": {"message_id", ...}}`, errors as a
//!   non-empty `error` (`error_auth`, `invalid_acceess_token`, `error_param`). Shopee publishes no
//!   rate for it: this stand-in holds senders to one message per second per shop.
//! - TikTok Shop 202309 `POST /customer_service/202309/conversations/{id}/messages?app_key&timestamp&shop_cipher&sign`
//!   with `x-tts-access-token`, body `{"type": "TEXT", "content": "{\"content\": ...}"}` (sign:
//!   hex HMAC-SHA256(secret, secret ‖ path ‖ sorted params ‖ body ‖ secret)); answers `{"code": 0,
//!   "data": {"message_id"}}`; over the limit 429 with code 36009002. No published rate for this
//!   call: one per second per shop here.
//! - eBay Trading `AddMemberMessageRTQ` (`POST /ws/api.dll`, `X-EBAY-API-CALL-NAME`,
//!   `X-EBAY-API-IAF-TOKEN`): an XML request naming `ItemID`, `MemberMessage` `Body`,
//!   `ParentMessageID`, `RecipientID`; answers `Ack`. eBay's documented limit: at most 75 calls
//!   per seller in any 60 seconds (more blocks the app for 100 s); counted here over a sliding
//!   60 s window, a call over it answered `Failure` with error 21919144 and counted.
//!
//! Every message taken is kept in the mailbox (account = the shop or seller, buyer = the
//! recipient, conversation = the conversation or the parent message, `from_seller`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::chat_send::keep_in;
use crate::{Admission, Mailbox, Platform, QuotaRule, Reply, Request};

/// A signed timestamp within 5 minutes of now.
fn fresh(timestamp: Option<&str>) -> bool {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    timestamp.and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| (now - t).abs() <= 300)
}

/// The Shopee `send_message` stand-in.
#[derive(Debug)]
pub struct ShopeeSend {
    /// The partner id it accepts.
    pub partner_id: String,
    /// The partner key requests are signed with.
    pub partner_key: String,
    /// Shop access tokens it accepts, with their shop.
    pub tokens: Vec<(String, String)>,
    sent: AtomicU64,
}

impl Default for ShopeeSend {
    fn default() -> ShopeeSend {
        ShopeeSend {
            partner_id: "100001".to_owned(),
            partner_key: "test-shopee-partner-key".to_owned(),
            tokens: vec![("test-shopee-shop-token".to_owned(), "1001".to_owned())],
            sent: AtomicU64::new(0),
        }
    }
}

fn shopee_error(status: u16, error: &str, message: &str) -> Reply {
    Reply::json(status, &json!({"request_id": "standin", "error": error, "message": message}))
}

const SHOPEE_PATH: &str = "/api/v2/sellerchat/send_message";

impl Platform for ShopeeSend {
    fn name(&self) -> &'static str {
        "shopee_send"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 1.0, burst: 1, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.method != "POST" || request.path != SHOPEE_PATH {
            return Err(shopee_error(404, "error_not_found", "Wrong path"));
        }
        let param = |name| request.param(name).unwrap_or_default();
        let (shop, token) = (param("shop_id"), param("access_token"));
        if param("partner_id") != self.partner_id || !fresh(request.param("timestamp")) {
            return Err(shopee_error(403, "error_auth", "Invalid partner_id or timestamp."));
        }
        let base = format!("{}{SHOPEE_PATH}{}{token}{shop}", self.partner_id, param("timestamp"));
        if param("sign") != crate::shopee::sign(&self.partner_key, &base) {
            return Err(shopee_error(403, "error_auth", "Wrong sign."));
        }
        if !self.tokens.iter().any(|(t, s)| t == token && s == shop) {
            return Err(shopee_error(403, "invalid_acceess_token", "Invalid access_token."));
        }
        Ok(shop.to_owned())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        shopee_error(429, "error_busy", "The system is busy, please try again later.")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let shop = request.param("shop_id").unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let (Some(to), "text", Some(text)) = (
            body["to_id"].as_u64(),
            body["message_type"].as_str().unwrap_or_default(),
            body["content"]["text"].as_str(),
        ) else {
            return shopee_error(400, "error_param", "to_id, message_type text and content.text are required");
        };
        let id = format!("{}", 2_047_000_000u64 + self.sent.fetch_add(1, Ordering::SeqCst));
        keep_in(mailbox, shop, &to.to_string(), &to.to_string(), &id, text);
        Reply::json(
            200,
            &json!({"request_id": "standin", "error": "", "message": "", "response": {
                "message_id": id, "to_id": to, "message_type": "text", "content": {"text": text},
                "conversation_id": format!("c{to}"), "created_timestamp": time::OffsetDateTime::now_utc().unix_timestamp(),
            }}),
        )
    }
}

/// The TikTok Shop "Send Message" stand-in.
#[derive(Debug)]
pub struct TiktokSend {
    /// The app key it accepts.
    pub app_key: String,
    /// The app secret requests are signed with.
    pub app_secret: String,
    /// Access tokens it accepts, with their shop cipher.
    pub tokens: Vec<(String, String)>,
    sent: AtomicU64,
}

impl Default for TiktokSend {
    fn default() -> TiktokSend {
        TiktokSend {
            app_key: "test-tiktok-app-key".to_owned(),
            app_secret: "test-tiktok-app-secret".to_owned(),
            tokens: vec![("test-tiktok-shop-token".to_owned(), "1001".to_owned())],
            sent: AtomicU64::new(0),
        }
    }
}

fn tiktok_error(status: u16, code: i64, message: &str) -> Reply {
    Reply::json(status, &json!({"code": code, "message": message, "request_id": "standin", "data": {}}))
}

const TIKTOK_PREFIX: &str = "/customer_service/202309/conversations/";

impl Platform for TiktokSend {
    fn name(&self) -> &'static str {
        "tiktok_send"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 1.0, burst: 1, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        let conversation = request.path.strip_prefix(TIKTOK_PREFIX).and_then(|p| p.strip_suffix("/messages"));
        if request.method != "POST" || conversation.is_none_or(|c| c.is_empty() || c.contains('/')) {
            return Err(tiktok_error(404, 404, "Not found"));
        }
        let param = |name| request.param(name).unwrap_or_default();
        if param("app_key") != self.app_key || !fresh(request.param("timestamp")) {
            return Err(tiktok_error(401, 36_009_004, "Invalid app_key or timestamp"));
        }
        if param("sign") != crate::tiktok::expected_sign(&self.app_secret, request) {
            return Err(tiktok_error(401, 106_001, "Invalid sign"));
        }
        let token = request.header("x-tts-access-token").unwrap_or_default();
        let shop = param("shop_cipher");
        if !self.tokens.iter().any(|(t, s)| t == token && s == shop) {
            return Err(tiktok_error(401, 105_002, "Expired credentials"));
        }
        Ok(shop.to_owned())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        tiktok_error(429, 36_009_002, "Too many requests.").with_header("retry-after", 1)
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let shop = request.param("shop_cipher").unwrap_or_default();
        let conversation = request.path.strip_prefix(TIKTOK_PREFIX).and_then(|p| p.strip_suffix("/messages"));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let content = body["content"].as_str().and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok());
        let (Some(conversation), "TEXT", Some(text)) = (
            conversation,
            body["type"].as_str().unwrap_or_default(),
            content.as_ref().and_then(|c| c["content"].as_str()),
        ) else {
            return tiktok_error(400, 36_009_001, "type TEXT and a JSON content string are required");
        };
        let id = format!("7494{:012}", self.sent.fetch_add(1, Ordering::SeqCst));
        keep_in(mailbox, shop, conversation, conversation, &id, text);
        Reply::json(200, &json!({"code": 0, "message": "Success", "request_id": "standin", "data": {"message_id": id}}))
    }
}

/// The eBay `AddMemberMessageRTQ` stand-in.
#[derive(Debug)]
pub struct EbayRtq {
    /// OAuth user tokens it accepts, with their seller.
    pub tokens: Vec<(String, String)>,
    /// Calls refused for going over 75 per seller in 60 s.
    pub violations: AtomicU64,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
    sent: AtomicU64,
}

impl Default for EbayRtq {
    fn default() -> EbayRtq {
        EbayRtq {
            tokens: vec![("test-ebay-user-token".to_owned(), "1001".to_owned())],
            violations: AtomicU64::new(0),
            recent: Mutex::new(HashMap::new()),
            sent: AtomicU64::new(0),
        }
    }
}

/// `AddMemberMessageRTQ`'s answer: no call-specific fields.
fn rtq_success() -> Reply {
    crate::ebay::xml(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AddMemberMessageRTQResponse xmlns=\"urn:ebay:apis:eBLBaseComponents\">\
         <Timestamp>2026-12-03T08:00:00.000Z</Timestamp><Ack>Success</Ack><Version>1423</Version></AddMemberMessageRTQResponse>\n"
            .to_owned(),
    )
}

fn rtq_failure(code: u32, message: &str) -> Reply {
    crate::ebay::failure_of("AddMemberMessageRTQ", code, message)
}

impl Platform for EbayRtq {
    fn name(&self) -> &'static str {
        "ebay_rtq"
    }

    fn documented_quota(&self) -> QuotaRule {
        // The call's only limit is the 60 s window, counted in `serve`.
        QuotaRule { per_second: 1000.0, burst: 1000, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.method != "POST" || request.path != "/ws/api.dll" {
            return Err(Reply {
                status: 404,
                headers: Vec::new(),
                content_type: "text/html",
                body: "Not Found".into(),
            });
        }
        if request.header("x-ebay-api-call-name") != Some("AddMemberMessageRTQ") {
            return Err(rtq_failure(2, "Unsupported API call."));
        }
        let token = request.header("x-ebay-api-iaf-token").unwrap_or_default();
        match self.tokens.iter().find(|(t, _)| t == token) {
            Some((_, seller)) => Ok(seller.clone()),
            None => Err(rtq_failure(931, "Auth token is invalid.")),
        }
    }

    fn throttled(&self, _: &Admission) -> Reply {
        rtq_failure(518, "Call usage limit has been reached.")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let seller = self.quota_key(request).unwrap_or_default();
        {
            let mut recent = self.recent.lock().expect("recent lock");
            let calls = recent.entry(seller.clone()).or_default();
            let now = Instant::now();
            while calls.front().is_some_and(|at| now.duration_since(*at) > Duration::from_secs(60)) {
                calls.pop_front();
            }
            if calls.len() >= 75 {
                self.violations.fetch_add(1, Ordering::SeqCst);
                return rtq_failure(21_919_144, "You have exceeded the maximum call limit.");
            }
            calls.push_back(now);
        }
        let body = String::from_utf8_lossy(&request.body);
        let fields = ["ItemID", "Body", "ParentMessageID", "RecipientID"].map(|tag| crate::ebay::tag(&body, tag));
        let [Some(_item), Some(text), Some(parent), Some(to)] = fields else {
            return rtq_failure(37, "Input data is invalid or missing.");
        };
        if text.is_empty() {
            return rtq_failure(37, "Input data for tag <Body> is invalid or missing.");
        }
        let text = crate::ebay::unescape(text);
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        keep_in(mailbox, &seller, parent, to, &format!("rtq-{n}"), &text);
        rtq_success()
    }
}
