//! Meta platforms: WhatsApp Business (Cloud API), Facebook Messenger and Instagram messaging.
//!
//! Signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`.
//! Handshake: `GET ?hub.mode=subscribe&hub.verify_token=<token>&hub.challenge=<c>` is answered
//! with `<c>` when the token matches. Meta retries failed deliveries, so the same message id can
//! arrive more than once: the pipeline deduplicates by (channel, account, message id).

use serde::Deserialize;
use time::OffsetDateTime;

use super::{
    from_unix, tokens_equal, verify_hmac, Handshake, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets,
};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

const SIGNATURE: &str = "x-hub-signature-256";

/// WhatsApp Business Cloud API.
pub const WHATSAPP: MetaWebhook =
    MetaWebhook { name: "whatsapp", channel: Channel::Whatsapp, object: "whatsapp_business_account" };
/// Facebook Messenger (Pages).
pub const MESSENGER: MetaWebhook = MetaWebhook { name: "messenger", channel: Channel::Messenger, object: "page" };
/// Instagram messaging.
pub const INSTAGRAM: MetaWebhook = MetaWebhook { name: "instagram", channel: Channel::Instagram, object: "instagram" };

/// One of Meta's webhook products; they share signing and handshake.
pub struct MetaWebhook {
    name: &'static str,
    channel: Channel,
    /// The `object` field of its payloads.
    object: &'static str,
}

impl Webhook for MetaWebhook {
    fn name(&self) -> &'static str {
        self.name
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        _now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        let header = request.header(SIGNATURE).ok_or(VerifyError::MissingSignature(SIGNATURE))?;
        let hex_signature = header.strip_prefix("sha256=").ok_or(VerifyError::MalformedSignature(SIGNATURE))?;
        let signature = hex::decode(hex_signature).map_err(|_| VerifyError::MalformedSignature(SIGNATURE))?;
        verify_hmac(secrets.secret.as_bytes(), &[request.body], &signature)
    }

    fn has_handshake(&self) -> bool {
        true
    }

    fn handshake(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
    ) -> Option<Result<Handshake, VerifyError>> {
        let mode = request.query_param("hub.mode")?;
        let token = request.query_param("hub.verify_token").unwrap_or_default();
        let challenge = request.query_param("hub.challenge").unwrap_or_default();
        let expected = secrets.verify_token.unwrap_or_default();
        Some(if mode == "subscribe" && !expected.is_empty() && tokens_equal(&token, expected) {
            Ok(Handshake::text(challenge))
        } else {
            Err(VerifyError::BadToken)
        })
    }

    fn any_account_by_default(&self) -> bool {
        true
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let payload: Payload = serde_json::from_slice(body).map_err(InputError::from_json)?;
        if payload.object != self.object {
            return Err(InputError::new(InputErrorCode::InvalidValue, format!("object is not `{}`", self.object))
                .field("object"));
        }
        let mut parsed = Parsed::default();
        // One app's webhook carries every page and number of the app: the URL's account selects
        // the secret, and each inquiry takes the account its own entry names.
        for entry in payload.entry {
            if self.channel == Channel::Whatsapp {
                for change in entry.changes {
                    let number = change.value.metadata.as_ref().map(|m| m.phone_number_id.clone());
                    whatsapp_change(change, number.as_deref().unwrap_or(account), &mut parsed, context)?;
                }
            } else {
                let page = entry.id.as_deref().unwrap_or(account);
                // Each event is decoded on its own: a malformed one is skipped, not the delivery.
                for event in entry.messaging {
                    let Ok(event) = serde_json::from_value::<MessagingEvent>(event) else {
                        parsed.ignored += 1;
                        continue;
                    };
                    self.messaging_event(event, page, &mut parsed, context)?;
                }
            }
        }
        Ok(parsed)
    }
}

impl MetaWebhook {
    /// Messenger / Instagram: one `messaging` event.
    fn messaging_event<'c>(
        &self,
        event: MessagingEvent,
        account: &str,
        parsed: &mut Parsed,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<(), InputError> {
        let Some(message) = event.message else {
            parsed.ignored += 1; // deliveries, reads, postbacks
            return Ok(());
        };
        if message.is_echo {
            // The page's own message to the buyer (`recipient`): sent from the inbox, the
            // Business Suite or another app, it answers the buyer; the gateway's own
            // acknowledgements carry AUTO_ACK_METADATA and do not.
            parsed.ignored += 1;
            let ours = message.metadata.as_deref() == Some(super::AUTO_ACK_METADATA);
            if let (false, Some(buyer), Some(replied_at)) = (ours, event.recipient, from_unix(event.timestamp, true)) {
                parsed.replies.push(super::SellerReply {
                    account: account.to_owned(),
                    buyer_id: buyer.id,
                    replied_at,
                    message_id: Some(message.mid.clone()).filter(|mid| !mid.is_empty()),
                    in_reply_to: None,
                    responses: None,
                });
            }
            return Ok(());
        }
        let body = match message.text.filter(|t| !t.trim().is_empty()) {
            Some(text) => text,
            None if message.attachments.is_empty() => {
                parsed.ignored += 1;
                return Ok(());
            }
            None => format!("[{} attachment(s)]", message.attachments.len()),
        };
        // One malformed event must not hold back the rest of the delivery (the platform would
        // redeliver all of it forever): it is skipped and counted.
        let Some(occurred_at) = from_unix(event.timestamp, true) else {
            parsed.ignored += 1;
            return Ok(());
        };
        let draft = Draft::message(
            self.channel,
            account,
            message.mid,
            event.sender.id.clone(),
            format!("id:{}", event.sender.id),
            body,
            occurred_at,
        )
        .sent_by(&event.sender.id);
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(())
    }
}

/// WhatsApp: one `changes` item; buyer messages are in `value.messages`, receipts in `value.statuses`.
fn whatsapp_change<'c>(
    change: Change,
    account: &str,
    parsed: &mut Parsed,
    context: &mut dyn FnMut() -> NormalizeContext<'c>,
) -> Result<(), InputError> {
    let value = change.value;
    parsed.ignored += value.statuses.len();
    if change.field != "messages" {
        parsed.ignored += 1;
        return Ok(());
    }
    for message in value.messages {
        let Ok(message) = serde_json::from_value::<WaMessage>(message) else {
            parsed.ignored += 1; // malformed: skipped, not the whole delivery
            continue;
        };
        let caption = [&message.image, &message.video, &message.document]
            .into_iter()
            .find_map(|media| media.as_ref().and_then(|m| m.caption.clone()))
            .filter(|c| !c.trim().is_empty());
        let body = match (&message.text, message.kind.as_str()) {
            (Some(text), _) if !text.body.trim().is_empty() => text.body.clone(),
            (_, kind) if caption.is_some() => format!("[{kind}] {}", caption.clone().unwrap_or_default()),
            (_, "reaction" | "system" | "unsupported") => {
                parsed.ignored += 1;
                continue;
            }
            (_, kind) => format!("[{kind}]"),
        };
        let Some(occurred_at) = message.timestamp.parse().ok().and_then(|s| from_unix(s, false)) else {
            parsed.ignored += 1;
            continue;
        };
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert("message_type".to_owned(), serde_json::Value::from(message.kind.clone()));
        // The WhatsApp id of a user is their phone number.
        let draft = Draft {
            attributes,
            buyer_phone: Some(format!("+{}", message.from)),
            ..Draft::message(
                Channel::Whatsapp,
                account,
                message.id,
                message.from.clone(),
                format!("id:{}", message.from),
                body,
                occurred_at,
            )
            .sent_by(&message.from)
        };
        parsed.inquiries.push(draft.into_inquiry(&context()));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Payload {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    /// The page (Messenger, Instagram) or business account (WhatsApp) id.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    changes: Vec<Change>,
    #[serde(default)]
    messaging: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    value: ChangeValue,
}

#[derive(Deserialize)]
struct ChangeValue {
    #[serde(default)]
    metadata: Option<WaMetadata>,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    statuses: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct WaMetadata {
    phone_number_id: String,
}

#[derive(Deserialize)]
struct WaMessage {
    id: String,
    from: String,
    timestamp: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<WaText>,
    #[serde(default)]
    image: Option<WaMedia>,
    #[serde(default)]
    video: Option<WaMedia>,
    #[serde(default)]
    document: Option<WaMedia>,
}

#[derive(Deserialize)]
struct WaMedia {
    #[serde(default)]
    caption: Option<String>,
}

#[derive(Deserialize)]
struct WaText {
    body: String,
}

#[derive(Deserialize)]
struct MessagingEvent {
    sender: Participant,
    #[serde(default)]
    recipient: Option<Participant>,
    timestamp: i64,
    #[serde(default)]
    message: Option<MessengerMessage>,
}

#[derive(Deserialize)]
struct Participant {
    id: String,
}

#[derive(Deserialize)]
struct MessengerMessage {
    mid: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    is_echo: bool,
    /// What the sending app attached (`message.metadata` of the Send API), echoed back.
    #[serde(default)]
    metadata: Option<String>,
    #[serde(default)]
    attachments: Vec<serde_json::Value>,
}
