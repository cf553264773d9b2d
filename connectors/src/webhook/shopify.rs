//! Shopify: what buyers write to a shop, from the webhooks Shopify sends an app.
//!
//! Shopify has no webhook (and no public API) for Shopify Inbox chats; chats and the contact form
//! reach the gateway by e-mail. What a buyer writes in the store itself arrives in webhooks:
//! - `orders/create`: the order `note` the buyer left at checkout, with the cart's
//!   `note_attributes` (gift messages, delivery wishes). After checkout only the shop's staff can
//!   change a note, so `orders/updated` is not read: a staff edit is not the buyer writing.
//! - `returns/request`: a buyer asks to return items, with a note per item (`customer_note`, up to
//!   300 characters) and the reason (`return_reason`, `return_reason_note`). One inquiry per
//!   return, in the order's conversation.
//!
//! Every other topic is acknowledged and ignored (the mandatory GDPR topics go to the
//! `shopify_compliance` endpoint). Docs followed: shopify.dev "Deliver webhooks through HTTPS"
//! and "Verify webhooks" (`X-Shopify-Hmac-Sha256` = base64 HMAC-SHA256 of the raw body with the
//! app's client secret), "Ignore duplicate webhooks" (`X-Shopify-Event-Id` names the event;
//! redeliveries repeat it), the REST Order resource and the `returns/request` topic
//! (`Return.status` REQUESTED) of the webhook topic reference.

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{verify_base64_body_hmac, Parsed, VerifyError, Webhook, WebhookRequest, WebhookSecrets};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

const SIGNATURE: &str = "x-shopify-hmac-sha256";
const TOPIC: &str = "x-shopify-topic";
const SHOP_DOMAIN: &str = "x-shopify-shop-domain";
const EVENT_ID: &str = "x-shopify-event-id";
const TRIGGERED_AT: &str = "x-shopify-triggered-at";

/// The Shopify connector; the URL's account is the shop's `*.myshopify.com` domain.
pub struct Shopify;

impl Webhook for Shopify {
    fn name(&self) -> &'static str {
        "shopify"
    }

    fn channel(&self) -> Channel {
        Channel::Shopify
    }

    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        _now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        verify_base64_body_hmac(request, secrets, SIGNATURE)
    }

    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError> {
        let topic = request.header(TOPIC).ok_or_else(|| {
            InputError::new(InputErrorCode::MissingField, "the X-Shopify-Topic header is missing").field(TOPIC)
        })?;
        // The domain header is not signed, but one app secret signs every shop's deliveries: a
        // delivery for another shop must not be filed under this one.
        if request.header(SHOP_DOMAIN).is_some_and(|domain| !domain.eq_ignore_ascii_case(account)) {
            return Err(InputError::new(
                InputErrorCode::InvalidValue,
                "the shop domain does not match the webhook url",
            )
            .field(SHOP_DOMAIN));
        }
        let mut parsed = Parsed::default();
        let draft = match topic {
            "orders/create" => {
                let order: Order = serde_json::from_slice(request.body).map_err(InputError::from_json)?;
                order_note(order, account)?
            }
            "returns/request" => {
                let request_body: Return = serde_json::from_slice(request.body).map_err(InputError::from_json)?;
                let fallback_time = request.header(TRIGGERED_AT).and_then(rfc3339).unwrap_or(context().received_at);
                return_request(request_body, account, fallback_time)?
            }
            _ => None,
        };
        let Some(mut draft) = draft else {
            parsed.ignored += 1;
            return Ok(parsed);
        };
        draft.attributes.insert("topic".to_owned(), topic.into());
        if let Some(event) = request.header(EVENT_ID) {
            draft.attributes.insert("shopify_event_id".to_owned(), event.into());
        }
        parsed.inquiries.push(draft.into_inquiry(&context()));
        Ok(parsed)
    }
}

/// The inquiry of an order's buyer note, `None` when the order has none.
fn order_note(order: Order, account: &str) -> Result<Option<Draft>, InputError> {
    let note = order.note.as_deref().map(str::trim).unwrap_or_default();
    if note.is_empty() {
        return Ok(None);
    }
    let occurred_at = order.created_at.as_deref().and_then(rfc3339).ok_or_else(|| {
        InputError::new(InputErrorCode::InvalidValue, "the order has no valid created_at").field("created_at")
    })?;
    let Some(buyer) = order.customer.as_ref().and_then(|c| c.identity()).or_else(|| email_identity(&order.email))
    else {
        return Ok(None); // a note nobody can be answered on (no customer, no e-mail)
    };
    let mut body = note.to_owned();
    for attribute in order.note_attributes.iter().filter(|a| !a.value_text().is_empty()) {
        body.push_str(&format!("\n{}: {}", attribute.name, attribute.value_text()));
    }
    let order_id = order.id.to_string();
    let mut draft = Draft::message(
        Channel::Shopify,
        account,
        format!("order:{order_id}:note"),
        format!("order:{order_id}"),
        buyer.identity,
        body,
        occurred_at,
    );
    draft.platform_user_id = buyer.user_id;
    draft.buyer_name = order.customer.as_ref().and_then(Customer::name);
    draft.buyer_email = order.email.filter(|e| !e.is_empty()).or(buyer.email);
    draft.country = [&order.shipping_address, &order.billing_address]
        .into_iter()
        .flatten()
        .chain(order.customer.as_ref().and_then(|c| c.default_address.as_ref()))
        .find_map(Address::country);
    draft.language = order.customer_locale.filter(|l| valid_language_tag(l));
    draft.order_id = Some(order_id);
    draft.product_ids = order.line_items.iter().filter_map(|l| l.product_id).map(|p| p.to_string()).collect();
    draft.product_ids.sort();
    draft.product_ids.dedup();
    if let Some(name) = order.name {
        draft.attributes.insert("order_name".to_owned(), name.into());
    }
    Ok(Some(draft))
}

/// The inquiry of a return request. Its buyer is the customer where the payload names one, else
/// the order's buyer (`order:<id>`), to be matched with the order's conversation.
fn return_request(request: Return, account: &str, fallback_time: OffsetDateTime) -> Result<Option<Draft>, InputError> {
    let order_buyer = || {
        let order = request.order.as_ref()?;
        Some(BuyerIdentity { identity: format!("order:{}", order.id), user_id: None, email: None })
    };
    let Some(buyer) = request.customer.as_ref().and_then(Customer::identity).or_else(order_buyer) else {
        return Ok(None); // neither a customer nor an order: nobody to answer
    };
    let notes: Vec<&str> = request
        .return_line_items
        .iter()
        .flat_map(|item| [item.customer_note.as_deref(), item.return_reason_note.as_deref()])
        .flatten()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let reasons: Vec<String> =
        request.return_line_items.iter().filter_map(|item| item.return_reason.as_ref().and_then(reason_text)).collect();
    let body = if notes.is_empty() {
        format!(
            "[return requested: {}]",
            if reasons.is_empty() { "no reason given".to_owned() } else { reasons.join(", ") }
        )
    } else {
        notes.join("\n")
    };
    let occurred_at = request.created_at.as_deref().and_then(rfc3339).unwrap_or(fallback_time);
    let order_id = request.order.as_ref().map(|o| o.id.to_string());
    let mut draft = Draft::message(
        Channel::Shopify,
        account,
        format!("return:{}", request.id),
        order_id.as_ref().map(|o| format!("order:{o}")).unwrap_or_else(|| format!("return:{}", request.id)),
        buyer.identity,
        body,
        occurred_at,
    );
    draft.platform_user_id = buyer.user_id;
    draft.buyer_name = request.customer.as_ref().and_then(Customer::name);
    draft.buyer_email = buyer.email;
    draft.country = request.customer.as_ref().and_then(|c| c.default_address.as_ref()).and_then(Address::country);
    draft.order_id = order_id;
    draft.attributes.insert("return_reasons".to_owned(), reasons.into());
    if let Some(name) = request.name {
        draft.attributes.insert("return_name".to_owned(), name.into());
    }
    Ok(Some(draft))
}

/// Who wrote: the Shopify customer id where there is one, else the e-mail address.
struct BuyerIdentity {
    identity: String,
    user_id: Option<String>,
    email: Option<String>,
}

fn email_identity(email: &Option<String>) -> Option<BuyerIdentity> {
    let email = email.as_deref().map(str::trim).filter(|e| !e.is_empty())?;
    Some(BuyerIdentity {
        identity: format!("email:{}", email.to_lowercase()),
        user_id: None,
        email: Some(email.to_owned()),
    })
}

fn rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok().map(|t| t.to_offset(time::UtcOffset::UTC))
}

/// A language tag as Shopify's `customer_locale` gives it (`en`, `pt-BR`): letters, digits and
/// hyphens, starting with a 2-3 letter language.
fn valid_language_tag(tag: &str) -> bool {
    let primary = tag.split('-').next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && tag.len() <= 35
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A return reason as text: the REST enum string (`unwanted`), or the name of a reason definition
/// (API 2026-01 and later give an object).
fn reason_text(reason: &serde_json::Value) -> Option<String> {
    let text = match reason {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.get("name").or_else(|| o.get("handle"))?.as_str()?.to_owned(),
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}

#[derive(Deserialize)]
struct Order {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    note_attributes: Vec<NoteAttribute>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    customer_locale: Option<String>,
    #[serde(default)]
    customer: Option<Customer>,
    #[serde(default)]
    shipping_address: Option<Address>,
    #[serde(default)]
    billing_address: Option<Address>,
    #[serde(default)]
    line_items: Vec<LineItem>,
}

#[derive(Deserialize)]
struct NoteAttribute {
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: serde_json::Value,
}

impl NoteAttribute {
    fn value_text(&self) -> String {
        match &self.value {
            serde_json::Value::String(s) => s.trim().to_owned(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Customer {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    default_address: Option<Address>,
}

impl Customer {
    fn identity(&self) -> Option<BuyerIdentity> {
        match self.id {
            Some(id) => Some(BuyerIdentity {
                identity: format!("id:{id}"),
                user_id: Some(id.to_string()),
                email: self.email.clone().filter(|e| !e.is_empty()),
            }),
            None => email_identity(&self.email),
        }
    }

    fn name(&self) -> Option<String> {
        let name = [&self.first_name, &self.last_name]
            .into_iter()
            .flatten()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        (!name.is_empty()).then_some(name)
    }
}

#[derive(Deserialize)]
struct Address {
    #[serde(default)]
    country_code: Option<String>,
}

impl Address {
    fn country(&self) -> Option<String> {
        self.country_code.as_deref().filter(|c| c.len() == 2).map(str::to_ascii_uppercase)
    }
}

#[derive(Deserialize)]
struct LineItem {
    #[serde(default)]
    product_id: Option<u64>,
}

#[derive(Deserialize)]
struct Return {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    order: Option<OrderRef>,
    #[serde(default)]
    customer: Option<Customer>,
    #[serde(default)]
    return_line_items: Vec<ReturnLineItem>,
}

#[derive(Deserialize)]
struct OrderRef {
    id: u64,
}

#[derive(Deserialize)]
struct ReturnLineItem {
    #[serde(default)]
    customer_note: Option<String>,
    #[serde(default)]
    return_reason: Option<serde_json::Value>,
    #[serde(default)]
    return_reason_note: Option<String>,
}
