//! The sinks on secured clusters: Kafka over SASL_SSL (SCRAM-SHA-512, TLS checked against the
//! test CA) and the CQL store with password authentication over TLS. Against the real servers
//! `tests/run-all.sh` starts: the Kafka broker's SASL_SSL listener on 127.0.0.1:9094 and the
//! Cassandra node on 127.0.0.1:9042 (PasswordAuthenticator, optional client TLS), both with the
//! certificates of `tests/services/tls.sh`. Wrong credentials or an untrusted certificate keep
//! the sink degraded (inquiries spool), say why in the log, and never log a secret.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use support::{inquiry_json, unique, wait_spool_empty, Gateway, HttpClient, StatusCode};

/// The broker's plain listener (the test reads the topics through it).
const PLAIN_BROKER: &str = "127.0.0.1:9092";
/// The broker's SASL_SSL listener.
const SECURE_BROKER: &str = "127.0.0.1:9094";
/// The SCRAM user `tests/services/kafka.sh` creates.
const KAFKA_USER: &str = "gateway";
const KAFKA_PASSWORD: &str = "gateway-test-secret";
const CQL: &str = "127.0.0.1:9042";

/// The test CA's directory (`tests/services/tls.sh`).
fn tls_dir() -> PathBuf {
    let services = std::env::var_os("SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/inquiry-gateway/services")
    });
    let dir = services.join("tls");
    assert!(dir.join("ca.pem").exists(), "{} is missing: tests/services/tls.sh ensure", dir.display());
    dir
}

/// A CA certificate that signed nothing of the test servers.
fn unrelated_ca(dir: &std::path::Path) -> PathBuf {
    let (cert, key) = (dir.join("other-ca.pem"), dir.join("other-ca.key"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=unrelated CA"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl made a CA");
    cert
}

fn kafka_config(prefix: &str, password: &str, ca: &std::path::Path) -> String {
    format!(
        "[sinks.kafka]\nbrokers = \"{SECURE_BROKER}\"\ntopic_prefix = \"{prefix}\"\npartitions = 1\nlocation = \"eu\"\n\
         [sinks.kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"{KAFKA_USER}\"\n\"sasl.password\" = \"{password}\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca.display()
    )
}

/// Posts `count` inquiries and returns their ids.
async fn post(gateway: &Gateway, client: &HttpClient, count: usize) -> HashSet<String> {
    let account = unique("shop-");
    let mut ids = HashSet::new();
    for i in 0..count {
        let reply = client.post_json(&gateway.url("/v1/inquiries"), inquiry_json(&account, &format!("m-{i}"))).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
        ids.insert(reply.json()["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// The sink's readiness entry of `/readyz`.
async fn sink_status(gateway: &Gateway, client: &HttpClient, sink: &str) -> serde_json::Value {
    client.get(&gateway.admin_url("/readyz")).await.json()["sinks"][sink].clone()
}

/// Waits until the log holds `needle` (the forwarder's retries say why the sink is not ready).
async fn log_mentions(gateway: &Gateway, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.log().to_lowercase().contains(needle) {
        assert!(Instant::now() < deadline, "the log never said `{needle}`:\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ids of the routed records in `topic`, read through the plain listener.
fn routed_ids(topic: &str, expected: &HashSet<String>) -> HashSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", PLAIN_BROKER)
        .set("group.id", unique("secure-test-"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !expected.is_subset(&seen) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let headers = message.headers().expect("records carry headers");
            for header in headers.iter().filter(|h| h.key == "inquiry_id") {
                seen.insert(String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned());
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_sasl_ssl_with_scram_gets_every_inquiry_and_the_password_stays_out_of_the_log() {
    let prefix = format!("{}.", unique("sec"));
    let gateway = Gateway::start(&kafka_config(&prefix, KAFKA_PASSWORD, &tls_dir().join("ca.pem"))).await;
    let client = HttpClient::new();
    let ids = post(&gateway, &client, 20).await;
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(60)).await;
    assert_eq!(sink_status(&gateway, &client, "kafka").await["status"], "ready");
    let seen = routed_ids(&format!("{prefix}inquiries.routed.v2"), &ids);
    assert!(
        ids.is_subset(&seen),
        "{} of {} inquiries reached Kafka over SASL_SSL",
        ids.len() - ids.difference(&seen).count(),
        ids.len()
    );
    assert!(!gateway.log().contains(KAFKA_PASSWORD), "the SASL password is in the log:\n{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_a_wrong_password_or_an_untrusted_broker_spools_and_says_why() {
    let client = HttpClient::new();
    // A wrong password: the broker refuses the SCRAM login.
    let wrong = "not-the-password-4711";
    let gateway = Gateway::start(&kafka_config(&format!("{}.", unique("sec")), wrong, &tls_dir().join("ca.pem"))).await;
    let ids = post(&gateway, &client, 5).await;
    log_mentions(&gateway, "authentication").await;
    let status = sink_status(&gateway, &client, "kafka").await;
    assert_eq!(status["status"], "degraded", "{status}");
    assert_eq!(status["spooled"], ids.len(), "every inquiry waits in the spool: {status}");
    assert!(!gateway.log().contains(wrong), "the SASL password is in the log:\n{}", gateway.log());
    drop(gateway);

    // A broker whose certificate the configured CA did not sign: TLS fails before any login.
    let dir = tempfile::tempdir().unwrap();
    let gateway =
        Gateway::start(&kafka_config(&format!("{}.", unique("sec")), KAFKA_PASSWORD, &unrelated_ca(dir.path()))).await;
    post(&gateway, &client, 1).await;
    log_mentions(&gateway, "certificate verify failed").await;
    assert_eq!(sink_status(&gateway, &client, "kafka").await["status"], "degraded");
}

fn cql_config(keyspace: &str, password: &str, ca: &std::path::Path) -> String {
    format!(
        "[sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nlocation = \"eu\"\n\
         username = \"{}\"\npassword = \"{password}\"\n[sinks.cql.tls]\nca_file = \"{}\"\n",
        support::CQL_USER,
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_with_a_password_over_tls_stores_every_inquiry_on_encrypted_logged_in_connections() {
    let keyspace = unique("sec_");
    let gateway = Gateway::start(&cql_config(&keyspace, support::CQL_PASSWORD, &tls_dir().join("ca.pem"))).await;
    let client = HttpClient::new();
    let ids = post(&gateway, &client, 20).await;
    wait_spool_empty(&gateway, "cql", Duration::from_secs(90)).await;

    assert_eq!(support::cql_inquiry_ids(CQL, &keyspace).await, ids, "every inquiry is in the CQL store");
    let session = support::cql_session(CQL).await;

    // The node's own view of its clients: the gateway's connections use TLS and the login.
    // (This test's session is plain, so the TLS connections are the gateway's.)
    let mut clients = session
        .query_iter("SELECT ssl_enabled, username FROM system_views.clients", ())
        .await
        .expect("clients")
        .rows_stream::<(Option<bool>, Option<String>)>()
        .expect("typed rows");
    let mut tls_logins = 0;
    while let Some(row) = clients.next().await {
        if let (Some(true), Some(user)) = row.expect("row") {
            assert_eq!(user, support::CQL_USER);
            tls_logins += 1;
        }
    }
    assert!(tls_logins > 0, "the gateway holds TLS connections to the node, logged in");
    assert!(!gateway.log().contains(support::CQL_PASSWORD), "the password is in the log:\n{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_with_a_wrong_password_or_an_untrusted_node_spools_and_says_why() {
    let client = HttpClient::new();
    let wrong = "not-the-password-0815";
    let gateway = Gateway::start(&cql_config(&unique("sec_"), wrong, &tls_dir().join("ca.pem"))).await;
    let ids = post(&gateway, &client, 3).await;
    log_mentions(&gateway, "authentication").await;
    let status = sink_status(&gateway, &client, "cql").await;
    assert_eq!(status["status"], "degraded", "{status}");
    assert_eq!(status["spooled"], ids.len(), "{status}");
    assert!(!gateway.log().contains(wrong), "the password is in the log:\n{}", gateway.log());
    drop(gateway);

    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&cql_config(&unique("sec_"), support::CQL_PASSWORD, &unrelated_ca(dir.path()))).await;
    post(&gateway, &client, 1).await;
    log_mentions(&gateway, "certificate verify failed").await;
    assert_eq!(sink_status(&gateway, &client, "cql").await["status"], "degraded");
}
