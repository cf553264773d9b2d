//! Canonical inquiry envelope and the connectors that turn channel payloads into it.
//!
//! A connector only verifies and normalizes: pure functions of the payload and a
//! [`NormalizeContext`], so every connector is golden-tested on fixtures. The gateway's pipeline
//! owns metrics, retries, rate limits and audit around them.

pub mod error;
pub mod generic;
pub mod inquiry;

pub use error::{InputError, InputErrorCode};
pub use inquiry::{Buyer, Channel, ExternalIds, Inquiry, Region, ENVELOPE_VERSION};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

/// What the gateway decides for an inquiry before a connector normalizes it.
#[derive(Debug, Clone, Copy)]
pub struct NormalizeContext<'a> {
    /// Id to give the inquiry.
    pub id: Uuid,
    /// When the gateway received it.
    pub received_at: OffsetDateTime,
    /// Trace id to carry.
    pub trace_id: &'a str,
    /// Secret key for buyer pseudonyms.
    pub pseudonym_key: &'a [u8],
}

impl NormalizeContext<'_> {
    /// Keyed pseudonym of the buyer `identity` within `channel` and `account`:
    /// `bp_` + the first 16 bytes of HMAC-SHA256(key, channel | account | identity), hex.
    pub fn pseudonym(&self, channel: Channel, account: &str, identity: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.pseudonym_key).expect("hmac accepts keys of any length");
        for part in [channel.as_str(), account, identity] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(3 + 32);
        out.push_str("bp_");
        for byte in &digest[..16] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}
