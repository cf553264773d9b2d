//! Golden tests of the e-mail connector: every `fixtures/email/*.eml` parses to its
//! `.expected.json` (`BLESS=1` rewrites expectations), and no envelope carries the buyer's name,
//! address, subject or text.

use std::fs;
use std::path::{Path, PathBuf};

use inquiry_connectors::email::{self, Parsed};
use inquiry_connectors::NormalizeContext;
use time::macros::datetime;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/email");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "e-mail fixtures are missing in {}", dir.display());
    files
}

#[test]
fn every_message_parses_to_its_golden_inquiry() {
    let context = NormalizeContext {
        received_at: datetime!(2026-12-03 14:00:00 UTC),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
    };
    let internal_date = Some(datetime!(2026-12-03 11:59:58 UTC));
    for path in fixtures() {
        let raw = fs::read(&path).unwrap();
        let parsed = email::parse(&raw, "shop-support", internal_date, &context)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let actual = match &parsed {
            Parsed::Inquiry(inquiry) => serde_json::json!({ "inquiry": inquiry, "personal": inquiry.personal }),
            Parsed::Ignored(reason) => serde_json::json!({ "ignored": reason.as_str() }),
        };
        let actual = serde_json::to_string_pretty(&actual).unwrap() + "\n";
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
        if let Parsed::Inquiry(inquiry) = parsed {
            let envelope = serde_json::to_string(&inquiry).unwrap();
            let personal = &inquiry.personal;
            let mut secrets = vec![personal.body.as_str(), personal.identity.as_str()];
            secrets.extend(personal.name.as_deref());
            secrets.extend(personal.email.as_deref());
            secrets.extend(personal.subject.as_deref());
            for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
                assert!(!envelope.contains(secret), "{}: personal data `{secret}` in the envelope", path.display());
            }
        }
    }
}

#[test]
fn the_same_message_gets_the_same_id_whatever_the_internal_date() {
    let context = NormalizeContext { received_at: datetime!(2026-12-03 12:00:00 UTC), trace_id: "0" };
    let raw = fs::read(fixtures().remove(0)).unwrap();
    let id = |date| match email::parse(&raw, "shop-support", Some(date), &context).unwrap() {
        Parsed::Inquiry(inquiry) => inquiry.id,
        Parsed::Ignored(_) => panic!("a buyer message"),
    };
    assert_eq!(id(datetime!(2026-12-01 08:00:00 UTC)), id(datetime!(2026-12-02 08:00:00 UTC)));
}

#[test]
fn a_message_without_a_sender_is_refused() {
    let context = NormalizeContext { received_at: datetime!(2026-12-03 12:00:00 UTC), trace_id: "0" };
    let err = email::parse(b"Subject: hi\n\nbody\n", "shop-support", None, &context).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("from"));
}
