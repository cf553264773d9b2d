//! Shopee Open Platform v2 seller chat, `GET /api/v2/sellerchat/get_conversation_list` and
//! `GET /api/v2/sellerchat/get_message` (<https://open.shopee.com/documents/v2/v2.sellerchat.get_conversation_list>;
//! shapes as the public SDKs type them). Every call carries `partner_id`, `timestamp` (refused
//! when more than 5 minutes off), `access_token`, `shop_id` and `sign` = hex
//! HMAC-SHA256(partner key, `partner_id ‖ path ‖ timestamp ‖ access_token ‖ shop_id`). Answers
//! `{"request_id", "error", "message", "response"}`; refusals carry `error` (`error_sign`,
//! `invalid_access_token`, `error_auth`, `error_param`, as Shopee names them; HTTP statuses
//! INFERRED).
//!
//! The list is newest first (`direction=older`, paged by `next_timestamp_nano`, at most 25 per
//! page); a conversation's time is its newest message in nanoseconds (seconds plus a per-
//! conversation offset below one second, so no two conversations tie). Messages are newest first,
//! paged by `offset` (at most 25).
//!
//! Quota: Shopee publishes no figure for seller chat; this stand-in enforces the poller's
//! ASSUMED 2 calls per second per shop and app (key `partner_id/shop_id`), burst 2, and answers
//! HTTP 429 with `error` `error_busy` beyond it (INFERRED).

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Reply, Request};

const LIST: &str = "/api/v2/sellerchat/get_conversation_list";
const MESSAGES: &str = "/api/v2/sellerchat/get_message";

/// The Shopee stand-in.
#[derive(Debug, Clone)]
pub struct Shopee {
    /// The partner (app) id it accepts.
    pub partner_id: String,
    /// The partner key requests are signed with.
    pub partner_key: String,
    /// Shops (shop id, access token) it serves.
    pub shops: Vec<(String, String)>,
}

impl Default for Shopee {
    fn default() -> Shopee {
        Shopee {
            partner_id: "100001".to_owned(),
            partner_key: "test-shopee-partner-key".to_owned(),
            shops: vec![("1001".to_owned(), "test-shopee-shop-token".to_owned())],
        }
    }
}

/// A Shopee refusal.
pub(crate) fn shopee_error(status: u16, error: &str, message: &str) -> Reply {
    Reply::json(status, &json!({"request_id": "standin", "error": error, "message": message}))
}

/// A Shopee answer.
pub(crate) fn ok(response: serde_json::Value) -> Reply {
    Reply::json(200, &json!({"request_id": "standin", "error": "", "message": "", "response": response}))
}

/// Shopee's signature over `base` (shop level: partner_id ‖ path ‖ timestamp ‖ token ‖ shop;
/// partner level: partner_id ‖ path ‖ timestamp).
pub(crate) fn sign(partner_key: &str, base: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(partner_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(base.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// An id as a JSON number where it is one (Shopee sends 64-bit ids as numbers).
fn id(value: &str) -> serde_json::Value {
    value.parse::<u64>().map_or_else(|_| json!(value), |n| json!(n))
}

/// Nanosecond time of a conversation's newest message, unique per conversation.
fn conversation_nanos(messages: &[Message]) -> i128 {
    let newest = messages.iter().map(|m| m.created).max().unwrap_or(0);
    let spread = messages
        .first()
        .map_or(0, |m| m.conversation.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))));
    i128::from(newest) * 1_000_000_000 + i128::from(spread % 1_000_000_000)
}

impl Platform for Shopee {
    fn name(&self) -> &'static str {
        "shopee"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 2.0, burst: 2, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.method != "GET" || !matches!(request.path.as_str(), LIST | MESSAGES) {
            return Err(shopee_error(404, "error_not_found", "Wrong api path."));
        }
        let param = |name| request.param(name).unwrap_or_default();
        if param("partner_id") != self.partner_id {
            return Err(shopee_error(403, "error_auth", "Invalid partner_id."));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if param("timestamp").parse::<i64>().map_or(true, |t| (now - t).abs() > 300) {
            return Err(shopee_error(403, "error_param", "Invalid timestamp."));
        }
        let base = format!(
            "{}{}{}{}{}",
            param("partner_id"),
            request.path,
            param("timestamp"),
            param("access_token"),
            param("shop_id")
        );
        if param("sign") != sign(&self.partner_key, &base) {
            return Err(shopee_error(403, "error_sign", "Wrong sign."));
        }
        if !self.shops.iter().any(|(shop, token)| shop == param("shop_id") && token == param("access_token")) {
            return Err(shopee_error(403, "invalid_access_token", "Invalid access_token."));
        }
        Ok(format!("{}/{}", self.partner_id, param("shop_id")))
    }

    fn throttled(&self, _: &Admission) -> Reply {
        shopee_error(429, "error_busy", "Too many requests, please try again later.")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let shop = request.param("shop_id").unwrap_or_default();
        let page_size: usize = request.param("page_size").and_then(|p| p.parse().ok()).unwrap_or(25);
        if page_size == 0 || page_size > 25 {
            return ok(
                json!({"conversations": [], "messages": [], "page_result": {"page_size": page_size, "more": false}}),
            );
        }
        let mut conversations: Vec<(String, Vec<Message>)> = Vec::new();
        for message in mailbox.of_account(shop) {
            match conversations.iter_mut().find(|(id, _)| *id == message.conversation) {
                Some((_, messages)) => messages.push(message),
                None => conversations.push((message.conversation.clone(), vec![message])),
            }
        }
        if request.path == LIST {
            conversations.sort_by_key(|(_, messages)| std::cmp::Reverse(conversation_nanos(messages)));
            let before: Option<i128> =
                request.param("next_timestamp_nano").and_then(|n| n.parse().ok()).filter(|n| *n > 0);
            let remaining: Vec<_> =
                conversations.iter().filter(|(_, m)| before.is_none_or(|b| conversation_nanos(m) < b)).collect();
            let page: Vec<_> = remaining.iter().take(page_size).collect();
            let listed: Vec<serde_json::Value> = page
                .iter()
                .map(|(id, messages)| {
                    let latest = messages.last().expect("a conversation has a message");
                    let buyer = messages.iter().find(|m| !m.from_seller).unwrap_or(latest);
                    json!({
                        "conversation_id": id, "to_id": self::id(&buyer.buyer_id), "to_name": buyer.buyer_name,
                        "to_avatar": "", "shop_id": self::id(shop), "unread_count": 0, "pinned": false,
                        "latest_message_id": latest.id, "latest_message_type": "text",
                        "latest_message_content": {"text": latest.text},
                        "latest_message_from_id": self::id(if latest.from_seller { shop } else { &latest.buyer_id }),
                        "last_message_timestamp": conversation_nanos(messages) as i64,
                    })
                })
                .collect();
            let last = page.last().map(|(id, m)| (id.clone(), conversation_nanos(m)));
            return ok(json!({
                "conversations": listed,
                "page_result": {
                    "page_size": page_size,
                    "more": remaining.len() > page.len(),
                    "next_cursor": last.map(|(id, nanos)| json!({"next_message_time_nano": nanos.to_string(), "conversation_id": id})),
                },
            }));
        }
        let conversation = request.param("conversation_id").unwrap_or_default();
        let offset: usize = request.param("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
        let messages: Vec<&Message> = conversations
            .iter()
            .find(|(id, _)| id == conversation)
            .map(|(_, m)| m.iter().rev().collect())
            .unwrap_or_default();
        let page: Vec<serde_json::Value> = messages
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|m| {
                let (from, from_shop, to, to_shop) = if m.from_seller {
                    (id(shop), id(shop), id(&m.buyer_id), json!(0))
                } else {
                    (id(&m.buyer_id), json!(0), id(shop), id(shop))
                };
                json!({
                    "message_id": m.id, "message_type": "text", "from_id": from, "from_shop_id": from_shop,
                    "to_id": to, "to_shop_id": to_shop, "conversation_id": m.conversation,
                    "created_timestamp": m.created, "region": m.country, "status": "normal", "source": "web",
                    "content": {"text": m.text}, "message_option": 0,
                    "source_content": {"order_sn": m.order_id.clone().unwrap_or_default()},
                })
            })
            .collect();
        let more = offset + page.len() < messages.len();
        ok(json!({
            "messages": page,
            "page_result": {"page_size": page_size, "next_offset": if more { (offset + page_size).to_string() } else { String::new() }, "more": more},
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange, request_of};

    fn good() -> Request {
        let poller = inquiry_connectors::poll::find("shopee_chat").unwrap();
        request_of(poller, "1001", "test-shopee-shop-token", Some("100001"), Some("test-shopee-partner-key"), None)
    }

    #[test]
    fn the_signature_is_checked_as_shopee_computes_it_and_the_quota_is_keyed_by_app_and_shop() {
        let shopee = Shopee::default();
        assert_eq!(shopee.quota_key(&good()).unwrap(), "100001/1001");
        let refused = |mut request: Request, name: &str, value: &str| {
            request.query.insert(name.to_owned(), value.to_owned());
            shopee.quota_key(&request).unwrap_err()
        };
        assert!(refused(good(), "sign", &"0".repeat(64)).body.contains("error_sign"));
        assert!(refused(good(), "shop_id", "1002").body.contains("error_sign"), "the shop id is signed");
        assert!(refused(good(), "partner_id", "100002").body.contains("error_auth"));
        let stale = (time::OffsetDateTime::now_utc().unix_timestamp() - 600).to_string();
        assert!(refused(good(), "timestamp", &stale).body.contains("error_param"));
        let poller = inquiry_connectors::poll::find("shopee_chat").unwrap();
        let wrong_key = request_of(poller, "1001", "test-shopee-shop-token", Some("100001"), Some("other-key"), None);
        assert!(shopee.quota_key(&wrong_key).unwrap_err().body.contains("error_sign"));
        let wrong_token =
            request_of(poller, "1001", "other-token", Some("100001"), Some("test-shopee-partner-key"), None);
        assert!(shopee.quota_key(&wrong_token).unwrap_err().body.contains("invalid_access_token"));
        let throttled = shopee.throttled(&crate::testing::admission());
        assert!(poller.is_throttled(throttled.status, throttled.body.as_bytes()));
    }

    #[test]
    fn the_poller_reads_what_the_standin_serves() {
        let taken = exchange(
            &Shopee::default(),
            "shopee_chat",
            "1001",
            "test-shopee-shop-token",
            Some("100001"),
            Some("test-shopee-partner-key"),
        );
        assert_eq!(taken, (2, 1), "two buyer messages; the shop's reply ignored");
    }
}
