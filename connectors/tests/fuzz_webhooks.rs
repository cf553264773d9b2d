//! Property tests: arbitrary bodies, headers and query strings never make a push connector panic,
//! whether it verifies, answers a handshake, names a key or parses.

use inquiry_connectors::webhook::{self, WebhookRequest, WebhookSecrets};
use inquiry_connectors::NormalizeContext;
use proptest::prelude::*;
use time::OffsetDateTime;

/// Header names every connector reads, so the values reach its parsing code.
const HEADERS: [&str; 11] = [
    "x-hub-signature-256",
    "x-line-signature",
    "x-telegram-bot-api-secret-token",
    "authorization",
    "x-inquiry-signature",
    "x-twilio-email-event-webhook-signature",
    "x-twilio-email-event-webhook-timestamp",
    "x-ebay-signature",
    "x-shopify-hmac-sha256",
    "x-shopify-triggered-at",
    "content-type",
];

/// A body: random bytes, or a random tail after a prefix that steers it into a parser
/// (JSON object, multipart boundary, form fields).
fn body() -> impl Strategy<Value = Vec<u8>> {
    let prefixes = prop::sample::select(vec![
        "",
        "{",
        "{\"data\":",
        "--b\r\n",
        "--b\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n",
        "timestamp=1&token=",
        "signature=",
    ]);
    (prefixes, prop::collection::vec(any::<u8>(), 0..512)).prop_map(|(prefix, tail)| {
        let mut body = prefix.as_bytes().to_vec();
        body.extend(tail);
        body
    })
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((prop::sample::select(HEADERS.to_vec()), ".{0,200}"), 0..4)
        .prop_map(|pairs| pairs.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_connector_panics_on_arbitrary_requests(body in body(), headers in headers(), query in ".{0,64}") {
        let secrets = WebhookSecrets {
            secret: "fuzz-secret",
            app_key: Some("fuzz-app"),
            verify_token: Some("fuzz-token"),
            endpoint_url: Some("https://gateway.test/webhooks/x/y"),
            public_key: Some("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEmgmjvPAR/Lmwn2teL2WJUDIx35PqsnLKjPhPbrKkfMg6vK4NZQB1VeFSKbV7whQbEJRFHjF8+1zJxsXRP1GbWw=="),
        };
        let request = WebhookRequest { headers, query: &query, body: &body };
        let mut context = || NormalizeContext { received_at: OffsetDateTime::UNIX_EPOCH, trace_id: "0af7651916cd43dd8448eb211c80319c" };
        for connector in webhook::REGISTRY {
            let _ = connector.verify(&request, &secrets, OffsetDateTime::UNIX_EPOCH);
            let _ = connector.handshake(&request, &secrets);
            let _ = connector.key_id(&request);
            let _ = connector.parse(&request, "acct-1", &mut context);
        }
    }

    #[test]
    fn shopify_parses_arbitrary_bodies_of_each_topic_without_panicking(
        body in body(),
        topic in prop::sample::select(vec!["orders/create", "orders/updated", "returns/request", "shop/update"]),
        triggered in ".{0,40}",
    ) {
        let shopify = webhook::find("shopify").unwrap();
        let headers = vec![
            ("x-shopify-topic".to_owned(), topic.to_owned()),
            ("x-shopify-triggered-at".to_owned(), triggered),
        ];
        let request = WebhookRequest { headers, query: "", body: &body };
        let mut context = || NormalizeContext { received_at: OffsetDateTime::UNIX_EPOCH, trace_id: "0af7651916cd43dd8448eb211c80319c" };
        let _ = shopify.parse(&request, "acct-1", &mut context);
    }
}
