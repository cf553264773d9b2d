//! Mailgun inbound routes (`forward("https://…/webhooks/mailgun/<account>")`).
//!
//! Mailgun posts the parsed e-mail as a form (`application/x-www-form-urlencoded`, or
//! `multipart/form-data` when it has attachments) with three signing fields in the body:
//! `signature = hex HMAC-SHA256(webhook signing key, timestamp ‖ token)` ("Securing webhooks").
//! Only `timestamp` and `token` are signed, not the e-mail: a signature more than five minutes from
//! now is refused. A token replayed within that window is the same delivery again: the inquiry id
//! comes from the (hashed) `Message-Id` and the `Date` ([`crate::stable_id`]), so the pipeline drops it as a
//! duplicate; no token cache is needed. Every POST is one inbound e-mail: the text is
//! `stripped-text` (quoted reply and signature removed), else `body-plain`; the headers come from
//! `message-headers` (a JSON list of `[name, value]`), else the top-level fields. Auto-replies,
//! bounces and list mail are acknowledged and ignored.

use time::OffsetDateTime;

use super::email::{Email, Form};
use super::{verify_hmac, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::InputError;
use crate::inquiry::Channel;
use crate::NormalizeContext;

const SIGNATURE: &str = "signature";
/// Largest accepted difference between the signed timestamp and now.
pub const REPLAY_WINDOW_SECONDS: i64 = 300;

/// The Mailgun inbound-route connector.
pub struct Mailgun;

impl Webhook for Mailgun {
    fn name(&self) -> &'static str {
        "mailgun"
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
        // The signature travels in the form itself; an unreadable form has none.
        let form = Form::parse(request.body).map_err(|_| VerifyError::MissingSignature(SIGNATURE))?;
        let signature = form.get(SIGNATURE).ok_or(VerifyError::MissingSignature(SIGNATURE))?;
        let malformed = || VerifyError::MalformedSignature(SIGNATURE);
        let signature = hex::decode(signature.trim()).map_err(|_| malformed())?;
        let timestamp = form.get("timestamp").ok_or_else(malformed)?;
        let token = form.get("token").ok_or_else(malformed)?;
        let seconds: i64 = timestamp.trim().parse().map_err(|_| malformed())?;
        verify_hmac(secrets.secret.as_bytes(), &[timestamp.as_bytes(), token.as_bytes()], &signature)?;
        if now.unix_timestamp().abs_diff(seconds) > REPLAY_WINDOW_SECONDS as u64 {
            return Err(VerifyError::Stale);
        }
        Ok(())
    }

    fn replay_key(&self, request: &WebhookRequest<'_>) -> Option<String> {
        Form::parse(request.body).ok()?.get("token").map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let form = Form::parse(body)?;
        let mut email = Email {
            from: form.get("from"),
            sender: form.get("sender"),
            subject: form.get("subject"),
            text: form.get("stripped-text").filter(|t| !t.trim().is_empty()).or_else(|| form.get("body-plain")),
            delivered_at: form.get("timestamp").and_then(|t| t.trim().parse().ok()),
            ..Email::default()
        };
        let headers: Vec<(String, String)> = form
            .get("message-headers")
            .and_then(|json| serde_json::from_str::<Vec<(String, String)>>(&json).ok())
            .unwrap_or_default();
        email.headers(headers);
        let top_level = ["Message-Id", "In-Reply-To", "References", "Date", "Auto-Submitted", "Precedence"];
        email.headers(top_level.into_iter().filter_map(|name| Some((name.to_owned(), form.get(name)?))));

        let mut parsed = Parsed::default();
        if email.is_automatic() {
            parsed.ignored += 1;
            return Ok(parsed);
        }
        let draft = email.into_draft(account, "mailgun")?;
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(parsed)
    }
}
