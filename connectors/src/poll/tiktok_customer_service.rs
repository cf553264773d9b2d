//! TikTok Shop: buyer messages through the Partner API 202309 customer service endpoints,
//! `GET /customer_service/202309/conversations` then
//! `GET /customer_service/202309/conversations/{conversation_id}/messages` for each conversation
//! with new messages (TikTok Shop Partner Center API reference, "Get Conversations" and "Get
//! Conversation Messages", version 202309).
//!
//! Signing (CONFIRMED, Partner Center "Sign your API request", and the public SDKs that implement
//! it): query `app_key`, `timestamp` (Unix seconds), `shop_cipher`, `sign`; header
//! `x-tts-access-token: <shop access token>`; `sign` = hex HMAC-SHA256(app secret, app secret ‖
//! path ‖ every query parameter except `sign` and `access_token`, sorted by name, as `name ‖
//! value` ‖ body ‖ app secret). Config: `app_key`, `app_secret`, `account` = the shop cipher.
//!
//! Shapes (CONFIRMED from the reference): answers `{"code": 0, "message", "request_id", "data"}`;
//! conversations: `page_size` (max 20), `page_token`, answer `data.conversations[]` with
//! `latest_message.create_time` and `data.next_page_token` (`""` at the end); messages:
//! `page_size` (max 10), `page_token`, `sort_order` (`DESC` default), `sort_field`
//! (`create_time`), answer `data.messages[]` with `sender.role` (`BUYER`, `SHOP`,
//! `CUSTOMER_SERVICE`, `SYSTEM`, `ROBOT`), `sender.im_user_id`, `sender.nickname`, `type`
//! (`TEXT`, `IMAGE`, `PRODUCT_CARD`, ...), `content` (a JSON string; `TEXT` is `{"content":
//! "..."}`), `create_time` (Unix seconds), `is_visible`. INFERRED: each conversation's `id` and
//! each message's `id` (the reference tables list only the nested fields), and conversations
//! listed newest first.
//!
//! What becomes an inquiry: a visible `TEXT` message whose sender role is `BUYER`. Messages of
//! the system and robots, and every other type, are ignored. `im_user_id` is an IM id (it cannot
//! look up orders); it is the buyer's identity. A visible message of the shop or its agents
//! (`SHOP`, `CUSTOMER_SERVICE`) is the seller's answer to the conversation's buyer, named by the
//! list's `participants[]` (`role` `BUYER`, `im_user_id`; INFERRED from public integrations, the
//! reference tables do not list it): a [`SellerReply`](crate::webhook::SellerReply) that stops
//! the buyer's SLA clocks. A conversation whose list entry names no buyer gives no answers.
//!
//! Cursor: a [`Watermark`](super::watermark) in Unix seconds (`create_time`) with the ids taken
//! at that second; a cycle walks conversations newest first ([`super::walk`]) down to the cursor,
//! so a restart neither skips a message nor takes one twice. A never-polled shop is read 7 days
//! back.
//!
//! Quota: TikTok Shop publishes no number for these endpoints (the Partner Center says calls are
//! rate limited per app and shop and answers HTTP 429 beyond; no public page gives the figure).
//! ASSUMED: 2 calls per second per shop, burst 2, no daily cap. Override per entry once the app's
//! limit is known from the Partner Center console.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::json_ids;
use super::walk::{Step, Walk};
use super::{encode, Credential, PollMethod, PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

/// Path of the conversation list.
pub const CONVERSATIONS_PATH: &str = "/customer_service/202309/conversations";

/// The customer service poller.
pub struct TiktokCustomerService;

/// The TikTok Shop request signature: hex HMAC-SHA256(secret, secret ‖ path ‖ sorted `name ‖
/// value` of every query parameter but `sign` and `access_token` ‖ body ‖ secret).
pub fn sign(app_secret: &str, path: &str, query: &[(&str, String)], body: &str) -> String {
    let mut params: Vec<&(&str, String)> =
        query.iter().filter(|(k, _)| !matches!(*k, "sign" | "access_token")).collect();
    params.sort_by(|a, b| a.0.cmp(b.0));
    let mut base = String::from(app_secret);
    base.push_str(path);
    for (name, value) in params {
        base.push_str(name);
        base.push_str(value);
    }
    base.push_str(body);
    base.push_str(app_secret);
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(base.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl Poller for TiktokCustomerService {
    fn name(&self) -> &'static str {
        "tiktok_customer_service"
    }

    fn channel(&self) -> Channel {
        Channel::TiktokShop
    }

    fn operation(&self) -> &'static str {
        "customer_service"
    }

    /// Assumed: the Shop Partner API publishes no figure for these calls. 2 calls a second per
    /// shop, with no burst on top of the rate in case it counts seconds as windows.
    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 2.0, burst: 1, per_day: None }
    }

    fn required_credentials(&self) -> &'static [Credential] {
        &[Credential::AppKey, Credential::AppSecret]
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let now = target.now.unix_timestamp();
        let walk = Walk::resume_or_restart(position.cursor, position.page, now);
        let credentials = target.credentials;
        let mut query: Vec<(&str, String)> = vec![
            ("app_key", credentials.app_key.unwrap_or_default().to_owned()),
            ("timestamp", now.to_string()),
            ("shop_cipher", target.account.to_owned()),
        ];
        let (path, page) = match walk.step() {
            Step::List(page) => {
                query.push(("page_size", "20".to_owned()));
                (CONVERSATIONS_PATH.to_owned(), page)
            }
            Step::Messages { conversation, page } => {
                query.push(("page_size", "10".to_owned()));
                query.push(("sort_order", "DESC".to_owned()));
                query.push(("sort_field", "create_time".to_owned()));
                (format!("{CONVERSATIONS_PATH}/{}/messages", encode(conversation)), page)
            }
        };
        if let Some(page) = page {
            query.push(("page_token", page.to_owned()));
        }
        let signature = sign(credentials.app_secret.unwrap_or_default(), &path, &query, "");
        query.push(("sign", signature));
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        PollRequest {
            method: PollMethod::Get,
            path_and_query: format!("{path}?{}", query.join("&")),
            headers: vec![
                ("x-tts-access-token".to_owned(), credentials.access_token.to_owned()),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
            body: String::new(),
        }
    }

    fn token_base_url(&self) -> Option<&'static str> {
        Some("https://auth.tiktok-shops.com")
    }

    /// TikTok Shop authorization (<https://partner.tiktokshop.com/docv2/page/6789cc9b1f3f0c0311f2b72c>):
    /// `GET /api/v2/token/refresh?app_key&app_secret&refresh_token&grant_type=refresh_token`
    /// answers `{code, data: {access_token, access_token_expire_in (Unix seconds), refresh_token}}`.
    fn refresh_request(&self, target: &PollTarget<'_>, refresh_token: &str) -> Option<PollRequest> {
        let credentials = target.credentials;
        Some(PollRequest {
            method: PollMethod::Get,
            path_and_query: format!(
                "/api/v2/token/refresh?app_key={}&app_secret={}&refresh_token={}&grant_type=refresh_token",
                encode(credentials.app_key.unwrap_or_default()),
                encode(credentials.app_secret.unwrap_or_default()),
                encode(refresh_token)
            ),
            headers: Vec::new(),
            body: String::new(),
        })
    }

    fn parse_refresh(&self, body: &[u8], now: time::OffsetDateTime) -> Result<super::TokenGrant, InputError> {
        #[derive(Deserialize)]
        struct Grant {
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            access_token_expire_in: Option<i64>,
            #[serde(default)]
            refresh_token: Option<String>,
        }
        let grant: Grant = data_of(body)?;
        let now = now.unix_timestamp();
        Ok(super::TokenGrant {
            access_token: grant
                .access_token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| super::no_token("access_token"))?,
            // An absolute time in TikTok's answer; the runner wants a duration.
            expires_in_seconds: grant.access_token_expire_in.map(|at| at - now),
            refresh_token: grant.refresh_token.filter(|t| !t.is_empty()),
        })
    }

    /// HTTP 429, or a 2xx answer with code 36009002 ("too many requests") or 36009003 (an internal
    /// error): the same request is asked again after a pause, the cycle goes on.
    fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        if status == 429 {
            return true;
        }
        // Only an error answer is read twice (a successful one starts with `"code":0`, or has
        // data before it): a quick look for the codes first.
        if !body.windows(8).any(|w| w == b"36009002" || w == b"36009003") {
            return false;
        }
        let code = serde_json::from_slice::<Envelope<serde::de::IgnoredAny>>(body).map(|e| e.code).ok();
        matches!(code, Some(TOO_MANY_REQUESTS | INTERNAL_ERROR))
    }

    /// A conversation TikTok Shop refuses with an HTTP 4xx (gone, not visible) does not hold the cycle.
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
                let data: ConversationsData = data_of(body)?;
                let buyers: Vec<(String, String)> = data
                    .conversations
                    .iter()
                    .filter_map(|c| {
                        let buyer = c.participants.iter().find(|p| p.role == "BUYER" && !p.im_user_id.is_empty())?;
                        Some((c.id.clone(), buyer.im_user_id.clone()))
                    })
                    .collect();
                let listed = data.conversations.into_iter().map(|c| {
                    let latest = c.latest_message.map_or(i64::MAX, |m| m.create_time); // unknown: read it
                    (c.id, latest)
                });
                walk.listed(listed, data.next_page_token);
                for (conversation, buyer) in buyers {
                    walk.note_buyer(&conversation, buyer);
                }
            }
            Step::Messages { conversation, .. } => {
                let conversation = conversation.to_owned();
                let data: MessagesData = match data_of(body) {
                    Ok(answer) => answer,
                    // The platform refused this conversation (deleted, blocked): the cycle goes on
                    // without it and keeps its starting cursor, so the next cycle tries it again.
                    Err(err) if err.field.as_deref() == Some("code") => {
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
                for message in data.messages {
                    if !walk.is_new(&conversation, message.create_time, &message.id) {
                        reached_old |= walk.is_old(&conversation, message.create_time);
                        page.ignored += 1;
                        continue;
                    }
                    walk.saw(message.create_time, &message.id);
                    let created = crate::webhook::from_unix(message.create_time, false);
                    let from_seller =
                        message.sender.as_ref().is_some_and(|s| s.role == "SHOP" || s.role == "CUSTOMER_SERVICE");
                    if let (true, true, Some(buyer), Some(replied_at)) =
                        (from_seller, message.is_visible, walk.buyer_of(&conversation), created)
                    {
                        page.replies.push(crate::webhook::SellerReply {
                            account: target.account.to_owned(),
                            buyer_id: buyer.to_owned(),
                            replied_at,
                            message_id: Some(message.id.clone()),
                            in_reply_to: None,
                            responses: None,
                        });
                    }
                    let sender = message.sender.filter(|s| s.role == "BUYER" && !s.im_user_id.is_empty());
                    let text = (message.r#type == "TEXT")
                        .then(|| serde_json::from_str::<TextContent>(&message.content).ok())
                        .flatten()
                        .map(|c| c.content)
                        .filter(|t| !t.trim().is_empty());
                    let (Some(sender), Some(text), Some(created), true) = (sender, text, created, message.is_visible)
                    else {
                        page.ignored += 1;
                        continue;
                    };
                    let mut draft = Draft::message(
                        Channel::TiktokShop,
                        target.account,
                        message.id,
                        conversation.clone(),
                        format!("id:{}", sender.im_user_id),
                        text,
                        created,
                    )
                    .sent_by(&sender.im_user_id);
                    draft.buyer_name = sender.nickname.filter(|n| !n.is_empty());
                    page.inquiries.push(draft.into_inquiry(&context()));
                }
                walk.read(reached_old, data.next_page_token);
            }
        }
        page.next_page = walk.next_token();
        page.cursor = Some(walk.cursor());
        Ok(page)
    }
}

/// The `data` of a TikTok Shop answer, or the error its `code` says.
/// Code of a 2xx answer to too many calls (TikTok Shop's common error codes).
const TOO_MANY_REQUESTS: i64 = 36_009_002;
/// Code of a 2xx answer to an internal error: passing, asked again.
const INTERNAL_ERROR: i64 = 36_009_003;

/// The `data` of an answer. A code that refuses the request (a conversation gone or not
/// visible) is an error with field `code`; a passing one (too many calls, an internal error) has
/// none, so the cycle is given up and asked again instead of going on without what it asked for.
fn data_of<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InputError> {
    let envelope: Envelope<T> = serde_json::from_slice(body).map_err(InputError::from_json)?;
    if matches!(envelope.code, TOO_MANY_REQUESTS | INTERNAL_ERROR) {
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!("TikTok Shop answered code {} (passing; asked again)", envelope.code),
        ));
    }
    if envelope.code != 0 {
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!("TikTok Shop answered code {}", envelope.code),
        )
        .field("code"));
    }
    envelope.data.ok_or_else(|| InputError::new(InputErrorCode::MissingField, "no `data`").field("data"))
}

#[derive(Deserialize)]
struct Envelope<T> {
    code: i64,
    #[serde(default = "Option::default")]
    data: Option<T>,
}

#[derive(Deserialize)]
struct ConversationsData {
    #[serde(default)]
    conversations: Vec<Conversation>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Conversation {
    #[serde(deserialize_with = "json_ids::id")]
    id: String,
    #[serde(default)]
    latest_message: Option<LatestMessage>,
    #[serde(default)]
    participants: Vec<Participant>,
}

#[derive(Deserialize)]
struct Participant {
    #[serde(default)]
    role: String,
    #[serde(default)]
    im_user_id: String,
}

#[derive(Deserialize)]
struct LatestMessage {
    #[serde(deserialize_with = "json_ids::int")]
    create_time: i64,
}

#[derive(Deserialize)]
struct MessagesData {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(deserialize_with = "json_ids::id")]
    id: String,
    #[serde(default)]
    r#type: String,
    #[serde(default)]
    content: String,
    #[serde(deserialize_with = "json_ids::int")]
    create_time: i64,
    #[serde(default = "visible")]
    is_visible: bool,
    #[serde(default)]
    sender: Option<Sender>,
}

fn visible() -> bool {
    true
}

#[derive(Deserialize)]
struct Sender {
    #[serde(default)]
    role: String,
    #[serde(default)]
    im_user_id: String,
    #[serde(default)]
    nickname: Option<String>,
}

#[derive(Deserialize)]
struct TextContent {
    content: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_error_is_asked_again_and_only_a_refusal_steps_over_a_conversation() {
        use crate::poll::PollCredentials;
        let now = time::macros::datetime!(2026-12-03 08:00:00 UTC);
        let target = PollTarget {
            account: "ROW_x",
            credentials: PollCredentials { access_token: "t", app_key: Some("k"), app_secret: Some("s") },
            now,
            wants_answers: false,
        };
        let cursor = super::super::watermark::Watermark::starting(now.unix_timestamp() - 3_600).to_cursor();
        let mut context = || NormalizeContext { received_at: now, trace_id: "t" };
        let at = now.unix_timestamp() - 60;
        let list = serde_json::json!({ "code": 0, "data": { "conversations": [
            { "id": "c-1", "participants": [{ "role": "BUYER", "im_user_id": "b-1" }], "latest_message": { "id": "m", "create_time": at } },
            { "id": "c-2", "participants": [{ "role": "BUYER", "im_user_id": "b-2" }], "latest_message": { "id": "n", "create_time": at } }]}});
        let at_list = PollPosition { cursor: Some(&cursor), page: None };
        let listed = TiktokCustomerService.parse(list.to_string().as_bytes(), &target, &at_list, &mut context).unwrap();
        let token = listed.next_page.expect("two conversations to read");
        let at_first = PollPosition { cursor: Some(&cursor), page: Some(&token) };
        let answer = |code: i64| serde_json::json!({ "code": code, "message": "x" }).to_string().into_bytes();
        // Too many calls or an internal error: the runner pauses (throttled) and asks the same again.
        assert!(TiktokCustomerService.is_throttled(200, &answer(TOO_MANY_REQUESTS)));
        assert!(TiktokCustomerService.is_throttled(200, &answer(INTERNAL_ERROR)));
        assert!(!TiktokCustomerService.is_throttled(200, &answer(0)));
        assert!(!TiktokCustomerService.is_throttled(200, &answer(36_009_404)));
        // An internal error: no refusal of the conversation, the cycle is asked again.
        let passing = TiktokCustomerService.parse(&answer(INTERNAL_ERROR), &target, &at_first, &mut context);
        assert!(passing.is_err_and(|err| err.field.is_none()));
        // A refusal of the conversation (here: not found) steps over it, counted.
        let page = TiktokCustomerService.parse(&answer(36_009_404), &target, &at_first, &mut context).unwrap();
        assert!(page.refused.is_some());
        let kept = super::super::watermark::Watermark::parse(page.cursor.as_deref()).unwrap().unwrap();
        assert_eq!(kept.refused.get("c-1"), Some(&1));
    }

    #[test]
    fn the_signature_matches_an_independently_computed_vector() {
        // python3: hmac.new(b"sec", b"sec/customer_service/202309/conversationsapp_keyk1page_size20shop_cipherROW_xtimestamp1764748800sec", sha256).hexdigest()
        let query = [
            ("timestamp", "1764748800".to_owned()),
            ("app_key", "k1".to_owned()),
            ("shop_cipher", "ROW_x".to_owned()),
            ("page_size", "20".to_owned()),
            ("access_token", "never-signed".to_owned()),
        ];
        assert_eq!(
            sign("sec", CONVERSATIONS_PATH, &query, ""),
            "01e9c6dc8dbefa01bf8ba1c08656e5ede4cfe86c6b888aecabdf2334256b9979"
        );
    }
}
