//! The spool: one outbox per sink in the embedded store, and the counters the pipeline and the
//! forwarders share.
//!
//! The stage gives every new inquiry a sequence number (commit order) and queues it in every
//! sink's outbox in the same atomic batch as the inquiry itself. The sync thread publishes how far
//! the journal is durable; a forwarder only sends entries below that mark, so nothing leaves the
//! gateway before it is durable here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
