//! The pipeline, in one place: ingest -> normalize -> dedup -> route -> sink.
//!
//! HTTP handlers normalize (in parallel, on the async workers) and [`Pipeline::submit`] the result
//! into a bounded queue; a full queue is refused at once ([`SubmitError::Overloaded`]), never
//! waited on or dropped. One stage thread drains the queue into batches and, per batch:
//! deduplicates, routes, writes everything in one atomic store batch with one fsync (group commit),
//! and only then acknowledges each request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use inquiry_connectors::{Channel, Inquiry};
use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::routing::{Decision, FallbackRouter, RouteOutcome, Router};
use crate::spool::Spool;
use crate::store::{OutboxEntry, Store, StoreError};
use crate::telemetry::{self, Hop};

/// An inquiry as kept in the store and returned by `GET /v1/inquiries/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredInquiry {
    /// The canonical envelope.
    pub inquiry: Inquiry,
    /// Where routing sent it.
    pub decision: Decision,
}

/// A dead letter: an inquiry that a router failed on and the fallback route took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The inquiry.
    pub inquiry_id: Uuid,
    /// Machine-readable reason.
    pub reason: String,
    /// Details (no personal data).
    pub detail: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One normalized inquiry handed to the pipeline.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The normalized inquiry.
    pub inquiry: Inquiry,
    /// Its JSON, serialized by the caller (in parallel) rather than on the stage thread.
    pub inquiry_json: Vec<u8>,
    /// The original payload, kept beside it.
    pub raw: Bytes,
    /// The client's Idempotency-Key, when it sent one.
    pub idempotency_key: Option<String>,
}

impl Submission {
    /// A submission of `inquiry`, its original payload and the client's Idempotency-Key.
    pub fn new(inquiry: Inquiry, raw: Bytes, idempotency_key: Option<String>) -> Self {
        let inquiry_json = serde_json::to_vec(&inquiry).expect("inquiries serialize");
        Submission { inquiry, inquiry_json, raw, idempotency_key }
    }
}

/// Whether an inquiry is new or was already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Stored now.
    Accepted,
    /// Stored before (same channel, account and external id, or same Idempotency-Key and payload): the first id.
    Duplicate,
    /// The Idempotency-Key was used before for another payload: not stored; the id is the earlier inquiry's.
    Conflict,
}

impl AckStatus {
    fn as_str(self) -> &'static str {
        match self {
            AckStatus::Accepted => "accepted",
            AckStatus::Duplicate => "duplicate",
            AckStatus::Conflict => "conflict",
        }
    }
}

/// The durable acknowledgement of one submitted inquiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Id of the stored inquiry (the earlier one for a duplicate).
    pub id: Uuid,
    /// New or duplicate.
    pub status: AckStatus,
}

/// Why a submission was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: retry later.
    #[error("pipeline queue is full")]
    Overloaded,
    /// A sink is down and its spool reached `spool.max_pending`: retry later.
    #[error("spool is full")]
    SpoolFull,
    /// The gateway is shutting down.
    #[error("pipeline is stopped")]
    Stopped,
    /// The store failed to commit the batch: nothing of it was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stage thread died while holding the request (a bug): it was not acknowledged.
    #[error("pipeline stage failed")]
    StageFailed,
}

/// Sizes of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PipelineLimits {
    /// Requests that may wait in the queue.
    pub queue_capacity: usize,
    /// Most inquiries in one group commit.
    pub max_batch_inquiries: usize,
}

struct Job {
    items: Vec<Submission>,
    /// A poller's cursor, stored in the same atomic write as the items.
    cursor: Option<(String, String)>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Ack>, StoreError>>,
}

/// Handle to the running pipeline; cheap to clone. When every handle is dropped the stage
/// thread commits what is queued and stops.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Job>,
    store_ok: Arc<AtomicBool>,
    spool: Arc<Spool>,
}

impl Pipeline {
    /// Starts the stage and sync threads. The returned handle joins both.
    pub fn start(
        store: Store,
        router: Arc<dyn Router>,
        fallback: FallbackRouter,
        limits: PipelineLimits,
        spool: Arc<Spool>,
        next_seq: u64,
    ) -> (Pipeline, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(limits.queue_capacity);
        let store_ok = Arc::new(AtomicBool::new(true));
        gauge!(telemetry::QUEUE_CAPACITY).set(limits.queue_capacity as f64);
        // Two written batches may wait for their fsync; then the stage waits too (backpressure).
        let (to_sync, written) = std::sync::mpsc::sync_channel(2);
        let syncer = Syncer { written, store: store.clone(), store_ok: store_ok.clone(), spool: spool.clone() };
        let stage = Stage {
            rx,
            store,
            router,
            fallback,
            max_batch: limits.max_batch_inquiries,
            to_sync,
            spool: spool.clone(),
            next_seq,
        };
        let thread = std::thread::Builder::new()
            .name("pipeline-stage".to_owned())
            .spawn(move || {
                let sync_thread = std::thread::Builder::new()
                    .name("pipeline-sync".to_owned())
                    .spawn(move || syncer.run())
                    .expect("spawning the sync thread");
                stage.run();
                let _ = sync_thread.join();
            })
            .expect("spawning the pipeline thread");
        (Pipeline { tx, store_ok, spool }, thread)
    }

    /// Queues inquiries and waits until they are durable. Refuses at once when the queue is full.
    pub async fn submit(&self, items: Vec<Submission>) -> Result<Vec<Ack>, SubmitError> {
        self.submit_with_cursor(items, None).await
    }

    /// Like [`Pipeline::submit`], and stores a poller's `(name, cursor)` in the same atomic write,
    /// so that a restart resumes exactly after what is durable.
    pub async fn submit_with_cursor(
        &self,
        items: Vec<Submission>,
        cursor: Option<(String, String)>,
    ) -> Result<Vec<Ack>, SubmitError> {
        if self.spool.is_full() {
            return Err(SubmitError::SpoolFull);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { items, cursor, enqueued: Instant::now(), reply };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
        })?;
        Ok(answer.await.map_err(|_| SubmitError::StageFailed)??)
    }

    /// True while the stage runs and the store takes writes. A failed fsync poisons the store
    /// for good (fjall refuses all writes after it), so this stays false until a restart.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed() && self.store_ok.load(Ordering::Relaxed)
    }

    /// True when ingest may be sent traffic: alive, with queue room.
    pub fn is_ready(&self) -> bool {
        self.is_alive() && self.tx.capacity() > 0
    }
}

/// The stage thread: dedup, route, and write each batch to the store without waiting for its
/// fsync; the [`Syncer`] acknowledges it once it is durable. While one batch is being fsynced
/// the next is prepared and written, so CPU work and the disk overlap.
struct Stage {
    rx: mpsc::Receiver<Job>,
    store: Store,
    router: Arc<dyn Router>,
    fallback: FallbackRouter,
    max_batch: usize,
    to_sync: std::sync::mpsc::SyncSender<Written>,
    spool: Arc<Spool>,
    /// Sequence number of the next new inquiry (commit order, shared by every outbox).
    next_seq: u64,
}

/// A batch written to the store, waiting for the fsync that makes it durable.
struct Written {
    jobs: Vec<Job>,
    acks: Vec<Vec<Ack>>,
    /// When its write started (the store hop runs until the fsync ends).
    write_started: Instant,
    /// Sequence numbers below this are in this batch or earlier ones.
    seq_end: u64,
}

impl Stage {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let seq_start = self.next_seq;
            let mut size = first.items.len();
            let mut jobs = vec![first];
            while size < self.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => {
                        size += job.items.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            gauge!(telemetry::QUEUE_DEPTH).set(self.rx.len() as f64);
            let started = Instant::now();
            for job in &jobs {
                record_per_channel(Hop::Queue, &job.items, started - job.enqueued);
            }
            match self.write(&jobs) {
                Ok((acks, write_started)) => {
                    let seq_end = self.next_seq;
                    if let Err(unsent) = self.to_sync.send(Written { jobs, acks, write_started, seq_end }) {
                        fail_jobs(unsent.0.jobs, &StoreError::from_message("the sync thread stopped"));
                    }
                }
                Err(err) => {
                    self.next_seq = seq_start; // nothing of the batch was written
                    counter!(telemetry::STORE_ERRORS).increment(1);
                    tracing::error!(error = %err, jobs = jobs.len(), "store write failed; batch not acknowledged");
                    fail_jobs(jobs, &err);
                }
            }
        }
        tracing::info!("pipeline stage stopped");
    }

    /// Dedup, route and write one batch; returns one ack list per job, in order.
    fn write(&mut self, jobs: &[Job]) -> Result<(Vec<Vec<Ack>>, Instant), StoreError> {
        // Dedup: against the store and within this batch.
        let dedup_started = Instant::now();
        let mut acks: Vec<Vec<Ack>> = Vec::with_capacity(jobs.len());
        let mut fresh: Vec<(&Submission, DedupKeys)> = Vec::new();
        let mut pending: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let lookup = |pending: &HashMap<Vec<u8>, Vec<u8>>, key: &[u8]| match pending.get(key) {
            Some(value) => Ok(Some(value.clone())),
            None => self.store.find_dedup(key),
        };
        for job in jobs {
            let mut job_acks = Vec::with_capacity(job.items.len());
            for item in &job.items {
                let keys = DedupKeys::of(item);
                let earlier = match &keys.idempotency {
                    Some((key, fingerprint)) => lookup(&pending, key)?.map(|value| {
                        let (id, earlier_fingerprint) = value.split_at(16);
                        let status =
                            if earlier_fingerprint == fingerprint { AckStatus::Duplicate } else { AckStatus::Conflict };
                        Ack { id: Uuid::from_slice(id).unwrap_or_default(), status }
                    }),
                    None => None,
                };
                let earlier = match earlier {
                    Some(ack) => Some(ack),
                    None => lookup(&pending, &keys.message)?
                        .map(|id| Ack { id: Uuid::from_slice(&id).unwrap_or_default(), status: AckStatus::Duplicate }),
                };
                match earlier {
                    Some(ack) => job_acks.push(ack),
                    None => {
                        let id = item.inquiry.id;
                        for (key, value) in keys.entries(id) {
                            pending.insert(key.to_vec(), value);
                        }
                        job_acks.push(Ack { id, status: AckStatus::Accepted });
                        fresh.push((item, keys));
                    }
                }
            }
            acks.push(job_acks);
        }
        let all = || jobs.iter().flat_map(|j| &j.items);
        record_per_channel(Hop::Dedup, all(), dedup_started.elapsed());

        // Route the new ones.
        let route_started = Instant::now();
        let decisions = self.route(&fresh.iter().map(|(item, _)| &item.inquiry).collect::<Vec<_>>());
        record_per_channel(Hop::Route, fresh.iter().map(|(item, _)| *item), route_started.elapsed());

        // Sink: one atomic batch; the syncer's fsync makes it durable.
        let write_started = Instant::now();
        let mut batch = self.store.batch();
        let mut record = Vec::with_capacity(2048);
        for ((item, keys), (decision, dead_letter)) in fresh.iter().zip(decisions) {
            let id = item.inquiry.id;
            record.clear();
            record.extend_from_slice(b"{\"inquiry\":");
            record.extend_from_slice(&item.inquiry_json);
            record.extend_from_slice(b",\"decision\":");
            serde_json::to_writer(&mut record, &decision).expect("decisions serialize");
            record.push(b'}');
            batch.put_inquiry(id, &record, &item.raw);
            for (key, value) in keys.entries(id) {
                batch.put_dedup(key, &value);
            }
            if let Some(letter) = dead_letter {
                batch.put_dead_letter(id, serde_json::to_vec(&letter).expect("dead letters serialize"));
            }
            let entry = OutboxEntry { seq: self.next_seq, id, enqueued_ms: enqueued_ms() };
            self.next_seq += 1;
            for sink in &self.spool.sinks {
                batch.put_outbox(&sink.outbox, &entry);
            }
        }
        for (name, cursor) in jobs.iter().filter_map(|j| j.cursor.as_ref()) {
            batch.put_cursor(name, cursor);
        }
        histogram!(telemetry::STORE_BATCH).record(fresh.len() as f64);
        if !batch.is_empty() {
            batch.write()?;
        }
        Ok((acks, write_started))
    }

    /// Asks the router, and sends what it could not decide down the fallback route.
    fn route(&self, batch: &[&Inquiry]) -> Vec<(Decision, Option<DeadLetter>)> {
        let mut outcomes = self.router.route(batch);
        if outcomes.len() != batch.len() {
            let detail = format!("router returned {} outcomes for {} inquiries", outcomes.len(), batch.len());
            outcomes = vec![RouteOutcome::Failed { reason: "router_contract", detail }; batch.len()];
        }
        batch
            .iter()
            .zip(outcomes)
            .map(|(inquiry, outcome)| match outcome {
                RouteOutcome::Decided(decision) => (decision, None),
                RouteOutcome::Undecided => (self.fallback.decide(inquiry, None), None),
                RouteOutcome::Failed { reason, detail } => {
                    counter!(telemetry::DEAD_LETTERS, "reason" => reason).increment(1);
                    tracing::warn!(trace_id = %inquiry.trace_id, inquiry_id = %inquiry.id, reason,
                        "routing failed; fallback route taken");
                    let letter = DeadLetter {
                        inquiry_id: inquiry.id,
                        reason: reason.to_owned(),
                        detail,
                        at: OffsetDateTime::now_utc(),
                    };
                    (self.fallback.decide(inquiry, Some(reason)), Some(letter))
                }
            })
            .collect()
    }
}

/// The sync thread: one fsync covers every batch written since the last one; then it
/// acknowledges their requests.
struct Syncer {
    written: std::sync::mpsc::Receiver<Written>,
    store: Store,
    store_ok: Arc<AtomicBool>,
    spool: Arc<Spool>,
}

impl Syncer {
    fn run(self) {
        while let Ok(first) = self.written.recv() {
            let mut batches = vec![first];
            batches.extend(self.written.try_iter());
            let sync_started = Instant::now();
            let synced = self.store.sync();
            histogram!(telemetry::STORE_COMMIT).record(sync_started.elapsed().as_secs_f64());
            match synced {
                Ok(()) => {
                    self.store_ok.store(true, Ordering::Relaxed);
                    self.spool.mark_durable(batches.iter().map(|b| b.seq_end).max().unwrap_or(0));
                    let done = Instant::now();
                    for batch in batches {
                        record_per_channel(
                            Hop::Store,
                            batch.jobs.iter().flat_map(|j| &j.items),
                            done - batch.write_started,
                        );
                        acknowledge(batch.jobs, batch.acks);
                    }
                }
                Err(err) => {
                    self.store_ok.store(false, Ordering::Relaxed);
                    counter!(telemetry::STORE_ERRORS).increment(1);
                    tracing::error!(error = %err, "store fsync failed; batches not acknowledged");
                    for batch in batches {
                        fail_jobs(batch.jobs, &err);
                    }
                }
            }
        }
    }
}

fn enqueued_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Answers every job of a durable batch.
fn acknowledge(jobs: Vec<Job>, acks: Vec<Vec<Ack>>) {
    for (job, acks) in jobs.into_iter().zip(acks) {
        for (item, ack) in job.items.iter().zip(&acks) {
            let channel = item.inquiry.channel.as_str();
            counter!(telemetry::INQUIRIES, "outcome" => ack.status.as_str(), "channel" => channel).increment(1);
            tracing::debug!(trace_id = %item.inquiry.trace_id, inquiry_id = %ack.id, channel,
                status = ack.status.as_str(), "inquiry durable");
        }
        let _ = job.reply.send(Ok(acks));
    }
}

/// Answers every job with the store's error: nothing of them is acknowledged.
fn fail_jobs(jobs: Vec<Job>, err: &StoreError) {
    for job in jobs {
        let _ = job.reply.send(Err(err.clone()));
    }
}

/// The keys an inquiry is deduplicated by. Parts are length-prefixed, so no value can imitate
/// another.
pub struct DedupKeys {
    /// (channel, account, external message id) -> id.
    pub message: Vec<u8>,
    /// (channel, account, Idempotency-Key) -> id + SHA-256 of the payload, when the client sent a
    /// key: a retry with the same payload is a duplicate, the same key with another payload a conflict.
    pub idempotency: Option<(Vec<u8>, [u8; 32])>,
}

impl DedupKeys {
    /// The keys of a submission.
    pub fn of(item: &Submission) -> DedupKeys {
        let inquiry = &item.inquiry;
        let key = |kind: &str, value: &str| {
            let mut key = Vec::with_capacity(64);
            for part in [inquiry.channel.as_str(), inquiry.account.as_str(), kind, value] {
                key.extend_from_slice(&(part.len() as u32).to_be_bytes());
                key.extend_from_slice(part.as_bytes());
            }
            key
        };
        DedupKeys {
            message: key("message", &inquiry.external.message_id),
            idempotency: item
                .idempotency_key
                .as_deref()
                .map(|k| (key("idempotency", k), Sha256::digest(&item.raw).into())),
        }
    }

    /// The entries to store for inquiry `id`.
    fn entries(&self, id: Uuid) -> Vec<(&[u8], Vec<u8>)> {
        let mut entries = vec![(self.message.as_slice(), id.as_bytes().to_vec())];
        if let Some((key, fingerprint)) = &self.idempotency {
            entries.push((key.as_slice(), [id.as_bytes().as_slice(), fingerprint].concat()));
        }
        entries
    }
}

/// Records `elapsed` for every submission, grouped by channel (one histogram update per channel).
fn record_per_channel<'a>(hop: Hop, items: impl IntoIterator<Item = &'a Submission>, elapsed: Duration) {
    let mut counts = [0usize; Channel::ALL.len()];
    for item in items {
        counts[item.inquiry.channel as usize] += 1;
    }
    for (channel, count) in Channel::ALL.iter().zip(counts) {
        if count > 0 {
            telemetry::record_hop(hop, *channel, elapsed, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;

    use inquiry_connectors::{generic, NormalizeContext};

    use super::*;
    use crate::config::FallbackConfig;
    use crate::routing::{Disposition, Priority};

    fn submission(external_id: &str, body: &str) -> Submission {
        let raw = serde_json::json!({
            "channel": "generic", "account": "shop-1", "external_id": external_id,
            "body": body, "occurred_at": "2026-11-24T08:00:00Z",
        })
        .to_string();
        let ctx = NormalizeContext {
            received_at: OffsetDateTime::now_utc(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            pseudonym_key: b"test-key-test-key-test-key-test-key",
        };
        let inquiry = generic::normalize(raw.as_bytes(), &ctx).unwrap();
        Submission::new(inquiry, Bytes::from(raw), None)
    }

    fn start(router: impl Router, queue_capacity: usize) -> (Pipeline, Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fallback = FallbackRouter::new(FallbackConfig::default());
        let limits = PipelineLimits { queue_capacity, max_batch_inquiries: 1024 };
        let (spool, next_seq) = Spool::open(&store, &[], 10).unwrap();
        let (pipeline, _thread) =
            Pipeline::start(store.clone(), Arc::new(router), fallback, limits, Arc::new(spool), next_seq);
        (pipeline, store, dir)
    }

    fn stored(store: &Store, id: Uuid) -> StoredInquiry {
        serde_json::from_slice(&store.get_inquiry(id).unwrap().unwrap()).unwrap()
    }

    /// Sends bodies containing "boom" to failure and everything else to `sales`.
    struct Picky;
    impl Router for Picky {
        fn route(&self, batch: &[&Inquiry]) -> Vec<RouteOutcome> {
            batch
                .iter()
                .map(|inquiry| {
                    if inquiry.body.contains("boom") {
                        RouteOutcome::Failed { reason: "plugin_trap", detail: "unreachable executed".to_owned() }
                    } else {
                        let mut decision = FallbackRouter::new(FallbackConfig::default()).decide(inquiry, None);
                        decision.queue = "sales".to_owned();
                        decision.priority = Priority::High;
                        decision.decided_by = "plugin:picky@1".to_owned();
                        RouteOutcome::Decided(decision)
                    }
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn router_failures_take_the_fallback_route_and_are_dead_lettered() {
        let (pipeline, store, _dir) = start(Picky, 8);
        let acks = pipeline.submit(vec![submission("a", "hello"), submission("b", "boom")]).await.unwrap();
        assert!(acks.iter().all(|a| a.status == AckStatus::Accepted));

        let routed = stored(&store, acks[0].id);
        assert_eq!((routed.decision.queue.as_str(), routed.decision.priority), ("sales", Priority::High));
        assert!(store.get_dead_letter(acks[0].id).unwrap().is_none());

        let failed = stored(&store, acks[1].id);
        assert_eq!(failed.decision.queue, "unassigned");
        assert_eq!(failed.decision.disposition, Disposition::Deliver);
        assert_eq!(failed.decision.fallback_reason.as_deref(), Some("plugin_trap"));
        let letter: DeadLetter = serde_json::from_slice(&store.get_dead_letter(acks[1].id).unwrap().unwrap()).unwrap();
        assert_eq!((letter.inquiry_id, letter.reason.as_str()), (acks[1].id, "plugin_trap"));
    }

    /// Breaks the router contract by answering nothing.
    struct Silent;
    impl Router for Silent {
        fn route(&self, _batch: &[&Inquiry]) -> Vec<RouteOutcome> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn a_router_breaking_its_contract_cannot_lose_inquiries() {
        let (pipeline, store, _dir) = start(Silent, 8);
        let acks = pipeline.submit(vec![submission("a", "x"), submission("b", "y")]).await.unwrap();
        for ack in acks {
            assert_eq!(stored(&store, ack.id).decision.fallback_reason.as_deref(), Some("router_contract"));
            assert!(store.get_dead_letter(ack.id).unwrap().is_some());
        }
    }

    /// Holds every batch until the test lets it go.
    struct Gate {
        entered: Mutex<std_mpsc::Sender<()>>,
        release: Mutex<std_mpsc::Receiver<()>>,
    }
    impl Router for Gate {
        fn route(&self, batch: &[&Inquiry]) -> Vec<RouteOutcome> {
            self.entered.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
            vec![RouteOutcome::Undecided; batch.len()]
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_refused_at_once_and_nothing_queued_is_lost() {
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel();
        let gate = Gate { entered: Mutex::new(entered_tx), release: Mutex::new(release_rx) };
        let (pipeline, store, _dir) = start(gate, 1);

        let first = tokio::spawn({
            let pipeline = pipeline.clone();
            async move { pipeline.submit(vec![submission("a", "x")]).await }
        });
        entered.recv().unwrap(); // the stage holds the first batch
        let second = tokio::spawn({
            let pipeline = pipeline.clone();
            async move { pipeline.submit(vec![submission("b", "x")]).await }
        });
        // The second job fills the one-slot queue; the third is refused without waiting.
        while pipeline.tx.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        let third = pipeline.submit(vec![submission("c", "x")]).await;
        assert!(matches!(third, Err(SubmitError::Overloaded)));

        release.send(()).unwrap();
        release.send(()).unwrap();
        let first = first.await.unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        assert!(store.get_inquiry(first[0].id).unwrap().is_some());
        assert!(store.get_inquiry(second[0].id).unwrap().is_some());
    }
}
