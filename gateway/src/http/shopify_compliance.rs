//! Shopify's mandatory compliance webhooks (`customers/data_request`, `customers/redact`,
//! `shop/redact`) at `POST /webhooks/shopify_compliance/{shop domain}`: verified by
//! `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the raw body with the app's client secret; a
//! bad signature is answered 401, as Shopify requires), then turned into data subject requests.
//! See shopify.dev/docs/apps/build/compliance/privacy-law-compliance.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::api::{store_error, ApiState};
use super::error::{json_response, ApiError};
use super::HttpResponse;
use crate::compliance::requests::{Jurisdiction, RequestError, RequestKind, RequestStatus, SubjectSpec};

/// The connector name in `[[webhooks]]`.
pub const CONNECTOR: &str = "shopify_compliance";

#[derive(Deserialize)]
struct Payload {
    shop_domain: String,
    #[serde(default)]
    customer: Option<Customer>,
    /// Only in `customers/redact`: the orders whose data goes.
    #[serde(default)]
    orders_to_redact: Option<serde_json::Value>,
    /// Only in `customers/data_request`: the orders whose data is asked for.
    #[serde(default)]
    orders_requested: Option<serde_json::Value>,
    /// Only in `customers/data_request`.
    #[serde(default)]
    data_request: Option<serde_json::Value>,
}

impl Payload {
    /// False when the body is not of the kind `topic` names. The signature covers the body but
    /// not `X-Shopify-Topic`: without this, a data request's body sent again under
    /// `customers/redact` would erase the customer. Unknown topics are refused later.
    fn fits(&self, topic: &str) -> bool {
        let (customer, orders, request) =
            (self.customer.is_some(), self.orders_to_redact.is_some(), self.data_request.is_some());
        match topic {
            "customers/data_request" => customer && request && !orders,
            "customers/redact" => customer && orders && !request,
            "shop/redact" => !customer && !orders && !request,
            _ => true,
        }
    }
}

#[derive(Deserialize)]
struct Customer {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    email: Option<String>,
}

/// A Shopify id as text (sent as a number, sometimes as a string).
fn id_text(id: &serde_json::Value) -> Option<String> {
    match id {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Verifies and handles one compliance webhook for `shop`.
pub async fn handle(
    state: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
    shop: &str,
    secret: &str,
) -> Result<HttpResponse, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", message.to_owned());
    let signature = headers
        .get("x-shopify-hmac-sha256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| BASE64.decode(v.trim()).ok())
        .ok_or_else(|| unauthorized("X-Shopify-Hmac-Sha256 is missing or not base64"))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, body, &signature).map_err(|_| unauthorized("the signature does not match the body"))?;
    let topic = headers.get("x-shopify-topic").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let payload: Payload = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", "not a Shopify compliance payload")
    })?;
    if payload.shop_domain != shop {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "shop_domain does not match the url",
        )
        .field_name("shop_domain"));
    }
    if !payload.fits(&topic) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "the payload is not of the kind X-Shopify-Topic names",
        ));
    }
    let customer = payload.customer.unwrap_or(Customer { id: None, email: None });
    let user_id = customer.id.as_ref().and_then(id_text);
    // A return requested without a customer is filed under its order (`order:<id>`): the
    // request's orders find it.
    let orders = payload.orders_to_redact.as_ref().or(payload.orders_requested.as_ref());
    let identities: Vec<String> = orders
        .and_then(|orders| orders.as_array())
        .into_iter()
        .flatten()
        .filter_map(id_text)
        .map(|order| format!("order:{order}"))
        .collect();
    let scoped = user_id.is_some() || !identities.is_empty();
    let spec = SubjectSpec {
        email: customer.email,
        channel: scoped.then(|| "shopify".to_owned()),
        account: scoped.then(|| shop.to_owned()),
        user_id,
        pseudonym: None,
        pseudonyms: Vec::new(),
        identities,
    };
    // Shopify redelivers until it gets a 200; a redelivery carries the same event id and must not
    // open (or carry out) the request twice.
    let event = headers
        .get("x-shopify-event-id")
        .or_else(|| headers.get("x-shopify-webhook-id"))
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128);
    // A shop's redaction is told apart by its source (an operator carries it out).
    let origin = match topic.as_str() {
        "shop/redact" => format!("shopify:{shop}:shop_redact"),
        _ => format!("shopify:{shop}"),
    };
    let source = match event {
        Some(event) => format!("{origin}:event:{event}"),
        None => origin,
    };
    let by = format!("webhook:{CONNECTOR}/{shop}");
    let requests = &state.requests;
    if event.is_some() {
        let earlier = requests.list().map_err(store_error)?.into_iter().find(|r| r.source == source);
        if let Some(mut earlier) = earlier {
            // An erasure left open by a failed attempt (a 5xx that made Shopify redeliver) is
            // carried out now, under its id.
            if topic == "customers/redact"
                && earlier.kind == RequestKind::Erasure
                && earlier.status == RequestStatus::Open
            {
                match requests.erase_again(earlier.clone(), &spec).await {
                    Ok(done) => earlier = done,
                    Err(RequestError::NoSubject) => {} // recorded open on purpose
                    Err(err) => return Err(super::api::request_error(err)),
                }
            }
            return Ok(json_response(
                StatusCode::OK,
                &json!({ "request_id": earlier.id, "status": earlier.status, "duplicate": true }),
            ));
        }
    }
    // Shopify applies the same rights everywhere; the GDPR's deadlines are the strictest common ones.
    let record = match topic.as_str() {
        "customers/data_request" => requests.open(RequestKind::Export, &spec, Jurisdiction::Gdpr, &source, &by).await,
        "customers/redact" => match requests.erase(&spec, Jurisdiction::Gdpr, &source, &by).await {
            Err(RequestError::NoSubject) => {
                requests.open(RequestKind::Erasure, &spec, Jurisdiction::Gdpr, &source, &by).await
            }
            other => other,
        },
        // Redacting a whole shop is not automated: recorded open, for an operator (docs/compliance.md).
        "shop/redact" => {
            requests.open(RequestKind::Erasure, &SubjectSpec::default(), Jurisdiction::Gdpr, &source, &by).await
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_topic",
                "X-Shopify-Topic is not a compliance topic",
            ))
        }
    }
    .map_err(super::api::request_error)?;
    Ok(json_response(StatusCode::OK, &json!({ "request_id": record.id, "status": record.status })))
}
