//! Kafka and CQL sinks against the real servers that `tests/run-all.sh` starts (Apache Kafka in
//! KRaft mode on 127.0.0.1:9092, Apache Cassandra on 127.0.0.1:9042). A missing server fails the
//! test; nothing here is skipped. Tests that kill a server hold `SERVERS` so no other test runs
//! against it meanwhile.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use support::{
    inquiry_json, post_batches, service, unique, wait_spool_empty, workspace_file, Gateway, HttpClient, StatusCode,
};

const BROKERS: &str = "127.0.0.1:9092";
const CQL: &str = "127.0.0.1:9042";

/// Serializes the tests of this file: some kill the shared servers.
static SERVERS: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERVERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn kafka_config(prefix: &str) -> String {
    format!("[sinks.kafka]\nbrokers = \"{BROKERS}\"\ntopic_prefix = \"{prefix}\"\npartitions = 3\nlocation = \"eu\"\n")
}

fn cql_config(keyspace: &str) -> String {
    format!(
        "[sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nconsistency = \"local_quorum\"\nlocation = \"eu\"\n{}",
        support::cql_login()
    )
}

/// Reads `topic` from the beginning with a fresh consumer group until every id of `expected` was
/// seen (and 3 s passed without new messages) or `timeout`; returns how often each id was seen.
fn consume_ids(topic: &str, expected: &HashSet<String>, timeout: Duration) -> HashMap<String, usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("test-consumer-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + timeout;
    let mut last_message = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_message = Instant::now();
                let headers = message.headers().expect("records carry headers");
                let id = headers
                    .iter()
                    .find(|h| h.key == "inquiry_id")
                    .and_then(|h| std::str::from_utf8(h.value?).ok())
                    .expect("inquiry_id header");
                assert!(message.key().is_some(), "records are keyed by conversation");
                *seen.entry(id.to_owned()).or_default() += 1;
            }
            Some(Err(err)) => panic!("consumer error: {err}"),
            None => {
                let complete = expected.iter().all(|id| seen.contains_key(id));
                if complete && last_message.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
        }
    }
    seen
}

/// The ids Debian's kcat reads from `topic` (from the `inquiry_id` header).
fn kcat_ids(topic: &str) -> HashSet<String> {
    let out = Command::new("kcat")
        .args(["-b", BROKERS, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%h\n"])
        .output()
        .expect("kcat (Debian package kcat) must be installed: tests/setup.sh installs it");
    assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split(',').find_map(|h| h.strip_prefix("inquiry_id=")).map(str::to_owned))
        .collect()
}

fn assert_all_delivered(acked: &HashSet<String>, seen: &HashMap<String, usize>, what: &str) {
    let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} acknowledged ids missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let unknown = seen.keys().filter(|id| !acked.contains(*id)).count();
    assert_eq!(unknown, 0, "{what}: ids that were never acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_inquiries_reach_kafka_across_a_broker_sigkill() {
    let _servers = lock();
    let prefix = unique("t");
    let topic = format!("{prefix}.inquiries.routed.v2");
    let gateway = Gateway::start(&kafka_config(&format!("{prefix}."))).await;

    // The broker is killed once 15,000 inquiries are acknowledged and restarted at 30,000.
    let acked = post_batches(&gateway, "shop-k", 50_000, 250, 4, move |count| {
        static KILLED: std::sync::Once = std::sync::Once::new();
        static RESTARTED: std::sync::Once = std::sync::Once::new();
        if count >= 15_000 {
            KILLED.call_once(|| service("kafka.sh", "kill9"));
        }
        if count >= 30_000 {
            RESTARTED.call_once(|| service("kafka.sh", "start"));
        }
    })
    .await;
    assert_eq!(acked.len(), 50_000);
    service("kafka.sh", "start"); // in case the load finished before the restart mark
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(180)).await;
    // A forwarder that keeps up takes the records the stage just committed from memory.
    let metrics = support::metrics(&gateway).await;
    let reads = |from| {
        support::metric_value(&metrics, "inquiry_gateway_spool_reads_total", &[("sink", "kafka"), ("from", from)])
    };
    assert!(reads("memory") > 0.0, "no record came from memory: {}", reads("store"));
    assert!(reads("memory") + reads("store") >= 50_000.0, "each record is read at least once");

    let seen = tokio::task::spawn_blocking({
        let (topic, acked) = (topic.clone(), acked.clone());
        move || consume_ids(&topic, &acked, Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert_all_delivered(&acked, &seen, "rdkafka consumer group");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("kafka broker restart: {} ids, {duplicates} duplicate deliveries", seen.len());
    assert_eq!(kcat_ids(&topic), acked, "kcat reads every acknowledged id");

    // Every record validates against the published JSON Schema (Python confluent-kafka consumer).
    let out = Command::new("python3")
        .arg(workspace_file("tests/consumers/validate_routed.py"))
        .args(["--brokers", BROKERS, "--topic", &topic, "--expect", &acked.len().to_string()])
        .arg("--schemas")
        .arg(workspace_file("docs/schemas"))
        .output()
        .expect("python3 runs");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python consumer: {report}");
    assert!(report.contains(&format!("{} distinct inquiries valid", acked.len())), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_while_forwarding_loses_nothing() {
    let _servers = lock();
    let prefix = unique("t");
    let topic = format!("{prefix}.inquiries.routed.v2");
    let mut gateway = Gateway::start(&kafka_config(&format!("{prefix}."))).await;
    let client = HttpClient::new();
    // Topics exist once the sink is ready.
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(60)).await;

    // Take the broker away so that everything spools, then kill the gateway mid-forwarding.
    service("kafka.sh", "kill9");
    let acked = post_batches(&gateway, "shop-g", 5_000, 500, 2, |_| {}).await;
    let ready = client.get(&gateway.admin_url("/readyz")).await.json();
    assert_eq!(ready["sinks"]["kafka"]["spooled"].as_u64(), Some(5_000), "{ready}");
    assert_eq!(ready["ready"], true, "a degraded sink alone keeps ingest ready");
    service("kafka.sh", "start");
    tokio::time::sleep(Duration::from_millis(300)).await; // forwarding resumes...
    gateway.kill9(); // ...and the gateway dies in the middle of it
    gateway.restart().await;
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(120)).await;
    // After a restart nothing is in memory: what was spooled is read back from the store.
    let metrics = support::metrics(&gateway).await;
    let reads = |from| {
        support::metric_value(&metrics, "inquiry_gateway_spool_reads_total", &[("sink", "kafka"), ("from", from)])
    };
    assert_eq!(reads("memory"), 0.0);
    assert!(reads("store") > 0.0);

    let seen = tokio::task::spawn_blocking(move || {
        consume_ids(&topic, &acked.clone(), Duration::from_secs(60)).into_iter().collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let seen: HashMap<String, usize> = seen.into_iter().collect();
    assert_eq!(seen.len(), 5_000, "every acknowledged inquiry reached Kafka after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sink_spools_until_the_budget_then_refuses_with_retry_after() {
    // No broker listens on port 1: the sink is down from the start.
    let gateway =
        Gateway::start("[spool]\nmax_pending = 50\n[sinks.kafka]\nbrokers = \"127.0.0.1:1\"\nlocation = \"eu\"\n")
            .await;
    let client = HttpClient::new();
    let mut accepted = 0;
    let mut refused = None;
    for n in 0..200 {
        let reply = client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-s", &format!("s-{n}"))).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::CREATED);
        accepted += 1;
    }
    let refused = refused.expect("the spool budget is enforced");
    assert_eq!(refused.error_code(), "spool_full");
    assert!(refused.headers.contains_key("retry-after"));
    assert!((50..=51).contains(&accepted), "accepted {accepted} before refusing");
    let ready = client.get(&gateway.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "a full spool makes the gateway unready");
    assert_eq!(ready.json()["sinks"]["kafka"]["status"], "degraded");
    let metrics = support::metrics(&gateway).await;
    assert_eq!(support::metric_value(&metrics, "inquiry_gateway_spool_depth", &[("sink", "kafka")]), accepted as f64);
    assert_eq!(support::metric_value(&metrics, "inquiry_gateway_sink_degraded", &[("sink", "kafka")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_inquiries_reach_cassandra_across_a_node_restart() {
    let _servers = lock();
    let keyspace = unique("t_");
    let gateway = Gateway::start(&cql_config(&keyspace)).await;
    wait_spool_empty(&gateway, "cql", Duration::from_secs(120)).await; // schema migrated

    let acked = post_batches(&gateway, "shop-c", 50_000, 250, 4, move |count| {
        static KILLED: std::sync::Once = std::sync::Once::new();
        if count >= 15_000 {
            KILLED.call_once(|| service("cassandra.sh", "kill9"));
        }
    })
    .await;
    assert_eq!(acked.len(), 50_000);
    service("cassandra.sh", "start");
    wait_spool_empty(&gateway, "cql", Duration::from_secs(300)).await;

    let stored = support::cql_inquiry_ids(CQL, &keyspace).await;
    let missing = acked.difference(&stored).count();
    assert_eq!(missing, 0, "{missing} acknowledged inquiries missing from {keyspace}.inquiries_by_id");
    assert_eq!(stored.len(), acked.len());
}

/// Reads `topic` with kcat: (key, headers, value) of every record, in offset order per partition.
fn kcat_records(topic: &str) -> Vec<(String, String, String)> {
    let out = Command::new("kcat")
        .args(["-b", BROKERS, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k\t%h\t%s\n"])
        .output()
        .expect("kcat runs");
    assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conversation_stays_in_order_across_a_broker_outage() {
    conversation_in_order_across_an_outage("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conversation_stays_in_order_when_the_local_producer_queue_fills_up() {
    // Four rounds of 2 fill a queue of 8 messages during the outage, with the audit entries the
    // sink also publishes: batches wait for room, in their order.
    let small = "batch_size = 2\n[sinks.kafka.properties]\n\"queue.buffering.max.messages\" = \"8\"\n";
    conversation_in_order_across_an_outage(small).await;
}

/// Posts 300 inquiries of one conversation while the broker is killed and started again, then
/// reads them back in posting order (repeats dropped by id).
async fn conversation_in_order_across_an_outage(properties: &str) {
    let _servers = lock();
    let prefix = unique("t");
    let topic = format!("{prefix}.inquiries.routed.v2");
    let gateway = Gateway::start(&format!("{}{properties}", kafka_config(&format!("{prefix}.")))).await;
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(60)).await;
    let client = HttpClient::new();
    for n in 0..300 {
        if n == 100 {
            service("kafka.sh", "kill9");
        }
        if n == 200 {
            service("kafka.sh", "start");
        }
        let mut doc: serde_json::Value = serde_json::from_str(&inquiry_json("shop-o", &format!("o-{n:03}"))).unwrap();
        doc["conversation_id"] = "conv-order".into();
        let reply = client.post_json(&gateway.url("/v1/inquiries"), doc.to_string()).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(120)).await;

    // One key, so one partition; dropping repeats by id must leave the posting order.
    let records = kcat_records(&topic);
    assert!(records.iter().all(|(key, _, _)| key == "generic/shop-o/conv-order"), "keyed by conversation");
    let mut order = Vec::new();
    for (_, _, value) in &records {
        let value: serde_json::Value = serde_json::from_str(value).unwrap();
        let message_id = value["inquiry"]["external"]["message_id"].as_str().unwrap().to_owned();
        if !order.contains(&message_id) {
            order.push(message_id);
        }
    }
    let expected: Vec<String> = (0..300).map(|n| format!("o-{n:03}")).collect();
    assert_eq!(order, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_kafka_refuses_for_good_go_to_the_dead_letter_topic_with_the_reason() {
    let _servers = lock();
    let prefix = unique("t");
    // The routed topic exists already, with a record size limit below any inquiry's size: the
    // broker refuses every record with MESSAGE_TOO_LARGE, a permanent error.
    let routed = format!("{prefix}.inquiries.routed.v2");
    let out = Command::new("bash")
        .arg(workspace_file("tests/services/kafka.sh"))
        .args(["tool", "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BROKERS, "--create"])
        .args([
            "--topic",
            &routed,
            "--partitions",
            "1",
            "--replication-factor",
            "1",
            "--config",
            "max.message.bytes=200",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gateway = Gateway::start(&kafka_config(&format!("{prefix}."))).await;
    let client = HttpClient::new();
    let mut ids = HashSet::new();
    for n in 0..3 {
        let reply = client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-d", &format!("d-{n}"))).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        ids.insert(reply.json()["id"].as_str().unwrap().to_owned());
    }
    wait_spool_empty(&gateway, "kafka", Duration::from_secs(60)).await;

    let dead = kcat_records(&format!("{prefix}.inquiries.deadletter.v2"));
    assert_eq!(dead.len(), 3);
    for (_, headers, value) in &dead {
        assert!(headers.contains("dead_letter_reason=message_too_large"), "{headers}");
        let reference: serde_json::Value = serde_json::from_str(value).unwrap();
        assert!(ids.contains(reference["inquiry_id"].as_str().unwrap()));
    }
    assert!(kcat_records(&routed).is_empty());
    let out = Command::new("python3")
        .arg(workspace_file("tests/consumers/validate_routed.py"))
        .args(["--brokers", BROKERS, "--topic", &format!("{prefix}.inquiries.deadletter.v2"), "--expect", "3"])
        .args(["--schema", "deadletter.v2.schema.json", "--schemas"])
        .arg(workspace_file("docs/schemas"))
        .output()
        .expect("python3 runs");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && report.contains("3 distinct inquiries valid"),
        "dead letters against their schema: {report}"
    );
    let metrics = support::metrics(&gateway).await;
    let rejected = support::metric_value(
        &metrics,
        "inquiry_gateway_sink_rejected_total",
        &[("sink", "kafka"), ("reason", "message_too_large")],
    );
    assert_eq!(rejected, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_command_prepares_every_cluster_also_when_the_gateways_leave_it_to_the_command() {
    // The gateways neither create topics nor migrate (`create_topics` / `migrate` off): the
    // command does both, for the main and the regional clusters.
    let (prefix, regional_prefix) = (support::unique("mig"), support::unique("migus"));
    let (keyspace, regional_keyspace) = (support::unique("mig_"), support::unique("migus_"));
    let login = support::cql_login();
    let config = format!(
        "[sinks.kafka]\nbrokers = \"{BROKERS}\"\ntopic_prefix = \"{prefix}.\"\npartitions = 1\nlocation = \"eu\"\n\
         create_topics = false\n\
         [sinks.kafka_regional.us]\nbrokers = \"{BROKERS}\"\ntopic_prefix = \"{regional_prefix}.\"\npartitions = 1\n\
         location = \"other\"\nregions = [\"other\"]\ncreate_topics = false\n\
         [sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nlocation = \"eu\"\nmigrate = false\n{login}\
         [sinks.cql_regional.us]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{regional_keyspace}\"\nlocation = \"other\"\n\
         regions = [\"other\"]\nmigrate = false\n{login}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inquiry-gateway")).arg("migrate").arg("--config").arg(&path).output();
    let out = out.expect("the binary runs");
    assert!(out.status.success(), "migrate failed: {}", String::from_utf8_lossy(&out.stderr));

    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", BROKERS).create().expect("client");
    let metadata = client.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let topics: HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    for p in [&prefix, &regional_prefix] {
        assert!(topics.contains(format!("{p}.inquiries.routed.v2").as_str()), "{p}: topics not created");
    }
    for ks in [&keyspace, &regional_keyspace] {
        assert!(support::cql_inquiry_ids(CQL, ks).await.is_empty(), "{ks}: the table exists and is empty");
    }
}
