//! WhatsApp Cloud API, send message
//! (<https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages>):
//! `POST /v21.0/{phone-number-id}/messages` with `Authorization: Bearer <token>` and
//! `{"messaging_product": "whatsapp", "to": ..., "type": "text", "text": {"body": ...}}`;
//! answers `{"messages": [{"id": "wamid..."}]}`.
//!
//! Quotas (<https://developers.facebook.com/docs/whatsapp/cloud-api/overview#throughput>,
//! <https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes>): 80 messages
//! per second per business number (over it: error 130429); one message every 6 seconds to the same
//! user (the pair rate limit; over it: error 131056). Every message it takes is kept in the
//! mailbox (account = the business number, buyer = the recipient, `from_seller`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::quota::RecipientPause;
use crate::{Admission, Mailbox, Platform, QuotaRule, Reply, Request};

/// The WhatsApp send stand-in.
#[derive(Debug)]
pub struct WhatsappSend {
    /// The access token it accepts.
    pub access_token: String,
    /// Seconds between two messages to one user.
    pub pair_seconds: f64,
    /// The pair rate limit (business number, user).
    pub pair_pause: RecipientPause,
    sent: AtomicU64,
}

impl Default for WhatsappSend {
    fn default() -> WhatsappSend {
        WhatsappSend {
            access_token: "test-whatsapp-token".to_owned(),
            pair_seconds: 6.0,
            pair_pause: RecipientPause::default(),
            sent: AtomicU64::new(0),
        }
    }
}

fn error(status: u16, code: u32, message: &str) -> Reply {
    Reply::json(status, &json!({"error": {"message": message, "type": "OAuthException", "code": code}}))
}

fn number_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v21.0/")?.strip_suffix("/messages")
}

impl Platform for WhatsappSend {
    fn name(&self) -> &'static str {
        "whatsapp_send"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 80.0, burst: 80, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        let Some(number) = number_of(&request.path).filter(|_| request.method == "POST") else {
            return Err(error(404, 100, "Unknown path components"));
        };
        if request.header("authorization") != Some(&format!("Bearer {}", self.access_token)) {
            return Err(error(401, 190, "Invalid OAuth access token."));
        }
        Ok(number.to_owned())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        error(400, 130429, "Rate limit hit")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let number = number_of(&request.path).unwrap_or_default().to_owned();
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let (Some(to), Some(text)) = (body["to"].as_str(), body["text"]["body"].as_str()) else {
            return error(400, 100, "Invalid parameter");
        };
        if body["messaging_product"] != "whatsapp" || body["type"] != "text" {
            return error(400, 100, "Invalid parameter");
        }
        if !self.pair_pause.admit(&format!("{number}/{to}"), Duration::from_secs_f64(self.pair_seconds)) {
            return error(400, 131056, "(Business Account, Consumer Account) pair rate limit hit");
        }
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        let id = format!("wamid.test{n:08}");
        crate::chat_send::keep(mailbox, &number, to, &id, text);
        Reply::json(
            200,
            &json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": id}]}),
        )
    }
}
