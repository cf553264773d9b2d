//! Golden tests of the push connectors. For every fixture under `fixtures/webhooks/<connector>/`:
//! a request signed the way the platform documents verifies; the same request with one signed byte
//! changed, a wrong secret or no signature does not; forged, replayed, expired and truncated
//! deliveries are refused or deduplicated; and the body normalizes to its `.expected.json`
//! (`BLESS=1` rewrites expectations). Fixtures are `.json`, `.form` (url-encoded) or `.multipart`.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, Mac};
use inquiry_connectors::webhook::{self, Handshake, VerifyError, WebhookRequest, WebhookSecrets};
use inquiry_connectors::NormalizeContext;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use sha2::{Digest, Sha256};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const SECRET: &str = "test-app-secret-0123456789";
const WRONG_SECRET: &str = "another-secret-entirely";
const APP_KEY: &str = "test-app-key";
const NOW: OffsetDateTime = datetime!(2026-11-24 08:00:10 UTC);
/// The registered URL of the Shopee and eBay test endpoints.
const ENDPOINT: &str = "https://gateway.test/webhooks/shopee/947042923";
/// Connectors whose signature covers a timestamp (a replay window).
const TIMESTAMPED: [&str; 3] = ["web_form", "mailgun", "sendgrid"];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hmac(parts: &[&[u8]], secret: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// TEST KEY ONLY: a P-256 key derived from `secret`, standing in for SendGrid's and eBay's keys.
fn test_key(secret: &str) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&Sha256::digest(secret.as_bytes())).unwrap()
}

/// The public key of [`test_key`] as base64 SubjectPublicKeyInfo DER (SendGrid's form).
fn public_key(secret: &str) -> String {
    // SubjectPublicKeyInfo of a P-256 key: the fixed algorithm prefix, then the uncompressed point.
    let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    der.extend_from_slice(test_key(secret).verifying_key().to_encoded_point(false).as_bytes());
    b64(&der)
}

/// ECDSA P-256 over `digest`, base64 DER.
fn ecdsa(secret: &str, digest: &[u8]) -> String {
    let signature: p256::ecdsa::Signature = test_key(secret).sign_prehash(digest).unwrap();
    b64(signature.to_der().as_bytes())
}

/// The endpoint's secrets when configured with `secret` (public keys derived from it).
fn secrets(connector: &str, secret: &'static str) -> WebhookSecrets<'static> {
    let public_key: &'static str = match connector {
        "sendgrid" => Box::leak(public_key(secret).into_boxed_str()),
        // eBay serves its PEM without line breaks.
        "ebay" => Box::leak(
            format!("-----BEGIN PUBLIC KEY-----{}-----END PUBLIC KEY-----", public_key(secret)).into_boxed_str(),
        ),
        _ => "",
    };
    WebhookSecrets {
        secret,
        app_key: Some(APP_KEY),
        verify_token: None,
        endpoint_url: Some(ENDPOINT),
        public_key: (!public_key.is_empty()).then_some(public_key),
    }
}

/// Mailgun's signing token: the `token` field of a url-encoded or multipart fixture ("" if none).
fn mailgun_token(body: &str) -> &str {
    if let Some(i) = body.find("&token=") {
        let rest = &body[i + 7..];
        return &rest[..rest.find('&').unwrap_or(rest.len())];
    }
    let marker = "name=\"token\"\r\n\r\n";
    let Some(start) = body.find(marker) else { return "" };
    let rest = &body[start + marker.len()..];
    &rest[..rest.find("\r\n").unwrap_or(rest.len())]
}

/// The request the platform would send with `body` at time `at`, signed with `secret`: headers,
/// and the body itself where the signature travels in it (Mailgun).
fn signed(connector: &str, body: &[u8], secret: &str, at: OffsetDateTime) -> (Vec<(String, String)>, Vec<u8>) {
    let header = |name: &str, value: String| vec![(name.to_owned(), value)];
    let t = at.unix_timestamp().to_string();
    let headers = match connector {
        "whatsapp" | "messenger" | "instagram" => {
            header("x-hub-signature-256", format!("sha256={}", hex::encode(hmac(&[body], secret))))
        }
        "line" | "shopify" => {
            let name = if connector == "line" { "x-line-signature" } else { "x-shopify-hmac-sha256" };
            header(name, b64(&hmac(&[body], secret)))
        }
        "telegram" => header("x-telegram-bot-api-secret-token", secret.to_owned()),
        "tiktok_shop" => header("authorization", hex::encode(hmac(&[APP_KEY.as_bytes(), body], secret))),
        "web_form" => header(
            "x-inquiry-signature",
            format!("t={t},v1={}", hex::encode(hmac(&[t.as_bytes(), b".", body], secret))),
        ),
        "shopee" => header("authorization", hex::encode(hmac(&[ENDPOINT.as_bytes(), b"|", body], secret))),
        "mailgun" => {
            let text = String::from_utf8(body.to_vec()).unwrap().replace("{{timestamp}}", &t);
            let token = mailgun_token(&text).to_owned();
            let signature = hex::encode(hmac(&[t.as_bytes(), token.as_bytes()], secret));
            return (Vec::new(), text.replace("{{signature}}", &signature).into_bytes());
        }
        "sendgrid" => {
            let digest = Sha256::new().chain_update(t.as_bytes()).chain_update(body).finalize();
            vec![
                ("x-twilio-email-event-webhook-signature".to_owned(), ecdsa(secret, &digest)),
                ("x-twilio-email-event-webhook-timestamp".to_owned(), t.clone()),
            ]
        }
        "ebay" => {
            let digest = sha1::Sha1::digest(body);
            let json = serde_json::json!({"alg": "ecdsa", "kid": "test-kid-1", "signature": ecdsa(secret, &digest), "digest": "SHA1"});
            header("x-ebay-signature", b64(json.to_string().as_bytes()))
        }
        other => panic!("no signing rule for {other} in this test"),
    };
    (headers, body.to_vec())
}

/// Headers a platform sends besides its signature, which a fixture's name gives: Shopify's topic
/// (`orders-create.note.json` is an `orders/create` delivery), shop and event id.
fn fixture_headers(connector: &str, path: &Path, mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    if connector == "shopify" {
        let name = path.file_name().unwrap().to_string_lossy();
        let topic = name.split('.').next().unwrap().replacen('-', "/", 1);
        headers.push(("x-shopify-topic".to_owned(), topic));
        headers.push(("x-shopify-shop-domain".to_owned(), account(connector).to_owned()));
        headers.push(("x-shopify-event-id".to_owned(), "98880550-7158-44d4-b7cd-2c97c8a091b5".to_owned()));
        headers.push(("x-shopify-triggered-at".to_owned(), "2026-11-24T07:59:58.123Z".to_owned()));
    }
    headers
}

/// `body` with one signed byte changed (Mailgun signs only its token and timestamp).
fn tamper(connector: &str, body: &[u8]) -> Vec<u8> {
    let mut tampered = body.to_vec();
    let at = if connector == "mailgun" {
        let text = String::from_utf8_lossy(body);
        let token = mailgun_token(&text);
        text.find(token).unwrap() + 3
    } else {
        tampered.len() - 2
    };
    tampered[at] = if tampered[at] == b'a' { b'b' } else { b'a' };
    tampered
}

fn account(connector: &str) -> &'static str {
    match connector {
        "web_form" => "site-eu",
        "tiktok_shop" => "7494049642642441621",
        "shopee" => "947042923",
        "shopify" => "linen-and-loom.myshopify.com",
        _ => "acct-1",
    }
}

fn context() -> NormalizeContext<'static> {
    NormalizeContext { received_at: datetime!(2026-11-24 08:00:01 UTC), trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" }
}

fn fixtures(connector: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(connector);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("{connector} has no fixtures in {}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json" || e == "form" || e == "multipart")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{connector} has no fixtures");
    files
}

#[test]
fn every_connector_verifies_signed_requests_and_refuses_tampered_ones() {
    for connector in webhook::REGISTRY {
        let name = connector.name();
        let secrets = secrets(name, SECRET);
        for path in fixtures(name) {
            let file = format!("{name}/{}", path.file_name().unwrap().to_string_lossy());
            let (headers, body) = signed(name, &fs::read(&path).unwrap(), SECRET, NOW);
            let request = WebhookRequest { headers: fixture_headers(name, &path, headers), query: "", body: &body };
            connector.verify(&request, &secrets, NOW).unwrap_or_else(|e| panic!("{file}: {e}"));

            let tampered = tamper(name, &body);
            let request_tampered = WebhookRequest { body: &tampered, ..request.clone() };
            if name != "telegram" {
                // Telegram's token does not cover the body: TLS and the secret URL protect it.
                assert_eq!(
                    connector.verify(&request_tampered, &secrets, NOW),
                    Err(VerifyError::BadSignature),
                    "{file}"
                );
            }
            let wrong = self::secrets(name, WRONG_SECRET);
            assert_eq!(connector.verify(&request, &wrong, NOW), Err(VerifyError::BadSignature), "{file}");
            let unsigned_body = if name == "mailgun" { fs::read(&path).unwrap() } else { body.clone() };
            let unsigned = WebhookRequest { headers: Vec::new(), query: "", body: &unsigned_body };
            let refused = connector.verify(&unsigned, &secrets, NOW);
            if name == "mailgun" {
                // The fixture as stored has placeholders where the signature goes.
                assert!(refused.is_err(), "{file}");
            } else {
                assert!(matches!(refused, Err(VerifyError::MissingSignature(_))), "{file}: {refused:?}");
            }
        }
    }
}

/// The variants every push connector must survive: a forged delivery (signed with another
/// secret), a replayed one, an expired one (where a timestamp is signed) and a truncated one.
#[test]
fn forged_replayed_expired_and_truncated_deliveries() {
    for connector in webhook::REGISTRY {
        let name = connector.name();
        let secrets = secrets(name, SECRET);
        for path in fixtures(name) {
            let file = format!("{name}/{}", path.file_name().unwrap().to_string_lossy());
            let original = fs::read(&path).unwrap();

            // Forged: signed with a key that is not the endpoint's.
            let (headers, body) = signed(name, &original, WRONG_SECRET, NOW);
            let forged = WebhookRequest { headers, query: "", body: &body };
            assert!(connector.verify(&forged, &secrets, NOW).is_err(), "{file}: forged delivery accepted");

            // Replayed: the same delivery twice gives the same inquiries (deduplicated downstream by
            // id); with a signed timestamp, a replay after the window is stale.
            let (headers, body) = signed(name, &original, SECRET, NOW);
            let request = WebhookRequest { headers: fixture_headers(name, &path, headers), query: "", body: &body };
            let later = NOW + Duration::seconds(30);
            assert_eq!(connector.verify(&request, &secrets, later), Ok(()), "{file}: replay within the window");
            let first = connector.parse(&request, account(name), &mut context).unwrap();
            let second = connector.parse(&request, account(name), &mut context).unwrap();
            let ids = |p: &webhook::Parsed| p.inquiries.iter().map(|i| i.id).collect::<Vec<_>>();
            assert_eq!(ids(&first), ids(&second), "{file}: a replay must give the same ids");
            if TIMESTAMPED.contains(&name) {
                let replay = NOW + Duration::seconds(301);
                assert_eq!(connector.verify(&request, &secrets, replay), Err(VerifyError::Stale), "{file}");
                // Expired: signed an hour ago.
                let (headers, body) = signed(name, &original, SECRET, NOW - Duration::hours(1));
                let expired = WebhookRequest { headers, query: "", body: &body };
                assert_eq!(connector.verify(&expired, &secrets, NOW), Err(VerifyError::Stale), "{file}");
            }

            // Truncated in transit: the signature no longer matches, or the body does not parse.
            let half = &body[..body.len() / 2];
            let truncated = WebhookRequest { body: half, ..request.clone() };
            if connector.verify(&truncated, &secrets, NOW).is_ok() {
                assert!(
                    connector.parse(&truncated, account(name), &mut context).is_err(),
                    "{file}: truncated body parsed"
                );
            }
            // Truncated before signing: never a panic, whatever parse says.
            let (headers, resigned) = signed(name, half, SECRET, NOW);
            let request = WebhookRequest { headers: fixture_headers(name, &path, headers), query: "", body: &resigned };
            if connector.verify(&request, &secrets, NOW).is_ok() {
                let _ = connector.parse(&request, account(name), &mut context);
            }
        }
    }
}

#[test]
fn every_fixture_normalizes_to_its_golden_inquiries() {
    for connector in webhook::REGISTRY {
        for path in fixtures(connector.name()) {
            let (headers, body) = signed(connector.name(), &fs::read(&path).unwrap(), SECRET, NOW);
            let request =
                WebhookRequest { headers: fixture_headers(connector.name(), &path, headers), query: "", body: &body };
            let parsed = connector
                .parse(&request, account(connector.name()), &mut context)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let envelopes = serde_json::to_string_pretty(&parsed.inquiries).unwrap();
            let personal: Vec<_> = parsed.inquiries.iter().map(|i| &i.personal).collect();
            let mut golden = serde_json::json!({
                "ignored": parsed.ignored,
                "inquiries": parsed.inquiries,
                "personal": personal,
            });
            if !parsed.replies.is_empty() {
                let replies: Vec<serde_json::Value> = parsed
                    .replies
                    .iter()
                    .map(|r| {
                        serde_json::json!({"account": r.account, "buyer_id": r.buyer_id, "replied_at": r.replied_at.unix_timestamp()})
                    })
                    .collect();
                golden["replies"] = serde_json::json!(replies);
            }
            if !parsed.erasures.is_empty() {
                golden["erasures"] = serde_json::json!(parsed.erasures);
            }
            let actual = serde_json::to_string_pretty(&golden).unwrap() + "\n";
            let expected_path = path.with_extension("expected.json");
            assert!(!envelopes.contains('@'), "{}: an e-mail address or message id in the envelope", path.display());
            if std::env::var_os("BLESS").is_some() {
                fs::write(&expected_path, &actual).unwrap();
            }
            assert_eq!(
                actual,
                fs::read_to_string(&expected_path).unwrap_or_default(),
                "{} (BLESS=1 rewrites it)",
                path.display()
            );
            for personal in ["Sheena", "Kerry", "Olga", "Jean", "example.fr"] {
                assert!(
                    !envelopes.contains(personal),
                    "{}: personal data `{personal}` in the envelope",
                    path.display()
                );
            }
            for inquiry in &parsed.inquiries {
                assert!(
                    !envelopes.contains(&inquiry.personal.body),
                    "{}: message text in the envelope",
                    path.display()
                );
                if let Some(user) = &inquiry.personal.platform_user_id {
                    assert!(!envelopes.contains(user.as_str()), "{}: platform user id in the envelope", path.display());
                }
            }
        }
    }
}

#[test]
fn meta_subscription_handshake_echoes_the_challenge_only_for_the_right_token() {
    let whatsapp = webhook::find("whatsapp").unwrap();
    let secrets = WebhookSecrets { secret: SECRET, verify_token: Some("my-verify-token"), ..Default::default() };
    let query = "hub.mode=subscribe&hub.verify_token=my-verify-token&hub.challenge=1158201444";
    let request = WebhookRequest { headers: Vec::new(), query, body: b"" };
    assert_eq!(whatsapp.handshake(&request, &secrets), Some(Ok(Handshake::text("1158201444".to_owned()))));
    let wrong =
        WebhookRequest { query: "hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1", ..request.clone() };
    assert_eq!(whatsapp.handshake(&wrong, &secrets), Some(Err(VerifyError::BadToken)));
    let no_token = WebhookSecrets { secret: SECRET, app_key: Some(APP_KEY), ..Default::default() };
    assert_eq!(whatsapp.handshake(&request, &no_token), Some(Err(VerifyError::BadToken)));
    assert_eq!(webhook::find("line").unwrap().handshake(&request, &secrets), None, "LINE has no handshake");
}

#[test]
fn web_form_signatures_expire_after_the_replay_window() {
    let form = webhook::find("web_form").unwrap();
    let body = fs::read(fixtures("web_form").remove(0)).unwrap();
    let (headers, body) = signed("web_form", &body, SECRET, NOW);
    let request = WebhookRequest { headers, query: "", body: &body };
    let secrets = secrets("web_form", SECRET);
    assert_eq!(form.verify(&request, &secrets, NOW + Duration::seconds(299)), Ok(()));
    assert_eq!(form.verify(&request, &secrets, NOW + Duration::seconds(301)), Err(VerifyError::Stale));
    assert_eq!(form.verify(&request, &secrets, NOW - Duration::seconds(301)), Err(VerifyError::Stale));
    let mut context = || NormalizeContext { received_at: NOW, trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" };
    let err = form.parse(&request, "another-site", &mut context).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("account"), "a form may only post for its own account");
}

#[test]
fn the_registry_names_each_connector_once() {
    let mut names: Vec<&str> = webhook::REGISTRY.iter().map(|w| w.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), webhook::REGISTRY.len());
}

#[test]
fn ebay_challenge_is_answered_with_the_documented_hash_in_json() {
    let ebay = webhook::find("ebay").unwrap();
    let secrets = WebhookSecrets {
        verify_token: Some("test-verification-token-0123456789abcdef"),
        endpoint_url: Some("https://gateway.test/webhooks/ebay/acct-1"),
        ..Default::default()
    };
    let request =
        WebhookRequest { headers: Vec::new(), query: "challenge_code=a8628072-3d33-45ee-9004-bee86830a22d", body: b"" };
    let expected = hex::encode(Sha256::digest(
        "a8628072-3d33-45ee-9004-bee86830a22dtest-verification-token-0123456789abcdefhttps://gateway.test/webhooks/ebay/acct-1",
    ));
    let answer = ebay.handshake(&request, &secrets).unwrap().unwrap();
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.body, format!("{{\"challengeResponse\":\"{expected}\"}}"));
    let no_endpoint = WebhookSecrets { endpoint_url: None, ..secrets };
    assert_eq!(ebay.handshake(&request, &no_endpoint), Some(Err(VerifyError::NotConfigured("endpoint_url"))));
    let other = WebhookRequest { query: "", ..request };
    assert_eq!(ebay.handshake(&other, &secrets), None, "a GET without a challenge is no handshake");
}

#[test]
fn ebay_names_its_signing_key_and_accepts_sha256_digests() {
    let ebay = webhook::find("ebay").unwrap();
    let body = fs::read(fixtures("ebay").remove(0)).unwrap();
    let (headers, body) = signed("ebay", &body, SECRET, NOW);
    let request = WebhookRequest { headers, query: "", body: &body };
    assert_eq!(ebay.key_id(&request).as_deref(), Some("test-kid-1"));
    assert_eq!(webhook::find("line").unwrap().key_id(&request), None);
    let json = serde_json::json!({"alg": "ecdsa", "kid": "k2", "signature": ecdsa(SECRET, &Sha256::digest(&body)), "digest": "SHA256"});
    let sha256 = WebhookRequest {
        headers: vec![("x-ebay-signature".into(), b64(json.to_string().as_bytes()))],
        ..request.clone()
    };
    assert_eq!(ebay.verify(&sha256, &secrets("ebay", SECRET), NOW), Ok(()));
    let keyless = WebhookSecrets { public_key: None, ..secrets("ebay", SECRET) };
    assert_eq!(ebay.verify(&request, &keyless, NOW), Err(VerifyError::NotConfigured("public_key")));
}

#[test]
fn shopee_needs_its_registered_url_and_files_under_the_pushed_shop() {
    let shopee = webhook::find("shopee").unwrap();
    let body = fs::read(fixtures("shopee").remove(0)).unwrap();
    let (headers, body) = signed("shopee", &body, SECRET, NOW);
    let request = WebhookRequest { headers, query: "", body: &body };
    let no_url = WebhookSecrets { endpoint_url: None, ..secrets("shopee", SECRET) };
    assert_eq!(shopee.verify(&request, &no_url, NOW), Err(VerifyError::NotConfigured("endpoint_url")));
    let other_url = WebhookSecrets { endpoint_url: Some("https://gateway.test/webhooks/shopee/1"), ..no_url };
    assert_eq!(shopee.verify(&request, &other_url, NOW), Err(VerifyError::BadSignature));
    // One partner app pushes every shop's chats to one URL: filed under the shop the push names.
    let pushed = shopee.parse(&request, "12345", &mut context).unwrap();
    assert!(pushed.inquiries.iter().all(|i| i.account == "947042923"), "{:?}", pushed.inquiries);
    let empty = WebhookRequest { body: b"", ..request.clone() };
    let verify_button = shopee.parse(&empty, "947042923", &mut context).unwrap();
    assert_eq!((verify_button.inquiries.len(), verify_button.ignored), (0, 0));
}
