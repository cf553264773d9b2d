//! Golden tests of the generic connector: every fixture under `fixtures/generic/ok` normalizes to
//! its `.expected.json`; every one under `fixtures/generic/bad` is refused with the code (and
//! field) its file name gives: `<code>--<field>.json`. Set `BLESS=1` to rewrite expectations.

use std::fs;
use std::path::Path;

use inquiry_connectors::{generic, Channel, NormalizeContext, Region};
use time::macros::datetime;

fn context() -> NormalizeContext<'static> {
    NormalizeContext { received_at: datetime!(2026-11-24 09:10:00 UTC), trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" }
}

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generic").join(kind);
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {kind} fixtures");
    files
}

#[test]
fn valid_fixtures_normalize_to_their_golden_envelopes() {
    for path in fixtures("ok") {
        let inquiry = generic::normalize(&fs::read(&path).unwrap(), &context())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let envelope = serde_json::to_string_pretty(&inquiry).unwrap();
        let actual = serde_json::to_string_pretty(&serde_json::json!({
            "envelope": inquiry,
            "personal": inquiry.personal,
        }))
        .unwrap()
            + "\n";
        let expected_path = path.with_extension("expected.json");
        if std::env::var_os("BLESS").is_some() {
            fs::write(&expected_path, &actual).unwrap();
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        assert_eq!(actual, expected, "{} (BLESS=1 rewrites it)", path.display());
        // The envelope round-trips without its in-memory personal data and carries none of it.
        let parsed = serde_json::from_str::<inquiry_connectors::Inquiry>(&envelope).unwrap();
        assert_eq!(parsed, inquiry_connectors::Inquiry { personal: Default::default(), ..inquiry.clone() });
        assert!(!envelope.contains(&inquiry.personal.body), "{}: message text in envelope", path.display());
        for personal in ["Anna", "Example.com", "example.com", "example.jp"] {
            assert!(!envelope.contains(personal), "{}: personal data `{personal}` in envelope", path.display());
        }
    }
}

#[test]
fn invalid_fixtures_are_refused_with_the_code_and_field_in_their_name() {
    for path in fixtures("bad") {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        // `code--field` or `code--field--what`.
        let mut parts = stem.split("--");
        let (code, field) = (parts.next().unwrap_or_default(), parts.next());
        let err = generic::normalize(&fs::read(&path).unwrap(), &context()).expect_err(&stem);
        assert_eq!(err.code.as_str(), code, "{stem}: {err}");
        if let Some(field) = field {
            assert_eq!(err.field.as_deref(), Some(field), "{stem}");
        }
    }
}

#[test]
fn a_buyer_is_identified_by_e_mail_first_whatever_its_case() {
    let doc = |email: &str| {
        format!(
            r#"{{"channel":"generic","account":"s","external_id":"{email}","buyer":{{"email":"{email}"}},"body":"x","occurred_at":"2026-11-01T00:00:00Z"}}"#
        )
    };
    let ctx = context();
    let identity = |email: &str| generic::normalize(doc(email).as_bytes(), &ctx).unwrap().personal.identity;
    assert_eq!(identity("a@example.com"), "email:a@example.com");
    assert_eq!(identity("A@Example.com "), identity("a@example.com"), "the same buyer, the same identity");
    assert_ne!(identity("b@example.com"), identity("a@example.com"));
    let with_id = r#"{"channel":"generic","account":"s","external_id":"1","buyer":{"id":"u-7","email":"a@example.com"},"body":"x","occurred_at":"2026-11-01T00:00:00Z"}"#;
    let inquiry = generic::normalize(with_id.as_bytes(), &ctx).unwrap();
    assert_eq!(inquiry.personal.identity, "email:a@example.com");
    assert_eq!(inquiry.personal.platform_user_id.as_deref(), Some("u-7"));
    assert_eq!(inquiry.buyer.pseudonym, "", "pseudonyms are the gateway's to assign");
    // A conversation named after the buyer's own id is personal data: left for the pseudonym.
    let chat = r#"{"channel":"whatsapp","account":"s","external_id":"2","conversation_id":"4915112345678","buyer":{"id":"4915112345678"},"body":"x","occurred_at":"2026-11-01T00:00:00Z"}"#;
    let inquiry = generic::normalize(chat.as_bytes(), &ctx).unwrap();
    assert!(inquiry.personal.conversation_is_buyer && inquiry.external.conversation_id.is_empty());
    assert!(!serde_json::to_string(&inquiry).unwrap().contains("4915112345678"));
}

#[test]
fn regions_and_channels() {
    assert_eq!(Region::of_country("DE"), Region::Eu);
    assert_eq!(Region::of_country("NO"), Region::Eu);
    assert_eq!(Region::of_country("US"), Region::Other);
    for channel in Channel::ALL {
        assert_eq!(channel.as_str().parse::<Channel>(), Ok(*channel));
    }
}

#[test]
fn error_messages_never_echo_the_payload() {
    let docs = [
        r#"{"channel":"generic","account":"a","external_id":"1","body":"x","occurred_at":"2026-11-01T00:00:00Z","buyer":{"email":["jane@example.com"]}}"#,
        r#"{"channel":"generic","account":"a","external_id":"1","body":{"text":"jane@example.com"},"occurred_at":"2026-11-01T00:00:00Z"}"#,
        r#"{"channel":"generic","account":"a","external_id":"1","body":"x","occurred_at":"2026-11-01T00:00:00Z","subject":12345678}"#,
        r#"["generic","a","1",null,{},null,"jane@example.com","2026-11-01T00:00:00Z"]"#,
    ];
    for doc in docs {
        let err = generic::normalize(doc.as_bytes(), &context()).expect_err(doc);
        assert_eq!(err.code.as_str(), "invalid_type", "{doc}");
        assert!(!err.message.contains("jane") && !err.message.contains("12345678"), "{}", err.message);
    }
}

#[test]
fn inquiry_ids_are_stable_per_platform_message_and_sort_by_time() {
    let doc = |external_id: &str, occurred_at: &str| {
        format!(
            r#"{{"channel":"generic","account":"s","external_id":"{external_id}","body":"x","occurred_at":"{occurred_at}"}}"#
        )
    };
    let ctx = context();
    let later_ctx = NormalizeContext {
        received_at: datetime!(2026-11-25 00:00:00 UTC),
        trace_id: "0af7651916cd43dd8448eb211c80319c",
        ..ctx
    };
    let a = generic::normalize(doc("m-1", "2026-11-24T08:00:00Z").as_bytes(), &ctx).unwrap();
    let again = generic::normalize(doc("m-1", "2026-11-24T08:00:00Z").as_bytes(), &later_ctx).unwrap();
    let b = generic::normalize(doc("m-2", "2026-11-24T08:00:00Z").as_bytes(), &ctx).unwrap();
    let c = generic::normalize(doc("m-0", "2026-11-24T09:00:00Z").as_bytes(), &ctx).unwrap();
    assert_eq!(a.id, again.id, "same platform message, same id, whenever and wherever it is received");
    let precise = generic::normalize(doc("m-1", "2026-11-24T08:00:00.731Z").as_bytes(), &ctx).unwrap();
    assert_eq!(a.id, precise.id, "a platform's sub-second precision does not change the id");
    assert_ne!(a.id, b.id);
    assert_eq!(a.id.get_version_num(), 8);
    assert!(c.id > a.id && c.id > b.id, "ids sort by the time the buyer sent the message");
}
