//! Telegram Bot API.
//!
//! Verification: the bot registers its webhook with a `secret_token`; Telegram sends it back in
//! `X-Telegram-Bot-Api-Secret-Token`, compared here in constant time. Message ids are unique per
//! chat only, and a private chat's id is the buyer's user id (personal data, never in clear in an
//! envelope), so the external id is `tg:` and a SHA-256 of `<chat id>:<message id>`: unique and
//! the same on every redelivery. (Not the update id: Telegram picks it at random again after a
//! week without updates, so an old one can come back.)

use serde::Deserialize;
use time::OffsetDateTime;

use super::{from_unix, tokens_equal, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::{InputError, InputErrorCode};
use crate::generic::normalize_language;
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

const TOKEN: &str = "x-telegram-bot-api-secret-token";

/// The Telegram connector.
pub struct Telegram;

impl Webhook for Telegram {
    fn name(&self) -> &'static str {
        "telegram"
    }

    fn channel(&self) -> Channel {
        Channel::Telegram
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        _now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        let token = request.header(TOKEN).ok_or(VerifyError::MissingSignature(TOKEN))?;
        if tokens_equal(token, secrets.secret) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let body = request.body;
        let update: Update = serde_json::from_slice(body).map_err(InputError::from_json)?;
        let mut parsed = Parsed::default();
        let Some(message) = update.message else {
            parsed.ignored += 1; // edits, channel posts, callbacks, member updates
            return Ok(parsed);
        };
        let Some(from) = message.from.filter(|f| !f.is_bot) else {
            parsed.ignored += 1;
            return Ok(parsed);
        };
        let body = match message.text.or(message.caption).filter(|t| !t.trim().is_empty()) {
            Some(text) => text,
            None => "[media]".to_owned(),
        };
        let occurred_at = from_unix(message.date, false)
            .ok_or_else(|| InputError::new(InputErrorCode::InvalidValue, "date is not a valid time").field("date"))?;
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert("update_id".to_owned(), update.update_id.into());
        let draft = Draft {
            language: from.language_code.as_deref().and_then(|l| normalize_language(l).ok()),
            attributes,
            ..Draft::message(
                Channel::Telegram,
                account,
                telegram_message_id(message.chat.id, message.message_id),
                message.chat.id.to_string(),
                format!("id:{}", from.id),
                body,
                occurred_at,
            )
            .sent_by(&from.id.to_string())
        };
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(parsed)
    }
}

/// The external id of a chat's message (see the module's documentation).
fn telegram_message_id(chat: i64, message: i64) -> String {
    use sha2::{Digest, Sha256};
    format!("tg:{}", &hex::encode(Sha256::digest(format!("{chat}:{message}").as_bytes()))[..32])
}

#[derive(Deserialize)]
struct Update {
    update_id: i64,
    #[serde(default)]
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    message_id: i64,
    date: i64,
    chat: Chat,
    #[serde(default)]
    from: Option<User>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    caption: Option<String>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
    #[serde(default)]
    language_code: Option<String>,
}
