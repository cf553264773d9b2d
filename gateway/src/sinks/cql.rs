//! The CQL sink: ScyllaDB or Apache Cassandra through the `scylla` driver.
//!
//! Writes are idempotent upserts (no read-before-write), prepared once, with an explicit
//! consistency level, a TTL per row and a bounded number of requests in flight. The schema is
//! created by [`migrate`] (run at start-up or by `inquiry-gateway migrate`); see `docs/cql.md`.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use scylla::client::session::OpenSsl010Config;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::ExecutionError;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{CqlDate, CqlTimestamp};

use super::{AuditRecord, Delivery, OutRecord, Sink, SinkError};
use crate::config::{CqlConfig, CqlTlsConfig, RetentionConfig};
use crate::pipeline::StoredInquiry;

/// The schema, in order. Every statement is idempotent (`IF NOT EXISTS`); `{ks}` is the keyspace.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "inquiries by id",
        "CREATE TABLE IF NOT EXISTS {ks}.inquiries_by_id (
            id uuid PRIMARY KEY, channel text, account text, conversation_id text, message_id text,
            received_at timestamp, region text, queue text, priority text, decided_by text,
            trace_id text, record text)",
    ),
    (
        2,
        "inquiries by account and day",
        "CREATE TABLE IF NOT EXISTS {ks}.inquiries_by_account_day (
            account text, day date, bucket smallint, received_at timestamp, id uuid,
            channel text, conversation_id text, queue text, priority text, region text,
            PRIMARY KEY ((account, day, bucket), received_at, id))
            WITH CLUSTERING ORDER BY (received_at DESC, id ASC)",
    ),
    (
        3,
        "audit events by day",
        "CREATE TABLE IF NOT EXISTS {ks}.audit_events_by_day (
            day date, bucket smallint, at timestamp, event_id uuid, subject text, kind text,
            inquiry_id uuid, detail text, PRIMARY KEY ((day, bucket), at, event_id))",
    ),
    (
        4,
        "audit events by subject",
        "CREATE TABLE IF NOT EXISTS {ks}.audit_events_by_subject (
            subject text, at timestamp, event_id uuid, kind text, inquiry_id uuid, detail text,
            PRIMARY KEY (subject, at, event_id)) WITH CLUSTERING ORDER BY (at DESC, event_id ASC)",
    ),
    (
        5,
        "poller leases",
        "CREATE TABLE IF NOT EXISTS {ks}.poll_leases (
            lease text PRIMARY KEY, holder text, epoch bigint, expires_at bigint,
            cursors map<text, text>, grants map<text, blob>)",
    ),
    (6, "poller replicas", "CREATE TABLE IF NOT EXISTS {ks}.poll_replicas (holder text PRIMARY KEY, seen_at bigint)"),
    (
        7,
        "acknowledgement claims",
        "CREATE TABLE IF NOT EXISTS {ks}.ack_claims (inquiry_id uuid PRIMARY KEY, holder text, at timestamp)
            WITH default_time_to_live = 2592000",
    ),
    (
        8,
        "agent states",
        "CREATE TABLE IF NOT EXISTS {ks}.agent_states (agent text PRIMARY KEY, load int, capacity int, online boolean)",
    ),
    (
        9,
        "shared subject requests",
        "CREATE TABLE IF NOT EXISTS {ks}.subject_requests (
            bucket int, id uuid, origin text, instance uuid, kind text, jurisdiction text, source text,
            requested_by text, indexes list<blob>, pseudonyms list<text>, purposes list<text>,
            received_at timestamp, PRIMARY KEY (bucket, id))
            WITH default_time_to_live = 7776000",
    ),
];

/// The consistency level of `config` (a validated config names a known one; `local_quorum`
/// otherwise).
pub fn consistency_of(config: &CqlConfig) -> Consistency {
    parse_consistency(&config.consistency).unwrap_or(Consistency::LocalQuorum)
}

/// The consistency level named in config (`local_quorum`, ...).
pub fn parse_consistency(name: &str) -> Option<Consistency> {
    Some(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "local_one" => Consistency::LocalOne,
        "local_quorum" => Consistency::LocalQuorum,
        "quorum" => Consistency::Quorum,
        "each_quorum" => Consistency::EachQuorum,
        "all" => Consistency::All,
        _ => return None,
    })
}

/// Connects to the cluster, preferring the local datacenter (token-aware by default), with the
/// configured password authentication and TLS.
pub async fn connect(config: &CqlConfig) -> Result<Session, SinkError> {
    let mut builder =
        SessionBuilder::new().known_nodes(&config.contact_points).prefer_datacenter(config.local_datacenter.clone());
    if let (Some(username), Some(password)) = (&config.username, &config.password) {
        builder = builder.user(username, password);
        if config.tls.is_none() {
            // `check` allows a password without TLS only for loopback contact points; the peers
            // the cluster then names may be elsewhere, and they never get the password.
            builder = builder.host_filter(Arc::new(LoopbackNodesOnly));
        }
    }
    if let Some(tls) = &config.tls {
        builder = builder.tls_context(Some(tls_context(tls)?));
    }
    builder.build().await.map_err(|e| error(format!("cannot connect: {e}")))
}

/// Accepts only nodes on this machine.
struct LoopbackNodesOnly;

impl scylla::policies::host_filter::HostFilter for LoopbackNodesOnly {
    fn accept(&self, peer: &scylla::cluster::metadata::Peer) -> bool {
        peer.address.ip().is_loopback()
    }
}

/// The OpenSSL context of [`CqlTlsConfig`]: peer verification on (the driver checks the node's
/// certificate against its IP address), the CA file or else the system's roots, and the client
/// certificate when one is configured.
fn tls_context(tls: &CqlTlsConfig) -> Result<OpenSsl010Config, SinkError> {
    let tls_error = |what: &str, e: &dyn std::fmt::Display| error(format!("tls: {what}: {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| tls_error("cannot set up OpenSSL", &e))?;
    builder.set_verify(SslVerifyMode::PEER);
    match &tls.ca_file {
        Some(ca_file) => {
            let pem =
                std::fs::read(ca_file).map_err(|e| tls_error(&format!("cannot read {}", ca_file.display()), &e))?;
            let mut store = X509StoreBuilder::new().map_err(|e| tls_error("cannot set up OpenSSL", &e))?;
            let certificates = X509::stack_from_pem(&pem)
                .map_err(|e| tls_error(&format!("{} is not a PEM certificate", ca_file.display()), &e))?;
            if certificates.is_empty() {
                return Err(error(format!("tls: {} holds no certificate", ca_file.display())));
            }
            for certificate in certificates {
                store.add_cert(certificate).map_err(|e| tls_error("cannot trust the CA", &e))?;
            }
            builder.set_cert_store(store.build());
        }
        None => builder.set_default_verify_paths().map_err(|e| tls_error("no system roots", &e))?,
    }
    if let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) {
        builder
            .set_certificate_chain_file(cert_file)
            .map_err(|e| tls_error(&format!("cannot use {}", cert_file.display()), &e))?;
        builder
            .set_private_key_file(key_file, SslFiletype::PEM)
            .map_err(|e| tls_error(&format!("cannot use {}", key_file.display()), &e))?;
        builder.check_private_key().map_err(|e| tls_error("the key does not match the certificate", &e))?;
    }
    Ok(OpenSsl010Config::new(builder))
}

/// Creates the keyspace (NetworkTopologyStrategy, replication per datacenter from config) and
/// the tables, and records each applied version in `schema_migrations`.
pub async fn migrate(session: &Session, config: &CqlConfig) -> Result<(), SinkError> {
    let ks = &config.keyspace;
    let replication: Vec<String> = config.replication.iter().map(|(dc, n)| format!("'{dc}': {n}")).collect();
    let run = |cql: String| async move {
        session.query_unpaged(cql, ()).await.map_err(|e| error(format!("migration failed: {e}")))?;
        session.await_schema_agreement().await.map_err(|e| error(format!("schema agreement: {e}")))?;
        Ok::<_, SinkError>(())
    };
    run(format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', {}}}",
        replication.join(", ")
    ))
    .await?;
    run(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, description text, applied_at timestamp)"
    ))
    .await?;
    for (version, description, cql) in MIGRATIONS {
        run(cql.replace("{ks}", ks)).await?;
        let record = format!("INSERT INTO {ks}.schema_migrations (version, description, applied_at) VALUES (?, ?, ?)");
        let now = CqlTimestamp(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
        session
            .query_unpaged(record, (*version, *description, now))
            .await
            .map_err(|e| error(format!("recording migration {version}: {e}")))?;
    }
    tracing::info!(keyspace = %ks, versions = MIGRATIONS.len(), "cql schema migrated");
    Ok(())
}

/// The prepared writes of a connected sink.
struct Prepared {
    session: Session,
    by_id: PreparedStatement,
    by_account_day: PreparedStatement,
    delete_by_id: PreparedStatement,
    delete_by_account_day: PreparedStatement,
    audit_by_day: PreparedStatement,
    audit_by_subject: PreparedStatement,
}

/// The CQL sink.
pub struct CqlSink {
    /// `cql` for `[sinks.cql]`, `cql-<name>` for a cluster of `[sinks.cql_regional]`.
    name: &'static str,
    config: CqlConfig,
    /// TTL of inquiry rows (`retention.inquiries_days`).
    ttl_seconds: u32,
    /// TTL of audit rows (`retention.audit_days`; 0 = none).
    audit_ttl_seconds: u32,
    consistency: Consistency,
    prepared: OnceLock<Prepared>,
    /// Bounds the requests in flight across every round the forwarder has open.
    in_flight: tokio::sync::Semaphore,
}

impl CqlSink {
    /// The sink `name` (`cql`, or `cql-<name>` for a regional cluster) for `config` (connects in
    /// [`Sink::prepare`]).
    pub fn new(name: &'static str, config: &CqlConfig, retention: &RetentionConfig) -> Result<CqlSink, SinkError> {
        let consistency = parse_consistency(&config.consistency)
            .ok_or_else(|| error(format!("unknown consistency `{}`", config.consistency)))?;
        let in_flight = tokio::sync::Semaphore::new(config.max_in_flight.max(2));
        Ok(CqlSink {
            name,
            config: config.clone(),
            ttl_seconds: RetentionConfig::seconds(retention.inquiries_days),
            audit_ttl_seconds: RetentionConfig::seconds(retention.audit_days),
            consistency,
            prepared: OnceLock::new(),
            in_flight,
        })
    }

    async fn connect_and_prepare(&self) -> Result<(), SinkError> {
        if self.prepared.get().is_some() {
            return Ok(());
        }
        let session = connect(&self.config).await?;
        if self.config.migrate {
            migrate(&session, &self.config).await?;
        }
        let ks = &self.config.keyspace;
        let prepare = |cql: String| {
            let session = &session;
            async move {
                let mut statement = session.prepare(cql).await.map_err(|e| error(format!("prepare: {e}")))?;
                statement.set_consistency(self.consistency);
                statement.set_is_idempotent(true);
                Ok::<_, SinkError>(statement)
            }
        };
        let by_id = prepare(format!(
            "INSERT INTO {ks}.inquiries_by_id (id, channel, account, conversation_id, message_id, received_at, region,
             queue, priority, decided_by, trace_id, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await?;
        let by_account_day = prepare(format!(
            "INSERT INTO {ks}.inquiries_by_account_day (account, day, bucket, received_at, id, channel, conversation_id,
             queue, priority, region) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await?;
        let delete_by_id = prepare(format!("DELETE FROM {ks}.inquiries_by_id WHERE id = ?")).await?;
        let delete_by_account_day = prepare(format!(
            "DELETE FROM {ks}.inquiries_by_account_day WHERE account = ? AND day = ? AND bucket = ? AND received_at = ? AND id = ?"
        ))
        .await?;
        let audit_by_day = prepare(format!(
            "INSERT INTO {ks}.audit_events_by_day (day, bucket, at, event_id, subject, kind, inquiry_id, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await?;
        let audit_by_subject = prepare(format!(
            "INSERT INTO {ks}.audit_events_by_subject (subject, at, event_id, kind, inquiry_id, detail)
             VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await?;
        let _ = self.prepared.set(Prepared {
            session,
            by_id,
            by_account_day,
            delete_by_id,
            delete_by_account_day,
            audit_by_day,
            audit_by_subject,
        });
        Ok(())
    }

    async fn write(&self, record: &OutRecord) -> Delivery {
        // Each record is two requests: take both permits before sending.
        let Ok(_permits) = self.in_flight.acquire_many(2).await else {
            return Delivery::Retry { detail: "sink is shutting down".to_owned() };
        };
        let Some(prepared) = self.prepared.get() else {
            return Delivery::Retry { detail: "not connected".to_owned() };
        };
        let inquiry = &record.stored().inquiry;
        let decision = &record.stored().decision;
        let (received, day, bucket) = self.day_key(inquiry);
        let json = String::from_utf8_lossy(record.json());
        let priority = serde_json::to_value(decision.priority).ok().and_then(|v| v.as_str().map(str::to_owned));
        let region = serde_json::to_value(inquiry.region).ok().and_then(|v| v.as_str().map(str::to_owned));
        let ttl = self.ttl_seconds as i32;
        let by_id = prepared.session.execute_unpaged(
            &prepared.by_id,
            (
                inquiry.id,
                inquiry.channel.as_str(),
                &inquiry.account,
                &inquiry.external.conversation_id,
                &inquiry.external.message_id,
                received,
                &region,
                &decision.queue,
                &priority,
                &decision.decided_by,
                &inquiry.trace_id,
                json.as_ref(),
                ttl,
            ),
        );
        let by_day = prepared.session.execute_unpaged(
            &prepared.by_account_day,
            (
                &inquiry.account,
                day,
                bucket,
                received,
                inquiry.id,
                inquiry.channel.as_str(),
                &inquiry.external.conversation_id,
                &decision.queue,
                &priority,
                &region,
                ttl,
            ),
        );
        match futures_util::future::join(by_id, by_day).await {
            (Ok(_), Ok(_)) => Delivery::Delivered,
            (Err(err), _) | (_, Err(err)) => classify(err),
        }
    }
}

impl CqlSink {
    /// The clustering and partition values of an inquiry in `inquiries_by_account_day`.
    fn day_key(&self, inquiry: &inquiry_connectors::Inquiry) -> (CqlTimestamp, CqlDate, i16) {
        let received_ms = (inquiry.received_at.unix_timestamp_nanos() / 1_000_000) as i64;
        let day = CqlDate(((1u64 << 31) as i64 + received_ms.div_euclid(86_400_000)) as u32);
        let bucket = (inquiry.id.as_u128() % u128::from(self.config.day_buckets)) as i16;
        (CqlTimestamp(received_ms), day, bucket)
    }

    /// Writes audit entries to both audit tables (`detail` holds the whole entry as hashed).
    async fn write_audit(&self, entries: &[AuditRecord]) -> Result<(), String> {
        let prepared = self.prepared.get().ok_or("not connected")?;
        let ttl = self.audit_ttl_seconds as i32;
        for record in entries {
            let event = &record.head;
            let at_ms = (event.at.unix_timestamp_nanos() / 1_000_000) as i64;
            let day = CqlDate(((1u64 << 31) as i64 + at_ms.div_euclid(86_400_000)) as u32);
            let bucket = (record.index % u64::from(self.config.day_buckets)) as i16;
            // The entry's index as a stable id: a resend overwrites the same row.
            let event_id = uuid::Uuid::from_u64_pair(0, record.index);
            let detail = String::from_utf8_lossy(&record.bytes);
            let at = CqlTimestamp(at_ms);
            let session = &prepared.session;
            session
                .execute_unpaged(
                    &prepared.audit_by_day,
                    (day, bucket, at, event_id, &event.subject, &event.kind, event.inquiry_id, detail.as_ref(), ttl),
                )
                .await
                .map_err(|e| e.to_string())?;
            if let Some(subject) = &event.subject {
                session
                    .execute_unpaged(
                        &prepared.audit_by_subject,
                        (subject, at, event_id, &event.kind, event.inquiry_id, detail.as_ref(), ttl),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Deletes the rows of erased inquiries from both tables.
    async fn delete(&self, records: &[StoredInquiry]) -> Result<(), String> {
        self.connect_and_prepare().await.map_err(|e| e.to_string())?;
        let prepared = self.prepared.get().ok_or("not connected")?;
        for record in records {
            let inquiry = &record.inquiry;
            let (received, day, bucket) = self.day_key(inquiry);
            prepared.session.execute_unpaged(&prepared.delete_by_id, (inquiry.id,)).await.map_err(|e| e.to_string())?;
            prepared
                .session
                .execute_unpaged(&prepared.delete_by_account_day, (&inquiry.account, day, bucket, received, inquiry.id))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Sink for CqlSink {
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
        crate::telemetry::Hop::SinkCql
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        // Its errors name this sink (`cql-us` for a regional cluster), not just `cql`.
        async move { self.connect_and_prepare().await.map_err(|err| SinkError { sink: self.name, ..err }) }.boxed()
    }

    fn deliver<'a>(&'a self, records: &'a [OutRecord]) -> BoxFuture<'a, Vec<Delivery>> {
        // Each record is two requests; keep at most max_in_flight requests outstanding.
        // The semaphore in `write` bounds requests across rounds; `buffered` only keeps order.
        let concurrent = (self.config.max_in_flight / 2).max(1);
        futures_util::stream::iter(records).map(|r| self.write(r)).buffered(concurrent).collect().boxed()
    }

    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    fn deliver_audit<'a>(&'a self, entries: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>> {
        self.write_audit(entries).boxed()
    }

    fn erase<'a>(&'a self, _pseudonym: &'a str, records: &'a [StoredInquiry]) -> BoxFuture<'a, Result<(), String>> {
        self.delete(records).boxed()
    }
}

/// A statement the cluster refuses as invalid for this record is permanent; one it refuses
/// because the schema is not there (a table or keyspace dropped or restored: every record would
/// be refused alike) is retried, as is anything else (timeouts, unavailable replicas, lost
/// connections): the sink shows as degraded and the spool keeps the records.
fn classify(err: ExecutionError) -> Delivery {
    use scylla::errors::{DbError, RequestAttemptError};
    match err {
        ExecutionError::BadQuery(e) => Delivery::Rejected { reason: "bad_query", detail: e.to_string() },
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid | DbError::SyntaxError, m))
            if !is_schema_missing(&m) =>
        {
            Delivery::Rejected { reason: "invalid_request", detail: m }
        }
        other => Delivery::Retry { detail: other.to_string() },
    }
}

/// True for the cluster's complaint that a table, keyspace or column is not there (Cassandra's
/// and ScyllaDB's words: "unconfigured table", "Keyspace x does not exist", "Undefined column
/// name", "Unknown identifier").
fn is_schema_missing(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["unconfigured table", "undefined column", "unknown identifier"].iter().any(|missing| message.contains(missing))
        || (message.contains("keyspace") && message.contains("does not exist"))
}

fn error(message: String) -> SinkError {
    SinkError { sink: "cql", message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::{DbError, RequestAttemptError};

    fn refused(message: &str) -> Delivery {
        classify(ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, message.to_owned())))
    }

    #[test]
    fn a_missing_table_is_retried_and_a_refused_record_dead_lettered() {
        // Cassandra's and ScyllaDB's words for a table or keyspace that is not there.
        for missing in ["unconfigured table inquiries", "Keyspace inq does not exist", "Undefined column name x"] {
            assert!(matches!(refused(missing), Delivery::Retry { .. }), "{missing}");
        }
        for record in ["Key length of 70000 is longer than maximum of 65535", "Value for x does not exist in enum"] {
            assert!(matches!(refused(record), Delivery::Rejected { reason: "invalid_request", .. }), "{record}");
        }
    }
}
