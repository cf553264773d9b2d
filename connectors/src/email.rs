//! E-mail: one raw RFC 5322 message (as an IMAP mailbox holds it) into a canonical inquiry.
//!
//! MIME, transfer encodings and charsets are decoded by Stalwart's `mail-parser`. The message id
//! is the Message-ID (a hash of the raw bytes when there is none); the conversation is the
//! thread's root: the first id of References, else In-Reply-To, else the message's own id. The
//! buyer is the From address (`email:<address>` as identity), the text the first text/plain part
//! (HTML converted to text when there is none), the time the Date header (the IMAP INTERNALDATE
//! when it is missing or invalid).
//!
//! Platform routes, recognized by the sender's domain and tagged in `attributes.source`:
//! - Amazon buyer-seller messaging relays the buyer from `<alias>@marketplace.amazon.<tld>`: the
//!   order id (`123-1234567-1234567`) is taken from the subject or body, the country from the
//!   marketplace's domain.
//! - Etsy and Shopify contact-form notifications come from the platform with the buyer in
//!   Reply-To; other platform mail (sales, payouts) has no buyer and is ignored.
//!
//! Messages that are not from a buyer (auto-replies, out-of-office, bounces) are ignored.

use std::collections::BTreeMap;

use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{InputError, InputErrorCode};
use crate::inquiry::{Channel, Inquiry};
use crate::{Draft, NormalizeContext};

/// What one message became.
#[derive(Debug)]
pub enum Parsed {
    /// A buyer's message.
    Inquiry(Box<Inquiry>),
    /// Not a buyer's message: acknowledged and skipped.
    Ignored(Ignored),
}

/// Why a message is not a buyer inquiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// An automatic reply (`Auto-Submitted`, `X-Autoreply`, `Precedence: bulk` ...).
    AutoReply,
    /// A delivery status notification (bounce).
    Bounce,
    /// Mail from a platform that carries no buyer (Etsy or Shopify without a Reply-To buyer).
    PlatformNotice,
}

impl Ignored {
    /// The reason as a short label.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::AutoReply => "auto_reply",
            Ignored::Bounce => "bounce",
            Ignored::PlatformNotice => "platform_notice",
        }
    }
}

/// Parses one raw message received in the mailbox `account`. `internal_date` is the IMAP
/// INTERNALDATE, the time used when the Date header is missing or invalid.
pub fn parse(
    raw: &[u8],
    account: &str,
    internal_date: Option<OffsetDateTime>,
    context: &NormalizeContext<'_>,
) -> Result<Parsed, InputError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| InputError::new(InputErrorCode::InvalidValue, "not an RFC 5322 message"))?;
    if let Some(reason) = automated(&message) {
        return Ok(Parsed::Ignored(reason));
    }
    let from = first_address(message.from())
        .ok_or_else(|| InputError::new(InputErrorCode::MissingField, "no From address").field("from"))?;
    let from_domain = domain(&from.1).to_owned();

    let mut attributes = BTreeMap::new();
    let mut buyer = from;
    let mut country = None;
    let platform = ["etsy.com", "shopify.com"].into_iter().find(|p| domain_is(&from_domain, p));
    if let Some(platform) = platform {
        // A contact form relayed by the platform: the buyer is in Reply-To.
        match first_address(message.reply_to()).filter(|(_, address)| !domain_is(domain(address), platform)) {
            Some(reply_to) => buyer = reply_to,
            None => return Ok(Parsed::Ignored(Ignored::PlatformNotice)),
        }
        let source = platform.trim_end_matches(".com");
        attributes.insert("source".to_owned(), serde_json::Value::from(source));
    }
    let amazon = from_domain.strip_prefix("marketplace.amazon.");
    if let Some(tld) = amazon {
        attributes.insert("source".to_owned(), serde_json::Value::from("amazon"));
        country = amazon_country(tld).map(str::to_owned);
        // Amazon names the relayed buyer "Name - Amazon Marketplace".
        buyer.0 = buyer.0.map(|n| n.trim_end_matches("- Amazon Marketplace").trim().to_owned());
    }

    let subject = message.subject().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let body = message.body_text(0).map(|b| normalize_text(&b)).unwrap_or_default();
    // Message ids name the sender's mail host (often the buyer's own domain): hashed as the
    // inbound-parse webhooks hash them, so the same e-mail gets the same ids either way.
    let hashed = crate::webhook::hashed_message_id;
    let message_id = message
        .message_id()
        .map(clean_id)
        .filter(|id| !id.is_empty())
        .map(|id| hashed(&id))
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(&Sha256::digest(raw)[..16])));
    let conversation_id = ids(message.references())
        .into_iter()
        .next()
        .or_else(|| ids(message.in_reply_to()).into_iter().next())
        .map(|id| hashed(&id))
        .unwrap_or_else(|| message_id.clone());
    let occurred_at = message
        .date()
        .filter(|d| d.is_valid())
        .and_then(|d| OffsetDateTime::from_unix_timestamp(d.to_timestamp()).ok())
        .or(internal_date)
        .ok_or_else(|| InputError::new(InputErrorCode::MissingField, "no Date and no INTERNALDATE").field("date"))?;
    let order_id = if amazon.is_some() {
        subject.as_deref().and_then(amazon_order_id).or_else(|| amazon_order_id(&body))
    } else {
        None
    };

    let (name, email) = buyer;
    let mut draft = Draft::message(
        Channel::Email,
        account,
        message_id,
        conversation_id,
        format!("email:{email}"),
        body,
        occurred_at,
    );
    draft.buyer_name = name.filter(|n| !n.is_empty());
    draft.buyer_email = Some(email);
    draft.subject = subject;
    draft.country = country;
    draft.order_id = order_id;
    draft.attributes = attributes;
    Ok(Parsed::Inquiry(Box::new(draft.into_inquiry(context))))
}

/// Why an automated message is not a buyer's, if it is one.
fn automated(message: &Message<'_>) -> Option<Ignored> {
    let header = |name: &str| {
        message
            .headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| header_text(h.value()).trim().to_ascii_lowercase())
    };
    let content_type = message.root_part().content_type();
    let report = content_type.is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart") && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    let from_daemon = first_address(message.from()).is_some_and(|(_, address)| {
        let local = address.split('@').next().unwrap_or_default();
        local == "mailer-daemon" || local == "postmaster"
    });
    if report || from_daemon {
        return Some(Ignored::Bounce);
    }
    let auto_submitted = header("auto-submitted").is_some_and(|v| !v.is_empty() && v != "no");
    let precedence = header("precedence").is_some_and(|v| ["bulk", "junk", "list", "auto_reply"].contains(&v.as_str()));
    if auto_submitted || precedence || header("x-autoreply").is_some() || header("x-autorespond").is_some() {
        return Some(Ignored::AutoReply);
    }
    None
}

/// The text of a header parsed as unstructured text (or a list of it).
fn header_text(value: &HeaderValue<'_>) -> String {
    match value {
        HeaderValue::Text(text) => text.to_string(),
        HeaderValue::TextList(list) => list.join(" "),
        _ => String::new(),
    }
}

/// The first (name, lower-cased address) of an address header.
fn first_address(address: Option<&Address<'_>>) -> Option<(Option<String>, String)> {
    let addr = address?.first()?;
    let email = addr.address()?.trim().to_lowercase();
    email.contains('@').then(|| (addr.name().map(|n| n.trim().to_owned()), email))
}

fn domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// `domain` is `base` or one of its subdomains.
fn domain_is(domain: &str, base: &str) -> bool {
    domain == base || domain.strip_suffix(base).is_some_and(|rest| rest.ends_with('.'))
}

/// Message ids of References or In-Reply-To, in order, without angle brackets.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => id.split_whitespace().map(clean_id).filter(|i| !i.is_empty()).collect(),
        HeaderValue::TextList(list) => list.iter().map(|id| clean_id(id)).filter(|i| !i.is_empty()).collect(),
        _ => Vec::new(),
    }
}

fn clean_id(id: &str) -> String {
    id.trim().trim_start_matches('<').trim_end_matches('>').trim().to_owned()
}

/// Line ends as `\n`, trailing blanks and blank lines at both ends removed.
fn normalize_text(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim_matches('\n').to_owned()
}

/// The country of an Amazon marketplace, by the domain after `marketplace.amazon.`.
fn amazon_country(tld: &str) -> Option<&'static str> {
    Some(match tld {
        "com" => "US",
        "ca" => "CA",
        "com.mx" => "MX",
        "com.br" => "BR",
        "co.uk" => "GB",
        "de" => "DE",
        "fr" => "FR",
        "it" => "IT",
        "es" => "ES",
        "nl" => "NL",
        "se" => "SE",
        "pl" => "PL",
        "com.be" => "BE",
        "ie" => "IE",
        "com.tr" => "TR",
        "co.jp" => "JP",
        "com.au" => "AU",
        "in" => "IN",
        "sg" => "SG",
        "ae" => "AE",
        "sa" => "SA",
        _ => return None,
    })
}

/// The first Amazon order id (`ddd-ddddddd-ddddddd`) in `text`, not part of a longer number.
fn amazon_order_id(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let shape = |at: usize| {
        let candidate = bytes.get(at..at + 19)?;
        let ok =
            candidate.iter().enumerate().all(|(i, b)| if i == 3 || i == 11 { *b == b'-' } else { b.is_ascii_digit() });
        let bounded = |b: Option<&u8>| b.is_none_or(|b| !b.is_ascii_digit() && *b != b'-');
        (ok && bounded(at.checked_sub(1).and_then(|i| bytes.get(i))) && bounded(bytes.get(at + 19)))
            .then(|| text[at..at + 19].to_owned())
    };
    (0..bytes.len()).find_map(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_are_found_only_in_their_exact_shape() {
        assert_eq!(amazon_order_id("Order 302-1234567-7654321 late").as_deref(), Some("302-1234567-7654321"));
        assert_eq!(amazon_order_id("(#028-7654321-1234567)").as_deref(), Some("028-7654321-1234567"));
        assert_eq!(amazon_order_id("1302-1234567-7654321"), None);
        assert_eq!(amazon_order_id("302-1234567-76543210"), None);
        assert_eq!(amazon_order_id("302-123456-7654321"), None);
        assert_eq!(amazon_order_id("Bestellung für 302-1234567-7654321").as_deref(), Some("302-1234567-7654321"));
    }

    #[test]
    fn platform_domains_match_themselves_and_subdomains_only() {
        assert!(domain_is("etsy.com", "etsy.com"));
        assert!(domain_is("mail.etsy.com", "etsy.com"));
        assert!(!domain_is("notetsy.com", "etsy.com"));
    }
}
