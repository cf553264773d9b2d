//! TikTok Shop (Partner Center Open API) webhooks: customer-service message 14 ("new message").
//!
//! Signature (Partner Center webhook overview): `Authorization: <lowercase hex HMAC-SHA256(app
//! secret, app key ‖ raw body)>`, no prefix, no timestamp; replays are dropped by the pipeline's
//! dedup (message id). Buyer messages are type 14 with `data.sender.role == "BUYER"`; `data.content`
//! is itself a JSON string (`{"content": "text"}` for TEXT). TikTok expects 200 within 3 s.

use serde::Deserialize;
use time::OffsetDateTime;

use super::{from_unix, verify_hmac, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

const SIGNATURE: &str = "authorization";
/// Topic id of "new message".
const NEW_MESSAGE: i64 = 14;

/// The TikTok Shop connector.
pub struct TiktokShop;

impl Webhook for TiktokShop {
    fn name(&self) -> &'static str {
        "tiktok_shop"
    }

    fn channel(&self) -> Channel {
        Channel::TiktokShop
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        _now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        let header = request.header(SIGNATURE).ok_or(VerifyError::MissingSignature(SIGNATURE))?;
        let signature = hex::decode(header.trim()).map_err(|_| VerifyError::MalformedSignature(SIGNATURE))?;
        let app_key = secrets.app_key.unwrap_or_default();
        verify_hmac(secrets.secret.as_bytes(), &[app_key.as_bytes(), request.body], &signature)
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        _account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let push: Push = serde_json::from_slice(body).map_err(InputError::from_json)?;
        // One app's webhook may serve several shops: the inquiry is filed under the shop the
        // push names, which the gateway checks is the endpoint's.
        let account = push.shop_id.as_str();
        if account.is_empty() {
            return Err(InputError::new(InputErrorCode::MissingField, "missing field `shop_id`").field("shop_id"));
        }
        let mut parsed = Parsed::default();
        let message = match (push.kind, push.data) {
            (NEW_MESSAGE, Some(data)) => serde_json::from_value::<Message>(data).map_err(InputError::from_json)?,
            _ => {
                parsed.ignored += 1; // orders, returns, new conversation, ...
                return Ok(parsed);
            }
        };
        if message.sender.role != "BUYER" {
            parsed.ignored += 1; // the shop's own messages, agents, system and robot lines
            return Ok(parsed);
        }
        let content: serde_json::Value = serde_json::from_str(&message.content).unwrap_or_default();
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert("message_type".to_owned(), message.kind.clone().into());
        attributes.insert("notification_id".to_owned(), push.tts_notification_id.into());
        let (body, order_id, product_ids) = match message.kind.as_str() {
            "TEXT" => (content["content"].as_str().unwrap_or_default().to_owned(), None, Vec::new()),
            "ORDER_CARD" => ("[order card]".to_owned(), content["order_id"].as_str().map(str::to_owned), Vec::new()),
            "PRODUCT_CARD" => (
                "[product card]".to_owned(),
                None,
                content["product_id"].as_str().map(str::to_owned).into_iter().collect(),
            ),
            other => (format!("[{}]", other.to_ascii_lowercase()), None, Vec::new()),
        };
        if body.trim().is_empty() {
            parsed.ignored += 1;
            return Ok(parsed);
        }
        let occurred_at = from_unix(message.create_time, false).ok_or_else(|| {
            InputError::new(InputErrorCode::InvalidValue, "create_time is not a valid time").field("create_time")
        })?;
        let buyer = format!("id:{}", message.sender.im_user_id);
        let draft = Draft {
            platform_user_id: Some(message.sender.im_user_id.clone()),
            order_id,
            product_ids,
            attributes,
            ..Draft::message(
                Channel::TiktokShop,
                account,
                message.message_id,
                message.conversation_id,
                buyer,
                body,
                occurred_at,
            )
        };
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(parsed)
    }
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "type")]
    kind: i64,
    #[serde(default)]
    tts_notification_id: String,
    shop_id: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Message {
    message_id: String,
    conversation_id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: String,
    create_time: i64,
    sender: Sender,
}

#[derive(Deserialize)]
struct Sender {
    im_user_id: String,
    role: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of TikTok Shop's webhook overview: app key `abcdef`, app secret `123`.
    #[test]
    fn signature_matches_the_documented_test_vector() {
        let body = br#"{"type":1,"tts_notification_id":"7380066284010030890","shop_id":"7495540735365777507","timestamp":1718305585,"data":{"is_on_hold_order":true,"order_id":"576653688135258178","order_status":"UNPAID","update_time":1718305585}}"#;
        let headers = vec![(
            "authorization".to_owned(),
            "5dec0f11ec2f6783b8deee53c9ffbf8d024302f7c7e7fa55a35d17629031ac05".to_owned(),
        )];
        let request = WebhookRequest { headers, query: "", body };
        let secrets = WebhookSecrets { secret: "123", app_key: Some("abcdef"), ..Default::default() };
        assert_eq!(TiktokShop.verify(&request, &secrets, OffsetDateTime::UNIX_EPOCH), Ok(()));
        let other_key = WebhookSecrets { app_key: Some("abcdeg"), ..secrets };
        assert_eq!(TiktokShop.verify(&request, &other_key, OffsetDateTime::UNIX_EPOCH), Err(VerifyError::BadSignature));
    }
}
