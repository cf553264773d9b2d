//! The Kafka sink: routed inquiries to `<prefix>inquiries.routed.v2`, keyed by conversation.
//!
//! Producer: idempotent, `acks=all`, `murmur2_random` partitioner (Java clients agree on
//! partitions), `message.timeout.ms=0` so librdkafka retries a down broker forever in order
//! rather than failing messages; the forwarder keeps whole batches in flight. Batches are queued
//! one at a time, in the order the forwarder started them, and `QueueFull` is backpressure: the
//! batch waits for room, and the batches after it wait for their turn, so no record overtakes an
//! earlier one of the same conversation. A producer librdkafka reports as failed fatally is made
//! again before the next batch. Errors that
//! a retry cannot fix (the record itself is refused) send the inquiry to the dead-letter topic with
//! the reason.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::oauth::KafkaContext;
use super::{AuditRecord, Delivery, OutRecord, Sink, SinkError};
use crate::config::{KafkaConfig, RetentionConfig};
use crate::pipeline::StoredInquiry;

/// Version of the routed-inquiry topic's payload (`docs/topics.md`).
pub const ROUTED_SCHEMA: &str = "inquiry-gateway.routed-inquiry.v2";

/// Version of the audit topic's payload (an audit log entry, `docs/compliance.md`).
pub const AUDIT_SCHEMA: &str = "inquiry-gateway.audit-entry.v1";

/// The topics, with their versioned names.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Routed inquiries (`StoredInquiry` JSON).
    pub routed: String,
    /// Audit events.
    pub audit: String,
    /// Inquiries a sink refused for good, with the reason in headers.
    pub dead_letter: String,
    /// Compacted, keyed by subject pseudonym: a tombstone tells consumers a subject was erased.
    pub subjects: String,
    /// First-response SLA events (started, reminder, breached, escalated, met, replied late).
    pub sla: String,
}

impl Topics {
    /// The topic names for `prefix`.
    pub fn new(prefix: &str) -> Topics {
        Topics {
            routed: format!("{prefix}inquiries.routed.v2"),
            audit: format!("{prefix}audit.events.v1"),
            dead_letter: format!("{prefix}inquiries.deadletter.v2"),
            subjects: format!("{prefix}subjects.v1"),
            sla: format!("{prefix}sla.events.v1"),
        }
    }
}

/// The Kafka sink.
pub struct KafkaSink {
    /// `kafka` for `[sinks.kafka]`, `kafka-<name>` for a cluster of `[sinks.kafka_regional]`.
    name: &'static str,
    config: KafkaConfig,
    retention: RetentionConfig,
    client_config: ClientConfig,
    /// Made again when librdkafka reports a fatal error (see [`KafkaSink::renew_if_fatal`]).
    producer: std::sync::RwLock<FutureProducer<KafkaContext>>,
    /// Hands librdkafka the OAUTHBEARER tokens of `[sinks.kafka.oauth]`.
    context: KafkaContext,
    topics: Topics,
    /// Reach-out publishes SLA events: `sla.events.v1` is created and checked too.
    sla_events: bool,
    /// Reach-out reads replies from this topic (created when missing).
    replies: Option<String>,
    /// Taken by a batch while it queues its records (see the module doc); tokio's lock is fair.
    queueing: tokio::sync::Mutex<()>,
}

impl KafkaSink {
    /// Builds the producer of the sink `name` (no I/O yet; librdkafka connects in the background).
    pub fn new(
        name: &'static str,
        config: &KafkaConfig,
        retention: &RetentionConfig,
        sla_events: bool,
        replies: Option<String>,
    ) -> Result<KafkaSink, SinkError> {
        let mut client_config = ClientConfig::new();
        client_config
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", "inquiry-gateway")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "200000");
        for (key, value) in &config.properties {
            client_config.set(key, value);
        }
        client_config.set("enable.idempotence", "true").set("acks", "all").set("partitioner", "murmur2_random");
        let context = KafkaContext::new(config);
        let producer = client_config
            .create_with_context(context.clone())
            .map_err(|e| sink_error(name, format!("cannot create producer: {}", client_error(&e))))?;
        Ok(KafkaSink {
            name,
            config: config.clone(),
            retention: retention.clone(),
            client_config,
            producer: std::sync::RwLock::new(producer),
            context,
            topics: Topics::new(&config.topic_prefix),
            sla_events,
            replies: replies.map(|topic| format!("{}{topic}", config.topic_prefix)),
            queueing: tokio::sync::Mutex::new(()),
        })
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The configuration a consumer of this cluster starts from: the brokers and the configured
    /// `properties` (TLS, SASL), without the producer's settings.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.config.brokers).set("client.id", "inquiry-gateway");
        for (key, value) in &self.config.properties {
            config.set(key, value);
        }
        config
    }

    /// The context a client of this cluster is created with (OAUTHBEARER tokens).
    pub fn context(&self) -> KafkaContext {
        self.context.clone()
    }

    /// The replies topic, with the prefix, if reach-out reads one.
    pub fn replies_topic(&self) -> Option<&str> {
        self.replies.as_deref()
    }

    /// Creates missing topics (if configured) and checks that all exist.
    async fn ensure_topics(&self) -> Result<(), SinkError> {
        let sink = self.name;
        let error = move |message: String| sink_error(sink, message);
        let retention = &self.retention;
        let feed = RetentionConfig::kafka_ms(retention.kafka_feed_days).to_string();
        let audit = RetentionConfig::kafka_ms(retention.audit_days).to_string();
        let dead_letter_retention = RetentionConfig::kafka_ms(retention.dead_letters_days).to_string();
        let replication = || TopicReplication::Fixed(self.config.replication_factor);
        let mut topics = vec![
            NewTopic::new(&self.topics.routed, self.config.partitions, replication()).set("retention.ms", &feed),
            NewTopic::new(&self.topics.audit, self.config.partitions, replication()).set("retention.ms", &audit),
            NewTopic::new(&self.topics.dead_letter, 1, replication()).set("retention.ms", &dead_letter_retention),
            // Tombstones stay readable 90 days, so a consumer that was away still learns of an erasure.
            NewTopic::new(&self.topics.subjects, self.config.partitions, replication())
                .set("cleanup.policy", "compact")
                .set("delete.retention.ms", "7776000000"),
        ];
        if self.sla_events {
            topics.push(
                NewTopic::new(&self.topics.sla, self.config.partitions, replication()).set("retention.ms", &feed),
            );
        }
        if let Some(replies) = &self.replies {
            topics.push(NewTopic::new(replies, self.config.partitions, replication()).set("retention.ms", &feed));
        }
        if self.config.create_topics {
            let admin: AdminClient<KafkaContext> = self
                .client_config
                .create_with_context(self.context.clone())
                .map_err(|e| error(format!("cannot create admin client: {}", client_error(&e))))?;
            self.context.authenticate(admin.inner()).await.map_err(error)?;
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results =
                admin.create_topics(&topics, &options).await.map_err(|e| error(format!("create topics: {e}")))?;
            for result in results {
                match result {
                    Ok(topic) => tracing::info!(topic, "kafka topic created"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    // A login without the right to create topics: they may exist (created by an
                    // administrator); the check below says when one does not.
                    Err((
                        topic,
                        RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed,
                    )) => {
                        tracing::warn!(
                            sink = self.name,
                            topic,
                            "not allowed to create the topic; checking that it exists"
                        );
                    }
                    Err((topic, code)) => return Err(error(format!("create topic {topic}: {code}"))),
                }
            }
        }
        let producer = self.producer();
        let mut names = vec![
            self.topics.routed.clone(),
            self.topics.audit.clone(),
            self.topics.dead_letter.clone(),
            self.topics.subjects.clone(),
        ];
        if self.sla_events {
            names.push(self.topics.sla.clone());
        }
        tokio::task::spawn_blocking(move || {
            for name in &names {
                // A topic just created may take a moment to show in the metadata.
                let mut attempts = 0;
                loop {
                    let metadata = producer
                        .client()
                        .fetch_metadata(Some(name), Duration::from_secs(10))
                        .map_err(|e| error(format!("metadata of {name}: {e}")))?;
                    let topic = metadata.topics().first().ok_or_else(|| error(format!("topic {name} is missing")))?;
                    if topic.error().is_none() && !topic.partitions().is_empty() {
                        break;
                    }
                    attempts += 1;
                    if attempts == 5 {
                        return Err(error(format!("topic {name} does not exist (create it or set create_topics)")));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| error(e.to_string()))?
    }

    /// Writes a first response to the replies topic (keyed by inquiry id), for the replica that
    /// holds the inquiry: a reply over HTTP to a replica that does not. Waits for the broker.
    pub async fn publish_reply(&self, inquiry_id: uuid::Uuid, payload: &[u8]) -> Result<(), String> {
        let topic = self.replies.as_deref().ok_or("no replies topic")?;
        let key = inquiry_id.to_string();
        let record = FutureRecord::to(topic).key(&key).payload(payload);
        match self.producer().send_result(record).map_err(|(err, _)| err.to_string())?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((err, _))) => Err(err.to_string()),
            Err(_) => Err("the producer dropped the message".to_owned()),
        }
    }

    /// Publishes SLA events to `sla.events.v1` (keyed by inquiry id, so one inquiry's events stay
    /// in order) and waits for every acknowledgement.
    /// The queue holds only events that reach-out decided this cluster gets (the inquiry's own
    /// residency rule); a cluster outside the EU still leaves out any event of a region it is not
    /// declared for (data residency: never an EU event, whatever queued it).
    pub async fn publish_sla(&self, events: &[crate::reach::sla::SlaEvent]) -> Result<(), String> {
        let mut pending = Vec::with_capacity(events.len());
        let in_eu = self.location() == inquiry_connectors::Region::Eu;
        let (allowed, skipped): (Vec<_>, Vec<_>) =
            events.iter().partition(|e| in_eu || self.config.regions.contains(&e.region));
        if !skipped.is_empty() {
            // Only events queued by an earlier version (one queue for every region) are skipped.
            tracing::info!(
                sink = self.name,
                skipped = skipped.len(),
                "SLA events of regions this cluster does not take are not published"
            );
        }
        for event in allowed {
            let key = event.inquiry_id.to_string();
            let payload = serde_json::to_vec(event).expect("events serialize");
            let headers = OwnedHeaders::new()
                .insert(Header { key: "schema", value: Some(crate::reach::sla::EVENT_SCHEMA) })
                .insert(Header { key: "content-type", value: Some("application/json") });
            let record = FutureRecord::to(&self.topics.sla).key(&key).payload(&payload).headers(headers);
            pending.push(self.producer().send_result(record).map_err(|(err, _)| err.to_string())?);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(err.to_string()),
                Err(_) => return Err("the producer dropped the message".to_owned()),
            }
        }
        Ok(())
    }

    /// Queues one record for `topic` (with `payload`) in librdkafka; the future resolves with
    /// the broker's acknowledgement.
    fn enqueue(
        &self,
        producer: &FutureProducer<KafkaContext>,
        topic: &str,
        record: &OutRecord,
        payload: &[u8],
        reason: Option<&str>,
    ) -> Result<DeliveryFuture, KafkaError> {
        let inquiry = &record.stored().inquiry;
        let key = format!("{}/{}/{}", inquiry.channel, inquiry.account, inquiry.external.conversation_id);
        let id = inquiry.id.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "schema", value: Some(ROUTED_SCHEMA) })
            .insert(Header { key: "inquiry_id", value: Some(&id) })
            .insert(Header { key: "trace_id", value: Some(&inquiry.trace_id) })
            .insert(Header { key: "subject", value: Some(&inquiry.buyer.pseudonym) })
            .insert(Header { key: "content-type", value: Some("application/json") });
        if let Some(reason) = reason {
            headers = headers.insert(Header { key: "dead_letter_reason", value: Some(reason) });
        }
        let message = FutureRecord::to(topic).key(&key).payload(payload).headers(headers);
        producer.send_result(message).map_err(|(err, _)| err)
    }

    /// The producer to send with. One librdkafka reports as failed fatally (the idempotent
    /// producer lost its sequence, the cluster refused IdempotentWrite...) fails every message
    /// for good: it is made again here, once none of its messages is outstanding (so that a
    /// record retried on the new one cannot overtake one still failing on the old one), for
    /// every kind of message (routed records, audit entries, tombstones, SLA events, replies).
    fn producer(&self) -> FutureProducer<KafkaContext> {
        let current = self.producer.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match current.client().fatal_error() {
            Some((code, reason)) if current.in_flight_count() == 0 => self.renew(&current, code, &reason),
            _ => current,
        }
    }

    /// Replaces the fatally failed producer `failed` with a new one (unless another call did).
    fn renew(
        &self,
        failed: &FutureProducer<KafkaContext>,
        code: RDKafkaErrorCode,
        reason: &str,
    ) -> FutureProducer<KafkaContext> {
        let mut slot = self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.client().native_ptr() != failed.client().native_ptr() {
            return slot.clone(); // renewed meanwhile
        }
        match self.client_config.create_with_context(self.context.clone()) {
            Ok(fresh) => {
                tracing::error!(sink = self.name, ?code, reason, "the kafka producer failed fatally; made a new one");
                metrics::counter!(crate::telemetry::KAFKA_PRODUCER_RENEWALS, "sink" => self.name).increment(1);
                // The old one has nothing outstanding: dropping it does not wait on a flush.
                *slot = fresh;
            }
            Err(err) => {
                tracing::error!(sink = self.name, error = %client_error(&err), "cannot make a new kafka producer");
            }
        }
        slot.clone()
    }

    /// Queues every record in order, in its turn after the batches started before it, waiting
    /// for room while the local queue is full; then awaits the acknowledgements.
    async fn deliver_all(&self, records: &[OutRecord]) -> Vec<Delivery> {
        let mut queued = Vec::with_capacity(records.len());
        let turn = self.queueing.lock().await;
        // A producer failed fatally with messages still outstanding: nothing more goes to it;
        // the batch is retried (in order, after the earlier ones) once a new one is made.
        // One producer for the whole batch (taken once, not per record).
        let producer = self.producer();
        if producer.client().fatal_error().is_some() {
            let detail = "the kafka producer failed fatally; retried on a new one".to_owned();
            return records.iter().map(|_| Delivery::Retry { detail: detail.clone() }).collect();
        }
        for record in records {
            loop {
                match self.enqueue(&producer, &self.topics.routed, record, record.json(), None) {
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    queued_or_refused => {
                        queued.push(queued_or_refused);
                        break;
                    }
                }
            }
        }
        drop(turn);
        let mut outcomes = Vec::with_capacity(records.len());
        for (record, queued) in records.iter().zip(queued) {
            let result = match queued {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((err, _))) => Err(err),
                    Err(_) => Err(KafkaError::Canceled),
                },
                Err(err) => Err(err),
            };
            outcomes.push(match result {
                Ok(()) => Delivery::Delivered,
                Err(err) => self.dead_letter_or_retry(record, err).await,
            });
        }
        outcomes
    }

    /// A permanent failure goes to the dead-letter topic; anything else is retried. A record too
    /// large for Kafka is dead-lettered as a small reference (id and reason; the inquiry stays in
    /// the gateway's store and the CQL store), since the record itself cannot be sent.
    async fn dead_letter_or_retry(&self, record: &OutRecord, err: KafkaError) -> Delivery {
        let Some(reason) = permanent_reason(&err) else {
            return Delivery::Retry { detail: err.to_string() };
        };
        let reference;
        let payload = if reason == "message_too_large" {
            reference = serde_json::to_vec(&serde_json::json!({
                "inquiry_id": record.id(), "reason": reason, "size": record.json().len(),
            }))
            .expect("json");
            &reference
        } else {
            record.json()
        };
        let sent = match self.enqueue(&self.producer(), &self.topics.dead_letter, record, payload, Some(reason)) {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => Delivery::Rejected { reason, detail: err.to_string() },
            Err(dl_err) => Delivery::Retry { detail: format!("{err}; dead-letter topic: {dl_err}") },
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        self.name
    }

    fn regions(&self) -> &[inquiry_connectors::Region] {
        &self.config.regions
    }

    fn location(&self) -> inquiry_connectors::Region {
        self.config.location.unwrap_or(inquiry_connectors::Region::Eu)
    }

    fn hop(&self) -> crate::telemetry::Hop {
        crate::telemetry::Hop::SinkKafka
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.ensure_topics().boxed()
    }

    fn deliver<'a>(&'a self, records: &'a [OutRecord]) -> BoxFuture<'a, Vec<Delivery>> {
        // All records in flight at once; librdkafka keeps per-partition order (idempotence).
        self.deliver_all(records).boxed()
    }

    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    fn deliver_audit<'a>(&'a self, entries: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let mut deliveries = Vec::with_capacity(entries.len());
            for record in entries {
                let event = &record.head;
                let key = event
                    .subject
                    .clone()
                    .or(event.inquiry_id.map(|id| id.to_string()))
                    .unwrap_or_else(|| "gateway".to_owned());
                let index = record.index.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "schema", value: Some(AUDIT_SCHEMA) })
                    .insert(Header { key: "index", value: Some(&index) })
                    .insert(Header { key: "content-type", value: Some("application/json") });
                let message = FutureRecord::to(&self.topics.audit).key(&key).payload(&record.bytes).headers(headers);
                deliveries.push(self.producer().send_result(message).map_err(|(err, _)| err.to_string())?);
            }
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((err, _))) => return Err(err.to_string()),
                    Err(_) => return Err("delivery canceled".to_owned()),
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn erase<'a>(&'a self, pseudonym: &'a str, records: &'a [StoredInquiry]) -> BoxFuture<'a, Result<(), String>> {
        async move {
            // Published records cannot be deleted from a time-retained topic; their sealed fields
            // are unreadable now. The tombstone tells consumers to delete what they derived.
            let count = records.len().to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "event", value: Some("subject_erased") })
                .insert(Header { key: "inquiries", value: Some(&count) });
            let message = FutureRecord::<str, [u8]>::to(&self.topics.subjects).key(pseudonym).headers(headers);
            match self.producer().send_result(message) {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((err, _))) => Err(err.to_string()),
                    Err(_) => Err("delivery canceled".to_owned()),
                },
                Err((err, _)) => Err(err.to_string()),
            }
        }
        .boxed()
    }
}

/// How long a batch waits before trying a full local producer queue again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// The reason code of an error that retrying cannot fix, or `None` for a retryable one.
fn permanent_reason(err: &KafkaError) -> Option<&'static str> {
    let code = match err {
        KafkaError::MessageProduction(code) => *code,
        _ => return None,
    };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => Some("message_too_large"),
        RDKafkaErrorCode::InvalidMessage | RDKafkaErrorCode::InvalidRecord => Some("invalid_message"),
        // Authorization, batch sizes, fatal producer states: operator problems, not the record's;
        // retried (and alerted on) rather than dead-lettered.
        _ => None,
    }
}

/// librdkafka's complaint about a client configuration, without the configured values: the
/// message of a refused property names the property, never what it was set to (a password).
pub fn client_error(err: &KafkaError) -> String {
    match err {
        KafkaError::ClientConfig(_, description, key, value) => {
            if crate::config::is_secret_property(key) {
                format!("property `{key}` was refused (its value is not shown)")
            } else if value.is_empty() {
                format!("property `{key}`: {description}")
            } else {
                format!("property `{key}`: {}", description.replace(value.as_str(), "<value>"))
            }
        }
        other => other.to_string(),
    }
}

fn sink_error(sink: &'static str, message: String) -> SinkError {
    SinkError { sink, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_producer_that_failed_fatally_is_made_again() {
        // No broker needed: librdkafka's test hook raises the fatal error an idempotent producer
        // gets when it loses its sequence.
        let text = "[sinks.kafka]\nbrokers = \"127.0.0.1:1\"\n";
        let config = crate::config::Config::from_toml_with_env(text, |_| None).unwrap();
        let sink =
            KafkaSink::new("kafka", config.sinks.kafka.as_ref().unwrap(), &config.retention, false, None).unwrap();
        let first = sink.producer().client().native_ptr();
        assert_eq!(sink.producer().client().native_ptr(), first, "a healthy producer is kept");
        let reason = std::ffi::CString::new("test: out of order sequence").unwrap();
        let fatal = rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER;
        let failed = sink.producer.read().unwrap().clone();
        // SAFETY: a live client handle and a NUL-terminated reason, as librdkafka's test API wants.
        unsafe { rdkafka::bindings::rd_kafka_test_fatal_error(failed.client().native_ptr(), fatal, reason.as_ptr()) };
        assert!(failed.client().fatal_error().is_some());
        // Made again once nothing is outstanding: the fatal error's own event counts until the
        // producer's polling thread has taken it (within its 100 ms poll).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let fresh = loop {
            let producer = sink.producer();
            if producer.client().native_ptr() != first || std::time::Instant::now() > deadline {
                break producer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(fresh.client().native_ptr(), first, "made again once nothing is outstanding");
        assert!(fresh.client().fatal_error().is_none(), "the new producer is healthy");
    }
}
