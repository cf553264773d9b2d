//! Replies to buyers through the marketplaces' own chat APIs (the gateway's auto-acknowledgements
//! on Shopee, TikTok Shop and eBay): the request for one text message, signed the way the
//! platform signs, and what its answer means. Pure, like the pollers: the gateway makes the call,
//! paces it and records the outcome. Outcomes carry status and error codes, never an answer's
//! text.
//!
//! - Shopee Open Platform v2 `POST /api/v2/sellerchat/send_message` (shop-level: `partner_id`,
//!   `timestamp`, `access_token`, `shop_id`, `sign` in the query; body `{"to_id", "message_type":
//!   "text", "content": {"text"}}`; answers `{"request_id", "error", "message", "response":
//!   {"message_id", ...}}`, an error as a non-empty `error`). Followed: the seller chat API
//!   reference as Shopee's SDKs carry it; Shopee publishes no rate for this call.
//! - TikTok Shop Partner API 202309 `POST /customer_service/202309/conversations/{id}/messages`
//!   (`app_key`, `timestamp`, `shop_cipher`, `sign` in the query, `x-tts-access-token` header; body
//!   `{"type": "TEXT", "content": "{\"content\": \"...\"}"}`, the content a JSON string; answers
//!   `{"code": 0, "data": {"message_id"}}`; code 36009002 is "too many requests", 105002 an
//!   expired token). Followed: the "Send Message" reference and the common error list.
//! - eBay Trading API `AddMemberMessageRTQ` (answers an "Ask Seller a Question" message: `ItemID`,
//!   `MemberMessage` with `Body` (no HTML), `ParentMessageID`, `RecipientID`; answers `Ack`).
//!   eBay's call page: no more than 75 calls per seller in any 60 seconds, or the application is
//!   blocked for 100 seconds. Error 931 is an invalid token, 21917053 an expired one, 20957 the
//!   member-messaging volume limits.

use time::OffsetDateTime;

use crate::poll::ebay_member_messages::{
    ErrorItem, COMPATIBILITY_LEVEL as EBAY_COMPATIBILITY_LEVEL, SITE_ID as EBAY_SITE_ID,
};
use crate::poll::{shopee_chat, tiktok_customer_service, PollMethod, PollRequest};

/// One text reply to the buyer of an inquiry.
#[derive(Clone, Copy)]
pub struct ChatReply<'a> {
    /// The seller account the inquiry came to (Shopee shop id, TikTok Shop shop cipher, eBay
    /// seller).
    pub account: &'a str,
    /// The account's access token.
    pub access_token: &'a str,
    /// The app's id (Shopee partner id, TikTok Shop app key; unused by eBay).
    pub app_key: &'a str,
    /// The app's secret (Shopee partner key, TikTok Shop app secret; unused by eBay).
    pub app_secret: &'a str,
    /// The buyer's platform user id.
    pub buyer_id: &'a str,
    /// The platform's conversation id (TikTok Shop).
    pub conversation_id: &'a str,
    /// The buyer's message answered (eBay's parent message).
    pub message_id: &'a str,
    /// The listing the buyer asked about (eBay).
    pub item_id: Option<&'a str>,
    /// The text.
    pub text: &'a str,
    /// When the request is made (signed timestamps).
    pub now: OffsetDateTime,
}

impl std::fmt::Debug for ChatReply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatReply").field("account", &self.account).finish_non_exhaustive()
    }
}

/// What a platform's answer to a reply means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Sent; the platform's id for it.
    Sent(String),
    /// Refused for now (throttled, a limit reached): try again later.
    Throttled(String),
    /// The access token was refused (expired, revoked): try again once it is refreshed.
    TokenRefused(String),
    /// Will not pass (a bad request, a buyer who cannot be messaged).
    Failed(String),
    /// No clear answer (a timeout, a server error): it may have been sent.
    Unknown(String),
}

/// The Shopee path, signed as part of the request.
pub const SHOPEE_SEND_PATH: &str = "/api/v2/sellerchat/send_message";

/// Shopee `send_message` with a text to the buyer (`to_id` is Shopee's numeric user id).
pub fn shopee_send_message(reply: &ChatReply<'_>) -> Result<PollRequest, ReplyOutcome> {
    let to_id: u64 = reply
        .buyer_id
        .parse()
        .map_err(|_| ReplyOutcome::Failed("the buyer's Shopee user id is not a number".to_owned()))?;
    let timestamp = reply.now.unix_timestamp();
    let sign = shopee_chat::sign(
        reply.app_secret,
        reply.app_key,
        SHOPEE_SEND_PATH,
        timestamp,
        reply.access_token,
        reply.account,
    );
    let body = serde_json::json!({ "to_id": to_id, "message_type": "text", "content": { "text": reply.text } });
    Ok(PollRequest {
        method: PollMethod::Post,
        path_and_query: format!(
            "{SHOPEE_SEND_PATH}?partner_id={}&timestamp={timestamp}&access_token={}&shop_id={}&sign={sign}",
            crate::poll::encode(reply.app_key),
            crate::poll::encode(reply.access_token),
            crate::poll::encode(reply.account),
        ),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: body.to_string(),
    })
}

/// What Shopee's answer to `send_message` means.
pub fn shopee_outcome(status: u16, body: &[u8]) -> ReplyOutcome {
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = answer["error"].as_str().unwrap_or_default();
    match (status, error) {
        (200, "") => match &answer["response"]["message_id"] {
            serde_json::Value::String(id) => ReplyOutcome::Sent(id.clone()),
            serde_json::Value::Number(id) => ReplyOutcome::Sent(id.to_string()),
            _ => ReplyOutcome::Unknown("Shopee answered without a message id".to_owned()),
        },
        (429, _) => ReplyOutcome::Throttled("shopee 429".to_owned()),
        // Shopee spells it `invalid_acceess_token`; both spellings are seen.
        (_, "error_auth" | "invalid_access_token" | "invalid_acceess_token") => {
            ReplyOutcome::TokenRefused(format!("shopee {error}"))
        }
        (_, "error_busy") => ReplyOutcome::Throttled("shopee error_busy".to_owned()),
        // A server error may come after the message was taken: not sent again.
        (_, "error_server" | "error_inner") => ReplyOutcome::Unknown(format!("shopee {error}")),
        (500.., _) | (0..=199, _) => ReplyOutcome::Unknown(format!("shopee {status} {error}")),
        _ => ReplyOutcome::Failed(format!("shopee {status} {error}")),
    }
}

/// TikTok Shop "Send Message" of a text into the buyer's conversation.
pub fn tiktok_send_message(reply: &ChatReply<'_>) -> Result<PollRequest, ReplyOutcome> {
    if reply.conversation_id.is_empty() {
        return Err(ReplyOutcome::Failed("the inquiry names no TikTok Shop conversation".to_owned()));
    }
    let path = format!(
        "{}/{}/messages",
        tiktok_customer_service::CONVERSATIONS_PATH,
        crate::poll::encode(reply.conversation_id)
    );
    let content = serde_json::json!({ "content": reply.text }).to_string();
    let body = serde_json::json!({ "type": "TEXT", "content": content }).to_string();
    let mut query: Vec<(&str, String)> = vec![
        ("app_key", reply.app_key.to_owned()),
        ("timestamp", reply.now.unix_timestamp().to_string()),
        ("shop_cipher", reply.account.to_owned()),
    ];
    let sign = tiktok_customer_service::sign(reply.app_secret, &path, &query, &body);
    query.push(("sign", sign));
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", crate::poll::encode(v))).collect();
    Ok(PollRequest {
        method: PollMethod::Post,
        path_and_query: format!("{path}?{}", query.join("&")),
        headers: vec![
            ("x-tts-access-token".to_owned(), reply.access_token.to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ],
        body,
    })
}

/// What TikTok Shop's answer to "Send Message" means.
pub fn tiktok_outcome(status: u16, body: &[u8]) -> ReplyOutcome {
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = answer["message"].as_str().unwrap_or_default().to_owned();
    match (status, answer["code"].as_i64()) {
        (200, Some(0)) => match &answer["data"]["message_id"] {
            serde_json::Value::String(id) => ReplyOutcome::Sent(id.clone()),
            serde_json::Value::Number(id) => ReplyOutcome::Sent(id.to_string()),
            _ => ReplyOutcome::Unknown("TikTok Shop answered without a message id".to_owned()),
        },
        (429, _) | (_, Some(36_009_002)) => ReplyOutcome::Throttled("tiktok 36009002".to_owned()),
        (_, Some(105_002)) => ReplyOutcome::TokenRefused("tiktok 105002".to_owned()),
        // 36009004 covers many refusals; the token's among them names its header.
        (_, Some(36_009_004)) if message.contains("x-tts-access-token") => {
            ReplyOutcome::TokenRefused("tiktok 36009004 (access token)".to_owned())
        }
        (_, Some(36_009_003)) => ReplyOutcome::Unknown("tiktok 36009003".to_owned()),
        (500.., _) | (0..=199, _) => ReplyOutcome::Unknown(format!("tiktok {status}")),
        (_, code) => ReplyOutcome::Failed(format!("tiktok {status} {}", code.unwrap_or_default())),
    }
}

/// eBay `AddMemberMessageRTQ`: the answer to a buyer's question about a listing.
pub fn ebay_answer_question(reply: &ChatReply<'_>) -> Result<PollRequest, ReplyOutcome> {
    let Some(item) = reply.item_id.filter(|i| !i.is_empty()) else {
        return Err(ReplyOutcome::Failed("the inquiry names no eBay listing to answer on".to_owned()));
    };
    let escape = |text: &str| quick_xml::escape::escape(text).into_owned();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <AddMemberMessageRTQRequest xmlns=\"urn:ebay:apis:eBLBaseComponents\">\n\
         <ItemID>{}</ItemID>\n<MemberMessage><Body>{}</Body><ParentMessageID>{}</ParentMessageID>\
         <RecipientID>{}</RecipientID><DisplayToPublic>false</DisplayToPublic></MemberMessage>\n\
         </AddMemberMessageRTQRequest>\n",
        escape(item),
        escape(reply.text),
        escape(reply.message_id),
        escape(reply.buyer_id),
    );
    let header = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    Ok(PollRequest {
        method: PollMethod::Post,
        path_and_query: "/ws/api.dll".to_owned(),
        headers: vec![
            header("x-ebay-api-call-name", "AddMemberMessageRTQ"),
            header("x-ebay-api-siteid", EBAY_SITE_ID),
            header("x-ebay-api-compatibility-level", EBAY_COMPATIBILITY_LEVEL),
            header("x-ebay-api-iaf-token", reply.access_token),
            header("content-type", "text/xml"),
        ],
        body,
    })
}

/// What eBay's answer to `AddMemberMessageRTQ` means.
pub fn ebay_outcome(status: u16, body: &[u8]) -> ReplyOutcome {
    /// The call's answer: `Ack`, `Errors`, and no call-specific fields.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        ack: String,
        #[serde(default)]
        timestamp: Option<String>,
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    let answer = std::str::from_utf8(body).ok().and_then(|text| quick_xml::de::from_str::<Answer>(text).ok());
    match (status, answer) {
        (200, Some(answer)) if matches!(answer.ack.as_str(), "Success" | "Warning") => {
            ReplyOutcome::Sent(format!("ebay {}", answer.timestamp.unwrap_or_default()))
        }
        (200, Some(answer)) => {
            let code = answer.errors.into_iter().find_map(|e| e.error_code).unwrap_or_default();
            match code.as_str() {
                "931" | "21917053" => ReplyOutcome::TokenRefused(format!("ebay {code}")),
                "518" | "20957" | "21919144" => ReplyOutcome::Throttled(format!("ebay {code}")),
                _ => ReplyOutcome::Failed(format!("ebay {} {code}", answer.ack)),
            }
        }
        (429, _) => ReplyOutcome::Throttled("ebay 429".to_owned()),
        _ => ReplyOutcome::Unknown(format!("ebay {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn reply() -> ChatReply<'static> {
        ChatReply {
            account: "1001",
            access_token: "token",
            app_key: "100001",
            app_secret: "secret",
            buyer_id: "6000000003",
            conversation_id: "3000000003",
            message_id: "m_1001_3_0",
            item_id: Some("226543219876"),
            text: "Thanks <3 & see you",
            now: datetime!(2026-12-03 08:00:00 UTC),
        }
    }

    #[test]
    fn shopee_requests_are_signed_over_the_send_path_and_name_a_numeric_buyer() {
        let request = shopee_send_message(&reply()).unwrap();
        let sign = shopee_chat::sign("secret", "100001", SHOPEE_SEND_PATH, 1_796_284_800, "token", "1001");
        assert!(request.path_and_query.ends_with(&format!("&sign={sign}")), "{}", request.path_and_query);
        let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["to_id"], 6_000_000_003u64);
        assert_eq!(body["content"]["text"], "Thanks <3 & see you");
        let not_numeric = ChatReply { buyer_id: "alice", ..reply() };
        assert!(matches!(shopee_send_message(&not_numeric), Err(ReplyOutcome::Failed(_))));
        assert_eq!(
            shopee_outcome(200, br#"{"request_id":"r","error":"","message":"","response":{"message_id":"2047"}}"#),
            ReplyOutcome::Sent("2047".into())
        );
        assert!(matches!(shopee_outcome(200, br#"{"error":"invalid_acceess_token"}"#), ReplyOutcome::TokenRefused(_)));
        assert!(matches!(shopee_outcome(429, b"{}"), ReplyOutcome::Throttled(_)));
        assert!(matches!(shopee_outcome(599, b""), ReplyOutcome::Unknown(_)));
        assert!(matches!(
            shopee_outcome(200, br#"{"error":"error_param","message":"to_id"}"#),
            ReplyOutcome::Failed(_)
        ));
    }

    #[test]
    fn tiktok_requests_carry_the_content_as_a_json_string_and_sign_the_body() {
        let request = tiktok_send_message(&reply()).unwrap();
        let path = "/customer_service/202309/conversations/3000000003/messages";
        assert!(request.path_and_query.starts_with(path));
        let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["type"], "TEXT");
        let content: serde_json::Value = serde_json::from_str(body["content"].as_str().unwrap()).unwrap();
        assert_eq!(content["content"], "Thanks <3 & see you");
        let query = [
            ("app_key", "100001".to_owned()),
            ("timestamp", "1796284800".to_owned()),
            ("shop_cipher", "1001".to_owned()),
        ];
        let sign = tiktok_customer_service::sign("secret", path, &query, &request.body);
        assert!(request.path_and_query.ends_with(&format!("sign={sign}")));
        assert_eq!(
            tiktok_outcome(200, br#"{"code":0,"data":{"message_id":"7494"}}"#),
            ReplyOutcome::Sent("7494".into())
        );
        assert!(matches!(tiktok_outcome(429, br#"{"code":36009002}"#), ReplyOutcome::Throttled(_)));
        assert!(matches!(
            tiktok_outcome(200, br#"{"code":105002,"message":"Expired credentials"}"#),
            ReplyOutcome::TokenRefused(_)
        ));
        let no_conversation = ChatReply { conversation_id: "", ..reply() };
        assert!(tiktok_send_message(&no_conversation).is_err());
    }

    #[test]
    fn ebay_answers_name_the_listing_parent_and_buyer_and_escape_the_text() {
        let request = ebay_answer_question(&reply()).unwrap();
        assert!(request.body.contains("<ItemID>226543219876</ItemID>"));
        assert!(request.body.contains("<Body>Thanks &lt;3 &amp; see you</Body>"));
        assert!(request
            .body
            .contains("<ParentMessageID>m_1001_3_0</ParentMessageID><RecipientID>6000000003</RecipientID>"));
        assert!(ebay_answer_question(&ChatReply { item_id: None, ..reply() }).is_err());
        let ok =
            b"<AddMemberMessageRTQResponse><Timestamp>t</Timestamp><Ack>Success</Ack></AddMemberMessageRTQResponse>";
        assert!(matches!(ebay_outcome(200, ok), ReplyOutcome::Sent(_)));
        let limit = b"<AddMemberMessageRTQResponse><Ack>Failure</Ack><Errors><ShortMessage>x</ShortMessage><ErrorCode>20957</ErrorCode></Errors></AddMemberMessageRTQResponse>";
        assert!(matches!(ebay_outcome(200, limit), ReplyOutcome::Throttled(_)));
        let token = b"<R><Ack>Failure</Ack><Errors><ErrorCode>931</ErrorCode></Errors></R>";
        assert!(matches!(ebay_outcome(200, token), ReplyOutcome::TokenRefused(_)));
    }
}
