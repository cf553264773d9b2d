//! The spool: one outbox per sink in the embedded store, and the counters the pipeline and the
//! forwarders share.
//!
//! The stage gives every new inquiry a sequence number (commit order) and queues it in every
//! sink's outbox in the same atomic batch as the inquiry itself. The sync thread publishes how far
//! the journal is durable; a forwarder only sends entries below that mark, so nothing leaves the
//! gateway before it is durable here.
//!
//! The sync thread also keeps the records made durable last in memory ([`RecentRecords`]), as
//! the stage built them (no copy, no parsing): a forwarder that keeps up takes them from there
//! instead of reading them back from the store; one that lags (a sink was down, the gateway
//! restarted) reads the store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::gauge;

use inquiry_connectors::Region;

use crate::pipeline::StoredInquiry;
use crate::store::{Outbox, Store, StoreError};
use crate::telemetry;

/// Checks the free space of the file system under `path` every `every` until `stop`: below
/// `min_free_bytes`, the spool is marked [`Spool::disk_low`] (ingest refuses new inquiries with
/// 503 and readiness fails) so that the store never runs out of space in the middle of a write;
/// the space left is the gauge `inquiry_gateway_store_free_bytes`.
pub async fn watch_disk(
    spool: std::sync::Arc<Spool>,
    path: std::path::PathBuf,
    min_free_bytes: u64,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    loop {
        match rustix::fs::statvfs(&path) {
            Ok(stats) => {
                let free = stats.f_bavail.saturating_mul(stats.f_frsize);
                metrics::gauge!(telemetry::STORE_FREE_BYTES).set(free as f64);
                let low = free < min_free_bytes;
                if low != spool.disk_low() {
                    if low {
                        tracing::error!(
                            free_bytes = free,
                            min_free_bytes,
                            "store disk almost full: new inquiries are refused"
                        );
                    } else {
                        tracing::info!(free_bytes = free, "store disk has room again: inquiries are accepted");
                    }
                    spool.set_disk_low(low);
                }
            }
            Err(err) => tracing::warn!(error = %err, "free space of the store's disk unknown"),
        }
        if crate::retry::sleep_or_stop(every, &mut stop).await {
            return;
        }
    }
}

/// One sink's side of the spool.
pub struct SpoolSink {
    /// The sink's name (`kafka`, `cql`): the `sink` metric label.
    pub name: &'static str,
    /// Its outbox.
    pub outbox: Outbox,
    /// First sequence number not yet taken by the sink.
    pub forwarded_end: AtomicU64,
    /// True while the sink is unreachable or failing (inquiries keep spooling).
    pub degraded: AtomicBool,
    /// Regions of the inquiries it receives (data residency).
    pub regions: Vec<Region>,
    /// Where it runs.
    pub location: Region,
}

impl SpoolSink {
    /// True when `inquiry` may go to this sink: its region is one the sink takes, and a sink
    /// outside the EU never gets an inquiry whose buyer's country is unknown (it may be an EU
    /// buyer). Such an inquiry also counts as EU data: a sink that takes `eu` gets it, so that
    /// with one cluster per region it reaches the EU one.
    pub fn accepts(&self, inquiry: &inquiry_connectors::Inquiry) -> bool {
        residency_allows(&self.regions, self.location, inquiry)
    }
}

/// True when a sink at `location` that takes `regions` may hold `inquiry` (see
/// [`SpoolSink::accepts`]); also what a sink's part of an erasure is limited to.
pub fn residency_allows(regions: &[Region], location: Region, inquiry: &inquiry_connectors::Inquiry) -> bool {
    region_allows(regions, location, inquiry.buyer.country.is_some().then_some(inquiry.region))
}

/// True when a sink at `location` that takes `regions` may hold data of `region`, `None` for a
/// buyer of unknown country: that counts as both regions' data (an inquiry's record says `other`,
/// its buyer may be in the EU), so only a sink in the EU takes it, whichever region it takes.
/// The one rule for inquiries ([`residency_allows`]) and their SLA events.
pub fn region_allows(regions: &[Region], location: Region, region: Option<Region>) -> bool {
    match region {
        Some(region) => regions.contains(&region),
        None => location == Region::Eu && (regions.contains(&Region::Eu) || regions.contains(&Region::Other)),
    }
}

/// Everything the stage, the sync thread and the forwarders share about the spool.
pub struct Spool {
    /// One entry per configured sink.
    pub sinks: Vec<SpoolSink>,
    durable_end: AtomicU64,
    /// Audit entries below this index are durable.
    audit_durable_end: AtomicU64,
    /// Wakes forwarders when new entries become durable.
    pub durable: tokio::sync::Notify,
    /// The records committed last, by sequence number.
    pub recent: RecentRecords,
    max_pending: u64,
    /// True while the store's file system has less free space than `store.min_free_mb`.
    disk_low: AtomicBool,
}

impl Spool {
    /// Opens the outboxes of `sinks`; returns the spool and the next sequence number to assign.
    pub fn open(
        store: &Store,
        sinks: &[(&'static str, Vec<Region>, Region)],
        max_pending: u64,
    ) -> Result<(Spool, u64), StoreError> {
        let mut opened = Vec::new();
        let mut next_seq = 0;
        for (name, regions, location) in sinks {
            let outbox = store.outbox(name)?;
            let bounds = outbox.bounds()?;
            next_seq = next_seq.max(bounds.map_or(0, |(_, last)| last + 1));
            opened.push((name, outbox, bounds.map(|(first, _)| first), regions.clone(), *location));
        }
        let sinks = opened
            .into_iter()
            .map(|(name, outbox, first, regions, location)| SpoolSink {
                name,
                outbox,
                forwarded_end: AtomicU64::new(first.unwrap_or(next_seq)),
                // Degraded until the forwarder has prepared the sink (connected, topics, schema).
                degraded: AtomicBool::new(true),
                regions,
                location,
            })
            .collect();
        let spool = Spool {
            sinks,
            durable_end: AtomicU64::new(next_seq),
            audit_durable_end: AtomicU64::new(store.audit_len()?),
            durable: Default::default(),
            recent: RecentRecords::default(),
            max_pending,
            disk_low: AtomicBool::new(false),
        };
        spool.publish_depths();
        Ok((spool, next_seq))
    }

    /// When the oldest entry some sink has not taken yet was queued (ms since the Unix epoch).
    pub fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        let firsts = self.sinks.iter().map(|sink| sink.outbox.first_enqueued_ms()).collect::<Result<Vec<_>, _>>()?;
        Ok(firsts.into_iter().flatten().min())
    }

    /// Sequence numbers below this are durable.
    pub fn durable_end(&self) -> u64 {
        self.durable_end.load(Ordering::Acquire)
    }

    /// Called after an fsync: entries below `end` are durable; wakes the forwarders.
    pub fn mark_durable(&self, end: u64) {
        self.durable_end.fetch_max(end, Ordering::AcqRel);
        self.publish_depths();
        self.durable.notify_waiters();
    }

    /// Audit entries below this index are durable.
    pub fn audit_durable_end(&self) -> u64 {
        self.audit_durable_end.load(Ordering::Acquire)
    }

    /// Called after an fsync: audit entries below `end` are durable.
    pub fn mark_audit_durable(&self, end: u64) {
        self.audit_durable_end.fetch_max(end, Ordering::AcqRel);
    }

    /// Inquiries waiting for sink `index`: its outbox's entries (a sink of some regions only
    /// waits for nothing of the others).
    pub fn depth(&self, index: usize) -> u64 {
        self.sinks[index].outbox.len()
    }

    /// True when some sink has `max_pending` or more inquiries waiting: ingest must refuse.
    pub fn is_full(&self) -> bool {
        (0..self.sinks.len()).any(|i| self.depth(i) >= self.max_pending)
    }

    /// True while the store's disk is short of space: new inquiries are refused.
    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }

    /// Records whether the store's disk is short of space (see [`watch_disk`]).
    pub fn set_disk_low(&self, low: bool) {
        self.disk_low.store(low, Ordering::Relaxed);
    }

    /// Forgets the records in memory that every sink has taken.
    pub fn release_forwarded(&self) {
        let end = self.sinks.iter().map(|sink| sink.forwarded_end.load(Ordering::Acquire)).min();
        self.recent.release_below(end.unwrap_or(0));
    }

    /// Updates the spool-depth gauges.
    pub fn publish_depths(&self) {
        for (i, sink) in self.sinks.iter().enumerate() {
            gauge!(telemetry::SPOOL_DEPTH, "sink" => sink.name).set(self.depth(i) as f64);
            let degraded = if sink.degraded.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
            gauge!(telemetry::SINK_DEGRADED, "sink" => sink.name).set(degraded);
        }
    }
}

/// A committed inquiry as the forwarders take it: the record as stored and its JSON.
#[derive(Debug)]
pub struct CommittedRecord {
    /// The inquiry and its routing decision, exactly as its JSON reads (no personal data in
    /// clear: only the sealed fields).
    pub stored: StoredInquiry,
    /// The record's JSON as kept in the store (published as is).
    pub json: Vec<u8>,
}

impl CommittedRecord {
    /// Bytes it holds, estimated: its JSON's buffer and about as much again for the parsed record.
    fn footprint(&self) -> usize {
        2 * self.json.capacity()
    }
}

/// Most bytes of records kept in memory for the forwarders.
const RECENT_MAX_BYTES: usize = 32 << 20;
/// What a slot costs besides its record (its time, its pointer): placeholders count too, so the
/// byte budget bounds their number as well.
const SLOT_BYTES: usize = 32;
/// Records older than this are read from the store again, so that what changes the store
/// outside the stage (the retention sweep) is never outrun by a copy in memory for long.
const RECENT_MAX_AGE: Duration = Duration::from_secs(60);

/// The records committed last, by sequence number (at most 32 MiB, one minute old).
#[derive(Default)]
pub struct RecentRecords {
    inner: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    /// Sequence number of `records[0]`.
    first_seq: u64,
    /// One slot per sequence number: the record, or `None` when no sink takes the inquiry.
    records: VecDeque<(Instant, Option<Arc<CommittedRecord>>)>,
    /// Bytes held by the records kept ([`CommittedRecord::footprint`]).
    bytes: usize,
    /// How many times the memory was cleared: records written before a clear are not kept.
    generation: u64,
}

/// Records taken out of the memory, to be dropped once its lock is released (freeing a record
/// is many deallocations: not while the forwarders and the sync thread wait for the lock).
type Released = Vec<Arc<CommittedRecord>>;

impl Recent {
    fn pop_front(&mut self, released: &mut Released) {
        if let Some((_, record)) = self.records.pop_front() {
            self.bytes -= SLOT_BYTES + record.as_ref().map_or(0, |r| r.footprint());
            self.first_seq += 1;
            released.extend(record);
        }
    }

    /// Takes out what is over the byte budget or too old.
    fn trim(&mut self) -> Released {
        let mut released = Vec::new();
        while self.bytes > RECENT_MAX_BYTES || self.records.front().is_some_and(|(at, _)| at.elapsed() > RECENT_MAX_AGE)
        {
            self.pop_front(&mut released);
        }
        released
    }
}

impl RecentRecords {
    /// The current generation: pass it back to [`RecentRecords::push_all`] with the records
    /// written now.
    pub fn generation(&self) -> u64 {
        self.inner.lock().expect("recent records").generation
    }

    /// Adds what a batch committed, in sequence order: every sequence number it used, with its
    /// record when some sink takes it. The batch was written in `generation`: if the memory was
    /// cleared since, its records are not kept (they may predate an erasure) and the forwarders
    /// read them from the store. A number that does not follow the last one kept starts the
    /// memory over.
    pub fn push_all(&self, generation: u64, committed: Vec<(u64, Option<Arc<CommittedRecord>>)>) {
        let mut recent = self.inner.lock().expect("recent records");
        if committed.is_empty() || generation != recent.generation {
            drop(recent);
            return;
        }
        let now = Instant::now();
        let mut dropped = VecDeque::new();
        for (seq, record) in committed {
            if recent.records.is_empty() || seq != recent.first_seq + recent.records.len() as u64 {
                dropped.append(&mut recent.records);
                recent.bytes = 0;
                recent.first_seq = seq;
            }
            recent.bytes += SLOT_BYTES + record.as_ref().map_or(0, |r| r.footprint());
            recent.records.push_back((now, record));
        }
        let released = recent.trim();
        drop(recent);
        drop((released, dropped));
    }

    /// The record of `seq`, while it is kept.
    pub fn get(&self, seq: u64) -> Option<Arc<CommittedRecord>> {
        let mut recent = self.inner.lock().expect("recent records");
        let released = recent.trim();
        let index = usize::try_from(seq.checked_sub(recent.first_seq).unwrap_or(u64::MAX));
        let record = index.ok().and_then(|i| recent.records.get(i)).and_then(|(_, record)| record.clone());
        drop(recent);
        drop(released);
        record
    }

    /// Forgets the records below `end` (every sink has taken them). The caller drops them, not
    /// the sync thread that adds records.
    pub fn release_below(&self, end: u64) {
        let mut released = Vec::new();
        let mut recent = self.inner.lock().expect("recent records");
        while recent.first_seq < end && !recent.records.is_empty() {
            recent.pop_front(&mut released);
        }
        drop(recent);
        drop(released);
    }

    /// Forgets every record, and every record of batches written before this call (an erasure
    /// is rewriting some in the store).
    pub fn clear(&self) {
        let mut recent = self.inner.lock().expect("recent records");
        let dropped = std::mem::take(&mut recent.records);
        recent.bytes = 0;
        recent.generation += 1;
        drop(recent);
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FallbackConfig;
    use crate::routing::FallbackRouter;
    use inquiry_connectors::{generic, NormalizeContext};

    /// A record of `seq` whose JSON (only its length and first byte matter here) is `json_len` bytes.
    fn record(seq: u64, json_len: usize) -> Option<Arc<CommittedRecord>> {
        let raw = serde_json::json!({
            "channel": "generic", "account": "shop-1", "external_id": format!("m-{seq}"),
            "buyer": { "email": "anna@example.com" }, "body": "hello", "occurred_at": "2026-12-02T09:59:00Z",
        })
        .to_string();
        let ctx = NormalizeContext {
            received_at: time::OffsetDateTime::now_utc(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        };
        let inquiry = generic::normalize(raw.as_bytes(), &ctx).unwrap();
        let decision = FallbackRouter::new(FallbackConfig::default()).decide(&inquiry, None);
        let stored = StoredInquiry { inquiry, decision };
        let json = vec![seq as u8; json_len];
        Some(Arc::new(CommittedRecord { stored, json }))
    }

    fn seq_of(record: Option<Arc<CommittedRecord>>) -> Option<u8> {
        record.map(|r| r.json[0])
    }

    #[test]
    fn recent_records_are_found_by_sequence_number_until_forgotten() {
        let recent = RecentRecords::default();
        let generation = recent.generation();
        assert!(recent.get(0).is_none());
        recent.push_all(generation, vec![(5, record(5, 10)), (6, record(6, 10))]);
        // 8 is an inquiry no sink takes: a placeholder keeps 9 findable after it.
        recent.push_all(generation, vec![(7, record(7, 10)), (8, None), (9, record(9, 10))]);
        assert_eq!(seq_of(recent.get(6)), Some(6));
        assert_eq!(recent.get(7).unwrap().stored.inquiry.external.message_id, "m-7");
        assert!(recent.get(8).is_none());
        assert_eq!(seq_of(recent.get(9)), Some(9));
        assert!(recent.get(4).is_none() && recent.get(10).is_none());
        // A gap (nothing kept before a restart's first number) starts over.
        recent.push_all(generation, vec![(12, record(12, 10))]);
        assert!(recent.get(9).is_none());
        assert_eq!(seq_of(recent.get(12)), Some(12));
        recent.clear();
        assert!(recent.get(12).is_none());
        // A batch written before the clear (it may predate an erasure) is not kept after it.
        recent.push_all(generation, vec![(13, record(13, 1))]);
        assert!(recent.get(13).is_none());
        recent.push_all(recent.generation(), vec![(14, record(14, 1)), (15, None), (16, record(16, 1))]);
        assert_eq!(seq_of(recent.get(14)), Some(14));
        // What every sink has taken is forgotten; the rest stays.
        recent.release_below(16);
        assert!(recent.get(14).is_none());
        assert_eq!(seq_of(recent.get(16)), Some(16));
        recent.push_all(recent.generation(), vec![(17, record(17, 1))]);
        assert_eq!(seq_of(recent.get(17)), Some(17));
        assert_eq!(seq_of(recent.get(16)), Some(16), "the run continues after a release");
    }

    #[test]
    fn recent_records_keep_at_most_their_byte_budget() {
        let recent = RecentRecords::default();
        let size = 1 << 19;
        let committed: Vec<_> = (0..80).map(|seq| (seq, record(seq, size))).collect();
        let each = SLOT_BYTES + committed[0].1.as_ref().unwrap().footprint();
        recent.push_all(recent.generation(), committed);
        // 32 MiB of records of ~1 MiB each (JSON and parsed): the newest that fit are kept.
        let kept = (RECENT_MAX_BYTES / each) as u64;
        assert!(kept > 20 && kept < 40, "{kept}");
        assert!(recent.get(79 - kept).is_none());
        assert_eq!(seq_of(recent.get(80 - kept)), Some((80 - kept) as u8));
        assert_eq!(seq_of(recent.get(79)), Some(79));
        // Placeholders (inquiries no sink takes) count against the budget too.
        let placeholders = (100..100 + (RECENT_MAX_BYTES / SLOT_BYTES + 10) as u64).map(|seq| (seq, None)).collect();
        recent.push_all(recent.generation(), placeholders);
        assert!(recent.inner.lock().unwrap().records.len() <= RECENT_MAX_BYTES / SLOT_BYTES);
    }
}
