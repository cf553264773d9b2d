//! Shopee Open Platform v2 lost pushes, `GET /api/v2/push/get_lost_push_message` and
//! `POST /api/v2/push/confirm_consumed_lost_push_message`
//! (<https://open.shopee.com/documents/v2/v2.push.get_lost_push_message>; shapes as the public SDKs
//! type them). Partner-level calls: `partner_id`, `timestamp` (refused when more than 5 minutes
//! off) and `sign` = hex HMAC-SHA256(partner key, `partner_id ‖ path ‖ timestamp`).
//!
//! Every message of the mailbox is a push Shopee could not deliver (code 10, `webchat_push`, its
//! data as a JSON string, in the shape of the `shopee` webhook's `data`), kept until confirmed:
//! the list answers the earliest 100 not yet confirmed, `has_next_page` and `last_message_id`;
//! confirming `last_message_id` consumes everything up to it.
//!
//! Quota: none published; this stand-in enforces the poller's ASSUMED 1 call per second per
//! partner (burst 1) and answers HTTP 429 `error_busy` beyond it.

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::shopee::{ok, shopee_error, sign};
use crate::{Admission, Mailbox, Platform, QuotaRule, Reply, Request};

const LIST: &str = "/api/v2/push/get_lost_push_message";
const CONFIRM: &str = "/api/v2/push/confirm_consumed_lost_push_message";
/// Pushes per list answer.
const PAGE: usize = 100;

/// The lost-push stand-in.
#[derive(Debug, Clone)]
pub struct ShopeePush {
    /// The partner (app) id it accepts.
    pub partner_id: String,
    /// The partner key requests are signed with.
    pub partner_key: String,
    /// The shop's own user id, for the seller's messages.
    pub shop_user_id: u64,
    /// Pushes confirmed so far (the mailbox's first `confirmed` messages).
    pub confirmed: Arc<Mutex<usize>>,
}

impl Default for ShopeePush {
    fn default() -> ShopeePush {
        ShopeePush {
            partner_id: "100001".to_owned(),
            partner_key: "test-shopee-partner-key".to_owned(),
            shop_user_id: 947_151_379,
            confirmed: Arc::default(),
        }
    }
}

impl Platform for ShopeePush {
    fn name(&self) -> &'static str {
        "shopee_push"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 1.0, burst: 1, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        let known = matches!((request.method.as_str(), request.path.as_str()), ("GET", LIST) | ("POST", CONFIRM));
        if !known {
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
        let base = format!("{}{}{}", param("partner_id"), request.path, param("timestamp"));
        if param("sign") != sign(&self.partner_key, &base) {
            return Err(shopee_error(403, "error_sign", "Wrong sign."));
        }
        Ok(self.partner_id.clone())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        shopee_error(429, "error_busy", "Too many requests, please try again later.")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let all = mailbox.all();
        let mut confirmed = self.confirmed.lock().expect("confirmed lock");
        if request.path == CONFIRM {
            let last = serde_json::from_slice::<serde_json::Value>(&request.body)
                .ok()
                .and_then(|b| b["last_message_id"].as_u64());
            return match last {
                Some(last) if (last as usize) <= all.len() => {
                    *confirmed = (*confirmed).max(last as usize);
                    ok(json!({}))
                }
                _ => shopee_error(400, "error_param", "Invalid last_message_id."),
            };
        }
        let pending = &all[(*confirmed).min(all.len())..];
        let list: Vec<serde_json::Value> = pending
            .iter()
            .take(PAGE)
            .map(|m| {
                let shop: u64 = m.account.parse().unwrap_or(0);
                let from = if m.from_seller { self.shop_user_id } else { m.buyer_id.parse().unwrap_or(0) };
                let data = json!({
                    "type": "message",
                    "content": {
                        "message_id": m.id, "shop_id": shop, "from_id": from,
                        "from_user_name": if m.from_seller { "shop".to_owned() } else { m.buyer_name.clone() },
                        "from_shop_id": if m.from_seller { shop } else { 0 },
                        "message_type": "text", "content": {"text": m.text},
                        "conversation_id": m.conversation, "created_timestamp": m.created,
                        "sub_account_id": 0, "source_content": {},
                    },
                });
                json!({"shop_id": shop, "code": 10, "timestamp": m.created, "data": data.to_string()})
            })
            .collect();
        let last_message_id = *confirmed + list.len();
        ok(json!({
            "push_message_list": list,
            "has_next_page": pending.len() > PAGE,
            "last_message_id": last_message_id,
        }))
    }
}
