//! Platform webhooks over real sockets: handshakes, signatures, redeliveries, refusals.

mod support;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{metric_value, workspace_file, Gateway, HttpClient, Method, StatusCode};

const CONFIG: &str = r#"
[[webhooks]]
connector = "whatsapp"
account = "106540352242922"
secret = "meta-app-secret-0001"
verify_token = "verify-me-please"

[[webhooks]]
connector = "line"
account = "line-oa-1"
secret = "line-channel-secret-01"

[[webhooks]]
connector = "telegram"
account = "shop-bot"
secret = "telegram-secret-token-01"

[[webhooks]]
connector = "web_form"
account = "site-eu"
secret = "web-form-signing-key-01"
"#;

fn hmac(key: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
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
    let signature = format!("sha256={}", hex::encode(hmac("meta-app-secret-0001", &[&body])));
    let headers = [("content-type", "application/json"), ("x-hub-signature-256", signature.as_str())];
    let first = client.request(Method::POST, &url, body.clone(), &headers).await;
    assert_eq!(first.status, StatusCode::OK, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!((first.json()["accepted"].as_u64(), first.json()["ignored"].as_u64()), (Some(1), Some(1)));
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

    let metrics = String::from_utf8(client.get(&gateway.admin_url("/metrics")).await.body.to_vec()).unwrap();
    let count = |outcome| {
        metric_value(&metrics, "inquiry_gateway_inquiries_total", &[("outcome", outcome), ("channel", "whatsapp")])
    };
    assert_eq!((count("accepted"), count("duplicate")), (1.0, 1.0));
    assert_eq!(metric_value(&metrics, "inquiry_gateway_rejected_total", &[("reason", "signature_invalid")]), 1.0);
    assert_eq!(metric_value(&metrics, "inquiry_gateway_webhook_events_ignored_total", &[("channel", "whatsapp")]), 2.0);
    let log = gateway.log();
    assert!(!log.contains("meta-app-secret") && !log.contains("Sheena"), "no secrets or personal data in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_telegram_and_web_forms_verify_their_own_schemes() {
    let gateway = Gateway::start(CONFIG).await;
    let client = HttpClient::new();

    let line = fixture("line/text-follow.json");
    let line_sig = base64::engine::general_purpose::STANDARD.encode(hmac("line-channel-secret-01", &[&line]));
    let reply = client
        .request(
            Method::POST,
            &gateway.url("/webhooks/line/line-oa-1"),
            line.clone(),
            &[("x-line-signature", &line_sig)],
        )
        .await;
    assert_eq!((reply.status, reply.json()["accepted"].as_u64()), (StatusCode::OK, Some(1)));

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
        format!("t={t},v1={}", hex::encode(hmac("web-form-signing-key-01", &[t.to_string().as_bytes(), b".", &form])))
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let url = gateway.url("/webhooks/web_form/site-eu");
    let fresh = client.request(Method::POST, &url, form.clone(), &[("x-inquiry-signature", &sign(now))]).await;
    assert_eq!((fresh.status, fresh.json()["accepted"].as_u64()), (StatusCode::OK, Some(1)));
    let replayed =
        client.request(Method::POST, &url, form.clone(), &[("x-inquiry-signature", &sign(now - 3600))]).await;
    assert_eq!((replayed.status, replayed.error_code().as_str()), (StatusCode::UNAUTHORIZED, "signature_stale"));
}
