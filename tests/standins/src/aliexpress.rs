//! AliExpress Open Platform seller messages through the IOP gateway, `GET /sync` with
//! `method=aliexpress.message.redefining.versiontwo.querymsgrelationlist` (param `query`, a JSON
//! `RelationQueryDto`: `current_page`, `page_size` 1..100) and
//! `method=aliexpress.message.redefining.versiontwo.querymsgdetaillist` (`channel_id`,
//! `current_page`, `page_size` 1..100); shapes as the TOP SDKs type them (auto_sdk 2018.07.25),
//! at most the first 5,000 rows. Every call carries `app_key`, `method`, `timestamp` (Unix
//! milliseconds; refused when more than 10 minutes off: the stand-in's own window),
//! `sign_method=sha256`, `session` (the seller's token) and `sign` = uppercase hex
//! HMAC-SHA256(app secret, every other parameter sorted by name as `name ‖ value`), as the
//! official IOP SDK signs (iop-sdk-python-20220609).
//!
//! Answers `{"<method with _>_response": {"result": {"is_success", "error_code", ...}, "request_id"}}`
//! with wrapped lists (`{"relation_result": [...]}`, `{"message_detail": [...]}`; bare lists with
//! `simplify=true`). Refusals are IOP errors `{"type", "code", "message", "request_id"}`
//! (`InvalidApi`, `InvalidAppKey`, `InvalidTimestamp`, `IncompleteSignature`,
//! `IllegalAccessToken`; INFERRED from the IOP gateway, HTTP 200 as IOP answers them).
//! Conversations are listed newest first, `message_time` and `gmt_create` in milliseconds; messages
//! newest first. A [`Message`] from the seller is sent by the seller's ali id, a buyer's by its
//! `buyer_id` (the relation's `other_ali_id`).
//!
//! Quota: AliExpress publishes no production figure (a per-app daily limit shown in the console;
//! 5,000 calls a day in the test environment). This stand-in enforces the poller's ASSUMED 1 call
//! per second, burst 1, 5,000 a day per app (key `app_key`), and answers `ApiCallLimit` beyond it.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Reply, Request};

const GATEWAY: &str = "/sync";
const LIST: &str = "aliexpress.message.redefining.versiontwo.querymsgrelationlist";
const DETAIL: &str = "aliexpress.message.redefining.versiontwo.querymsgdetaillist";
const MAX_ROWS: usize = 5_000;

/// The AliExpress stand-in.
#[derive(Debug, Clone)]
pub struct Aliexpress {
    /// The app key it accepts.
    pub app_key: String,
    /// The app secret requests are signed with.
    pub app_secret: String,
    /// Sellers (account, session token, the seller's ali id) it serves.
    pub sellers: Vec<(String, String, String)>,
}

impl Default for Aliexpress {
    fn default() -> Aliexpress {
        Aliexpress {
            app_key: "test-aliexpress-app-key".to_owned(),
            app_secret: "test-aliexpress-app-secret".to_owned(),
            sellers: vec![("1001".to_owned(), "test-aliexpress-session".to_owned(), "900001001".to_owned())],
        }
    }
}

fn iop_error(kind: &str, code: &str, message: &str) -> Reply {
    Reply::json(200, &json!({"type": kind, "code": code, "message": message, "request_id": "standin"}))
}

fn ok(method: &str, result: serde_json::Value) -> Reply {
    let key = format!("{}_response", method.replace('.', "_"));
    Reply::json(200, &json!({ key: {"result": result, "request_id": "standin"} }))
}

/// The IOP signature over `request`'s parameters.
fn expected_sign(secret: &str, request: &Request) -> String {
    let mut base = String::new();
    for (name, value) in request.query.iter().filter(|(k, _)| k.as_str() != "sign") {
        base.push_str(name);
        base.push_str(value);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(base.as_bytes());
    hex::encode_upper(mac.finalize().into_bytes())
}

/// An id as a JSON number where it is one (the TOP types give ids as Long).
fn id(value: &str) -> serde_json::Value {
    value.parse::<u64>().map_or_else(|_| json!(value), |n| json!(n))
}

/// A page of `rows`, bare or wrapped in `{item: [...]}`.
fn list(rows: Vec<serde_json::Value>, item: &str, simplify: bool) -> serde_json::Value {
    if simplify {
        json!(rows)
    } else {
        json!({ item: rows })
    }
}

impl Aliexpress {
    fn seller(&self, request: &Request) -> Option<&(String, String, String)> {
        let session = request.param("session").unwrap_or_default();
        self.sellers.iter().find(|(_, token, _)| token == session)
    }
}

impl Platform for Aliexpress {
    fn name(&self) -> &'static str {
        "aliexpress"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 1.0, burst: 1, per_day: Some(5_000) }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        let param = |name| request.param(name).unwrap_or_default();
        if request.method != "GET" || request.path != GATEWAY || !matches!(param("method"), LIST | DETAIL) {
            return Err(iop_error("ISV", "InvalidApi", "The specified API is not found"));
        }
        if param("app_key") != self.app_key {
            return Err(iop_error("ISV", "InvalidAppKey", "The specified app key is invalid"));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if param("timestamp").parse::<i64>().map_or(true, |t| (now - t / 1000).abs() > 600) {
            return Err(iop_error("ISV", "InvalidTimestamp", "The timestamp is out of range"));
        }
        if param("sign_method") != "sha256" || param("sign") != expected_sign(&self.app_secret, request) {
            return Err(iop_error(
                "ISV",
                "IncompleteSignature",
                "The request signature does not conform to platform standards",
            ));
        }
        if self.seller(request).is_none() {
            return Err(iop_error("ISV", "IllegalAccessToken", "The specified access token is invalid or expired"));
        }
        Ok(self.app_key.clone())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        iop_error("ISP", "ApiCallLimit", "The request has exceeded the allowed call limit")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let Some((account, _, seller_ali_id)) = self.seller(request) else {
            return iop_error("ISV", "IllegalAccessToken", "The specified access token is invalid or expired");
        };
        let method = request.param("method").unwrap_or_default();
        let simplify = request.param("simplify") == Some("true");
        let mut conversations: Vec<(String, Vec<Message>)> = Vec::new();
        for message in mailbox.of_account(account) {
            match conversations.iter_mut().find(|(id, _)| *id == message.conversation) {
                Some((_, messages)) => messages.push(message),
                None => conversations.push((message.conversation.clone(), vec![message])),
            }
        }
        let refused = |message: &str| ok(method, json!({"is_success": false, "error_code": 400, "error_msg": message}));
        let (page, size, rows) = if method == LIST {
            let query: serde_json::Value =
                request.param("query").and_then(|q| serde_json::from_str(q).ok()).unwrap_or_default();
            let number = |k: &str| query.get(k).and_then(serde_json::Value::as_u64).map(|n| n as usize);
            let (Some(page), Some(size)) = (number("current_page"), number("page_size")) else {
                return refused("query.current_page and query.page_size are required");
            };
            conversations.sort_by(|a, b| {
                let newest = |m: &[Message]| m.last().map_or(0, |m| m.created);
                (newest(b.1.as_slice()), &b.0).cmp(&(newest(a.1.as_slice()), &a.0))
            });
            let rows: Vec<serde_json::Value> = conversations
                .iter()
                .map(|(channel, messages)| {
                    let latest = messages.last().expect("a conversation has a message");
                    let buyer = messages.iter().find(|m| !m.from_seller).unwrap_or(latest);
                    json!({
                        "channel_id": id(channel), "message_time": latest.created * 1000,
                        "other_ali_id": id(&buyer.buyer_id), "other_login_id": format!("buyer{}", buyer.buyer_id),
                        "other_name": buyer.buyer_name, "last_message_id": id(&latest.id),
                        "last_message_content": latest.text, "last_message_is_own": latest.from_seller,
                        "order_id": latest.order_id.as_deref().map_or(json!(0), id), "unread_count": 0,
                        "read_stat": "1", "deal_stat": "0", "rank": "0", "child_id": 0, "child_name": "",
                    })
                })
                .collect();
            (page, size, rows)
        } else {
            let number = |k: &str| request.param(k).and_then(|v| v.parse::<usize>().ok());
            let (Some(page), Some(size)) = (number("current_page"), number("page_size")) else {
                return refused("current_page and page_size are required");
            };
            let channel = request.param("channel_id").unwrap_or_default();
            let rows: Vec<serde_json::Value> = conversations
                .iter()
                .find(|(id, _)| id == channel)
                .map(|(_, m)| m.iter().rev().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|m| {
                    let (sender, name) =
                        if m.from_seller { (seller_ali_id.as_str(), "Store") } else { (m.buyer_id.as_str(), m.buyer_name.as_str()) };
                    json!({
                        "id": id(&m.id), "gmt_create": m.created * 1000, "sender_ali_id": id(sender), "sender_name": name,
                        "content": m.text, "message_type": if m.order_id.is_some() { "order" } else { "member" },
                        "extern_id": m.order_id.as_deref().map_or(json!(0), id), "file_path_list": {},
                        "summary": {"sender_ali_id": id(sender), "sender_name": name},
                    })
                })
                .collect();
            (page, size, rows)
        };
        if page == 0 || !(1..=100).contains(&size) {
            return refused("current_page must be 1 or more and page_size 1..100");
        }
        let shown: Vec<serde_json::Value> =
            rows.into_iter().take(MAX_ROWS).skip((page - 1).saturating_mul(size)).take(size).collect();
        let (field, item) = if method == LIST {
            ("relation_list", "relation_result")
        } else {
            ("message_detail_list", "message_detail")
        };
        ok(method, json!({"is_success": true, "error_code": 0, "error_msg": "", field: list(shown, item, simplify)}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange, request_of};

    fn poller() -> &'static dyn inquiry_connectors::poll::Poller {
        inquiry_connectors::poll::find("aliexpress_messages").unwrap()
    }

    fn good() -> Request {
        request_of(
            poller(),
            "1001",
            "test-aliexpress-session",
            Some("test-aliexpress-app-key"),
            Some("test-aliexpress-app-secret"),
            None,
        )
    }

    #[test]
    fn the_signature_covers_every_sorted_param_and_the_quota_is_keyed_by_app() {
        let ali = Aliexpress::default();
        assert_eq!(good().param("method"), Some(LIST));
        assert_eq!(ali.quota_key(&good()).unwrap(), "test-aliexpress-app-key");
        let refused = |mut request: Request, name: &str, value: &str| {
            request.query.insert(name.to_owned(), value.to_owned());
            ali.quota_key(&request).unwrap_err().body
        };
        assert!(refused(good(), "sign", &"0".repeat(64)).contains("IncompleteSignature"));
        let other_page = r#"{"current_page":2,"page_size":50}"#;
        assert!(refused(good(), "query", other_page).contains("IncompleteSignature"), "business params are signed");
        assert!(refused(good(), "session", "other").contains("IncompleteSignature"), "the token is signed");
        assert!(refused(good(), "sign_method", "md5").contains("IncompleteSignature"));
        assert!(refused(good(), "app_key", "other").contains("InvalidAppKey"));
        assert!(refused(good(), "method", "aliexpress.trade.seller.orderlist.get").contains("InvalidApi"));
        let stale = ((time::OffsetDateTime::now_utc().unix_timestamp() - 3_600) * 1000).to_string();
        assert!(refused(good(), "timestamp", &stale).contains("InvalidTimestamp"));
        let wrong_secret =
            request_of(poller(), "1001", "test-aliexpress-session", Some("test-aliexpress-app-key"), Some("x"), None);
        assert!(ali.quota_key(&wrong_secret).unwrap_err().body.contains("IncompleteSignature"));
        let wrong_token = request_of(
            poller(),
            "1001",
            "other-session",
            Some("test-aliexpress-app-key"),
            Some("test-aliexpress-app-secret"),
            None,
        );
        assert!(ali.quota_key(&wrong_token).unwrap_err().body.contains("IllegalAccessToken"));
        let throttled = ali.throttled(&crate::testing::admission());
        assert!(poller().is_throttled(throttled.status, throttled.body.as_bytes()));
    }

    #[test]
    fn the_poller_reads_what_the_standin_serves() {
        let taken = exchange(
            &Aliexpress::default(),
            "aliexpress_messages",
            "1001",
            "test-aliexpress-session",
            Some("test-aliexpress-app-key"),
            Some("test-aliexpress-app-secret"),
        );
        assert_eq!(taken, (2, 1), "two buyer messages; the seller's reply ignored");
    }
}
