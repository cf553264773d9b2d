//! Downstream sinks and the forwarders that feed them from the spool.
//!
//! A [`Sink`] only knows how to deliver a batch of stored inquiries and how to prepare itself
//! (topics, schema). The [`forward`] loop owns everything around it: reading the outbox in commit
//! order, retries with backoff, marking the sink degraded, metrics, and removing what was taken.

pub mod cql;
pub mod kafka;
pub mod oauth;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use inquiry_connectors::Channel;
use metrics::{counter, gauge};
use tokio::sync::watch;
use uuid::Uuid;

use crate::compliance::audit::AuditEvent;
use crate::pipeline::{Pipeline, StoredInquiry, ERASED_RAW_REF};
use crate::retry::{sleep_or_stop, Backoff};
use crate::spool::{CommittedRecord, Spool};
use crate::store::{OutboxEntry, Store, StoreError};
use crate::telemetry::{self, Hop};

/// A stored inquiry on its way to a sink. Cheap to clone: the record is shared.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Commit-order sequence number.
    pub seq: u64,
    record: Arc<CommittedRecord>,
}

impl OutRecord {
    /// The record of `seq`: `stored` and the JSON it was read from (or serialized to).
    pub fn new(seq: u64, stored: StoredInquiry, json: Vec<u8>) -> Self {
        OutRecord { seq, record: Arc::new(CommittedRecord { stored, json }) }
    }

    /// The inquiry and its routing decision.
    pub fn stored(&self) -> &StoredInquiry {
        &self.record.stored
    }

    /// The same, as the JSON kept in the store (published as is).
    pub fn json(&self) -> &[u8] {
        &self.record.json
    }

    /// The inquiry id.
    pub fn id(&self) -> Uuid {
        self.record.stored.inquiry.id
    }

    /// The channel.
    pub fn channel(&self) -> Channel {
        self.record.stored.inquiry.channel
    }
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The sink has it.
    Delivered,
    /// The sink refuses it for good (too large, invalid): dead-lettered, not retried.
    Rejected {
        /// Bounded reason code (metric label).
        reason: &'static str,
        /// Details for the log; no personal data.
        detail: String,
    },
    /// Not now (sink unreachable, timeout): this record and the ones after it are sent again.
    Retry {
        /// Details for the log.
        detail: String,
    },
}

/// Why a sink could not prepare itself (create topics, migrate the schema, connect).
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// Which sink.
    pub sink: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A downstream system that takes stored inquiries.
pub trait Sink: Send + Sync + 'static {
    /// Short fixed name (`kafka`, `cql`): outbox name and metric label.
    fn name(&self) -> &'static str;

    /// Regions of the inquiries it receives (data residency); the others never reach its outbox.
    fn regions(&self) -> &[inquiry_connectors::Region];

    /// Where the cluster runs (`check` makes it explicit).
    fn location(&self) -> inquiry_connectors::Region;

    /// The hop its deliveries are timed as (the `hop` label of the latency histogram).
    fn hop(&self) -> Hop;

    /// Connects and creates or checks what the sink needs (topics, keyspace and tables).
    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Delivers `records` (in commit order); returns one outcome per record, in order.
    fn deliver<'a>(&'a self, records: &'a [OutRecord]) -> BoxFuture<'a, Vec<Delivery>>;

    /// Most records per [`Sink::deliver`] call.
    fn batch_size(&self) -> usize;

    /// Deletes or retracts what the sink holds of an erased data subject: `records` are its
    /// inquiries as stored now (sealed fields already removed). Their sealed copies are unreadable
    /// already (the subject's key is destroyed); this removes what can be removed.
    fn erase<'a>(&'a self, pseudonym: &'a str, records: &'a [StoredInquiry]) -> BoxFuture<'a, Result<(), String>>;

    /// True when the sink takes a copy of the audit trail (the in-process reach stage does not).
    fn takes_audit(&self) -> bool {
        true
    }

    /// Delivers audit entries (`(index, entry bytes, parsed)`, in log order); all or nothing
    /// (a retry sends them again: consumers drop duplicates by index).
    fn deliver_audit<'a>(&'a self, entries: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>>;
}

/// An audit entry on its way to a sink.
pub struct AuditRecord {
    /// Its index in the log.
    pub index: u64,
    /// The entry exactly as hashed into the log.
    pub bytes: Vec<u8>,
    /// The fields sinks file it by.
    pub head: AuditHead,
}

/// The fields of an audit entry that a sink files it by (key, partition, columns); the entry
/// itself travels as stored. Parsing only these, not the whole event and its details, was the
/// larger part of forwarding the audit trail.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AuditHead {
    /// What happened.
    pub kind: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    /// The inquiry concerned.
    #[serde(default)]
    pub inquiry_id: Option<Uuid>,
    /// The data subject concerned (pseudonym).
    #[serde(default)]
    pub subject: Option<String>,
}

/// Most audit entries per delivery.
const AUDIT_BATCH: u64 = 500;

/// Copies the audit log to `sink` in order, from the sink's own cursor, until `stop` fires. Only
/// durable entries are sent; the cursor is kept in the store (after a crash, a few entries may be
/// sent again).
pub async fn forward_audit(
    sink: Arc<dyn Sink>,
    index: usize,
    spool: Arc<Spool>,
    store: Store,
    mut stop: watch::Receiver<()>,
) {
    let name = sink.name();
    let cursor_name = format!("audit-forwarded/{name}");
    let mut next: u64 = store.cursor(&cursor_name).ok().flatten().and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    if !sink.takes_audit() {
        return;
    }
    // Audit entries name EU subjects (pseudonyms are still personal data): not outside the EU.
    if sink.location() != inquiry_connectors::Region::Eu {
        tracing::info!(sink = name, "sink outside the EU: the audit trail is not copied to it");
        return;
    }
    // The inquiry forwarder prepares the sink (topics, schema); wait for it.
    while spool.sinks[index].degraded.load(Ordering::Relaxed) {
        if sleep_or_stop(Duration::from_millis(200), &mut stop).await {
            return;
        }
    }
    loop {
        let end = spool.audit_durable_end();
        if next >= end {
            tokio::select! {
                _ = spool.durable.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let to = end.min(next + AUDIT_BATCH);
        let read = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.audit_entries(next, to)).await
        };
        let records: Vec<AuditRecord> = match read.unwrap_or_else(|e| Err(StoreError::from_message(&e.to_string()))) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(index, bytes)| match serde_json::from_slice(&bytes) {
                    Ok(head) => Some(AuditRecord { index, bytes, head }),
                    Err(_) => {
                        tracing::error!(sink = name, index, "audit entry unreadable; not sent");
                        counter!(telemetry::SINK_SKIPPED, "sink" => name, "reason" => "unreadable_audit").increment(1);
                        None
                    }
                })
                .collect(),
            Err(err) => {
                tracing::error!(sink = name, error = %err, "audit log unreadable");
                if sleep_or_stop(backoff.next(), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        match sink.deliver_audit(&records).await {
            Ok(()) => {
                next = to;
                let mut batch = store.batch();
                batch.put_cursor(&cursor_name, &next.to_string());
                if let Err(err) = batch.write() {
                    tracing::warn!(sink = name, error = %err, "audit cursor not stored; entries may be sent again");
                }
                counter!(telemetry::AUDIT_FORWARDED, "sink" => name).increment(records.len() as u64);
                backoff.reset();
            }
            Err(err) => {
                tracing::warn!(sink = name, error = %err, "audit delivery failed; retrying");
                if sleep_or_stop(backoff.next(), &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// After this long without an answer a sink is reported degraded (it keeps being awaited).
const STALL: Duration = Duration::from_secs(2);

/// Drains sink `index`'s outbox into `sink` until `stop` fires. Entries are removed only after
/// the sink has them (or refused them for good); after a crash the rest is sent again.
pub async fn forward(
    sink: Arc<dyn Sink>,
    index: usize,
    spool: Arc<Spool>,
    store: Store,
    pipeline: Pipeline,
    mut stop: watch::Receiver<()>,
) {
    let name = sink.name();
    let state = &spool.sinks[index];
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    // Prepare (topics, schema) before the first delivery; the sink may be down at start-up.
    loop {
        match tokio::select! { r = sink.prepare() => r, _ = stop.changed() => return } {
            Ok(()) => break,
            Err(err) => {
                state.degraded.store(true, Ordering::Relaxed);
                tracing::warn!(sink = name, error = %err, "sink not ready; inquiries keep spooling");
                if sleep_or_stop(backoff.next(), &mut stop).await {
                    return;
                }
            }
        }
    }
    state.degraded.store(false, Ordering::Relaxed);
    tracing::info!(sink = name, "sink ready");
    backoff.reset();

    // Up to WINDOW rounds are in flight at once; their outcomes are handled in commit order.
    let mut in_flight: FuturesOrdered<BoxFuture<'static, (Round, Vec<Delivery>)>> = FuturesOrdered::new();
    let mut read_end = state.forwarded_end.load(Ordering::Acquire);
    let mut stopping = false;
    loop {
        let durable = spool.durable.notified();
        while !stopping && in_flight.len() < WINDOW {
            // Store reads take milliseconds for a full round: off the async workers.
            let durable_end = spool.durable_end();
            let read = {
                let (sink, spool, store) = (sink.clone(), spool.clone(), store.clone());
                tokio::task::spawn_blocking(move || read_round(sink.as_ref(), &spool, index, &store, read_end)).await
            };
            let round = match read.unwrap_or_else(|e| Err(StoreError::from_message(&e.to_string()))) {
                Ok(Some(round)) => round,
                Ok(None) => {
                    // Nothing for this sink up to the durable end (other regions' inquiries):
                    // it has taken everything it will get so far.
                    if in_flight.is_empty() && read_end < durable_end {
                        read_end = durable_end;
                        state.forwarded_end.fetch_max(durable_end, Ordering::AcqRel);
                        spool.release_forwarded();
                        spool.publish_depths();
                    }
                    break;
                }
                Err(err) => {
                    tracing::error!(sink = name, error = %err, "outbox unreadable");
                    break;
                }
            };
            read_end = round.end;
            let sink = sink.clone();
            in_flight.push_back(
                async move {
                    let outcomes = sink.deliver(&round.records).await;
                    (round, outcomes)
                }
                .boxed(),
            );
        }
        let oldest = state.outbox.range(state.forwarded_end.load(Ordering::Acquire), read_end.max(1), 1);
        let oldest_age = oldest.ok().and_then(|e| e.first().map(|e| now_ms().saturating_sub(e.enqueued_ms)));
        gauge!(telemetry::SPOOL_OLDEST_AGE, "sink" => name).set(oldest_age.unwrap_or(0) as f64 / 1000.0);

        if in_flight.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                _ = durable => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => stopping = true,
            }
            continue;
        }
        let (round, outcomes) = tokio::select! {
            next = in_flight.next() => next.expect("not empty"),
            _ = tokio::time::sleep(STALL) => {
                state.degraded.store(true, Ordering::Relaxed);
                spool.publish_depths();
                tracing::warn!(sink = name, "sink is not answering; inquiries keep spooling");
                in_flight.next().await.expect("not empty")
            }
            _ = stop.changed(), if !stopping => {
                // Finish what is in flight, then stop; the rest stays in the spool.
                stopping = true;
                continue;
            }
        };

        let retry_at = finish_round(name, sink.hop(), &round, &outcomes);
        let next_seq = retry_at.unwrap_or(round.end);
        audit_round(&pipeline, name, &round, &outcomes).await;
        let round_start = round.entries.first().map_or(next_seq, |e| e.seq);
        let removed = {
            let (spool, store) = (spool.clone(), store.clone());
            tokio::task::spawn_blocking(move || spool.sinks[index].outbox.remove(&store, round_start, next_seq)).await
        };
        if let Err(err) = removed.unwrap_or_else(|e| Err(StoreError::from_message(&e.to_string()))) {
            tracing::error!(sink = name, error = %err, "could not remove forwarded entries; they will be sent again");
        }
        state.forwarded_end.store(next_seq, Ordering::Release);
        // Freed here, by the forwarder, rather than by the sync thread when memory runs short.
        spool.release_forwarded();

        if let Some(retry_seq) = retry_at {
            // Later rounds may have been delivered; they are sent again after this one, in order
            // (duplicates, dropped downstream by inquiry id), so wait for them and rewind.
            while in_flight.next().await.is_some() {}
            read_end = retry_seq;
            state.degraded.store(true, Ordering::Relaxed);
            spool.publish_depths();
            counter!(telemetry::SINK_RETRIES, "sink" => name).increment(1);
            if sleep_or_stop(backoff.next(), &mut stop).await {
                return;
            }
        } else {
            state.degraded.store(false, Ordering::Relaxed);
            spool.publish_depths();
            backoff.reset();
        }
    }
}

/// Rounds of a sink in flight at once.
const WINDOW: usize = 4;

/// One batch of outbox entries on its way to a sink.
struct Round {
    entries: Vec<OutboxEntry>,
    records: Vec<OutRecord>,
    /// First sequence number after this round.
    end: u64,
}

/// Reads the next durable entries from `from` and loads their inquiries; `None` when there are none.
fn read_round(
    sink: &dyn Sink,
    spool: &Spool,
    index: usize,
    store: &Store,
    from: u64,
) -> Result<Option<Round>, StoreError> {
    let state = &spool.sinks[index];
    let entries = state.outbox.range(from, spool.durable_end(), sink.batch_size())?;
    let Some(last) = entries.last() else { return Ok(None) };
    let end = last.seq + 1;
    let mut records = Vec::with_capacity(entries.len());
    let (mut from_memory, mut from_store) = (0u64, 0u64);
    // Checked again at sending: an entry spooled under another `location` or `regions` of the
    // sink (a changed config) must not reach it now.
    let not_here = |stored: &StoredInquiry| {
        let refused = !state.accepts(&stored.inquiry);
        if refused {
            counter!(telemetry::SINK_SKIPPED, "sink" => state.name, "reason" => "residency").increment(1);
        }
        refused
    };
    for entry in &entries {
        // The record as the stage built it, from memory while it is kept; else from the store.
        if let Some(record) = spool.recent.get(entry.seq) {
            from_memory += 1;
            if !not_here(&record.stored) {
                records.push(OutRecord { seq: entry.seq, record });
            }
            continue;
        }
        from_store += 1;
        let json = store.get_inquiry(entry.id)?;
        match json.and_then(|json| Some((serde_json::from_slice::<StoredInquiry>(&json).ok()?, json))) {
            // Its buyer was erased after it was spooled: the sink erases what it holds of the
            // buyer, and is not sent it again.
            Some((stored, _)) if stored.inquiry.raw_ref == ERASED_RAW_REF => {
                counter!(telemetry::SINK_SKIPPED, "sink" => state.name, "reason" => "erased").increment(1);
            }
            Some((stored, _)) if not_here(&stored) => {}
            Some((stored, json)) => records.push(OutRecord::new(entry.seq, stored, json)),
            None => {
                tracing::error!(sink = state.name, seq = entry.seq, "outbox entry without a readable inquiry; skipped");
                counter!(telemetry::SINK_REJECTED, "sink" => state.name, "reason" => "unreadable").increment(1);
            }
        }
    }
    counter!(telemetry::SPOOL_READS, "sink" => state.name, "from" => "memory").increment(from_memory);
    counter!(telemetry::SPOOL_READS, "sink" => state.name, "from" => "store").increment(from_store);
    Ok(Some(Round { entries, records, end }))
}

/// Audits what the sink took (`sink.persisted`) and refused for good, one entry per round, and
/// waits until the entry is durable (a full queue is waited out: the entry is not dropped).
async fn audit_round(pipeline: &Pipeline, name: &'static str, round: &Round, outcomes: &[Delivery]) {
    let mut persisted = Vec::new();
    let mut rejected = Vec::new();
    for (record, outcome) in round.records.iter().zip(outcomes) {
        match outcome {
            Delivery::Delivered => persisted.push(record.id()),
            Delivery::Rejected { reason, .. } => {
                rejected.push(serde_json::json!({ "inquiry_id": record.id(), "reason": reason }))
            }
            Delivery::Retry { .. } => break,
        }
    }
    if persisted.is_empty() && rejected.is_empty() {
        return;
    }
    let event = AuditEvent::new("sink.persisted", "gateway")
        .detail(serde_json::json!({ "sink": name, "inquiry_ids": persisted, "dead_lettered": rejected }));
    // In turn with ingest: a busy ingest must not hold the forwarders back (the spool would
    // fill up and refuse ingest in the end).
    if let Err(err) = pipeline.audit_in_turn(vec![event]).await {
        tracing::warn!(sink = name, error = %err, "a sink delivery could not be audited");
    }
}

/// Records metrics and logs for the outcomes of a round; returns the sequence number of the first
/// record to retry, if any (everything before it is done: delivered or dead-lettered).
fn finish_round(name: &'static str, hop: Hop, round: &Round, outcomes: &[Delivery]) -> Option<u64> {
    let now = now_ms();
    for (record, outcome) in round.records.iter().zip(outcomes) {
        match outcome {
            Delivery::Delivered => {
                counter!(telemetry::SINK_DELIVERED, "sink" => name).increment(1);
                let queued = round.entries.iter().find(|e| e.seq == record.seq).map_or(now, |e| e.enqueued_ms);
                telemetry::record_hop(hop, record.channel(), Duration::from_millis(now.saturating_sub(queued)), 1);
            }
            Delivery::Rejected { reason, detail } => {
                counter!(telemetry::SINK_REJECTED, "sink" => name, "reason" => *reason).increment(1);
                tracing::error!(sink = name, inquiry_id = %record.id(), reason, detail, "sink refused inquiry; dead-lettered");
            }
            Delivery::Retry { detail } => {
                tracing::warn!(sink = name, detail, "sink delivery failed; retrying with backoff");
                return Some(record.seq);
            }
        }
    }
    // A sink that answered for fewer records than it was given: the rest are retried.
    round.records.get(outcomes.len()).map(|r| r.seq)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
