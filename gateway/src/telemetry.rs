//! Metrics and logs: every metric name in one place, labels from small fixed sets only.
//!
//! Names follow `inquiry_gateway_<name>_<unit>[_total]`. Labels are `hop`, `channel` (a fixed
//! enum), `outcome` and `reason` (fixed code lists); never a shop id, buyer or error text.

use std::sync::OnceLock;
use std::time::Duration;

use inquiry_connectors::Channel;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency of one hop of the pipeline, per inquiry. Labels: `hop`, `channel`.
pub const HOP_DURATION: &str = "inquiry_gateway_hop_duration_seconds";
/// Inquiries that passed ingest. Labels: `outcome` (`accepted`, `duplicate`, `conflict`), `channel`.
pub const INQUIRIES: &str = "inquiry_gateway_inquiries_total";
/// Requests or lines refused. Label: `reason`.
pub const REJECTED: &str = "inquiry_gateway_rejected_total";
/// Webhook events that are not buyer messages (receipts, echoes, follows). Label: `channel`.
pub const WEBHOOK_EVENTS_IGNORED: &str = "inquiry_gateway_webhook_events_ignored_total";
/// Calls to platform APIs by pollers. Labels: `connector`, `outcome` (`ok`, `throttled`, `error`, `unparsable`).
pub const POLL_REQUESTS: &str = "inquiry_gateway_poll_requests_total";
/// Items a poller fetched that are not new buyer messages (the seller's replies, malformed items). Label: `connector`.
pub const POLL_ITEMS_IGNORED: &str = "inquiry_gateway_poll_items_ignored_total";
/// Webhook requests by connector and outcome (`ok` or the refusal's code).
pub const WEBHOOK_REQUESTS: &str = "inquiry_gateway_webhook_requests_total";
/// Access-token refreshes of pollers, by connector and outcome.
pub const POLL_TOKEN_REFRESHES: &str = "inquiry_gateway_poll_token_refreshes_total";
/// Buyer messages a poller fetched, by connector.
pub const POLL_ITEMS: &str = "inquiry_gateway_poll_items_total";
/// Parts of a cycle the platform refused and the poller stepped over (eBay's answered
/// questions). Label: `connector`.
pub const POLL_REFUSED_PARTS: &str = "inquiry_gateway_poll_refused_parts_total";
/// Time a poller waited on its rate limiters before a call.
pub const POLL_LIMITER_WAIT: &str = "inquiry_gateway_poll_limiter_wait_seconds";
/// Age of the newest buyer message of a page when it was fetched.
pub const POLL_LAG: &str = "inquiry_gateway_poll_lag_seconds";
/// Calls left today, as the platform reports it.
pub const POLL_QUOTA_REMAINING: &str = "inquiry_gateway_poll_quota_remaining";
/// When a poller's durable cursor last moved (Unix seconds).
pub const POLL_CURSOR_UPDATED: &str = "inquiry_gateway_poll_cursor_updated_timestamp_seconds";
/// SLA events recorded, by `kind` (`sla.started`, `sla.reminder`, `sla.breached`, ...) and
/// `queue` (one the config names, else `other`).
pub const SLA_EVENTS: &str = "inquiry_gateway_sla_events_total";
/// First responses recorded, by `outcome` (`met`, `late`), `channel` and `queue`.
pub const SLA_FIRST_RESPONSES: &str = "inquiry_gateway_sla_first_responses_total";
/// Time from receiving an inquiry to its first response (wall-clock seconds), by `channel` and
/// `queue`.
pub const SLA_FIRST_RESPONSE_TIME: &str = "inquiry_gateway_sla_first_response_seconds";
/// SLAs still waiting for a step (open timers).
pub const SLA_OPEN: &str = "inquiry_gateway_sla_open";
/// How late SLA steps fire after they are due, in seconds.
pub const SLA_TIMER_LAG: &str = "inquiry_gateway_sla_timer_lag_seconds";
/// Auto-acknowledgements, by `channel` and `outcome` (`sent`, `failed`, `retried`, `uncertain`, `dry_run`).
pub const ACKS: &str = "inquiry_gateway_acks_total";
/// First responses received, by `source` (`http`, `kafka`) and `outcome` (`recorded`,
/// `not_here`, `invalid`, `store_error`).
pub const REPLIES: &str = "inquiry_gateway_replies_total";
/// Inquiries that led to an order (`POST /v1/inquiries/{id}/conversion`), by `channel`.
pub const CONVERSIONS: &str = "inquiry_gateway_conversions_total";
/// Time from receiving an inquiry to the order it led to, by `channel`.
pub const CONVERSION_TIME: &str = "inquiry_gateway_conversion_seconds";
/// Alert messages, by `target` and `outcome` (`sent`, `failed`, `dry_run`).
pub const ALERTS: &str = "inquiry_gateway_alerts_total";
/// Poll lease groups the config defines (`[polling] coordination = "cql"`; the same on every replica).
pub const POLL_LEASE_GROUPS: &str = "inquiry_gateway_poll_lease_groups";
/// 1 while a poller polls here (always, when polling is local; while this replica holds its
/// lease otherwise), 0 when another replica has it, by `connector` and `account`.
pub const POLLER_ACTIVE: &str = "inquiry_gateway_poller_active";
/// Poll lease groups this replica holds (`[polling] coordination = "cql"`).
pub const POLL_LEASES_HELD: &str = "inquiry_gateway_poll_leases_held";
/// Poll leases acquired, released (handed on, shutdown) and lost (not renewed in time), by `change`.
pub const POLL_LEASE_CHANGES: &str = "inquiry_gateway_poll_lease_changes_total";
/// When a poller last completed a cycle (Unix seconds).
pub const POLL_CYCLE_COMPLETED: &str = "inquiry_gateway_poll_cycle_completed_timestamp_seconds";
/// Connections open on the gateway's own listeners, by `listener`.
pub const HTTP_CONNECTIONS: &str = "inquiry_gateway_http_connections";
/// TLS handshakes on the gateway's own listeners that failed or timed out, by `listener`.
pub const TLS_HANDSHAKE_FAILURES: &str = "inquiry_gateway_tls_handshake_failures_total";
/// Inquiries dead-lettered (routed by the fallback after a failure). Label: `reason`.
pub const DEAD_LETTERS: &str = "inquiry_gateway_dead_letters_total";
/// Requests waiting in the pipeline queue.
pub const QUEUE_DEPTH: &str = "inquiry_gateway_queue_depth";
/// Capacity of the pipeline queue, in requests.
pub const QUEUE_CAPACITY: &str = "inquiry_gateway_queue_capacity";
/// Duration of one fsync of the embedded store's journal (one per group commit round).
pub const STORE_COMMIT: &str = "inquiry_gateway_store_commit_seconds";
/// Inquiries per group commit.
pub const STORE_BATCH: &str = "inquiry_gateway_store_batch_inquiries";
/// Group commits that failed (nothing of them was acknowledged).
pub const STORE_ERRORS: &str = "inquiry_gateway_store_errors_total";
/// Bytes of the embedded store's journal as fjall counts them (at least 32 MiB a file): writes
/// pause once it passes 90% of its 4 GiB room, so a line climbing toward it means flushes are
/// not keeping up.
pub const STORE_JOURNAL_BYTES: &str = "inquiry_gateway_store_journal_bytes";
/// Bytes held in the embedded store's memtables, not yet flushed to disk segments.
pub const STORE_WRITE_BUFFER_BYTES: &str = "inquiry_gateway_store_write_buffer_bytes";
/// Inquiries in the store's in-memory message index (every stored inquiry; 20-40 bytes each).
pub const STORE_MESSAGE_INDEX: &str = "inquiry_gateway_store_message_index_entries";
/// Inquiries durable here and waiting for a sink. Label: `sink`.
pub const SPOOL_DEPTH: &str = "inquiry_gateway_spool_depth";
/// Records a sink's forwarder took from the spool. Labels: `sink`, `from` (`memory`: the stage's
/// recent records; `store`: read back from the embedded store, when the forwarder lags).
pub const SPOOL_READS: &str = "inquiry_gateway_spool_reads_total";
/// Age of the oldest inquiry waiting for a sink (0 when none waits). Label: `sink`.
pub const SPOOL_OLDEST_AGE: &str = "inquiry_gateway_spool_oldest_age_seconds";
/// Inquiries a sink took. Label: `sink`.
pub const SINK_DELIVERED: &str = "inquiry_gateway_sink_delivered_total";
/// Inquiries a sink refused for good (dead-lettered). Labels: `sink`, `reason`.
pub const SINK_REJECTED: &str = "inquiry_gateway_sink_rejected_total";
/// Free space of the embedded store's file system, in bytes (below `store.min_free_mb`, new
/// inquiries are refused).
pub const STORE_FREE_BYTES: &str = "inquiry_gateway_store_free_bytes";
/// Spooled inquiries and audit entries not sent, for a reason that is no failure: `erased` (the
/// buyer was erased meanwhile), `residency` (spooled before the sink's `location` or `regions`
/// changed), `unreadable_audit`. Labels: `sink`, `reason`.
pub const SINK_SKIPPED: &str = "inquiry_gateway_sink_skipped_total";
/// A buyer's repeat messages: acknowledgements not sent again, SLAs joined.
pub const REACH_REPEATS: &str = "inquiry_gateway_reach_repeats_total";
/// Reads of inquiries this replica does not hold, asked of its peers, by outcome.
pub const PEER_READS: &str = "inquiry_gateway_peer_reads_total";
/// Failed delivery rounds that are retried. Label: `sink`.
pub const SINK_RETRIES: &str = "inquiry_gateway_sink_retries_total";
/// OAUTHBEARER access tokens asked of the Kafka cluster's identity provider. Label: `result`
/// (`ok`, `error`).
pub const KAFKA_OAUTH_TOKENS: &str = "inquiry_gateway_kafka_oauth_tokens_total";
/// Counter: Kafka producers made again after a fatal error, by `sink`.
pub const KAFKA_PRODUCER_RENEWALS: &str = "inquiry_gateway_kafka_producer_renewals_total";
/// Counter: application tokens the gateway minted for webhook key fetches (eBay), by `result`.
pub const WEBHOOK_APP_TOKENS: &str = "inquiry_gateway_webhook_app_tokens_total";
/// 1 while a sink is degraded (unreachable or failing), else 0. Label: `sink`.
pub const SINK_DEGRADED: &str = "inquiry_gateway_sink_degraded";

/// Audit events of refused requests dropped because the pipeline queue was full.
pub const AUDIT_DROPPED: &str = "inquiry_gateway_audit_dropped_total";
/// Audit entries copied to a sink. Label: `sink`.
pub const AUDIT_FORWARDED: &str = "inquiry_gateway_audit_forwarded_total";
/// Entries in the audit log.
pub const AUDIT_ENTRIES: &str = "inquiry_gateway_audit_entries";
/// Size of the latest signed tree head of the audit log.
pub const AUDIT_SIGNED_SIZE: &str = "inquiry_gateway_audit_signed_tree_size";
/// Data subject requests. Labels: `kind` (`export`, `erasure`), `outcome` (`completed`, `not_found`, `failed`).
pub const SUBJECT_REQUESTS: &str = "inquiry_gateway_subject_requests_total";
/// Open data subject requests past their deadline (0 when none).
pub const SUBJECT_REQUESTS_OVERDUE: &str = "inquiry_gateway_subject_requests_overdue";

/// Duration of one plugin call (a batch). Label: `plugin`.
pub const PLUGIN_DURATION: &str = "inquiry_gateway_plugin_duration_seconds";
/// Inquiries a plugin answered. Labels: `plugin`, `outcome` (`decided`, `undecided`, `failed`).
pub const PLUGIN_OUTCOMES: &str = "inquiry_gateway_plugin_outcomes_total";
/// Inquiries a plugin failed on. Labels: `plugin`, `reason` (`plugin_timeout`, `plugin_fuel`,
/// `plugin_memory`, `plugin_trap`, `plugin_bad_output`, `plugin_abi`, `plugin_unavailable`,
/// `plugin_error`, `plugin_quarantined`).
pub const PLUGIN_FAILURES: &str = "inquiry_gateway_plugin_failures_total";
/// 1 while a plugin is quarantined by its circuit breaker. Label: `plugin`.
pub const PLUGIN_QUARANTINED: &str = "inquiry_gateway_plugin_quarantined";
/// 1 when a plugin is loaded, 0 when it could not be (its inquiries take the fallback route). Label: `plugin`.
pub const PLUGIN_LOADED: &str = "inquiry_gateway_plugin_loaded";
/// Plugin reloads. Label: `result` (`ok`, `error`).
pub const PLUGIN_RELOADS: &str = "inquiry_gateway_plugin_reloads_total";
/// Inquiries compared between a plugin and its shadow candidate. Labels: `plugin`, `result`
/// (`agree`, `disagree`, `failed`).
pub const PLUGIN_SHADOW: &str = "inquiry_gateway_plugin_shadow_total";
/// Counters plugins keep (`igw.counter_add`). Labels: `plugin`, `name` (at most 16 per plugin).
pub const PLUGIN_COUNTER: &str = "inquiry_gateway_plugin_counter_total";
/// New keys a plugin's key-value map refused (too long, or the map is full). Label: `plugin`.
pub const PLUGIN_KV_REFUSED: &str = "inquiry_gateway_plugin_kv_refused_total";
/// Plugin log lines dropped by the rate limit. Label: `plugin`.
pub const PLUGIN_LOGS_DROPPED: &str = "inquiry_gateway_plugin_logs_dropped_total";

/// Buckets for latencies, 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for group-commit sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0];
/// Buckets for how old a polled message is, 1 s to 1 day.
const AGE_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0];
/// Buckets of first-response times: a minute to a week.
const RESPONSE_BUCKETS: &[f64] =
    &[60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 86_400.0, 172_800.0, 604_800.0];
/// Buckets of inquiry-to-order times: ten minutes to a month.
const CONVERSION_BUCKETS: &[f64] = &[600.0, 3600.0, 14_400.0, 86_400.0, 259_200.0, 604_800.0, 1_209_600.0, 2_592_000.0];

/// A hop of the pipeline, the `hop` label of [`HOP_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Parsing and normalizing the payload.
    Normalize,
    /// Waiting in the pipeline queue.
    Queue,
    /// Deduplicating: by message (the in-memory index) and by Idempotency-Key (the store).
    Dedup,
    /// Routing.
    Route,
    /// Group commit to the embedded store.
    Store,
    /// From the request's arrival to its acknowledgement.
    Ingest,
    /// From the commit to Kafka's acknowledgement.
    SinkKafka,
    /// From the commit to the CQL store's acknowledgement.
    SinkCql,
    /// From the commit to the reach stage (SLAs and acknowledgements planned).
    Reach,
}

impl Hop {
    /// Every hop, in declaration order.
    pub const ALL: [Hop; 9] = [
        Hop::Normalize,
        Hop::Queue,
        Hop::Dedup,
        Hop::Route,
        Hop::Store,
        Hop::Ingest,
        Hop::SinkKafka,
        Hop::SinkCql,
        Hop::Reach,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Normalize => "normalize",
            Hop::Queue => "queue",
            Hop::Dedup => "dedup",
            Hop::Route => "route",
            Hop::Store => "store",
            Hop::Ingest => "ingest",
            Hop::SinkKafka => "sink_kafka",
            Hop::SinkCql => "sink_cql",
            Hop::Reach => "reach",
        }
    }
}

/// Handles of the per-hop histograms, one cell per (hop, channel), made on first use once the
/// recorder is installed: looking the histogram up by name and labels on every record was ~1% of
/// the CPU at ingest. Cells are filled lazily so that only pairs that occur are exported.
static HOP_HISTOGRAMS: OnceLock<Vec<OnceLock<Histogram>>> = OnceLock::new();

/// Records that `count` inquiries of `channel` each spent `elapsed` in `hop`.
pub fn record_hop(hop: Hop, channel: Channel, elapsed: Duration, count: usize) {
    let register = || histogram!(HOP_DURATION, "hop" => hop.as_str(), "channel" => channel.as_str());
    let seconds = elapsed.as_secs_f64();
    let cell = HOP_HISTOGRAMS.get().and_then(|cells| cells.get(hop as usize * Channel::ALL.len() + channel as usize));
    match cell {
        Some(cell) => cell.get_or_init(register).record_many(seconds, count),
        // Before the recorder is installed (tests of single parts), nothing to keep a handle of.
        None => register().record_many(seconds, count),
    }
}

/// Counts a refused request or line.
pub fn count_rejected(reason: &'static str) {
    counter!(REJECTED, "reason" => reason).increment(1);
}

/// Installs the Prometheus recorder for the process and describes every metric.
pub fn install_metrics() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STORE_BATCH.to_owned()), BATCH_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(POLL_LAG.to_owned()), AGE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SLA_TIMER_LAG.to_owned()), AGE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SLA_FIRST_RESPONSE_TIME.to_owned()), RESPONSE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CONVERSION_TIME.to_owned()), CONVERSION_BUCKETS))
        .expect("bucket lists are non-empty")
        .install_recorder()
        .expect("the metrics recorder is installed once per process");
    HOP_HISTOGRAMS.get_or_init(|| (0..Hop::ALL.len() * Channel::ALL.len()).map(|_| OnceLock::new()).collect());
    describe_histogram!(HOP_DURATION, Unit::Seconds, "latency of one pipeline hop per inquiry");
    describe_counter!(INQUIRIES, "inquiries that passed ingest, by outcome");
    describe_counter!(REJECTED, "requests or lines refused, by reason");
    describe_gauge!(HTTP_CONNECTIONS, "connections open on the listeners, by listener");
    describe_counter!(TLS_HANDSHAKE_FAILURES, "TLS handshakes on the listeners that failed, by listener");
    describe_counter!(POLL_REQUESTS, "calls to platform APIs by pollers, by outcome");
    describe_counter!(POLL_ITEMS_IGNORED, "items a poller fetched that are not new buyer messages");
    describe_counter!(POLL_ITEMS, "buyer messages a poller fetched");
    describe_counter!(POLL_REFUSED_PARTS, "parts of a poll cycle the platform refused and the poller stepped over");
    describe_counter!(POLL_TOKEN_REFRESHES, "access-token refreshes of pollers, by outcome");
    describe_counter!(WEBHOOK_REQUESTS, "webhook requests by connector and outcome (ok or the refusal's code)");
    describe_histogram!(POLL_LIMITER_WAIT, Unit::Seconds, "time a poller waited on its rate limiters per call");
    describe_histogram!(POLL_LAG, Unit::Seconds, "age of the newest buyer message of a page when fetched");
    describe_gauge!(POLL_QUOTA_REMAINING, "calls left today as the platform reports it");
    describe_gauge!(POLL_CURSOR_UPDATED, "when a poller's durable cursor last moved, Unix seconds");
    describe_counter!(SLA_EVENTS, "sla events recorded, by kind and queue (a queue the config names, else other)");
    describe_counter!(SLA_FIRST_RESPONSES, "first responses, by outcome (met, late), channel and queue");
    describe_histogram!(SLA_FIRST_RESPONSE_TIME, Unit::Seconds, "time from receiving an inquiry to its first response");
    describe_gauge!(SLA_OPEN, "slas waiting for their next step");
    describe_gauge!(STORE_FREE_BYTES, "free space of the embedded store's file system, bytes");
    describe_histogram!(SLA_TIMER_LAG, Unit::Seconds, "how late sla steps fire after they are due");
    describe_counter!(REPLIES, "first responses received, by source and outcome");
    describe_counter!(CONVERSIONS, "inquiries that led to an order, by channel");
    describe_histogram!(CONVERSION_TIME, Unit::Seconds, "time from receiving an inquiry to the order it led to");
    describe_counter!(ACKS, "auto-acknowledgements, by channel and outcome");
    describe_counter!(ALERTS, "alert messages, by target and outcome");
    describe_gauge!(POLL_LEASE_GROUPS, "poll lease groups the config defines");
    describe_gauge!(POLLER_ACTIVE, "1 while a poller polls on this replica, by connector and account");
    describe_gauge!(POLL_LEASES_HELD, "poll lease groups this replica holds");
    describe_counter!(POLL_LEASE_CHANGES, "poll leases acquired, released or lost, by change");
    describe_gauge!(POLL_CYCLE_COMPLETED, "when a poller last completed a polling cycle, Unix seconds");
    describe_counter!(WEBHOOK_EVENTS_IGNORED, "webhook events that are not buyer messages");
    describe_counter!(DEAD_LETTERS, "inquiries dead-lettered, by reason");
    describe_gauge!(QUEUE_DEPTH, "requests waiting in the pipeline queue");
    describe_gauge!(QUEUE_CAPACITY, "capacity of the pipeline queue in requests");
    describe_histogram!(STORE_COMMIT, Unit::Seconds, "duration of one group commit including fsync");
    describe_histogram!(STORE_BATCH, "inquiries per group commit");
    describe_gauge!(
        STORE_JOURNAL_BYTES,
        Unit::Bytes,
        "bytes of the store journal on disk (writes pause at 90% of its room)"
    );
    describe_gauge!(STORE_WRITE_BUFFER_BYTES, Unit::Bytes, "bytes in the store's memtables, not yet flushed");
    describe_counter!(STORE_ERRORS, "group commits that failed");
    describe_gauge!(STORE_MESSAGE_INDEX, "stored inquiries in the in-memory message dedup index");
    describe_gauge!(SPOOL_DEPTH, "inquiries durable here and waiting for a sink");
    describe_counter!(SPOOL_READS, "records a forwarder took from the spool, from memory or read back from the store");
    describe_gauge!(SPOOL_OLDEST_AGE, Unit::Seconds, "age of the oldest inquiry waiting for a sink");
    describe_counter!(SINK_DELIVERED, "inquiries a sink took");
    describe_counter!(SINK_REJECTED, "inquiries a sink refused for good (dead-lettered)");
    describe_counter!(KAFKA_OAUTH_TOKENS, "OAUTHBEARER access tokens asked of the kafka cluster's identity provider");
    describe_counter!(KAFKA_PRODUCER_RENEWALS, "kafka producers made again after librdkafka reported a fatal error");
    describe_counter!(WEBHOOK_APP_TOKENS, "application tokens minted for fetching webhook signing keys (eBay)");
    describe_counter!(
        REACH_REPEATS,
        "a buyer's further messages in a conversation: ack_skipped (acknowledged within reach.ack_repeat_window), sla_joined (joined the SLA still running)"
    );
    describe_counter!(
        PEER_READS,
        "GET /v1/inquiries/{id} for an inquiry this replica does not hold, asked of the other replicas: found, not_found, unavailable (a peer did not answer)"
    );
    describe_counter!(
        SINK_SKIPPED,
        "inquiries or audit entries not sent to a sink: the buyer was erased, unreadable, residency (region or location changed), unknown_country (a sink outside the EU never gets a buyer of unknown country)"
    );
    describe_counter!(SINK_RETRIES, "failed delivery rounds that are retried");
    describe_gauge!(SINK_DEGRADED, "1 while a sink is unreachable or failing");
    describe_counter!(AUDIT_DROPPED, "audit events of refused requests dropped on a full queue");
    describe_gauge!(AUDIT_ENTRIES, "entries in the audit log");
    describe_counter!(AUDIT_FORWARDED, "audit entries copied to a sink");
    describe_gauge!(AUDIT_SIGNED_SIZE, "tree size of the latest signed head of the audit log");
    describe_counter!(SUBJECT_REQUESTS, "data subject requests, by kind and outcome");
    describe_gauge!(SUBJECT_REQUESTS_OVERDUE, "open data subject requests past their deadline");
    describe_histogram!(PLUGIN_DURATION, Unit::Seconds, "duration of one routing plugin call (a batch)");
    describe_counter!(PLUGIN_OUTCOMES, "inquiries a routing plugin answered, by outcome");
    describe_counter!(PLUGIN_FAILURES, "inquiries a routing plugin failed on, by reason");
    describe_gauge!(PLUGIN_QUARANTINED, "1 while a routing plugin is quarantined");
    describe_gauge!(PLUGIN_LOADED, "1 when a routing plugin is loaded, 0 when it could not be");
    describe_counter!(PLUGIN_RELOADS, "routing plugin reloads, by result");
    describe_counter!(PLUGIN_SHADOW, "inquiries compared between a plugin and its shadow candidate");
    describe_counter!(PLUGIN_COUNTER, "counters kept by routing plugins");
    describe_counter!(PLUGIN_KV_REFUSED, "new keys a plugin's key-value map refused");
    describe_counter!(PLUGIN_LOGS_DROPPED, "plugin log lines dropped by the rate limit");
    handle
}

/// Starts JSON logs on stdout; `RUST_LOG` overrides `level`.
pub fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().json().flatten_event(true).with_current_span(false).with_env_filter(filter).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_and_channel_discriminants_index_their_lists() {
        // record_hop finds a (hop, channel) cell by discriminant: each must equal its list position.
        for (i, hop) in Hop::ALL.iter().enumerate() {
            assert_eq!(*hop as usize, i, "{hop:?}");
        }
        for (i, channel) in Channel::ALL.iter().enumerate() {
            assert_eq!(*channel as usize, i, "{channel:?}");
        }
    }
}
