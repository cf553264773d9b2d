//! Shopee: the reconciliation sweep for missed pushes. Shopee keeps, for three days, every push it
//! could not deliver to the partner's callback URL and not yet confirmed as consumed
//! (<https://open.shopee.com/documents/v2/v2.push.get_lost_push_message>,
//! `v2.push.confirm_consumed_lost_push_message`; shapes checked against public SDKs:
//! shopee-sdk `PushManager`, ecomphp/shopee-php).
//!
//! A cycle: `GET /api/v2/push/get_lost_push_message` answers the earliest 100 lost pushes
//! (`push_message_list[]` of `{shop_id, code, timestamp, data}` where `data` is the push's data as
//! a JSON string), `has_next_page` and `last_message_id`. Buyer chat messages (code 10) are
//! normalized exactly as the `shopee` webhook normalizes the same push, so a push that arrives
//! both ways gets one inquiry id and is deduplicated. Once they are durable (the runner commits a
//! page before it asks for the next), the next page is `POST
//! /api/v2/push/confirm_consumed_lost_push_message` with that `last_message_id`; then the list
//! again while `has_next_page`. A crash between the two only repeats the list (deduplicated).
//!
//! Partner-level calls: `partner_id`, `timestamp` and `sign` = hex HMAC-SHA256(partner key,
//! `partner_id ‖ api path ‖ timestamp`); no shop token (config: `app_key` = partner id,
//! `app_secret` = partner key, `account` names the partner). No cursor: Shopee keeps the state.
//!
//! Quota: none published for these calls (ASSUMED 1 call per second per partner, no daily cap;
//! a sweep every few minutes needs far less).

use serde::Deserialize;

use super::{
    encode, Credential, PollMethod, PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller, QuotaScope,
};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::NormalizeContext;

/// Path of the lost-push list.
pub const LIST_PATH: &str = "/api/v2/push/get_lost_push_message";
/// Path of the consumption confirmation.
pub const CONFIRM_PATH: &str = "/api/v2/push/confirm_consumed_lost_push_message";
/// Push code of buyer chat messages (`webchat_push`).
const WEBCHAT_PUSH: i64 = 10;

/// The lost-push sweep.
pub struct ShopeeLostPush;

/// The Shopee v2 partner-level signature: hex HMAC-SHA256(partner key, partner_id ‖ path ‖ timestamp).
/// (The shop-level signature without a token and shop.)
pub fn sign_partner(partner_key: &str, partner_id: &str, path: &str, timestamp: i64) -> String {
    super::shopee_chat::sign(partner_key, partner_id, path, timestamp, "", "")
}

/// What the page token says to do next.
enum Step {
    List,
    Confirm { last_message_id: u64, more: bool },
}

fn step(page: Option<&str>) -> Step {
    let confirm = page.and_then(|p| p.strip_prefix("confirm:")).and_then(|rest| {
        let (id, more) = rest.split_once(':').unwrap_or((rest, ""));
        Some(Step::Confirm { last_message_id: id.parse().ok()?, more: more == "more" })
    });
    confirm.unwrap_or(Step::List)
}

impl Poller for ShopeeLostPush {
    fn name(&self) -> &'static str {
        "shopee_lost_push"
    }

    fn channel(&self) -> Channel {
        Channel::Shopee
    }

    fn operation(&self) -> &'static str {
        "lost_push"
    }

    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 1.0, burst: 1, per_day: None }
    }

    fn quota_scope(&self) -> QuotaScope {
        QuotaScope::App
    }

    fn required_credentials(&self) -> &'static [Credential] {
        &[Credential::AppKey, Credential::AppSecret]
    }

    fn needs_access_token(&self) -> bool {
        false
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let partner_id = target.credentials.app_key.unwrap_or_default();
        let partner_key = target.credentials.app_secret.unwrap_or_default();
        let timestamp = target.now.unix_timestamp();
        let (method, path, body) = match step(position.page) {
            Step::List => (PollMethod::Get, LIST_PATH, String::new()),
            Step::Confirm { last_message_id, .. } => {
                (PollMethod::Post, CONFIRM_PATH, serde_json::json!({ "last_message_id": last_message_id }).to_string())
            }
        };
        let sign = sign_partner(partner_key, partner_id, path, timestamp);
        let mut headers = Vec::new();
        if method == PollMethod::Post {
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
        }
        PollRequest {
            method,
            path_and_query: format!("{path}?partner_id={}&timestamp={timestamp}&sign={sign}", encode(partner_id)),
            headers,
            body,
        }
    }

    fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        status == 429
            || serde_json::from_slice::<Envelope>(body)
                .is_ok_and(|e| matches!(e.error.as_str(), "error_busy" | "system_busy"))
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        _target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(InputError::from_json)?;
        if !envelope.error.is_empty() {
            return Err(InputError::new(InputErrorCode::InvalidValue, "Shopee answered with an error").field("error"));
        }
        let mut page = PollPage::default();
        if let Step::Confirm { more, .. } = step(position.page) {
            page.next_page = more.then(|| "list".to_owned());
            return Ok(page);
        }
        let list: LostPushes =
            serde_json::from_value(envelope.response.unwrap_or_default()).map_err(InputError::from_json)?;
        let shopee = crate::webhook::find("shopee").expect("the shopee webhook is registered");
        for push in &list.push_message_list {
            let (Some(shop_id), WEBCHAT_PUSH) = (push.shop_id, push.code) else {
                page.ignored += 1; // order, product and partner-level pushes: not buyer messages
                continue;
            };
            let Ok(data) = serde_json::from_str::<serde_json::Value>(&push.data) else {
                page.ignored += 1; // a malformed push must not stall the sweep
                continue;
            };
            let delivery =
                serde_json::json!({ "code": push.code, "shop_id": shop_id, "timestamp": push.timestamp, "data": data });
            let body = delivery.to_string();
            let request = crate::webhook::WebhookRequest { body: body.as_bytes(), ..Default::default() };
            match shopee.parse(&request, &shop_id.to_string(), context) {
                Ok(parsed) => {
                    page.ignored += parsed.ignored;
                    page.inquiries.extend(parsed.inquiries);
                }
                Err(_) => page.ignored += 1,
            }
        }
        if let (false, Some(last)) = (list.push_message_list.is_empty(), list.last_message_id) {
            let more = if list.has_next_page { ":more" } else { "" };
            page.next_page = Some(format!("confirm:{last}{more}"));
        }
        Ok(page)
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    error: String,
    #[serde(default)]
    response: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct LostPushes {
    #[serde(default)]
    push_message_list: Vec<LostPush>,
    #[serde(default)]
    has_next_page: bool,
    #[serde(default)]
    last_message_id: Option<u64>,
}

#[derive(Deserialize)]
struct LostPush {
    #[serde(default)]
    shop_id: Option<u64>,
    code: i64,
    #[serde(default)]
    timestamp: i64,
    #[serde(default)]
    data: String,
}
