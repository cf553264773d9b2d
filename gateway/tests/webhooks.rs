//! Platform webhooks over real sockets: handshakes, signatures, redeliveries, refusals.

mod support;

use base64::Engine;
use sha2::Sha256;
use support::{metric_value, workspace_file, Gateway, HttpClient, Method, StatusCode};

const CONFIG: &str = r#"
[[webhooks]]
connector = "whatsapp"
account = "106540352242922"
secret = "meta-app-secret-0001"
verify_token = "verify-me-please"
# Assumed only where a message gives neither a country nor an international phone number.
buyer_country = "SG"

[[webhooks]]
connector = "line"
account = "line-oa-1"
secret = "line-channel-secret-01"
buyer_country = "TH"

[[webhooks]]
connector = "telegram"
account = "shop-bot"
secret = "telegram-secret-token-01"

[[webhooks]]
connector = "web_form"
account = "site-eu"
secret = "web-form-signing-key-01"

[[webhooks]]
connector = "mailgun"
account = "support-eu"
secret = "mailgun-signing-key-01"

[[webhooks]]
connector = "shopify"
account = "linen-and-loom.myshopify.com"
secret = "shopify-client-secret-01"
"#;

/// The buyer's country and the region of the one inquiry a webhook answer names.
async fn stored_buyer(client: &HttpClient, gateway: &Gateway, answer: &serde_json::Value) -> (String, String) {
    let id = answer["ids"][0].as_str().expect("one inquiry id");
    let stored = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json();
    let inquiry = &stored["inquiry"];
    (inquiry["buyer"]["country"].as_str().unwrap_or("none").to_owned(), inquiry["region"].as_str().unwrap().to_owned())
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(workspace_file(&format!("connectors/tests/fixtures/webhooks/{path}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_handshake_signed_deliveries_and_redeliveries() {
    let gateway = Gateway::start(CONFIG).await;
    let client = HttpClient::new();
    let url = gateway.url("/webhooks/whatsapp/106540352242922");

    let handshake =
        client.get(&format!("{url}?hub.mode=subscribe&hub.verify_token=verify-me-please&hub.challenge=8734")).await;
    assert_eq!((handshake.status, &handshake.body[..]), (StatusCode::OK, &b"8734"[..]));
    let wrong = client.get(&format!("{url}?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=8734")).await;
    assert_eq!((wrong.status, wrong.error_code().as_str()), (StatusCode::FORBIDDEN, "verify_token_invalid"));

    let body = fixture("whatsapp/text-and-status.json");
    let signature = format!("sha256={}", hex::encode(support::hmac_sha256("meta-app-secret-0001", &[&body])));
    let headers = [("content-type", "application/json"), ("x-hub-signature-256", signature.as_str())];
    let first = client.request(Method::POST, &url, body.clone(), &headers).await;
    assert_eq!(first.status, StatusCode::OK, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!((first.json()["accepted"].as_u64(), first.json()["ignored"].as_u64()), (Some(1), Some(1)));
    // The buyer's WhatsApp id is a German number: the country it names wins over the account's.
    let buyer = stored_buyer(&client, &gateway, &first.json()).await;
    assert_eq!(buyer, ("DE".to_owned(), "eu".to_owned()));
    let again = client.request(Method::POST, &url, body.clone(), &headers).await;
    assert_eq!(
        (again.json()["accepted"].as_u64(), again.json()["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "redelivery"
    );

    let mut tampered = body.clone();
    let at = tampered.len() - 10;
    tampered[at] ^= 0x20;
    let refused = client.request(Method::POST, &url, tampered, &headers).await;
    assert_eq!((refused.status, refused.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_invalid"));
    let unsigned = client.request(Method::POST, &url, body.clone(), &[("content-type", "application/json")]).await;
    assert_eq!((unsigned.status, unsigned.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_missing"));
    let unknown = client.request(Method::POST, &gateway.url("/webhooks/whatsapp/999"), body.clone(), &headers).await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (StatusCode::NOT_FOUND, "unknown_webhook"));

    let metrics = support::metrics(&gateway).await;
    let count = |outcome| {
        metric_value(&metrics, "inquiry_gateway_inquiries_total", &[("outcome", outcome), ("channel", "whatsapp")])
    };
    assert_eq!((count("accepted"), count("duplicate")), (1.0, 1.0));
    assert_eq!(metric_value(&metrics, "inquiry_gateway_rejected_total", &[("reason", "signature_invalid")]), 1.0);
    assert_eq!(metric_value(&metrics, "inquiry_gateway_webhook_events_ignored_total", &[("channel", "whatsapp")]), 2.0);
    let by_connector = |outcome| {
        metric_value(
            &metrics,
            "inquiry_gateway_webhook_requests_total",
            &[("connector", "whatsapp"), ("outcome", outcome)],
        )
    };
    assert_eq!(by_connector("signature_invalid"), 1.0, "refusals are counted per connector and reason");
    assert_eq!(by_connector("signature_missing"), 1.0);
    assert!(by_connector("ok") >= 2.0, "deliveries are counted per connector");
    assert!(!metrics.contains("connector=\"999\""), "only registered connectors become labels");
    let endpoint = |account| {
        metric_value(
            &metrics,
            "inquiry_gateway_webhook_requests_total",
            &[("connector", "whatsapp"), ("account", account), ("outcome", "ok")],
        )
    };
    assert!(endpoint("106540352242922") >= 2.0, "deliveries are counted per endpoint");
    let stray = [("connector", "whatsapp"), ("account", "unknown"), ("outcome", "unknown_webhook")];
    assert_eq!(metric_value(&metrics, "inquiry_gateway_webhook_requests_total", &stray), 1.0);
    assert!(!metrics.contains("account=\"999\""), "only configured accounts become labels");
    let log = gateway.log();
    assert!(!log.contains("meta-app-secret") && !log.contains("Sheena"), "no secrets or personal data in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_telegram_and_web_forms_verify_their_own_schemes() {
    let gateway = Gateway::start(CONFIG).await;
    let client = HttpClient::new();

    let line = fixture("line/text-follow.json");
    let line_sig =
        base64::engine::general_purpose::STANDARD.encode(support::hmac_sha256("line-channel-secret-01", &[&line]));
    let reply = client
        .request(
            Method::POST,
            &gateway.url("/webhooks/line/line-oa-1"),
            line.clone(),
            &[("x-line-signature", &line_sig)],
        )
        .await;
    assert_eq!((reply.status, reply.json()["accepted"].as_u64()), (StatusCode::OK, Some(1)));
    // LINE names no country and no phone: the account's `buyer_country`.
    let buyer = stored_buyer(&client, &gateway, &reply.json()).await;
    assert_eq!(buyer, ("TH".to_owned(), "other".to_owned()));

    let telegram = fixture("telegram/message.json");
    let url = gateway.url("/webhooks/telegram/shop-bot");
    let reply = client
        .request(
            Method::POST,
            &url,
            telegram.clone(),
            &[("x-telegram-bot-api-secret-token", "telegram-secret-token-01")],
        )
        .await;
    assert_eq!((reply.status, reply.json()["accepted"].as_u64()), (StatusCode::OK, Some(1)));
    let reply = client
        .request(Method::POST, &url, telegram, &[("x-telegram-bot-api-secret-token", "telegram-secret-token-02")])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let form = fixture("web_form/contact.json");
    let sign = |t: i64| {
        format!(
            "t={t},v1={}",
            hex::encode(support::hmac_sha256("web-form-signing-key-01", &[t.to_string().as_bytes(), b".", &form]))
        )
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let url = gateway.url("/webhooks/web_form/site-eu");
    let fresh = client.request(Method::POST, &url, form.clone(), &[("x-inquiry-signature", &sign(now))]).await;
    assert_eq!((fresh.status, fresh.json()["accepted"].as_u64()), (StatusCode::OK, Some(1)));
    let replayed =
        client.request(Method::POST, &url, form.clone(), &[("x-inquiry-signature", &sign(now - 3600))]).await;
    assert_eq!((replayed.status, replayed.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_order_notes_and_return_requests_are_inquiries_once() {
    let gateway = Gateway::start(CONFIG).await;
    let client = HttpClient::new();
    let url = gateway.url("/webhooks/shopify/linen-and-loom.myshopify.com");
    let deliver = |body: Vec<u8>, topic: &'static str, shop: &'static str, event: &'static str| {
        let signature = base64::engine::general_purpose::STANDARD
            .encode(support::hmac_sha256("shopify-client-secret-01", &[&body]));
        let (client, url) = (&client, &url);
        async move {
            let headers = [
                ("x-shopify-hmac-sha256", signature.as_str()),
                ("x-shopify-topic", topic),
                ("x-shopify-shop-domain", shop),
                ("x-shopify-event-id", event),
                ("x-shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
            ];
            client.request(Method::POST, url, body, &headers).await
        }
    };
    let shop = "linen-and-loom.myshopify.com";
    let order = fixture("shopify/orders-create.note.json");

    let created = deliver(order.clone(), "orders/create", shop, "e-1").await;
    assert_eq!((created.status, created.json()["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{}", gateway.log());
    // Shopify redelivers the same event: a duplicate.
    let again = deliver(order.clone(), "orders/create", shop, "e-1").await;
    assert_eq!((again.status, again.json()["duplicates"].as_u64()), (StatusCode::OK, Some(1)));
    // After checkout only staff edit a note: orders/updated is acknowledged, not an inquiry.
    let updated = deliver(fixture("shopify/orders-updated.staff-edit.json"), "orders/updated", shop, "e-2").await;
    assert_eq!((updated.status, updated.json()["accepted"].as_u64()), (StatusCode::OK, Some(0)));
    let returned = deliver(fixture("shopify/returns-request.json"), "returns/request", shop, "e-4").await;
    assert_eq!((returned.status, returned.json()["accepted"].as_u64()), (StatusCode::OK, Some(1)));
    let ignored = deliver(fixture("shopify/customers-update.json"), "customers/update", shop, "e-5").await;
    assert_eq!((ignored.status, ignored.json()["accepted"].as_u64()), (StatusCode::OK, Some(0)));

    // Refused: another shop's delivery, no topic, a wrong signature.
    let other = deliver(order.clone(), "orders/create", "someone-else.myshopify.com", "e-6").await;
    assert_eq!((other.status, other.error_code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"));
    let signature =
        base64::engine::general_purpose::STANDARD.encode(support::hmac_sha256("shopify-client-secret-01", &[&order]));
    let untopical = client.request(Method::POST, &url, order.clone(), &[("x-shopify-hmac-sha256", &signature)]).await;
    assert!(untopical.status.is_client_error(), "no topic: {:?}", untopical.status);
    let forged = base64::engine::general_purpose::STANDARD.encode(support::hmac_sha256("guessed-secret", &[&order]));
    let reply = client
        .request(Method::POST, &url, order, &[("x-shopify-hmac-sha256", &forged), ("x-shopify-topic", "orders/create")])
        .await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_invalid"));
    let metrics = support::metrics(&gateway).await;
    let accepted =
        metric_value(&metrics, "inquiry_gateway_inquiries_total", &[("outcome", "accepted"), ("channel", "shopify")]);
    assert_eq!(accepted, 2.0, "the note and the return");
}

/// A stand-in for eBay's `GET /commerce/notification/v1/public_key/{kid}`: serves `pem` for `kid-1`
/// to callers with the right bearer token, 404 for other ids; counts the calls.
async fn ebay_key_server(pem: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let addr = support::serve(None, move |head, _body| {
        counted.fetch_add(1, Ordering::SeqCst);
        let authorized = head.headers.get("authorization").is_some_and(|v| v == "Bearer test-ebay-app-token");
        match (authorized, head.uri.path()) {
            (false, _) => (401, String::new()),
            (true, "/commerce/notification/v1/public_key/kid-1") => {
                (200, serde_json::json!({"algorithm": "ECDSA", "digest": "SHA256", "key": pem}).to_string())
            }
            _ => (404, String::new()),
        }
    })
    .await;
    (format!("http://{addr}/commerce/notification/v1/public_key/{{kid}}"), calls)
}

/// TEST KEYS ONLY: a fresh P-256 key pair (ring), its public key as eBay's one-line PEM.
fn ebay_test_key() -> (ring::signature::EcdsaKeyPair, String) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SubjectPublicKeyInfo of a P-256 key: the fixed algorithm prefix, then the uncompressed point.
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----{}-----END PUBLIC KEY-----",
        base64::engine::general_purpose::STANDARD.encode(spki)
    );
    (pair, pem)
}

/// `X-EBAY-SIGNATURE` for `body`: ECDSA P-256 / SHA-256 with `key`, naming `kid`.
fn ebay_signature(key: &ring::signature::EcdsaKeyPair, kid: &str, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = key.sign(&ring::rand::SystemRandom::new(), body).unwrap();
    let header = serde_json::json!({"alg": "ecdsa", "kid": kid, "signature": b64.encode(signature.as_ref()), "digest": "SHA256"});
    b64.encode(header.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebay_keys_are_fetched_once_per_kid_and_the_challenge_is_answered() {
    let (key, pem) = ebay_test_key();
    let (key_url, calls) = ebay_key_server(pem).await;
    let endpoint = "https://gateway.test/webhooks/ebay/seller-1";
    let config = format!(
        r#"
[[webhooks]]
connector = "ebay"
account = "seller-1"
secret = ""
verify_token = "test-ebay-verification-token-0123456789"
endpoint_url = "{endpoint}"
public_key_url = "{key_url}"
app_token = "test-ebay-app-token"

[[webhooks]]
connector = "ebay"
account = "seller-2"
secret = ""
verify_token = "test-ebay-verification-token-0123456789"
endpoint_url = "https://gateway.test/webhooks/ebay/seller-2"
public_key_url = "{key_url}"
app_token = "test-ebay-app-token"
"#
    );
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let url = gateway.url("/webhooks/ebay/seller-1");

    let challenge = client.get(&format!("{url}?challenge_code=a8628072-3d33")).await;
    assert_eq!(challenge.status, StatusCode::OK);
    assert_eq!(challenge.headers["content-type"], "application/json");
    let expected = hex::encode(<Sha256 as sha2::Digest>::digest(
        format!("a8628072-3d33test-ebay-verification-token-0123456789{endpoint}").as_bytes(),
    ));
    assert_eq!(challenge.json(), serde_json::json!({ "challengeResponse": expected }));

    let body = fixture("ebay/buyer-question.json");
    let signature = ebay_signature(&key, "kid-1", &body);
    let headers = [("content-type", "application/json"), ("x-ebay-signature", signature.as_str())];
    let first = client.request(Method::POST, &url, body.clone(), &headers).await;
    assert_eq!(first.status, StatusCode::OK, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["accepted"].as_u64(), Some(1));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "the key is fetched once");

    let inquiry_id = first.json()["ids"][0].as_str().map(str::to_owned);
    // The same buyer asked the operator's other eBay seller account too.
    let other_seller = gateway.url("/webhooks/ebay/seller-2");
    let second = client.request(Method::POST, &other_seller, body.clone(), &headers).await;
    assert_eq!(second.status, StatusCode::OK, "{}", String::from_utf8_lossy(&second.body));
    let other_inquiry = second.json()["ids"][0].as_str().unwrap().to_owned();
    let before = client.get(&gateway.url(&format!("/v1/inquiries/{other_inquiry}"))).await;
    assert!(String::from_utf8_lossy(&before.body).contains("Canon R6"), "readable before the deletion");

    // Account deletion of a user never seen (eBay sends them for every user): no trace kept.
    let deletion = fixture("ebay/account-deletion.json");
    let signature = ebay_signature(&key, "kid-1", &deletion);
    let reply = client.request(Method::POST, &url, deletion.clone(), &[("x-ebay-signature", signature.as_str())]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["erasure_requests"], serde_json::json!([]), "nothing held, nothing recorded");
    let listed = client.get(&gateway.admin_url("/v1/subject-requests")).await;
    assert!(!String::from_utf8_lossy(&listed.body).contains("account_deletion"), "no request stored for a stranger");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "later notifications use the cached key");

    // Account deletion of the buyer who asked: erased at once, their message no longer readable.
    let deletion = br#"{"metadata":{"topic":"MARKETPLACE_ACCOUNT_DELETION","schemaVersion":"1.0"},"notification":{"notificationId":"n-2","eventDate":"2026-11-24T08:00:00.000Z","data":{"username":"sheena_q_77","userId":"u-777"}}}"#.to_vec();
    let signature = ebay_signature(&key, "kid-1", &deletion);
    let reply = client.request(Method::POST, &url, deletion, &[("x-ebay-signature", signature.as_str())]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    // eBay sends the deletion once per app: it reaches the buyer under both seller accounts.
    assert_eq!(reply.json()["erasure_requests"].as_array().map(Vec::len), Some(2), "{}", reply.json());
    let stored = client.get(&gateway.url(&format!("/v1/inquiries/{other_inquiry}"))).await;
    assert!(!String::from_utf8_lossy(&stored.body).contains("Canon R6"), "erased under seller-2 too");
    let first_request = reply.json()["erasure_requests"][0].as_str().unwrap().to_owned();
    let request = client.get(&gateway.admin_url(&format!("/v1/subject-requests/{first_request}"))).await;
    assert_eq!(request.json()["status"], "completed", "{}", String::from_utf8_lossy(&request.body));
    if let Some(id) = inquiry_id {
        let stored = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await;
        let text = String::from_utf8_lossy(&stored.body);
        assert!(!text.contains("Canon R6") && !text.contains("sheena_q_77"), "erased: {text}");
    }

    let (forger, _) = ebay_test_key();
    let forged = ebay_signature(&forger, "kid-1", &body);
    let reply = client.request(Method::POST, &url, body.clone(), &[("x-ebay-signature", forged.as_str())]).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_invalid"));
    let unknown_kid = ebay_signature(&key, "kid-2", &body);
    let fetches_before = calls.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        let reply =
            client.request(Method::POST, &url, body.clone(), &[("x-ebay-signature", unknown_kid.as_str())]).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_invalid"));
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        fetches_before + 1,
        "an unknown key id is asked for once, then remembered"
    );
    let log = gateway.log();
    assert!(!log.contains("test-ebay-app-token") && !log.contains("sheena_q_77"), "no secrets or buyer ids in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ebay_application_token_for_its_keys_is_minted_and_renewed_before_it_expires() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (key, pem) = ebay_test_key();
    // eBay's client credentials grant (identity/v1/oauth2/token, HTTP Basic App ID:Cert ID) and
    // its key endpoint, which takes only the latest token. Tokens live 301 s here: renewed at
    // once, as a 2-hour token is 5 minutes before it expires.
    let minted = Arc::new(AtomicUsize::new(0));
    let counter = minted.clone();
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("app-id-01:cert-id-secret-01"));
    let addr = support::serve(None, move |head, body| {
        let authorization = head.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        match head.uri.path() {
            "/identity/v1/oauth2/token" => {
                let form = String::from_utf8_lossy(body).into_owned();
                if authorization != basic || !form.contains("grant_type=client_credentials") {
                    return (401, r#"{"error":"invalid_client"}"#.to_owned());
                }
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                (200, serde_json::json!({"access_token": format!("v^1.1#minted-{n}"), "expires_in": 301, "token_type": "Application Access Token"}).to_string())
            }
            path if path.starts_with("/commerce/notification/v1/public_key/kid-") => {
                let latest = format!("Bearer v^1.1#minted-{}", counter.load(Ordering::SeqCst));
                if authorization != latest {
                    return (401, String::new());
                }
                (200, serde_json::json!({"algorithm": "ECDSA", "digest": "SHA256", "key": pem}).to_string())
            }
            _ => (404, String::new()),
        }
    })
    .await;
    let config = format!(
        r#"
[[webhooks]]
connector = "ebay"
account = "seller-1"
secret = ""
verify_token = "test-ebay-verification-token-0123456789"
endpoint_url = "https://gateway.test/webhooks/ebay/seller-1"
public_key_url = "http://{addr}/commerce/notification/v1/public_key/{{kid}}"
[webhooks.app_oauth]
token_url = "http://{addr}/identity/v1/oauth2/token"
client_id = "app-id-01"
client_secret = "cert-id-secret-01"
scope = "https://api.ebay.com/oauth/api_scope"
"#
    );
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let url = gateway.url("/webhooks/ebay/seller-1");
    let body = fixture("ebay/buyer-question.json");
    for (n, kid) in ["kid-1", "kid-2"].into_iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        }
        let signature = ebay_signature(&key, kid, &body);
        let reply = client.request(Method::POST, &url, body.clone(), &[("x-ebay-signature", signature.as_str())]).await;
        assert_eq!(reply.status, StatusCode::OK, "{kid}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(minted.load(Ordering::SeqCst), n + 1, "a token minted for {kid}, the one before about to expire");
    }
    // A signature naming no key is malformed (401), not a setting missing on our side (503).
    let idless = base64::engine::general_purpose::STANDARD
        .encode(serde_json::json!({"alg": "ecdsa", "kid": "", "signature": "AAAA", "digest": "SHA256"}).to_string());
    let reply = client.request(Method::POST, &url, body.clone(), &[("x-ebay-signature", idless.as_str())]).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_malformed"));
    let log = gateway.log();
    assert!(!log.contains("cert-id-secret-01") && !log.contains("minted-"), "no secret or token in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailgun_token_is_good_for_one_delivery() {
    // Mailgun signs only `timestamp ‖ token`: a captured signature could carry any e-mail within
    // the replay window, so each token is taken once.
    let gateway = Gateway::start(CONFIG).await;
    let client = HttpClient::new();
    let url = gateway.url("/webhooks/mailgun/support-eu");
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let token = "e4c6b5a2d3f46a8bacbd2e3f4a5b6c7d8e9f0a1b2c3d4e5f6b";
    let signature =
        hex::encode(support::hmac_sha256("mailgun-signing-key-01", &[timestamp.as_bytes(), token.as_bytes()]));
    let form = String::from_utf8(fixture("mailgun/reply.form"))
        .unwrap()
        .replace("{{timestamp}}", &timestamp)
        .replace("{{signature}}", &signature);
    let form = form
        .replace(&form[form.find("&token=").unwrap()..form.find("&signature=").unwrap()], &format!("&token={token}"));
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let first = client.request(Method::POST, &url, form.clone(), &headers).await;
    assert_eq!(first.status, StatusCode::OK, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["accepted"], 1);
    let other_mail = form.replace("size+L", "size+XL");
    let replayed = client.request(Method::POST, &url, other_mail, &headers).await;
    assert_eq!((replayed.status, replayed.error_code().as_str()), (StatusCode::CONFLICT, "signature_replayed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shopee_push_url_serves_the_shops_it_lists_and_refuses_others() {
    // A partner app pushes every authorised shop's chats to one URL, signed with the app's key.
    let (url, key) = ("https://gateway.example/webhooks/shopee/947042923", "shopee-partner-push-key");
    let config = format!(
        "[[webhooks]]\nconnector = \"shopee\"\naccount = \"947042923\"\nsecret = \"{key}\"\n\
         endpoint_url = \"{url}\"\naccounts = [\"947042924\"]\n"
    );
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let push = |shop: u64, message: &str| {
        format!(
            r#"{{"msg_id":"","data":{{"type":"message","region":"SG","content":{{"message_id":"{message}","shop_id":{shop},"from_id":165105353,"from_user_name":"buyer","to_id":{shop},"message_type":"text","content":{{"text":"Is XL in stock?"}},"conversation_id":"7091","created_timestamp":1726044721,"source_content":{{}},"business_type":0}}}},"shop_id":{shop},"code":10,"timestamp":1726044722}}"#
        )
    };
    let post = |body: String| {
        let signature = hex::encode(support::hmac_sha256(key, &[url.as_bytes(), b"|", body.as_bytes()]));
        let (client, gateway) = (&client, &gateway);
        async move {
            client
                .request(
                    Method::POST,
                    &gateway.url("/webhooks/shopee/947042923"),
                    body,
                    &[("authorization", &signature)],
                )
                .await
        }
    };
    for (shop, message) in [(947042923u64, "m-own"), (947042924, "m-listed")] {
        let reply = post(push(shop, message)).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let id = reply.json()["ids"][0].as_str().unwrap().to_owned();
        let stored = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json();
        assert_eq!(stored["inquiry"]["account"], shop.to_string(), "filed under the shop the push names");
    }
    // A shop the endpoint does not list: refused, nothing stored.
    let reply = post(push(947042925, "m-other")).await;
    assert_eq!((reply.status.as_u16(), reply.error_code().as_str()), (422, "invalid_value"));
    assert_eq!(reply.json()["error"]["field"], "account");
}
