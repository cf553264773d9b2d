//! Etsy Open API v3, `getShopReceipts`
//! (<https://developers.etsy.com/documentation/reference/#operation/getShopReceipts>):
//! `GET /v3/application/shops/{shop_id}/receipts?min_last_modified=&sort_on=updated&sort_order=asc&limit=&offset=`
//! with `x-api-key: <keystring>` and `Authorization: Bearer <OAuth token>`; answers
//! `{"count": n, "results": [ShopReceipt]}`, each receipt with `message_from_buyer`.
//!
//! Quota (<https://developers.etsy.com/documentation/essentials/rate-limits>): per app (API key),
//! 10 requests per second and 10,000 per rolling 24 hours; every answer carries
//! `x-limit-per-second`, `x-remaining-this-second`, `x-limit-per-day` and `x-remaining-today`;
//! over the quota, HTTP 429 with `retry-after`.
//!
//! Each buyer [`Message`] is one receipt (its conversation is the receipt id); seller replies are
//! not receipts and are not served.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Admission, Mailbox, Platform, QuotaRule, Reply, Request};

/// The Etsy stand-in.
#[derive(Debug, Clone)]
pub struct Etsy {
    /// The app's keystring it accepts in `x-api-key`.
    pub api_key: String,
    /// A token it accepts forever.
    pub access_token: String,
    /// Tokens issued by its OAuth endpoint, where it has one.
    pub oauth: Option<Arc<Mutex<OAuth>>>,
}

impl Default for Etsy {
    fn default() -> Etsy {
        Etsy { api_key: "test-etsy-keystring".to_owned(), access_token: "test-etsy-token".to_owned(), oauth: None }
    }
}

/// Etsy's OAuth token endpoint (<https://developers.etsy.com/documentation/essentials/authentication>):
/// `POST /v3/public/oauth/token` with `grant_type=refresh_token`, `client_id` and
/// `refresh_token` answers a new access token and a new refresh token; the old refresh token stops
/// working. Access tokens expire after `lifetime`.
#[derive(Debug)]
pub struct OAuth {
    /// How long an access token lives.
    pub lifetime: Duration,
    /// The one refresh token that works now.
    pub refresh_token: String,
    /// Access tokens issued and when they expire.
    pub issued: Vec<(String, Instant)>,
    /// Refreshes granted.
    pub refreshes: u32,
    /// Calls refused for an expired or unknown token.
    pub unauthorized: u32,
}

impl OAuth {
    /// An endpoint whose first refresh token is `refresh_token`.
    pub fn new(lifetime: Duration, refresh_token: &str) -> Arc<Mutex<OAuth>> {
        Arc::new(Mutex::new(OAuth {
            lifetime,
            refresh_token: refresh_token.to_owned(),
            issued: Vec::new(),
            refreshes: 0,
            unauthorized: 0,
        }))
    }
}

fn shop_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v3/application/shops/")?.strip_suffix("/receipts")
}

fn etsy_error(status: u16, message: &str) -> Reply {
    Reply::json(status, &json!({ "error": message }))
}

impl Etsy {
    fn with_limits(&self, reply: Reply, admission: &Admission) -> Reply {
        let rule = admission.rule;
        let reply = reply
            .with_header("x-limit-per-second", rule.per_second)
            .with_header("x-remaining-this-second", admission.remaining_this_second);
        match (rule.per_day, admission.remaining_today) {
            (Some(per_day), Some(remaining)) => {
                reply.with_header("x-limit-per-day", per_day).with_header("x-remaining-today", remaining)
            }
            _ => reply,
        }
    }
}

impl Platform for Etsy {
    fn name(&self) -> &'static str {
        "etsy"
    }

    /// "10 requests per second" per app, answered 429 "Exceeded per second rate limit"
    /// (<https://developers.etsy.com/documentation/essentials/rate-limits>).
    fn counts_per_second(&self) -> bool {
        true
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 10.0, burst: 10, per_day: Some(10_000) }
    }

    fn outside_quota(&self, request: &Request) -> Option<Reply> {
        if (request.method.as_str(), request.path.as_str()) != ("POST", "/v3/public/oauth/token") {
            return None;
        }
        let Some(oauth) = &self.oauth else { return Some(etsy_error(404, "Resource not found")) };
        let form: std::collections::BTreeMap<String, String> = String::from_utf8_lossy(&request.body)
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (crate::server::percent_decode(k), crate::server::percent_decode(v)))
            .collect();
        let mut oauth = oauth.lock().expect("oauth lock");
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        if field("grant_type") != "refresh_token" || field("client_id") != self.api_key {
            return Some(Reply::json(400, &json!({"error": "invalid_request"})));
        }
        if field("refresh_token") != oauth.refresh_token {
            return Some(Reply::json(
                400,
                &json!({"error": "invalid_grant", "error_description": "refresh token is spent"}),
            ));
        }
        oauth.refreshes += 1;
        let n = oauth.refreshes;
        let access = format!("{n}.etsy-access-{n}");
        let until = Instant::now() + oauth.lifetime;
        oauth.issued.push((access.clone(), until));
        oauth.refresh_token = format!("{n}.etsy-refresh-{n}");
        Some(Reply::json(
            200,
            &json!({
                "access_token": access, "token_type": "Bearer",
                "expires_in": oauth.lifetime.as_secs(), "refresh_token": oauth.refresh_token,
            }),
        ))
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if shop_of(&request.path).is_none() {
            return Err(etsy_error(404, "Resource not found"));
        }
        // Since 2025 the header may be `keystring:shared_secret`; the keystring names the app.
        let key = request.header("x-api-key").map(|k| k.split(':').next().unwrap_or_default());
        if key != Some(self.api_key.as_str()) {
            return Err(etsy_error(403, "Invalid API key"));
        }
        let bearer = request.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default();
        let live = self.oauth.as_ref().is_some_and(|oauth| {
            oauth.lock().expect("oauth lock").issued.iter().any(|(t, until)| t == bearer && Instant::now() < *until)
        });
        if bearer != self.access_token && !live {
            if let Some(oauth) = &self.oauth {
                oauth.lock().expect("oauth lock").unauthorized += 1;
            }
            return Err(etsy_error(401, "invalid_token"));
        }
        Ok(self.api_key.clone())
    }

    fn throttled(&self, admission: &Admission) -> Reply {
        let retry = if admission.remaining_today == Some(0) { 3600 } else { 1 };
        self.with_limits(etsy_error(429, "Too many requests"), admission).with_header("retry-after", retry)
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, admission: &Admission, _: &str) -> Reply {
        let shop = shop_of(&request.path).unwrap_or_default();
        let min_modified: i64 = request.param("min_last_modified").and_then(|v| v.parse().ok()).unwrap_or(0);
        let limit: usize = request.param("limit").and_then(|v| v.parse().ok()).unwrap_or(25).clamp(1, 100);
        let offset: usize = request.param("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
        let receipts: Vec<_> =
            mailbox.of_account(shop).into_iter().filter(|m| !m.from_seller && m.created >= min_modified).collect();
        let results: Vec<serde_json::Value> = receipts
            .iter()
            .skip(offset)
            .take(limit)
            .map(|m| {
                json!({
                    "receipt_id": m.conversation.parse::<u64>().unwrap_or(0),
                    "receipt_type": 0,
                    "seller_user_id": 825_776_089,
                    "buyer_user_id": m.buyer_id.parse::<u64>().unwrap_or(0),
                    "buyer_email": null,
                    "name": m.buyer_name,
                    "status": "Paid",
                    "country_iso": m.country,
                    "message_from_seller": "",
                    "message_from_buyer": m.text,
                    "is_paid": true,
                    "is_shipped": false,
                    "create_timestamp": m.created,
                    "created_timestamp": m.created,
                    "update_timestamp": m.created,
                    "updated_timestamp": m.created,
                    "transactions": [{"transaction_id": 4_100_000_000u64, "listing_id": 1_500_000_001u64, "title": "Linen apron"}],
                })
            })
            .collect();
        self.with_limits(Reply::json(200, &json!({ "count": receipts.len(), "results": results })), admission)
    }
}
