//! The canonical inquiry envelope: the one shape every channel is normalized into.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Version of the [`Inquiry`] envelope; bumped on any incompatible change (2: personal data sealed).
pub const ENVELOPE_VERSION: u32 = 2;

/// A buyer inquiry in canonical form, as stored, routed and published downstream.
///
/// Personal data (buyer name, e-mail, phone, platform user id, subject line and message text) is
/// never serialized in clear: [`Inquiry::personal`] holds it in memory for routing, and the gateway
/// seals it per data subject into [`Inquiry::sealed`] before anything is stored or published. The
/// buyer is a random pseudonym; the original payload is kept apart, referenced by [`Inquiry::raw_ref`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inquiry {
    /// Envelope version, always [`ENVELOPE_VERSION`] for envelopes written by this build.
    pub schema_version: u32,
    /// Id derived from the platform message ([`crate::stable_id`]): stable and time-ordered.
    pub id: Uuid,
    /// Platform or channel the inquiry came from.
    pub channel: Channel,
    /// Seller account (shop, page, mailbox) on that channel.
    pub account: String,
    /// Ids the platform gave the message and its conversation.
    pub external: ExternalIds,
    /// Who asked, without personal data.
    pub buyer: Buyer,
    /// Personal data in clear, for routing in memory: never serialized.
    #[serde(skip)]
    pub personal: Personal,
    /// The personal data sealed for the buyer's data key: field name -> base64 of
    /// `nonce (12 bytes) || AES-256-GCM ciphertext || tag` (see `docs/compliance.md`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sealed: BTreeMap<String, String>,
    /// Order the inquiry refers to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Products the inquiry refers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub product_ids: Vec<String>,
    /// Free-form channel attributes passed through for routing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// What the buyer consented to with this message (a web form's checkboxes), as the channel
    /// reported it; omitted when it reported none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// When the gateway received the inquiry.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// When the buyer sent it, as the platform reports.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// Data-residency region the inquiry belongs to.
    pub region: Region,
    /// W3C trace id (32 lowercase hex digits) that follows the inquiry through every hop.
    pub trace_id: String,
    /// Where the original payload is kept, sealed like the personal data (`embedded:raw/<id>`), or
    /// `none` when it is not kept (a delivery that carried several buyers' messages).
    pub raw_ref: String,
}

impl Inquiry {
    /// Takes `country` (an account's configured `buyer_country`, if any) as the buyer's where
    /// the message gave none; the region follows it. A country the message gave is kept.
    pub fn assume_country(&mut self, country: Option<&str>) {
        if let (None, Some(country)) = (&self.buyer.country, country) {
            self.region = Region::of_country(country);
            self.buyer.country = Some(country.to_owned());
        }
    }
}

/// A buyer's consent as the channel reported it with a message: the record the seller keeps to
/// show it (GDPR Art. 7(1)). Purposes and the notice's version are the seller's own names; no
/// personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// Purposes consented to (`marketing_email`, `whatsapp_updates`, ...): sorted, no repeats.
    pub purposes: Vec<String>,
    /// Version of the notice the buyer was shown (`privacy-2026-10`).
    pub notice: String,
    /// When the buyer gave it.
    #[serde(with = "time::serde::rfc3339")]
    pub given_at: OffsetDateTime,
}

/// The personal data of one inquiry: what a data subject request exports and erasure destroys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Personal {
    /// The most stable identity the platform gives for the buyer (`email:...`, `id:...`): finds
    /// the data subject; never stored in clear.
    pub identity: String,
    /// The buyer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The buyer's e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The buyer's phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The platform's id of the buyer (PSID, WhatsApp number, LINE user id...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_user_id: Option<String>,
    /// Subject line, where the channel has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Message text.
    pub body: String,
    /// The platform's conversation id is the buyer's own id (a chat with one person): the envelope's
    /// conversation id is left empty by the connector and set to the buyer's pseudonym by the gateway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conversation_is_buyer: bool,
}

impl Personal {
    /// The fields to seal, by their wire name, with their values (absent ones left out).
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut fields = Vec::with_capacity(6);
        for (name, value) in [
            ("name", &self.name),
            ("email", &self.email),
            ("phone", &self.phone),
            ("platform_user_id", &self.platform_user_id),
            ("subject", &self.subject),
        ] {
            if let Some(value) = value {
                fields.push((name, value.as_str()));
            }
        }
        fields.push(("body", self.body.as_str()));
        fields
    }

    /// Sets the field `name` (as [`Personal::fields`] names it); false for an unknown name.
    pub fn set(&mut self, name: &str, value: String) -> bool {
        match name {
            "name" => self.name = Some(value),
            "email" => self.email = Some(value),
            "phone" => self.phone = Some(value),
            "platform_user_id" => self.platform_user_id = Some(value),
            "subject" => self.subject = Some(value),
            "body" => self.body = value,
            _ => return false,
        }
        true
    }
}

/// Message and conversation ids as the platform assigned them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIds {
    /// The platform's id of this message; dedup key together with channel and account.
    pub message_id: String,
    /// The platform's id of the conversation; keeps one conversation in order downstream.
    pub conversation_id: String,
}

/// The buyer, pseudonymized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Buyer {
    /// Random pseudonym of the data subject (`bp_` + 32 hex digits), assigned by the gateway (empty
    /// until then); erasure retires it, so a returning buyer gets a new one.
    pub pseudonym: String,
    /// ISO 3166-1 alpha-2 country code, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// BCP 47 language tag, primary subtag lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Data-residency region: EU data is processed and stored in EU sinks only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// European Union / European Economic Area.
    Eu,
    /// Everywhere else.
    Other,
}

impl Region {
    /// Region of a buyer from their ISO country code (EU and EEA member states are `Eu`).
    pub fn of_country(country: &str) -> Region {
        // The EU/EEA states, and the parts of them with codes of their own: the EU's outermost
        // regions (Guadeloupe, French Guiana, Martinique, Reunion, Mayotte, Saint-Martin) and the
        // Aland Islands, which phone numbers (+590, +594, +596, +262, +358 18) name.
        const EU_EEA: [&str; 37] = [
            "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU",
            "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO", "GP", "GF", "MQ", "RE", "YT", "MF",
            "AX",
        ];
        if EU_EEA.contains(&country) {
            Region::Eu
        } else {
            Region::Other
        }
    }
}

macro_rules! channels {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Platforms and channels the gateway knows; a small fixed set, so it is safe as a metric label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Channel {
            $(#[doc = $doc] #[serde(rename = $name)] $variant,)*
        }

        impl Channel {
            /// Every channel, in declaration order.
            pub const ALL: &'static [Channel] = &[$(Channel::$variant),*];

            /// The channel's wire name (also its metric label).
            pub fn as_str(self) -> &'static str {
                match self { $(Channel::$variant => $name,)* }
            }
        }

        impl FromStr for Channel {
            type Err = UnknownChannel;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($name => Ok(Channel::$variant),)* _ => Err(UnknownChannel) }
            }
        }
    };
}

channels! {
    Generic => "generic", "Anything posted to the generic JSON API without a more specific channel.";
    WebForm => "web_form", "The seller's own web forms and independent site.";
    Email => "email", "E-mail (inbound parse services or IMAP).";
    Amazon => "amazon", "Amazon SP-API buyer messaging.";
    Ebay => "ebay", "eBay member messages.";
    Shopify => "shopify", "Shopify.";
    Shopee => "shopee", "Shopee.";
    TiktokShop => "tiktok_shop", "TikTok Shop.";
    Aliexpress => "aliexpress", "AliExpress.";
    Alibaba => "alibaba", "Alibaba.com.";
    Etsy => "etsy", "Etsy.";
    Whatsapp => "whatsapp", "WhatsApp Business (Cloud API).";
    Messenger => "messenger", "Facebook Messenger.";
    Instagram => "instagram", "Instagram direct messages.";
    Line => "line", "LINE.";
    Telegram => "telegram", "Telegram.";
    Rfq => "rfq", "B2B request-for-quotation sites.";
}

/// The name given is not one of [`Channel::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownChannel;

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
