//! AliExpress: buyer messages ("message relations", the seller's conversations with buyers)
//! through the AliExpress Open Platform gateway, `GET /sync?method=...`:
//! `aliexpress.message.redefining.versiontwo.querymsgrelationlist` lists the conversations, then
//! `aliexpress.message.redefining.versiontwo.querymsgdetaillist` reads each conversation with new
//! messages.
//!
//! Documents followed: the AliExpress TOP API reference as generated into the official TOP SDKs
//! (`auto_sdk` 2018.07.25: request classes `AliexpressMessageRedefiningVersiontwoQuerymsg*Request`,
//! the `RelationQueryDto` query object, response domains `RelationResultDomain`,
//! `OpenApiRelationResultDomain`, `MessageDetailDomain`, `OpenApiMessageDetailListResultDomain`),
//! the "API access count limitation" page of the AliExpress developer documents, and the official
//! IOP Python SDK (`iop-sdk-python-20220609`, `IopClient`) for the current gateway.
//!
//! CONFIRMED (from those sources):
//! - Signing (IOP SDK): system parameters `app_key`, `method`, `timestamp` (Unix milliseconds),
//!   `sign_method=sha256`, `session` (the seller's access token), plus the business parameters;
//!   `sign` = uppercase hex HMAC-SHA256(app secret, every parameter but `sign` sorted by name and
//!   concatenated as `name ‖ value`), prefixed with the API path only for REST-style APIs whose
//!   name contains `/` (the `method=` names here have none). Config: `app_key`, `app_secret`,
//!   `access_token` = the seller's token, `account` = a label for the seller (the token names it).
//! - The list takes one parameter `query`, a JSON object (`current_page`, `page_size` 1..100,
//!   `start_time`, `end_time`, `only_un_dealed`, `only_un_readed`, `rank`, `seller_id`); at most
//!   the first 5,000 rows can be paged to. Each relation has `channel_id`, `message_time`,
//!   `other_ali_id` (the buyer), `other_login_id`, `other_name`, `last_message_id`,
//!   `last_message_is_own`, `order_id`, `unread_count`, `read_stat`, `deal_stat`, `child_id`.
//! - Messages take `channel_id`, `current_page`, `page_size` (1..100, first 5,000 rows) and
//!   optional `extern_id`; each has `id`, `gmt_create`, `sender_ali_id`, `sender_name`, `content`,
//!   `message_type` (`product`/`order`/`member`/`store`: what the message is about, `extern_id`
//!   being the product or order id), `file_path_list` (images), `summary`.
//! - Answers are `{"<method with _>_response": {"result": {"is_success", "error_code", "error_msg",
//!   "relation_list" | "message_detail_list"}, "request_id"}}`; lists come wrapped
//!   (`{"relation_result": [...]}`, `{"message_detail": [...]}`), or bare with `simplify=true`
//!   (both are read).
//!
//! INFERRED (public integrations and the shared IOP gateway, not the reference):
//! - That the message API is still served on the current platform (`api-sg.aliexpress.com/sync`):
//!   no current-platform page for it was found, so the poller is built on the documented legacy
//!   method names and shapes, sent through the IOP `/sync` gateway that serves the other legacy
//!   `aliexpress.*` methods by name. Point `base_url` elsewhere if AliExpress moved it.
//! - Times are Unix milliseconds (any unit is accepted here); conversations are listed newest
//!   first (integrations take the first row's `message_time` as the newest); a conversation's
//!   messages come newest first (a page in ascending order is read to the conversation's end).
//! - Errors: IOP answers `{"type", "code", "message", "request_id"}` (`code` not `"0"`), the TOP
//!   router `{"error_response": {"code", "msg", "sub_code", "sub_msg"}}`; throttling is HTTP 429,
//!   IOP `code` `ApiCallLimit` or TOP code 7 (`App Call Limited`).
//!
//! What becomes an inquiry: a message whose sender is the conversation's buyer (`sender_ali_id` =
//! the relation's `other_ali_id`) with non-empty `content`. Image-only items (empty `content`,
//! `file_path_list`) are ignored. A message about an order or product carries its `extern_id` as
//! order or product id. The seller's and its sub-accounts' messages (any other sender, any
//! content) are the seller's answers: each becomes a [`SellerReply`](crate::webhook::SellerReply)
//! to the conversation's buyer, which stops the SLA clock of that buyer's open inquiries. A
//! conversation whose list row names no buyer gives no answers (nobody to attribute them to).
//!
//! Cursor: a [`Watermark`](super::watermark) in Unix seconds (`gmt_create`) with the ids taken at
//! that second. A cycle walks conversations newest first ([`super::walk`]) down to the cursor,
//! reading each newest first down to the cursor, so a restart neither skips a message (the
//! boundary second is read again) nor takes one twice (its taken ids are in the cursor). The list
//! is paged by page number, so a conversation that gets a message during the cycle moves to the
//! front and shifts the others down (a conversation listed again is not read again in the same
//! cycle; one that moved past the pages still to read is read by the next cycle down to this
//! cycle's start, see [`super::walk`]). The cursor never goes past the time of the cycle's first list page
//! less [`LOOKBACK`] (see `Walk::cursor`): a message taken later than that is taken again by the
//! next cycle and dropped by the pipeline's dedup, but no older message that was not yet visible
//! when its conversation was read is skipped. A never-polled seller is read 7 days back.
//!
//! Quota: AliExpress documents three kinds of limits ("API access count limitation": per app key
//! per day, shown and raised in the console, the app banned until midnight Beijing time once over
//! it; per API for all apps; per API and app key). Its API change log publishes figures for a few
//! APIs (e.g. 80 calls/s for `aliexpress.solution.product.info.get`), none for the message methods,
//! and the only daily figure is 5,000 calls per app in the test environment. ASSUMED: 5,000 calls
//! a day per app (shared by every seller of the app), 1 call per second, burst 1. Override per
//! entry (`per_day`, `requests_per_second`, `burst`) with the figure the console shows.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use super::json_ids;
use super::walk::{to_seconds, Step, Walk};
use super::{
    encode, Credential, PollMethod, PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller, QuotaScope,
};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

/// Path of the IOP gateway (`https://api-sg.aliexpress.com/sync`).
pub const GATEWAY_PATH: &str = "/sync";
/// Method listing the seller's conversations.
pub const LIST_METHOD: &str = "aliexpress.message.redefining.versiontwo.querymsgrelationlist";
/// Method reading one conversation's messages.
pub const DETAIL_METHOD: &str = "aliexpress.message.redefining.versiontwo.querymsgdetaillist";
/// Rows per page (the API allows 1..100).
const PAGE_SIZE: u32 = 50;
/// Rows the API pages to at most.
const MAX_ROWS: u32 = 5_000;

/// The aliexpress_messages poller.
pub struct AliexpressMessages;

/// The IOP signature: uppercase hex HMAC-SHA256(app secret, [api path if it contains `/`] ‖
/// every parameter but `sign`, sorted by name, as `name ‖ value`).
pub fn sign(app_secret: &str, api: &str, params: &[(&str, String)]) -> String {
    let mut sorted: Vec<&(&str, String)> = params.iter().filter(|(k, _)| *k != "sign").collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut base = String::new();
    if api.contains('/') {
        base.push_str(api);
    }
    for (name, value) in sorted {
        base.push_str(name);
        base.push_str(value);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(base.as_bytes());
    hex::encode_upper(mac.finalize().into_bytes())
}

/// The cycle state, serialized as the page token: the walk, and what the walk alone cannot keep.
#[derive(Debug, Serialize, Deserialize)]
struct Cycle {
    walk: Walk,
    /// The buyer (`other_ali_id`) of each conversation on the work list.
    #[serde(default)]
    buyers: BTreeMap<String, String>,
    /// Conversations read to the cursor this cycle (not read again if listed again).
    #[serde(default)]
    done: Vec<String>,
}

impl Cycle {
    /// The state for `position`: the page token's, else a first page from the durable cursor (7
    /// days back if none). A token or cursor this poller did not write starts the cycle again, the
    /// same way for the request and the parse of its answer.
    fn resume_or_restart(position: &PollPosition<'_>, now: i64) -> Cycle {
        position
            .page
            .and_then(|token| serde_json::from_str(token).ok())
            .unwrap_or_else(|| Cycle::fresh(Walk::resume_or_restart(position.cursor, None, now)))
    }

    fn fresh(walk: Walk) -> Cycle {
        Cycle { walk, buyers: BTreeMap::new(), done: Vec::new() }
    }

    /// The page number of the current step (1 when the walk holds none or a foreign one).
    fn page_number(&self) -> u32 {
        let page = match self.walk.step() {
            Step::List(page) => page,
            Step::Messages { page, .. } => page,
        };
        page.and_then(|p| p.parse().ok()).filter(|p| *p >= 1).unwrap_or(1)
    }

    fn token(&self) -> Option<String> {
        (!self.walk.todo.is_empty() || !self.walk.list_done).then(|| serde_json::to_string(self).unwrap_or_default())
    }
}

/// The number of the page after `page` when `page` was full and the API pages that far.
fn next_page_number(page: u32, rows: usize) -> Option<String> {
    (rows >= PAGE_SIZE as usize && page.saturating_mul(PAGE_SIZE) < MAX_ROWS).then(|| (page + 1).to_string())
}

impl Poller for AliexpressMessages {
    fn name(&self) -> &'static str {
        "aliexpress_messages"
    }

    fn channel(&self) -> Channel {
        Channel::Aliexpress
    }

    fn operation(&self) -> &'static str {
        "message"
    }

    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 1.0, burst: 1, per_day: Some(5_000) }
    }

    fn quota_scope(&self) -> QuotaScope {
        QuotaScope::App
    }

    fn required_credentials(&self) -> &'static [Credential] {
        &[Credential::AppKey, Credential::AppSecret]
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let now = target.now.unix_timestamp();
        let cycle = Cycle::resume_or_restart(position, now);
        let credentials = target.credentials;
        let page = cycle.page_number();
        let mut params: Vec<(&str, String)> = vec![
            ("app_key", credentials.app_key.unwrap_or_default().to_owned()),
            ("format", "json".to_owned()),
            ("session", credentials.access_token.to_owned()),
            ("sign_method", "sha256".to_owned()),
            ("timestamp", (i128::from(now) * 1000).to_string()),
        ];
        match cycle.walk.step() {
            Step::List(_) => {
                params.push(("method", LIST_METHOD.to_owned()));
                params.push(("query", format!("{{\"current_page\":{page},\"page_size\":{PAGE_SIZE}}}")));
            }
            Step::Messages { conversation, .. } => {
                params.push(("method", DETAIL_METHOD.to_owned()));
                params.push(("channel_id", conversation.to_owned()));
                params.push(("current_page", page.to_string()));
                params.push(("page_size", PAGE_SIZE.to_string()));
            }
        }
        params.sort_by(|a, b| a.0.cmp(b.0));
        let method = params.iter().find(|(k, _)| *k == "method").map(|(_, v)| v.clone()).unwrap_or_default();
        let signature = sign(credentials.app_secret.unwrap_or_default(), &method, &params);
        params.push(("sign", signature));
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        PollRequest {
            method: PollMethod::Get,
            path_and_query: format!("{GATEWAY_PATH}?{}", query.join("&")),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// A conversation whose messages the platform refuses with HTTP 400, 403 or 404 does not hold
    /// the cycle: skipped like one refused in the answer, its starting cursor kept.
    fn step_over<'c>(
        &self,
        status: u16,
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        _context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Option<Result<PollPage, InputError>> {
        let mut cycle = Cycle::resume_or_restart(position, target.now.unix_timestamp());
        let Step::Messages { conversation, .. } = cycle.walk.step() else { return None };
        if !matches!(status, 400 | 403 | 404) {
            return None;
        }
        let conversation = conversation.to_owned();
        cycle.walk.skip_conversation();
        cycle.done.push(conversation);
        Some(Ok(PollPage {
            ignored: 1,
            refused: Some(format!("a conversation: HTTP {status}")),
            next_page: cycle.token(),
            cursor: Some(cycle.walk.cursor()),
            ..Default::default()
        }))
    }

    fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        if status == 429 {
            return true;
        }
        let Ok(json) = serde_json::from_slice::<Value>(body) else { return false };
        let iop = json.get("code").map(code_text);
        let top = json.get("error_response").and_then(|e| e.get("code")).map(code_text);
        matches!(iop.as_deref(), Some("ApiCallLimit")) || matches!(top.as_deref(), Some("7"))
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let mut cycle = Cycle::resume_or_restart(position, target.now.unix_timestamp());
        let page_number = cycle.page_number();
        let mut page = PollPage::default();
        match cycle.walk.step() {
            Step::List(_) => {
                let result = result_of(body, LIST_METHOD)?;
                let relations: Vec<Relation> = rows(&result, "relation_list", "relation_result")?;
                let next = next_page_number(page_number, relations.len());
                let mut listed = Vec::new();
                for relation in relations {
                    if cycle.done.contains(&relation.channel_id) {
                        continue;
                    }
                    let latest = to_seconds(relation.message_time);
                    if latest >= cycle.walk.since.at {
                        if let Some(buyer) = relation.other_ali_id {
                            cycle.buyers.insert(relation.channel_id.clone(), buyer);
                        }
                    }
                    listed.push((relation.channel_id, latest));
                }
                cycle.walk.listed(listed, next);
            }
            Step::Messages { conversation, .. } => {
                let conversation = conversation.to_owned();
                let buyer = cycle.buyers.get(&conversation).cloned();
                let result = match result_of(body, DETAIL_METHOD) {
                    Ok(result) => result,
                    // The platform refused this conversation: the cycle goes on without it and
                    // keeps its starting cursor, so the next cycle tries it again (one refused
                    // conversation no longer holds every conversation listed after it).
                    Err(err) if matches!(err.field.as_deref(), Some("error_response" | "code" | "is_success")) => {
                        cycle.walk.skip_conversation();
                        cycle.done.push(conversation);
                        page.ignored += 1;
                        page.refused = Some(format!("a conversation: {err}"));
                        page.next_page = cycle.token();
                        page.cursor = Some(cycle.walk.cursor());
                        return Ok(page);
                    }
                    Err(err) => return Err(err),
                };
                let messages: Vec<MessageDetail> = rows(&result, "message_detail_list", "message_detail")?;
                let next = next_page_number(page_number, messages.len());
                let times: Vec<i64> = messages.iter().map(|m| to_seconds(m.gmt_create)).collect();
                // Newest first (INFERRED): a page ending older than the cursor ends the conversation.
                // A page in ascending order is read on to the conversation's end.
                let reached_old = match (times.first(), times.last()) {
                    (Some(first), Some(last)) => first >= last && cycle.walk.is_old(&conversation, *last),
                    _ => false,
                };
                for (message, at) in messages.into_iter().zip(times) {
                    if !cycle.walk.is_new(&conversation, at, &message.id) {
                        page.ignored += 1;
                        continue;
                    }
                    cycle.walk.saw(at, &message.id);
                    // Only a known buyer's messages: `account` is a label, not the seller's ali id,
                    // so without `other_ali_id` a seller's message cannot be told from the buyer's.
                    let from_buyer =
                        matches!((&buyer, &message.sender_ali_id), (Some(buyer), Some(sender)) if buyer == sender);
                    let text = message.content.filter(|t| !t.trim().is_empty());
                    let created = crate::webhook::from_unix(at, false);
                    // The seller's (or a sub-account's) message to a known buyer, of any kind,
                    // answers that buyer.
                    if let (Some(buyer), Some(_), false, Some(replied_at)) =
                        (&buyer, &message.sender_ali_id, from_buyer, created)
                    {
                        page.replies.push(crate::webhook::SellerReply {
                            account: target.account.to_owned(),
                            buyer_id: buyer.clone(),
                            replied_at,
                            message_id: Some(message.id.clone()),
                            in_reply_to: None,
                            responses: None,
                        });
                    }
                    let (true, Some(text), Some(created), Some(sender)) =
                        (from_buyer, text, created, message.sender_ali_id)
                    else {
                        page.ignored += 1;
                        continue;
                    };
                    let mut draft = Draft::message(
                        Channel::Aliexpress,
                        target.account,
                        message.id,
                        conversation.clone(),
                        format!("id:{sender}"),
                        text,
                        created,
                    )
                    .sent_by(&sender);
                    draft.buyer_name = message.sender_name.filter(|n| !n.trim().is_empty());
                    match message.message_type.as_str() {
                        "order" => draft.order_id = message.extern_id,
                        "product" => draft.product_ids = message.extern_id.into_iter().collect(),
                        _ => {}
                    }
                    page.inquiries.push(draft.into_inquiry(&context()));
                }
                cycle.walk.read(reached_old, next);
                if cycle.walk.todo.front() != Some(&conversation) {
                    cycle.done.push(conversation);
                }
            }
        }
        let todo = &cycle.walk.todo;
        cycle.buyers.retain(|channel, _| todo.contains(channel));
        page.next_page = cycle.token();
        page.cursor = Some(cycle.walk.cursor());
        Ok(page)
    }
}

/// A JSON code (`"ApiCallLimit"`, `7`) as text.
fn code_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `result` of the answer to `method`, or the error the answer carries.
fn result_of(body: &[u8], method: &str) -> Result<Value, InputError> {
    let json: Value = serde_json::from_slice(body).map_err(InputError::from_json)?;
    let Value::Object(mut envelope) = json else {
        return Err(InputError::new(InputErrorCode::InvalidValue, "the answer is not a JSON object"));
    };
    if let Some(error) = envelope.get("error_response") {
        let text = |k: &str| error.get(k).map(code_text).unwrap_or_default();
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!(
                "AliExpress answered error {} {} ({} {})",
                text("code"),
                text("msg"),
                text("sub_code"),
                text("sub_msg")
            ),
        )
        .field("error_response"));
    }
    if let Some(code) = envelope.get("code").map(code_text).filter(|c| c != "0") {
        let message = envelope.get("message").map(code_text).unwrap_or_default();
        return Err(InputError::new(InputErrorCode::InvalidValue, format!("AliExpress answered `{code}`: {message}"))
            .field("code"));
    }
    let key = format!("{}_response", method.replace('.', "_"));
    let response =
        envelope.remove(&key).or_else(|| envelope.remove("result").map(|r| serde_json::json!({"result": r})));
    let result = response
        .and_then(|mut r| r.get_mut("result").map(Value::take))
        .filter(Value::is_object)
        .ok_or_else(|| InputError::new(InputErrorCode::MissingField, format!("no `{key}.result`")).field("result"))?;
    if result.get("is_success") == Some(&Value::Bool(false)) {
        let text = |k: &str| result.get(k).map(code_text).unwrap_or_default();
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!("AliExpress answered error_code {}: {}", text("error_code"), text("error_msg")),
        )
        .field("is_success"));
    }
    Ok(result)
}

/// The rows of `result[list]`, given bare (`[...]`) or wrapped (`{item: [...]}`, a single row
/// as an object); absent or empty is no rows.
fn rows<T: serde::de::DeserializeOwned>(result: &Value, list: &str, item: &str) -> Result<Vec<T>, InputError> {
    let rows = match result.get(list) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(wrapper)) => match wrapper.get(item) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(rows)) => rows.clone(),
            Some(row @ Value::Object(_)) => vec![row.clone()],
            Some(_) => return Err(InputError::new(InputErrorCode::InvalidValue, "not a list").field(list)),
        },
        Some(Value::Array(rows)) => rows.clone(),
        Some(_) => return Err(InputError::new(InputErrorCode::InvalidValue, "not a list").field(list)),
    };
    rows.into_iter().map(|row| serde_json::from_value(row).map_err(InputError::from_json)).collect()
}

#[derive(Deserialize)]
struct Relation {
    #[serde(deserialize_with = "json_ids::id")]
    channel_id: String,
    #[serde(deserialize_with = "json_ids::int")]
    message_time: i64,
    #[serde(default, deserialize_with = "json_ids::opt_id")]
    other_ali_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageDetail {
    #[serde(deserialize_with = "json_ids::id")]
    id: String,
    #[serde(deserialize_with = "json_ids::int")]
    gmt_create: i64,
    #[serde(default, deserialize_with = "json_ids::opt_id")]
    sender_ali_id: Option<String>,
    #[serde(default)]
    sender_name: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    message_type: String,
    #[serde(default, deserialize_with = "json_ids::opt_id")]
    extern_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_an_independently_computed_vector() {
        // python3: hmac.new(b"test-app-secret", b"app_keytest-app-keychannel_id1001current_page1formatjson"
        //   b"methodaliexpress.message.redefining.versiontwo.querymsgdetaillistpage_size50sessiontok"
        //   b"sign_methodsha256timestamp1764748800000", sha256).hexdigest().upper()
        let params = [
            ("app_key", "test-app-key".to_owned()),
            ("channel_id", "1001".to_owned()),
            ("current_page", "1".to_owned()),
            ("format", "json".to_owned()),
            ("method", DETAIL_METHOD.to_owned()),
            ("page_size", "50".to_owned()),
            ("session", "tok".to_owned()),
            ("sign_method", "sha256".to_owned()),
            ("timestamp", "1764748800000".to_owned()),
        ];
        assert_eq!(
            sign("test-app-secret", DETAIL_METHOD, &params),
            "E3EC2274C10F29D4E4D80EAD63A74363A93BFF6CB83E6FDD6B7ABB7E0BF32989"
        );
    }

    #[test]
    fn a_rest_api_path_is_signed_before_the_parameters() {
        let params = [("code", "c".to_owned())];
        assert_ne!(sign("s", "/auth/token/create", &params), sign("s", "auth.token.create", &params));
    }

    #[test]
    fn a_conversation_the_platform_refuses_is_stepped_over_and_the_cursor_kept() {
        use crate::poll::PollCredentials;
        let now = time::macros::datetime!(2026-12-03 08:00:00 UTC);
        let target = PollTarget {
            account: "seller-1",
            credentials: PollCredentials { access_token: "t", app_key: None, app_secret: None },
            now,
            wants_answers: false,
        };
        let cursor = super::super::watermark::Watermark::starting(now.unix_timestamp() - 3_600).to_cursor();
        let mut context = || NormalizeContext { received_at: now, trace_id: "t" };
        let at = (now.unix_timestamp() - 60) * 1000;
        let list = serde_json::json!({ "aliexpress_message_redefining_versiontwo_querymsgrelationlist_response": {
            "result": { "is_success": true, "relation_list": { "relation_result": [
                { "channel_id": "c-1", "message_time": at, "other_ali_id": "b-1" },
                { "channel_id": "c-2", "message_time": at - 1000, "other_ali_id": "b-2" }]}}}});
        let at_list = PollPosition { cursor: Some(&cursor), page: None };
        let listed = AliexpressMessages.parse(list.to_string().as_bytes(), &target, &at_list, &mut context).unwrap();
        let token = listed.next_page.expect("two conversations to read");
        // The first conversation is refused: the cycle goes on with the second.
        let refused =
            serde_json::json!({ "error_response": { "code": "isv.invalid-parameter", "msg": "channel not found" } });
        let at_first = PollPosition { cursor: Some(&cursor), page: Some(&token) };
        let page = AliexpressMessages.parse(refused.to_string().as_bytes(), &target, &at_first, &mut context).unwrap();
        assert_eq!(page.ignored, 1);
        let kept = super::super::watermark::Watermark::parse(page.cursor.as_deref()).unwrap().unwrap();
        assert_eq!(kept.at, now.unix_timestamp() - 3_600, "the cycle's start is kept for the next try");
        assert_eq!(kept.refused.get("c-1"), Some(&1), "the refusal is counted");
        assert!(page.refused.is_some(), "and reported");
        let token = page.next_page.expect("the second conversation");
        let next: Cycle = serde_json::from_str(&token).unwrap();
        assert_eq!(next.walk.step(), Step::Messages { conversation: "c-2", page: None });
        // The second refused with HTTP 404 (not in the answer): stepped over the same way.
        let at_second = PollPosition { cursor: Some(&cursor), page: Some(&token) };
        let stepped = AliexpressMessages.step_over(404, &target, &at_second, &mut context).unwrap().unwrap();
        assert_eq!((stepped.ignored, stepped.next_page), (1, None), "nothing left in the cycle");
        let kept = super::super::watermark::Watermark::parse(stepped.cursor.as_deref()).unwrap().unwrap();
        assert_eq!(kept.refused.get("c-2"), Some(&1));
        assert!(AliexpressMessages.step_over(500, &target, &at_second, &mut context).is_none(), "asked again");
        assert!(AliexpressMessages.step_over(404, &target, &at_list, &mut context).is_none(), "a refused list too");
    }

    #[test]
    fn lists_are_read_bare_wrapped_or_single() {
        let result = serde_json::json!({"a": {"b": {"channel_id": 1, "message_time": 2}}, "c": [{"channel_id": "3", "message_time": "4"}]});
        assert_eq!(rows::<Relation>(&result, "a", "b").unwrap().len(), 1);
        assert_eq!(rows::<Relation>(&result, "c", "d").unwrap()[0].channel_id, "3");
        assert!(rows::<Relation>(&result, "none", "b").unwrap().is_empty());
    }
}
