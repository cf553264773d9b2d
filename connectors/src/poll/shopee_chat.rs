//! Shopee: buyer chat messages through Open Platform v2 seller chat,
//! `GET /api/v2/sellerchat/get_conversation_list` then `GET /api/v2/sellerchat/get_message` for
//! each conversation with new messages (<https://open.shopee.com/documents/v2/v2.sellerchat.get_conversation_list>,
//! `v2.sellerchat.get_message`; the seller chat pages are visible only to partners granted the
//! chat permission, so shapes were checked against public SDKs too).
//!
//! Signing (CONFIRMED, Open Platform "API calls" / authorization docs): every call carries the
//! common parameters `partner_id`, `timestamp` (Unix seconds, valid 5 minutes), `access_token`,
//! `shop_id` and `sign` = hex HMAC-SHA256(partner key, `partner_id ‖ api path ‖ timestamp ‖
//! access_token ‖ shop_id`). Config: `app_key` = partner id, `app_secret` = partner key, `account`
//! = shop id.
//!
//! Shapes: CONFIRMED from the SDK types (shopee-openapi-v2, go-shopee): answers
//! `{"error": "", "message": "", "request_id", "response": {...}}`; the list gives
//! `conversations[]` (`conversation_id`, `to_id`, `to_name`, `last_message_timestamp`, ...) and
//! `page_result.next_cursor.next_message_time_nano` with `more`; messages give `messages[]`
//! (`message_id`, `message_type`, `from_id`, `from_shop_id`, `to_shop_id`, `created_timestamp`,
//! `content.text`, `source_content.order_sn`/`item_id`) and `page_result.next_offset`/`more`.
//! INFERRED (field reports in public integrations, not the docs): `direction=older` without
//! `next_timestamp_nano` lists the newest conversations first, `page_size` above 25 answers an
//! empty list, messages come newest first, and `last_message_timestamp` is in nanoseconds (any
//! unit is accepted here).
//!
//! What becomes an inquiry: a `text` message not sent by the shop (`from_shop_id` is not the
//! shop). Stickers, images, item and order cards are ignored. The shop's own messages (any type)
//! are the seller's answers: each becomes a [`SellerReply`](crate::webhook::SellerReply) to the
//! buyer it went to (`to_id`), which stops the SLA clock of that buyer's open inquiries.
//!
//! Cursor: a [`Watermark`](super::watermark) in Unix seconds (`created_timestamp`) with the ids
//! taken at that second; a cycle walks conversations newest first ([`super::walk`]) down to the
//! cursor, so a restart neither skips a message (the boundary second is read again) nor takes
//! one twice (its taken ids are in the cursor). A never-polled shop is read 7 days back.
//!
//! Quota: Shopee publishes no per-API rate limit for seller chat (none found in the public docs
//! or SDKs; only "too many requests" errors are mentioned). ASSUMED: 2 calls per second per shop,
//! burst 2, no daily cap; throttling is HTTP 429 or `error` `error_busy`/`system_busy` (INFERRED).
//! Override per entry (`requests_per_second`, `burst`, `per_day`) once Shopee grants a number.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::json_ids;
use super::walk::{to_seconds, Step, Walk};
use super::{encode, Credential, PollMethod, PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

/// Path of the conversation list.
pub const LIST_PATH: &str = "/api/v2/sellerchat/get_conversation_list";
/// Path of the token refresh.
pub const REFRESH_PATH: &str = "/api/v2/auth/access_token/get";
/// Path of one conversation's messages.
pub const MESSAGES_PATH: &str = "/api/v2/sellerchat/get_message";
/// Conversations and messages per page (25: larger list pages are answered empty).
const PAGE_SIZE: u32 = 25;

/// The seller chat poller.
pub struct ShopeeChat;

/// The Shopee v2 shop-level signature: hex HMAC-SHA256(partner key, partner_id ‖ path ‖
/// timestamp ‖ access_token ‖ shop_id).
pub fn sign(
    partner_key: &str,
    partner_id: &str,
    path: &str,
    timestamp: i64,
    access_token: &str,
    shop_id: &str,
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(partner_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{partner_id}{path}{timestamp}{access_token}{shop_id}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl Poller for ShopeeChat {
    fn name(&self) -> &'static str {
        "shopee_chat"
    }

    fn channel(&self) -> Channel {
        Channel::Shopee
    }

    fn operation(&self) -> &'static str {
        "sellerchat"
    }

    /// Assumed: Shopee publishes no per-API figure. 2 calls a second per shop, with no burst on
    /// top of the rate in case it counts seconds as windows.
    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 2.0, burst: 1, per_day: None }
    }

    fn required_credentials(&self) -> &'static [Credential] {
        &[Credential::AppKey, Credential::AppSecret]
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let now = target.now.unix_timestamp();
        let walk = Walk::resume_or_restart(position.cursor, position.page, now);
        let (path, extra) = match walk.step() {
            Step::List(page) => {
                let mut extra = format!("&direction=older&type=all&page_size={PAGE_SIZE}");
                if let Some(nano) = page {
                    extra.push_str(&format!("&next_timestamp_nano={}", encode(nano)));
                }
                (LIST_PATH, extra)
            }
            Step::Messages { conversation, page } => {
                let mut extra = format!("&conversation_id={}&page_size={PAGE_SIZE}", encode(conversation));
                if let Some(offset) = page {
                    extra.push_str(&format!("&offset={}", encode(offset)));
                }
                (MESSAGES_PATH, extra)
            }
        };
        let credentials = target.credentials;
        let partner_id = credentials.app_key.unwrap_or_default();
        let token = credentials.access_token;
        let signature = sign(credentials.app_secret.unwrap_or_default(), partner_id, path, now, token, target.account);
        PollRequest {
            method: PollMethod::Get,
            path_and_query: format!(
                "{path}?partner_id={}&timestamp={now}&access_token={}&shop_id={}&sign={signature}{extra}",
                encode(partner_id),
                encode(token),
                encode(target.account),
            ),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Shopee v2 authorization (<https://open.shopee.com/developer-guide/20>): access tokens last
    /// four hours; `POST /api/v2/auth/access_token/get` (partner-signed: `partner_id ‖ path ‖
    /// timestamp`) with `{refresh_token, partner_id, shop_id}` answers `{access_token,
    /// refresh_token, expire_in}` (a new refresh token each time).
    fn refresh_request(&self, target: &PollTarget<'_>, refresh_token: &str) -> Option<PollRequest> {
        let partner_id = target.credentials.app_key.unwrap_or_default();
        let partner_key = target.credentials.app_secret.unwrap_or_default();
        let timestamp = target.now.unix_timestamp();
        let sign = super::shopee_lost_push::sign_partner(partner_key, partner_id, REFRESH_PATH, timestamp);
        let id = |v: &str| v.parse::<u64>().map_or_else(|_| serde_json::json!(v), |n| serde_json::json!(n));
        Some(PollRequest {
            method: PollMethod::Post,
            path_and_query: format!(
                "{REFRESH_PATH}?partner_id={}&timestamp={timestamp}&sign={sign}",
                encode(partner_id)
            ),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: serde_json::json!({
                "refresh_token": refresh_token, "partner_id": id(partner_id), "shop_id": id(target.account),
            })
            .to_string(),
        })
    }

    fn parse_refresh(&self, body: &[u8], _now: time::OffsetDateTime) -> Result<super::TokenGrant, InputError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            error: String,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            refresh_token: Option<String>,
            #[serde(default)]
            expire_in: Option<i64>,
        }
        let answer: Answer = serde_json::from_slice(body).map_err(InputError::from_json)?;
        if !answer.error.is_empty() {
            return Err(InputError::new(InputErrorCode::InvalidValue, "Shopee refused the refresh").field("error"));
        }
        Ok(super::TokenGrant {
            access_token: answer
                .access_token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| super::no_token("access_token"))?,
            expires_in_seconds: answer.expire_in,
            refresh_token: answer.refresh_token.filter(|t| !t.is_empty()),
        })
    }

    fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        let error = serde_json::from_slice::<ErrorOnly>(body).map(|e| e.error).unwrap_or_default();
        // Busy, or a passing server error: the same request after a pause, the cycle goes on.
        status == 429 || matches!(error.as_str(), "error_busy" | "system_busy" | "error_server" | "error_inner")
    }

    /// Shopee answers an expired or revoked access token with HTTP 403 and `error_auth` or
    /// `invalid_access_token` (sometimes spelled `invalid_acceess_token`).
    fn is_token_refused(&self, status: u16, body: &[u8]) -> bool {
        let error = serde_json::from_slice::<ErrorOnly>(body).map(|e| e.error).unwrap_or_default();
        status == 401 || matches!(error.as_str(), "error_auth" | "invalid_access_token" | "invalid_acceess_token")
    }

    /// A conversation Shopee refuses with an HTTP 4xx (gone, not visible) does not hold the cycle.
    fn step_over<'c>(
        &self,
        status: u16,
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        _context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Option<Result<PollPage, InputError>> {
        Walk::step_over(status, position, target.now.unix_timestamp()).map(Ok)
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let mut walk = Walk::resume_or_restart(position.cursor, position.page, target.now.unix_timestamp());
        let mut page = PollPage::default();
        match walk.step() {
            Step::List(_) => {
                let list: ListResponse = response_of(body)?;
                let next =
                    list.page_result.filter(|p| p.more).and_then(|p| p.next_cursor).map(|c| c.next_message_time_nano);
                let listed =
                    list.conversations.into_iter().map(|c| (c.conversation_id, to_seconds(c.last_message_timestamp)));
                walk.listed(listed, next);
            }
            Step::Messages { conversation, .. } => {
                let conversation = conversation.to_owned();
                let messages: MessagesResponse = match response_of(body) {
                    Ok(answer) => answer,
                    // The platform refused this conversation (deleted, blocked): the cycle goes on
                    // without it and keeps its starting cursor, so the next cycle tries it again.
                    Err(err) if err.field.as_deref() == Some("error") => {
                        walk.skip_conversation();
                        page.ignored += 1;
                        page.refused = Some(format!("a conversation: {err}"));
                        page.next_page = walk.next_token();
                        page.cursor = Some(walk.cursor());
                        return Ok(page);
                    }
                    Err(err) => return Err(err),
                };
                let mut reached_old = false;
                for message in messages.messages {
                    if !walk.is_new(&conversation, message.created_timestamp, &message.message_id) {
                        reached_old |= walk.is_old(&conversation, message.created_timestamp);
                        page.ignored += 1;
                        continue;
                    }
                    walk.saw(message.created_timestamp, &message.message_id);
                    let from_shop = message.from_shop_id.as_deref() == Some(target.account);
                    let text = message.content.and_then(|c| c.text).filter(|t| !t.trim().is_empty());
                    let created = crate::webhook::from_unix(message.created_timestamp, false);
                    if let (true, Some(buyer), Some(replied_at)) = (from_shop, message.to_id.clone(), created) {
                        page.replies.push(crate::webhook::SellerReply {
                            account: target.account.to_owned(),
                            buyer_id: buyer,
                            replied_at,
                            message_id: Some(message.message_id.clone()),
                            in_reply_to: None,
                            responses: None,
                        });
                    }
                    let (Some(text), Some(created), false, "text") =
                        (text, created, from_shop, message.message_type.as_str())
                    else {
                        page.ignored += 1;
                        continue;
                    };
                    let buyer = message.from_id;
                    let mut draft = Draft::message(
                        Channel::Shopee,
                        target.account,
                        message.message_id,
                        conversation.clone(),
                        format!("id:{buyer}"),
                        text,
                        created,
                    )
                    .sent_by(&buyer);
                    if let Some(source) = message.source_content {
                        draft.order_id = source.order_sn.filter(|o| !o.is_empty());
                        draft.product_ids = source.item_id.into_iter().collect();
                    }
                    page.inquiries.push(draft.into_inquiry(&context()));
                }
                let next = messages.page_result.filter(|p| p.more).and_then(|p| p.next_offset);
                walk.read(reached_old, next);
            }
        }
        page.next_page = walk.next_token();
        page.cursor = Some(walk.cursor());
        Ok(page)
    }
}

/// The `response` of a Shopee answer, or the error it carries.
/// The `response` of an answer. An error that refuses the request (a conversation gone, no
/// permission) has field `error`; a passing one (`error_server`, `error_inner`, busy) has none,
/// so the cycle is given up and asked again instead of going on without what it asked for.
fn response_of<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InputError> {
    let envelope: Envelope<T> = serde_json::from_slice(body).map_err(InputError::from_json)?;
    if matches!(envelope.error.as_str(), "error_server" | "error_inner" | "error_busy" | "system_busy") {
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!("Shopee answered error `{}` (passing; asked again)", envelope.error),
        ));
    }
    if !envelope.error.is_empty() {
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!("Shopee answered error `{}`", envelope.error),
        )
        .field("error"));
    }
    envelope.response.ok_or_else(|| InputError::new(InputErrorCode::MissingField, "no `response`").field("response"))
}

#[derive(Deserialize)]
struct ErrorOnly {
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    error: String,
    #[serde(default = "Option::default")]
    response: Option<T>,
}

#[derive(Deserialize)]
struct ListResponse {
    #[serde(default)]
    conversations: Vec<Conversation>,
    #[serde(default)]
    page_result: Option<ListPageResult>,
}

#[derive(Deserialize)]
struct Conversation {
    #[serde(deserialize_with = "json_ids::id")]
    conversation_id: String,
    #[serde(deserialize_with = "json_ids::int")]
    last_message_timestamp: i64,
}

#[derive(Deserialize)]
struct ListPageResult {
    #[serde(default)]
    more: bool,
    #[serde(default)]
    next_cursor: Option<NextCursor>,
}

#[derive(Deserialize)]
struct NextCursor {
    #[serde(deserialize_with = "json_ids::id")]
    next_message_time_nano: String,
}

#[derive(Deserialize)]
struct MessagesResponse {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    page_result: Option<MessagesPageResult>,
}

#[derive(Deserialize)]
struct MessagesPageResult {
    #[serde(default)]
    more: bool,
    #[serde(default, deserialize_with = "json_ids::opt_id")]
    next_offset: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(deserialize_with = "json_ids::id")]
    message_id: String,
    #[serde(default)]
    message_type: String,
    #[serde(deserialize_with = "json_ids::id")]
    from_id: String,
    #[serde(default, deserialize_with = "json_ids::opt_id")]
    from_shop_id: Option<String>,
    #[serde(default, deserialize_with = "json_ids::opt_id")]
    to_id: Option<String>,
    #[serde(deserialize_with = "json_ids::int")]
    created_timestamp: i64,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    source_content: Option<SourceContent>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct SourceContent {
    #[serde(default)]
    order_sn: Option<String>,
    #[serde(default, deserialize_with = "json_ids::opt_id")]
    item_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_error_is_asked_again_and_a_refusal_names_its_error() {
        let answer = |error: &str| serde_json::json!({ "error": error, "message": "x" }).to_string().into_bytes();
        for passing in ["error_server", "error_inner", "error_busy", "system_busy"] {
            let err = response_of::<serde_json::Value>(&answer(passing)).unwrap_err();
            assert_eq!(err.field, None, "{passing}: the cycle is asked again, nothing stepped over");
        }
        let refused = response_of::<serde_json::Value>(&answer("error_not_found")).unwrap_err();
        assert_eq!(refused.field.as_deref(), Some("error"), "a refusal steps over the conversation");
    }

    #[test]
    fn a_refused_access_token_is_told_from_other_failures() {
        let poller = ShopeeChat;
        let answer = |error: &str| format!(r#"{{"error":"{error}","message":"...","request_id":"r1"}}"#);
        assert!(poller.is_token_refused(403, answer("invalid_access_token").as_bytes()));
        assert!(poller.is_token_refused(403, answer("error_auth").as_bytes()));
        assert!(!poller.is_token_refused(403, answer("error_permission").as_bytes()));
        assert!(!poller.is_token_refused(200, answer("").as_bytes()));
    }

    #[test]
    fn the_signature_matches_an_independently_computed_vector() {
        // python3: hmac.new(b"test-partner-key", b"2001234/api/v2/sellerchat/get_message1764748800tok9001", sha256).hexdigest()
        assert_eq!(
            sign("test-partner-key", "2001234", MESSAGES_PATH, 1_764_748_800, "tok", "9001"),
            "8693d276903b844d3bbbfe05d2e9a6d9b729a5d9ab1986ca140346a14f4bd66a"
        );
    }
}
