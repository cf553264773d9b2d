//! Shopee Open Platform push mechanism: `webchat_push` (push code 10), buyer chat messages.
//!
//! Signature (Shopee's push SDKs; the console's Push Mechanism page): `Authorization: <lowercase hex
//! HMAC-SHA256(push partner key, callback URL ‖ "|" ‖ raw body)>`, where the callback URL is the
//! endpoint's URL exactly as registered (`endpoint_url`). No timestamp is signed; Shopee resends a
//! push (after 1, 2 and 3 s) with the same `message_id`, which the pipeline deduplicates. A partner
//! app has one push URL for all its shops: each inquiry takes the envelope's `shop_id` as its
//! account, which the gateway checks is the URL's `{account}` or one of the endpoint's `accounts`.
//! The console's "Verify" button posts an
//! empty body: acknowledged. Only buyer messages become inquiries: `data.type == "message"` from a
//! buyer (business type 0, not sent by the shop, a sub-account or an auto-reply); notifications
//! (`mark_as_replied`…) and the seller's own messages are ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::OffsetDateTime;

use super::{from_unix, verify_hmac, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

const SIGNATURE: &str = "authorization";
/// Push code of `webchat_push`.
const WEBCHAT_PUSH: i64 = 10;

/// The Shopee connector.
pub struct Shopee;

impl Webhook for Shopee {
    fn name(&self) -> &'static str {
        "shopee"
    }

    fn channel(&self) -> Channel {
        Channel::Shopee
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        _now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        let header = request.header(SIGNATURE).ok_or(VerifyError::MissingSignature(SIGNATURE))?;
        let signature = hex::decode(header.trim()).map_err(|_| VerifyError::MalformedSignature(SIGNATURE))?;
        let url = secrets.endpoint_url.ok_or(VerifyError::NotConfigured("endpoint_url"))?;
        verify_hmac(secrets.secret.as_bytes(), &[url.as_bytes(), b"|", request.body], &signature)
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        _account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let mut parsed = Parsed::default();
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(parsed); // the console's "Verify" request
        }
        let push: Push = serde_json::from_slice(body).map_err(InputError::from_json)?;
        let Some(account) = push.shop_id.as_deref().filter(|shop| !shop.is_empty()) else {
            return Err(InputError::new(InputErrorCode::MissingField, "missing field `shop_id`").field("shop_id"));
        };
        let data = match (push.code, push.data) {
            (WEBCHAT_PUSH, Some(data)) if data.kind == "message" => data,
            _ => {
                parsed.ignored += 1; // other push codes, chat notifications
                return Ok(parsed);
            }
        };
        let message: Message = serde_json::from_value(data.content).map_err(InputError::from_json)?;
        if !message.from_buyer(account) {
            parsed.ignored += 1; // the shop's own messages, sub-accounts, auto-replies, affiliates
            return Ok(parsed);
        }
        let (Some(message_id), Some(from_id)) = (message.message_id.as_deref(), message.from_id.as_deref()) else {
            return Err(InputError::new(InputErrorCode::MissingField, "missing field `message_id` or `from_id`")
                .field("data.content"));
        };
        let occurred_at = from_unix(message.created_timestamp, false).ok_or_else(|| {
            InputError::new(InputErrorCode::InvalidValue, "created_timestamp is not a valid time")
                .field("data.content.created_timestamp")
        })?;
        let source = &message.source_content;
        let order_id = source.get("order_sn").and_then(id_string);
        let product_ids = source.get("item_id").and_then(id_string).into_iter().collect();
        let text = message.content.get("text").and_then(serde_json::Value::as_str).unwrap_or_default().trim();
        let body = if message.message_type == "text" && !text.is_empty() {
            text.to_owned()
        } else {
            format!("[{}]", message.message_type)
        };
        let mut attributes = BTreeMap::new();
        attributes.insert("message_type".to_owned(), message.message_type.clone().into());
        if let Some(region) = &data.region {
            attributes.insert("region".to_owned(), region.clone().into());
        }
        let draft = Draft {
            buyer_name: message.from_user_name.filter(|n| !n.is_empty()),
            order_id,
            product_ids,
            attributes,
            ..Draft::message(
                Channel::Shopee,
                account,
                message_id.to_owned(),
                message.conversation_id.unwrap_or_default(),
                format!("id:{from_id}"),
                body,
                occurred_at,
            )
        }
        .sent_by(from_id);
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(parsed)
    }
}

/// Shopee's ids arrive as JSON numbers (int64) or strings.
fn id_string(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn de_id<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(id_string(&serde_json::Value::deserialize(de)?))
}

#[derive(Deserialize)]
struct Push {
    code: i64,
    #[serde(default, deserialize_with = "de_id")]
    shop_id: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default, deserialize_with = "de_id")]
    message_id: Option<String>,
    #[serde(default, deserialize_with = "de_id")]
    conversation_id: Option<String>,
    #[serde(default, deserialize_with = "de_id")]
    from_id: Option<String>,
    #[serde(default)]
    from_user_name: Option<String>,
    #[serde(default)]
    message_type: String,
    #[serde(default)]
    content: serde_json::Map<String, serde_json::Value>,
    created_timestamp: i64,
    #[serde(default, deserialize_with = "de_id")]
    from_shop_id: Option<String>,
    #[serde(default, deserialize_with = "de_id")]
    sub_account_id: Option<String>,
    #[serde(default)]
    business_type: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    source_content: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    /// Shopee marks no direction: a buyer message is business type 0 (buyer and seller), not from
    /// the receiving shop (`from_shop_id`, since 2025-04), not from a seller sub-account, and not an
    /// automatic reply.
    fn from_buyer(&self, shop_id: &str) -> bool {
        let zero = |id: &Option<String>| id.as_deref().is_none_or(|id| id == "0");
        self.business_type.unwrap_or(0) == 0
            && (zero(&self.from_shop_id) || self.from_shop_id.as_deref() != Some(shop_id))
            && zero(&self.sub_account_id)
            && !matches!(self.status.as_deref(), Some("auto_reply" | "offwork_autoreply"))
    }
}
