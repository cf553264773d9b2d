//! The HTTP API over real sockets: bad input, auth, metrics, readiness, `check` and shutdown.

mod support;

use std::process::Command;

use hyper::Method;
use support::{audit_entries_of, inquiry_json, metric_value, workspace_file, Gateway, HttpClient, Reply};

const JSON: (&str, &str) = ("content-type", "application/json");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

async fn post(client: &HttpClient, gateway: &Gateway, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
    client.request(Method::POST, &gateway.url(path), body, headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_class_gets_a_4xx_with_a_reason_a_metric_and_stores_nothing() {
    let gateway = Gateway::start("[ingest]\nmax_body_bytes = 4096\nmax_batch_lines = 5\n").await;
    let client = HttpClient::new();
    let good = inquiry_json("shop-1", "good-1");
    let with = |field: &str, value: serde_json::Value| {
        let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
        doc[field] = value;
        doc.to_string().into_bytes()
    };
    let without = |field: &str| {
        let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
        doc.as_object_mut().unwrap().remove(field);
        doc.to_string().into_bytes()
    };
    let mut invalid_utf8 = good.clone().into_bytes();
    let at = invalid_utf8.len() - 20;
    invalid_utf8[at] = 0xff;

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed json", b"{\"channel\": \"generic\",".to_vec(), 400, "malformed_json"),
        ("no body", Vec::new(), 400, "malformed_json"),
        ("not json", b"channel=generic".to_vec(), 400, "malformed_json"),
        ("not an object", b"[1,2,3]".to_vec(), 422, "invalid_type"),
        ("wrong type", with("body", serde_json::json!(42)), 422, "invalid_type"),
        ("missing field", without("external_id"), 422, "missing_field"),
        ("unknown field", with("shipping_speed", serde_json::json!("fast")), 422, "unknown_field"),
        ("unknown channel", with("channel", serde_json::json!("myspace")), 422, "unknown_channel"),
        ("bad timestamp", with("occurred_at", serde_json::json!("yesterday")), 422, "invalid_value"),
        // Retention goes by message time: one far in the future would be kept for ever.
        ("future timestamp", with("occurred_at", serde_json::json!("9999-12-31T00:00:00Z")), 422, "invalid_value"),
        ("bad country", with("buyer", serde_json::json!({"country": "Germany"})), 422, "invalid_value"),
        ("empty body", with("body", serde_json::json!("  ")), 422, "invalid_value"),
        ("invalid utf-8", invalid_utf8, 400, "invalid_utf8"),
        ("over the limit", vec![b' '; 5000], 413, "body_too_large"),
    ];
    for (name, body, status, code) in &cases {
        let reply = post(&client, &gateway, "/v1/inquiries", body.clone(), &[JSON]).await;
        assert_eq!(reply.status.as_u16(), *status, "{name}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.error_code(), *code, "{name}");
        assert_eq!(reply.json()["error"]["trace_id"].as_str().unwrap().len(), 32, "{name} carries a trace id");
    }
    let reply =
        post(&client, &gateway, "/v1/inquiries", good.clone().into_bytes(), &[("content-type", "text/plain")]).await;
    assert_eq!((reply.status.as_u16(), reply.error_code().as_str()), (415, "unsupported_media_type"));
    let reply =
        post(&client, &gateway, "/v1/inquiries", good.clone().into_bytes(), &[JSON, ("idempotency-key", "")]).await;
    assert_eq!((reply.status.as_u16(), reply.error_code().as_str()), (400, "invalid_idempotency_key"));

    // A batch with one bad line is refused whole, naming the line; its good lines are not stored.
    let batch =
        format!("{}\n{}\n{{\"channel\":\"generic\"}}\n", inquiry_json("shop-1", "b-1"), inquiry_json("shop-1", "b-2"));
    let reply = post(&client, &gateway, "/v1/inquiries/batch", batch.into_bytes(), &[NDJSON]).await;
    assert_eq!((reply.status.as_u16(), reply.error_code().as_str()), (422, "invalid_lines"));
    let lines = reply.json()["error"]["lines"].clone();
    assert_eq!(lines.as_array().unwrap().len(), 1);
    assert_eq!((lines[0]["line"].as_u64(), lines[0]["code"].as_str()), (Some(3), Some("missing_field")));
    let too_many: String = (0..6).map(|n| inquiry_json("shop-1", &format!("t-{n}")) + "\n").collect();
    let reply = post(&client, &gateway, "/v1/inquiries/batch", too_many.into_bytes(), &[NDJSON]).await;
    assert_eq!((reply.status.as_u16(), reply.error_code().as_str()), (413, "too_many_lines"));

    // Nothing was stored: the good documents are new when posted now.
    for external_id in ["good-1", "b-1", "b-2", "t-0"] {
        let reply = client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-1", external_id)).await;
        assert_eq!(reply.status, 201, "{external_id} was stored by a refused request");
    }

    let text = support::metrics(&gateway).await;
    for (_, _, _, code) in &cases {
        assert!(
            metric_value(&text, "inquiry_gateway_rejected_total", &[("reason", code)]) >= 1.0,
            "{code} not counted"
        );
    }
    assert_eq!(metric_value(&text, "inquiry_gateway_rejected_total", &[("reason", "invalid_lines")]), 1.0);
    assert_eq!(metric_value(&text, "inquiry_gateway_inquiries_total", &[("outcome", "accepted")]), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_dedup_within_and_across_requests_and_honour_idempotency_keys() {
    let gateway = Gateway::start("").await;
    let client = HttpClient::new();
    let batch = format!(
        "{}\n\n{}\n{}\n",
        inquiry_json("shop-1", "x-1"),
        inquiry_json("shop-1", "x-2"),
        inquiry_json("shop-1", "x-1")
    );
    let reply = post(&client, &gateway, "/v1/inquiries/batch", batch.clone().into_bytes(), &[NDJSON]).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!((body["accepted"].as_u64(), body["duplicates"].as_u64()), (Some(2), Some(1)));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.iter().map(|r| r["line"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 3, 4]);
    assert_eq!(results[0]["id"], results[2]["id"], "same external id in one batch: one inquiry");

    let again = post(&client, &gateway, "/v1/inquiries/batch", batch.into_bytes(), &[NDJSON]).await.json();
    assert_eq!(again["accepted"].as_u64(), Some(0));
    assert_eq!(again["results"][1]["id"], results[1]["id"]);

    // A retry with the same Idempotency-Key and payload is a duplicate; the same key with another
    // payload is refused, and the other payload is not stored.
    let idem = |external_id: &str| inquiry_json("shop-1", external_id).into_bytes();
    let key = ("idempotency-key", "req-77");
    let first = post(&client, &gateway, "/v1/inquiries", idem("k-1"), &[JSON, key]).await;
    let retry = post(&client, &gateway, "/v1/inquiries", idem("k-1"), &[JSON, key]).await;
    let reused = post(&client, &gateway, "/v1/inquiries", idem("k-2"), &[JSON, key]).await;
    assert_eq!((first.status.as_u16(), retry.status.as_u16()), (201, 200));
    assert_eq!(first.json()["id"], retry.json()["id"]);
    assert_eq!((reused.status.as_u16(), reused.error_code().as_str()), (422, "idempotency_key_reused"));
    assert_eq!(post(&client, &gateway, "/v1/inquiries", idem("k-2"), &[JSON]).await.status, 201, "k-2 was not stored");
    let location = first.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/inquiries/{}", first.json()["id"].as_str().unwrap()));

    // The stored record carries the routing decision; its envelope holds personal data only
    // sealed, and the API opens it for the caller.
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let stored = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await;
    assert_eq!(stored.status, 200);
    let record = stored.json();
    assert_eq!(record["decision"]["queue"], "unassigned");
    assert_eq!(record["decision"]["decided_by"], "fallback");
    assert_eq!(record["inquiry"]["region"], "eu");
    assert!(record["inquiry"]["buyer"]["pseudonym"].as_str().unwrap().starts_with("bp_"));
    let envelope = record["inquiry"].to_string();
    for clear in ["k-1@example.com", "Test Buyer", "Berlin", "Bulk order"] {
        assert!(!envelope.contains(clear), "`{clear}` in clear in the envelope");
    }
    assert!(record["inquiry"]["sealed"]["body"].is_string() && record["inquiry"]["sealed"]["email"].is_string());
    assert_eq!(record["personal"]["email"], "k-1@example.com");
    assert_eq!(record["personal"]["name"], "Test Buyer");
    assert_eq!(record["personal"]["body"], "Can you ship 500 units to Berlin?");
    assert_eq!(record["personal"]["subject"], "Bulk order");
    assert_eq!(client.get(&gateway.url("/v1/inquiries/not-a-uuid")).await.error_code(), "invalid_id");
    let unknown = client.get(&gateway.url("/v1/inquiries/01a20cca-ee25-741e-bd8f-7e3170ff15fc")).await;
    assert_eq!((unknown.status.as_u16(), unknown.error_code().as_str()), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_limit_callers_to_their_accounts() {
    let config = "[[auth.api_keys]]\nid = \"shop-1-key\"\nkey = \"key-for-shop-one-0001\"\naccounts = [\"shop-1\"]\n\
                  [[auth.api_keys]]\nid = \"ops\"\nkey = \"key-for-everything-01\"\naccounts = [\"*\"]\n\
                  [[auth.api_keys]]\nid = \"form-relay\"\nkey = \"key-that-only-submits\"\naccounts = [\"*\"]\n\
                  scopes = [\"inquiries:write\"]\n";
    let gateway = Gateway::start(config).await;
    let client = HttpClient::new();
    let url = gateway.url("/v1/inquiries");
    let body = || inquiry_json("shop-1", "auth-1");
    let shop1 = ("authorization", "Bearer key-for-shop-one-0001");

    let none = client.request(Method::POST, &url, body(), &[JSON]).await;
    assert_eq!((none.status.as_u16(), none.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong =
        client.request(Method::POST, &url, body(), &[JSON, ("authorization", "Bearer nope-nope-nope-nope")]).await;
    assert_eq!(wrong.status, 401);
    let other = client.request(Method::POST, &url, inquiry_json("shop-2", "auth-2"), &[JSON, shop1]).await;
    assert_eq!((other.status.as_u16(), other.error_code().as_str()), (403, "account_forbidden"));
    let ok =
        client.request(Method::POST, &url, body(), &[JSON, ("authorization", "bearer key-for-shop-one-0001")]).await;
    assert_eq!(ok.status, 201);
    let ops = client
        .request(
            Method::POST,
            &url,
            inquiry_json("shop-2", "auth-2"),
            &[JSON, ("authorization", "Bearer key-for-everything-01")],
        )
        .await;
    assert_eq!(ops.status, 201);
    let id = ops.json()["id"].as_str().unwrap().to_owned();
    let hidden = client.request(Method::GET, &gateway.url(&format!("/v1/inquiries/{id}")), "", &[shop1]).await;
    assert_eq!(hidden.status, 404, "a key never sees another account's inquiries");
    assert!(!gateway.log().contains("key-for-shop-one"), "keys never appear in logs");

    // A read of personal data is in the audit log before the answer: who, which inquiry, whose.
    let read = client
        .request(
            Method::GET,
            &gateway.url(&format!("/v1/inquiries/{id}")),
            "",
            &[("authorization", "Bearer key-for-everything-01")],
        )
        .await;
    assert_eq!(read.status, 200);
    let read = read.json();
    assert_eq!(read["personal"]["email"], "auth-2@example.com");
    let reads = audit_entries_of(&gateway, "inquiry.read").await;
    assert_eq!(reads.len(), 1, "the refused read (404) opened nothing and is not a read: {reads:?}");
    assert_eq!(reads[0]["actor"], "api_key:ops");
    assert_eq!(reads[0]["inquiry_id"], id.as_str());
    assert_eq!(reads[0]["subject"], read["inquiry"]["buyer"]["pseudonym"]);
    assert_eq!(reads[0]["detail"]["personal_data"], true);
    assert!(!reads[0].to_string().contains("auth-2@example.com"), "the entry holds no personal data");

    // A key scoped to submitting posts, but reads nothing and records no replies.
    let relay = ("authorization", "Bearer key-that-only-submits");
    let posted = client.request(Method::POST, &url, inquiry_json("shop-3", "relay-1"), &[JSON, relay]).await;
    assert_eq!(posted.status, 201);
    let relayed = posted.json()["id"].as_str().unwrap().to_owned();
    let peek = client.request(Method::GET, &gateway.url(&format!("/v1/inquiries/{relayed}")), "", &[relay]).await;
    assert_eq!((peek.status.as_u16(), peek.error_code().as_str()), (403, "scope_missing"));
    assert!(peek.json()["error"]["message"].as_str().unwrap().contains("inquiries:read"));
    let reply_path = format!("/v1/inquiries/{relayed}/reply");
    let reply = client.request(Method::POST, &gateway.url(&reply_path), "", &[JSON, relay]).await;
    assert_eq!((reply.status.as_u16(), reply.error_code().as_str()), (403, "scope_missing"));
    let conversion_path = format!("/v1/inquiries/{relayed}/conversion");
    let order = r#"{"order_id": "o-1"}"#;
    let conversion = client.request(Method::POST, &gateway.url(&conversion_path), order, &[JSON, relay]).await;
    assert_eq!((conversion.status.as_u16(), conversion.error_code().as_str()), (403, "scope_missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_is_kept_once_audited_counted_and_shown_and_bad_reports_are_refused() {
    let gateway = Gateway::start("").await;
    let client = HttpClient::new();
    let posted =
        client.request(Method::POST, &gateway.url("/v1/inquiries"), inquiry_json("shop-1", "c-1"), &[JSON]).await;
    assert_eq!(posted.status, 201);
    let id = posted.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/inquiries/{id}/conversion");
    let report = |body: &'static str| {
        let (client, url) = (client.clone(), gateway.url(&path));
        async move { client.request(Method::POST, &url, body, &[JSON]).await }
    };

    for (body, code, field) in [
        (r#"{"value": "10"}"#, "invalid_json", None),
        // serde would read a struct from an array by position: an object it must be.
        (r#"["o-1"]"#, "invalid_json", None),
        (r#"{"order_id": "o-1", "coupon": "x"}"#, "invalid_json", None),
        (r#"{"order_id": ""}"#, "invalid_value", Some("order_id")),
        (r#"{"order_id": "o-1", "value": "12,50", "currency": "EUR"}"#, "invalid_value", Some("value")),
        (r#"{"order_id": "o-1", "value": 12.5}"#, "invalid_value", Some("currency")),
        (r#"{"order_id": "o-1", "value": true, "currency": "EUR"}"#, "invalid_value", Some("value")),
        (r#"{"order_id": "o-1", "converted_at": "2099-01-01T00:00:00Z"}"#, "invalid_value", Some("converted_at")),
    ] {
        let refused = report(body).await;
        assert_eq!((refused.status.as_u16(), refused.error_code().as_str()), (400, code), "{body}");
        if let Some(field) = field {
            assert_eq!(refused.json()["error"]["field"], field, "{body}");
        }
    }
    // The message says where and what, never the value (serde's own would quote it).
    let quoted = report(r#"{"order_id": 4930901820}"#).await;
    let message = quoted.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("line 1") && !message.contains("4930901820"), "{message}");
    let unknown = client
        .request(
            Method::POST,
            &gateway.url("/v1/inquiries/0190a0c4-5c7e-7000-8000-000000000000/conversion"),
            r#"{"order_id": "o-1"}"#,
            &[JSON],
        )
        .await;
    assert_eq!(unknown.status, 404);
    let wrong_method = client.get(&gateway.url(&path)).await;
    assert_eq!((wrong_method.status.as_u16(), wrong_method.headers["allow"].to_str().unwrap()), (405, "POST"));

    let first = report(r#"{"order_id": "8100000000000001", "value": 129.9, "currency": "EUR"}"#).await;
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["recorded"], true);
    let again = report(r#"{"order_id": "8100000000000002"}"#).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        (again.json()["recorded"].clone(), again.json()["conversion"]["order_id"].clone()),
        (false.into(), "8100000000000001".into()),
        "the first report is kept"
    );

    let shown = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json();
    assert_eq!(shown["conversion"]["order_id"], "8100000000000001");
    assert_eq!(
        (shown["conversion"]["value"].as_str(), shown["conversion"]["currency"].as_str()),
        (Some("129.9"), Some("EUR"))
    );
    let text = support::metrics(&gateway).await;
    assert_eq!(
        metric_value(&text, "inquiry_gateway_conversions_total", &[("channel", "generic")]),
        1.0,
        "counted once"
    );
    assert_eq!(metric_value(&text, "inquiry_gateway_conversion_seconds_count", &[("channel", "generic")]), 1.0);
    let converted = audit_entries_of(&gateway, "inquiry.converted").await;
    assert_eq!(converted.len(), 1, "{converted:?}");
    // The log outlives an erasure: it proves which order (by a keyed fingerprint), not the order
    // id, nor its plain SHA-256 (which trying order ids in turn would reverse).
    let entry = converted[0].to_string();
    assert!(!entry.contains("8100000000000001"), "{converted:?}");
    assert!(!entry.contains("353b725340b2a1c443f5fdf50e3c8d6407fe4666f1902f7fe6a650482404ce26"), "{converted:?}");
    assert_eq!(converted[0]["inquiry_id"].as_str(), Some(id.as_str()));
    assert_eq!(converted[0]["detail"]["order_fingerprint"].as_str().map(str::len), Some(64), "{converted:?}");

    // The buyer's erasure takes the conversion with it, and no report is taken after it.
    let erase = r#"{"kind": "erasure", "jurisdiction": "gdpr", "subject": {"email": "c-1@example.com"}}"#;
    let erased = client.request(Method::POST, &gateway.admin_url("/v1/subject-requests"), erase, &[JSON]).await;
    assert_eq!(erased.status, 200, "{}", String::from_utf8_lossy(&erased.body));
    let shown = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json();
    assert_eq!(shown["conversion"], serde_json::Value::Null, "{shown}");
    let late = report(r#"{"order_id": "8100000000000003"}"#).await;
    assert_eq!((late.status.as_u16(), late.error_code().as_str()), (409, "subject_erased"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_promtool_and_hold_every_hop_histogram() {
    let gateway = Gateway::start("").await;
    let client = HttpClient::new();
    for n in 0..20 {
        client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-1", &format!("p-{n}"))).await;
    }
    // The store gauges are refreshed every 250 ms: wait for the message index to count all 20.
    let mut text = String::new();
    for _ in 0..40 {
        text = support::metrics(&gateway).await;
        if metric_value(&text, "inquiry_gateway_store_message_index_entries", &[]) == 20.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(metric_value(&text, "inquiry_gateway_store_message_index_entries", &[]), 20.0);
    for hop in ["normalize", "queue", "dedup", "route", "store", "ingest"] {
        let count =
            metric_value(&text, "inquiry_gateway_hop_duration_seconds_count", &[("hop", hop), ("channel", "generic")]);
        assert_eq!(count, 20.0, "hop {hop}");
        assert!(text
            .contains(&format!("inquiry_gateway_hop_duration_seconds_bucket{{hop=\"{hop}\",channel=\"generic\",le=")));
    }
    assert!(metric_value(&text, "inquiry_gateway_store_commit_seconds_count", &[]) >= 1.0);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: .ci/run installs it");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let ready = client.get(&gateway.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["sinks"]["embedded"], "ready");
    assert_eq!(client.get(&gateway.admin_url("/healthz")).await.status, 200);
    let wrong_method = client.request(Method::DELETE, &gateway.url("/v1/inquiries"), "", &[]).await;
    assert_eq!((wrong_method.status.as_u16(), wrong_method.headers["allow"].to_str().unwrap()), (405, "GET, POST"));
    let wrong_method = client.request(Method::GET, &gateway.url("/v1/inquiries/batch"), "", &[]).await;
    assert_eq!((wrong_method.status.as_u16(), wrong_method.headers["allow"].to_str().unwrap()), (405, "POST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut gateway = Gateway::start("").await;
    let client = HttpClient::new();
    let reply = client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-1", "t-1")).await;
    assert_eq!(reply.status, 201);
    let status = gateway.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", gateway.log());
    assert!(gateway.log().contains("inquiry gateway stopped"));
    gateway.restart().await;
    let again = client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-1", "t-1")).await;
    assert_eq!(again.status, 200, "stored before shutdown");
}

#[test]
fn check_accepts_the_examples_and_rejects_bad_files_with_a_precise_message() {
    let bin = env!("CARGO_BIN_EXE_inquiry-gateway");
    let secrets = [
        "SHOP_EU_1_API_KEY",
        "META_APP_SECRET",
        "META_VERIFY_TOKEN",
        "LINE_CHANNEL_SECRET",
        "TELEGRAM_SECRET_TOKEN",
        "TIKTOK_APP_SECRET",
        "TIKTOK_APP_KEY",
        "WEB_FORM_SIGNING_KEY",
        "META_PAGE_TOKEN",
        "SHOPEE_LIVE_PUSH_KEY",
        "SHOPIFY_CLIENT_SECRET",
        "SHOPEE_PARTNER_KEY",
        "SHOPEE_SHOP_TOKEN",
        "MAILGUN_WEBHOOK_SIGNING_KEY",
        "EBAY_VERIFICATION_TOKEN",
        "EBAY_APP_TOKEN",
        "IMAP_SUPPORT_PASSWORD",
        "FEISHU_BOT_SECRET",
        "CRM_SLA_WEBHOOK_SECRET",
        "WHATSAPP_TOKEN",
        "SMTP_PASSWORD",
    ];
    let urls = ["FEISHU_BOT_URL", "SLACK_WEBHOOK_URL", "CRM_SLA_WEBHOOK_URL"];
    for example in ["embedded.toml", "kafka-cql.toml", "connectors.toml", "plugins.toml", "reach.toml"] {
        let mut check = Command::new(bin);
        check.args(["check", "--config"]).arg(workspace_file(&format!("deploy/examples/{example}")));
        for name in secrets {
            check.env(name, "example-secret-0123456789");
        }
        for name in urls {
            check.env(name, "https://hooks.example.com/bot/0123456789");
        }
        let ok = check.output().unwrap();
        assert!(ok.status.success(), "{example}: {}", String::from_utf8_lossy(&ok.stderr));
    }

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[ingest]\nlisten = \"0.0.0.0:8080\"\nmax_body_bytes = 12\n").unwrap();
    let out = Command::new(bin).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ingest.max_body_bytes") && stderr.contains("auth.api_keys"), "{stderr}");

    std::fs::write(&bad, "[ingest]\nlisten = 8080\n").unwrap();
    let out = Command::new(bin).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"), "names the field");
    // A syntax error is placed by line and column; the line itself is not quoted (a secret
    // written inline would reach the logs and the reload answer).
    std::fs::write(&bad, "[auth]\ntokens = [\n  { token = \"inline-secret-0123456789\" scopes = [] },\n]\n").unwrap();
    let out = Command::new(bin).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3, column"), "{stderr}");
    assert!(!stderr.contains("inline-secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_rotated_on_sighup_without_a_restart() {
    let credentials = |key: &str, token: &str, secret: &str| {
        format!(
            "[[auth.api_keys]]\nid = \"shop\"\nkey = \"{key}\"\naccounts = [\"*\"]\n\
             [[admin.tokens]]\nid = \"ops\"\ntoken = \"{token}\"\nscopes = [\"audit:read\"]\n\
             [[webhooks]]\nconnector = \"telegram\"\naccount = \"shop-bot\"\nsecret = \"{secret}\"\n"
        )
    };
    let mut gateway =
        Gateway::start(&credentials("old-api-key-000000001", "old-admin-token-000001", "old-telegram-secret-1")).await;
    let client = HttpClient::new();
    let telegram = std::fs::read(workspace_file("connectors/tests/fixtures/webhooks/telegram/message.json")).unwrap();
    let (inquiries, tree_head) = (gateway.url("/v1/inquiries"), gateway.admin_url("/v1/audit/tree-head"));
    let webhook = gateway.url("/webhooks/telegram/shop-bot");
    let post = |key: &str, n: u32| {
        let (client, url, auth) = (client.clone(), inquiries.clone(), format!("Bearer {key}"));
        async move {
            let headers = [JSON, ("authorization", auth.as_str())];
            client.request(Method::POST, &url, inquiry_json("shop-1", &format!("rot-{n}")), &headers).await.status
        }
    };
    let audit = |token: &str| {
        let (client, url, auth) = (client.clone(), tree_head.clone(), format!("Bearer {token}"));
        async move { client.request(Method::GET, &url, "", &[("authorization", auth.as_str())]).await.status }
    };
    let hook = |secret: &str| {
        let (client, url, body) = (client.clone(), webhook.clone(), telegram.clone());
        let secret = secret.to_owned();
        async move {
            client
                .request(Method::POST, &url, body, &[("x-telegram-bot-api-secret-token", secret.as_str())])
                .await
                .status
        }
    };
    assert_eq!(post("old-api-key-000000001", 1).await, 201);
    assert_eq!(audit("old-admin-token-000001").await, 200);
    assert_eq!(hook("old-telegram-secret-1").await, 200);

    // Rotated in the file, then SIGHUP: the new ones work, the old ones are refused, no restart.
    gateway.reconfigure(&credentials("new-api-key-000000002", "new-admin-token-000002", "new-telegram-secret-2"));
    support::eventually(std::time::Duration::from_secs(10), "the new api key is taken", || async {
        post("new-api-key-000000002", 2).await == 201
    })
    .await;
    assert_eq!(post("old-api-key-000000001", 3).await, 401);
    assert_eq!(audit("new-admin-token-000002").await, 200);
    assert_eq!(audit("old-admin-token-000001").await, 401);
    assert_eq!(hook("new-telegram-secret-2").await, 200);
    assert_eq!(hook("old-telegram-secret-1").await, 401);

    // A config that does not validate changes nothing.
    gateway.reconfigure("[[auth.api_keys]]\nid = \"shop\"\nkey = \"short\"\naccounts = [\"*\"]\n");
    support::eventually(std::time::Duration::from_secs(10), "the refusal is logged", || async {
        gateway.log().contains("SIGHUP: the config does not validate")
    })
    .await;
    assert_eq!(post("new-api-key-000000002", 4).await, 201);
    assert!(!gateway.log().contains("new-api-key") && !gateway.log().contains("new-telegram"), "no secrets in logs");

    // The applied reload is in the audit log (ids, endpoints, the file's hash; no secret); the
    // refused one applied nothing and is not.
    let entries_url = gateway.admin_url("/v1/audit/entries?from=0&limit=1000");
    let reloads = || {
        let (client, url) = (client.clone(), entries_url.clone());
        async move {
            let reply =
                client.request(Method::GET, &url, "", &[("authorization", "Bearer new-admin-token-000002")]).await;
            assert_eq!(reply.status, 200);
            let body = String::from_utf8(reply.body.to_vec()).unwrap();
            assert!(!body.contains("new-api-key") && !body.contains("new-telegram-secret"), "no secret in the log");
            body.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|e| e["kind"] == "config.reloaded")
                .collect::<Vec<_>>()
        }
    };
    let logged = reloads().await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["actor"], "signal:SIGHUP");
    assert_eq!(logged[0]["detail"]["api_keys"], serde_json::json!(["shop"]));
    assert_eq!(logged[0]["detail"]["admin_tokens"], serde_json::json!(["ops"]));
    assert_eq!(logged[0]["detail"]["webhooks"], serde_json::json!(["telegram/shop-bot"]));
    assert_eq!(logged[0]["detail"]["config_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(
        logged[0]["detail"]["routing"], "reloaded",
        "no plugins before or after: nothing changed, nothing failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_buyers_inquiries_are_listed_newest_first_within_the_keys_accounts() {
    let config = "[[auth.api_keys]]\nid = \"ops\"\nkey = \"key-for-everything-01\"\naccounts = [\"*\"]\n\
                  [[auth.api_keys]]\nid = \"shop-1-key\"\nkey = \"key-for-shop-one-0001\"\naccounts = [\"shop-1\"]\n\
                  [[auth.api_keys]]\nid = \"relay\"\nkey = \"key-that-only-submits\"\naccounts = [\"*\"]\n\
                  scopes = [\"inquiries:write\"]\n";
    let gateway = Gateway::start(config).await;
    let client = HttpClient::new();
    let ops = ("authorization", "Bearer key-for-everything-01");
    let from = |email: &str, account: &str, external_id: &str, second: u32| {
        let mut doc: serde_json::Value = serde_json::from_str(&inquiry_json(account, external_id)).unwrap();
        doc["buyer"]["email"] = email.into();
        doc["occurred_at"] = format!("2026-11-24T08:00:{second:02}Z").into();
        doc.to_string()
    };
    let mut posted = Vec::new();
    for (second, (account, external_id)) in
        [("shop-1", "rb-1"), ("shop-2", "rb-2"), ("shop-1", "rb-3")].into_iter().enumerate()
    {
        let doc = from("returning@example.com", account, external_id, second as u32 + 1);
        let reply = client.request(Method::POST, &gateway.url("/v1/inquiries"), doc, &[JSON, ops]).await;
        assert_eq!(reply.status, 201);
        posted.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    let other = from("someone-else@example.com", "shop-1", "rb-4", 9);
    assert_eq!(client.request(Method::POST, &gateway.url("/v1/inquiries"), other, &[JSON, ops]).await.status, 201);
    let first = client.request(Method::GET, &gateway.url(&format!("/v1/inquiries/{}", posted[0])), "", &[ops]).await;
    let buyer = first.json()["inquiry"]["buyer"]["pseudonym"].as_str().unwrap().to_owned();

    let list = |key: &'static str, query: String| {
        let (client, url) = (client.clone(), gateway.url(&format!("/v1/inquiries?{query}")));
        async move { client.request(Method::GET, &url, "", &[("authorization", key)]).await }
    };
    let ids = |reply: &Reply| -> Vec<String> {
        reply.json()["inquiries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["inquiry"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list("Bearer key-for-everything-01", format!("buyer={buyer}")).await;
    assert_eq!(all.status, 200);
    assert_eq!(ids(&all), [posted[2].clone(), posted[1].clone(), posted[0].clone()], "newest first, one buyer only");
    assert!(!String::from_utf8_lossy(&all.body).contains("returning@example.com"), "personal data stays sealed");
    assert_eq!(all.json()["inquiries"][0]["decision"]["queue"], "unassigned");
    let shop1 = list("Bearer key-for-shop-one-0001", format!("buyer={buyer}")).await;
    assert_eq!(ids(&shop1), [posted[2].clone(), posted[0].clone()], "only the key's accounts");
    let newest = list("Bearer key-for-everything-01", format!("buyer={buyer}&limit=1")).await;
    assert_eq!(ids(&newest), [posted[2].clone()]);

    let relay = list("Bearer key-that-only-submits", format!("buyer={buyer}")).await;
    assert_eq!((relay.status.as_u16(), relay.error_code().as_str()), (403, "scope_missing"));
    let bad = list("Bearer key-for-everything-01", "buyer=returning@example.com".to_owned()).await;
    assert_eq!((bad.status.as_u16(), bad.error_code().as_str()), (400, "invalid_value"));
    assert_eq!(bad.json()["error"]["field"], "buyer");
    let zero = list("Bearer key-for-everything-01", format!("buyer={buyer}&limit=0")).await;
    assert_eq!((zero.status.as_u16(), zero.json()["error"]["field"].as_str()), (400, Some("limit")));
    let unknown = list("Bearer key-for-everything-01", format!("buyer=bp_{}", "0".repeat(32))).await;
    assert_eq!((unknown.status.as_u16(), ids(&unknown).len()), (200, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_too_little_disk_space_new_inquiries_are_refused_and_the_gateway_is_not_ready() {
    // More free space asked for than any disk has: the store's disk counts as almost full.
    let gateway = Gateway::start("[store]\nmin_free_mb = 1000000000000\n").await;
    let client = HttpClient::new();
    // The disk watch runs at start and every 2 s: refused from the first check on.
    let mut refused = client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-1", "disk-1")).await;
    for n in 0..50 {
        if refused.status.as_u16() == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let body = inquiry_json("shop-1", &format!("disk-{n}"));
        refused = client.post_json(&gateway.url("/v1/inquiries"), body).await;
    }
    assert_eq!(refused.error_code(), "disk_full");
    assert_eq!(refused.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("30"));
    let ready = client.get(&gateway.admin_url("/readyz")).await;
    assert_eq!(ready.status.as_u16(), 503);
    assert_eq!(ready.json()["disk_low"], true);
    let metrics = support::metrics(&gateway).await;
    assert!(metric_value(&metrics, "inquiry_gateway_store_free_bytes", &[]) > 0.0, "{metrics}");
    // Alive (not restarted by its orchestrator), and reads still work.
    assert_eq!(client.get(&gateway.admin_url("/healthz")).await.status.as_u16(), 200);
    let unknown = client.get(&gateway.url("/v1/inquiries/01a2407f-1500-8ac9-9b7a-ff56c2cbdba4")).await;
    assert_eq!(unknown.status.as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answers_for_an_inquiry_another_replica_holds() {
    let keys = "[[auth.api_keys]]\nid = \"crm\"\nkey = \"key-of-the-crm-00001\"\naccounts = [\"*\"]\n\
                [[auth.api_keys]]\nid = \"shop-2-key\"\nkey = \"key-for-shop-two-0001\"\naccounts = [\"shop-2\"]\n\
                [store]\npseudonym_key = \"pseudonym-key-shared-by-the-replicas-01\"\n";
    let mut a = Gateway::start(keys).await;
    let mut b = Gateway::start(keys).await;
    // Both replicas list both (a headless Service names every pod, this one included).
    let peers = format!(
        "{keys}[cluster]\npeers = [\"http://{}\", \"http://{}\"]\npeer_timeout_ms = 1000\n",
        a.ingest, b.ingest
    );
    for replica in [&mut a, &mut b] {
        assert!(replica.terminate().success());
        replica.configure_for_restart(&peers);
        replica.restart().await;
    }
    let client = HttpClient::new();
    let crm = ("authorization", "Bearer key-of-the-crm-00001");
    let posted =
        post(&client, &a, "/v1/inquiries", inquiry_json("shop-1", "held-by-a").into_bytes(), &[JSON, crm]).await;
    assert_eq!(posted.status, 201);
    let id = posted.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/inquiries/{id}");

    // B does not hold it: it asks A, which answers with the personal data opened.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let read = client.request(Method::GET, &b.url(&path), "", &[crm, ("traceparent", &traceparent)]).await;
    assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
    assert_eq!(read.json()["inquiry"]["id"], id.as_str());
    assert_eq!(read.json()["personal"]["email"], "held-by-a@example.com");
    // A audited the read: the client's key, and the replica that asked for it.
    let reads = audit_entries_of(&a, "inquiry.read").await;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["actor"], "api_key:crm");
    assert!(reads[0]["detail"]["via_replica"].as_str().is_some_and(|v| v.starts_with("127.0.0.1:")), "{reads:?}");
    let (source, via) = (reads[0]["source"].as_str().unwrap(), reads[0]["detail"]["via_replica"].as_str().unwrap());
    assert_ne!(source, via, "the client's address, not the asking replica's");
    assert_eq!(reads[0]["detail"]["trace_id"], trace, "the client's trace");
    assert!(audit_entries_of(&b, "inquiry.read").await.is_empty(), "B opened nothing");
    let found = support::metric(&b, "inquiry_gateway_peer_reads_total", &[("outcome", "found")]).await;
    assert_eq!(found, 1.0);

    // A key that may not see the account learns nothing on either replica; nor does an unknown id.
    let shop2 = ("authorization", "Bearer key-for-shop-two-0001");
    let hidden = client.request(Method::GET, &b.url(&path), "", &[shop2]).await;
    assert_eq!((hidden.status.as_u16(), hidden.error_code().as_str()), (404, "not_found"));
    let unknown =
        client.request(Method::GET, &b.url(&format!("/v1/inquiries/{}", uuid::Uuid::now_v7())), "", &[crm]).await;
    assert_eq!(unknown.status, 404);
    let not_found = support::metric(&b, "inquiry_gateway_peer_reads_total", &[("outcome", "not_found")]).await;
    assert_eq!(not_found, 2.0);
    let unauthenticated = client.request(Method::GET, &b.url(&path), "", &[]).await;
    assert_eq!(unauthenticated.status, 401, "no key: no one is asked");

    // A client cannot pose as a replica: the peer header must be signed with the cluster's key.
    let forged = ("x-inquiry-gateway-peer", "v1 1700000000 198.51.100.7:1 00ff");
    let posing = client.request(Method::GET, &a.url(&path), "", &[crm, forged]).await;
    assert_eq!((posing.status.as_u16(), posing.error_code().as_str()), (401, "peer_signature_invalid"));

    // With A down, B cannot tell whether the inquiry exists: 503 and retry, never a false 404.
    assert!(a.terminate().success());
    let down = client.request(Method::GET, &b.url(&path), "", &[crm]).await;
    assert_eq!((down.status.as_u16(), down.error_code().as_str()), (503, "peer_unavailable"));
    assert_eq!(down.headers["retry-after"], "1");
    assert!(
        !b.log().contains("held-by-a@example.com") && !b.log().contains("key-of-the-crm"),
        "nothing personal or secret in logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_the_listener_stops_accepting_at_its_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = Gateway::start("[ingest]\nmax_connections = 2\nheader_read_timeout_ms = 1500\n").await;
    // One client trickles headers it never finishes, another connects and sends nothing: they
    // hold both places.
    let mut slow = tokio::net::TcpStream::connect(gateway.ingest).await.unwrap();
    slow.write_all(b"POST /v1/inquiries HTTP/1.1\r\nHost: gateway\r\n").await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(gateway.ingest).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // A third client waits for a place (it is not refused, and not served at once)...
    let client = HttpClient::new();
    let started = std::time::Instant::now();
    let reply = post(&client, &gateway, "/v1/inquiries", inquiry_json("shop-1", "conn-1").into_bytes(), &[JSON]).await;
    let waited = started.elapsed();
    assert_eq!(reply.status.as_u16(), 201, "{}", String::from_utf8_lossy(&reply.body));
    assert!(waited >= std::time::Duration::from_millis(1000), "served only once a place was free: {waited:?}");

    // ...which the gateway freed by closing both connections.
    for (name, stream) in [("slow", &mut slow), ("idle", &mut idle)] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the {name} connection was closed by the gateway");
        assert!(!String::from_utf8_lossy(&buf).contains(" 201 "), "nothing was served on the {name} connection");
    }
    let open =
        metric_value(&support::metrics(&gateway).await, "inquiry_gateway_http_connections", &[("listener", "ingest")]);
    assert!((1.0..=2.0).contains(&open), "the client's kept-alive connection, maybe one more: {open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_open_on_loopback_refuses_what_web_pages_send() {
    let gateway = Gateway::start("").await;
    let client = HttpClient::new();
    let body = || inquiry_json("shop-1", "page-1").into_bytes();
    // A page's cross-site POST, a fetch, and a rebound host name: all refused, nothing stored.
    let refused = [
        vec![JSON, ("origin", "https://evil.example")],
        vec![JSON, ("sec-fetch-site", "cross-site")],
        vec![JSON, ("host", "evil.example:8080")],
    ];
    for headers in &refused {
        let reply = post(&client, &gateway, "/v1/inquiries", body(), headers).await;
        assert_eq!((reply.status.as_u16(), reply.error_code().as_str()), (403, "browser_refused"), "{headers:?}");
    }
    let admin =
        client.request(Method::GET, &gateway.admin_url("/v1/plugins"), Vec::new(), &[("host", "evil.example")]).await;
    assert_eq!((admin.status.as_u16(), admin.error_code().as_str()), (403, "browser_refused"));
    let erasure = br#"{"kind":"erasure","subject":{"email":"victim@example.com"}}"#.to_vec();
    let admin =
        client.request(Method::POST, &gateway.admin_url("/v1/subject-requests"), erasure, &[("origin", "null")]).await;
    assert_eq!((admin.status.as_u16(), admin.error_code().as_str()), (403, "browser_refused"));

    // Tools send none of it; a page the user typed in (Sec-Fetch-Site: none) is no other site's.
    let typed = post(&client, &gateway, "/v1/inquiries", body(), &[JSON, ("sec-fetch-site", "none")]).await;
    assert_eq!(typed.status.as_u16(), 201, "{}", String::from_utf8_lossy(&typed.body));
    let local =
        client.request(Method::GET, &gateway.admin_url("/v1/plugins"), Vec::new(), &[("host", "localhost")]).await;
    assert_eq!(local.status.as_u16(), 200);
}
