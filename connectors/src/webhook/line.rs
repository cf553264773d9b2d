//! LINE Messaging API.
//!
//! Signature: `x-line-signature: <base64 HMAC-SHA256(channel secret, raw body)>`. Text messages
//! become inquiries; stickers, images and other media become a placeholder body; follow, unfollow,
//! postback and other events are acknowledged and ignored. LINE redelivers with the same
//! `webhookEventId` and message id; the pipeline deduplicates by message id.

use serde::Deserialize;
use time::OffsetDateTime;

use super::{from_unix, verify_base64_body_hmac, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::InputError;
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

const SIGNATURE: &str = "x-line-signature";

/// The LINE connector.
pub struct Line;

impl Webhook for Line {
    fn name(&self) -> &'static str {
        "line"
    }

    fn channel(&self) -> Channel {
        Channel::Line
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        _now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        verify_base64_body_hmac(request, secrets, SIGNATURE)
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let payload: Payload = serde_json::from_slice(body).map_err(InputError::from_json)?;
        let mut parsed = Parsed::default();
        for event in payload.events {
            let Ok(event) = serde_json::from_value::<Event>(event) else {
                parsed.ignored += 1; // malformed: skipped, not the whole delivery
                continue;
            };
            let (Some(message), "message") = (event.message, event.kind.as_str()) else {
                parsed.ignored += 1;
                continue;
            };
            let source = event.source.unwrap_or_default();
            let Some(user) = source.user_id else {
                parsed.ignored += 1; // no buyer to answer
                continue;
            };
            let conversation_id = source.group_id.or(source.room_id).unwrap_or_else(|| user.clone());
            let body = match message.text.filter(|t| !t.trim().is_empty()) {
                Some(text) => text,
                None => format!("[{}]", message.kind),
            };
            // A malformed event is skipped, not allowed to hold back the rest of the delivery.
            let Some(occurred_at) = from_unix(event.timestamp, true) else {
                parsed.ignored += 1;
                continue;
            };
            let mut attributes = std::collections::BTreeMap::new();
            if let Some(id) = event.webhook_event_id {
                attributes.insert("webhook_event_id".to_owned(), id.into());
            }
            let draft = Draft {
                attributes,
                ..Draft::message(
                    Channel::Line,
                    account,
                    message.id,
                    conversation_id,
                    format!("id:{user}"),
                    body,
                    occurred_at,
                )
                .sent_by(&user)
            };
            parsed.inquiries.push(draft.into_inquiry(&context()));
        }
        Ok(parsed)
    }
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    events: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    timestamp: i64,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    webhook_event_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Source {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    room_id: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}
