//! The sinks on secured clusters: Kafka over SASL_SSL (SCRAM-SHA-512, and OAUTHBEARER with
//! tokens from a test identity provider; TLS checked against the test CA) and the CQL store with
//! password authentication over TLS. Against the real servers
//! `tests/run-all.sh` starts: the Kafka broker's SASL_SSL listener on 127.0.0.1:9094 and the
//! Cassandra node on 127.0.0.1:9042 (PasswordAuthenticator, optional client TLS), both with the
//! certificates of `tests/services/tls.sh`. Wrong credentials or an untrusted certificate keep
//! the sink degraded (inquiries spool), say why in the log, and never log a secret.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
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

/// The test identity provider: the client credentials grant of RFC 6749 (section 4.4, the
/// client authenticated by HTTP Basic), issuing ES256 JWTs with the key `tests/services/kafka.sh`
/// made and told the broker about (audience `kafka`, issuer `inquiry-gateway-test-idp`).
struct TestIdp {
    url: String,
    /// Every token issued, in order.
    issued: Arc<Mutex<Vec<String>>>,
}

const IDP_CLIENT: &str = "gateway-svc";
const IDP_SECRET: &str = "idp-test-secret-6502";

impl TestIdp {
    /// Over HTTPS with the test CA's server certificate when `tls`, else plain HTTP.
    async fn start(lifetime_s: i64, tls: bool) -> TestIdp {
        let pem = std::fs::read_to_string(tls_dir().parent().unwrap().join("kafka/oauth/signing-key.pem"))
            .expect("tests/services/kafka.sh start made the OAuth test key");
        let der = base64::engine::general_purpose::STANDARD
            .decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
            .unwrap();
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).unwrap();
        let acceptor = tls.then(|| {
            use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
            let chain = CertificateDer::pem_file_iter(tls_dir().join("server.pem")).unwrap().map(Result::unwrap);
            let key = PrivateKeyDer::from_pem_file(tls_dir().join("server.key")).unwrap();
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain.collect(), key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let issued = Arc::new(Mutex::new(Vec::new()));
        let shared = issued.clone();
        let addr = support::serve(acceptor, move |head, body| {
            let (status, answer) = token_answer(head, body, &key, &shared, lifetime_s);
            (status, answer.to_string())
        })
        .await;
        let scheme = if tls { "https" } else { "http" };
        TestIdp { url: format!("{scheme}://{addr}/oauth2/token"), issued }
    }

    fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }
}

/// The token endpoint: a signed JWT for the right client, `invalid_client` for any other.
fn token_answer(
    head: &hyper::http::request::Parts,
    body: &[u8],
    key: &EcdsaKeyPair,
    issued: &Mutex<Vec<String>>,
    lifetime_s: i64,
) -> (u16, serde_json::Value) {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let expected = format!("Basic {}", STANDARD.encode(format!("{IDP_CLIENT}:{IDP_SECRET}")));
    let authorized = head.headers.get("authorization").is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    if !form.iter().any(|(k, v)| k == "grant_type" && v == "client_credentials") {
        return (400, serde_json::json!({"error": "unsupported_grant_type"}));
    }
    if !authorized {
        return (
            401,
            serde_json::json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT","kid":"test-idp-1"}"#);
    let claims = serde_json::json!({
        "sub": IDP_CLIENT, "aud": "kafka", "iss": "inquiry-gateway-test-idp", "scope": "kafka",
        "iat": now, "exp": now + lifetime_s, "jti": unique("jwt-"),
    });
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes()).unwrap();
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
    issued.lock().unwrap().push(token.clone());
    (200, serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime_s}))
}

fn oauth_kafka_config(prefix: &str, idp: &TestIdp, secret: &str) -> String {
    format!(
        "[sinks.kafka]\nbrokers = \"{SECURE_BROKER}\"\ntopic_prefix = \"{prefix}\"\npartitions = 1\nlocation = \"eu\"\n\
         [sinks.kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"OAUTHBEARER\"\n\
         \"ssl.ca.location\" = \"{}\"\n\
         [sinks.kafka.oauth]\ntoken_url = \"{}\"\nclient_id = \"{IDP_CLIENT}\"\nclient_secret = \"{secret}\"\nscope = \"kafka\"\n\
         ca_file = \"{}\"\n",
        tls_dir().join("ca.pem").display(),
        idp.url,
        tls_dir().join("ca.pem").display(),
    )
}

/// Members of consumer group `group`, as the broker's plain listener reports them.
fn group_members(group: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", PLAIN_BROKER).create().expect("client");
    let groups = consumer.fetch_group_list(Some(group), Duration::from_secs(5));
    groups.map_or(0, |list| list.groups().iter().map(|g| g.members().len()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_oauthbearer_gets_every_inquiry_with_tokens_the_gateway_fetches_and_refreshes() {
    // Tokens live 20 s; the broker makes clients log in again every 10 s at most, so inquiries
    // sent after the first token expired reach Kafka only with a refreshed one.
    // The identity provider serves HTTPS with a certificate of the test CA (`ca_file`).
    let idp = TestIdp::start(20, true).await;
    let prefix = format!("{}.", unique("oauth"));
    // Reach-out reads a replies topic: its consumer logs in with the tokens too.
    let replica = unique("oauth-replica-");
    let reach = format!(
        "[polling]\nreplica = \"{replica}\"\n[reach]\nreplies_topic = \"crm.replies.v1\"\n\
         [[reach.sla_policies]]\nid = \"day\"\nfirst_response = \"24h\"\n"
    );
    let gateway = Gateway::start(&format!("{reach}{}", oauth_kafka_config(&prefix, &idp, IDP_SECRET))).await;
    let client = HttpClient::new();
    let topic = format!("{prefix}inquiries.routed.v2");
    let first = post(&gateway, &client, 10).await;
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(60)).await;
    assert_eq!(sink_status(&gateway, &client, "kafka").await["status"], "ready");
    assert!(first.is_subset(&routed_ids(&topic, &first)), "the inquiries reached Kafka over OAUTHBEARER");
    let first_token_issued = Instant::now();
    // Each client (admin, producer, replies consumer) asked for one at its start.
    let at_start = idp.issued().len();
    assert!(at_start >= 1);

    support::eventually(Duration::from_secs(60), "librdkafka asks for a new token before expiry", || async {
        idp.issued().len() > at_start
    })
    .await;
    let expired = Duration::from_secs(22).saturating_sub(first_token_issued.elapsed());
    tokio::time::sleep(expired).await;
    let later = post(&gateway, &client, 10).await;
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(60)).await;
    assert!(later.is_subset(&routed_ids(&topic, &later)), "inquiries sent after the first token expired arrive too");

    // The replies consumer joined its group over the OAUTHBEARER listener.
    let group = format!("inquiry-gateway-replies-{replica}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_members(&group) == 0 {
        assert!(Instant::now() < deadline, "the replies consumer never joined {group}:\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let fetched = support::metric(&gateway, "inquiry_gateway_kafka_oauth_tokens_total", &[("result", "ok")]).await;
    assert!(fetched > at_start as f64, "{fetched} tokens counted, {at_start} at start");
    let log = gateway.log();
    assert!(!log.contains(IDP_SECRET), "the client secret is in the log:\n{log}");
    for token in idp.issued() {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token is in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_a_client_secret_the_identity_provider_refuses_spools_and_says_why() {
    let idp = TestIdp::start(300, false).await;
    let wrong = "not-the-idp-secret-1984";
    let gateway = Gateway::start(&oauth_kafka_config(&format!("{}.", unique("oauth")), &idp, wrong)).await;
    let client = HttpClient::new();
    let ids = post(&gateway, &client, 3).await;
    log_mentions(&gateway, "invalid_client").await;
    let status = sink_status(&gateway, &client, "kafka").await;
    assert_eq!(status["status"], "degraded", "{status}");
    assert_eq!(status["spooled"], ids.len(), "every inquiry waits in the spool: {status}");
    assert!(idp.issued().is_empty());
    assert!(!gateway.log().contains(wrong), "the client secret is in the log:\n{}", gateway.log());
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
