//! The spool: one outbox per sink in the embedded store, and the counters the pipeline and the
//! forwarders share.
//!
//! The stage gives every new inquiry a sequence number (commit order) and queues it in every
//! sink's outbox in the same atomic batch as the inquiry itself. The sync thread publishes how far
//! the journal is durable; a forwarder only sends entries below that mark, so nothing leaves the
//! gateway before it is durable here.
//!
//! The stage also keeps the records it committed last in memory ([`RecentRecords`]): a
//! forwarder that keeps up takes them from there instead of reading them back from the store;
//! one that lags (a sink was down, the gateway restarted) reads the store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::gauge;

use inquiry_connectors::Region;

use crate::store::{Outbox, Store, StoreError};
use crate::telemetry;

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
    /// outside the EU never gets an inquiry whose buyer's country is unknown (it may be an EU buyer).
    pub fn accepts(&self, inquiry: &inquiry_connectors::Inquiry) -> bool {
        self.regions.contains(&inquiry.region) && (self.location == Region::Eu || inquiry.buyer.country.is_some())
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
        };
        spool.publish_depths();
        Ok((spool, next_seq))
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

    /// Inquiries waiting for sink `index`.
    pub fn depth(&self, index: usize) -> u64 {
        self.durable_end().saturating_sub(self.sinks[index].forwarded_end.load(Ordering::Acquire))
    }

    /// True when some sink has `max_pending` or more inquiries waiting: ingest must refuse.
    pub fn is_full(&self) -> bool {
        (0..self.sinks.len()).any(|i| self.depth(i) >= self.max_pending)
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

/// Most bytes of records kept in memory for the forwarders.
const RECENT_MAX_BYTES: usize = 32 << 20;
/// What a slot costs besides its record (its time, its pointer): placeholders count too, so the
/// byte budget bounds their number as well.
const SLOT_BYTES: usize = 32;
/// Records older than this are read from the store again, so that what changes the store
/// outside the stage (the retention sweep) is never outrun by a copy in memory for long.
const RECENT_MAX_AGE: Duration = Duration::from_secs(60);

/// The records the stage committed last, by sequence number (at most 32 MiB, one minute old).
#[derive(Default)]
pub struct RecentRecords {
    inner: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    /// Sequence number of `records[0]`.
    first_seq: u64,
    /// One slot per sequence number: the record, or `None` when no sink takes the inquiry.
    records: VecDeque<(Instant, Option<Arc<Vec<u8>>>)>,
    /// Bytes allocated by the records kept.
    bytes: usize,
}

impl Recent {
    fn pop_front(&mut self) {
        if let Some((_, record)) = self.records.pop_front() {
            self.bytes -= SLOT_BYTES + record.map_or(0, |r| r.capacity());
            self.first_seq += 1;
        }
    }

    /// Drops what is over the byte budget or too old.
    fn trim(&mut self) {
        while self.bytes > RECENT_MAX_BYTES || self.records.front().is_some_and(|(at, _)| at.elapsed() > RECENT_MAX_AGE)
        {
            self.pop_front();
        }
    }
}

impl RecentRecords {
    /// Adds what a batch just committed, in sequence order: every sequence number it used, with
    /// its record when some sink takes it. A number that does not follow the last one kept
    /// (after a restart there is nothing before it) starts the memory over.
    pub fn push_all(&self, committed: Vec<(u64, Option<Arc<Vec<u8>>>)>) {
        if committed.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut recent = self.inner.lock().expect("recent records");
        for (seq, record) in committed {
            if recent.records.is_empty() || seq != recent.first_seq + recent.records.len() as u64 {
                recent.records.clear();
                recent.bytes = 0;
                recent.first_seq = seq;
            }
            recent.bytes += SLOT_BYTES + record.as_ref().map_or(0, |r| r.capacity());
            recent.records.push_back((now, record));
        }
        recent.trim();
    }

    /// The record of `seq`, while it is kept.
    pub fn get(&self, seq: u64) -> Option<Arc<Vec<u8>>> {
        let mut recent = self.inner.lock().expect("recent records");
        recent.trim();
        let index = usize::try_from(seq.checked_sub(recent.first_seq)?).ok()?;
        recent.records.get(index)?.1.clone()
    }

    /// Forgets every record (an erasure is rewriting some in the store).
    pub fn clear(&self) {
        let mut recent = self.inner.lock().expect("recent records");
        recent.records.clear();
        recent.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(byte: u8, len: usize) -> Option<Arc<Vec<u8>>> {
        Some(Arc::new(vec![byte; len]))
    }

    #[test]
    fn recent_records_are_found_by_sequence_number_until_forgotten() {
        let recent = RecentRecords::default();
        assert!(recent.get(0).is_none());
        recent.push_all(vec![(5, record(5, 10)), (6, record(6, 10))]);
        // 8 is an inquiry no sink takes: a placeholder keeps 9 findable after it.
        recent.push_all(vec![(7, record(7, 10)), (8, None), (9, record(9, 10))]);
        assert_eq!(recent.get(6).as_deref(), Some(&vec![6u8; 10]));
        assert_eq!(recent.get(7).as_deref(), Some(&vec![7u8; 10]));
        assert!(recent.get(8).is_none());
        assert_eq!(recent.get(9).as_deref(), Some(&vec![9u8; 10]));
        assert!(recent.get(4).is_none() && recent.get(10).is_none());
        // A gap (nothing kept before a restart's first number) starts over.
        recent.push_all(vec![(12, record(12, 10))]);
        assert!(recent.get(9).is_none());
        assert_eq!(recent.get(12).as_deref(), Some(&vec![12u8; 10]));
        recent.clear();
        assert!(recent.get(10).is_none());
        recent.push_all(vec![(13, record(13, 1))]);
        assert!(recent.get(13).is_some());
    }

    #[test]
    fn recent_records_keep_at_most_their_byte_budget() {
        let recent = RecentRecords::default();
        let size = 1 << 20;
        let committed = (0..40).map(|seq| (seq, record(seq as u8, size))).collect();
        recent.push_all(committed);
        // 32 MiB of 1 MiB records (and their slots): the last 31 are kept, the first 9 went.
        assert!(recent.get(8).is_none());
        assert_eq!(recent.get(9).map(|r| r[0]), Some(9));
        assert_eq!(recent.get(39).map(|r| r[0]), Some(39));
        // Placeholders (inquiries no sink takes) count against the budget too.
        let placeholders = (100..100 + (RECENT_MAX_BYTES / SLOT_BYTES + 10) as u64).map(|seq| (seq, None)).collect();
        recent.push_all(placeholders);
        assert!(recent.inner.lock().unwrap().records.len() <= RECENT_MAX_BYTES / SLOT_BYTES);
    }
}
