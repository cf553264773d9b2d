//! Golden tests of the pull connectors. Every fixture `fixtures/pollers/<poller>/<case>.json`
//! holds a position in a polling cycle (`account`, `cursor`, `page`) and the platform's response
//! (`response`: JSON, or a string for non-JSON bodies). The request the poller builds for that
//! position and what it parses from the response must equal `<case>.expected.json`
//! (`BLESS=1` rewrites expectations; review them by eye).

use std::fs;
use std::path::Path;

use inquiry_connectors::poll::{self, PollCredentials, PollPosition, PollTarget};
use inquiry_connectors::NormalizeContext;
use serde::Deserialize;
use time::macros::datetime;

#[derive(Deserialize)]
struct Fixture {
    account: String,
    cursor: Option<String>,
    page: Option<String>,
    response: serde_json::Value,
}

#[test]
fn every_poller_builds_its_requests_and_parses_its_fixtures_to_the_goldens() {
    let credentials = PollCredentials {
        access_token: "test-access-token",
        app_key: Some("test-app-key"),
        app_secret: Some("test-app-secret"),
    };
    for poller in poll::REGISTRY {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pollers").join(poller.name());
        let mut cases: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|_| panic!("{} has no fixtures in {}", poller.name(), dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.to_string_lossy().ends_with(".expected.json"))
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "{} has no fixtures", poller.name());
        for path in cases {
            let fixture: Fixture = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            let body = match &fixture.response {
                serde_json::Value::String(raw) => raw.clone().into_bytes(),
                json => serde_json::to_vec(json).unwrap(),
            };
            let target = PollTarget {
                account: &fixture.account,
                credentials,
                now: datetime!(2026-12-03 08:00:00 UTC),
                wants_answers: true,
            };
            let position = PollPosition { cursor: fixture.cursor.as_deref(), page: fixture.page.as_deref() };
            let request = poller.request(&target, &position);
            let mut context = || NormalizeContext {
                received_at: datetime!(2026-12-03 08:00:01 UTC),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            };
            let page = poller
                .parse(&body, &target, &position, &mut context)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let envelopes = serde_json::to_string(&page.inquiries).unwrap();
            for inquiry in &page.inquiries {
                assert!(
                    !envelopes.contains(&inquiry.personal.body),
                    "{}: message text in the envelope",
                    path.display()
                );
                for personal in [&inquiry.personal.name, &inquiry.personal.email, &inquiry.personal.platform_user_id] {
                    if let Some(value) = personal {
                        assert!(!envelopes.contains(value.as_str()), "{}: `{value}` in the envelope", path.display());
                    }
                }
            }
            let personal: Vec<_> = page.inquiries.iter().map(|i| &i.personal).collect();
            let mut golden = serde_json::json!({
                "request": request,
                "ignored": page.ignored,
                "next_page": page.next_page,
                "cursor": page.cursor,
                "inquiries": page.inquiries,
                "personal": personal,
            });
            // The seller's own answers, where a page has any.
            if !page.replies.is_empty() {
                let rfc3339 = time::format_description::well_known::Rfc3339;
                golden["replies"] = page
                    .replies
                    .iter()
                    .map(|r| {
                        let mut reply = serde_json::json!({
                            "account": r.account, "buyer_id": r.buyer_id,
                            "replied_at": r.replied_at.format(&rfc3339).unwrap(), "message_id": r.message_id,
                        });
                        // Only where the platform names the message answered (keeps the others' goldens).
                        if let Some(question) = &r.in_reply_to {
                            reply["in_reply_to"] = question.as_str().into();
                        }
                        if let Some(responses) = r.responses {
                            reply["responses"] = responses.into();
                        }
                        reply
                    })
                    .collect();
            }
            let actual = serde_json::to_string_pretty(&golden).unwrap() + "\n";
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
        }
    }
}

#[test]
fn a_truncated_or_foreign_response_is_an_error_not_a_panic() {
    let target = PollTarget {
        account: "1001",
        credentials: PollCredentials { access_token: "t", app_key: Some("k"), app_secret: Some("s") },
        now: datetime!(2026-12-03 08:00:00 UTC),
        wants_answers: true,
    };
    for poller in poll::REGISTRY {
        for body in [&b"{\"data\": [{\"id\": "[..], b"<html>502 Bad Gateway</html>", b""] {
            let mut context = || NormalizeContext { received_at: datetime!(2026-12-03 08:00:01 UTC), trace_id: "t" };
            assert!(
                poller.parse(body, &target, &PollPosition::default(), &mut context).is_err(),
                "{} accepted {:?}",
                poller.name(),
                String::from_utf8_lossy(body)
            );
        }
    }
}
