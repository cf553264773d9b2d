//! Sending to chat users, for the auto-acknowledgement tests.
//!
//! - Telegram Bot API `sendMessage` (<https://core.telegram.org/bots/api#sendmessage>):
//!   `POST /bot{token}/sendMessage` `{"chat_id", "text"}`; answers `{"ok": true, "result":
//!   {"message_id"}}`. Limits (<https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this>):
//!   about 30 messages per second per bot and one per second per chat; over them, 429 with
//!   `parameters.retry_after`.
//! - LINE Messaging API push (<https://developers.line.biz/en/reference/messaging-api/#send-push-message>):
//!   `POST /v2/bot/message/push` with `Authorization: Bearer <channel token>`, `{"to",
//!   "messages": [{"type": "text", "text"}]}` and an optional `X-Line-Retry-Key`; answers
//!   `{"sentMessages": [{"id"}]}`; a retry key seen before is answered 409 and not sent again.
//!   Limit: 2,000 requests per second per channel; over it, 429.
//!
//! - Messenger Platform Send API (<https://developers.facebook.com/docs/messenger-platform/reference/send-api/>):
//!   `POST /v21.0/{page-id}/messages` with `Authorization: Bearer <page token>`, `{"recipient":
//!   {"id"}, "messaging_type": "RESPONSE", "message": {"text", "metadata"?}}` (metadata: under
//!   1,000 characters, echoed back in the `message_echoes` webhook); answers `{"recipient_id",
//!   "message_id"}`. Limit (<https://developers.facebook.com/documentation/business-messaging/messenger-platform/overview/rate-limiting>):
//!   300 calls per second per Page for text; over it, Graph error 613.
//!
//! Every message taken is kept in the mailbox (account = the bot or channel token, buyer = the
//! chat or user id, `from_seller`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use crate::quota::RecipientPause;
use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Reply, Request};

/// Keeps a message the seller sent to `to` (its conversation is the recipient).
pub(crate) fn keep(mailbox: &Mailbox, account: &str, to: &str, id: &str, text: &str) {
    keep_in(mailbox, account, to, to, id, text);
}

/// Keeps a message the seller sent to `to` in `conversation`.
pub(crate) fn keep_in(mailbox: &Mailbox, account: &str, conversation: &str, to: &str, id: &str, text: &str) {
    mailbox.add(Message {
        account: account.to_owned(),
        conversation: conversation.to_owned(),
        id: id.to_owned(),
        buyer_id: to.to_owned(),
        buyer_name: String::new(),
        text: text.to_owned(),
        created: time::OffsetDateTime::now_utc().unix_timestamp(),
        from_seller: true,
        order_id: None,
        country: None,
    });
}

/// Telegram's flood-control answer.
fn flood() -> Reply {
    Reply::json(
        429,
        &json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}),
    )
}

/// The Telegram stand-in.
#[derive(Debug, Default)]
pub struct TelegramSend {
    /// One message a second per chat.
    pub chat_pause: RecipientPause,
    sent: AtomicU64,
}

impl Platform for TelegramSend {
    fn name(&self) -> &'static str {
        "telegram_send"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 30.0, burst: 30, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        let token = request.path.strip_prefix("/bot").and_then(|p| p.strip_suffix("/sendMessage"));
        match token {
            Some(token) if !token.is_empty() => Ok(token.to_owned()),
            _ => Err(Reply::json(404, &json!({"ok": false, "error_code": 404, "description": "Not Found"}))),
        }
    }

    fn throttled(&self, _: &Admission) -> Reply {
        flood()
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let token = self.quota_key(request).unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let (Some(chat), Some(text)) = (body["chat_id"].as_str(), body["text"].as_str()) else {
            return Reply::json(
                400,
                &json!({"ok": false, "error_code": 400, "description": "Bad Request: chat_id and text"}),
            );
        };
        if !self.chat_pause.admit(chat, Duration::from_secs(1)) {
            return flood();
        }
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        keep(mailbox, &token, chat, &n.to_string(), text);
        Reply::json(200, &json!({"ok": true, "result": {"message_id": n, "chat": {"id": chat}, "text": text}}))
    }
}

/// The LINE stand-in.
#[derive(Debug, Default)]
pub struct LineSend {
    retry_keys: Mutex<HashSet<String>>,
    sent: AtomicU64,
}

impl Platform for LineSend {
    fn name(&self) -> &'static str {
        "line_send"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 2000.0, burst: 2000, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.path != "/v2/bot/message/push" {
            return Err(Reply::json(404, &json!({"message": "Not found"})));
        }
        match request.header("authorization").and_then(|a| a.strip_prefix("Bearer ")) {
            Some(token) if !token.is_empty() => Ok(token.to_owned()),
            _ => Err(Reply::json(401, &json!({"message": "Authentication failed"}))),
        }
    }

    fn throttled(&self, _: &Admission) -> Reply {
        Reply::json(429, &json!({"message": "The API rate limit has been exceeded. Try again later."}))
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let token = self.quota_key(request).unwrap_or_default();
        if let Some(key) = request.header("x-line-retry-key") {
            if !self.retry_keys.lock().expect("retry lock").insert(key.to_owned()) {
                return Reply::json(409, &json!({"message": "The retry key is already accepted"}));
            }
        }
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let (Some(to), Some(text)) = (body["to"].as_str(), body["messages"][0]["text"].as_str()) else {
            return Reply::json(400, &json!({"message": "The request body has 1 error(s)"}));
        };
        let id = format!("{}", 500_000_000_000u64 + self.sent.fetch_add(1, Ordering::SeqCst));
        keep(mailbox, &token, to, &id, text);
        Reply::json(200, &json!({"sentMessages": [{"id": id, "quoteToken": "q"}]}))
    }
}

/// The Messenger Send API stand-in.
#[derive(Debug)]
pub struct MessengerSend {
    /// The page token it accepts.
    pub page_token: String,
    sent: AtomicU64,
    /// The `message.metadata` of every message sent, in order (what the echo would carry).
    pub metadata: std::sync::Mutex<Vec<Option<String>>>,
}

impl Default for MessengerSend {
    fn default() -> MessengerSend {
        MessengerSend {
            page_token: "test-page-token".to_owned(),
            sent: AtomicU64::new(0),
            metadata: Default::default(),
        }
    }
}

impl Platform for MessengerSend {
    fn name(&self) -> &'static str {
        "messenger_send"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 300.0, burst: 300, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        let page = request.path.strip_prefix("/v21.0/").and_then(|p| p.strip_suffix("/messages"));
        let Some(page) = page.filter(|p| !p.is_empty() && request.method == "POST") else {
            return Err(Reply::json(404, &json!({"error": {"message": "Unknown path components", "code": 803}})));
        };
        if request.header("authorization") != Some(&format!("Bearer {}", self.page_token)) {
            return Err(Reply::json(401, &json!({"error": {"message": "Invalid OAuth access token.", "code": 190}})));
        }
        Ok(page.to_owned())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        Reply::json(400, &json!({"error": {"message": "Calls to this api have exceeded the rate limit.", "code": 613}}))
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let page = self.quota_key(request).unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let (Some(to), Some(text)) = (body["recipient"]["id"].as_str(), body["message"]["text"].as_str()) else {
            return Reply::json(400, &json!({"error": {"message": "(#100) Invalid parameter", "code": 100}}));
        };
        if body["messaging_type"] != "RESPONSE" {
            return Reply::json(400, &json!({"error": {"message": "(#100) messaging_type", "code": 100}}));
        }
        // `metadata`: a string of less than 1,000 characters, passed back in the echo.
        let metadata = &body["message"]["metadata"];
        if !metadata.is_null() && metadata.as_str().is_none_or(|m| m.chars().count() >= 1000) {
            return Reply::json(400, &json!({"error": {"message": "(#100) metadata", "code": 100}}));
        }
        self.metadata.lock().expect("metadata lock").push(metadata.as_str().map(str::to_owned));
        let id = format!("m_test{:08}", self.sent.fetch_add(1, Ordering::SeqCst));
        keep(mailbox, &page, to, &id, text);
        Reply::json(200, &json!({"recipient_id": to, "message_id": id}))
    }
}
