//! The seller's own web forms and independent site.
//!
//! The site's backend signs each submission: `X-Inquiry-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<raw body>")>`. A signature older or newer than five minutes is
//! refused (replay window); within it, a replay is a duplicate by external id. The body is the
//! generic JSON shape (`docs/openapi.yaml`) with the generic API's checks; its channel must be
//! `web_form` and its account the one in the URL.

use time::OffsetDateTime;

use super::{verify_hmac, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::{InputError, InputErrorCode};
use crate::generic::normalize;
use crate::inquiry::Channel;
use crate::NormalizeContext;

const SIGNATURE: &str = "x-inquiry-signature";
/// Largest accepted difference between the signed time and now.
pub const REPLAY_WINDOW_SECONDS: i64 = 300;

/// The web-form connector.
pub struct WebForm;

impl Webhook for WebForm {
    fn name(&self) -> &'static str {
        "web_form"
    }

    fn channel(&self) -> Channel {
        Channel::WebForm
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        let header = request.header(SIGNATURE).ok_or(VerifyError::MissingSignature(SIGNATURE))?;
        let mut timestamp = None;
        let mut signature = None;
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = Some(t),
                Some(("v1", v)) => signature = Some(v),
                _ => {}
            }
        }
        let malformed = || VerifyError::MalformedSignature(SIGNATURE);
        let timestamp = timestamp.ok_or_else(malformed)?;
        let seconds: i64 = timestamp.parse().map_err(|_| malformed())?;
        let signature = hex::decode(signature.ok_or_else(malformed)?).map_err(|_| malformed())?;
        verify_hmac(secrets.secret.as_bytes(), &[timestamp.as_bytes(), b".", request.body], &signature)?;
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
        // The same checks as the generic API (UTF-8, objects only, every field).
        let inquiry = normalize(body, &context())?;
        if inquiry.channel != Channel::WebForm {
            return Err(InputError::new(InputErrorCode::InvalidValue, "channel must be web_form").field("channel"));
        }
        if inquiry.account != account {
            return Err(InputError::new(InputErrorCode::InvalidValue, "account does not match the webhook url")
                .field("account"));
        }
        Ok(Parsed { inquiries: vec![inquiry], ..Parsed::default() })
    }
}
