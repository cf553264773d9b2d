//! The canonical inquiry envelope: the one shape every channel is normalized into.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Version of the [`Inquiry`] envelope; bumped on any incompatible change.
pub const ENVELOPE_VERSION: u32 = 1;

/// A buyer inquiry in canonical form, as stored, routed and published downstream.
///
/// Personal data (buyer name, e-mail) is not part of the envelope: the buyer is a pseudonym and the
/// original payload is kept apart, referenced by [`Inquiry::raw_ref`].
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
    /// Subject line, where the channel has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Message text.
    pub body: String,
    /// Order the inquiry refers to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Products the inquiry refers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub product_ids: Vec<String>,
    /// Free-form channel attributes passed through for routing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
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
    /// Where the original payload is kept (`embedded:raw/<id>` for the embedded store).
    pub raw_ref: String,
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
    /// Stable pseudonym for this buyer within the account (`bp_` + 32 hex digits).
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
        const EU_EEA: [&str; 30] = [
            "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU",
            "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
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
