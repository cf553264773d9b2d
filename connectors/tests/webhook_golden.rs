//! Golden tests of the push connectors. For every fixture under `fixtures/webhooks/<connector>/`:
//! a request signed the way the platform documents verifies; the same request with one body byte
//! changed, a wrong secret or no signature header does not; and the body normalizes to its
//! `.expected.json` (`BLESS=1` rewrites expectations).

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, Mac};
use inquiry_connectors::webhook::{self, VerifyError, WebhookRequest, WebhookSecrets};
use inquiry_connectors::NormalizeContext;
use sha2::Sha256;
use time::macros::datetime;
use time::OffsetDateTime;

const SECRET: &str = "test-app-secret-0123456789";
const APP_KEY: &str = "test-app-key";
const NOW: OffsetDateTime = datetime!(2026-11-24 08:00:10 UTC);

fn hmac(parts: &[&[u8]], secret: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The headers the platform would send with `body`, signed with `secret`.
fn signed_headers(connector: &str, body: &[u8], secret: &str) -> Vec<(String, String)> {
    let header = |name: &str, value: String| vec![(name.to_owned(), value)];
    match connector {
        "whatsapp" | "messenger" | "instagram" => {
            header("x-hub-signature-256", format!("sha256={}", hex::encode(hmac(&[body], secret))))
        }
        "line" => header("x-line-signature", base64::engine::general_purpose::STANDARD.encode(hmac(&[body], secret))),
        "telegram" => header("x-telegram-bot-api-secret-token", secret.to_owned()),
        "tiktok_shop" => header("authorization", hex::encode(hmac(&[APP_KEY.as_bytes(), body], secret))),
        "web_form" => {
            let t = NOW.unix_timestamp().to_string();
            header(
                "x-inquiry-signature",
                format!("t={t},v1={}", hex::encode(hmac(&[t.as_bytes(), b".", body], secret))),
            )
        }
        other => panic!("no signing rule for {other} in this test"),
    }
}

fn fixtures(connector: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(connector);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("{connector} has no fixtures in {}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{connector} has no fixtures");
    files
}

#[test]
fn every_connector_verifies_signed_requests_and_refuses_tampered_ones() {
    let secrets = WebhookSecrets { secret: SECRET, app_key: Some(APP_KEY), verify_token: None };
    for connector in webhook::REGISTRY {
        for path in fixtures(connector.name()) {
            let body = fs::read(&path).unwrap();
            let name = format!("{}/{}", connector.name(), path.file_name().unwrap().to_string_lossy());
            let request =
                WebhookRequest { headers: signed_headers(connector.name(), &body, SECRET), query: "", body: &body };
            connector.verify(&request, &secrets, NOW).unwrap_or_else(|e| panic!("{name}: {e}"));

            let mut tampered = body.clone();
            let last = tampered.len() - 2;
            tampered[last] ^= 0x01;
            let request_tampered = WebhookRequest { body: &tampered, ..request.clone() };
            if connector.name() != "telegram" {
                // Telegram's token does not cover the body: TLS and the secret URL protect it.
                assert_eq!(
                    connector.verify(&request_tampered, &secrets, NOW),
                    Err(VerifyError::BadSignature),
                    "{name}"
                );
            }
            let wrong =
                WebhookSecrets { secret: "another-secret-entirely", app_key: Some(APP_KEY), verify_token: None };
            assert_eq!(connector.verify(&request, &wrong, NOW), Err(VerifyError::BadSignature), "{name}");
            let unsigned = WebhookRequest { headers: Vec::new(), query: "", body: &body };
            assert!(
                matches!(connector.verify(&unsigned, &secrets, NOW), Err(VerifyError::MissingSignature(_))),
                "{name}"
            );
        }
    }
}

#[test]
fn every_fixture_normalizes_to_its_golden_inquiries() {
    for connector in webhook::REGISTRY {
        for path in fixtures(connector.name()) {
            let body = fs::read(&path).unwrap();
            let mut context = || NormalizeContext {
                received_at: datetime!(2026-11-24 08:00:01 UTC),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            };
            let account = match connector.name() {
                "web_form" => "site-eu",
                "tiktok_shop" => "7494049642642441621",
                _ => "acct-1",
            };
            let parsed =
                connector.parse(&body, account, &mut context).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let envelopes = serde_json::to_string_pretty(&parsed.inquiries).unwrap();
            let personal: Vec<_> = parsed.inquiries.iter().map(|i| &i.personal).collect();
            let actual = serde_json::to_string_pretty(&serde_json::json!({
                "ignored": parsed.ignored,
                "inquiries": parsed.inquiries,
                "personal": personal,
            }))
            .unwrap()
                + "\n";
            let expected_path = path.with_extension("expected.json");
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
    let secrets = WebhookSecrets { secret: SECRET, app_key: None, verify_token: Some("my-verify-token") };
    let query = "hub.mode=subscribe&hub.verify_token=my-verify-token&hub.challenge=1158201444";
    let request = WebhookRequest { headers: Vec::new(), query, body: b"" };
    assert_eq!(whatsapp.handshake(&request, &secrets), Some(Ok("1158201444".to_owned())));
    let wrong =
        WebhookRequest { query: "hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1", ..request.clone() };
    assert_eq!(whatsapp.handshake(&wrong, &secrets), Some(Err(VerifyError::BadToken)));
    let no_token = WebhookSecrets { secret: SECRET, app_key: Some(APP_KEY), verify_token: None };
    assert_eq!(whatsapp.handshake(&request, &no_token), Some(Err(VerifyError::BadToken)));
    assert_eq!(webhook::find("line").unwrap().handshake(&request, &secrets), None, "LINE has no handshake");
}

#[test]
fn web_form_signatures_expire_after_the_replay_window() {
    let form = webhook::find("web_form").unwrap();
    let body = fs::read(fixtures("web_form").remove(0)).unwrap();
    let request = WebhookRequest { headers: signed_headers("web_form", &body, SECRET), query: "", body: &body };
    let secrets = WebhookSecrets { secret: SECRET, app_key: Some(APP_KEY), verify_token: None };
    assert_eq!(form.verify(&request, &secrets, NOW + time::Duration::seconds(299)), Ok(()));
    assert_eq!(form.verify(&request, &secrets, NOW + time::Duration::seconds(301)), Err(VerifyError::Stale));
    assert_eq!(form.verify(&request, &secrets, NOW - time::Duration::seconds(301)), Err(VerifyError::Stale));
    let mut context = || NormalizeContext { received_at: NOW, trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" };
    let err = form.parse(&body, "another-site", &mut context).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("account"), "a form may only post for its own account");
}

#[test]
fn the_registry_names_each_connector_once() {
    let mut names: Vec<&str> = webhook::REGISTRY.iter().map(|w| w.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), webhook::REGISTRY.len());
}
