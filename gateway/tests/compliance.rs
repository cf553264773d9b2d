//! Compliance end to end: personal data sealed everywhere, export and erasure over the admin API,
//! and the audit log's tamper evidence. The erasure test runs against the real Kafka broker and
//! Cassandra node that `tests/run-all.sh` starts (127.0.0.1:9092 and :9042).

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use inquiry_connectors::Inquiry;
use inquiry_gateway::compliance::subjects::Subjects;
use inquiry_gateway::compliance::vault::Vault;
use inquiry_gateway::pipeline::StoredInquiry;
use inquiry_gateway::store::Store;
use serde_json::{json, Value};
use support::{eventually, unique, wait_spool_empty, Gateway, HttpClient, Method};

const BROKERS: &str = "127.0.0.1:9092";
const CQL: &str = "127.0.0.1:9042";
const ERASER: &str = "token-of-the-privacy-officer";
const READER: &str = "token-that-may-only-read-audit";

/// Admin tokens: one that may do everything with subjects and the audit log, one that only reads.
fn admin_tokens() -> String {
    format!(
        "[[admin.tokens]]\nid = \"privacy\"\ntoken = \"{ERASER}\"\n\
         scopes = [\"subjects:export\", \"subjects:erase\", \"subjects:read\", \"audit:read\"]\n\
         [[admin.tokens]]\nid = \"auditor\"\ntoken = \"{READER}\"\nscopes = [\"audit:read\"]\n\
         [compliance]\ntree_head_interval_ms = 200\n"
    )
}

fn inquiry(email: &str, name: &str, external_id: &str, body: &str) -> String {
    json!({
        "channel": "generic", "account": "shop-gdpr", "external_id": external_id,
        "conversation_id": format!("conv-{external_id}"),
        "buyer": { "name": name, "email": email, "country": "DE" },
        "subject": format!("Question from {name}"), "body": body,
        "occurred_at": "2026-11-24T08:00:00Z",
    })
    .to_string()
}

async fn admin(
    client: &HttpClient,
    gateway: &Gateway,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> support::Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    client.request(method, &gateway.admin_url(path), body, &headers).await
}

/// Every audit entry, as the admin API serves it.
async fn audit_entries(client: &HttpClient, gateway: &Gateway) -> Vec<Value> {
    let reply =
        admin(client, gateway, Method::GET, "/v1/audit/entries?from=0&limit=10000", Some(READER), Value::Null).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    String::from_utf8_lossy(&reply.body).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// True when `needle` occurs anywhere in the files under `dir`.
fn found_on_disk(dir: &Path, needle: &str) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return true;
            }
        }
    }
    false
}

/// The gateway's own data subject registry, opened the way an attacker holding the disk (and
/// the key-encryption key kept beside it) would.
fn registry_of(store_dir: &Path) -> Arc<Subjects> {
    let store = Store::open(store_dir).unwrap();
    let kek = std::fs::read_to_string(store_dir.join("keys/kek")).unwrap();
    let kek: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(kek.trim()).unwrap().try_into().unwrap();
    let vault = Arc::new(Vault::new("default", &kek, &store.pseudonym_key().unwrap()));
    Arc::new(Subjects::new(vault, store))
}

/// Posts one inquiry per buyer country (`""`: unknown), buyer `<tag><n>@example.com`; their ids.
async fn post_by_country(gateway: &Gateway, client: &HttpClient, tag: &str, countries: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for (n, country) in countries.iter().enumerate() {
        let mut buyer = json!({ "email": format!("{tag}{n}@example.com") });
        if !country.is_empty() {
            buyer["country"] = json!(country);
        }
        let doc = json!({
            "channel": "generic", "account": format!("shop-{tag}"), "external_id": format!("{tag}-{n}"),
            "buyer": buyer, "body": "hello", "occurred_at": "2026-11-24T08:00:00Z",
        });
        let reply = client.post_json(&gateway.url("/v1/inquiries"), doc.to_string()).await;
        assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Posts a Shopify compliance webhook `body` on `topic` to `url`, signed with `secret` the way
/// Shopify signs (base64 HMAC-SHA256 of the body), with its `X-Shopify-Event-Id` when given.
async fn post_shopify(
    client: &HttpClient,
    url: &str,
    secret: &str,
    topic: &str,
    body: &str,
    event: Option<&str>,
) -> support::Reply {
    let signature = base64::engine::general_purpose::STANDARD.encode(support::hmac_sha256(secret, &[body.as_bytes()]));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("x-shopify-topic", topic),
        ("x-shopify-hmac-sha256", signature.as_str()),
    ];
    headers.extend(event.map(|event| ("x-shopify-event-id", event)));
    client.request(Method::POST, url, body.as_bytes().to_vec(), &headers).await
}

/// (key, value) of every record of `topic`, via kcat; a tombstone has the value `NULL`.
fn kcat(topic: &str) -> Vec<(String, String)> {
    let out = Command::new("kcat")
        .args(["-b", BROKERS, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-Z", "-f", "%k\t%s\n"])
        .output()
        .expect("kcat runs");
    assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_readable_personal_data_in_the_store_kafka_or_cql_and_the_log_still_verifies() {
    let prefix = unique("c");
    let keyspace = unique("c_");
    let config = format!(
        "{}[sinks.kafka]\nbrokers = \"{BROKERS}\"\ntopic_prefix = \"{prefix}.\"\npartitions = 2\nlocation = \"eu\"\n\
         [sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nlocation = \"eu\"\n{}",
        admin_tokens(),
        support::cql_login()
    );
    let mut gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let anna = ("anna.erasure@example.com", "Anna Erasure", "ANNA-SECRET-TEXT: my parcel to Hamburg");
    let bob = ("bob.keeps@example.com", "Bob Keeps", "BOB-KEPT-TEXT: invoice please");
    let mut ids = (Vec::new(), Vec::new());
    for n in 0..3 {
        for ((email, name, body), out) in [(anna, &mut ids.0), (bob, &mut ids.1)] {
            let doc = inquiry(email, name, &format!("{}-{n}", &email[..3]), &format!("{body} #{n}"));
            let reply = client.post_json(&gateway.url("/v1/inquiries"), doc).await;
            assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
            out.push(reply.json()["id"].as_str().unwrap().to_owned());
        }
    }
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(120)).await;
    wait_spool_empty(&gateway, "cql", Duration::from_secs(120)).await;

    // Export: every inquiry of Anna, decrypted, with the Art. 15 information; nothing of Bob.
    let export = admin(
        &client,
        &gateway,
        Method::POST,
        "/v1/subject-requests",
        Some(ERASER),
        json!({ "kind": "export", "subject": { "email": "Anna.Erasure@example.com" } }),
    )
    .await;
    assert_eq!(export.status, 200, "{}", String::from_utf8_lossy(&export.body));
    let document = export.json();
    let exported: HashSet<String> = document["inquiries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["inquiry"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exported, ids.0.iter().cloned().collect::<HashSet<_>>());
    for exported in document["inquiries"].as_array().unwrap() {
        assert_eq!(exported["personal"]["email"], anna.0);
        assert_eq!(exported["personal"]["name"], anna.1);
        assert!(exported["personal"]["body"].as_str().unwrap().starts_with("ANNA-SECRET-TEXT"));
        assert!(exported["original_payload"].as_str().unwrap().contains(anna.0));
    }
    let text = String::from_utf8_lossy(&export.body);
    assert!(!text.contains("Bob") && !text.contains("BOB-KEPT-TEXT"), "another buyer's data in the export");
    assert!(document["processing"]["purposes"].is_array() && document["request"]["due_at"].is_string());
    assert!(document["audit_events"].as_array().unwrap().iter().any(|e| e["kind"] == "inquiry.ingested"));
    assert_eq!(document["audit_events_from"], 0, "the whole log was searched");

    // Unauthenticated and under-scoped calls are refused, and audited.
    let erase = json!({ "kind": "erasure", "jurisdiction": "gdpr", "subject": { "email": anna.0 } });
    let anonymous = admin(&client, &gateway, Method::POST, "/v1/subject-requests", None, erase.clone()).await;
    assert_eq!(anonymous.status, 401);
    let reader = admin(&client, &gateway, Method::POST, "/v1/subject-requests", Some(READER), erase.clone()).await;
    assert_eq!((reader.status.as_u16(), reader.error_code().as_str()), (403, "scope_missing"));

    // Erasure.
    let erased = admin(&client, &gateway, Method::POST, "/v1/subject-requests", Some(ERASER), erase).await;
    assert_eq!(erased.status, 200, "{}", String::from_utf8_lossy(&erased.body));
    let request = erased.json()["request"].clone();
    assert_eq!((request["status"].as_str(), request["inquiries"].as_u64()), (Some("completed"), Some(3)));
    assert_eq!(request["pending_sinks"], json!([]), "kafka and cql did their part");
    let pseudonym = request["subjects"][0].as_str().unwrap().to_owned();
    let listed = admin(
        &client,
        &gateway,
        Method::GET,
        &format!("/v1/subject-requests/{}", request["id"].as_str().unwrap()),
        Some(ERASER),
        Value::Null,
    )
    .await;
    assert_eq!(listed.json()["kind"], "erasure");

    // The API: Anna's inquiries remain (routing metadata) with nothing personal; Bob's open.
    for id in &ids.0 {
        let record = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json();
        assert!(record["personal"].is_null() && record["inquiry"]["sealed"].is_null(), "{record}");
        assert_eq!(record["inquiry"]["raw_ref"], "erased");
    }
    let kept = client.get(&gateway.url(&format!("/v1/inquiries/{}", ids.1[0]))).await.json();
    assert!(kept["personal"]["body"].as_str().unwrap().starts_with("BOB-KEPT-TEXT"));

    // Refused calls were audited with who and from where.
    eventually(Duration::from_secs(10), "refused admin calls in the audit log", || async {
        let entries = audit_entries(&client, &gateway).await;
        let refused: Vec<&Value> =
            entries.iter().filter(|e| e["kind"] == "admin.call" && e["detail"]["allowed"] == false).collect();
        refused.iter().any(|e| e["actor"] == "anonymous" && e["detail"]["status"] == 401 && e["source"].is_string())
            && refused.iter().any(|e| e["actor"] == "admin:auditor" && e["detail"]["status"] == 403)
    })
    .await;
    let entries = audit_entries(&client, &gateway).await;
    assert!(entries.iter().any(|e| e["kind"] == "subject.erased" && e["subject"] == pseudonym.as_str()));
    for sink in ["kafka", "cql"] {
        let persisted: HashSet<String> = entries
            .iter()
            .filter(|e| e["kind"] == "sink.persisted" && e["detail"]["sink"] == sink)
            .flat_map(|e| e["detail"]["inquiry_ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()))
            .collect();
        assert!(ids.0.iter().chain(&ids.1).all(|id| persisted.contains(id)), "every delivery to {sink} is audited");
    }
    let entries_text = serde_json::to_string(&entries).unwrap();
    for clear in [anna.0, anna.1, "ANNA-SECRET", bob.0, "BOB-KEPT"] {
        assert!(!entries_text.contains(clear), "`{clear}` in the audit log");
    }

    // Kafka: the routed records hold Anna's data sealed only, and nothing decrypts it any more;
    // the compacted subjects topic has her tombstone.
    let routed = kcat(&format!("{prefix}.inquiries.routed.v2"));
    assert_eq!(routed.len(), 6, "every inquiry published once");
    // CQL: Anna's rows are deleted, Bob's remain.
    let rows = support::cql_inquiry_ids(CQL, &keyspace).await;
    assert!(ids.0.iter().all(|id| !rows.contains(id)), "Anna's CQL rows are deleted");
    assert!(ids.1.iter().all(|id| rows.contains(id)), "Bob's CQL rows remain");
    let tombstones = kcat(&format!("{prefix}.subjects.v1"));
    assert!(tombstones.iter().any(|(k, v)| k == &pseudonym && v == "NULL"), "{tombstones:?}");

    // The audit trail reaches the audit topic and the CQL audit tables too, without personal data.
    let audit_topic = format!("{prefix}.audit.events.v1");
    eventually(Duration::from_secs(30), "the erasure on the audit topic", || async {
        kcat(&audit_topic).iter().any(|(k, v)| k == &pseudonym && v.contains("\"kind\":\"subject.erased\""))
    })
    .await;
    let audit_text = format!("{:?}", kcat(&audit_topic));
    for clear in [anna.0, anna.1, "ANNA-SECRET", bob.0, "BOB-KEPT"] {
        assert!(!audit_text.contains(clear), "`{clear}` on the audit topic");
    }
    let session = support::cql_session(CQL).await;
    let kinds_of_subject = || async {
        let mut rows = session
            .query_iter(format!("SELECT kind FROM {keyspace}.audit_events_by_subject WHERE subject = ?"), (&pseudonym,))
            .await
            .expect("select")
            .rows_stream::<(String,)>()
            .expect("typed rows");
        let mut kinds = Vec::new();
        while let Some(row) = rows.next().await {
            kinds.push(row.expect("row").0);
        }
        kinds
    };
    eventually(Duration::from_secs(30), "the subject's audit events in CQL", || async {
        let kinds = kinds_of_subject().await;
        kinds.iter().filter(|k| *k == "inquiry.ingested").count() == 3 && kinds.iter().any(|k| k == "subject.erased")
    })
    .await;

    assert!(gateway.terminate().success());
    let store_dir = gateway.store_dir();
    let registry = registry_of(&store_dir);
    let mut opened = (0, 0);
    for (_, value) in &routed {
        let record: StoredInquiry = serde_json::from_str(value).unwrap();
        let inquiry: &Inquiry = &record.inquiry;
        assert!(!value.contains("ANNA-SECRET") && !value.contains(anna.0) && !value.contains("BOB-KEPT"));
        match registry.open(inquiry).unwrap() {
            Some(personal) => {
                assert!(ids.1.contains(&inquiry.id.to_string()) && personal.body.starts_with("BOB-KEPT"));
                opened.0 += 1;
            }
            None => {
                assert!(ids.0.contains(&inquiry.id.to_string()), "only Anna's records stop decrypting");
                assert!(!inquiry.sealed.is_empty(), "the published copy still holds ciphertext, now unreadable");
                opened.1 += 1;
            }
        }
    }
    assert_eq!(opened, (3, 3));
    // The embedded store: no personal data in clear anywhere on disk, ever (not even Bob's).
    drop(registry);
    assert!(found_on_disk(&store_dir, "shop-gdpr"), "the scan reads the store's files (positive control)");
    for clear in [anna.0, anna.1, "ANNA-SECRET-TEXT", bob.0, bob.1, "BOB-KEPT-TEXT", "Hamburg"] {
        assert!(!found_on_disk(&store_dir, clear), "`{clear}` in clear in the store directory");
    }

    // The audit log verifies after the erasure.
    let verify = Command::new(env!("CARGO_BIN_EXE_inquiry-gateway"))
        .args(["audit", "verify", "--config"])
        .arg(gateway.dir.join("gateway.toml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout).into_owned() + &String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{report}");
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert!(report["covered"].as_u64().unwrap() >= 10 && report["covered"] == report["entries"], "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_removing_or_reordering_any_audit_entry_is_detected() {
    let mut gateway = Gateway::start(&admin_tokens()).await;
    let client = HttpClient::new();
    for n in 0..20 {
        let doc = inquiry("carla@example.com", "Carla", &format!("t-{n}"), &format!("message {n}"));
        assert_eq!(client.post_json(&gateway.url("/v1/inquiries"), doc).await.status, 201);
    }
    // Bad input is refused with a reason, and the refusal is audited (never the payload).
    let bad =
        client.post_json(&gateway.url("/v1/inquiries"), r#"{"channel":"generic","body":"carla@example.com"}"#).await;
    assert_eq!(bad.status, 422);
    let mut rejected = Vec::new();
    for _ in 0..100 {
        rejected =
            audit_entries(&client, &gateway).await.into_iter().filter(|e| e["kind"] == "request.rejected").collect();
        if !rejected.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["detail"]["reason"], bad.error_code().as_str());
    assert!(!rejected[0].to_string().contains("carla"), "the payload is not audited");

    // A witness fetches signed tree heads while the log grows, and checks a consistency proof.
    let head = |reply: support::Reply| reply.json()["tree_head"].clone();
    let mut first = Value::Null;
    for _ in 0..100 {
        first = head(admin(&client, &gateway, Method::GET, "/v1/audit/tree-head", Some(READER), Value::Null).await);
        if first["tree_size"].as_u64() >= Some(21) {
            break; // signed without further traffic: the log's tail does not wait for the next write
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first["tree_size"].as_u64().unwrap() >= 21, "{first}");
    let doc = inquiry("dora@example.com", "Dora", "t-late", "late message");
    assert_eq!(client.post_json(&gateway.url("/v1/inquiries"), doc).await.status, 201);
    let mut second = first.clone();
    for _ in 0..100 {
        second = head(admin(&client, &gateway, Method::GET, "/v1/audit/tree-head", Some(READER), Value::Null).await);
        if second["tree_size"].as_u64() > first["tree_size"].as_u64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (m, n) = (first["tree_size"].as_u64().unwrap(), second["tree_size"].as_u64().unwrap());
    let proof = admin(
        &client,
        &gateway,
        Method::GET,
        &format!("/v1/audit/proof/consistency?first={m}&second={n}"),
        Some(READER),
        Value::Null,
    )
    .await
    .json();
    let hashes: Vec<[u8; 32]> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    let root = |h: &Value| -> [u8; 32] { hex::decode(h["root_hash"].as_str().unwrap()).unwrap().try_into().unwrap() };
    assert!(inquiry_gateway::compliance::merkle::verify_consistency(m, n, &root(&first), &root(&second), &hashes));
    let public_key = admin(&client, &gateway, Method::GET, "/v1/audit/tree-head", Some(READER), Value::Null)
        .await
        .json()["public_key"]
        .as_str()
        .unwrap()
        .to_owned();

    assert!(gateway.terminate().success());
    let binary = env!("CARGO_BIN_EXE_inquiry-gateway");
    let config = gateway.dir.join("gateway.toml");
    let run = |args: &[&str]| Command::new(binary).args(args).output().unwrap();
    let verified = run(&["audit", "verify", "--config", config.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));

    // An outside witness holds an export and the public key.
    let export = gateway.dir.join("audit.ndjson");
    assert!(run(&["audit", "export", "--config", config.to_str().unwrap(), "--out", export.to_str().unwrap()])
        .status
        .success());
    let original = std::fs::read_to_string(&export).unwrap();
    let verify_export = |text: &str| {
        let path = gateway.dir.join("tampered.ndjson");
        std::fs::write(&path, text).unwrap();
        run(&["audit", "verify", "--export", path.to_str().unwrap(), "--public-key", &public_key]).status.success()
    };
    assert!(verify_export(&original), "the untouched export verifies");
    let lines: Vec<&str> = original.lines().collect();
    let entries: Vec<usize> = (0..lines.len()).filter(|i| !lines[*i].starts_with("{\"tree_head\"")).collect();
    assert!(entries.len() >= 21);
    for &victim in &entries {
        // One byte flipped inside the entry (in a value, so the JSON still parses).
        let line = lines[victim];
        let at = line.find("\"kind\":\"").unwrap() + 9;
        let mut bytes = line.as_bytes().to_vec();
        bytes[at] ^= 0x01;
        let mut tampered = lines.clone();
        let changed = String::from_utf8(bytes).unwrap();
        tampered[victim] = &changed;
        assert!(!verify_export(&(tampered.join("\n") + "\n")), "a flipped byte in entry line {victim} went unnoticed");
    }
    let mut removed = lines.clone();
    removed.remove(entries[3]);
    assert!(!verify_export(&(removed.join("\n") + "\n")), "a removed entry went unnoticed");
    let mut reordered = lines.clone();
    reordered.swap(entries[1], entries[2]);
    assert!(!verify_export(&(reordered.join("\n") + "\n")), "reordered entries went unnoticed");
    let other_key = "11".repeat(32);
    let forged = run(&["audit", "verify", "--export", export.to_str().unwrap(), "--public-key", &other_key]);
    assert!(!forged.status.success(), "heads verified with a key that did not sign them");

    // Tampering in the store itself (an attacker with disk access rewrites an entry).
    {
        let store = Store::open(&gateway.store_dir()).unwrap();
        let (index, entry) = store.audit_entries(5, 6).unwrap().remove(0);
        let tampered = String::from_utf8(entry).unwrap().replace("inquiry.ingested", "inquiry.ingestec");
        store.rewrite_audit_entry(index, tampered.as_bytes()).unwrap();
    }
    let detected = run(&["audit", "verify", "--config", config.to_str().unwrap()]);
    assert!(!detected.status.success(), "a rewritten entry in the store went unnoticed");
    let report: Value = serde_json::from_slice(&detected.stdout).unwrap();
    assert!(report["problems"].to_string().contains("entries 0 to 15"), "the changed entry's range is named: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_region_reaches_only_its_own_clusters_and_eu_data_never_leaves_the_eu() {
    // Two Kafka and two CQL clusters (one broker and one node here, told apart by their topic
    // prefixes and keyspaces): the main ones in the EU for EU-region data, regional ones outside
    // the EU for the rest.
    let (eu, us, eo) = (unique("eu"), unique("us"), unique("eo"));
    let (eu_ks, us_ks) = (unique("eu_"), unique("us_"));
    // And the unusual layout: a cluster in the EU that takes only `other` (unknown countries too).
    let config = format!(
        "{}[sinks.kafka]\nbrokers = \"{BROKERS}\"\ntopic_prefix = \"{eu}.\"\npartitions = 1\n\
         location = \"eu\"\nregions = [\"eu\"]\n\
         [sinks.kafka_regional.us]\nbrokers = \"{BROKERS}\"\ntopic_prefix = \"{us}.\"\npartitions = 1\n\
         location = \"other\"\nregions = [\"other\"]\n\
         [sinks.kafka_regional.eo]\nbrokers = \"{BROKERS}\"\ntopic_prefix = \"{eo}.\"\npartitions = 1\n\
         location = \"eu\"\nregions = [\"other\"]\n\
         [[reach.sla_policies]]\nid = \"day\"\nfirst_response = \"24h\"\n[[reach.sla_rules]]\npolicy = \"day\"\n\
         [sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{eu_ks}\"\nlocation = \"eu\"\nregions = [\"eu\"]\n{login}\
         [sinks.cql_regional.us]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{us_ks}\"\nlocation = \"other\"\n\
         regions = [\"other\"]\n{login}",
        admin_tokens(),
        login = support::cql_login()
    );
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    // "" = the buyer's country is unknown: it may be an EU buyer, so it stays off a non-EU sink.
    let countries = ["DE", "US", "FR", "JP", "DE", ""];
    let ids: Vec<(String, &str)> =
        post_by_country(&gateway, &client, "r", &countries).await.into_iter().zip(countries).collect();
    // Each spool drains although the other region's inquiries are never queued for it.
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(120)).await;
    wait_spool_empty(&gateway, "kafka-us", Duration::from_secs(120)).await;
    wait_spool_empty(&gateway, "kafka-eo", Duration::from_secs(120)).await;
    wait_spool_empty(&gateway, "cql", Duration::from_secs(120)).await;
    wait_spool_empty(&gateway, "cql-us", Duration::from_secs(120)).await;
    let published = |prefix: &str| -> HashSet<String> {
        kcat(&format!("{prefix}.inquiries.routed.v2"))
            .iter()
            .map(|(_, v)| serde_json::from_str::<Value>(v).unwrap()["inquiry"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let outside: HashSet<String> =
        ids.iter().filter(|(_, c)| matches!(*c, "US" | "JP")).map(|(id, _)| id.clone()).collect();
    let inside: HashSet<String> = ids.iter().map(|(id, _)| id.clone()).filter(|id| !outside.contains(id)).collect();
    assert_eq!(published(&us), outside, "only non-EU inquiries reach the cluster outside the EU");
    assert_eq!(published(&eu), inside, "the EU cluster gets the EU inquiries and those of unknown country");
    assert_eq!(support::cql_inquiry_ids(CQL, &us_ks).await, outside, "the CQL store outside the EU");
    assert_eq!(support::cql_inquiry_ids(CQL, &eu_ks).await, inside, "the CQL store in the EU");
    for sink in ["kafka-us", "cql-us"] {
        let labels = [("sink", sink), ("reason", "unknown_country")];
        let held = support::metric(&gateway, "inquiry_gateway_sink_skipped_total", &labels).await;
        assert_eq!(held, 1.0, "the inquiry of unknown country is counted as held back from {sink}");
    }
    // SLA events go to the cluster of their inquiry's region.
    let started = |prefix: &str| -> HashSet<String> {
        kcat(&format!("{prefix}.sla.events.v1")).into_iter().map(|(key, _)| key).collect()
    };
    let unknown: HashSet<String> = ids.iter().filter(|(_, c)| c.is_empty()).map(|(id, _)| id.clone()).collect();
    let eu_other: HashSet<String> = outside.union(&unknown).cloned().collect();
    assert_eq!(published(&eo), eu_other, "the EU cluster taking `other` gets unknown countries too");
    support::eventually(Duration::from_secs(30), "every SLA start is published", || async {
        started(&eu).len() + started(&us).len() + started(&eo).len() >= ids.len() + eu_other.len()
    })
    .await;
    assert_eq!((started(&eu), started(&us)), (inside.clone(), outside.clone()));
    assert_eq!(started(&eo), eu_other, "SLA events go where their inquiry went");

    // The audit trail names EU subjects too: it goes to the EU cluster only.
    let forwarded = |sink: &'static str| {
        let gateway = &gateway;
        async move { support::metric(gateway, "inquiry_gateway_audit_forwarded_total", &[("sink", sink)]).await }
    };
    support::eventually(Duration::from_secs(30), "audit entries reach the EU clusters", || async {
        forwarded("kafka").await > 0.0 && forwarded("cql").await > 0.0
    })
    .await;
    assert!(!kcat(&format!("{eu}.audit.events.v1")).is_empty());
    assert_eq!(forwarded("kafka-us").await, 0.0);
    assert!(kcat(&format!("{us}.audit.events.v1")).is_empty(), "no audit entry leaves the EU");
    assert_eq!(forwarded("cql-us").await, 0.0);
    let session = support::cql_session(CQL).await;
    let count = |table: String| {
        let session = &session;
        async move {
            let result = session.query_unpaged(format!("SELECT COUNT(*) FROM {table}"), ()).await.expect("count");
            result.into_rows_result().unwrap().first_row::<(i64,)>().unwrap().0
        }
    };
    assert!(count(format!("{eu_ks}.audit_events_by_day")).await > 0);
    assert_eq!(count(format!("{us_ks}.audit_events_by_day")).await, 0, "no audit row outside the EU");

    // Erasing an EU buyer tells only the EU cluster (the pseudonym names an EU subject); a US
    // buyer's erasure reaches the US cluster.
    let mut tombstoned = Vec::new();
    for email in ["r0@example.com", "r1@example.com"] {
        let erase = json!({ "kind": "erasure", "jurisdiction": "gdpr", "subject": { "email": email } });
        let erased = admin(&client, &gateway, Method::POST, "/v1/subject-requests", Some(ERASER), erase).await;
        assert_eq!(erased.status, 200, "{}", String::from_utf8_lossy(&erased.body));
        let request = erased.json()["request"].clone();
        assert_eq!((request["status"].as_str(), &request["pending_sinks"]), (Some("completed"), &json!([])));
        tombstoned.push(request["subjects"][0].as_str().unwrap().to_owned());
    }
    let keys = |prefix: &str| -> HashSet<String> {
        kcat(&format!("{prefix}.subjects.v1")).into_iter().map(|(k, _)| k).collect()
    };
    let (eu_keys, us_keys) = (keys(&eu), keys(&us));
    assert!(eu_keys.contains(&tombstoned[0]) && !us_keys.contains(&tombstoned[0]), "{eu_keys:?} {us_keys:?}");
    assert!(us_keys.contains(&tombstoned[1]), "{us_keys:?}");
    // The CQL clusters deleted the erased buyers' rows, each where it had them.
    let (eu_rows, us_rows) = (support::cql_inquiry_ids(CQL, &eu_ks).await, support::cql_inquiry_ids(CQL, &us_ks).await);
    assert!(!eu_rows.contains(&ids[0].0) && !us_rows.contains(&ids[1].0), "{eu_rows:?} {us_rows:?}");
    assert!(eu_rows.contains(&ids[2].0) && us_rows.contains(&ids[3].0), "the others stay");
    let ready = client.get(&gateway.admin_url("/readyz")).await.json();
    assert_eq!(ready["sinks"]["kafka-us"]["status"], "ready", "{ready}");
    assert_eq!(ready["sinks"]["cql-us"]["status"], "ready", "{ready}");
    // Every inquiry stays readable in the embedded store.
    for (id, _) in &ids {
        assert_eq!(client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_compliance_webhooks_create_the_same_subject_requests() {
    let secret = "shopify-app-client-secret";
    let shop = "acme-eu.myshopify.com";
    let config = format!(
        "{}[[webhooks]]\nconnector = \"shopify_compliance\"\naccount = \"{shop}\"\nsecret = \"{secret}\"\n\
         [[webhooks]]\nconnector = \"shopify\"\naccount = \"{shop}\"\nsecret = \"{secret}\"\n",
        admin_tokens()
    );
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    // A return requested without a customer: its buyer is known only by the order.
    let anonymous_return = std::fs::read_to_string(support::workspace_file(
        "connectors/tests/fixtures/webhooks/shopify/returns-request.no-customer.json",
    ))
    .unwrap();
    let returned = post_shopify(
        &client,
        &gateway.url(&format!("/webhooks/shopify/{shop}")),
        secret,
        "returns/request",
        &anonymous_return,
        Some("return-event-1"),
    )
    .await;
    assert_eq!(returned.status, 200, "{}", String::from_utf8_lossy(&returned.body));
    let return_id = returned.json()["ids"][0].as_str().unwrap().to_owned();
    let return_note = |client: &HttpClient| {
        let url = gateway.url(&format!("/v1/inquiries/{return_id}"));
        let client = client.clone();
        async move { client.get(&url).await.json()["personal"]["body"].clone() }
    };
    assert!(return_note(&client).await.as_str().unwrap().contains("Schürze"));
    let mut ids = Vec::new();
    for n in 0..2 {
        let doc = json!({
            "channel": "shopify", "account": shop, "external_id": format!("s-{n}"),
            "buyer": { "id": "191167", "email": "john@example.com", "name": "John Shopper", "country": "NL" },
            "body": format!("JOHN-TEXT {n}"), "occurred_at": "2026-11-24T08:00:00Z",
        });
        let reply = client.post_json(&gateway.url("/v1/inquiries"), doc.to_string()).await;
        assert_eq!(reply.status, 201);
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    let url = gateway.url(&format!("/webhooks/shopify_compliance/{shop}"));
    let send = |topic: &'static str, body: Value, key: &'static str| {
        let (client, url) = (&client, url.clone());
        async move { post_shopify(client, &url, key, topic, &body.to_string(), None).await }
    };
    let customer = json!({ "id": 191167, "email": "john@example.com", "phone": "555-625-1199" });
    // Shopify requires 401 for an invalid HMAC.
    let forged =
        send("customers/redact", json!({ "shop_id": 1, "shop_domain": shop, "customer": customer }), "not-the-secret")
            .await;
    assert_eq!(forged.status, 401);
    assert_eq!(
        client.get(&gateway.url(&format!("/v1/inquiries/{}", ids[0]))).await.json()["personal"]["body"],
        "JOHN-TEXT 0"
    );

    // customers/data_request: an open export request with the GDPR deadline, answered by an operator.
    let requested = send(
        "customers/data_request",
        json!({ "shop_id": 1, "shop_domain": shop, "orders_requested": [299938, 5630179410113u64], "customer": customer, "data_request": { "id": 9999 } }),
        secret,
    )
    .await;
    assert_eq!(requested.status, 200, "{}", String::from_utf8_lossy(&requested.body));
    let open_id = requested.json()["request_id"].as_str().unwrap().to_owned();
    let open =
        admin(&client, &gateway, Method::GET, &format!("/v1/subject-requests/{open_id}"), Some(ERASER), Value::Null)
            .await
            .json();
    assert_eq!((open["status"].as_str(), open["kind"].as_str()), (Some("open"), Some("export")));
    assert_eq!(open["source"], format!("shopify:{shop}"));
    // The customer (e-mail and Shopify id are one subject) and the return filed under its order.
    let subjects: Vec<String> =
        open["subjects"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
    assert_eq!(subjects.len(), 2, "{open}");
    let export = |subject: Value| {
        let (client, gateway, open_id) = (client.clone(), &gateway, open_id.clone());
        async move {
            let body = json!({ "kind": "export", "subject": subject, "fulfils": open_id });
            admin(&client, gateway, Method::POST, "/v1/subject-requests", Some(ERASER), body).await
        }
    };
    // Naming only one of them cannot answer it, and nothing is carried out.
    let partial = export(json!({ "pseudonym": subjects[0] })).await;
    assert_eq!((partial.status.as_u16(), partial.error_code().as_str()), (409, "fulfils_other_subjects"));
    let export = export(json!({ "pseudonyms": subjects })).await;
    assert_eq!(export.status, 200, "{}", String::from_utf8_lossy(&export.body));
    assert_eq!(export.json()["inquiries"].as_array().unwrap().len(), 3, "two from the customer, the return");
    let fulfilled =
        admin(&client, &gateway, Method::GET, &format!("/v1/subject-requests/{open_id}"), Some(ERASER), Value::Null)
            .await
            .json();
    assert_eq!(fulfilled["status"], "completed");

    // customers/redact: erased at once, the customer and the return filed under one of the orders.
    let redacted = send(
        "customers/redact",
        json!({ "shop_id": 1, "shop_domain": shop, "customer": customer, "orders_to_redact": [299938, 5630179410113u64] }),
        secret,
    )
    .await;
    assert_eq!((redacted.status.as_u16(), redacted.json()["status"].as_str()), (200, Some("completed")));
    assert!(return_note(&client).await.is_null(), "the return's note is erased with the customer");

    // A redelivery (the same X-Shopify-Event-Id) answers the request it opened the first time.
    let data_request =
        json!({ "shop_id": 1, "shop_domain": shop, "customer": customer, "data_request": { "id": 10000 } });
    let (body, event) = (data_request.to_string(), Some("98880550-7158-44d4-b7cd-2c97c8a091b5"));
    let first = post_shopify(&client, &url, secret, "customers/data_request", &body, event).await;
    let again = post_shopify(&client, &url, secret, "customers/data_request", &body, event).await;
    assert_eq!((first.status.as_u16(), again.status.as_u16()), (200, 200));
    assert_eq!(first.json()["request_id"], again.json()["request_id"], "one request per event");
    assert_eq!(again.json()["duplicate"], true);
    // The topic header is not signed: a data request's body under `customers/redact` is refused.
    let replayed =
        post_shopify(&client, &url, secret, "customers/redact", &body, Some("5d1c2c4e-0000-4000-8000-1")).await;
    assert_eq!((replayed.status.as_u16(), replayed.error_code().as_str()), (422, "invalid_value"));
    // A shop's redaction, delivered twice, is one open request for an operator.
    let shop_redact = json!({ "shop_id": 1, "shop_domain": shop }).to_string();
    let event = Some("0b4d61a2-6c6e-4c1e-9d55-shop-redact");
    let first = post_shopify(&client, &url, secret, "shop/redact", &shop_redact, event).await;
    let again = post_shopify(&client, &url, secret, "shop/redact", &shop_redact, event).await;
    assert_eq!((first.json()["status"].as_str(), again.json()["duplicate"].as_bool()), (Some("open"), Some(true)));
    assert_eq!(first.json()["request_id"], again.json()["request_id"], "one request per shop redaction");
    let record = admin(
        &client,
        &gateway,
        Method::GET,
        &format!("/v1/subject-requests/{}", first.json()["request_id"].as_str().unwrap()),
        Some(ERASER),
        Value::Null,
    )
    .await
    .json();
    assert_eq!(record["source"], format!("shopify:{shop}:shop_redact:event:{}", event.unwrap()));
    for id in &ids {
        assert!(client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json()["personal"].is_null());
    }
    // Another shop's domain in the body is refused.
    let wrong = send("shop/redact", json!({ "shop_id": 2, "shop_domain": "other.myshopify.com" }), secret).await;
    assert_eq!(wrong.status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_reported_with_an_inquiry_are_audited_withdrawn_given_again_and_exported() {
    const CONSENT_OFFICER: &str = "token-of-the-consent-desk-0123";
    let config = format!(
        "{}[[admin.tokens]]\nid = \"consents\"\ntoken = \"{CONSENT_OFFICER}\"\nscopes = [\"subjects:consent\", \"subjects:read\"]\n",
        admin_tokens()
    );
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let email = format!("{}@example.com", unique("consent-"));
    let with_consent = |external_id: &str, consent: Value| {
        let mut body: Value =
            serde_json::from_str(&inquiry(&email, "Clara", external_id, "Quote for 50 chairs?")).unwrap();
        body["consent"] = consent;
        body.to_string()
    };

    // A consent that does not read is refused with the field; nothing is stored.
    let bad = with_consent("c-0", json!({ "purposes": ["Marketing Mails"], "notice": "privacy-2026-10" }));
    let reply = client.post_json(&gateway.url("/v1/inquiries"), bad).await;
    assert_eq!(reply.status, 422, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["error"]["field"], "consent.purposes");

    let given = json!({ "purposes": ["whatsapp_updates", "marketing_email"], "notice": "privacy-2026-10",
                        "given_at": "2026-11-24T07:59:00Z" });
    let reply = client.post_json(&gateway.url("/v1/inquiries"), with_consent("c-1", given)).await;
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    let first = reply.json()["id"].as_str().unwrap().to_owned();

    // The ingested audit entry is the tamper-evident record of the consent.
    let entries = audit_entries(&client, &gateway).await;
    let ingested = entries
        .iter()
        .find(|e| e["kind"] == "inquiry.ingested" && e["inquiry_id"] == first.as_str())
        .expect("the inquiry's ingested entry");
    assert_eq!(
        ingested["detail"]["consent"],
        json!({ "purposes": ["marketing_email", "whatsapp_updates"], "notice": "privacy-2026-10",
                "given_at": "2026-11-24T07:59:00Z" })
    );
    let pseudonym = ingested["subject"].as_str().unwrap().to_owned();

    let lookup = |token: &'static str| {
        let (client, gateway, email) = (&client, &gateway, email.clone());
        async move {
            let body = json!({ "subject": { "email": email } });
            admin(client, gateway, Method::POST, "/v1/subject-consents", Some(token), body).await
        }
    };
    let states = |reply: support::Reply| -> std::collections::BTreeMap<String, Value> {
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let body = reply.json();
        body["consents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["purpose"].as_str().unwrap().to_owned(), s.clone()))
            .collect()
    };
    let now = states(lookup(CONSENT_OFFICER).await);
    assert_eq!(now.len(), 2);
    for state in now.values() {
        assert_eq!(state["status"], "given");
        assert_eq!(
            (state["subject"].as_str(), state["inquiry_id"].as_str()),
            (Some(pseudonym.as_str()), Some(first.as_str()))
        );
        assert_eq!(state["notice"], "privacy-2026-10");
    }

    // Withdrawal: its own scope, named purposes only.
    let withdraw =
        |purposes: Value| json!({ "kind": "consent_withdrawal", "purposes": purposes, "subject": { "email": email } });
    let path = "/v1/subject-requests";
    let refused =
        admin(&client, &gateway, Method::POST, path, Some(ERASER), withdraw(json!(["marketing_email"]))).await;
    assert_eq!(refused.status, 403, "the privacy token lacks subjects:consent");
    let empty = admin(&client, &gateway, Method::POST, path, Some(CONSENT_OFFICER), withdraw(json!([]))).await;
    assert_eq!((empty.status.as_u16(), empty.json()["error"]["field"].clone()), (422, json!("purposes")));
    let reply =
        admin(&client, &gateway, Method::POST, path, Some(CONSENT_OFFICER), withdraw(json!(["marketing_email"]))).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let request = reply.json()["request"].clone();
    assert_eq!((request["kind"].as_str(), request["status"].as_str()), (Some("consent_withdrawal"), Some("completed")));
    assert_eq!(request["purposes"], json!(["marketing_email"]));
    assert_eq!(request["subjects"], json!([pseudonym]));

    let now = states(lookup(CONSENT_OFFICER).await);
    assert_eq!(now["marketing_email"]["status"], "withdrawn");
    assert_eq!(now["marketing_email"]["withdrawal_request"], request["id"]);
    assert!(now["marketing_email"]["withdrawn_at"].is_string());
    assert_eq!(now["whatsapp_updates"]["status"], "given", "only the named purpose is withdrawn");
    eventually(Duration::from_secs(10), "the withdrawal is in the audit log", || async {
        audit_entries(&client, &gateway).await.iter().any(|e| {
            e["kind"] == "consent.withdrawn"
                && e["subject"] == pseudonym.as_str()
                && e["detail"]["purposes"] == json!(["marketing_email"])
                && e["actor"] == "admin:consents"
        })
    })
    .await;

    // Given again later (with a newer message): it holds again.
    let later = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let mut again: Value = serde_json::from_str(&with_consent(
        "c-2",
        json!({ "purposes": ["marketing_email"], "notice": "privacy-2026-11" }),
    ))
    .unwrap();
    again["occurred_at"] = json!(later);
    let reply = client.post_json(&gateway.url("/v1/inquiries"), again.to_string()).await;
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    let now = states(lookup(CONSENT_OFFICER).await);
    assert_eq!(now["marketing_email"]["status"], "given");
    assert_eq!(now["marketing_email"]["notice"], "privacy-2026-11");
    assert_eq!(now["marketing_email"]["inquiry_id"], reply.json()["id"]);

    // A consent dated ahead by the client's clock (up to 5 minutes is accepted) counts from its
    // receipt: a withdrawal after that receipt still wins.
    let ahead = (time::OffsetDateTime::now_utc() + time::Duration::minutes(4))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let early =
        with_consent("c-3", json!({ "purposes": ["sms_updates"], "notice": "privacy-2026-11", "given_at": ahead }));
    let reply = client.post_json(&gateway.url("/v1/inquiries"), early).await;
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    let reply =
        admin(&client, &gateway, Method::POST, path, Some(CONSENT_OFFICER), withdraw(json!(["sms_updates"]))).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(states(lookup(CONSENT_OFFICER).await)["sms_updates"]["status"], "withdrawn");

    // The subject's export carries the consents' state.
    let export = json!({ "kind": "export", "subject": { "email": email } });
    let reply = admin(&client, &gateway, Method::POST, path, Some(ERASER), export).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let exported = reply.json()["consents"].as_array().unwrap().len();
    assert_eq!(exported, 3, "every purpose is in the export");
    // Reading consents needs subjects:read.
    assert_eq!(lookup(READER).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_export_joins_what_every_replica_holds_and_fails_whole() {
    let a = Gateway::start(&admin_tokens()).await;
    let b = Gateway::start(&admin_tokens()).await;
    let client = HttpClient::new();
    for (gateway, external_id) in [(&a, "on-a"), (&b, "on-b-1"), (&b, "on-b-2")] {
        let body = inquiry("Anna@Example.com", "Anna", external_id, "Do you ship to Vienna?");
        let reply = client.post_json(&gateway.url("/v1/inquiries"), body).await;
        assert_eq!(reply.status.as_u16(), 201, "{}", String::from_utf8_lossy(&reply.body));
    }
    let other = inquiry("ben@example.com", "Ben", "ben-on-a", "Hello");
    assert_eq!(client.post_json(&a.url("/v1/inquiries"), other).await.status.as_u16(), 201);

    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("subject.json");
    std::fs::write(&subject, r#"{"email": "anna@example.com"}"#).unwrap();
    let export = |admins: &[String], token: &str, out: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_inquiry-gateway"));
        command.args(["subjects", "export", "--subject"]).arg(&subject).arg("--out").arg(out);
        for admin in admins {
            command.args(["--admin", admin]);
        }
        command.env("GATEWAY_ADMIN_TOKEN", token).output().unwrap()
    };
    let both = [a.admin_url(""), b.admin_url("")];
    let out = dir.path().join("export.json");
    let run = tokio::task::block_in_place(|| export(&both, ERASER, &out));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let joined: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let replicas: Vec<_> = joined["inquiries"].as_array().unwrap().iter().map(|i| i["replica"].clone()).collect();
    assert_eq!(replicas, [json!(a.admin_url("")), json!(b.admin_url("")), json!(b.admin_url(""))], "{joined}");
    for inquiry in joined["inquiries"].as_array().unwrap() {
        assert_eq!(inquiry["personal"]["email"], "Anna@Example.com", "Anna's only, opened: {inquiry}");
    }
    assert_eq!(joined["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(joined["replicas"][1]["request"]["status"], "completed");
    // Each replica recorded and audited its part.
    for gateway in [&a, &b] {
        let path = "/v1/audit/entries?from=0&limit=1000";
        let entries = admin(&client, gateway, Method::GET, path, Some(ERASER), Value::Null).await;
        let exported = String::from_utf8_lossy(&entries.body).matches("\"subject.exported\"").count();
        assert_eq!(exported, 1, "{}", String::from_utf8_lossy(&entries.body));
    }

    // A replica that does not answer, or refuses the token, fails the whole export: nothing written.
    let unreachable = [a.admin_url(""), "http://127.0.0.1:9".to_owned()];
    let missing = dir.path().join("partial.json");
    let run = tokio::task::block_in_place(|| export(&unreachable, ERASER, &missing));
    assert!(!run.status.success() && !missing.exists());
    assert!(String::from_utf8_lossy(&run.stderr).contains("127.0.0.1:9: not reachable"), "{run:?}");
    let run = tokio::task::block_in_place(|| export(&both, READER, &missing));
    assert!(!run.status.success() && !missing.exists());
    assert!(String::from_utf8_lossy(&run.stderr).contains("HTTP 403"), "{run:?}");
    // Personal data of the subject never reached the command line or the messages.
    assert!(!String::from_utf8_lossy(&run.stderr).to_lowercase().contains("anna@"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopify_redact_left_open_by_a_failed_attempt_is_carried_out_on_redelivery() {
    let (secret, shop, event) = ("shopify-app-client-secret", "acme-eu.myshopify.com", "5f0c1a2b-redact");
    let config = format!(
        "{}[[webhooks]]\nconnector = \"shopify_compliance\"\naccount = \"{shop}\"\nsecret = \"{secret}\"\n",
        admin_tokens()
    );
    let mut gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let doc = json!({
        "channel": "shopify", "account": shop, "external_id": "s-open",
        "buyer": { "id": "191168", "email": "jane@example.com", "country": "NL" },
        "body": "JANE-TEXT", "occurred_at": "2026-11-24T08:00:00Z",
    });
    let reply = client.post_json(&gateway.url("/v1/inquiries"), doc.to_string()).await;
    assert_eq!(reply.status, 201);
    let id = reply.json()["id"].as_str().unwrap().to_owned();

    // The first delivery's attempt failed part way: its erasure record stayed open (written here
    // into the store of the stopped gateway, as the failed attempt left it).
    assert!(gateway.terminate().success());
    let request_id = uuid::Uuid::now_v7();
    {
        let store = Store::open(&gateway.store_dir()).unwrap();
        let record = json!({
            "id": request_id, "kind": "erasure", "jurisdiction": "gdpr",
            "source": format!("shopify:{shop}:event:{event}"), "requested_by": format!("webhook:shopify_compliance/{shop}"),
            "received_at": "2026-12-01T08:00:00Z", "due_at": "2027-01-01T08:00:00Z", "extended_due_at": "2027-03-01T08:00:00Z",
            "status": "open", "completed_at": null, "subjects": [], "inquiries": 0, "pending_sinks": [],
            "expires_at": "2028-12-01T08:00:00Z",
        });
        let mut batch = store.batch();
        batch.put_subject_request(request_id, record.to_string().as_bytes());
        batch.commit().unwrap();
    }
    gateway.restart().await;

    // Shopify redelivers the same event: the open erasure is carried out now, under its id.
    let customer = json!({ "id": 191168, "email": "jane@example.com" });
    let body = json!({ "shop_id": 1, "shop_domain": shop, "customer": customer, "orders_to_redact": [] }).to_string();
    let url = gateway.url(&format!("/webhooks/shopify_compliance/{shop}"));
    let again = post_shopify(&client, &url, secret, "customers/redact", &body, Some(event)).await;
    assert_eq!(again.status, 200, "{}", String::from_utf8_lossy(&again.body));
    let answer = again.json();
    assert_eq!(
        (&answer["request_id"], &answer["status"], &answer["duplicate"]),
        (&json!(request_id), &json!("completed"), &json!(true))
    );
    assert!(client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json()["personal"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_whose_caller_gave_up_is_finished_here_and_in_the_sinks_by_the_retry_loop() {
    let keyspace = unique("r_");
    let config = format!(
        "{}[sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nlocation = \"eu\"\n{}",
        admin_tokens(),
        support::cql_login()
    );
    let mut gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let reply =
        client.post_json(&gateway.url("/v1/inquiries"), inquiry("june@example.com", "June", "j-1", "JUNE-TEXT")).await;
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    wait_spool_empty(&gateway, "cql", Duration::from_secs(120)).await;
    assert!(support::cql_inquiry_ids(CQL, &keyspace).await.contains(&id));
    let pseudonym = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json()["inquiry"]["buyer"]
        ["pseudonym"]
        .as_str()
        .unwrap()
        .to_owned();

    // The caller (a webhook that timed out) went away after recording the erasure open, with its
    // subject and every sink's part pending, before erasing anything.
    assert!(gateway.terminate().success());
    let request_id = uuid::Uuid::now_v7();
    {
        let store = Store::open(&gateway.store_dir()).unwrap();
        let record = json!({
            "id": request_id, "kind": "erasure", "jurisdiction": "gdpr", "source": "test", "requested_by": "test",
            "received_at": "2026-12-01T08:00:00Z", "due_at": "2027-01-01T08:00:00Z", "extended_due_at": "2027-03-01T08:00:00Z",
            "status": "open", "completed_at": null, "subjects": [pseudonym], "inquiries": 0, "pending_sinks": ["cql"],
            "expires_at": "2028-12-01T08:00:00Z",
        });
        let mut batch = store.batch();
        batch.put_subject_request(request_id, record.to_string().as_bytes());
        batch.commit().unwrap();
    }
    gateway.restart().await;

    // The retry loop (every 30 s) carries out all of it: here first, then in the CQL store.
    let path = format!("/v1/subject-requests/{request_id}");
    eventually(Duration::from_secs(90), "the open erasure completed", || async {
        admin(&client, &gateway, Method::GET, &path, Some(ERASER), Value::Null).await.json()["status"] == "completed"
    })
    .await;
    let record = admin(&client, &gateway, Method::GET, &path, Some(ERASER), Value::Null).await.json();
    assert_eq!((record["inquiries"].as_u64(), record["pending_sinks"].as_array().map(Vec::len)), (Some(1), Some(0)));
    assert!(client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json()["personal"].is_null());
    assert!(!support::cql_inquiry_ids(CQL, &keyspace).await.contains(&id), "its CQL row is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inquiry_erased_while_it_waited_for_its_sink_is_never_sent() {
    let prefix = unique("w");
    let sink = |brokers: &str| {
        format!(
            "{}[sinks.kafka]\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}.\"\npartitions = 1\nlocation = \"eu\"\n",
            admin_tokens()
        )
    };
    // The broker is out of reach: both inquiries wait in the spool.
    let mut gateway = Gateway::start(&sink("127.0.0.1:1")).await;
    let client = HttpClient::new();
    let mut ids = Vec::new();
    for (email, name) in [("anna.waits@example.com", "Anna"), ("bob.waits@example.com", "Bob")] {
        let reply = client.post_json(&gateway.url("/v1/inquiries"), inquiry(email, name, &email[..4], "Hello")).await;
        assert_eq!(reply.status, 201);
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    let erase = json!({ "kind": "erasure", "subject": { "email": "anna.waits@example.com" } });
    let erased = admin(&client, &gateway, Method::POST, "/v1/subject-requests", Some(ERASER), erase).await;
    assert_eq!(erased.status, 200, "{}", String::from_utf8_lossy(&erased.body));
    assert_eq!(erased.json()["request"]["pending_sinks"], json!(["kafka"]), "the sink is behind: its part later");

    // The broker is back: Bob's inquiry is sent, Anna's (erased meanwhile) is not.
    gateway.reconfigure(&sink(BROKERS));
    assert!(gateway.terminate().success());
    gateway.restart().await;
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(120)).await;
    let routed: Vec<String> = kcat(&format!("{prefix}.inquiries.routed.v2")).into_iter().map(|(_, v)| v).collect();
    assert_eq!(routed.iter().filter(|v| v.contains(&ids[1])).count(), 1, "{routed:?}");
    assert!(routed.iter().all(|v| !v.contains(&ids[0])), "the erased inquiry was sent: {routed:?}");
    let labels = [("sink", "kafka"), ("reason", "erased")];
    let skipped = support::metric(&gateway, "inquiry_gateway_sink_skipped_total", &labels).await;
    assert_eq!(skipped, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inquiries_spooled_before_a_sink_moved_out_of_the_eu_are_not_sent_to_it() {
    let prefix = unique("moved");
    let sink = |brokers: &str, location: &str, regions: &str| {
        format!(
            "[sinks.kafka]\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}.\"\npartitions = 1\n\
             location = \"{location}\"\nregions = {regions}\n"
        )
    };
    // The cluster is down: everything waits in its spool, EU data included (it is in the EU).
    let mut gateway = Gateway::start(&sink("127.0.0.1:1", "eu", "[\"eu\", \"other\"]")).await;
    let client = HttpClient::new();
    let ids = post_by_country(&gateway, &client, "moved", &["DE", "US", ""]).await;
    // Then the operator points the sink at a cluster outside the EU, for non-EU data only.
    gateway.reconfigure(&sink(BROKERS, "other", "[\"other\"]"));
    assert!(gateway.terminate().success());
    gateway.restart().await;
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(120)).await;
    let published: HashSet<String> = kcat(&format!("{prefix}.inquiries.routed.v2"))
        .iter()
        .map(|(_, v)| serde_json::from_str::<Value>(v).unwrap()["inquiry"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(published, HashSet::from([ids[1].clone()]), "only the US buyer's inquiry left the EU");
    let labels = [("sink", "kafka"), ("reason", "residency")];
    let skipped = support::metric(&gateway, "inquiry_gateway_sink_skipped_total", &labels).await;
    assert_eq!(skipped, 2.0, "the EU and the unknown-country inquiry were skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_known_by_neither_email_nor_id_are_found_by_the_identities_connectors_record() {
    let gateway = Gateway::start(&admin_tokens()).await;
    let client = HttpClient::new();
    // Only a name and a phone number: the generic API files the buyer under the conversation.
    let doc = json!({
        "channel": "generic", "account": "shop-1", "external_id": "anon-1", "conversation_id": "c-77",
        "buyer": { "name": "Ana Phone", "phone": "+49 30 901820" },
        "body": "ANON-TEXT", "occurred_at": "2026-11-24T08:00:00Z",
    });
    let reply = client.post_json(&gateway.url("/v1/inquiries"), doc.to_string()).await;
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_str().unwrap().to_owned();

    let export = |subject: Value| {
        let client = client.clone();
        let gateway = &gateway;
        async move {
            admin(
                &client,
                gateway,
                Method::POST,
                "/v1/subject-requests",
                Some(ERASER),
                json!({ "kind": "export", "subject": subject }),
            )
            .await
        }
    };
    let found = export(json!({ "identities": ["conversation:c-77"], "channel": "generic", "account": "shop-1" })).await;
    assert_eq!(found.status, 200, "{}", String::from_utf8_lossy(&found.body));
    let inquiries = found.json()["inquiries"].as_array().unwrap().clone();
    assert_eq!(inquiries.len(), 1);
    assert_eq!(inquiries[0]["inquiry"]["id"], id.as_str());
    assert_eq!(inquiries[0]["personal"]["body"], "ANON-TEXT");
    // Scoped like user ids: another account's conversation c-77 is someone else.
    let elsewhere =
        export(json!({ "identities": ["conversation:c-77"], "channel": "generic", "account": "shop-2" })).await;
    assert_eq!(
        elsewhere.json()["inquiries"].as_array().map(Vec::len),
        Some(0),
        "{}",
        String::from_utf8_lossy(&elsewhere.body)
    );
    let unscoped = export(json!({ "identities": ["conversation:c-77"] })).await;
    assert_eq!((unscoped.status.as_u16(), unscoped.error_code().as_str()), (422, "no_subject"));
}
