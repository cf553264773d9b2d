//! The generic JSON connector: `POST /v1/inquiries` and the NDJSON batch endpoint.
//!
//! Pure: no clock, no randomness, no I/O. Everything the gateway decides (receive time, trace id)
//! comes in through [`NormalizeContext`] and the id derives from the message
//! ([`crate::stable_id`]), so fixtures give golden results.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{InputError, InputErrorCode};
use crate::inquiry::{Channel, Consent, Inquiry};
use crate::{Draft, NormalizeContext};

/// Longest id (account, external ids, order and product ids) accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest subject accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;

/// One inquiry in the generic JSON shape (see `docs/openapi.yaml`, schema `GenericInquiry`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericInquiry {
    /// Channel name, one of [`Channel::ALL`].
    pub channel: String,
    /// Seller account (shop) id.
    pub account: String,
    /// The platform's message id.
    pub external_id: String,
    /// The platform's conversation id; defaults to `external_id`.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// The buyer as the platform describes them.
    #[serde(default)]
    pub buyer: GenericBuyer,
    /// Subject line.
    #[serde(default)]
    pub subject: Option<String>,
    /// Message text.
    pub body: String,
    /// When the buyer sent the message (RFC 3339).
    pub occurred_at: String,
    /// Order reference.
    #[serde(default)]
    pub order_id: Option<String>,
    /// Product references.
    #[serde(default)]
    pub product_ids: Vec<String>,
    /// Free-form attributes passed through to routing.
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// What the buyer consented to with this message (a web form's checkboxes).
    #[serde(default)]
    pub consent: Option<GenericConsent>,
}

/// A buyer's consent in the generic JSON shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericConsent {
    /// Purposes consented to: 1 to [`MAX_CONSENT_PURPOSES`] names of lower-case letters, digits,
    /// `_`, `-`, `.` and `:`, at most 64 bytes each.
    pub purposes: Vec<String>,
    /// Version of the notice the buyer was shown (at most 128 bytes).
    pub notice: String,
    /// When the buyer gave it (RFC 3339); defaults to `occurred_at`.
    #[serde(default)]
    pub given_at: Option<String>,
}

/// Most purposes one consent names.
pub const MAX_CONSENT_PURPOSES: usize = 16;

/// The buyer in the generic JSON shape; everything but country and language is personal data,
/// sealed per data subject by the gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericBuyer {
    /// The platform's id for the buyer.
    #[serde(default)]
    pub id: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// Phone number.
    #[serde(default)]
    pub phone: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default)]
    pub country: Option<String>,
    /// BCP 47 language tag.
    #[serde(default)]
    pub language: Option<String>,
}

/// Parses one generic JSON document and normalizes it into an [`Inquiry`].
pub fn normalize(raw: &[u8], ctx: &NormalizeContext<'_>) -> Result<Inquiry, InputError> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        InputError::new(InputErrorCode::InvalidUtf8, format!("body is not valid utf-8 at byte {}", e.valid_up_to()))
    })?;
    // serde's derived structs also accept positional arrays; the API takes objects only.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => InputError::new(InputErrorCode::InvalidType, "wrong json type: expected an object"),
            Err(err) => InputError::from_json(err),
        });
    }
    let input: GenericInquiry = serde_json::from_str(text).map_err(InputError::from_json)?;
    from_generic(input, ctx)
}

/// Normalizes an already parsed [`GenericInquiry`].
pub fn from_generic(input: GenericInquiry, ctx: &NormalizeContext<'_>) -> Result<Inquiry, InputError> {
    let channel: Channel = input.channel.parse().map_err(|_| {
        InputError::new(InputErrorCode::UnknownChannel, "channel is not a known channel name").field("channel")
    })?;
    let account = required_id("account", input.account)?;
    let message_id = required_id("external_id", input.external_id)?;
    let conversation_id = match input.conversation_id {
        Some(c) => required_id("conversation_id", c)?,
        None => message_id.clone(),
    };
    let occurred_at = OffsetDateTime::parse(&input.occurred_at, &Rfc3339).map_err(|_| {
        InputError::new(InputErrorCode::InvalidValue, "occurred_at is not an RFC 3339 timestamp").field("occurred_at")
    })?;
    if occurred_at > ctx.received_at + crate::MAX_CLOCK_SKEW {
        return Err(InputError::new(InputErrorCode::InvalidValue, "occurred_at is in the future").field("occurred_at"));
    }
    if input.body.trim().is_empty() {
        return Err(InputError::new(InputErrorCode::InvalidValue, "body is empty").field("body"));
    }
    if let Some(subject) = &input.subject {
        if subject.len() > MAX_SUBJECT_LEN {
            return Err(InputError::new(InputErrorCode::InvalidValue, "subject is too long").field("subject"));
        }
    }
    let order_id = input.order_id.map(|o| required_id("order_id", o)).transpose()?;
    let product_ids =
        input.product_ids.into_iter().map(|p| required_id("product_ids", p)).collect::<Result<Vec<_>, _>>()?;
    let country = input.buyer.country.as_deref().map(normalize_country).transpose()?;
    let language = input.buyer.language.as_deref().map(normalize_language).transpose()?;
    let buyer_identity = buyer_identity(&input.buyer, &conversation_id);
    // A conversation named after the buyer (a chat id that is their user id, e-mail or phone) is
    // personal data: the gateway puts the buyer's pseudonym in its place.
    let conversation_is_buyer = [&input.buyer.id, &input.buyer.email, &input.buyer.phone]
        .into_iter()
        .flatten()
        .any(|value| value.trim() == conversation_id.trim());
    let conversation_id = if conversation_is_buyer { String::new() } else { conversation_id };
    let consent = input.consent.map(|c| consent(c, occurred_at, ctx.received_at)).transpose()?;
    let present = |value: Option<String>| value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let draft = Draft {
        channel,
        account,
        message_id,
        conversation_id,
        buyer_identity,
        buyer_name: present(input.buyer.name),
        buyer_email: present(input.buyer.email),
        buyer_phone: present(input.buyer.phone),
        platform_user_id: present(input.buyer.id),
        conversation_is_buyer,
        country,
        language,
        subject: input.subject,
        body: input.body,
        order_id,
        product_ids,
        attributes: input.attributes,
        occurred_at,
    };
    let mut inquiry = draft.into_inquiry(ctx);
    inquiry.consent = consent;
    Ok(inquiry)
}

/// True for a consent purpose's name: 1 to 64 bytes of lower-case letters, digits, `_`, `-`, `.`
/// and `:`.
pub fn is_purpose_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.:".contains(&b))
}

/// Checks a reported consent: known-shape purpose names, a notice version, a time that is not
/// in the future (five minutes of clock skew allowed).
fn consent(
    input: GenericConsent,
    occurred_at: OffsetDateTime,
    received_at: OffsetDateTime,
) -> Result<Consent, InputError> {
    let invalid =
        |field: &'static str, message: &str| InputError::new(InputErrorCode::InvalidValue, message).field(field);
    if input.purposes.is_empty() || input.purposes.len() > MAX_CONSENT_PURPOSES {
        return Err(invalid("consent.purposes", "consent.purposes must name 1 to 16 purposes"));
    }
    if !input.purposes.iter().all(|p| is_purpose_name(p)) {
        return Err(invalid(
            "consent.purposes",
            "a purpose is 1 to 64 bytes of lower-case letters, digits, `_`, `-`, `.` and `:`",
        ));
    }
    let notice = input.notice.trim();
    if notice.is_empty() || notice.len() > 128 || notice.chars().any(char::is_control) {
        return Err(invalid("consent.notice", "consent.notice is the notice's version: 1 to 128 printable bytes"));
    }
    let given_at = match input.given_at {
        Some(at) => OffsetDateTime::parse(&at, &Rfc3339)
            .map_err(|_| invalid("consent.given_at", "consent.given_at is not an RFC 3339 timestamp"))?,
        None => occurred_at,
    };
    if given_at > received_at + crate::MAX_CLOCK_SKEW {
        return Err(invalid("consent.given_at", "consent.given_at is in the future"));
    }
    let mut purposes = input.purposes;
    purposes.sort();
    purposes.dedup();
    Ok(Consent { purposes, notice: notice.to_owned(), given_at: given_at.to_offset(time::UtcOffset::UTC) })
}

fn required_id(field: &'static str, value: String) -> Result<String, InputError> {
    if value.trim().is_empty() {
        return Err(InputError::new(InputErrorCode::InvalidValue, format!("{field} is empty")).field(field));
    }
    if value.len() > MAX_ID_LEN {
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!("{field} is longer than {MAX_ID_LEN} bytes"),
        )
        .field(field));
    }
    Ok(value)
}

/// The identity a data subject is found by: the e-mail (what subject requests name, and the same
/// person on every channel), else the platform's buyer id, else the conversation.
fn buyer_identity(buyer: &GenericBuyer, conversation_id: &str) -> String {
    match (&buyer.email, &buyer.id) {
        (Some(email), _) if !email.trim().is_empty() => format!("email:{}", email.trim().to_lowercase()),
        (_, Some(id)) if !id.trim().is_empty() => format!("id:{}", id.trim()),
        _ => format!("conversation:{conversation_id}"),
    }
}

fn normalize_country(country: &str) -> Result<String, InputError> {
    if country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(country.to_ascii_uppercase())
    } else {
        Err(InputError::new(InputErrorCode::InvalidValue, "buyer.country is not an ISO 3166-1 alpha-2 code")
            .field("buyer.country"))
    }
}

/// Longest language tag accepted. RFC 5646 asks for at least 35 characters; every tag a buyer's
/// client sends is far shorter, and a routing decision carries the tag (at most 256 bytes).
const MAX_LANGUAGE_TAG: usize = 64;

pub(crate) fn normalize_language(language: &str) -> Result<String, InputError> {
    if language.len() > MAX_LANGUAGE_TAG {
        return Err(InputError::new(
            InputErrorCode::InvalidValue,
            format!("buyer.language is longer than {MAX_LANGUAGE_TAG} characters"),
        )
        .field("buyer.language"));
    }
    let mut parts = language.split(['-', '_']);
    let primary = parts.next().unwrap_or_default();
    let primary_ok = (2..=3).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_alphabetic());
    let rest: Vec<&str> = parts.collect();
    let rest_ok = rest.iter().all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !primary_ok || !rest_ok {
        return Err(InputError::new(InputErrorCode::InvalidValue, "buyer.language is not a BCP 47 language tag")
            .field("buyer.language"));
    }
    let mut tag = primary.to_ascii_lowercase();
    for part in rest {
        tag.push('-');
        // Region subtags are conventionally upper case (zh-CN), scripts title case (zh-Hant).
        match part.len() {
            2 => tag.push_str(&part.to_ascii_uppercase()),
            4 => {
                tag.push_str(&part[..1].to_ascii_uppercase());
                tag.push_str(&part[1..].to_ascii_lowercase());
            }
            _ => tag.push_str(&part.to_ascii_lowercase()),
        }
    }
    Ok(tag)
}
