//! TikTok Shop Partner API 202309 customer service, `GET /customer_service/202309/conversations`
//! and `GET /customer_service/202309/conversations/{conversation_id}/messages` (Partner Center
//! API reference, "Get Conversations", "Get Conversation Messages"). Every call carries query
//! `app_key`, `timestamp` (refused when more than 5 minutes off; INFERRED window), `shop_cipher`
//! and `sign` = hex HMAC-SHA256(app secret, app secret ‖ path ‖ the other query parameters but
//! `access_token`, sorted, as `name ‖ value` ‖ body ‖ app secret), and header
//! `x-tts-access-token`. Answers `{"code", "message", "request_id", "data"}`; the refusal codes
//! are this stand-in's own (TikTok's numeric codes for them were not confirmed).
//!
//! Conversations newest first (`page_size` at most 20, `page_token`, `next_page_token` `""` at
//! the end), each with its `latest_message` and `participants` (the buyer of its first message,
//! role `BUYER`, and the shop, role `SHOP`); messages `DESC` by `create_time` (`page_size` at
//! most 10). A [`Message`] from the seller has role `SHOP`, a buyer's `BUYER`; all are `TEXT`
//! with `content` the JSON string `{"content": "..."}`.
//!
//! Quota: TikTok Shop publishes no figure for these endpoints; this stand-in enforces the
//! poller's ASSUMED 2 calls per second per app and shop (key `app_key/shop_cipher`), burst 2, and
//! answers HTTP 429 beyond it.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Reply, Request};

const CONVERSATIONS: &str = "/customer_service/202309/conversations";

/// The TikTok Shop stand-in.
#[derive(Debug, Clone)]
pub struct Tiktok {
    /// The app key it accepts.
    pub app_key: String,
    /// The app secret requests are signed with.
    pub app_secret: String,
    /// Shops (shop cipher, access token) it serves.
    pub shops: Vec<(String, String)>,
}

impl Default for Tiktok {
    fn default() -> Tiktok {
        Tiktok {
            app_key: "test-tiktok-app-key".to_owned(),
            app_secret: "test-tiktok-app-secret".to_owned(),
            shops: vec![("1001".to_owned(), "test-tiktok-shop-token".to_owned())],
        }
    }
}

fn tiktok_error(status: u16, code: i64, message: &str) -> Reply {
    Reply::json(status, &json!({"code": code, "message": message, "request_id": "standin"}))
}

fn ok(data: serde_json::Value) -> Reply {
    Reply::json(200, &json!({"code": 0, "message": "Success", "request_id": "standin", "data": data}))
}

/// The conversation id in a messages path.
fn conversation_of(path: &str) -> Option<&str> {
    path.strip_prefix(CONVERSATIONS)?.strip_prefix('/')?.strip_suffix("/messages").filter(|c| !c.contains('/'))
}

impl Tiktok {
    fn expected_sign(&self, request: &Request) -> String {
        expected_sign(&self.app_secret, request)
    }
}

/// TikTok Shop's signature of `request`: hex HMAC-SHA256(secret, secret ‖ path ‖ sorted `name ‖
/// value` of the query but `sign` and `access_token` ‖ body ‖ secret).
pub(crate) fn expected_sign(app_secret: &str, request: &Request) -> String {
    let mut base = format!("{app_secret}{}", request.path);
    for (name, value) in request.query.iter().filter(|(k, _)| !matches!(k.as_str(), "sign" | "access_token")) {
        base.push_str(name);
        base.push_str(value);
    }
    base.push_str(&String::from_utf8_lossy(&request.body));
    base.push_str(app_secret);
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(base.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn render(m: &Message, shop: &str) -> serde_json::Value {
    let (role, user) = if m.from_seller { ("SHOP", format!("shop-{shop}")) } else { ("BUYER", m.buyer_id.clone()) };
    json!({
        "id": m.id, "index": m.id, "type": "TEXT", "content": json!({"content": m.text}).to_string(),
        "create_time": m.created, "is_visible": true,
        "sender": {"role": role, "im_user_id": user, "nickname": if m.from_seller { "Shop" } else { m.buyer_name.as_str() }, "avatar": ""},
    })
}

impl Platform for Tiktok {
    fn name(&self) -> &'static str {
        "tiktok"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 2.0, burst: 2, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.method != "GET" || (request.path != CONVERSATIONS && conversation_of(&request.path).is_none()) {
            return Err(tiktok_error(404, 404, "Not found"));
        }
        let param = |name| request.param(name).unwrap_or_default();
        if param("app_key") != self.app_key {
            return Err(tiktok_error(401, 1, "Invalid app_key"));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if param("timestamp").parse::<i64>().map_or(true, |t| (now - t).abs() > 300) {
            return Err(tiktok_error(401, 2, "Invalid timestamp"));
        }
        if param("sign") != self.expected_sign(request) {
            return Err(tiktok_error(401, 3, "Invalid signature"));
        }
        let token = request.header("x-tts-access-token").unwrap_or_default();
        if !self.shops.iter().any(|(cipher, t)| cipher == param("shop_cipher") && t == token) {
            return Err(tiktok_error(401, 4, "Invalid access token or shop_cipher"));
        }
        Ok(format!("{}/{}", self.app_key, param("shop_cipher")))
    }

    fn throttled(&self, _: &Admission) -> Reply {
        tiktok_error(429, 429, "Too many requests")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let shop = request.param("shop_cipher").unwrap_or_default();
        let offset: usize = request.param("page_token").and_then(|p| p.parse().ok()).unwrap_or(0);
        let mut conversations: Vec<(String, Vec<Message>)> = Vec::new();
        for message in mailbox.of_account(shop) {
            match conversations.iter_mut().find(|(id, _)| *id == message.conversation) {
                Some((_, messages)) => messages.push(message),
                None => conversations.push((message.conversation.clone(), vec![message])),
            }
        }
        let page_size = |max: usize| {
            request.param("page_size").and_then(|p| p.parse::<usize>().ok()).filter(|p| (1..=max).contains(p))
        };
        let next = |shown: usize, total: usize| {
            if offset + shown < total {
                (offset + shown).to_string()
            } else {
                String::new()
            }
        };
        let Some(conversation) = conversation_of(&request.path) else {
            let Some(size) = page_size(20) else { return tiktok_error(400, 5, "page_size must be 1..20") };
            conversations.sort_by_key(|(_, m)| std::cmp::Reverse(m.last().map_or(0, |m| m.created)));
            let page: Vec<serde_json::Value> = conversations
                .iter()
                .skip(offset)
                .take(size)
                .map(|(id, messages)| {
                    let latest = messages.last().expect("a conversation has a message");
                    let buyer = &messages[0];
                    let participants = json!([
                        {"im_user_id": buyer.buyer_id, "role": "BUYER", "nickname": buyer.buyer_name, "avatar": ""},
                        {"im_user_id": format!("shop-{shop}"), "role": "SHOP", "nickname": "Shop", "avatar": ""},
                    ]);
                    json!({"id": id, "participant_count": 2, "unread_count": 0, "can_send_message": true,
                           "create_time": messages[0].created, "latest_message": render(latest, shop),
                           "participants": participants})
                })
                .collect();
            let shown = page.len();
            return ok(json!({"conversations": page, "next_page_token": next(shown, conversations.len())}));
        };
        let Some(size) = page_size(10) else { return tiktok_error(400, 5, "page_size must be 1..10") };
        let mut messages: Vec<&Message> = conversations
            .iter()
            .find(|(id, _)| id == conversation)
            .map(|(_, m)| m.iter().collect())
            .unwrap_or_default();
        if request.param("sort_order") != Some("ASC") {
            messages.reverse();
        }
        let page: Vec<serde_json::Value> = messages.iter().skip(offset).take(size).map(|m| render(m, shop)).collect();
        let shown = page.len();
        ok(json!({"messages": page, "next_page_token": next(shown, messages.len())}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange, request_of};

    fn good() -> Request {
        let poller = inquiry_connectors::poll::find("tiktok_customer_service").unwrap();
        request_of(
            poller,
            "1001",
            "test-tiktok-shop-token",
            Some("test-tiktok-app-key"),
            Some("test-tiktok-app-secret"),
            None,
        )
    }

    #[test]
    fn the_signature_covers_path_and_sorted_params_and_the_quota_is_keyed_by_app_and_shop() {
        let tiktok = Tiktok::default();
        assert_eq!(tiktok.quota_key(&good()).unwrap(), "test-tiktok-app-key/1001");
        let mut tampered = good();
        tampered.query.insert("page_size".into(), "19".into());
        assert!(tiktok.quota_key(&tampered).unwrap_err().body.contains("Invalid signature"), "every param is signed");
        let mut moved = good();
        moved.path = format!("{CONVERSATIONS}/1/messages");
        assert!(tiktok.quota_key(&moved).is_err(), "the path is signed");
        let mut unsigned_token = good();
        unsigned_token.query.insert("access_token".into(), "anything".into());
        assert!(tiktok.quota_key(&unsigned_token).is_ok(), "access_token is left out of the signature");
        let mut no_header = good();
        no_header.headers.remove("x-tts-access-token");
        assert!(tiktok.quota_key(&no_header).unwrap_err().body.contains("Invalid access token"));
        let poller = inquiry_connectors::poll::find("tiktok_customer_service").unwrap();
        let wrong_secret =
            request_of(poller, "1001", "test-tiktok-shop-token", Some("test-tiktok-app-key"), Some("x"), None);
        assert!(tiktok.quota_key(&wrong_secret).is_err());
        let mut stale = good();
        stale.query.insert("timestamp".into(), "1700000000".into());
        assert!(tiktok.quota_key(&stale).is_err());
    }

    #[test]
    fn the_poller_reads_what_the_standin_serves() {
        let taken = exchange(
            &Tiktok::default(),
            "tiktok_customer_service",
            "1001",
            "test-tiktok-shop-token",
            Some("test-tiktok-app-key"),
            Some("test-tiktok-app-secret"),
        );
        assert_eq!(taken, (2, 1), "two buyer messages; the shop's reply ignored");
    }
}
