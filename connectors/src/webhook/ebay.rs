//! eBay Notification API (REST push notifications).
//!
//! Signature (Notification API overview; eBay's event-notification SDKs): `X-EBAY-SIGNATURE` is
//! base64 of a JSON object `{"alg":"ecdsa","kid":…,"signature":<base64 DER>,"digest":"SHA1"}`; the
//! signature is ECDSA P-256 over the raw body with the named digest (the SDKs use SHA-1), checked
//! with the public key eBay serves for `kid` (`GET /commerce/notification/v1/public_key/{kid}`,
//! fetched and cached for an hour by the gateway, see [`Webhook::key_id`]). No timestamp is signed;
//! eBay redelivers (`publishAttemptCount` > 1) with the same `notificationId`.
//!
//! Endpoint validation: `GET ?challenge_code=X` is answered with JSON
//! `{"challengeResponse": hex SHA-256(X ‖ verification token ‖ endpoint URL)}`.
//!
//! Topics: `BUYER_QUESTION` (a buyer asks about an active listing) and the 2025 new-message topic
//! (`NEW_MESSAGE`) become inquiries. eBay's contracts for their `data` were not readable when this
//! was written, so the fields are looked up under the names eBay's other APIs use (see
//! `docs/research/webhooks.md`): a notification whose text is not found is ignored, not guessed at.
//! `MARKETPLACE_ACCOUNT_DELETION` (mandatory for every eBay app) names a user whose data must be
//! erased: its `username` and `userId` become [`Parsed::erasures`], which the gateway turns into
//! erasure requests. Every other topic is acknowledged and ignored.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{verify_ecdsa_p256, Handshake, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

const SIGNATURE: &str = "x-ebay-signature";
/// Topics that carry a buyer's message.
const MESSAGE_TOPICS: [&str; 2] = ["BUYER_QUESTION", "NEW_MESSAGE"];
/// The topic of a user's request to delete their eBay account (and their data everywhere).
const ACCOUNT_DELETION: &str = "MARKETPLACE_ACCOUNT_DELETION";

/// The eBay connector.
pub struct Ebay;

/// The decoded `X-EBAY-SIGNATURE` header.
#[derive(Deserialize)]
struct SignatureHeader {
    #[serde(default)]
    alg: String,
    kid: String,
    signature: String,
    #[serde(default)]
    digest: String,
}

fn signature_header(request: &WebhookRequest<'_>) -> Result<SignatureHeader, VerifyError> {
    let header = request.header(SIGNATURE).ok_or(VerifyError::MissingSignature(SIGNATURE))?;
    base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .ok()
        .and_then(|json| serde_json::from_slice::<SignatureHeader>(&json).ok())
        .ok_or(VerifyError::MalformedSignature(SIGNATURE))
}

impl Webhook for Ebay {
    fn name(&self) -> &'static str {
        "ebay"
    }

    fn channel(&self) -> Channel {
        Channel::Ebay
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        _now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        let header = signature_header(request)?;
        // eBay names the key of every signature: without one there is nothing to check against.
        if header.kid.is_empty() || (!header.alg.is_empty() && !header.alg.eq_ignore_ascii_case("ecdsa")) {
            return Err(VerifyError::MalformedSignature(SIGNATURE));
        }
        let public_key = secrets.public_key.ok_or(VerifyError::NotConfigured("public_key"))?;
        let digest = match header.digest.to_ascii_uppercase().as_str() {
            "SHA1" | "SHA-1" | "" => sha1::Sha1::digest(request.body).to_vec(),
            "SHA256" | "SHA-256" => Sha256::digest(request.body).to_vec(),
            _ => return Err(VerifyError::MalformedSignature(SIGNATURE)),
        };
        verify_ecdsa_p256(public_key, &digest, &header.signature, SIGNATURE)
    }

    fn key_id(&self, request: &WebhookRequest<'_>) -> Option<String> {
        signature_header(request).ok().map(|h| h.kid).filter(|kid| !kid.is_empty())
    }

    fn has_handshake(&self) -> bool {
        true
    }

    fn handshake(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
    ) -> Option<Result<Handshake, VerifyError>> {
        let challenge = request.query_param("challenge_code")?;
        let Some(token) = secrets.verify_token.filter(|t| !t.is_empty()) else {
            return Some(Err(VerifyError::NotConfigured("verify_token")));
        };
        let Some(endpoint) = secrets.endpoint_url else {
            return Some(Err(VerifyError::NotConfigured("endpoint_url")));
        };
        let hash = Sha256::new()
            .chain_update(challenge.as_bytes())
            .chain_update(token.as_bytes())
            .chain_update(endpoint.as_bytes())
            .finalize();
        Some(Ok(Handshake::json(&serde_json::json!({ "challengeResponse": hex::encode(hash) }))))
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let envelope: Envelope = serde_json::from_slice(body).map_err(InputError::from_json)?;
        let mut parsed = Parsed::default();
        let topic = envelope.metadata.topic.as_str();
        if topic == ACCOUNT_DELETION {
            // The buyer is known by user name to the Trading API and by user id to notifications.
            let data = &envelope.notification.data;
            parsed.erasures = ["username", "userId"].iter().filter_map(|k| first_str(data, &[k])).collect();
            if parsed.erasures.is_empty() {
                return Err(InputError::new(InputErrorCode::MissingField, "account deletion names no user")
                    .field("notification.data.userId"));
            }
            return Ok(parsed);
        }
        if !MESSAGE_TOPICS.contains(&topic) {
            parsed.ignored += 1; // orders, listings…
            return Ok(parsed);
        }
        let notification = envelope.notification;
        let data = &notification.data;
        let text = first_str(data, &["question", "questionText", "messageBody", "messageText", "body", "text"]);
        let buyer =
            first_str(data, &["buyerUserId", "senderUserId", "userId", "buyerUsername", "senderUsername", "username"]);
        let (Some(text), Some(buyer)) = (text.filter(|t| !t.trim().is_empty()), buyer) else {
            parsed.ignored += 1; // a payload shape this connector does not know: not guessed at
            return Ok(parsed);
        };
        let message_id =
            first_str(data, &["questionId", "messageId"]).unwrap_or_else(|| notification.notification_id.clone());
        if message_id.is_empty() {
            return Err(InputError::new(InputErrorCode::MissingField, "missing field `notificationId`")
                .field("notification.notificationId"));
        }
        let conversation_id = first_str(data, &["conversationId", "threadId"]).unwrap_or_else(|| message_id.clone());
        let occurred_at = first_str(data, &["creationDate", "createdDate", "messageDate"])
            .or(notification.event_date)
            .and_then(|d| OffsetDateTime::parse(&d, &Rfc3339).ok())
            .ok_or_else(|| {
                InputError::new(InputErrorCode::InvalidValue, "eventDate is not an RFC 3339 time")
                    .field("notification.eventDate")
            })?;
        let mut attributes = BTreeMap::new();
        attributes.insert("topic".to_owned(), topic.into());
        attributes.insert("notification_id".to_owned(), notification.notification_id.clone().into());
        let name = first_str(data, &["buyerUsername", "senderUsername", "username"]).filter(|n| *n != buyer);
        let draft = Draft {
            buyer_name: name,
            subject: first_str(data, &["subject", "questionSubject"]),
            order_id: first_str(data, &["orderId"]),
            product_ids: first_str(data, &["itemId", "listingId"]).into_iter().collect(),
            attributes,
            ..Draft::message(
                Channel::Ebay,
                account,
                message_id,
                conversation_id,
                format!("id:{buyer}"),
                text,
                occurred_at,
            )
        }
        .sent_by(&buyer);
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(parsed)
    }
}

/// The first of `names` in `data` (or in `data.question`/`data.message`) that is a string or number.
fn first_str(data: &Value, names: &[&str]) -> Option<String> {
    let scopes = [data, &data["question"], &data["message"]];
    names.iter().find_map(|name| {
        scopes.iter().find_map(|scope| match &scope[*name] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    })
}

#[derive(Deserialize)]
struct Envelope {
    metadata: Metadata,
    notification: Notification,
}

#[derive(Deserialize)]
struct Metadata {
    topic: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    #[serde(default)]
    notification_id: String,
    #[serde(default)]
    event_date: Option<String>,
    #[serde(default)]
    data: Value,
}
