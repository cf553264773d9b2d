//! SendGrid (Twilio) Inbound Parse.
//!
//! Inbound Parse is unsigned unless a "Parse webhook security policy" with signature verification
//! is attached to the parse setting ("Securing your Inbound Parse Webhooks"). This connector
//! requires one: the endpoint's `public_key` is the policy's `signature.public_key` (base64 DER
//! SubjectPublicKeyInfo, ECDSA P-256). SendGrid documents the mechanism for Parse but not its
//! header names; this follows its signed Event Webhook, which uses the same key type:
//! `X-Twilio-Email-Event-Webhook-Signature` = base64 DER ECDSA P-256 / SHA-256 over
//! `X-Twilio-Email-Event-Webhook-Timestamp ‖ raw body`. A timestamp more than five minutes from now
//! is refused; a replay within it is deduplicated by the inquiry id (from the hashed `Message-ID` and the `Date`).
//!
//! The body is `multipart/form-data`: `from`, `subject`, `text`, `headers` (the raw header block)
//! and `charsets` (JSON: the charset of each field) in the default mode, or `email` (the whole raw
//! MIME message) when "POST the raw, full MIME message" is on. Every POST is one inbound e-mail;
//! auto-replies and list mail are acknowledged and ignored.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::email::{decode_charset, Email, Form};
use super::{verify_ecdsa_p256, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::NormalizeContext;

const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";
/// Largest accepted difference between the signed timestamp and now.
pub const REPLAY_WINDOW_SECONDS: i64 = 300;

/// The SendGrid Inbound Parse connector.
pub struct SendGrid;

impl Webhook for SendGrid {
    fn name(&self) -> &'static str {
        "sendgrid"
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        let signature = request.header(SIGNATURE).ok_or(VerifyError::MissingSignature(SIGNATURE))?;
        let timestamp = request.header(TIMESTAMP).ok_or(VerifyError::MissingSignature(TIMESTAMP))?;
        let seconds: i64 = timestamp.trim().parse().map_err(|_| VerifyError::MalformedSignature(TIMESTAMP))?;
        let public_key = secrets.public_key.ok_or(VerifyError::NotConfigured("public_key"))?;
        let digest = Sha256::new().chain_update(timestamp.as_bytes()).chain_update(request.body).finalize();
        verify_ecdsa_p256(public_key, &digest, signature, SIGNATURE)?;
        if now.unix_timestamp().abs_diff(seconds) > REPLAY_WINDOW_SECONDS as u64 {
            return Err(VerifyError::Stale);
        }
        Ok(())
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let form = Form::parse(body)?;
        let mut email = match form.raw("email") {
            Some(raw) => raw_email(raw)?,
            None => parsed_email(&form)?,
        };
        if email.from.is_none() {
            email.sender = form
                .get("envelope")
                .and_then(|e| serde_json::from_str::<serde_json::Value>(&e).ok())
                .and_then(|e| e["from"].as_str().map(str::to_owned));
        }
        let mut parsed = Parsed::default();
        if email.is_automatic() {
            parsed.ignored += 1;
            return Ok(parsed);
        }
        let draft = email.into_draft(account, "sendgrid")?;
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(parsed)
    }
}

/// The default mode: one field per part of the e-mail, each in the charset `charsets` names.
fn parsed_email(form: &Form) -> Result<Email, InputError> {
    let charsets: serde_json::Value =
        form.get("charsets").and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default();
    let field = |name: &str| form.raw(name).map(|v| decode_charset(v, charsets[name].as_str().unwrap_or("utf-8")));
    let mut email = Email { from: field("from"), subject: field("subject"), text: field("text"), ..Email::default() };
    let block = form
        .raw("headers")
        .ok_or_else(|| InputError::new(InputErrorCode::MissingField, "missing field `headers`").field("headers"))?;
    let (headers, _) = mailparse::parse_headers(block)
        .map_err(|_| InputError::new(InputErrorCode::InvalidValue, "unreadable header block").field("headers"))?;
    email.headers(headers.iter().map(|h| (h.get_key(), h.get_value())));
    Ok(email)
}

/// "Send raw" mode: the whole MIME message; the text is its first `text/plain` part that is not
/// an attachment.
fn raw_email(raw: &[u8]) -> Result<Email, InputError> {
    let mail = mailparse::parse_mail(raw)
        .map_err(|_| InputError::new(InputErrorCode::InvalidValue, "unreadable MIME message").field("email"))?;
    let mut email = Email::default();
    email.headers(mail.headers.iter().map(|h| (h.get_key(), h.get_value())));
    email.text = first_text(&mail);
    Ok(email)
}

fn first_text(part: &mailparse::ParsedMail<'_>) -> Option<String> {
    let attachment = part.get_content_disposition().disposition == mailparse::DispositionType::Attachment;
    if part.subparts.is_empty() {
        return (part.ctype.mimetype == "text/plain" && !attachment).then(|| part.get_body().ok()).flatten();
    }
    part.subparts.iter().find_map(first_text)
}
