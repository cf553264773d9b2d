//! Canonical inquiry envelope and the connectors that turn channel payloads into it.
//!
//! A connector only verifies and normalizes: pure functions of the payload and a
//! [`NormalizeContext`], so every connector is golden-tested on fixtures. The gateway's pipeline
//! owns metrics, retries, rate limits and audit around them.

pub mod email;
pub mod error;
pub mod generic;
pub mod inquiry;
pub mod language;
pub mod outbound;
pub mod poll;
pub mod webhook;

pub use error::{InputError, InputErrorCode};
pub use inquiry::{Buyer, Channel, Consent, ExternalIds, Inquiry, Personal, Region, ENVELOPE_VERSION};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a connector extracted from one message, before the gateway's context makes it an [`Inquiry`].
pub(crate) struct Draft {
    pub channel: Channel,
    pub account: String,
    pub message_id: String,
    pub conversation_id: String,
    /// The most stable buyer identity the platform gives (`id:...`, `email:...`); finds the data subject.
    pub buyer_identity: String,
    /// The buyer's name, e-mail, phone and platform id, where the platform gives them.
    pub buyer_name: Option<String>,
    pub buyer_email: Option<String>,
    pub buyer_phone: Option<String>,
    pub platform_user_id: Option<String>,
    /// The conversation id is the buyer's own platform id.
    pub conversation_is_buyer: bool,
    pub country: Option<String>,
    /// The language the platform gives; detected from the body when `None`.
    pub language: Option<String>,
    pub subject: Option<String>,
    pub body: String,
    pub order_id: Option<String>,
    pub product_ids: Vec<String>,
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    pub occurred_at: OffsetDateTime,
}

impl Draft {
    /// A chat message: what every platform gives; the other fields start empty.
    pub(crate) fn message(
        channel: Channel,
        account: &str,
        message_id: String,
        conversation_id: String,
        buyer_identity: String,
        body: String,
        occurred_at: OffsetDateTime,
    ) -> Draft {
        Draft {
            channel,
            account: account.to_owned(),
            message_id,
            conversation_id,
            buyer_identity,
            buyer_name: None,
            buyer_email: None,
            buyer_phone: None,
            platform_user_id: None,
            conversation_is_buyer: false,
            country: None,
            language: None,
            subject: None,
            body,
            order_id: None,
            product_ids: Vec::new(),
            attributes: Default::default(),
            occurred_at,
        }
    }

    /// A chat message from the buyer `user_id`. Where the conversation id is that same user id
    /// (WhatsApp, Messenger, Instagram, LINE and Telegram private chats) it is personal data: it is
    /// left empty here and the gateway sets it to the buyer's pseudonym.
    pub(crate) fn sent_by(mut self, user_id: &str) -> Draft {
        if self.conversation_id == user_id {
            self.conversation_is_buyer = true;
            self.conversation_id.clear();
        }
        self.platform_user_id = Some(user_id.to_owned());
        self
    }

    /// The canonical inquiry: the id derived from the message, the receive time and trace id from
    /// `ctx`; the personal data in [`Inquiry::personal`], for the gateway to seal.
    pub(crate) fn into_inquiry(self, ctx: &NormalizeContext<'_>) -> Inquiry {
        // Chat channels give a phone number rather than a country: its country code names one.
        let country = self.country.or_else(|| self.buyer_phone.as_deref().and_then(country_of_phone));
        let region = country.as_deref().map_or(Region::Other, Region::of_country);
        let language = self.language.or_else(|| language::detect(&self.body));
        let id = stable_id(self.channel, &self.account, &self.message_id, self.occurred_at);
        Inquiry {
            schema_version: ENVELOPE_VERSION,
            id,
            channel: self.channel,
            external: ExternalIds { message_id: self.message_id, conversation_id: self.conversation_id },
            buyer: Buyer { pseudonym: String::new(), country, language },
            account: self.account,
            personal: Personal {
                identity: self.buyer_identity,
                name: self.buyer_name,
                email: self.buyer_email,
                phone: self.buyer_phone,
                platform_user_id: self.platform_user_id,
                subject: self.subject,
                body: self.body,
                conversation_is_buyer: self.conversation_is_buyer,
            },
            sealed: Default::default(),
            order_id: self.order_id,
            product_ids: self.product_ids,
            attributes: self.attributes,
            consent: None,
            received_at: ctx.received_at,
            occurred_at: self.occurred_at,
            region,
            trace_id: ctx.trace_id.to_owned(),
            raw_ref: format!("embedded:raw/{id}"),
        }
    }
}

/// The ISO 3166-1 alpha-2 country of a phone number in international format (`+4915...`), by
/// libphonenumber's metadata (a country code shared by several countries, like +1, is told apart
/// by the number's area code). `None` for a number without its country code or one no country
/// issues: the country stays unknown rather than guessed.
pub fn country_of_phone(phone: &str) -> Option<String> {
    if !phone.trim_start().starts_with('+') {
        return None;
    }
    let number = phonenumber::parse(None, phone).ok()?;
    Some(number.country().id()?.as_ref().to_owned())
}

/// True for an ISO 3166-1 alpha-2 code (upper case) of a country or territory that issues phone
/// numbers (libphonenumber's list: every place a buyer can write from).
pub fn is_known_country(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && code.parse::<phonenumber::country::Id>().is_ok()
}

/// The id of the inquiry for a platform message: a UUIDv8 whose first 48 bits are the Unix
/// milliseconds (whole seconds) of when the buyer sent it (ids sort by time, like UUIDv7) and whose other 74 bits
/// come from SHA-256 over (channel, account, message id). The same message gets the same id on
/// every replica, after every restart and on every redelivery, so downstream consumers can drop
/// duplicates by id whichever gateway replica fetched it.
pub fn stable_id(channel: Channel, account: &str, message_id: &str, occurred_at: OffsetDateTime) -> Uuid {
    let mut hash = Sha256::new();
    for part in [channel.as_str(), account, message_id] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    // Whole seconds: platforms differ in precision (a webhook in milliseconds, the same message
    // polled from an API in seconds), and the same message must get the same id either way.
    let millis = (i128::from(occurred_at.unix_timestamp()) * 1000).clamp(0, (1 << 48) - 1) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&digest[..10]);
    Uuid::new_v8(bytes)
}

/// How far a message's time may run ahead of the gateway's clock (clock skew between the sender
/// and the gateway). A generic-API message later than that is refused; a platform's keeps its
/// time (its id must be the same on every replica and redelivery), and retention removes it by
/// its receipt time.
pub const MAX_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// What the gateway decides for an inquiry before a connector normalizes it.
#[derive(Debug, Clone, Copy)]
pub struct NormalizeContext<'a> {
    /// When the gateway received it.
    pub received_at: OffsetDateTime,
    /// Trace id to carry.
    pub trace_id: &'a str,
}

#[cfg(test)]
mod phone_tests {
    use super::country_of_phone;

    #[test]
    fn a_phone_number_in_international_format_names_its_country() {
        // WhatsApp ids are numbers without the plus; the connector adds it.
        assert_eq!(country_of_phone("+4915112345678").as_deref(), Some("DE"));
        assert_eq!(country_of_phone("+33 6 12 34 56 78").as_deref(), Some("FR"));
        assert_eq!(country_of_phone("+6591234567").as_deref(), Some("SG"));
        // +1 is shared: the area code tells the US, Canada and the Caribbean apart.
        assert_eq!(country_of_phone("+12015550123").as_deref(), Some("US"));
        assert_eq!(country_of_phone("+14165550123").as_deref(), Some("CA"));
        assert_eq!(country_of_phone("+18765550123").as_deref(), Some("JM"));
        // +44 7781 is Guernsey, not the United Kingdom.
        assert_eq!(country_of_phone("+447781123456").as_deref(), Some("GG"));
    }

    #[test]
    fn numbers_of_the_eus_outermost_regions_are_eu_data() {
        use crate::inquiry::Region;
        // Reunion (+262), Guadeloupe (+590), Martinique (+596), French Guiana (+594), Aland (+358 18).
        for (phone, country) in [
            ("+262692123456", "RE"),
            ("+590690001234", "GP"),
            ("+596696201234", "MQ"),
            ("+594694201234", "GF"),
            ("+358181234567", "AX"),
        ] {
            assert_eq!(country_of_phone(phone).as_deref(), Some(country), "{phone}");
            assert_eq!(Region::of_country(country), Region::Eu, "{country}");
        }
        assert_eq!(Region::of_country("GI"), Region::Other, "Gibraltar left with the UK");
    }

    #[test]
    fn a_number_without_its_country_code_leaves_the_country_unknown() {
        assert_eq!(country_of_phone("015112345678"), None, "national format: which country?");
        assert_eq!(country_of_phone("4915112345678"), None, "no plus: not known to be international");
        assert_eq!(country_of_phone("+999123456"), None, "no country has code 999");
        assert_eq!(country_of_phone("+"), None);
        assert_eq!(country_of_phone("not a number"), None);
    }

    #[test]
    fn known_countries_are_iso_codes_in_upper_case() {
        use super::is_known_country;
        assert!(is_known_country("SG") && is_known_country("DE") && is_known_country("GG"));
        assert!(!is_known_country("sg"), "lower case");
        assert!(!is_known_country("XX") && !is_known_country("SGP") && !is_known_country(""));
    }
}
