//! Push connectors: platform webhooks, verified by the platform's signature over the raw body
//! before anything is parsed, then normalized into canonical inquiries.
//!
//! Everything here is pure: the request, the account's secrets, the current time and the
//! normalization context come in as arguments, so each connector is golden-tested on fixtures. Adding a
//! connector: one module implementing [`Webhook`], one line in [`REGISTRY`], fixtures under
//! `connectors/tests/fixtures/webhooks/<name>/`, and a config example.

mod ebay;
mod email;
mod line;
mod mailgun;
mod meta;
mod sendgrid;
mod shopee;
mod shopify;
mod telegram;
mod tiktok;
mod webform;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::error::InputError;
use crate::inquiry::{Channel, Inquiry};
use crate::NormalizeContext;

/// Every push connector, by name: the `{connector}` of `/webhooks/{connector}/{account}`.
pub const REGISTRY: &[&dyn Webhook] = &[
    &meta::WHATSAPP,
    &meta::MESSENGER,
    &meta::INSTAGRAM,
    &line::Line,
    &telegram::Telegram,
    &tiktok::TiktokShop,
    &webform::WebForm,
    &shopee::Shopee,
    &mailgun::Mailgun,
    &sendgrid::SendGrid,
    &ebay::Ebay,
    &shopify::Shopify,
];

/// The connector registered under `name`.
pub fn find(name: &str) -> Option<&'static dyn Webhook> {
    REGISTRY.iter().copied().find(|w| w.name() == name)
}

/// A webhook request as received: header names in lower case.
#[derive(Debug, Clone, Default)]
pub struct WebhookRequest<'a> {
    /// Header (name, value) pairs, names lower case.
    pub headers: Vec<(String, String)>,
    /// The query string (without `?`).
    pub query: &'a str,
    /// The raw body, exactly as received.
    pub body: &'a [u8],
}

impl WebhookRequest<'_> {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name` (percent-decoding `%XX` and `+`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }
}

/// The secrets of one (connector, account), from config.
#[derive(Clone, Copy, Default)]
pub struct WebhookSecrets<'a> {
    /// The signing secret (app secret, channel secret, shared key).
    pub secret: &'a str,
    /// The app's public key, where the platform signs it too (TikTok Shop's `app_key`).
    pub app_key: Option<&'a str>,
    /// Token the platform echoes in its subscription handshake (Meta's `hub.verify_token`, eBay's
    /// verification token).
    pub verify_token: Option<&'a str>,
    /// The full public URL of this endpoint as registered with the platform, where the platform
    /// signs it (Shopee) or hashes it into its handshake (eBay).
    pub endpoint_url: Option<&'a str>,
    /// The platform's public key for signature checks: SendGrid's base64 SubjectPublicKeyInfo (from
    /// config), eBay's PEM (fetched by the gateway for [`Webhook::key_id`]).
    pub public_key: Option<&'a str>,
}

/// Why a webhook was refused before parsing. The code is the `reason` metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature header is absent.
    #[error("signature header {0} is missing")]
    MissingSignature(&'static str),
    /// The signature header is not in the platform's format.
    #[error("signature header {0} is malformed")]
    MalformedSignature(&'static str),
    /// The signature does not match the body.
    #[error("signature does not match")]
    BadSignature,
    /// The signed timestamp is outside the replay window.
    #[error("signed timestamp is outside the replay window")]
    Stale,
    /// The handshake token does not match.
    #[error("verification token does not match")]
    BadToken,
    /// The endpoint lacks a setting this connector needs to verify requests (named here).
    #[error("webhook endpoint is missing its `{0}` setting")]
    NotConfigured(&'static str),
}

impl VerifyError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature(_) => "signature_missing",
            VerifyError::MalformedSignature(_) => "signature_malformed",
            VerifyError::BadSignature => "signature_invalid",
            VerifyError::Stale => "signature_stale",
            VerifyError::BadToken => "verify_token_invalid",
            VerifyError::NotConfigured(_) => "webhook_not_configured",
        }
    }
}

/// What a verified webhook body contained.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Buyer messages, normalized.
    pub inquiries: Vec<Inquiry>,
    /// Events that are not buyer messages (delivery receipts, echoes of the seller's own
    /// messages, reads): acknowledged, not stored.
    pub ignored: usize,
    /// Platform user ids whose personal data the platform asks to erase (eBay's marketplace
    /// account deletion): the gateway opens an erasure request for each.
    pub erasures: Vec<String>,
    /// Messages the seller sent to buyers on the platform itself (Messenger and Instagram
    /// echoes): the first response to those buyers' open inquiries. Counted in `ignored` too
    /// (they are not inquiries).
    pub replies: Vec<SellerReply>,
}

/// A message the seller's account sent to a buyer on the platform (not through the gateway):
/// Meta's echoes, a marketplace chat's shop messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerReply {
    /// The seller's account it was sent from (the page, the shop), as the buyer's inquiries name it.
    pub account: String,
    /// The buyer's platform user id (as in the buyer's own messages: `id:<this>` is the identity).
    pub buyer_id: String,
    /// When the platform says it was sent.
    pub replied_at: OffsetDateTime,
    /// The platform's id of the message: the gateway's own acknowledgements are recognised by it
    /// (their send answered with the same id).
    pub message_id: Option<String>,
    /// The buyer's message it answers, where the platform says (eBay: the question's
    /// `MessageID`): then it answers that inquiry only, not every earlier one of the buyer.
    pub in_reply_to: Option<String>,
    /// Where the platform counts the answers to the question instead of naming each one (eBay):
    /// how many it holds. The gateway's own acknowledgement, sent or maybe sent, is one of them.
    pub responses: Option<usize>,
}

/// Marks a message the gateway itself sent (an auto-acknowledgement over the Messenger Send
/// API, field `message.metadata`): Meta echoes it back, and it is no one's first response.
pub const AUTO_ACK_METADATA: &str = "inquiry-gateway:auto-ack";

/// The answer to a platform's GET handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Response body.
    pub body: String,
    /// Its content type (`text/plain` for Meta's echo, `application/json` for eBay's hash).
    pub content_type: &'static str,
}

impl Handshake {
    /// A plain-text answer.
    pub fn text(body: String) -> Handshake {
        Handshake { body, content_type: "text/plain" }
    }

    /// A JSON answer.
    pub fn json(body: &serde_json::Value) -> Handshake {
        Handshake { body: body.to_string(), content_type: "application/json" }
    }
}

/// A platform's webhook: how it is verified and how its events become inquiries.
pub trait Webhook: Sync {
    /// Name in the URL and in config.
    fn name(&self) -> &'static str;

    /// Channel of the inquiries it produces.
    fn channel(&self) -> Channel;

    /// Checks the platform's signature over the raw body, in constant time.
    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        secrets: &WebhookSecrets<'_>,
        now: OffsetDateTime,
    ) -> Result<(), VerifyError>;

    /// For platforms whose signature covers a token and a timestamp but not the whole content
    /// (Mailgun signs only `timestamp ‖ token`): the token, which the gateway accepts once within
    /// the replay window, so a captured signature cannot carry other content.
    fn replay_key(&self, _request: &WebhookRequest<'_>) -> Option<String> {
        None
    }

    /// True if the platform verifies the endpoint with a GET handshake.
    fn has_handshake(&self) -> bool {
        false
    }

    /// Answers the platform's subscription handshake (a GET), if it has one: what to return.
    fn handshake(
        &self,
        _request: &WebhookRequest<'_>,
        _secrets: &WebhookSecrets<'_>,
    ) -> Option<Result<Handshake, VerifyError>> {
        None
    }

    /// The id of the platform key that signed `request`, where the platform signs with keys the
    /// gateway must fetch by id (eBay's `kid`): the gateway looks it up and passes it to
    /// [`Webhook::verify`] as [`WebhookSecrets::public_key`]. `None` when the request names none.
    fn key_id(&self, _request: &WebhookRequest<'_>) -> Option<String> {
        None
    }

    /// True if a delivery to one endpoint may name any account of the platform app (Meta: one
    /// webhook per app carries all its pages and numbers) unless the endpoint lists its
    /// `accounts`. Others (Shopee, TikTok Shop name their shop too) keep to the URL's account and
    /// the listed ones; the gateway checks each inquiry's account.
    fn any_account_by_default(&self) -> bool {
        false
    }

    /// Normalizes a verified request (its body, and a header where the platform names the event
    /// kind there, as Shopify does in `X-Shopify-Topic`); `context` gives each new inquiry its
    /// receive time and trace id (the id comes from the message itself, see [`crate::stable_id`]).
    /// `account` is the URL's; a platform whose deliveries name their shop or page files each
    /// inquiry under that one (the gateway checks it is the endpoint's).
    fn parse<'c>(
        &self,
        request: &WebhookRequest<'_>,
        account: &str,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<Parsed, InputError>;
}

/// A message id (`Message-Id` without `<>`) as the envelope carries it: `mid:` and 32 hex digits
/// of its SHA-256 (the id names the sender's mail host, often the buyer's own domain).
pub(crate) fn hashed_message_id(id: &str) -> String {
    email::hashed_id(id)
}

/// HMAC-SHA256 of `parts` (concatenated) with `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Checks `expected` (the header's decoded signature) against HMAC-SHA256(key, parts), in constant time.
pub(crate) fn verify_hmac(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> Result<(), VerifyError> {
    hmac_sha256(key, parts).verify_slice(expected).map_err(|_| VerifyError::BadSignature)
}

/// Checks a header holding the standard base64 HMAC-SHA256 of the raw body keyed with the
/// endpoint's secret (LINE's `x-line-signature`, Shopify's `X-Shopify-Hmac-Sha256`).
pub(crate) fn verify_base64_body_hmac(
    request: &WebhookRequest<'_>,
    secrets: &WebhookSecrets<'_>,
    header: &'static str,
) -> Result<(), VerifyError> {
    use base64::Engine;
    let value = request.header(header).ok_or(VerifyError::MissingSignature(header))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| VerifyError::MalformedSignature(header))?;
    verify_hmac(secrets.secret.as_bytes(), &[request.body], &signature)
}

/// Constant-time equality of two tokens (compares their HMACs under a fixed key, so the time taken
/// depends on neither token's content).
pub(crate) fn tokens_equal(a: &str, b: &str) -> bool {
    let tag = hmac_sha256(b"inquiry-gateway token comparison", &[a.as_bytes()]).finalize().into_bytes();
    hmac_sha256(b"inquiry-gateway token comparison", &[b.as_bytes()]).verify_slice(&tag).is_ok()
}

/// Checks an ECDSA P-256 signature (ASN.1 DER, as base64 in `signature`) over a message already
/// hashed to `digest`, with `public_key`: base64 of a DER SubjectPublicKeyInfo, PEM armour allowed
/// (with or without line breaks, as eBay serves it). ring has no ECDSA over SHA-1, which eBay uses,
/// so RustCrypto's p256 checks the prehashed digest whatever the hash.
pub(crate) fn verify_ecdsa_p256(
    public_key: &str,
    digest: &[u8],
    signature: &str,
    header: &'static str,
) -> Result<(), VerifyError> {
    use base64::Engine;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;

    let armoured = public_key.trim();
    let inner = armoured
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|k| k.strip_suffix("-----END PUBLIC KEY-----"))
        .unwrap_or(armoured);
    let base64: String = inner.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|_| VerifyError::NotConfigured("public_key"))?;
    let key =
        p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|_| VerifyError::NotConfigured("public_key"))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .ok()
        .and_then(|der| p256::ecdsa::Signature::from_der(&der).ok())
        .ok_or(VerifyError::MalformedSignature(header))?;
    key.verify_prehash(digest, &signature).map_err(|_| VerifyError::BadSignature)
}

/// Seconds or milliseconds since the Unix epoch as a time; `None` when out of range.
pub(crate) fn from_unix(value: i64, millis: bool) -> Option<OffsetDateTime> {
    let nanos = if millis { i128::from(value) * 1_000_000 } else { i128::from(value) * 1_000_000_000 };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'+' => Some((b' ', 1)),
            b'%' => bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|b| (b, 3)),
            _ => None,
        };
        let (byte, len) = decoded.unwrap_or((bytes[i], 1));
        out.push(byte);
        i += len;
    }
    String::from_utf8_lossy(&out).into_owned()
}
